//! The legacy names and their canonical paths, read from engine-compat's own source (embedded
//! at compile time), so the aliases and the migration tool can never disagree.

use std::collections::BTreeMap;
use std::path::Path;

use syn::{Attribute, Expr, Item, Lit, Meta};

/// engine-compat's source, the single source of truth for legacy names.
const COMPAT_SOURCE: &str = include_str!("../../engine-compat/src/lib.rs");

/// Legacy names that were traits: they count as engine definitions (SSOT002) but have no alias.
pub const LEGACY_TRAITS: &[&str] = &["IExecutionEngine", "ExecutionEngineInterface"];

/// A legacy alias: its canonical path, e.g. `engine_core::UserExecutionEngine`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canonical {
    /// Full path.
    pub path: String,
}

impl Canonical {
    /// The crate part, e.g. `engine_core`.
    pub fn krate(&self) -> &str {
        self.path.split("::").next().unwrap_or(&self.path)
    }
    /// The item name, e.g. `UserExecutionEngine`.
    pub fn name(&self) -> &str {
        self.path.rsplit("::").next().unwrap_or(&self.path)
    }
}

/// Legacy alias name -> canonical path, parsed from engine-compat's source (no global cache:
/// callers keep the map they need).
pub fn aliases() -> BTreeMap<String, Canonical> {
    let file = syn::parse_file(COMPAT_SOURCE).unwrap_or_else(|e| {
        unreachable!("engine-compat's source is compiled with this crate, so it parses: {e}")
    });
    let mut map = BTreeMap::new();
    collect_aliases(&file.items, &mut map);
    map
}

fn collect_aliases(items: &[Item], map: &mut BTreeMap<String, Canonical>) {
    for item in items {
        match item {
            Item::Type(t) => {
                if let Some(path) = type_path(&t.ty) {
                    map.insert(t.ident.to_string(), Canonical { path });
                }
            }
            Item::Mod(m) => {
                if let Some((_, inner)) = &m.content {
                    collect_aliases(inner, map);
                }
            }
            _ => {}
        }
    }
}

fn type_path(ty: &syn::Type) -> Option<String> {
    match ty {
        syn::Type::Path(p) if p.qself.is_none() => Some(
            p.path
                .segments
                .iter()
                .map(|s| s.ident.to_string())
                .collect::<Vec<_>>()
                .join("::"),
        ),
        _ => None,
    }
}

/// Whether `name` names an execution engine or engine factory (legacy or by suffix).
pub fn is_engine_like(aliases: &BTreeMap<String, Canonical>, name: &str) -> bool {
    aliases
        .get(name)
        .is_some_and(|c| c.name() == "UserExecutionEngine" || c.name() == "ExecutionEngineFactory")
        || LEGACY_TRAITS.contains(&name)
        || name.ends_with("ExecutionEngine")
        || name.ends_with("EngineFactory")
}

/// The `note` of a well-formed `#[deprecated(since = "...", note = "...")]`.
pub fn deprecation_note(attrs: &[Attribute]) -> Option<String> {
    let attr = attrs.iter().find(|a| a.path().is_ident("deprecated"))?;
    let Meta::List(list) = &attr.meta else {
        return None;
    };
    let args = list
        .parse_args_with(
            syn::punctuated::Punctuated::<syn::MetaNameValue, syn::Token![,]>::parse_terminated,
        )
        .ok()?;
    let value = |key: &str| {
        args.iter()
            .find(|nv| nv.path.is_ident(key))
            .and_then(|nv| match &nv.value {
                Expr::Lit(l) => match &l.lit {
                    Lit::Str(s) => Some(s.value()),
                    _ => None,
                },
                _ => None,
            })
    };
    value("since")?;
    value("note")
}

/// Checks that a compat crate's source holds only `#[deprecated]`, documented, public type
/// aliases (and modules of them), each note naming its canonical path and the fix command.
/// Returns the alias names found, or every violation.
///
/// # Errors
/// One message per violation (or a read / parse error).
pub fn check_compat_purity(src_dir: &Path) -> Result<Vec<String>, Vec<String>> {
    let mut names = Vec::new();
    let mut bad = Vec::new();
    purity_file(&src_dir.join("lib.rs"), src_dir, &mut names, &mut bad);
    if bad.is_empty() {
        Ok(names)
    } else {
        Err(bad)
    }
}

fn purity_file(file: &Path, dir: &Path, names: &mut Vec<String>, bad: &mut Vec<String>) {
    match std::fs::read_to_string(file)
        .map_err(|e| e.to_string())
        .and_then(|t| syn::parse_file(&t).map_err(|e| e.to_string()))
    {
        Ok(parsed) => purity_items(&parsed.items, dir, names, bad),
        Err(e) => bad.push(format!("{}: {e}", file.display())),
    }
}

fn purity_items(items: &[Item], dir: &Path, names: &mut Vec<String>, bad: &mut Vec<String>) {
    for item in items {
        match item {
            Item::Type(t) => {
                let name = t.ident.to_string();
                let target = type_path(&t.ty).unwrap_or_else(|| "<not a path>".into());
                match deprecation_note(&t.attrs) {
                    None => bad.push(format!(
                        "type alias `{name}` lacks #[deprecated(since, note)]"
                    )),
                    Some(note) => {
                        if !note.contains(&format!("`{target}`")) {
                            bad.push(format!(
                                "`{name}`: note does not name its canonical path `{target}`"
                            ));
                        }
                        if !note.contains("cargo ssot migrate --fix") {
                            bad.push(format!(
                                "`{name}`: note does not name `cargo ssot migrate --fix`"
                            ));
                        }
                    }
                }
                if !t.attrs.iter().any(|a| a.path().is_ident("doc")) {
                    bad.push(format!("type alias `{name}` has no doc comment"));
                }
                if !matches!(t.vis, syn::Visibility::Public(_)) {
                    bad.push(format!("type alias `{name}` is not pub"));
                }
                names.push(name);
            }
            Item::Mod(m) => match &m.content {
                Some((_, inner)) => purity_items(inner, dir, names, bad),
                None => purity_file(&dir.join(format!("{}.rs", m.ident)), dir, names, bad),
            },
            other => bad.push(format!(
                "forbidden item in the compat crate: {}",
                item_kind(other)
            )),
        }
    }
}

fn item_kind(item: &Item) -> &'static str {
    match item {
        Item::Fn(_) => "fn",
        Item::Impl(_) => "impl",
        Item::Struct(_) => "struct",
        Item::Enum(_) => "enum",
        Item::Trait(_) => "trait",
        Item::Macro(_) => "macro",
        Item::Use(_) => "use / pub use (rustc ignores #[deprecated] on re-exports)",
        Item::Const(_) => "const",
        Item::Static(_) => "static",
        _ => "non-alias item",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_alias_from_the_compat_source() {
        let a = aliases();
        assert_eq!(a.len(), 22);
        assert_eq!(
            a["ExecutionEngine"].path,
            "engine_core::UserExecutionEngine"
        );
        assert_eq!(
            a["UserScopedEngineFactory"].name(),
            "ExecutionEngineFactory"
        );
        assert_eq!(a["ExecutionEngineFactoryError"].krate(), "engine_factory");
        assert!(is_engine_like(&a, "MyExecutionEngine"));
        assert!(is_engine_like(&a, "IExecutionEngine"));
        assert!(is_engine_like(&a, "SupervisorExecutionEngineAdapter"));
        assert!(!is_engine_like(&a, "UnifiedToolDispatcher"));
    }
}
