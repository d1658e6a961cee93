//! The `migrate` command, shared by `cargo xtask migrate` (this repository) and the installable
//! `cargo ssot migrate` (a downstream workspace): check, report, baseline, status and fix.

use std::path::{Path, PathBuf};

use clap::{ArgGroup, Args, ValueEnum};

use crate::baseline::Baseline;
use crate::report::{CheckReport, Summary};
use crate::scan::Workspace;
use crate::status::{status, Phase};
use crate::XtaskError;

/// The flags of `migrate`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("mode").required(true).args(["check", "write_baseline", "status", "fix"])))]
pub struct MigrateArgs {
    /// Report findings; exit 1 if any (or any not in --baseline).
    #[arg(long)]
    pub check: bool,
    /// Record today's findings in FILE.
    #[arg(long, value_name = "FILE")]
    pub write_baseline: Option<PathBuf>,
    /// Say which migration phase the workspace has reached.
    #[arg(long)]
    pub status: bool,
    /// Rewrite every SSOT001 finding to its canonical path, add the canonical crates to the
    /// manifests that now need them, drop engine-compat where nothing uses it, and check that
    /// the result builds under `-D deprecated`.
    #[arg(long)]
    pub fix: bool,
    /// With --fix: print unified diffs (sources and manifests) instead of writing.
    #[arg(long)]
    pub dry_run: bool,
    /// With --fix: do not run `cargo check` on the rewritten packages.
    #[arg(long)]
    pub no_verify: bool,
    /// With --check: fail only on findings not in this baseline.
    #[arg(long, value_name = "FILE")]
    pub baseline: Option<PathBuf>,
    /// The target workspace's Cargo.toml (default: the workspace of the current directory).
    #[arg(long, value_name = "PATH")]
    pub manifest_path: Option<PathBuf>,
    /// Output format of --check.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub format: Format,
}

/// Output format of `--check` and `--status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Diagnostics as rustc shows them (source line, span underlined, help), and a summary.
    Human,
    /// One JSON object (schema_version 1).
    Json,
    /// A SARIF 2.1.0 log, for code-scanning services.
    Sarif,
    /// GitHub Actions workflow annotations, one line per finding.
    Github,
}

/// Runs `migrate` on the workspace of `args.manifest_path`, or of `default_manifest`.
///
/// # Errors
/// [`XtaskError`] for usage errors, unreadable workspaces and files that do not parse.
pub fn run(args: &MigrateArgs, default_manifest: &Path) -> Result<u8, XtaskError> {
    let MigrateArgs {
        check,
        write_baseline,
        status: want_status,
        fix,
        dry_run,
        no_verify,
        baseline,
        manifest_path,
        format,
    } = args;
    let (check, want_status, fix, dry_run, no_verify, format) =
        (*check, *want_status, *fix, *dry_run, *no_verify, *format);
    if dry_run && !fix {
        return Err(XtaskError::Usage("--dry-run only goes with --fix".into()));
    }
    if baseline.is_some() && !check {
        return Err(XtaskError::Usage(
            "--baseline only goes with --check".into(),
        ));
    }
    let manifest = manifest_path
        .clone()
        .unwrap_or_else(|| default_manifest.to_path_buf());
    let ws = Workspace::load(&manifest)?;
    let scan = ws.scan()?;
    if check {
        return report(&ws, &scan, baseline.as_deref(), format);
    }
    if let Some(file) = write_baseline {
        Baseline::from_findings(&scan.findings).write(file)?;
        println!(
            "wrote {} findings ({} entries) to {}",
            scan.findings.len(),
            Baseline::from_findings(&scan.findings).entries.len(),
            file.display()
        );
        return Ok(0);
    }
    if want_status {
        let s = status(&scan.findings);
        if format == Format::Json {
            let phase = match s.phase {
                Phase::One => 1,
                Phase::Two => 2,
                Phase::Three => 3,
            };
            let v = serde_json::json!({
                "schema_version": 1,
                "workspace": ws.root.display().to_string(),
                "phase": phase,
                "complete": s.complete,
                "blockers": s.blockers,
            });
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            return Ok(0);
        }
        let phase = match s.phase {
            Phase::One => "1 (legacy engines, duplicates or shared state remain)",
            Phase::Two => "2 (only uses of deprecated aliases remain)",
            Phase::Three if s.complete => "3, complete (no compat use and no dependency left)",
            Phase::Three => "3 (no compat use left; the dependency can go)",
        };
        println!("phase {phase}");
        for b in &s.blockers {
            println!("  blocks the next phase: {b}");
        }
        return Ok(0);
    }
    if fix {
        return fix_workspace(&ws, &scan, dry_run, no_verify);
    }
    Ok(2)
}

