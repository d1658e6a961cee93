//! The `migrate` command, shared by `cargo xtask migrate` (this repository) and the installable
//! `cargo ssot migrate` (a downstream workspace): check, report, baseline, status and fix.

use std::path::{Path, PathBuf};

use clap::{ArgGroup, Args, ValueEnum};

use crate::baseline::Baseline;
use crate::report::{CheckReport, Summary};
use crate::scan::{ScanOptions, Workspace};
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
    /// With --fix: fix even if the workspace has uncommitted changes (as `cargo fix`).
    #[arg(long)]
    pub allow_dirty: bool,
    /// With --fix: fix even if the workspace has staged changes (as `cargo fix`).
    #[arg(long)]
    pub allow_staged: bool,
    /// With --fix: fix even if the workspace is not in a git repository (as `cargo fix`).
    #[arg(long)]
    pub allow_no_vcs: bool,
    /// With --fix: keep the edits even when the verifying `cargo check` fails (by default
    /// every file touched is restored, byte for byte), as `cargo fix --broken-code`.
    #[arg(long)]
    pub broken_code: bool,
    /// Scan (and fix) files that symlinks inside the workspace point to outside its root (by
    /// default such links are reported as SSOT000 and not followed).
    #[arg(long)]
    pub follow_external_symlinks: bool,
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
        allow_dirty,
        allow_staged,
        allow_no_vcs,
        broken_code,
        follow_external_symlinks,
        baseline,
        manifest_path,
        format,
    } = args;
    let (check, want_status, fix, dry_run, no_verify, format) =
        (*check, *want_status, *fix, *dry_run, *no_verify, *format);
    let fix_only = [
        (dry_run, "--dry-run"),
        (no_verify, "--no-verify"),
        (*allow_dirty, "--allow-dirty"),
        (*allow_staged, "--allow-staged"),
        (*allow_no_vcs, "--allow-no-vcs"),
        (*broken_code, "--broken-code"),
    ];
    if let Some((_, flag)) = fix_only.iter().find(|(on, _)| *on && !fix) {
        return Err(XtaskError::Usage(format!("{flag} only goes with --fix")));
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
    if fix && !dry_run {
        // Before anything is read for the fix: cargo fix's rules on uncommitted changes.
        crate::vcs::check(
            &ws.root,
            crate::vcs::Allow {
                dirty: *allow_dirty,
                staged: *allow_staged,
                no_vcs: *allow_no_vcs,
            },
        )?;
    }
    let scan = ws.scan_with(&ScanOptions {
        follow_external_symlinks: *follow_external_symlinks,
    })?;
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
        return fix_workspace(
            &ws,
            &scan,
            FixMode {
                dry_run,
                verify: !no_verify,
                broken_code: *broken_code,
            },
        );
    }
    Ok(2)
}

/// How `--fix` runs.
#[derive(Debug, Clone, Copy)]
struct FixMode {
    dry_run: bool,
    verify: bool,
    broken_code: bool,
}

/// `--fix`: rewrite the sources and edit the manifests (all written, or none), then check that
/// the result builds; if it does not, put every file back unless `--broken-code`.
fn fix_workspace(
    ws: &Workspace,
    scan: &crate::scan::Scan,
    mode: FixMode,
) -> Result<u8, XtaskError> {
    let rewrites = crate::fix::rewrites(ws, scan)?;
    let (manifests, notes) = plan_manifests(ws, scan, &rewrites)?;
    if mode.dry_run {
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
    }
    let mut written = crate::transaction::Written::default();
    if !mode.dry_run {
        let changes: Vec<crate::transaction::Change<'_>> = rewrites
            .iter()
            .map(|r| (&r.file, &r.before, &r.after))
            .chain(manifests.iter().map(|m| (&m.path, &m.before, &m.after)))
            .map(|(path, before, after)| crate::transaction::Change {
                path,
                before: before.as_bytes(),
                after: after.as_bytes(),
            })
            .collect();
        written = crate::transaction::write_all(&changes)?;
    }
    let verb = if mode.dry_run {
        "would rewrite"
    } else {
        "rewrote"
    };
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
    for note in &notes {
        eprintln!("warning: {note}");
    }
    for f in scan
        .findings
        .iter()
        .filter(|f| f.rule == crate::model::Rule::Unscanned)
    {
        eprintln!(
            "warning: {}:{}:{}: not checked or fixed: {}",
            f.path, f.line, f.column, f.message
        );
    }
    if mode.dry_run || !mode.verify || written.is_empty() {
        return Ok(0);
    }
    let lock = ws.root.join("Cargo.lock");
    written.also(crate::transaction::Snapshot::take(&lock)?);
    let Some(errors) = verify(ws, &rewrites, &manifests)? else {
        return Ok(0);
    };
    let names = errors.packages.join(", ");
    if mode.broken_code {
        eprintln!(
            "error: after the fix, {names} do(es) not build under -D deprecated; the edits are kept (--broken-code). The compiler said:\n{}",
            errors.first
        );
        return Ok(1);
    }
    let restored = written.restore()?;
    eprintln!(
        "error: after the fix, {names} do(es) not build under -D deprecated, so every file the fix touched was restored ({restored} file(s), Cargo.lock included); pass --broken-code to keep the edits. The compiler said:\n{}",
        errors.first
    );
    Ok(1)
}

