//! Manifest edits of `migrate --fix`, with `toml_edit` (formatting and comments kept). In every
//! dependency table (`[dependencies]`, `[dev-dependencies]`, `[build-dependencies]`, their
//! `[target.'cfg(..)'.*]` forms, and `[workspace.dependencies]` for inherited entries) that holds
//! `engine-compat` (also renamed, `compat = { package = "engine-compat", .. }`), the canonical
//! crates the package's rewritten code names are added next to it, each a copy of the compat
//! entry with every key kept (`version`, `registry`, `features`, `default-features`, `optional`,
//! `git`/`rev`/`branch`/`tag`, `workspace = true`, ...) but `package`, and `path` pointed at the
//! sibling directory; engine-compat is dropped once nothing uses it. `[features]` follows:
//! `dep:engine-compat` becomes the new optional crates, an implicit `engine-compat` feature is
//! kept as an explicit one, and an `engine-compat/feature` reference is reported (engine-compat
//! then stays).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use toml_edit::{Array, DocumentMut, Item, Key, TableLike, Value};

use crate::XtaskError;

/// The canonical crates a rewrite may name, as (crate name in code, package name).
pub const CANONICAL: [(&str, &str); 2] = [
    ("engine_core", "engine-core"),
    ("engine_factory", "engine-factory"),
];

/// The compat package's name.
const COMPAT: &str = "engine-compat";

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

fn bad(path: &Path, message: impl Into<String>) -> XtaskError {
    XtaskError::Manifest {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// Which code a dependency table serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Normal,
    Dev,
    Build,
}

/// Where a dependency table sits: `[<kind>]` or `[target.<cfg>.<kind>]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct TablePath {
    kind: Kind,
    target: Option<String>,
    /// The header's spelling (`dev-dependencies` or the old `dev_dependencies`).
    name: String,
}

impl TablePath {
    fn get<'d>(&self, doc: &'d DocumentMut) -> Option<&'d dyn TableLike> {
        match &self.target {
            None => doc.get(&self.name)?.as_table_like(),
            Some(t) => doc.get("target")?.get(t)?.get(&self.name)?.as_table_like(),
        }
    }

    fn get_mut<'d>(&self, doc: &'d mut DocumentMut) -> Option<&'d mut dyn TableLike> {
        match &self.target {
            None => doc.get_mut(&self.name)?.as_table_like_mut(),
            Some(t) => doc
                .get_mut("target")?
                .get_mut(t)?
                .get_mut(&self.name)?
                .as_table_like_mut(),
        }
    }

    /// The unconditional tables whose crates code served by this one also sees.
    fn sees(&self, other: &TablePath) -> bool {
        if self.target.is_some() && other.target == self.target && other.kind == self.kind {
            return true;
        }
        other.target.is_none()
            && match self.kind {
                Kind::Normal => other.kind == Kind::Normal,
                Kind::Dev => other.kind != Kind::Build,
                Kind::Build => other.kind == Kind::Build,
            }
    }
}

/// Every dependency table of a package manifest, normal ones first.
fn dependency_tables(doc: &DocumentMut) -> Vec<TablePath> {
    const NAMES: [(&str, Kind); 5] = [
        ("dependencies", Kind::Normal),
        ("dev-dependencies", Kind::Dev),
        ("dev_dependencies", Kind::Dev),
        ("build-dependencies", Kind::Build),
        ("build_dependencies", Kind::Build),
    ];
    let mut out = Vec::new();
    for (name, kind) in NAMES {
        if doc.get(name).and_then(Item::as_table_like).is_some() {
            out.push(TablePath {
                kind,
                target: None,
                name: name.into(),
            });
        }
        if let Some(targets) = doc.get("target").and_then(Item::as_table_like) {
            for (cfg, t) in targets.iter() {
                if t.get(name).and_then(Item::as_table_like).is_some() {
                    out.push(TablePath {
                        kind,
                        target: Some(cfg.to_owned()),
                        name: name.into(),
                    });
                }
            }
        }
    }
    out.sort();
    out
}

/// The package an entry names: its `package` key, or its key.
fn package_of<'a>(key: &'a str, item: &'a Item) -> &'a str {
    item.as_table_like()
        .and_then(|t| t.get("package"))
        .and_then(Item::as_str)
        .unwrap_or(key)
}

/// The keys of a table's entries on the compat package.
fn compat_keys(table: &dyn TableLike) -> Vec<String> {
    table
        .iter()
        .filter(|(k, item)| package_of(k, item) == COMPAT)
        .map(|(k, _)| k.to_owned())
        .collect()
}

