//! Phase 3 proof: a downstream crate with `#![deny(deprecated)]` that still uses the aliases
//! does not compile, and the errors name the canonical replacements.
//!
//! Runs `cargo check` on `tests/fixtures/legacy_downstream.rs` as its own crate (with this
//! workspace's lockfile, in a separate target directory) and reads the diagnostics.

use std::path::Path;
use std::process::Command;

const EXPECTED: &[(&str, &str)] = &[
    ("ExecutionEngine", "engine_core::UserExecutionEngine"),
    (
        "SupervisorExecutionEngine",
        "engine_core::UserExecutionEngine",
    ),
    (
        "MCPEnhancedExecutionEngine",
        "engine_core::UserExecutionEngine",
    ),
    (
        "UnifiedExecutionEngineFactory",
        "engine_factory::ExecutionEngineFactory",
    ),
    (
        "UserScopedEngineFactory",
        "engine_factory::ExecutionEngineFactory",
    ),
    ("UnifiedToolDispatcher", "engine_core::ToolDispatcher"),
    ("UserExecutionEngineError", "engine_core::EngineError"),
    (
        "ExecutionEngineFactoryError",
        "engine_factory::FactoryError",
    ),
    (
        "UserContextFactory",
        "engine_core::UserExecutionContextBuilder",
    ),
    ("EngineConfig", "engine_core::EngineConfig"),
];

#[test]
fn deny_deprecated_downstream_fails_and_names_the_replacement() {
    let compat = Path::new(env!("CARGO_MANIFEST_DIR"));
    let workspace = compat.parent().unwrap();
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let krate = tmp.join("legacy-downstream");
    std::fs::create_dir_all(krate.join("src")).unwrap();
    std::fs::write(
        krate.join("Cargo.toml"),
        format!(
            "[package]\nname = \"legacy-downstream\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\n\
             [workspace]\n\n[dependencies]\nengine-compat = {{ path = {:?} }}\n",
            compat.display().to_string()
        ),
    )
    .unwrap();
    std::fs::copy(
        compat.join("tests/fixtures/legacy_downstream.rs"),
        krate.join("src/lib.rs"),
    )
    .unwrap();
    std::fs::copy(workspace.join("Cargo.lock"), krate.join("Cargo.lock")).unwrap();

    let output = Command::new(env!("CARGO"))
        .args(["check", "--quiet", "--message-format=short"])
        .current_dir(&krate)
        // Shared with xtask's fixture build (same flags), so dependencies compile once.
        .env("CARGO_TARGET_DIR", tmp.join("downstream-target"))
        .env("RUSTFLAGS", "-D deprecated")
        .output()
        .expect("cargo runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "must not compile:\n{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("error: use of deprecated type alias"))
        .collect();
    // 22 imports + 22 uses.
    assert!(
        errors.len() >= 44,
        "expected an error per use, got {}:\n{stderr}",
        errors.len()
    );
    for (legacy, canonical) in EXPECTED {
        let wanted = format!(
            "use of deprecated type alias `engine_compat::{legacy}`: use `{canonical}` instead; \
             `cargo xtask migrate --fix` rewrites this"
        );
        assert!(stderr.contains(&wanted), "missing {wanted:?} in:\n{stderr}");
    }
}
