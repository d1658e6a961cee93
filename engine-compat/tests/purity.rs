//! engine-compat holds only deprecated type aliases, their docs and modules — no
//! implementation — and every alias is proven by `tests/aliases.rs`.

use std::collections::BTreeSet;
use std::path::Path;

use syn::{Attribute, Expr, Item, Lit, Meta};

fn parse(path: &Path) -> syn::File {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn has_doc(attrs: &[Attribute]) -> bool {
    attrs.iter().any(|a| a.path().is_ident("doc"))
}

/// The `note` of a `#[deprecated(since = "...", note = "...")]`, if well formed.
fn deprecation_note(attrs: &[Attribute]) -> Option<String> {
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

/// Walks items; collects alias names and every violation.
fn check(items: &[Item], dir: &Path, aliases: &mut BTreeSet<String>, bad: &mut Vec<String>) {
    for item in items {
        match item {
            Item::Type(t) => {
                let name = t.ident.to_string();
                let target = quote_path(&t.ty);
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
                        if !note.contains("cargo xtask migrate --fix") {
                            bad.push(format!(
                                "`{name}`: note does not name `cargo xtask migrate --fix`"
                            ));
                        }
                    }
                }
                if !has_doc(&t.attrs) {
                    bad.push(format!("type alias `{name}` has no doc comment"));
                }
                if !matches!(t.vis, syn::Visibility::Public(_)) {
                    bad.push(format!("type alias `{name}` is not pub"));
                }
                aliases.insert(name);
            }
            Item::Mod(m) => match &m.content {
                Some((_, inner)) => check(inner, dir, aliases, bad),
                None => {
                    let file = dir.join(format!("{}.rs", m.ident));
                    check(&parse(&file).items, dir, aliases, bad);
                }
            },
            other => bad.push(format!("forbidden item: {}", describe(other))),
        }
    }
}

fn quote_path(ty: &syn::Type) -> String {
    match ty {
        syn::Type::Path(p) => p
            .path
            .segments
            .iter()
            .map(|s| s.ident.to_string())
            .collect::<Vec<_>>()
            .join("::"),
        _ => "<not a path>".into(),
    }
}

fn describe(item: &Item) -> &'static str {
    match item {
        Item::Fn(_) => "fn",
        Item::Impl(_) => "impl",
        Item::Struct(_) => "struct",
        Item::Enum(_) => "enum",
        Item::Trait(_) => "trait",
        Item::Macro(_) => "macro",
        Item::Use(_) => "use / pub use (deprecation on re-exports is ignored by rustc)",
        Item::Const(_) => "const",
        Item::Static(_) => "static",
        _ => "non-alias item",
    }
}

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn source_is_only_deprecated_aliases_docs_and_modules() {
    let src = crate_dir().join("src");
    let mut aliases = BTreeSet::new();
    let mut bad = Vec::new();
    check(
        &parse(&src.join("lib.rs")).items,
        &src,
        &mut aliases,
        &mut bad,
    );
    assert!(
        bad.is_empty(),
        "engine-compat must hold only deprecated aliases:\n{}",
        bad.join("\n")
    );
    assert_eq!(aliases.len(), 22, "{aliases:?}");
}

#[test]
fn every_alias_is_proven_and_documented_in_the_migration_table() {
    let src = crate_dir().join("src");
    let mut aliases = BTreeSet::new();
    check(
        &parse(&src.join("lib.rs")).items,
        &src,
        &mut aliases,
        &mut Vec::new(),
    );
    let proofs = parse(&crate_dir().join("tests/aliases.rs"));
    let proven: BTreeSet<String> = proofs
        .items
        .iter()
        .find_map(|i| match i {
            Item::Const(c) if c.ident == "PROVEN" => Some(c),
            _ => None,
        })
        .map(|c| {
            let text = quote_expr(&c.expr);
            text.split('"')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect()
        })
        .expect("tests/aliases.rs has a PROVEN list");
    assert_eq!(
        aliases, proven,
        "every alias needs its proofs in tests/aliases.rs"
    );
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    for name in &aliases {
        assert!(
            lib.contains(&format!("//! | `{name}` |")),
            "{name} missing from the migration table"
        );
    }
    for legacy in [
        "IExecutionEngine",
        "ExecutionEngineInterface",
        "create_execution_engine",
        "get_execution_engine_factory",
        "user_execution_engine",
        "create_request_scoped_engine",
    ] {
        assert!(
            lib.contains(&format!("//! | `{legacy}")),
            "{legacy} missing from the no-alias table"
        );
    }
}

fn quote_expr(e: &Expr) -> String {
    match e {
        Expr::Reference(r) => quote_expr(&r.expr),
        Expr::Array(a) => a
            .elems
            .iter()
            .map(|x| match x {
                Expr::Lit(l) => match &l.lit {
                    Lit::Str(s) => format!("\"{}\"", s.value()),
                    _ => String::new(),
                },
                _ => String::new(),
            })
            .collect(),
        _ => String::new(),
    }
}
