//! `cargo xtask tidy`: this workspace's own invariants.
//!
//! 1. engine-compat holds only deprecated, documented type aliases (see
//!    [`check_compat_purity`]).
//! 2. No engine type is defined outside engine-core, no engine is built outside engine-factory,
//!    no deprecated name is used, no crate depends on engine-compat, no global shared state:
//!    `migrate --check` finds nothing.
//! 3. Every `.rs` file starts with a `//!` doc comment.

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
        let text = std::fs::read_to_string(entry.path()).map_err(|e| XtaskError::Io {
            path: entry.path().display().to_string(),
            message: e.to_string(),
        })?;
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
