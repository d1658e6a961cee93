//! Finding the target workspace (`cargo metadata`) and scanning every Rust source in it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::legacy::{aliases, Canonical};
use crate::model::{Edit, Finding, Rule};
use crate::rules::reexports::module_path_of;
use crate::rules::{check_parsed, parse_source, FileInput, Reexports, Role};
use crate::XtaskError;

/// `[workspace.metadata.ssot]` in the target workspace's `Cargo.toml`. Every key is optional.
///
/// ```toml
/// [workspace.metadata.ssot]
/// core = ["engine-core"]          # may define the engine
/// factory = ["engine-factory"]    # may construct engines
/// compat = ["engine-compat"]      # the deprecated-alias crate itself
/// compat-allow = ["legacy-app"]   # crates still allowed to depend on engine-compat
/// exclude = ["xtask/tests/fixtures"]
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct SsotConfig {
    /// Packages that define the engine.
    pub core: Vec<String>,
    /// Packages that construct engines.
    pub factory: Vec<String>,
    /// The compat package(s).
    pub compat: Vec<String>,
    /// Packages allowed to depend on the compat package.
    pub compat_allow: Vec<String>,
    /// Paths (relative to the workspace root) not scanned.
    pub exclude: Vec<String>,
}

impl Default for SsotConfig {
    fn default() -> Self {
        Self {
            core: vec!["engine-core".into()],
            factory: vec!["engine-factory".into()],
            compat: vec!["engine-compat".into()],
            compat_allow: Vec::new(),
            exclude: Vec::new(),
        }
    }
}

/// One scanned package.
#[derive(Debug, Clone)]
pub struct Package {
    /// Package name.
    pub name: String,
    /// Its directory.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: PathBuf,
    /// What it may do.
    pub role: Role,
    /// Whether it is or depends on an engine crate.
    pub engine_related: bool,
    /// How its code names the compat crate, if it depends on it.
    pub compat_local: Option<String>,
    /// How its code names each of its dependencies (`engine_core`, ...).
    pub deps: BTreeSet<String>,
}

/// A workspace ready to scan.
#[derive(Debug, Clone)]
pub struct Workspace {
    /// Its root directory.
    pub root: PathBuf,
    /// Its packages.
    pub packages: Vec<Package>,
    /// Its `[workspace.metadata.ssot]`.
    pub config: SsotConfig,
    /// Its target directory (never scanned).
    pub target_dir: PathBuf,
}

/// Everything a scan found.
#[derive(Debug, Default)]
pub struct Scan {
    /// All findings, sorted by path and position.
    pub findings: Vec<Finding>,
    /// Rust files and manifests scanned (paths relative to the root).
    pub files: BTreeSet<String>,
    /// Lines of Rust scanned.
    pub lines: usize,
    /// SSOT001 rewrites per file (absolute path).
    pub edits: BTreeMap<PathBuf, Vec<Edit>>,
    /// The text of every Rust file scanned, as read (absolute path; a file that is not UTF-8
    /// lossily decoded, and never rewritten). `--fix` applies the edits to exactly this text
    /// and refuses a file whose bytes changed since.
    pub sources: BTreeMap<PathBuf, String>,
}