/// `--fix`: rewrite the sources, edit the manifests, then check that the result builds.
fn fix_workspace(
    ws: &Workspace,
    scan: &crate::scan::Scan,
    dry_run: bool,
    no_verify: bool,
) -> Result<u8, XtaskError> {
    let rewrites = crate::fix::rewrites(ws, scan)?;
    let manifests = plan_manifests(ws, &rewrites)?;
    if dry_run {
        for r in &rewrites {
            print!("{}", r.diff());
        }
        for m in &manifests {
            let name = ws.rel(&m.path);
            print!(
                "{}",
                similar::TextDiff::from_lines(&m.before, &m.after)
                    .unified_diff()
                    .context_radius(3)
                    .header(&format!("a/{name}"), &format!("b/{name}"))
            );
        }
    } else {
        crate::fix::write(ws, &rewrites)?;
        for m in &manifests {
            std::fs::write(&m.path, &m.after).map_err(|e| XtaskError::io(&m.path, e))?;
        }
    }
    let verb = if dry_run { "would rewrite" } else { "rewrote" };
    let ssot001 = scan
        .findings
        .iter()
        .filter(|f| f.rule == crate::model::Rule::DeprecatedName)
        .count();
    eprintln!(
        "{verb} {} file(s) ({ssot001} SSOT001 findings) and {} manifest(s)",
        rewrites.len(),
        manifests.len()
    );
    if dry_run || no_verify || (rewrites.is_empty() && manifests.is_empty()) {
        return Ok(0);
    }
    verify(ws, &rewrites, &manifests)
}

/// The manifest edits the rewrites call for: each package with an engine-compat dependency
/// gets the canonical crates its code now names, and loses engine-compat when none of its
/// sources names the compat crate any more.
fn plan_manifests(
    ws: &Workspace,
    rewrites: &[crate::fix::Rewrite],
) -> Result<Vec<crate::manifest::ManifestEdit>, XtaskError> {
    let workspace_manifest = ws.root.join("Cargo.toml");
    let mut workspace_doc = None;
    let mut edits = Vec::new();
    for pkg in &ws.packages {
        let Some(compat) = &pkg.compat_local else {
            continue;
        };
        if pkg.role == crate::rules::Role::Compat {
            continue;
        }
        // The package's sources as they will be after the rewrites.
        let mut uses_compat = false;
        let mut names = std::collections::BTreeSet::new();
        for entry in walkdir::WalkDir::new(&pkg.dir)
            .into_iter()
            .filter_entry(|e| e.depth() == 0 || e.file_name() != "target")
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "rs"))
        {
            let rel = ws.rel(entry.path());
            let text = match rewrites.iter().find(|r| r.path == rel) {
                Some(r) => r.after.clone(),
                None => std::fs::read_to_string(entry.path()).unwrap_or_default(),
            };
            uses_compat |= text.contains(compat.as_str());
            for (krate, package) in crate::manifest::CANONICAL {
                if text.contains(&format!("{krate}::")) && !pkg.deps.contains(krate) {
                    names.insert(package);
                }
            }
        }
        let needed: Vec<&str> = names.into_iter().collect();
        if needed.is_empty() && uses_compat {
            continue;
        }
        if let Some(edit) = crate::manifest::edit_package(
            &pkg.manifest,
            &workspace_manifest,
            &needed,
            !uses_compat,
            &mut workspace_doc,
        )? {
            edits.push(edit);
        }
    }
    if let Some(edit) = crate::manifest::workspace_edit(&workspace_manifest, workspace_doc) {
        edits.push(edit);
    }
    Ok(edits)
}

