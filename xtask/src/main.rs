//! `cargo xtask`: migration checks, the compliance report, baselines, rewrites and tidy.
#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{ArgGroup, Parser, Subcommand, ValueEnum};
use xtask::baseline::Baseline;
use xtask::report::{CheckReport, Summary};
use xtask::scan::Workspace;
use xtask::status::{status, Phase};
use xtask::XtaskError;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Workspace migration tooling",
    bin_name = "cargo xtask"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check, report on, baseline or rewrite the migration to the single engine.
    #[command(group(ArgGroup::new("mode").required(true).args(["check", "write_baseline", "status", "fix"])))]
    Migrate {
        /// Report findings; exit 1 if any (or any not in --baseline).
        #[arg(long)]
        check: bool,
        /// Record today's findings in FILE.
        #[arg(long, value_name = "FILE")]
        write_baseline: Option<PathBuf>,
        /// Say which migration phase the workspace has reached.
        #[arg(long)]
        status: bool,
        /// Rewrite every SSOT001 finding to its canonical path.
        #[arg(long)]
        fix: bool,
        /// With --fix: print a unified diff instead of writing.
        #[arg(long)]
        dry_run: bool,
        /// With --check: fail only on findings not in this baseline.
        #[arg(long, value_name = "FILE")]
        baseline: Option<PathBuf>,
        /// The target workspace's Cargo.toml (default: this workspace).
        #[arg(long, value_name = "PATH")]
        manifest_path: Option<PathBuf>,
        /// Output format of --check.
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Check this workspace's own invariants.
    Tidy,
    /// Build this workspace's docs (warnings denied) with cross-crate links resolved on the
    /// first build, and fail on any link left unresolved in the HTML.
    Doc,
    /// Run the benchmarks briefly (under 2 minutes) and print `name  ours  baseline  ratio`.
    Bench,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Human,
    Json,
}

fn doc() -> Result<u8, XtaskError> {
    let root = this_workspace();
    let meta = cargo_metadata::MetadataCommand::new()
        .manifest_path(root.join("Cargo.toml"))
        .no_deps()
        .exec()
        .map_err(|e| XtaskError::Metadata {
            manifest: root.join("Cargo.toml").display().to_string(),
            message: e.to_string(),
        })?;
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |e: std::io::Error| XtaskError::Io {
            path,
            message: e.to_string(),
        }
    };
    let doc_dir = meta.target_directory.as_std_path().join("doc");
    // rustdoc links to another crate only if that crate's docs exist when it starts, and
    // `cargo doc --workspace` runs crates in parallel: document them one by one, dependencies
    // first (see xtask::doclinks).
    let packages = meta.workspace_packages();
    let names: Vec<&str> = packages.iter().map(|p| p.name.as_str()).collect();
    let mut order: Vec<&str> = Vec::new();
    while order.len() < packages.len() {
        let before = order.len();
        for p in &packages {
            let ready = p.dependencies.iter().all(|d| {
                !names.contains(&d.name.as_str())
                    || d.kind == cargo_metadata::DependencyKind::Development
                    || order.contains(&d.name.as_str())
            });
            if ready && !order.contains(&p.name.as_str()) {
                order.push(p.name.as_str());
            }
        }
        if order.len() == before {
            return Err(XtaskError::Usage(
                "workspace dependencies form a cycle".into(),
            ));
        }
    }
    for package in &order {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["doc", "--no-deps", "--package", package])
            .env("RUSTDOCFLAGS", "-D warnings")
            .current_dir(&root)
            .status()
            .map_err(io(Path::new("cargo doc")))?;
        if !status.success() {
            return Ok(1);
        }
    }
    let crates: Vec<String> = packages
        .iter()
        .flat_map(|p| &p.targets)
        .filter(|t| t.is_lib())
        .map(|t| t.name.replace('-', "_"))
        .collect();
    let problems = xtask::doclinks::check(&doc_dir, &crates).map_err(io(&doc_dir))?;
    for p in &problems {
        println!("{p}");
    }
    if problems.is_empty() {
        println!(
            "doc: {} crates documented, no unresolved link",
            crates.len()
        );
        Ok(0)
    } else {
        println!("doc: {} unresolved link(s)", problems.len());
        Ok(1)
    }
}

