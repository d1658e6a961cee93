//! The per-file checks (SSOT001, SSOT002, SSOT003, SSOT005) and the SSOT001 rewrites, over a
//! real syntax tree (`syn` with span locations). Strings and comments are never tokens, so a
//! legacy name inside them is never reported or touched.

use std::collections::{BTreeMap, BTreeSet};

use proc_macro2::{Span, TokenStream, TokenTree};
use syn::spanned::Spanned;
use syn::visit::Visit;
use syn::{Ident, ItemUse, UseTree};

use crate::legacy::{is_engine_like, Canonical, LEGACY_TRAITS};
use crate::model::{Edit, Finding, Rule};

/// What a crate is allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Defines the engine (engine-core).
    Core,
    /// Constructs engines (engine-factory).
    Factory,
    /// The compat crate: deprecated aliases only.
    Compat,
    /// Everything else.
    Other,
}

/// Everything a file check needs to know about where the file sits.
#[derive(Debug)]
pub struct FileInput<'a> {
    /// Path relative to the workspace root.
    pub path: &'a str,
    /// The file's text.
    pub source: &'a str,
    /// The role of the file's crate.
    pub role: Role,
    /// Whether the crate is engine-related (SSOT005 applies).
    pub engine_related: bool,
    /// Legacy alias name -> canonical path.
    pub aliases: &'a BTreeMap<String, Canonical>,
    /// Local names of the compat crate (`engine_compat`, plus any extern rename).
    pub compat_crate: &'a str,
}

/// The result of checking one file.
#[derive(Debug, Default)]
pub struct FileOutcome {
    /// Findings, in source order.
    pub findings: Vec<Finding>,
    /// Non-overlapping edits that rewrite every fixable SSOT001 finding.
    pub edits: Vec<Edit>,
}

/// The file failed to parse.
#[derive(Debug, thiserror::Error)]
#[error("{path}:{line}:{column}: cannot parse Rust source: {message}")]
pub struct ParseError {
    /// The file.
    pub path: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// The parser's message.
    pub message: String,
}

/// Checks one file.
///
/// # Errors
/// [`ParseError`] naming the file when it is not valid Rust.
pub fn check_file(input: &FileInput<'_>) -> Result<FileOutcome, ParseError> {
    let (base, body) = strip_prelude(input.source);
    let parsed = syn::parse_str::<syn::File>(body);
    let result = match parsed {
        Err(e) => {
            let start = e.span().start();
            Err(ParseError {
                path: input.path.to_owned(),
                line: start.line,
                column: start.column + 1,
                message: e.to_string(),
            })
        }
        Ok(file) => {
            let mut a = Analyzer::new(input, base);
            a.analyze_scope(&file.items);
            a.findings.sort_by_key(|f| (f.line, f.column));
            Ok(FileOutcome {
                findings: a.findings,
                edits: a.edits,
            })
        }
    };
    // Free the span source map of this thread: spans are not used past this point.
    proc_macro2::extra::invalidate_current_thread_spans();
    result
}

/// Strips a BOM and a shebang line the way `syn::parse_file` does; returns the byte offset of
/// what remains.
fn strip_prelude(source: &str) -> (usize, &str) {
    let mut base = 0;
    if source.starts_with('\u{feff}') {
        base = 3;
    }
    let rest = &source[base..];
    if rest.starts_with("#!") && !rest[2..].trim_start().starts_with('[') {
        base += rest.find('\n').unwrap_or(rest.len());
    }
    (base, &source[base..])
}

#[derive(Debug, Clone)]
enum LeafKind {
    Name,
    Rename(String),
    Glob,
}

#[derive(Debug, Clone)]
struct Leaf {
    segs: Vec<String>,
    kind: LeafKind,
    /// Where to report it (the leaf's name, rename or `*`).
    at: Span,
}

/// A `use` item that imports from the compat crate.
struct CompatUse {
    /// Byte range of the whole item, attributes included.
    full: (usize, usize),
    /// Byte range from the visibility / `use` keyword to the `;`.
    body: (usize, usize),
    vis: String,
    compat_leaves: Vec<Leaf>,
    /// Source text of the root group's elements that do not import from the compat crate.
    kept: Vec<String>,
    fixable: bool,
    /// Inside a function body rather than directly in the module.
    nested: bool,
}

