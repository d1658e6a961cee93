//! The per-file checks (SSOT001, SSOT002, SSOT003, SSOT005) and the SSOT001 rewrites, over a
//! real syntax tree (`syn` with span locations). Strings and comments are never tokens, so a
//! legacy name inside them is never reported or touched.
//!
//! One file, three passes per module scope: `imports.rs` resolves the scope's `use` items
//! (compat imports, renames, globs), `checks.rs` walks the items
//! (paths, definitions, shared state, engine construction), `rewrite.rs` turns the compat
//! imports into canonical ones.

use std::collections::{BTreeMap, BTreeSet};

use proc_macro2::{Span, TokenStream, TokenTree};
use syn::visit::Visit;
use syn::ItemUse;

use crate::legacy::Canonical;
use crate::model::{Edit, Finding, Rule};

mod checks;
mod imports;
pub mod reexports;
mod rewrite;

pub use reexports::Reexports;

use checks::BYPASS_HELP;
use imports::CompatUse;

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
    /// The file's module path in its package (`crate`, `crate::a::b`; see
    /// [`reexports::module_path_of`]).
    pub module: &'a str,
    /// The package's legacy names bound per module, to follow `use` chains through the
    /// package's own modules; `None` checks the file alone.
    pub reexports: Option<&'a Reexports>,
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
    let result = parse_source(input.path, input.source).map(|parsed| check_parsed(input, &parsed));
    // Free the span source map of this thread: spans are not used past this point.
    proc_macro2::extra::invalidate_current_thread_spans();
    result
}

/// A file parsed once, for [`check_parsed`] (and the package's [`Reexports`]).
#[derive(Debug)]
pub struct Parsed {
    /// Bytes of BOM / shebang before the parsed text.
    base: usize,
    /// The syntax tree.
    pub file: syn::File,
}

/// Parses a file's source (after a BOM or shebang line) with span locations.
///
/// # Errors
/// [`ParseError`] naming `path` when it is not valid Rust.
pub fn parse_source(path: &str, source: &str) -> Result<Parsed, ParseError> {
    let (base, body) = strip_prelude(source);
    syn::parse_str::<syn::File>(body)
        .map(|file| Parsed { base, file })
        .map_err(|e| {
            let start = e.span().start();
            ParseError {
                path: path.to_owned(),
                line: start.line,
                column: start.column + 1,
                message: e.to_string(),
            }
        })
}

/// Checks a file parsed by [`parse_source`] from `input.source`. The caller frees the thread's
/// span map (`proc_macro2::extra::invalidate_current_thread_spans`) once it is done with the
/// spans of every file it parsed.
pub fn check_parsed(input: &FileInput<'_>, parsed: &Parsed) -> FileOutcome {
    let mut a = Analyzer::new(input, parsed.base);
    a.analyze_scope(&parsed.file.items, input.module.to_owned());
    a.findings.sort_by_key(|f| (f.line, f.column));
    FileOutcome {
        findings: a.findings,
        edits: a.edits,
    }
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

/// The import state of one module scope, saved and restored around nested modules.
struct Scope {
    /// The scope's module path (`crate::a::b`).
    module: String,
    /// Local names of the compat crate (its name and `as` renames).
    compat_mods: BTreeSet<String>,
    /// Local name -> legacy name, for plain (non-renamed) imports.
    named: BTreeMap<String, String>,
    /// Whether the scope glob-imports the compat crate.
    glob: bool,
    used_via_glob: BTreeSet<String>,
    /// Full paths imported by non-compat `use` leaves, as `(path, local name)`.
    existing: BTreeSet<(String, String)>,
    compat_uses: Vec<CompatUse>,
    /// Local name -> legacy name of the names a glob import brings in through another module of
    /// the package (`use crate::names::*`).
    chain_glob: BTreeMap<String, String>,
    /// Local name -> the package module it was imported through, for named imports of legacy
    /// names re-exported by another module.
    named_via: BTreeMap<String, String>,
}

impl Scope {
    fn new(compat_crate: &str, module: String) -> Self {
        Self {
            module,
            chain_glob: BTreeMap::new(),
            named_via: BTreeMap::new(),
            compat_mods: BTreeSet::from([compat_crate.to_owned()]),
            named: BTreeMap::new(),
            glob: false,
            used_via_glob: BTreeSet::new(),
            existing: BTreeSet::new(),
            compat_uses: Vec::new(),
        }
    }
}

struct Analyzer<'a> {
    input: &'a FileInput<'a>,
    base: usize,
    scope: Scope,
    /// Local names bound to `factory_only` items.
    bypass_names: BTreeSet<String>,
    findings: Vec<Finding>,
    edits: Vec<Edit>,
}

impl<'a> Analyzer<'a> {
    fn new(input: &'a FileInput<'a>, base: usize) -> Self {
        Self {
            input,
            base,
            scope: Scope::new(input.compat_crate, input.module.to_owned()),
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

    /// Analyzes one module scope: its imports apply to its own items (function bodies
    /// included) but not to nested modules, which get a fresh scope as in Rust.
    fn analyze_scope(&mut self, items: &[syn::Item], module: String) {
        let fresh = Scope::new(self.input.compat_crate, module);
        let saved = std::mem::replace(&mut self.scope, fresh);
        self.collect_imports(items);
        for item in items {
            self.visit_item(item);
        }
        self.rewrite_imports();
        self.scope = saved;
    }
}

impl<'ast> Visit<'ast> for Analyzer<'_> {
    fn visit_item_use(&mut self, _: &'ast ItemUse) {}

    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        for attr in &m.attrs {
            self.visit_attribute(attr);
        }
        if let Some((_, items)) = &m.content {
            let module = format!("{}::{}", self.scope.module, m.ident);
            self.analyze_scope(items, module);
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
