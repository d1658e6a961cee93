//! The package-wide pass before the file checks: which modules of a package bind legacy names
//! with `use` (directly from the compat crate, or through another module of the package), so
//! that `use crate::names::X`, `use super::X`, `use self::m::*` and re-export chains are seen
//! for what they are. Resolution follows Rust's 2018 paths: `crate::`, `self::`, `super::` and
//! a child module's name; every binding is recorded whatever its visibility (code that compiles
//! only uses the visible ones).

use std::collections::{BTreeMap, BTreeSet};

use syn::visit::Visit;
use syn::ItemUse;

use super::imports::{flatten, LeafKind};
use crate::legacy::Canonical;

/// Legacy names bound per module of one package: module path (`crate::a::b`) -> local name ->
/// legacy name.
#[derive(Debug, Default, Clone)]
pub struct Reexports {
    modules: BTreeSet<String>,
    bound: BTreeMap<String, BTreeMap<String, String>>,
}

/// One `use` leaf of the package, for the fixpoint.
struct UseLeaf {
    module: String,
    segs: Vec<String>,
    /// `None` for a glob, else the local name.
    local: Option<String>,
}

/// The module path of a package file from its path relative to the package root, for the
/// library / binary tree under `src/` (`src/lib.rs` -> `crate`, `src/a/b.rs` or
/// `src/a/b/mod.rs` -> `crate::a::b`). Other roots (tests, examples, `src/bin/*`) are crates
/// of their own: `crate`.
pub fn module_path_of(rel: &str) -> String {
    let rel = rel.replace('\\', "/");
    let Some(inner) = rel.strip_prefix("src/") else {
        return "crate".into();
    };
    if inner.starts_with("bin/") {
        return "crate".into();
    }
    let inner = inner.trim_end_matches(".rs");
    let mut parts: Vec<&str> = inner.split('/').collect();
    if matches!(parts.last(), Some(&"mod" | &"lib" | &"main")) {
        parts.pop();
    }
    let mut path = String::from("crate");
    for p in parts.into_iter().filter(|p| !p.is_empty()) {
        path.push_str("::");
        path.push_str(p);
    }
    path
}

/// Collects the modules and `use` leaves of one file.
struct Collector<'c> {
    module: String,
    modules: &'c mut BTreeSet<String>,
    leaves: &'c mut Vec<UseLeaf>,
}