/// `compat`'s entry made into `canonical`'s: every key kept but `package`, a `path` pointed at
/// the sibling directory (relative to `base`, the manifest's directory, as cargo reads it).
fn sibling_entry(compat: &Item, base: &Path, canonical: &str) -> Option<Item> {
    let mut item = compat.clone();
    if item.as_str().is_some() {
        return Some(item);
    }
    let table = item.as_table_like_mut()?;
    let last = table.iter().last().map(|(k, _)| k.to_owned());
    if let Some(Item::Value(removed)) = table.remove("package") {
        // `{ path = "..", package = "x" }`: the space before `}` was the removed value's.
        if last.as_deref() == Some("package") {
            let suffix = removed.decor().suffix().cloned();
            if let (Some(suffix), Some((_, v))) = (suffix, table.iter_mut().last()) {
                if let Some(v) = v.as_value_mut() {
                    v.decor_mut().set_suffix(suffix);
                }
            }
        }
    }
    if let Some(path) = table.get("path").and_then(Item::as_str) {
        let compat_dir = base.join(path);
        let sibling = compat_dir.parent()?.join(canonical);
        let sibling = sibling.canonicalize().unwrap_or(sibling);
        let from = base.canonicalize().unwrap_or_else(|_| base.to_path_buf());
        let rel = pathdiff::diff_paths(&sibling, &from).unwrap_or(sibling);
        let new = rel.to_string_lossy().replace('\\', "/");
        if let Some(v) = table.get_mut("path").and_then(Item::as_value_mut) {
            let decor = v.decor().clone();
            *v = Value::from(new);
            *v.decor_mut() = decor;
        }
    }
    Some(item)
}

/// Inserts `entries` right after `anchor` in `table` (or in its place when `replace`), keeping
/// the order and formatting of every other entry; the first new entry takes the anchor's
/// leading comments when it replaces it.
fn insert_after(
    table: &mut dyn TableLike,
    anchor: &str,
    entries: Vec<(String, Item)>,
    replace: bool,
) {
    let keys: Vec<String> = table.iter().map(|(k, _)| k.to_owned()).collect();
    let mut pairs: Vec<(Key, Item)> = keys
        .iter()
        .filter_map(|k| table.get_key_value(k).map(|(k, i)| (k.clone(), i.clone())))
        .collect();
    let Some(at) = pairs.iter().position(|(k, _)| k.get() == anchor) else {
        for (k, item) in entries {
            table.insert(&k, item);
        }
        return;
    };
    let mut new: Vec<(Key, Item)> = Vec::new();
    for (i, (name, item)) in entries.into_iter().enumerate() {
        let mut key = Key::new(name);
        if i == 0 && replace {
            *key.leaf_decor_mut() = pairs[at].0.leaf_decor().clone();
        }
        new.push((key, item));
    }
    let tail = pairs.split_off(at + 1);
    if replace {
        pairs.pop();
    }
    table.clear();
    for (k, item) in pairs.into_iter().chain(new).chain(tail) {
        *table.entry_format(&k).or_insert(Item::None) = item;
    }
}

/// Removes `key`, handing the comments above it to the entry that follows.
fn remove_keeping_comments(table: &mut dyn TableLike, key: &str) {
    let keys: Vec<String> = table.iter().map(|(k, _)| k.to_owned()).collect();
    let Some(at) = keys.iter().position(|k| k == key) else {
        return;
    };
    let prefix = table
        .key(key)
        .and_then(|k| k.leaf_decor().prefix().cloned());
    table.remove(key);
    if let (Some(prefix), Some(next)) = (prefix, keys.get(at + 1)) {
        if let Some(mut k) = table.key_mut(next) {
            k.leaf_decor_mut().set_prefix(prefix);
        }
    }
}

/// What a package's code needs, for [`ManifestSet::edit_package`].
#[derive(Debug, Clone, Default)]
pub struct Needs {
    /// The canonical packages (`engine-core`, `engine-factory`) the rewritten code names.
    pub canonical: BTreeSet<&'static str>,
    /// Whether the code still names the compat crate.
    pub compat: bool,
}

/// The manifests one `--fix` edits, each read and parsed once (a workspace root that is also a
/// package is one document), with the notes the edits leave for a human.
#[derive(Debug, Default)]
pub struct ManifestSet {
    docs: BTreeMap<PathBuf, (String, DocumentMut)>,
    /// What the edits could not do by themselves, one line each.
    pub notes: Vec<String>,
}