/// Runs `cargo check -D deprecated` on the packages the fix touched; exit 1 with the
/// compiler's first errors if they do not build.
fn verify(
    ws: &Workspace,
    rewrites: &[crate::fix::Rewrite],
    manifests: &[crate::manifest::ManifestEdit],
) -> Result<u8, XtaskError> {
    let mut packages = std::collections::BTreeSet::new();
    for path in rewrites
        .iter()
        .map(|r| ws.root.join(&r.path))
        .chain(manifests.iter().map(|m| m.path.clone()))
    {
        if let Some(p) = ws.package_of(&path) {
            packages.insert(p.name.clone());
        }
    }
    if packages.is_empty() {
        return Ok(0);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.arg("check")
        .arg("--manifest-path")
        .arg(ws.root.join("Cargo.toml"))
        .arg("--all-targets");
    for p in &packages {
        cmd.args(["-p", p]);
    }
    let flags = std::env::var("RUSTFLAGS").unwrap_or_default();
    let out = cmd
        .env("RUSTFLAGS", format!("{flags} -D deprecated").trim())
        .current_dir(&ws.root)
        .output()
        .map_err(|e| XtaskError::io("cargo", e))?;
    let names: Vec<&str> = packages.iter().map(String::as_str).collect();
    if out.status.success() {
        eprintln!(
            "verified: {} build(s) under -D deprecated",
            names.join(", ")
        );
        return Ok(0);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let first: Vec<&str> = stderr
        .lines()
        .skip_while(|l| !l.starts_with("error"))
        .take(40)
        .collect();
    eprintln!(
        "error: after the fix, {} do(es) not build under -D deprecated; the compiler said:\n{}",
        names.join(", "),
        first.join("\n")
    );
    Ok(1)
}

fn report(
    ws: &Workspace,
    scan: &crate::scan::Scan,
    baseline: Option<&Path>,
    format: Format,
) -> Result<u8, XtaskError> {
    let summary = Summary::of(scan);
    let (new, fixed) = match baseline {
        Some(path) => {
            let b = Baseline::read(path)?;
            let (new, fixed) = b.compare(&scan.findings);
            (Some(new), Some(fixed))
        }
        None => (None, None),
    };
    let failing = new.as_ref().map_or(scan.findings.len(), Vec::len);
    let exit_code = i32::from(failing > 0);
    match format {
        Format::Json => {
            let r = CheckReport {
                schema_version: 1,
                workspace: ws.root.display().to_string(),
                findings: scan.findings.iter().collect(),
                new_findings: new,
                fixed,
                summary,
                exit_code,
            };
            println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
        }
        Format::Sarif => {
            let shown: Vec<&crate::model::Finding> = new
                .clone()
                .unwrap_or_else(|| scan.findings.iter().collect());
            let log = crate::render::sarif(&shown, env!("CARGO_PKG_VERSION"));
            println!("{}", serde_json::to_string_pretty(&log).unwrap_or_default());
        }
        Format::Github => {
            let cwd = std::env::current_dir().unwrap_or_else(|_| ws.root.clone());
            let shown: Vec<&crate::model::Finding> = new
                .clone()
                .unwrap_or_else(|| scan.findings.iter().collect());
            for f in &shown {
                let path = crate::render::display_path(&ws.root, &f.path, &cwd);
                println!("{}", crate::render::github(f, &path));
            }
        }
        Format::Human => {
            let shown: Vec<&crate::model::Finding> = new
                .clone()
                .unwrap_or_else(|| scan.findings.iter().collect());
            let cwd = std::env::current_dir().unwrap_or_else(|_| ws.root.clone());
            let color = std::io::IsTerminal::is_terminal(&std::io::stdout());
            for f in &shown {
                let path = crate::render::display_path(&ws.root, &f.path, &cwd);
                let source = std::fs::read_to_string(ws.root.join(&f.path)).ok();
                println!(
                    "{}\n",
                    crate::render::human(f, &path, source.as_deref(), color)
                );
            }
            if let Some(fixed) = &fixed {
                for e in fixed {
                    println!(
                        "fixed since baseline: {} {} {} (x{})",
                        e.rule.code(),
                        e.path,
                        e.subject,
                        e.count
                    );
                }
                println!(
                    "baseline: {} new finding(s), {} fixed, {} still recorded",
                    shown.len(),
                    fixed.iter().map(|e| e.count).sum::<usize>(),
                    scan.findings.len() - shown.len()
                );
            }
            println!("{}", summary.human());
        }
    }
    Ok(u8::from(exit_code != 0))
}