/// The import state of one module scope.
struct ScopeState {
    compat_mods: BTreeSet<String>,
    named: BTreeMap<String, String>,
    glob: bool,
    used_via_glob: BTreeSet<String>,
    existing: BTreeSet<(String, String)>,
    compat_uses: Vec<CompatUse>,
}

struct Analyzer<'a> {
    input: &'a FileInput<'a>,
    base: usize,
    compat_mods: BTreeSet<String>,
    /// Local name -> legacy name, for plain (non-renamed) imports.
    named: BTreeMap<String, String>,
    glob: bool,
    used_via_glob: BTreeSet<String>,
    /// Full paths imported by non-compat `use` leaves, as `(path, local name)`.
    existing: BTreeSet<(String, String)>,
    compat_uses: Vec<CompatUse>,
    /// Local names bound to `factory_only` items.
    bypass_names: BTreeSet<String>,
    findings: Vec<Finding>,
    edits: Vec<Edit>,
}

fn flatten(tree: &UseTree, prefix: &mut Vec<String>, out: &mut Vec<Leaf>) {
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
            });
        }
        UseTree::Rename(r) => {
            let mut segs = prefix.clone();
            segs.push(r.ident.to_string());
            out.push(Leaf {
                segs,
                kind: LeafKind::Rename(r.rename.to_string()),
                at: r.ident.span(),
            });
        }
        UseTree::Glob(g) => out.push(Leaf {
            segs: prefix.clone(),
            kind: LeafKind::Glob,
            at: g.star_token.span,
        }),
        UseTree::Group(g) => {
            for t in &g.items {
                flatten(t, prefix, out);
            }
        }
    }
}

/// The comments in a `use` item's text (which holds no string literals), so a rewrite can keep
/// them; doc comments become plain comments since the item they documented may be gone.
fn comments_in(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find('/') {
        let tail = &rest[i..];
        if tail.starts_with("//") {
            let end = tail.find('\n').unwrap_or(tail.len());
            let c = tail[..end].trim_end();
            out.push(format!(
                "// {}",
                c.trim_start_matches('/').trim_start_matches('!').trim()
            ));
            rest = &tail[end..];
        } else if tail.starts_with("/*") {
            let end = tail.find("*/").map_or(tail.len(), |e| e + 2);
            out.push(tail[..end].to_owned());
            rest = &tail[end..];
        } else {
            rest = &tail[1..];
        }
    }
    out
}

fn root_ident(tree: &UseTree) -> Option<String> {
    match tree {
        UseTree::Path(p) => Some(p.ident.to_string()),
        UseTree::Name(n) => Some(n.ident.to_string()),
        UseTree::Rename(r) => Some(r.ident.to_string()),
        _ => None,
    }
}

/// The help of every SSOT003 finding.
const BYPASS_HELP: &str =
    "obtain engines from `engine_factory::ExecutionEngineFactory::create_for_user`";

const LOCK_OR_MAP: &[&str] = &[
    "Mutex", "RwLock", "HashMap", "BTreeMap", "HashSet", "BTreeSet", "DashMap", "DashSet",
    "IndexMap", "RefCell",
];

fn mentions_lock_or_map(tokens: TokenStream) -> Option<String> {
    for tt in tokens {
        match tt {
            TokenTree::Ident(i) => {
                let s = i.to_string();
                if LOCK_OR_MAP.contains(&s.as_str()) {
                    return Some(s);
                }
            }
            TokenTree::Group(g) => {
                if let Some(s) = mentions_lock_or_map(g.stream()) {
                    return Some(s);
                }
            }
            _ => {}
        }
    }
    None
}