impl<'ast> Visit<'ast> for Collector<'_> {
    fn visit_item_use(&mut self, u: &'ast ItemUse) {
        let mut out = Vec::new();
        flatten(&u.tree, &mut Vec::new(), &mut out);
        for leaf in out {
            let local = match leaf.kind {
                LeafKind::Name => leaf.segs.last().cloned(),
                LeafKind::Rename(alias) => Some(alias),
                LeafKind::Glob => None,
            };
            self.leaves.push(UseLeaf {
                module: self.module.clone(),
                segs: leaf.segs,
                local,
            });
        }
    }
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        let child = format!("{}::{}", self.module, m.ident);
        self.modules.insert(child.clone());
        if let Some((_, items)) = &m.content {
            let parent = std::mem::replace(&mut self.module, child);
            for item in items {
                self.visit_item(item);
            }
            self.module = parent;
        }
    }
    // Function bodies' `use` items bind only inside the function: not re-exports.
    fn visit_item_fn(&mut self, _: &'ast syn::ItemFn) {}
    fn visit_impl_item_fn(&mut self, _: &'ast syn::ImplItemFn) {}
}

impl Reexports {
    /// The table of one package from its parsed files (`(module path, file)`).
    pub fn of_package(
        files: &[(&str, &syn::File)],
        compat_crate: &str,
        aliases: &BTreeMap<String, Canonical>,
    ) -> Self {
        let mut table = Self::default();
        let mut leaves = Vec::new();
        for (module, file) in files {
            table.modules.insert((*module).to_owned());
            let mut c = Collector {
                module: (*module).to_owned(),
                modules: &mut table.modules,
                leaves: &mut leaves,
            };
            for item in &file.items {
                c.visit_item(item);
            }
        }
        // Fixpoint: a binding through another module appears once that module's is known.
        loop {
            let mut changed = false;
            for leaf in &leaves {
                let found = table.bindings_of(
                    &leaf.module,
                    &leaf.segs,
                    leaf.local.is_none(),
                    compat_crate,
                    aliases,
                );
                for (source_name, legacy) in found {
                    let local = leaf.local.clone().unwrap_or(source_name);
                    let entry = table.bound.entry(leaf.module.clone()).or_default();
                    if entry.get(&local) != Some(&legacy) {
                        entry.insert(local, legacy);
                        changed = true;
                    }
                }
            }
            if !changed {
                break;
            }
        }
        table
    }

    /// The module a path starting in `module` names, if it is one of the package's.
    fn module_of(&self, module: &str, segs: &[String]) -> Option<String> {
        let mut base = module.to_owned();
        let mut rest = segs;
        match rest.first().map(String::as_str) {
            Some("crate") => {
                base = "crate".into();
                rest = &rest[1..];
            }
            Some("self") => rest = &rest[1..],
            Some("super") => {
                while rest.first().map(String::as_str) == Some("super") {
                    base = base.rsplit_once("::")?.0.to_owned();
                    rest = &rest[1..];
                }
            }
            Some(first) if self.modules.contains(&format!("{base}::{first}")) => {}
            _ => return None,
        }
        for s in rest {
            base = format!("{base}::{s}");
        }
        self.modules.contains(&base).then_some(base)
    }

    /// The (name, legacy name) pairs a `use` of `segs` in `module` brings in: one for a name,
    /// all of a module for a glob.
    fn bindings_of(
        &self,
        module: &str,
        segs: &[String],
        glob: bool,
        compat_crate: &str,
        aliases: &BTreeMap<String, Canonical>,
    ) -> Vec<(String, String)> {
        if segs.first().map(String::as_str) == Some(compat_crate) {
            return match (glob, segs.get(1)) {
                (true, None) => aliases.keys().map(|k| (k.clone(), k.clone())).collect(),
                (false, Some(name)) if segs.len() == 2 && aliases.contains_key(name) => {
                    vec![(name.clone(), name.clone())]
                }
                _ => Vec::new(),
            };
        }
        if glob {
            return self
                .module_of(module, segs)
                .and_then(|m| self.bound.get(&m))
                .map(|b| b.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default();
        }
        let Some((name, path)) = segs.split_last() else {
            return Vec::new();
        };
        let found = self
            .module_of(module, path)
            .and_then(|m| self.bound.get(&m))
            .and_then(|b| b.get(name));
        found
            .map(|legacy| vec![(name.clone(), legacy.clone())])
            .unwrap_or_default()
    }

    /// What a `use` leaf of `segs` in `module` (not from the compat crate itself) brings in
    /// through the package's own modules: `(module it comes from, [(name, legacy name)])`.
    pub(super) fn through_package(
        &self,
        module: &str,
        segs: &[String],
        glob: bool,
    ) -> Option<(String, Vec<(String, String)>)> {
        let path = if glob { segs } else { segs.split_last()?.1 };
        let from = self.module_of(module, path)?;
        let bound = self.bound.get(&from)?;
        let pairs: Vec<(String, String)> = if glob {
            bound.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        } else {
            let name = segs.last()?;
            vec![(name.clone(), bound.get(name)?.clone())]
        };
        (!pairs.is_empty()).then_some((from, pairs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_paths_follow_the_file_tree() {
        assert_eq!(module_path_of("src/lib.rs"), "crate");
        assert_eq!(module_path_of("src/main.rs"), "crate");
        assert_eq!(module_path_of("src/names.rs"), "crate::names");
        assert_eq!(module_path_of("src/a/mod.rs"), "crate::a");
        assert_eq!(module_path_of("src/a/b.rs"), "crate::a::b");
        assert_eq!(module_path_of("src/bin/tool.rs"), "crate");
        assert_eq!(module_path_of("tests/it.rs"), "crate");
    }
}