fn this_workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<u8, XtaskError> {
    match cli.command {
        Command::Bench => bench(),
        Command::Doc => doc(),
        Command::Tidy => {
            let problems = xtask::tidy::tidy(&this_workspace())?;
            for p in &problems {
                println!("{p}");
            }
            if problems.is_empty() {
                println!("tidy: all workspace invariants hold");
                Ok(0)
            } else {
                println!("tidy: {} problem(s)", problems.len());
                Ok(1)
            }
        }
        Command::Migrate {
            check,
            write_baseline,
            status: want_status,
            fix,
            dry_run,
            baseline,
            manifest_path,
            format,
        } => {
            if dry_run && !fix {
                return Err(XtaskError::Usage("--dry-run only goes with --fix".into()));
            }
            if baseline.is_some() && !check {
                return Err(XtaskError::Usage(
                    "--baseline only goes with --check".into(),
                ));
            }
            let manifest = manifest_path.unwrap_or_else(|| this_workspace().join("Cargo.toml"));
            let ws = Workspace::load(&manifest)?;
            let scan = ws.scan()?;
            if check {
                return report(&ws, &scan, baseline.as_deref(), format);
            }
            if let Some(file) = write_baseline {
                Baseline::from_findings(&scan.findings).write(&file)?;
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
                let phase = match s.phase {
                    Phase::One => "1 (legacy engines, duplicates or shared state remain)",
                    Phase::Two => "2 (only uses of deprecated aliases remain)",
                    Phase::Three if s.complete => {
                        "3, complete (no compat use and no dependency left)"
                    }
                    Phase::Three => "3 (no compat use left; the dependency can go)",
                };
                println!("phase {phase}");
                for b in &s.blockers {
                    println!("  blocks the next phase: {b}");
                }
                return Ok(0);
            }
            if fix {
                let rewrites = xtask::fix::rewrites(&ws, &scan)?;
                if dry_run {
                    for r in &rewrites {
                        print!("{}", r.diff());
                    }
                } else {
                    xtask::fix::write(&ws, &rewrites)?;
                }
                let verb = if dry_run { "would rewrite" } else { "rewrote" };
                let ssot001 = scan
                    .findings
                    .iter()
                    .filter(|f| f.rule == xtask::model::Rule::DeprecatedName)
                    .count();
                eprintln!(
                    "{verb} {} file(s) ({ssot001} SSOT001 findings)",
                    rewrites.len()
                );
                for note in missing_dependencies(&ws, &rewrites) {
                    eprintln!("note: {note}");
                }
                return Ok(0);
            }
            Ok(2)
        }
    }
}

fn cargo(args: &[&str], envs: &[(&str, &str)]) -> Result<std::process::Output, XtaskError> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("==> cargo {}", args.join(" "));
    std::process::Command::new(cargo)
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(this_workspace())
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| XtaskError::Io {
            path: "cargo".into(),
            message: e.to_string(),
        })
}

fn bench() -> Result<u8, XtaskError> {
    let short = [
        "--warm-up-time",
        "0.3",
        "--measurement-time",
        "0.7",
        "--sample-size",
        "10",
    ];
    let mut runs: Vec<Vec<&str>> = vec![
        vec!["bench", "-p", "engine-tests", "--bench", "engine", "--"],
        vec!["bench", "-p", "xtask", "--bench", "scan", "--"],
    ];
    for r in &mut runs {
        r.extend_from_slice(&short);
        let out = cargo(r, &[])?;
        if !out.status.success() {
            eprintln!("error: `cargo {}` failed", r.join(" "));
            return Ok(1);
        }
    }
    let footprint = cargo(
        &["bench", "-p", "engine-tests", "--bench", "footprint"],
        &[],
    )?;
    let target = std::env::var("CARGO_TARGET_DIR")
        .map_or_else(|_| this_workspace().join("target"), PathBuf::from);
    println!(
        "{:<28} {:>22} {:>22} {:>9}",
        "name", "ours", "baseline", "ratio"
    );
    for row in xtask::bench::rows(&target.join("criterion")) {
        println!("{}", row.line());
    }
    print!("{}", String::from_utf8_lossy(&footprint.stdout));
    Ok(u8::from(!footprint.status.success()))
}

/// Canonical crates the rewritten code names but its package does not depend on yet.
fn missing_dependencies(ws: &Workspace, rewrites: &[xtask::fix::Rewrite]) -> Vec<String> {
    let mut notes = std::collections::BTreeSet::new();
    for r in rewrites {
        let Some(pkg) = ws.package_of(&ws.root.join(&r.path)) else {
            continue;
        };
        for krate in ["engine_core", "engine_factory"] {
            if r.after.contains(&format!("{krate}::")) && !pkg.deps.contains(krate) {
                notes.insert(format!(
                    "package `{}` now names `{krate}`: add `{}` to its [dependencies]",
                    pkg.name,
                    krate.replace('_', "-")
                ));
            }
        }
    }
    notes.into_iter().collect()
}

fn report(
    ws: &Workspace,
    scan: &xtask::scan::Scan,
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
        Format::Human => {
            let shown: Vec<&xtask::model::Finding> = new
                .clone()
                .unwrap_or_else(|| scan.findings.iter().collect());
            for f in &shown {
                println!("{}", f.human());
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