impl Workspace {
    /// Loads the workspace of `manifest` with `cargo metadata --no-deps`.
    ///
    /// # Errors
    /// [`XtaskError::Metadata`] when cargo cannot read the workspace.
    pub fn load(manifest: &Path) -> Result<Self, XtaskError> {
        let meta = cargo_metadata::MetadataCommand::new()
            .manifest_path(manifest)
            .no_deps()
            .exec()
            .map_err(|e| XtaskError::Metadata {
                manifest: manifest.display().to_string(),
                message: e.to_string(),
            })?;
        let config: SsotConfig = match meta.workspace_metadata.get("ssot") {
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| XtaskError::Metadata {
                manifest: manifest.display().to_string(),
                message: format!("invalid [workspace.metadata.ssot]: {e}"),
            })?,
            None => SsotConfig::default(),
        };
        let engine_crates: BTreeSet<&str> = config
            .core
            .iter()
            .chain(&config.factory)
            .chain(&config.compat)
            .map(String::as_str)
            .collect();
        let mut packages = Vec::new();
        for p in meta.workspace_packages() {
            let name = p.name.to_string();
            let role = if config.core.contains(&name) {
                Role::Core
            } else if config.factory.contains(&name) {
                Role::Factory
            } else if config.compat.contains(&name) {
                Role::Compat
            } else {
                Role::Other
            };
            let compat_local = if role == Role::Compat {
                Some(name.replace('-', "_"))
            } else {
                p.dependencies
                    .iter()
                    .find(|d| config.compat.contains(&d.name))
                    .map(|d| {
                        d.rename
                            .clone()
                            .unwrap_or_else(|| d.name.clone())
                            .replace('-', "_")
                    })
            };
            let engine_related = role != Role::Other
                || p.dependencies
                    .iter()
                    .any(|d| engine_crates.contains(d.name.as_str()));
            let manifest = PathBuf::from(p.manifest_path.as_std_path());
            let deps = p
                .dependencies
                .iter()
                .map(|d| {
                    d.rename
                        .clone()
                        .unwrap_or_else(|| d.name.clone())
                        .replace('-', "_")
                })
                .collect();
            packages.push(Package {
                deps,
                dir: manifest.parent().map(Path::to_path_buf).unwrap_or_default(),
                manifest,
                name,
                role,
                engine_related,
                compat_local,
            });
        }
        packages.sort_by(|a, b| a.dir.cmp(&b.dir));
        Ok(Self {
            root: PathBuf::from(meta.workspace_root.as_std_path()),
            packages,
            config,
            target_dir: PathBuf::from(meta.target_directory.as_std_path()),
        })
    }

    /// Path of `p` relative to the root, with `/` separators.
    pub fn rel(&self, p: &Path) -> String {
        let r = p.strip_prefix(&self.root).unwrap_or(p);
        r.components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/")
    }

    /// The Rust files of one package: everything under its directory except `target`, hidden
    /// directories, nested crates (a directory with its own `Cargo.toml`) and excluded paths,
    /// with symlinks inside the workspace followed (see [`Workspace::scan_with`]).
    pub fn rust_files(&self, pkg: &Package) -> Vec<PathBuf> {
        let mut walk = Walk::new(self, &ScanOptions::default());
        walk.package(self, pkg)
            .into_iter()
            .map(|f| f.path)
            .collect()
    }

    /// The package a file belongs to (the deepest package directory containing it).
    pub fn package_of(&self, file: &Path) -> Option<&Package> {
        self.packages
            .iter()
            .filter(|p| file.starts_with(&p.dir))
            .max_by_key(|p| p.dir.components().count())
    }

    /// Scans every package with the default options.
    ///
    /// # Errors
    /// [`XtaskError::Io`] for an unreadable manifest. A Rust file that cannot be read, is not
    /// UTF-8 or does not parse is a [`Rule::Unscanned`] finding, not an error.
    pub fn scan(&self) -> Result<Scan, XtaskError> {
        self.scan_with(&ScanOptions::default())
    }

    /// Scans every package. Symlinks are followed once: a file reached twice (through a link
    /// and directly, or through two links) is scanned once, a link back to an ancestor
    /// directory is not followed again, and a link whose target leaves the workspace root (or
    /// enters `target/` or `.git/`) is reported as [`Rule::Unscanned`] and not read, unless
    /// `options.follow_external_symlinks` allows targets outside the root.
    ///
    /// # Errors
    /// [`XtaskError::Io`] for an unreadable manifest.
    pub fn scan_with(&self, options: &ScanOptions) -> Result<Scan, XtaskError> {
        let aliases = aliases();
        let mut scan = Scan::default();
        let mut walk = Walk::new(self, options);
        for pkg in &self.packages {
            self.scan_manifest(pkg, &mut scan)?;
            let compat_local = pkg.compat_local.clone().unwrap_or_else(|| {
                self.config
                    .compat
                    .first()
                    .map_or("engine_compat".into(), |c| c.replace('-', "_"))
            });
            // Each file is read and parsed once: for the package's `use` chains, then for its
            // checks; its text is kept for `--fix`, which rewrites exactly what was scanned.
            let mut files = Vec::new();
            for found in walk.package(self, pkg) {
                let file = found.path;
                let rel = self.rel(&file);
                let bytes = match std::fs::read(&file) {
                    Ok(b) => b,
                    Err(e) => {
                        scan.findings.push(unscanned(
                            &rel,
                            (1, 1),
                            "unreadable",
                            format!("cannot read this file: {e}"),
                            "make the file readable, or exclude its directory in [workspace.metadata.ssot]",
                        ));
                        scan.files.insert(rel);
                        continue;
                    }
                };
                let source = match String::from_utf8(bytes) {
                    Ok(s) => s,
                    Err(e) => {
                        let at = e.utf8_error().valid_up_to();
                        let bytes = e.into_bytes();
                        let position = position_of(&bytes[..at]);
                        scan.findings.push(unscanned(
                            &rel,
                            position,
                            "not-utf8",
                            format!("not UTF-8 (invalid byte at offset {at}); not checked"),
                            "save the file as UTF-8, or exclude its directory in [workspace.metadata.ssot]",
                        ));
                        scan.files.insert(rel);
                        scan.sources
                            .insert(file, String::from_utf8_lossy(&bytes).into_owned());
                        continue;
                    }
                };
                let in_pkg = file
                    .strip_prefix(&pkg.dir)
                    .map_or_else(|_| rel.clone(), |p| p.display().to_string());
                match parse_source(&rel, &source) {
                    Ok(parsed) => files.push((file, rel, module_path_of(&in_pkg), source, parsed)),
                    Err(e) => {
                        scan.findings.push(unscanned(
                            &rel,
                            (e.line.max(1), e.column.max(1)),
                            "parse-error",
                            format!("cannot parse Rust source: {}; not checked", e.message),
                            "fix the syntax error, or exclude the file's directory in [workspace.metadata.ssot] if it is not Rust",
                        ));
                        scan.lines += source.lines().count();
                        scan.files.insert(rel);
                        scan.sources.insert(file, source);
                    }
                }
            }
            let trees: Vec<(&str, &syn::File)> = files
                .iter()
                .map(|(_, _, m, _, p)| (m.as_str(), &p.file))
                .collect();
            let reexports = Reexports::of_package(&trees, &compat_local, &aliases);
            for (file, rel, module, source, parsed) in &files {
                let input = FileInput {
                    path: rel,
                    source,
                    role: pkg.role,
                    engine_related: pkg.engine_related
                        || source.contains("Engine")
                        || source.contains("engine")
                        || source.contains("active_runs"),
                    aliases: &aliases,
                    compat_crate: &compat_local,
                    module,
                    reexports: Some(&reexports),
                };
                let outcome = check_parsed(&input, parsed);
                scan.lines += source.lines().count();
                scan.files.insert(rel.clone());
                scan.findings.extend(outcome.findings);
                if !outcome.edits.is_empty() {
                    scan.edits.insert(file.clone(), outcome.edits);
                }
            }
            drop(trees);
            for (file, _, _, source, _) in files {
                scan.sources.insert(file, source);
            }
            // The spans of this package's trees are no longer used.
            proc_macro2::extra::invalidate_current_thread_spans();
        }
        for (path, position, subject, message, help) in walk.problems {
            let rel = self.rel(&path);
            scan.findings
                .push(unscanned(&rel, position, subject, message, help));
            scan.files.insert(rel);
        }
        scan.findings
            .sort_by(|a, b| (&a.path, a.line, a.column).cmp(&(&b.path, b.line, b.column)));
        Ok(scan)
    }

    fn scan_manifest(&self, pkg: &Package, scan: &mut Scan) -> Result<(), XtaskError> {
        let rel = self.rel(&pkg.manifest);
        scan.files.insert(rel.clone());
        let Some(local) = &pkg.compat_local else {
            return Ok(());
        };
        if pkg.role == Role::Compat || self.config.compat_allow.contains(&pkg.name) {
            return Ok(());
        }
        let text =
            std::fs::read_to_string(&pkg.manifest).map_err(|e| XtaskError::io(&pkg.manifest, e))?;
        let needles: Vec<String> = self
            .config
            .compat
            .iter()
            .cloned()
            .chain(std::iter::once(local.clone()))
            .collect();
        let (line, column, compat_name_len) = text
            .lines()
            .enumerate()
            .find_map(|(i, l)| {
                needles
                    .iter()
                    .find_map(|n| l.find(n.as_str()).map(|c| (c, n.chars().count())))
                    .filter(|_| !l.trim_start().starts_with('#'))
                    .map(|(c, len)| (i + 1, l[..c].chars().count() + 1, len))
            })
            .unwrap_or((1, 1, 1));
        scan.findings.push(Finding {
            rule: Rule::CompatDependency,
            path: rel.clone(),
            line,
            column,
            end_line: line,
            end_column: column + compat_name_len,
            severity: crate::model::Severity::Error,
            subject: pkg.name.clone(),
            message: format!("package `{}` depends on the deprecated compat crate", pkg.name),
            help: "run `cargo ssot migrate --fix`, then remove the dependency (or add the package to [workspace.metadata.ssot] compat-allow while migrating)".into(),
            fingerprint: format!("{}|{rel}|{}", Rule::CompatDependency.code(), pkg.name),
        });
        Ok(())
    }
}

