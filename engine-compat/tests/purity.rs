//! engine-compat holds only deprecated type aliases, their docs and modules — no
//! implementation — and every alias is proven by `tests/aliases.rs` and listed in the crate
//! docs. The purity rules live in `xtask::legacy::check_compat_purity`, shared with
//! `cargo xtask tidy`.

use std::collections::BTreeSet;
use std::path::Path;

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn aliases() -> BTreeSet<String> {
    match xtask::legacy::check_compat_purity(&crate_dir().join("src")) {
        Ok(names) => names.into_iter().collect(),
        Err(bad) => panic!(
            "engine-compat must hold only deprecated aliases:\n{}",
            bad.join("\n")
        ),
    }
}

#[test]
fn source_is_only_deprecated_aliases_docs_and_modules() {
    assert_eq!(aliases().len(), 22);
}

#[test]
fn the_purity_check_rejects_implementation() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("impure-compat");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("lib.rs"),
        "//! x\n/// d\n#[deprecated(since = \"0.1.0\", note = \"use `a::B` instead; `cargo ssot migrate --fix` rewrites this\")]\n\
         pub type Old = a::B;\npub use a::B as Older;\npub fn helper() {}\n/// undeprecated\npub type Bare = a::B;\n",
    )
    .unwrap();
    let bad = xtask::legacy::check_compat_purity(&dir).unwrap_err();
    assert_eq!(bad.len(), 3, "{bad:?}");
    assert!(bad[0].contains("pub use"));
    assert!(bad[1].contains("fn"));
    assert!(bad[2].contains("`Bare` lacks #[deprecated"));
}

#[test]
fn every_alias_is_proven_and_documented_in_the_migration_table() {
    let aliases = aliases();
    let proofs = std::fs::read_to_string(crate_dir().join("tests/aliases.rs")).unwrap();
    let proven_list = proofs
        .split("pub const PROVEN: &[&str] = &[")
        .nth(1)
        .and_then(|rest| rest.split("];").next())
        .expect("tests/aliases.rs has a PROVEN list");
    let proven: BTreeSet<String> = proven_list
        .split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    assert_eq!(
        aliases, proven,
        "every alias needs its proofs in tests/aliases.rs"
    );
    let flat: String = proofs.split_whitespace().collect();
    for name in &aliases {
        assert!(
            flat.contains(&format!("assert_type_eq_all!(engine_compat::{name},")),
            "{name}: no type proof"
        );
        assert!(
            proofs.contains(&format!("let _: Option<engine_compat::{name}> = None;")),
            "{name}: no deprecation proof"
        );
    }
    let lib = std::fs::read_to_string(crate_dir().join("src/lib.rs")).unwrap();
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
