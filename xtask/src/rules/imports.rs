//! Pass 1 of a module scope: its `use` items. Compat imports (direct, renamed, globbed, and
//! legacy names re-exported by another module of the package) are recorded for the checks and
//! the rewrite; `factory_only` imports are reported.

use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::visit::Visit;
use syn::{ItemUse, UseTree};

use super::checks::BYPASS_HELP;
use super::{Analyzer, Role};
use crate::model::Rule;

#[derive(Debug, Clone)]
pub(super) enum LeafKind {
    Name,
    Rename(String),
    Glob,
}

#[derive(Debug, Clone)]
pub(super) struct Leaf {
    pub(super) segs: Vec<String>,
    pub(super) kind: LeafKind,
    /// Where to report it (the leaf's name, rename or `*`).
    pub(super) at: Span,
    /// For a legacy name reached through another module of the package: that module.
    pub(super) via: Option<String>,
}

/// A `use` item that imports from the compat crate.
pub(super) struct CompatUse {
    /// Byte range of the whole item, attributes included.
    pub(super) full: (usize, usize),
    /// Byte range from the visibility / `use` keyword to the `;`.
    pub(super) body: (usize, usize),
    pub(super) vis: String,
    pub(super) compat_leaves: Vec<Leaf>,
    /// Source text of the root group's elements that do not import from the compat crate.
    pub(super) kept: Vec<String>,
    pub(super) fixable: bool,
    /// Inside a function body rather than directly in the module.
    pub(super) nested: bool,
}

/// The leaves of a `use` tree: one per name, rename or glob, with its full path.
pub(super) fn flatten(tree: &UseTree, prefix: &mut Vec<String>, out: &mut Vec<Leaf>) {
    match tree {
        UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            flatten(&p.tree, prefix, out);
            prefix.pop();
        }
        UseTree::Name(n) => {
            let mut segs = prefix.clone();
            segs.push(n.ident.to_string());
            out.push(Leaf {
                segs,
                kind: LeafKind::Name,
                at: n.ident.span(),
                via: None,
            });
        }
        UseTree::Rename(r) => {
            let mut segs = prefix.clone();
            segs.push(r.ident.to_string());
            out.push(Leaf {
                segs,
                kind: LeafKind::Rename(r.rename.to_string()),
                at: r.ident.span(),
                via: None,
            });
        }
        UseTree::Glob(g) => out.push(Leaf {
            segs: prefix.clone(),
            kind: LeafKind::Glob,
            at: g.star_token.span,
            via: None,
        }),
        UseTree::Group(g) => {
            for t in &g.items {
                flatten(t, prefix, out);
            }
        }
    }
}

fn root_ident(tree: &UseTree) -> Option<String> {
    match tree {
        UseTree::Path(p) => Some(p.ident.to_string()),
        UseTree::Name(n) => Some(n.ident.to_string()),
        UseTree::Rename(r) => Some(r.ident.to_string()),
        _ => None,
    }
}