/// How [`Workspace::scan_with`] treats symlinks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanOptions {
    /// Read files that a symlink inside the workspace points to outside the workspace root
    /// (by default such a link is reported as [`Rule::Unscanned`] and not followed).
    pub follow_external_symlinks: bool,
}

/// A file the walk found: the path as seen inside the package (a symlink's own path).
struct Found {
    path: PathBuf,
}

/// A problem the walk met instead of a file: path, position, subject, message, help.
type Problem = (PathBuf, (usize, usize), &'static str, String, &'static str);

/// The walk over the packages' directories, shared by one scan so that a file reached twice
/// (through symlinks) is read once.
struct Walk {
    /// The workspace root, symlinks resolved.
    root: PathBuf,
    /// Directories whose contents are never read (`target/`, resolved).
    never: Vec<PathBuf>,
    /// Resolved paths of the files handed out so far.
    seen: std::collections::HashSet<PathBuf>,
    follow_external: bool,
    /// What the walk could not follow, reported as SSOT000.
    problems: Vec<Problem>,
}

impl Walk {
    fn new(ws: &Workspace, options: &ScanOptions) -> Self {
        let root = ws.root.canonicalize().unwrap_or_else(|_| ws.root.clone());
        let mut never = vec![root.join("target")];
        if let Ok(t) = ws.target_dir.canonicalize() {
            never.push(t);
        }
        Self {
            root,
            never,
            seen: std::collections::HashSet::new(),
            follow_external: options.follow_external_symlinks,
            problems: Vec::new(),
        }
    }

