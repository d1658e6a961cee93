//! Phase 3 proof, pinned by the compiler's own output: a downstream crate with
//! `#![deny(deprecated)]` that still names the legacy aliases does not compile, and every error
//! names the canonical replacement. The expected diagnostics are checked in beside each case
//! (`tests/ui/*.stderr`); `TRYBUILD=overwrite cargo test -p engine-compat --test compile_fail`
//! rewrites them after a deliberate change.

#[test]
fn legacy_names_fail_under_deny_deprecated_naming_their_replacement() {
    trybuild::TestCases::new().compile_fail("tests/ui/*.rs");
}
