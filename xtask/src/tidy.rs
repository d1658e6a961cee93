//! `cargo xtask tidy`: this workspace's own invariants.
//!
//! 1. engine-compat holds only deprecated, documented type aliases (see
//!    [`check_compat_purity`]).
//! 2. No engine type is defined outside engine-core, no engine is built outside engine-factory,
//!    no deprecated name is used, no crate depends on engine-compat, no global shared state:
//!    `migrate --check` finds nothing.
//! 3. Every `.rs` file starts with a `//!` doc comment.
//! 4. The declared `rust-version` is what the locked dependencies really need: the highest
//!    `rust-version` among them (see [`check_msrv`]).

use std::path::Path;

use crate::legacy::check_compat_purity;
use crate::scan::Workspace;
use crate::XtaskError;

/// Runs every tidy check on the workspace at `root`; returns the problems found.
///
/// # Errors
/// [`XtaskError`] when the workspace cannot be read or a file does not parse.
pub fn tidy(root: &Path) -> Result<Vec<String>, XtaskError> {
    let mut problems = Vec::new();
    if let Err(bad) = check_compat_purity(&root.join("engine-compat/src")) {
        problems.extend(bad.into_iter().map(|b| format!("engine-compat/src: {b}")));
    }
    problems.extend(check_msrv(root)?);
    let ws = Workspace::load(&root.join("Cargo.toml"))?;
    let scan = ws.scan()?;
    problems.extend(scan.findings.iter().map(crate::model::Finding::human));
    for entry in walkdir::WalkDir::new(root)
        .into_iter()
        .filter_entry(|e| {
            let name = e.file_name().to_string_lossy();
            e.depth() == 0 || !(name == "target" || name.starts_with('.'))
        })
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file() && e.path().extension().is_some_and(|x| x == "rs"))
    {
        let text =
            std::fs::read_to_string(entry.path()).map_err(|e| XtaskError::io(entry.path(), e))?;
        let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        if !first.trim_start().starts_with("//!") {
            problems.push(format!(
                "{}:1:1  does not start with a `//!` doc comment saying what the file is for",
                ws.rel(entry.path())
            ));
        }
    }
    Ok(problems)
}

/// Compares the workspace packages' `rust-version` with the highest `rust-version` of the
/// locked dependencies (from `cargo metadata`); a difference either way is a problem, naming
/// the dependency that sets the floor.
///
/// # Errors
/// [`XtaskError::Metadata`] when `cargo metadata` fails.
pub fn check_msrv(root: &Path) -> Result<Vec<String>, XtaskError> {
    let manifest = root.join("Cargo.toml");
    let meta = cargo_metadata::MetadataCommand::new()
        .manifest_path(&manifest)
        .exec()
        .map_err(|e| XtaskError::Metadata {
            manifest: manifest.display().to_string(),
            message: e.to_string(),
        })?;
    let members: Vec<_> = meta.workspace_packages();
    let needed = meta
        .packages
        .iter()
        .filter(|p| !meta.workspace_members.contains(&p.id))
        .filter_map(|p| p.rust_version.as_ref().map(|v| (v, p)))
        .max_by(|a, b| a.0.cmp(b.0));
    let Some((needed, by)) = needed else {
        return Ok(Vec::new());
    };
    let mut problems = Vec::new();
    for p in members {
        match &p.rust_version {
            Some(declared) if declared == needed => {}
            declared => problems.push(format!(
                "{}: rust-version is {}, but the locked dependencies need {needed} ({} {} says so); set rust-version = \"{}.{}\"",
                p.name,
                declared.as_ref().map_or_else(|| "unset".to_owned(), ToString::to_string),
                by.name,
                by.version,
                needed.major,
                needed.minor,
            )),
        }
    }
    Ok(problems)
}
