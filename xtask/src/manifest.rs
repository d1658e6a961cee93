//! Manifest edits of `migrate --fix`, with `toml_edit` (formatting and comments kept): add
//! `engine-core` / `engine-factory` to a package whose rewritten code names them, with the same
//! kind of source as its `engine-compat` dependency (a path rewritten relative to the package,
//! git with the same revision, or a version; `workspace = true` adds them to
//! `[workspace.dependencies]` too), and drop `engine-compat` once nothing uses it.

use std::path::{Path, PathBuf};

use toml_edit::{DocumentMut, InlineTable, Item, Value};

use crate::XtaskError;

/// The canonical crates a rewrite may name, as (crate name in code, package name).
pub const CANONICAL: [(&str, &str); 2] = [
    ("engine_core", "engine-core"),
    ("engine_factory", "engine-factory"),
];

/// One manifest's new text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEdit {
    /// The manifest.
    pub path: PathBuf,
    /// Text before.
    pub before: String,
    /// Text after.
    pub after: String,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> XtaskError + '_ {
    move |e| XtaskError::io(path, e)
}

fn bad(path: &Path, message: impl Into<String>) -> XtaskError {
    XtaskError::Manifest {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// The `engine-compat` entry of `[dependencies]` (by package name, also when renamed).
fn compat_entry(doc: &DocumentMut) -> Option<(String, Item)> {
    let deps = doc.get("dependencies")?.as_table_like()?;
    deps.iter().find_map(|(key, item)| {
        let package = item
            .as_table_like()
            .and_then(|t| t.get("package"))
            .and_then(Item::as_str)
            .unwrap_or(key);
        (package == "engine-compat").then(|| (key.to_owned(), item.clone()))
    })
}

/// The source of `canonical` made like `compat`'s: a path to the sibling directory (relative to
/// `from_dir`), the same git repository and revision, or the same version.
fn sibling_source(
    compat: &Item,
    compat_base: &Path,
    from_dir: &Path,
    canonical: &str,
) -> Option<Value> {
    if let Some(version) = compat.as_str() {
        return Some(Value::from(version));
    }
    let table = compat.as_table_like()?;
    let mut out = InlineTable::new();
    if let Some(path) = table.get("path").and_then(Item::as_str) {
        let compat_dir = compat_base.join(path);
        let sibling = compat_dir.parent()?.join(canonical);
        let sibling = sibling.canonicalize().unwrap_or(sibling);
        let from = from_dir
            .canonicalize()
            .unwrap_or_else(|_| from_dir.to_path_buf());
        let rel = pathdiff::diff_paths(&sibling, &from).unwrap_or(sibling);
        out.insert(
            "path",
            Value::from(rel.to_string_lossy().replace('\\', "/")),
        );
    }
    for key in ["git", "rev", "branch", "tag", "version"] {
        if let Some(v) = table.get(key).and_then(Item::as_str) {
            out.insert(key, Value::from(v));
        }
    }
    (!out.is_empty()).then(|| Value::InlineTable(out))
}

/// The edits for one package: add `needed` canonical packages, and remove engine-compat when
/// `compat_unused`. Returns the package manifest's edit and, for a workspace-inherited
/// dependency, the workspace manifest's.
///
/// # Errors
/// An unreadable or unparsable manifest.
pub fn edit_package(
    manifest: &Path,
    workspace_manifest: &Path,
    needed: &[&str],
    compat_unused: bool,
    workspace_doc: &mut Option<(String, DocumentMut)>,
) -> Result<Option<ManifestEdit>, XtaskError> {
    let before = std::fs::read_to_string(manifest).map_err(io(manifest))?;
    let mut doc: DocumentMut = before
        .parse()
        .map_err(|e: toml_edit::TomlError| bad(manifest, e.to_string()))?;
    let Some((compat_key, compat)) = compat_entry(&doc) else {
        return Ok(None);
    };
    let package_dir = manifest.parent().unwrap_or(Path::new("."));
    let inherited = compat
        .as_table_like()
        .and_then(|t| t.get("workspace"))
        .and_then(Item::as_bool)
        == Some(true);
    for canonical in needed {
        let deps = doc
            .entry("dependencies")
            .or_insert(toml_edit::table())
            .as_table_like_mut()
            .ok_or_else(|| bad(manifest, "[dependencies] is not a table"))?;
        if deps.contains_key(canonical) {
            continue;
        }
        if inherited {
            let mut t = InlineTable::new();
            t.insert("workspace", Value::from(true));
            deps.insert(canonical, Item::Value(Value::InlineTable(t)));
            add_to_workspace(workspace_manifest, canonical, workspace_doc)?;
        } else {
            let source = sibling_source(&compat, package_dir, package_dir, canonical)
                .ok_or_else(|| bad(manifest, "cannot tell where engine-compat comes from"))?;
            deps.insert(canonical, Item::Value(source));
        }
    }
    if compat_unused {
        if let Some(deps) = doc
            .get_mut("dependencies")
            .and_then(Item::as_table_like_mut)
        {
            deps.remove(&compat_key);
        }
    }
    let after = doc.to_string();
    Ok((after != before).then(|| ManifestEdit {
        path: manifest.to_path_buf(),
        before,
        after,
    }))
}

/// Adds `canonical` to `[workspace.dependencies]`, like the workspace's engine-compat.
fn add_to_workspace(
    workspace_manifest: &Path,
    canonical: &str,
    workspace_doc: &mut Option<(String, DocumentMut)>,
) -> Result<(), XtaskError> {
    if workspace_doc.is_none() {
        let text = std::fs::read_to_string(workspace_manifest).map_err(io(workspace_manifest))?;
        let doc: DocumentMut = text
            .parse()
            .map_err(|e: toml_edit::TomlError| bad(workspace_manifest, e.to_string()))?;
        *workspace_doc = Some((text, doc));
    }
    let Some((_, doc)) = workspace_doc.as_mut() else {
        return Ok(());
    };
    let root = workspace_manifest.parent().unwrap_or(Path::new("."));
    let deps = doc
        .get_mut("workspace")
        .and_then(|w| w.get_mut("dependencies"))
        .and_then(Item::as_table_like_mut)
        .ok_or_else(|| bad(workspace_manifest, "no [workspace.dependencies] table"))?;
    if deps.contains_key(canonical) {
        return Ok(());
    }
    let compat = deps.get("engine-compat").cloned().ok_or_else(|| {
        bad(
            workspace_manifest,
            "no engine-compat in [workspace.dependencies]",
        )
    })?;
    let source = sibling_source(&compat, root, root, canonical).ok_or_else(|| {
        bad(
            workspace_manifest,
            "cannot tell where engine-compat comes from",
        )
    })?;
    deps.insert(canonical, Item::Value(source));
    Ok(())
}

/// The workspace manifest's edit, once every package was handled.
pub fn workspace_edit(
    workspace_manifest: &Path,
    workspace_doc: Option<(String, DocumentMut)>,
) -> Option<ManifestEdit> {
    let (before, doc) = workspace_doc?;
    let after = doc.to_string();
    (after != before).then(|| ManifestEdit {
        path: workspace_manifest.to_path_buf(),
        before,
        after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_follow_the_compat_dependency() {
        let doc: DocumentMut = r#"
[dependencies]
a = { path = "../../vendor/engine-compat" }
b = { git = "https://example.invalid/one-engine", rev = "abc123", package = "engine-compat" }
c = "0.1"
"#
        .parse()
        .unwrap();
        let deps = doc["dependencies"].as_table_like().unwrap();
        let base = Path::new("/w/app");
        let path = sibling_source(deps.get("a").unwrap(), base, base, "engine-core").unwrap();
        assert_eq!(path.to_string(), r#"{ path = "../../vendor/engine-core" }"#);
        let git = sibling_source(deps.get("b").unwrap(), base, base, "engine-core").unwrap();
        assert_eq!(
            git.to_string(),
            r#"{ git = "https://example.invalid/one-engine", rev = "abc123" }"#
        );
        let version = sibling_source(deps.get("c").unwrap(), base, base, "engine-core").unwrap();
        assert_eq!(version.to_string(), r#""0.1""#);
    }
}