    /// Why a resolved path may not be read, if it may not.
    fn refuse(
        root: &Path,
        never: &[PathBuf],
        follow_external: bool,
        real: &Path,
    ) -> Option<(&'static str, String, &'static str)> {
        if real.components().any(|c| c.as_os_str() == ".git")
            || never.iter().any(|n| real.starts_with(n))
        {
            return Some((
                "symlink-into-build-dir",
                format!(
                    "symlink to {} (inside target/ or .git/); not read",
                    real.display()
                ),
                "point the symlink at a source file, or remove it",
            ));
        }
        if !follow_external && !real.starts_with(root) {
            return Some((
                "symlink-outside-workspace",
                format!(
                    "symlink to {}, outside the workspace root; not read",
                    real.display()
                ),
                "pass --follow-external-symlinks to scan (and fix) it, or exclude its directory in [workspace.metadata.ssot]",
            ));
        }
        None
    }

    /// The package's Rust files, sorted, each not handed out before.
    fn package(&mut self, ws: &Workspace, pkg: &Package) -> Vec<Found> {
        let mut refused: Vec<Problem> = Vec::new();
        let mut errors: Vec<Problem> = Vec::new();
        let mut files = Vec::new();
        let (root, never, follow) = (self.root.clone(), self.never.clone(), self.follow_external);
        let walker = walkdir::WalkDir::new(&pkg.dir)
            .follow_links(true)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|e| {
                if e.depth() == 0 {
                    return true;
                }
                if e.file_type().is_dir() {
                    let name = e.file_name().to_string_lossy();
                    let rel = ws.rel(e.path());
                    if name == "target"
                        || name.starts_with('.')
                        || e.path().join("Cargo.toml").exists()
                        || ws
                            .config
                            .exclude
                            .iter()
                            .any(|x| rel == *x || rel.starts_with(&format!("{x}/")))
                    {
                        return false;
                    }
                }
                if !e.path_is_symlink() {
                    return true;
                }
                let Ok(real) = e.path().canonicalize() else {
                    return true;
                };
                let is_rust_or_dir =
                    e.file_type().is_dir() || e.path().extension().is_some_and(|x| x == "rs");
                match Self::refuse(&root, &never, follow, &real) {
                    Some((subject, message, help)) => {
                        if is_rust_or_dir && (!e.file_type().is_dir() || holds_rust(&real)) {
                            refused.push((e.path().to_path_buf(), (1, 1), subject, message, help));
                        }
                        false
                    }
                    None => true,
                }
            });
        for entry in walker {
            let entry = match entry {
                Ok(e) => e,
                // A link back to an ancestor: its files are walked once already.
                Err(e) if e.loop_ancestor().is_some() => continue,
                Err(e) => {
                    let path = e.path().map_or_else(|| pkg.dir.clone(), Path::to_path_buf);
                    let is_rust = path.extension().is_some_and(|x| x == "rs");
                    if is_rust || e.io_error().is_some() {
                        errors.push((
                            path,
                            (1, 1),
                            "unreadable",
                            format!("cannot read this path: {e}"),
                            "make it readable, or exclude its directory in [workspace.metadata.ssot]",
                        ));
                    }
                    continue;
                }
            };
            if !(entry.file_type().is_file() && entry.path().extension().is_some_and(|x| x == "rs"))
            {
                continue;
            }
            let path = entry.into_path();
            let real = path.canonicalize().unwrap_or_else(|_| path.clone());
            if self.seen.insert(real) {
                files.push(Found { path });
            }
        }
        self.problems.append(&mut refused);
        self.problems.append(&mut errors);
        files.sort_by(|a, b| a.path.cmp(&b.path));
        files
    }
}

/// Whether a directory holds a Rust file (listing only; nothing is read).
fn holds_rust(dir: &Path) -> bool {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .any(|e| e.path().extension().is_some_and(|x| x == "rs"))
}

/// The 1-based line and column (in characters) just after `prefix`.
fn position_of(prefix: &[u8]) -> (usize, usize) {
    let line_start = prefix
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    let line = prefix.iter().filter(|b| **b == b'\n').count() + 1;
    let column = String::from_utf8_lossy(&prefix[line_start..])
        .chars()
        .count()
        + 1;
    (line, column)
}

/// An SSOT000 finding: a file the scan could not check.
fn unscanned(
    rel: &str,
    (line, column): (usize, usize),
    subject: &str,
    message: String,
    help: &str,
) -> Finding {
    Finding {
        rule: Rule::Unscanned,
        path: rel.to_owned(),
        line,
        column,
        end_line: line,
        end_column: column + 1,
        severity: crate::model::Severity::Error,
        subject: subject.to_owned(),
        message,
        help: help.to_owned(),
        fingerprint: format!("{}|{rel}|{subject}", Rule::Unscanned.code()),
    }
}

/// The alias table type, re-exported for callers that scan single files.
pub type Aliases = BTreeMap<String, Canonical>;