impl Analyzer<'_> {
    pub(super) fn collect_imports(&mut self, items: &[syn::Item]) {
        /// Collects the `use` items of one scope, without entering nested modules.
        struct Uses<'u>(Vec<&'u ItemUse>);
        impl<'u> Visit<'u> for Uses<'u> {
            fn visit_item_use(&mut self, u: &'u ItemUse) {
                self.0.push(u);
            }
            fn visit_item_mod(&mut self, _: &'u syn::ItemMod) {}
        }
        let mut uses = Uses(Vec::new());
        for item in items {
            uses.visit_item(item);
        }
        let top_level: Vec<*const ItemUse> = items
            .iter()
            .filter_map(|i| match i {
                syn::Item::Use(u) => Some(u as *const ItemUse),
                _ => None,
            })
            .collect();
        // Crate renames first (`use engine_compat as compat;`), so later items resolve.
        for u in &uses.0 {
            let mut leaves = Vec::new();
            flatten(&u.tree, &mut Vec::new(), &mut leaves);
            for leaf in leaves {
                if let (1, LeafKind::Rename(alias)) = (leaf.segs.len(), &leaf.kind) {
                    if self.scope.compat_mods.contains(&leaf.segs[0]) {
                        self.scope.compat_mods.insert(alias.clone());
                    }
                }
            }
        }
        for u in uses.0 {
            let nested = !top_level.contains(&(u as *const ItemUse));
            self.collect_use(u, nested);
        }
    }

    /// Turns the leaves that reach legacy names through another module of the package
    /// (`use crate::names::X`, `use super::X`) into compat leaves naming the legacy name, and
    /// records what a glob through such a module brings in. Returns whether a glob did.
    fn resolve_chains(&mut self, leaves: &mut [Leaf]) -> bool {
        let Some(table) = self.input.reexports else {
            return false;
        };
        let mut chain_glob = false;
        for leaf in leaves.iter_mut() {
            if leaf
                .segs
                .first()
                .is_some_and(|s| self.scope.compat_mods.contains(s))
            {
                continue;
            }
            let glob = matches!(leaf.kind, LeafKind::Glob);
            let Some((from, pairs)) = table.through_package(&self.scope.module, &leaf.segs, glob)
            else {
                continue;
            };
            if glob {
                self.scope.chain_glob.extend(pairs);
                chain_glob = true;
                continue;
            }
            let Some((_, legacy)) = pairs.into_iter().next() else {
                continue;
            };
            let local = match &leaf.kind {
                LeafKind::Rename(a) => a.clone(),
                _ => leaf.segs.last().cloned().unwrap_or_default(),
            };
            leaf.kind = if local == legacy {
                LeafKind::Name
            } else {
                LeafKind::Rename(local)
            };
            leaf.segs = vec![self.input.compat_crate.to_owned(), legacy];
            leaf.via = Some(from);
        }
        chain_glob
    }

    fn collect_use(&mut self, u: &ItemUse, nested: bool) {
        let mut leaves = Vec::new();
        flatten(&u.tree, &mut Vec::new(), &mut leaves);
        let chain_glob = !self.is_compat_role() && self.resolve_chains(&mut leaves);
        let mods = self.scope.compat_mods.clone();
        let is_compat = |l: &Leaf| l.segs.first().is_some_and(|s| mods.contains(s));
        let chained = leaves.iter().any(|l| l.via.is_some());
        if chain_glob && !chained && !leaves.iter().any(is_compat) {
            // `use crate::names::*;`: the glob stays (it may bring other items); the legacy
            // names it brings are reported where they are used, and imported canonically.
            let (s, e) = self.range(u.tree.span());
            let glob = Leaf {
                segs: vec![self.input.compat_crate.to_owned()],
                kind: LeafKind::Glob,
                at: u.tree.span(),
                via: Some(String::new()),
            };
            self.push_compat_use(
                u,
                nested,
                vec![glob],
                vec![self.input.source[s..e].to_owned()],
                leaves.len() == 1,
            );
            return;
        }
        if !leaves.iter().any(is_compat) {
            for l in &leaves {
                self.check_bypass_import(l);
                let local = match &l.kind {
                    LeafKind::Name => l.segs.last().cloned(),
                    LeafKind::Rename(a) => Some(a.clone()),
                    LeafKind::Glob => None,
                };
                if let Some(local) = local {
                    self.scope.existing.insert((l.segs.join("::"), local));
                }
            }
            return;
        }
        if self.is_compat_role() {
            return;
        }
        let mut kept = Vec::new();
        let mut fixable = true;
        if let UseTree::Group(g) = &u.tree {
            for elem in &g.items {
                if root_ident(elem).is_some_and(|r| self.scope.compat_mods.contains(&r)) {
                    continue;
                }
                if chained {
                    // Keep the element unless all of it names legacy names through the package.
                    let mut inner = Vec::new();
                    flatten(elem, &mut Vec::new(), &mut inner);
                    self.resolve_chains(&mut inner);
                    let through = inner.iter().filter(|l| l.via.is_some()).count();
                    if through == inner.len() {
                        continue;
                    }
                    if through > 0 {
                        fixable = false;
                    }
                }
                let (s, e) = self.range(elem.span());
                kept.push(self.input.source[s..e].to_owned());
            }
        } else if chained && leaves.len() > 1 && !leaves.iter().all(is_compat) {
            // `use crate::names::{Legacy, Other}`: rewritten by hand.
            fixable = false;
        }
        let mut compat_leaves = Vec::new();
        let public = !matches!(u.vis, syn::Visibility::Inherited);
        for mut leaf in leaves.into_iter().filter(is_compat) {
            // A re-export is the crate's API: keep its public name, import the canonical type.
            if let (true, LeafKind::Name, true) = (public, &leaf.kind, leaf.segs.len() >= 2) {
                leaf.kind = LeafKind::Rename(leaf.segs[leaf.segs.len() - 1].clone());
            }
            let name = if leaf.segs.len() >= 2 {
                leaf.segs.last().cloned()
            } else {
                None
            };
            let canonical = name
                .as_ref()
                .and_then(|n| self.input.aliases.get(n))
                .cloned();
            match (&leaf.kind, &name, &canonical) {
                (LeafKind::Glob, _, _) => {
                    self.scope.glob = true;
                    self.report(
                        Rule::DeprecatedName,
                        leaf.at,
                        "*",
                        format!("glob import of `{}`", leaf.segs.join("::")),
                        "import the canonical items from engine_core / engine_factory by name"
                            .into(),
                    );
                }
                (_, None, _) => {
                    self.report(
                        Rule::DeprecatedName,
                        leaf.at,
                        &leaf.segs[0],
                        format!("import of the deprecated `{}` crate", leaf.segs[0]),
                        "import the canonical items from engine_core / engine_factory".into(),
                    );
                }
                (kind, Some(name), Some(c)) => {
                    if matches!(kind, LeafKind::Name) {
                        self.scope.named.insert(name.clone(), name.clone());
                        if let Some(via) = &leaf.via {
                            self.scope.named_via.insert(name.clone(), via.clone());
                        }
                    }
                    let message = match &leaf.via {
                        Some(via) => format!(
                            "legacy name `{name}` imported through `{via}`, which re-exports it from engine_compat"
                        ),
                        None => format!("legacy name `{name}` imported from engine_compat"),
                    };
                    self.report(
                        Rule::DeprecatedName,
                        leaf.at,
                        name,
                        message,
                        format!("use `{}`", c.path),
                    );
                }
                (_, Some(name), None) => {
                    fixable = false;
                    self.report(
                        Rule::DeprecatedName,
                        leaf.at,
                        name,
                        format!(
                            "`{}` is not a known engine_compat alias",
                            leaf.segs.join("::")
                        ),
                        "import the canonical item from engine_core / engine_factory".into(),
                    );
                }
            }
            compat_leaves.push(leaf);
        }
        self.push_compat_use(u, nested, compat_leaves, kept, fixable);
    }

    /// Records a `use` item to rewrite in pass 3.
    fn push_compat_use(
        &mut self,
        u: &ItemUse,
        nested: bool,
        compat_leaves: Vec<Leaf>,
        kept: Vec<String>,
        fixable: bool,
    ) {
        let vis = match &u.vis {
            syn::Visibility::Inherited => String::new(),
            v => {
                let (s, e) = self.range(v.span());
                format!("{} ", &self.input.source[s..e])
            }
        };
        let body_start = match &u.vis {
            syn::Visibility::Inherited => self.range(u.use_token.span).0,
            v => self.range(v.span()).0,
        };
        let full = self.range(u.span());
        let body = (body_start, self.range(u.semi_token.span).1);
        self.scope.compat_uses.push(CompatUse {
            full,
            body,
            vis,
            compat_leaves,
            kept,
            fixable,
            nested,
        });
    }

    /// `use engine_core::factory_only::assemble_engine;` outside the factory: report the import
    /// and remember the local name so calls through it are reported too.
    fn check_bypass_import(&mut self, leaf: &Leaf) {
        if matches!(self.input.role, Role::Factory | Role::Core)
            || !leaf.segs.iter().any(|s| s == "factory_only")
        {
            return;
        }
        let text = leaf.segs.join("::");
        self.report(
            Rule::FactoryBypass,
            leaf.at,
            &text,
            format!("import of `{text}` builds engines outside engine-factory"),
            BYPASS_HELP.into(),
        );
        match &leaf.kind {
            LeafKind::Name => {
                if let Some(last) = leaf.segs.last() {
                    self.bypass_names.insert(last.clone());
                }
            }
            LeafKind::Rename(alias) => {
                self.bypass_names.insert(alias.clone());
            }
            LeafKind::Glob => {}
        }
    }
}
