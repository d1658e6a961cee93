//! `cargo ssot`: the migration commands for a downstream workspace, installed with
//! `cargo install --git <this repository> xtask --bin cargo-ssot` (or `--path xtask` from a
//! checkout) and run from that workspace's root: `cargo ssot migrate --check`, `--status`,
//! `--fix`. This repository's own chores (tidy, bench, doc) are not part of it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use xtask::migrate::MigrateArgs;
use xtask::XtaskError;

#[derive(Parser)]
#[command(name = "cargo", bin_name = "cargo")]
enum Cargo {
    /// Migrate a workspace to the one engine (single source of truth checks and fixes).
    Ssot(Ssot),
}

#[derive(Args)]
#[command(
    version,
    about = "Migrate a workspace to the one engine: checks SSOT001-SSOT005, reports, baselines, fixes"
)]
struct Ssot {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check, report on, baseline or rewrite the migration to the single engine.
    Migrate(MigrateArgs),
}

/// The manifest of the workspace around the current directory.
fn current_workspace() -> Result<PathBuf, XtaskError> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["locate-project", "--workspace", "--message-format", "plain"])
        .output()
        .map_err(|e| XtaskError::io("cargo locate-project", e))?;
    if !out.status.success() {
        return Err(XtaskError::Usage(format!(
            "no Cargo workspace here ({}); run from a workspace or pass --manifest-path",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn main() -> ExitCode {
    let Cargo::Ssot(ssot) = Cargo::parse();
    let result = match &ssot.command {
        Command::Migrate(args) => match &args.manifest_path {
            Some(path) => xtask::migrate::run(args, path),
            None => current_workspace().and_then(|m| xtask::migrate::run(args, &m)),
        },
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