/// A map type inside `ty` that is shared-mutable (behind `Mutex`/`RwLock`, or a concurrent map
/// such as `DashMap`), and the last segment of its key type.
fn shared_map_key(ty: &syn::Type) -> Option<(String, String)> {
    fn walk(ty: &syn::Type, locked: bool) -> Option<(String, String)> {
        let syn::Type::Path(p) = ty else {
            return None;
        };
        for seg in &p.path.segments {
            let name = seg.ident.to_string();
            let syn::PathArguments::AngleBracketed(args) = &seg.arguments else {
                continue;
            };
            let mut types = args.args.iter().filter_map(|a| match a {
                syn::GenericArgument::Type(t) => Some(t),
                _ => None,
            });
            let concurrent = matches!(name.as_str(), "DashMap");
            if (locked || concurrent)
                && matches!(
                    name.as_str(),
                    "HashMap" | "BTreeMap" | "IndexMap" | "DashMap"
                )
            {
                let key = types.next().map(|k| match k {
                    syn::Type::Path(kp) => kp
                        .path
                        .segments
                        .last()
                        .map(|s| s.ident.to_string())
                        .unwrap_or_default(),
                    other => quote::quote!(#other).to_string(),
                })?;
                return Some((name, key));
            }
            let now_locked = locked || matches!(name.as_str(), "Mutex" | "RwLock");
            for t in types {
                if let Some(found) = walk(t, now_locked) {
                    return Some(found);
                }
            }
        }
        None
    }
    walk(ty, false)
}

impl<'a> Analyzer<'a> {
    fn new(input: &'a FileInput<'a>, base: usize) -> Self {
        Self {
            input,
            base,
            compat_mods: BTreeSet::from([input.compat_crate.to_owned()]),
            named: BTreeMap::new(),
            glob: false,
            used_via_glob: BTreeSet::new(),
            existing: BTreeSet::new(),
            compat_uses: Vec::new(),
            bypass_names: BTreeSet::new(),
            findings: Vec::new(),
            edits: Vec::new(),
        }
    }

    fn range(&self, span: Span) -> (usize, usize) {
        let r = span.byte_range();
        (r.start + self.base, r.end + self.base)
    }

    fn line_text(&self, line: usize) -> &str {
        let body = &self.input.source[self.base..];
        body.lines()
            .nth(line.saturating_sub(1))
            .unwrap_or("")
            .trim()
    }

    fn report(&mut self, rule: Rule, at: Span, subject: &str, message: String, help: String) {
        let start = at.start();
        let end = at.end();
        let line_text: String = self
            .line_text(start.line)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        // The base offset only shifts lines when a shebang was stripped.
        let line = start.line + self.input.source[..self.base].matches('\n').count();
        self.findings.push(Finding {
            rule,
            path: self.input.path.to_owned(),
            line,
            column: start.column + 1,
            end_line: end.line + (line - start.line),
            end_column: end.column + 1,
            severity: crate::model::Severity::Error,
            subject: subject.to_owned(),
            message,
            help,
            fingerprint: format!(
                "{}|{}|{}|{}",
                rule.code(),
                self.input.path,
                subject,
                line_text
            ),
        });
    }

    fn is_compat_role(&self) -> bool {
        self.input.role == Role::Compat
    }

    // ---- pass 1: imports ------------------------------------------------------------------

    /// Analyzes one module scope: its imports apply to its own items (function bodies
    /// included) but not to nested modules, which get a fresh scope as in Rust.
    fn analyze_scope(&mut self, items: &[syn::Item]) {
        let saved = ScopeState {
            compat_mods: std::mem::replace(
                &mut self.compat_mods,
                BTreeSet::from([self.input.compat_crate.to_owned()]),
            ),
            named: std::mem::take(&mut self.named),
            glob: std::mem::take(&mut self.glob),
            used_via_glob: std::mem::take(&mut self.used_via_glob),
            existing: std::mem::take(&mut self.existing),
            compat_uses: std::mem::take(&mut self.compat_uses),
        };
        self.collect_imports(items);
        for item in items {
            self.visit_item(item);
        }
        self.rewrite_imports();
        self.compat_mods = saved.compat_mods;
        self.named = saved.named;
        self.glob = saved.glob;
        self.used_via_glob = saved.used_via_glob;
        self.existing = saved.existing;
        self.compat_uses = saved.compat_uses;
    }

    fn collect_imports(&mut self, items: &[syn::Item]) {
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
                    if self.compat_mods.contains(&leaf.segs[0]) {
                        self.compat_mods.insert(alias.clone());
                    }
                }
            }
        }
        for u in uses.0 {
            let nested = !top_level.contains(&(u as *const ItemUse));
            self.collect_use(u, nested);
        }
    }

    fn collect_use(&mut self, u: &ItemUse, nested: bool) {
        let mut leaves = Vec::new();
        flatten(&u.tree, &mut Vec::new(), &mut leaves);
        let mods = self.compat_mods.clone();
        let is_compat = |l: &Leaf| l.segs.first().is_some_and(|s| mods.contains(s));
        if !leaves.iter().any(is_compat) {
            for l in &leaves {
                self.check_bypass_import(l);
                let local = match &l.kind {
                    LeafKind::Name => l.segs.last().cloned(),
                    LeafKind::Rename(a) => Some(a.clone()),
                    LeafKind::Glob => None,
                };
                if let Some(local) = local {
                    self.existing.insert((l.segs.join("::"), local));
                }
            }
            return;
        }
        if self.is_compat_role() {
            return;
        }
        let mut kept = Vec::new();
        if let UseTree::Group(g) = &u.tree {
            for elem in &g.items {
                if !root_ident(elem).is_some_and(|r| self.compat_mods.contains(&r)) {
                    let (s, e) = self.range(elem.span());
                    kept.push(self.input.source[s..e].to_owned());
                }
            }
        }
        let mut compat_leaves = Vec::new();
        let mut fixable = true;
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
                    self.glob = true;
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
                        self.named.insert(name.clone(), name.clone());
                    }
                    self.report(
                        Rule::DeprecatedName,
                        leaf.at,
                        name,
                        format!("legacy name `{name}` imported from engine_compat"),
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
        self.compat_uses.push(CompatUse {
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

    // ---- pass 3: rewrite imports ----------------------------------------------------------

    fn rewrite_imports(&mut self) {
        let mut uses = std::mem::take(&mut self.compat_uses);
        // Module-level imports first: they are visible in function bodies, not the reverse.
        uses.sort_by_key(|u| u.nested);
        let mut module_emitted: BTreeSet<(String, String)> = self.existing.clone();
        for cu in &uses {
            if !cu.fixable {
                continue;
            }
            let mut local_emitted = module_emitted.clone();
            let emitted = if cu.nested {
                &mut local_emitted
            } else {
                &mut module_emitted
            };
            // crate -> item specs (`Name` or `Name as Alias`)
            let mut by_crate: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            let mut want = |c: &Canonical, alias: Option<&str>| {
                let local = alias.unwrap_or(c.name()).to_owned();
                if emitted.insert((c.path.clone(), local)) {
                    let rest = c.path.split_once("::").map_or(c.name(), |x| x.1).to_owned();
                    let spec = match alias {
                        Some(a) if a != c.name() => format!("{rest} as {a}"),
                        _ => rest,
                    };
                    by_crate
                        .entry(c.krate().to_owned())
                        .or_default()
                        .insert(spec);
                }
            };
            for leaf in &cu.compat_leaves {
                let canonical = leaf.segs.last().and_then(|n| self.input.aliases.get(n));
                match (&leaf.kind, canonical) {
                    (LeafKind::Glob, _) => {
                        for name in &self.used_via_glob {
                            if let Some(c) = self.input.aliases.get(name) {
                                want(c, None);
                            }
                        }
                    }
                    (LeafKind::Name, Some(c)) if leaf.segs.len() >= 2 => want(c, None),
                    (LeafKind::Rename(a), Some(c)) if leaf.segs.len() >= 2 => want(c, Some(a)),
                    _ => {}
                }
            }
            let mut lines: Vec<String> = by_crate
                .into_iter()
                .map(|(krate, specs)| {
                    let specs: Vec<String> = specs.into_iter().collect();
                    if specs.len() == 1 {
                        format!("{}use {krate}::{};", cu.vis, specs[0])
                    } else {
                        format!("{}use {krate}::{{{}}};", cu.vis, specs.join(", "))
                    }
                })
                .collect();
            match cu.kept.len() {
                0 => {}
                1 => lines.insert(0, format!("{}use {};", cu.vis, cu.kept[0])),
                _ => lines.insert(0, format!("{}use {{{}}};", cu.vis, cu.kept.join(", "))),
            }
            let src = self.input.source;
            let comments = comments_in(&src[cu.full.0..cu.full.1]);
            lines.splice(0..0, comments);
            let line_start = src[..cu.full.0].rfind('\n').map_or(0, |i| i + 1);
            let indent: String = src[line_start..cu.full.0]
                .chars()
                .take_while(|c| c.is_whitespace())
                .collect();
            if lines.is_empty() {
                // Remove the whole item with its attributes, and its line if nothing else is on it.
                let (mut s, mut e) = cu.full;
                let before_blank = src[line_start..s].trim().is_empty();
                let line_end = src[e..].find('\n').map_or(src.len(), |i| e + i + 1);
                if before_blank && src[e..line_end].trim().is_empty() {
                    s = line_start;
                    e = line_end;
                }
                self.edits.push(Edit {
                    start: s,
                    end: e,
                    text: String::new(),
                });
            } else {
                self.edits.push(Edit {
                    start: cu.body.0,
                    end: cu.body.1,
                    text: lines.join(&format!("\n{indent}")),
                });
            }
        }
    }

    // ---- pass 2 helpers -------------------------------------------------------------------

    fn legacy_engine_type(&self, name: &str) -> bool {
        name == "UserExecutionEngine"
            || self
                .input
                .aliases
                .get(name)
                .is_some_and(|c| c.name() == "UserExecutionEngine")
    }

    fn check_path(&mut self, path: &syn::Path) {
        let segs: Vec<&Ident> = path.segments.iter().map(|s| &s.ident).collect();
        let Some(first) = segs.first() else { return };
        let first_s = first.to_string();
        if !matches!(self.input.role, Role::Factory | Role::Core)
            && segs.iter().any(|s| *s == "factory_only")
        {
            let text = segs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("::");
            self.report(
                Rule::FactoryBypass,
                first.span(),
                &text,
                format!("`{text}` builds an engine outside engine-factory"),
                "obtain engines from `engine_factory::ExecutionEngineFactory::create_for_user`"
                    .into(),
            );
        }
        if segs.len() == 1 && path.leading_colon.is_none() && self.bypass_names.contains(&first_s) {
            self.report(
                Rule::FactoryBypass,
                first.span(),
                &first_s,
                format!("`{first_s}` (from engine_core::factory_only) builds an engine outside engine-factory"),
                BYPASS_HELP.into(),
            );
        }
        if self.is_compat_role() {
            return;
        }
        if self.compat_mods.contains(&first_s) && segs.len() >= 2 {
            let name = segs[1].to_string();
            let start = match &path.leading_colon {
                Some(c) => self.range(c.spans[0]).0,
                None => self.range(first.span()).0,
            };
            let end = self.range(segs[1].span()).1;
            if let Some(c) = self.input.aliases.get(&name).cloned() {
                self.report(
                    Rule::DeprecatedName,
                    first.span(),
                    &name,
                    format!("path `{first_s}::{name}` names a deprecated alias"),
                    format!("use `{}`", c.path),
                );
                self.edits.push(Edit {
                    start,
                    end,
                    text: c.path,
                });
            } else {
                self.report(
                    Rule::DeprecatedName,
                    first.span(),
                    &name,
                    format!("`{first_s}::{name}` is not a known engine_compat alias"),
                    "use the canonical item from engine_core / engine_factory".into(),
                );
            }
        } else if path.leading_colon.is_none() {
            self.check_local_name(first);
        }
    }

    /// A single identifier that may be a legacy name imported by name or by glob.
    fn check_local_name(&mut self, ident: &Ident) {
        let s = ident.to_string();
        let legacy = if let Some(l) = self.named.get(&s) {
            l.clone()
        } else if self.glob && self.input.aliases.contains_key(&s) {
            self.used_via_glob.insert(s.clone());
            s.clone()
        } else {
            return;
        };
        let Some(c) = self.input.aliases.get(&legacy).cloned() else {
            return;
        };
        self.report(
            Rule::DeprecatedName,
            ident.span(),
            &legacy,
            format!("legacy name `{legacy}` (imported from engine_compat)"),
            format!("use `{}`", c.path),
        );
        let (start, end) = self.range(ident.span());
        self.edits.push(Edit {
            start,
            end,
            text: c.name().to_owned(),
        });
    }

    /// Paths inside macro invocations are plain tokens: look for `compat::Name` and imported
    /// legacy names among them.
    fn check_macro_tokens(&mut self, tokens: TokenStream) {
        let flat: Vec<TokenTree> = tokens.into_iter().collect();
        let mut i = 0;
        while i < flat.len() {
            match &flat[i] {
                TokenTree::Group(g) => self.check_macro_tokens(g.stream()),
                TokenTree::Ident(id) => {
                    let after_colons = i >= 2
                        && matches!(&flat[i - 1], TokenTree::Punct(p) if p.as_char() == ':')
                        && matches!(&flat[i - 2], TokenTree::Punct(p) if p.as_char() == ':');
                    let s = id.to_string();
                    let path_next = i + 3 < flat.len()
                        && matches!(&flat[i + 1], TokenTree::Punct(p) if p.as_char() == ':')
                        && matches!(&flat[i + 2], TokenTree::Punct(p) if p.as_char() == ':');
                    if !self.is_compat_role() && self.compat_mods.contains(&s) && path_next {
                        if let TokenTree::Ident(name) = &flat[i + 3] {
                            let n = name.to_string();
                            if let Some(c) = self.input.aliases.get(&n).cloned() {
                                self.report(
                                    Rule::DeprecatedName,
                                    id.span(),
                                    &n,
                                    format!("path `{s}::{n}` names a deprecated alias"),
                                    format!("use `{}`", c.path),
                                );
                                let start = self.range(id.span()).0;
                                let end = self.range(name.span()).1;
                                self.edits.push(Edit {
                                    start,
                                    end,
                                    text: c.path,
                                });
                            }
                            i += 4;
                            continue;
                        }
                    }
                    if !after_colons && !self.is_compat_role() {
                        self.check_local_name(id);
                    }
                }
                _ => {}
            }
            i += 1;
        }
    }

    fn check_definition(&mut self, ident: &Ident, kind: &str, attrs: &[syn::Attribute]) {
        let name = ident.to_string();
        let engine_like = is_engine_like(self.input.aliases, &name);
        // Any legacy name redefined downstream, engine or not (a tool dispatcher, a context
        // factory, an error type): the legacy system's parallel implementations came back so.
        let legacy = self.input.aliases.get(&name).map(|c| c.path.clone());
        if !engine_like && legacy.is_none() {
            return;
        }
        match self.input.role {
            Role::Core | Role::Factory => return,
            Role::Compat
                if kind == "type alias" && crate::legacy::deprecation_note(attrs).is_some() =>
            {
                return
            }
            _ => {}
        }
        if !engine_like {
            let canonical = legacy.unwrap_or_default();
            self.report(
                Rule::DuplicateEngine,
                ident.span(),
                &name,
                format!(
                    "{kind} `{name}` redefines a legacy name outside engine-core / engine-factory"
                ),
                format!("use `{canonical}`; delete this definition"),
            );
            return;
        }
        let help = if name.ends_with("Factory") {
            "use `engine_factory::ExecutionEngineFactory`; delete this definition"
        } else if LEGACY_TRAITS.contains(&name.as_str()) {
            "take `engine_core::UserExecutionEngine` directly; implement `engine_core::Agent` for test doubles"
        } else {
            "use `engine_core::UserExecutionEngine` (from the factory); delete this definition"
        };
        self.report(
            Rule::DuplicateEngine,
            ident.span(),
            &name,
            format!(
                "{kind} `{name}` defines an execution engine outside engine-core / engine-factory"
            ),
            help.into(),
        );
    }

    /// A struct field holding a map behind a lock (or a concurrent map) keyed by something other
    /// than the user: the legacy `active_runs: Arc<Mutex<HashMap<String, Run>>>`. A field on the
    /// line after a `// ssot-allow: shared-state <why>` comment is a reviewed exception.
    fn check_shared_field(&mut self, owner: &Ident, field: &Ident, ty: &syn::Type) {
        if !self.input.engine_related {
            return;
        }
        let Some((map, key)) = shared_map_key(ty) else {
            return;
        };
        if key.ends_with("UserId") {
            return;
        }
        let line = field.span().start().line;
        if self
            .line_text(line.saturating_sub(1))
            .starts_with("// ssot-allow: shared-state")
        {
            return;
        }
        let name = format!("{owner}.{field}");
        self.report(
            Rule::SharedState,
            field.span(),
            &name,
            format!("field `{name}` is a `{map}` keyed by `{key}` behind a lock: one map shared by every user's runs"),
            "key it by `UserId`, or keep it inside the user's engine; mark a reviewed exception with `// ssot-allow: shared-state <why>` on the line above".into(),
        );
    }

    fn check_static(&mut self, ident: &Ident, ty_tokens: TokenStream, mutable: bool) {
        if !self.input.engine_related {
            return;
        }
        let name = ident.to_string();
        let what = if mutable {
            Some("`static mut`".to_owned())
        } else {
            mentions_lock_or_map(ty_tokens).map(|t| format!("a `{t}`"))
        };
        if let Some(what) = what {
            self.report(
                Rule::SharedState,
                ident.span(),
                &name,
                format!("process-global `{name}` holds {what}: state shared by every user"),
                "keep per-user state inside the user's engine, or key it by UserId behind the factory".into(),
            );
        }
    }
}

impl<'ast> Visit<'ast> for Analyzer<'_> {
    fn visit_item_use(&mut self, _: &'ast ItemUse) {}

    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        for attr in &m.attrs {
            self.visit_attribute(attr);
        }
        if let Some((_, items)) = &m.content {
            self.analyze_scope(items);
        }
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        self.check_path(path);
        syn::visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.visit_path(&mac.path);
        let is_lazy_static = mac
            .path
            .segments
            .last()
            .is_some_and(|s| s.ident == "lazy_static");
        if is_lazy_static {
            let tokens: Vec<TokenTree> = mac.tokens.clone().into_iter().collect();
            for (i, t) in tokens.iter().enumerate() {
                if let (TokenTree::Ident(r), Some(TokenTree::Ident(name))) = (t, tokens.get(i + 1))
                {
                    if r == "ref" {
                        let ty: TokenStream = tokens[i + 2..]
                            .iter()
                            .take_while(|t| !matches!(t, TokenTree::Punct(p) if p.as_char() == '='))
                            .cloned()
                            .collect();
                        self.check_static(name, ty, false);
                    }
                }
            }
        }
        self.check_macro_tokens(mac.tokens.clone());
    }

    fn visit_item_struct(&mut self, i: &'ast syn::ItemStruct) {
        self.check_definition(&i.ident, "struct", &i.attrs);
        for field in &i.fields {
            if let Some(name) = &field.ident {
                self.check_shared_field(&i.ident, name, &field.ty);
            }
        }
        syn::visit::visit_item_struct(self, i);
    }
    fn visit_item_enum(&mut self, i: &'ast syn::ItemEnum) {
        self.check_definition(&i.ident, "enum", &i.attrs);
        syn::visit::visit_item_enum(self, i);
    }
    fn visit_item_type(&mut self, i: &'ast syn::ItemType) {
        self.check_definition(&i.ident, "type alias", &i.attrs);
        syn::visit::visit_item_type(self, i);
    }
    fn visit_item_trait(&mut self, i: &'ast syn::ItemTrait) {
        self.check_definition(&i.ident, "trait", &i.attrs);
        syn::visit::visit_item_trait(self, i);
    }
    fn visit_item_static(&mut self, i: &'ast syn::ItemStatic) {
        let mutable = matches!(i.mutability, syn::StaticMutability::Mut(_));
        self.check_static(&i.ident, quote_tokens(&i.ty), mutable);
        syn::visit::visit_item_static(self, i);
    }

    fn visit_expr_struct(&mut self, e: &'ast syn::ExprStruct) {
        if !matches!(self.input.role, Role::Factory | Role::Core) {
            if let Some(last) = e.path.segments.last() {
                if self.legacy_engine_type(&last.ident.to_string()) {
                    self.report(
                        Rule::FactoryBypass,
                        last.ident.span(),
                        &last.ident.to_string(),
                        format!(
                            "struct literal builds a `{}` outside engine-factory",
                            last.ident
                        ),
                        BYPASS_HELP.into(),
                    );
                }
            }
        }
        syn::visit::visit_expr_struct(self, e);
    }

    fn visit_expr_call(&mut self, e: &'ast syn::ExprCall) {
        if let (false, syn::Expr::Path(p)) = (
            matches!(self.input.role, Role::Factory | Role::Core),
            &*e.func,
        ) {
            let segs: Vec<String> = p
                .path
                .segments
                .iter()
                .map(|s| s.ident.to_string())
                .collect();
            if segs.len() >= 2 {
                let (ty, f) = (&segs[segs.len() - 2], &segs[segs.len() - 1]);
                let ctor = ["new", "create", "build", "assemble", "from", "with"]
                    .iter()
                    .any(|p| f.starts_with(p));
                if ctor && self.legacy_engine_type(ty) {
                    let at = p.path.segments[segs.len() - 2].ident.span();
                    self.report(
                        Rule::FactoryBypass,
                        at,
                        &format!("{ty}::{f}"),
                        format!("`{ty}::{f}` builds an engine outside engine-factory"),
                        BYPASS_HELP.into(),
                    );
                }
            }
        }
        syn::visit::visit_expr_call(self, e);
    }
}

fn quote_tokens(t: &impl quote::ToTokens) -> TokenStream {
    t.to_token_stream()
}