impl ManifestSet {
    /// No manifest read yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn doc(&mut self, path: &Path) -> Result<&mut DocumentMut, XtaskError> {
        if !self.docs.contains_key(path) {
            let text = std::fs::read_to_string(path).map_err(|e| XtaskError::io(path, e))?;
            let doc: DocumentMut = text
                .parse()
                .map_err(|e: toml_edit::TomlError| bad(path, e.to_string()))?;
            self.docs.insert(path.to_path_buf(), (text, doc));
        }
        match self.docs.get_mut(path) {
            Some((_, doc)) => Ok(doc),
            None => Err(bad(path, "manifest not loaded")),
        }
    }

    /// Edits one package's manifest for `needs`: in each dependency table holding engine-compat,
    /// adds the canonical packages its code names that the table's code does not already see,
    /// then drops engine-compat from every table when the code no longer names it (unless a
    /// feature still names one of its features). Inherited entries (`workspace = true`) also
    /// get their canonical crates in `workspace_manifest`'s `[workspace.dependencies]`.
    ///
    /// # Errors
    /// [`XtaskError::Io`] or [`XtaskError::Manifest`] for a manifest that cannot be read,
    /// parsed or edited.
    pub fn edit_package(
        &mut self,
        manifest: &Path,
        workspace_manifest: &Path,
        needs: &Needs,
    ) -> Result<(), XtaskError> {
        let base = manifest.parent().unwrap_or(Path::new(".")).to_path_buf();
        let doc = self.doc(manifest)?;
        let tables = dependency_tables(doc);
        let mut compat_names: BTreeSet<String> = BTreeSet::new();
        let mut added_optional: BTreeSet<&'static str> = BTreeSet::new();
        let mut inherited: BTreeSet<&'static str> = BTreeSet::new();
        let mut notes = Vec::new();
        for table_path in &tables {
            let Some(table) = table_path.get(doc) else {
                continue;
            };
            let keys = compat_keys(table);
            if keys.is_empty() {
                continue;
            }
            // Crates the code served by this table sees, by the name code uses.
            let seen: BTreeSet<String> = tables
                .iter()
                .filter(|t| table_path.sees(t))
                .filter_map(|t| t.get(doc))
                .flat_map(|t| {
                    t.iter()
                        .map(|(k, _)| k.replace('-', "_"))
                        .collect::<Vec<_>>()
                })
                .collect();
            let anchor = keys[0].clone();
            let Some(compat) = table.get(&anchor).cloned() else {
                continue;
            };
            compat_names.extend(keys.iter().cloned());
            let mut entries = Vec::new();
            for (krate, package) in CANONICAL {
                if !needs.canonical.contains(package) || seen.contains(krate) {
                    continue;
                }
                let entry = sibling_entry(&compat, &base, package).ok_or_else(|| {
                    bad(manifest, format!("cannot tell where {COMPAT} comes from"))
                })?;
                let flag = |k: &str| {
                    entry
                        .as_table_like()
                        .and_then(|t| t.get(k))
                        .and_then(Item::as_bool)
                        == Some(true)
                };
                if flag("optional") {
                    added_optional.insert(package);
                }
                if flag("workspace") {
                    inherited.insert(package);
                }
                entries.push((package.to_owned(), entry));
            }
            if let Some(table) = table_path.get_mut(doc) {
                insert_after(table, &anchor, entries, false);
            }
        }
        if compat_names.is_empty() {
            return Ok(());
        }
        let remove = !needs.compat
            && {
                let refs = feature_refs_into(doc, &compat_names);
                for r in &refs {
                    notes.push(format!(
                    "{}: [features] `{r}` names a feature of {COMPAT}: it stays a dependency; move the feature to engine-core or engine-factory by hand, then run --fix again",
                    manifest.display()
                ));
                }
                refs.is_empty()
            };
        rewrite_features(doc, &compat_names, &added_optional, remove);
        if remove {
            for table_path in &tables {
                if let Some(table) = table_path.get_mut(doc) {
                    for key in &compat_names {
                        remove_keeping_comments(table, key);
                    }
                }
            }
        }
        self.notes.extend(notes);
        for package in inherited {
            self.add_to_workspace(workspace_manifest, package)?;
        }
        Ok(())
    }

    /// Adds `canonical` to `[workspace.dependencies]`, a copy of the workspace's engine-compat.
    fn add_to_workspace(
        &mut self,
        workspace_manifest: &Path,
        canonical: &'static str,
    ) -> Result<(), XtaskError> {
        let root = workspace_manifest
            .parent()
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let doc = self.doc(workspace_manifest)?;
        let deps = doc
            .get_mut("workspace")
            .and_then(|w| w.get_mut("dependencies"))
            .and_then(Item::as_table_like_mut)
            .ok_or_else(|| bad(workspace_manifest, "no [workspace.dependencies] table"))?;
        if deps.contains_key(canonical) {
            return Ok(());
        }
        let anchor = compat_keys(deps).into_iter().next().ok_or_else(|| {
            bad(
                workspace_manifest,
                format!("no {COMPAT} in [workspace.dependencies]"),
            )
        })?;
        let entry = deps
            .get(&anchor)
            .and_then(|c| sibling_entry(c, &root, canonical))
            .ok_or_else(|| {
                bad(
                    workspace_manifest,
                    format!("cannot tell where {COMPAT} comes from"),
                )
            })?;
        insert_after(deps, &anchor, vec![(canonical.to_owned(), entry)], false);
        Ok(())
    }

    /// Every manifest whose text changed.
    pub fn edits(&self) -> Vec<ManifestEdit> {
        self.docs
            .iter()
            .filter_map(|(path, (before, doc))| {
                let after = doc.to_string();
                (after != *before).then(|| ManifestEdit {
                    path: path.clone(),
                    before: before.clone(),
                    after,
                })
            })
            .collect()
    }
}

