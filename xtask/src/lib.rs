//! `xtask`: the workspace's migration tooling, run as `cargo xtask <command>`.
//!
//! - `migrate --check` scans a workspace for the five single-source-of-truth rules
//!   (`SSOT001`..`SSOT005`), prints `path:line:col  RULE  message  help: ...` and a summary with
//!   the compliance percentage; `--format json` emits one object; `--baseline FILE` fails only on
//!   findings not recorded with `--write-baseline FILE`.
//! - `migrate --status` says which migration phase the workspace has reached.
//! - `migrate --fix [--dry-run]` rewrites every `SSOT001` finding to its canonical path on the
//!   syntax tree, byte-for-byte elsewhere, and edits the manifests, with `cargo fix`'s rules: a
//!   dirty tree is refused unless allowed ([`vcs`]), files are written all or none and
//!   atomically, and restored when the verifying build fails ([`transaction`]).
//! - `tidy` checks this workspace's own invariants.
//! - `bench` runs the benchmarks briefly and prints `name  ours  baseline  ratio`.
//!
//! ```
//! use xtask::rules::{check_file, FileInput, Role};
//!
//! let aliases = xtask::legacy::aliases();
//! let source = "//! app\nuse engine_compat::ExecutionEngine;\nfn f(_: &ExecutionEngine) {}\n";
//! let out = check_file(&FileInput {
//!     path: "src/lib.rs", source, role: Role::Other, engine_related: true,
//!     aliases: &aliases, compat_crate: "engine_compat", module: "crate", reexports: None,
//! })?;
//! assert_eq!(out.findings.len(), 2);
//! let fixed = xtask::fix::apply_edits(source, &out.edits)?;
//! assert_eq!(fixed, "//! app\nuse engine_core::UserExecutionEngine;\nfn f(_: &UserExecutionEngine) {}\n");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod baseline;
pub mod bench;
pub mod doclinks;
pub mod fix;
pub mod legacy;
pub mod manifest;
pub mod migrate;
pub mod model;
pub mod render;
pub mod report;
pub mod rules;
pub mod scan;
pub mod status;
pub mod tidy;
pub mod transaction;
pub mod vcs;

/// Everything that makes xtask exit with code 2.
#[derive(Debug, thiserror::Error)]
pub enum XtaskError {
    /// `cargo metadata` failed.
    #[error("cannot read the workspace of {manifest}: {message}")]
    Metadata {
        /// The manifest given.
        manifest: String,
        /// Cargo's message.
        message: String,
    },
    /// Flags that do not go together.
    #[error("usage: {0}")]
    Usage(String),
    /// A file could not be read or written (or a command not run).
    #[error("{path}: {source}")]
    Io {
        /// The file or command.
        path: String,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// A manifest could not be parsed or edited.
    #[error("{path}: {message}")]
    Manifest {
        /// The manifest.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// A Rust file did not parse.
    #[error(transparent)]
    Parse(#[from] rules::ParseError),
    /// A baseline file is missing or malformed.
    #[error("baseline {path}: {message}")]
    Baseline {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// An edit that does not fit the text (past its end, reversed, or inside a character).
    #[error("{path}: a rewrite at bytes {start}..{end} does not fit the text ({len} bytes); file left unchanged")]
    EditOutOfRange {
        /// The file.
        path: String,
        /// The edit's start.
        start: usize,
        /// The edit's end.
        end: usize,
        /// The text's length in bytes.
        len: usize,
    },
    /// A file changed between the scan and the write.
    #[error("{path} changed since it was scanned; nothing was written. Run `--fix` again on the current files")]
    ChangedSinceScan {
        /// The file.
        path: String,
    },
    /// Uncommitted changes, refused as `cargo fix` refuses them.
    #[error(
        "the workspace has uncommitted changes, and `--fix` edits files; commit (or stash) the changes to these files, or pass {}:\n\n{}\n",
        if *only_staged { "`--allow-staged` (or `--allow-dirty`)" } else { "`--allow-dirty`" },
        files.iter().map(|f| format!("  * {f}")).collect::<Vec<_>>().join("\n")
    )]
    Dirty {
        /// `path (dirty)` or `path (staged)`, one per file.
        files: Vec<String>,
        /// Whether every change is staged (then `--allow-staged` is enough).
        only_staged: bool,
    },
    /// No version control around the workspace.
    #[error("no git repository found for {root}, and `--fix` edits files that could not be recovered from version control; pass `--allow-no-vcs` to fix anyway")]
    NoVcs {
        /// The workspace root.
        root: String,
    },
    /// git could not be run, or failed.
    #[error("{message}")]
    Git {
        /// What went wrong, and what to do.
        message: String,
    },
    /// Files that could not be put back after a failed verification.
    #[error("could not restore every file; restore these from version control:\n  {}", failed.join("\n  "))]
    Restore {
        /// One message per file.
        failed: Vec<String>,
    },
    /// Two rewrites overlap (a bug in a rule, reported rather than corrupting the file).
    #[error("{path}: overlapping rewrites at bytes {at}; file left unchanged")]
    OverlappingEdits {
        /// The file.
        path: String,
        /// Where.
        at: usize,
    },
}

impl XtaskError {
    /// An I/O error on `path`, keeping the OS error as the source.
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}
