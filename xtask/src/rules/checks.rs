//! Pass 2 of a module scope: its items. Paths naming legacy aliases or `factory_only`, legacy
//! names redefined, engines built outside the factory, and shared state (SSOT001/2/3/5).

use proc_macro2::{TokenStream, TokenTree};
use syn::Ident;

use super::{Analyzer, Role};
use crate::legacy::{is_engine_like, LEGACY_TRAITS};
use crate::model::{Edit, Rule};

/// The help of every SSOT003 finding.
pub(super) const BYPASS_HELP: &str =
    "obtain engines from `engine_factory::ExecutionEngineFactory::create_for_user`";

const LOCK_OR_MAP: &[&str] = &[
    "Mutex", "RwLock", "HashMap", "BTreeMap", "HashSet", "BTreeSet", "DashMap", "DashSet",
    "IndexMap", "RefCell",
];

pub(super) fn mentions_lock_or_map(tokens: TokenStream) -> Option<String> {
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

impl Analyzer<'_> {
    pub(super) fn legacy_engine_type(&self, name: &str) -> bool {
        name == "UserExecutionEngine"
            || self
                .input
                .aliases
                .get(name)
                .is_some_and(|c| c.name() == "UserExecutionEngine")
    }

    pub(super) fn check_path(&mut self, path: &syn::Path) {
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
        if self.scope.compat_mods.contains(&first_s) && segs.len() >= 2 {
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
        let legacy = if let Some(l) = self.scope.named.get(&s) {
            l.clone()
        } else if self.scope.glob && self.input.aliases.contains_key(&s) {
            self.scope.used_via_glob.insert(s.clone());
            s.clone()
        } else if let Some(l) = self.scope.chain_glob.get(&s) {
            let l = l.clone();
            self.scope.used_via_glob.insert(s.clone());
            l
        } else {
            return;
        };
        let Some(c) = self.input.aliases.get(&legacy).cloned() else {
            return;
        };
        let message = match self.scope.named_via.get(&s) {
            Some(via) => format!("legacy name `{legacy}` (imported through `{via}`)"),
            None if self.scope.chain_glob.contains_key(&s) => {
                format!("legacy name `{legacy}` (through a glob import of a module re-exporting engine_compat)")
            }
            None => format!("legacy name `{legacy}` (imported from engine_compat)"),
        };
        self.report(
            Rule::DeprecatedName,
            ident.span(),
            &legacy,
            message,
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
    pub(super) fn check_macro_tokens(&mut self, tokens: TokenStream) {
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
                    if !self.is_compat_role() && self.scope.compat_mods.contains(&s) && path_next {
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

    pub(super) fn check_definition(&mut self, ident: &Ident, kind: &str, attrs: &[syn::Attribute]) {
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
    pub(super) fn check_shared_field(&mut self, owner: &Ident, field: &Ident, ty: &syn::Type) {
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

    pub(super) fn check_static(&mut self, ident: &Ident, ty_tokens: TokenStream, mutable: bool) {
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