/// The `[features]` values naming a feature of the compat dependency (`compat/f`, `compat?/f`).
fn feature_refs_into(doc: &DocumentMut, compat: &BTreeSet<String>) -> Vec<String> {
    let Some(features) = doc.get("features").and_then(Item::as_table_like) else {
        return Vec::new();
    };
    features
        .iter()
        .filter_map(|(_, v)| v.as_array())
        .flat_map(|a| a.iter().filter_map(Value::as_str))
        .filter(|s| {
            s.split_once('/')
                .is_some_and(|(dep, _)| compat.contains(dep.trim_end_matches('?')))
        })
        .map(str::to_owned)
        .collect()
}

/// Points `[features]` at the new optional crates: each `dep:compat` gains (or, when compat is
/// removed, becomes) `dep:<canonical>`; an optional compat enabled only through its implicit
/// feature gets an explicit feature of that name, so `--features engine-compat` and
/// `cfg(feature = "engine-compat")` keep working.
fn rewrite_features(
    doc: &mut DocumentMut,
    compat: &BTreeSet<String>,
    added_optional: &BTreeSet<&'static str>,
    remove: bool,
) {
    if added_optional.is_empty() && !remove {
        return;
    }
    let new: Vec<String> = added_optional.iter().map(|p| format!("dep:{p}")).collect();
    let mut explicit: BTreeSet<&String> = BTreeSet::new();
    if let Some(features) = doc.get_mut("features").and_then(Item::as_table_like_mut) {
        for (_, value) in features.iter_mut() {
            let Some(array) = value.as_array_mut() else {
                continue;
            };
            let mut out = Array::new();
            let mut changed = false;
            for v in array.iter() {
                let named = v
                    .as_str()
                    .and_then(|s| s.strip_prefix("dep:"))
                    .and_then(|d| compat.get(d));
                if let Some(c) = named {
                    explicit.insert(c);
                    changed = true;
                    if !remove {
                        out.push_formatted(v.clone());
                    }
                    for n in &new {
                        if !array.iter().any(|x| x.as_str() == Some(n)) {
                            out.push(n.as_str());
                        }
                    }
                } else {
                    out.push_formatted(v.clone());
                }
            }
            if changed {
                out.fmt();
                out.set_trailing(array.trailing().clone());
                *array = out;
            }
        }
    }
    if new.is_empty() {
        return;
    }
    // An optional compat never named with `dep:` has an implicit feature of its own name.
    for key in compat.iter().filter(|k| !explicit.contains(k)) {
        let mut values: Vec<String> = Vec::new();
        if !remove {
            values.push(format!("dep:{key}"));
        }
        values.extend(new.iter().cloned());
        let features = doc
            .entry("features")
            .or_insert(toml_edit::table())
            .as_table_like_mut();
        if let Some(features) = features {
            if !features.contains_key(key) {
                features.insert(key, toml_edit::value(Array::from_iter(values)));
            }
        }
    }
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
        let path = sibling_entry(deps.get("a").unwrap(), base, "engine-core").unwrap();
        assert_eq!(
            path.to_string(),
            r#" { path = "../../vendor/engine-core" }"#
        );
        let git = sibling_entry(deps.get("b").unwrap(), base, "engine-core").unwrap();
        assert_eq!(
            git.to_string(),
            r#" { git = "https://example.invalid/one-engine", rev = "abc123" }"#
        );
        let version = sibling_entry(deps.get("c").unwrap(), base, "engine-core").unwrap();
        assert_eq!(version.to_string(), r#" "0.1""#);
    }
}
