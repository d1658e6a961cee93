//! `cargo xtask`: migration checks, the compliance report, baselines, rewrites and tidy.
#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
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
    /// Check, report on, baseline or rewrite the migration to the single engine (the same
    /// command `cargo ssot migrate` runs in a downstream workspace).
    Migrate(xtask::migrate::MigrateArgs),
    /// Check this workspace's own invariants.
    Tidy,
    /// Build this workspace's docs (warnings denied) with cross-crate links resolved on the
    /// first build, and fail on any link left unresolved in the HTML.
    Doc,
    /// Run the benchmarks as interleaved rounds of ours and the baseline (a few minutes) and
    /// print `name  ours  baseline  median-ratio  spread`.
    Bench {
        /// Rounds per comparison; each measures ours and every baseline once.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=100))]
        rounds: u16,
        /// Only the benchmarks whose name contains one of these (e.g. `lifecycle tail`).
        only: Vec<String>,
    },
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
        move |e: std::io::Error| XtaskError::io(&path, e)
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
        Command::Bench { rounds, only } => xtask::bench::run(
            &this_workspace(),
            &xtask::bench::Options {
                rounds: usize::from(rounds),
                only,
            },
        ),
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
        Command::Migrate(args) => xtask::migrate::run(&args, &this_workspace().join("Cargo.toml")),
    }
}