/// The manifest edits the rewrites call for: each package with an engine-compat dependency
/// gets the canonical crates its code now names, and loses engine-compat when none of its
/// sources names the compat crate any more. The sources are the scan's text (after the
/// rewrites), never read again.
fn plan_manifests(
    ws: &Workspace,
    scan: &crate::scan::Scan,
    rewrites: &[crate::fix::Rewrite],
) -> Result<(Vec<crate::manifest::ManifestEdit>, Vec<String>), XtaskError> {
    let workspace_manifest = ws.root.join("Cargo.toml");
    let mut set = crate::manifest::ManifestSet::new();
    for pkg in &ws.packages {
        let Some(compat) = &pkg.compat_local else {
            continue;
        };
        if pkg.role == crate::rules::Role::Compat {
            continue;
        }
        let mut needs = crate::manifest::Needs::default();
        for (file, text) in &scan.sources {
            if ws.package_of(file).map(|p| &p.manifest) != Some(&pkg.manifest) {
                continue;
            }
            let text = rewrites
                .iter()
                .find(|r| r.file == *file)
                .map_or(text.as_str(), |r| r.after.as_str());
            needs.compat |= text.contains(compat.as_str());
            for (krate, package) in crate::manifest::CANONICAL {
                if text.contains(&format!("{krate}::")) {
                    needs.canonical.insert(package);
                }
            }
        }
        set.edit_package(&pkg.manifest, &workspace_manifest, &needs)?;
    }
    let notes = std::mem::take(&mut set.notes);
    Ok((set.edits(), notes))
}

/// The compiler's verdict on a fix that does not build.
#[derive(Debug)]
struct BuildErrors {
    packages: Vec<String>,
    first: String,
}

/// Runs `cargo check -D deprecated` on the packages the fix touched; `Some` with the
/// compiler's first errors if they do not build.
fn verify(
    ws: &Workspace,
    rewrites: &[crate::fix::Rewrite],
    manifests: &[crate::manifest::ManifestEdit],
) -> Result<Option<BuildErrors>, XtaskError> {
    let mut packages = std::collections::BTreeSet::new();
    for path in rewrites
        .iter()
        .map(|r| r.file.clone())
        .chain(manifests.iter().map(|m| m.path.clone()))
    {
        if let Some(p) = ws.package_of(&path) {
            packages.insert(p.name.clone());
        }
    }
    if packages.is_empty() {
        return Ok(None);
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
    let names: Vec<String> = packages.into_iter().collect();
    if out.status.success() {
        eprintln!(
            "verified: {} build(s) under -D deprecated",
            names.join(", ")
        );
        return Ok(None);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let first: Vec<&str> = stderr
        .lines()
        .skip_while(|l| !l.starts_with("error"))
        .take(40)
        .collect();
    Ok(Some(BuildErrors {
        packages: names,
        first: first.join("\n"),
    }))
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
                // A file the scan did not read is not read for its snippet either (a link
                // leaving the workspace, a file that is not UTF-8), except a parse error's.
                let readable =
                    f.rule != crate::model::Rule::Unscanned || f.subject == "parse-error";
                let source = readable
                    .then(|| std::fs::read_to_string(ws.root.join(&f.path)).ok())
                    .flatten();
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
