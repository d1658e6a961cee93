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
    /// directories, nested crates (a directory with its own `Cargo.toml`) and excluded paths.
    pub fn rust_files(&self, pkg: &Package) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = walkdir::WalkDir::new(&pkg.dir)
            .into_iter()
            .filter_entry(|e| {
                if e.depth() == 0 || !e.file_type().is_dir() {
                    return true;
                }
                let name = e.file_name().to_string_lossy();
                let rel = self.rel(e.path());
                !(name == "target"
                    || name.starts_with('.')
                    || e.path().join("Cargo.toml").exists()
                    || self
                        .config
                        .exclude
                        .iter()
                        .any(|x| rel == *x || rel.starts_with(&format!("{x}/"))))
            })
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_file() && e.path().extension().is_some_and(|x| x == "rs"))
            .map(walkdir::DirEntry::into_path)
            .collect();
        files.sort();
        files
    }

    /// The package a file belongs to (the deepest package directory containing it).
    pub fn package_of(&self, file: &Path) -> Option<&Package> {
        self.packages
            .iter()
            .filter(|p| file.starts_with(&p.dir))
            .max_by_key(|p| p.dir.components().count())
    }

    /// Scans every package.
    ///
    /// # Errors
    /// [`XtaskError::Io`] for an unreadable file, [`XtaskError::Parse`] for invalid Rust.
    pub fn scan(&self) -> Result<Scan, XtaskError> {
        let aliases = aliases();
        let mut scan = Scan::default();
        for pkg in &self.packages {
            self.scan_manifest(pkg, &mut scan)?;
            let compat_local = pkg.compat_local.clone().unwrap_or_else(|| {
                self.config
                    .compat
                    .first()
                    .map_or("engine_compat".into(), |c| c.replace('-', "_"))
            });
            // Each file is parsed once: for the package's `use` chains, then for its checks.
            let mut files = Vec::new();
            for file in self.rust_files(pkg) {
                let source =
                    std::fs::read_to_string(&file).map_err(|e| XtaskError::io(&file, e))?;
                let rel = self.rel(&file);
                let in_pkg = file
                    .strip_prefix(&pkg.dir)
                    .map_or_else(|_| rel.clone(), |p| p.display().to_string());
                let parsed = match parse_source(&rel, &source) {
                    Ok(p) => p,
                    Err(e) => {
                        proc_macro2::extra::invalidate_current_thread_spans();
                        return Err(e.into());
                    }
                };
                files.push((file, rel, module_path_of(&in_pkg), source, parsed));
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
            drop(files);
            // The spans of this package's trees are no longer used.
            proc_macro2::extra::invalidate_current_thread_spans();
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

/// The alias table type, re-exported for callers that scan single files.
pub type Aliases = BTreeMap<String, Canonical>;
