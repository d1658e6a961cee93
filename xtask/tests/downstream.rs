//! The README's two downstream commands, on downstream crates that depend only on engine-compat:
//! with the installed binary (`cargo-ssot`, run as `cargo ssot`) from the crate's own root,
//! `migrate --fix` rewrites the legacy names, adds engine-core and engine-factory to the
//! manifest (path rewritten relative to the package; or through `[workspace.dependencies]` when
//! the compat dependency is inherited), drops engine-compat, keeps the manifest's comments, and
//! leaves a crate that builds under `-D deprecated`; a second `--fix` changes nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

const SOURCE: &str = r#"//! A downstream crate still on the legacy names.
use engine_compat::{EngineConfig, ExecutionEngine, UnifiedExecutionEngineFactory};

/// How many runs an engine holds.
pub fn capacity(engine: &ExecutionEngine) -> usize {
    engine.config().max_accepted_runs()
}

/// The factory's engine defaults.
pub fn defaults(factory: &UnifiedExecutionEngineFactory) -> EngineConfig {
    factory.config().engine().clone()
}
"#;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn ssot(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cargo-ssot"))
        .arg("ssot")
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", downstream_target())
        .env_remove("RUSTFLAGS")
        .output()
        .expect("cargo-ssot runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Shared by both fixtures, so the engine crates compile once.
fn downstream_target() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("downstream-target")
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn snapshot(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut files: Vec<_> = walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_entry(|e| e.file_name() != "target")
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file() && e.file_name() != "Cargo.lock")
        .map(|e| {
            (
                e.path().to_path_buf(),
                std::fs::read_to_string(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

fn fix_twice_and_build(root: &Path, manifest: &Path) -> String {
    let (ok, out) = ssot(root, &["migrate", "--fix"]);
    assert!(ok, "--fix failed:\n{out}");
    assert!(out.contains("verified:"), "the fix checked itself:\n{out}");
    let after = snapshot(root);
    let (ok, out) = ssot(root, &["migrate", "--fix"]);
    assert!(ok, "second --fix failed:\n{out}");
    assert!(
        out.contains("rewrote 0 file(s) (0 SSOT001 findings) and 0 manifest(s)"),
        "{out}"
    );
    assert_eq!(snapshot(root), after, "a second --fix changes nothing");
    let (ok, out) = ssot(root, &["migrate", "--check"]);
    assert!(ok, "clean after the fix:\n{out}");
    let build = Command::new(env!("CARGO"))
        .args(["check", "--quiet", "--manifest-path"])
        .arg(root.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", downstream_target())
        .env("RUSTFLAGS", "-D deprecated")
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "{}",
        String::from_utf8_lossy(&build.stderr)
    );
    std::fs::read_to_string(manifest).unwrap()
}

#[test]
fn a_path_dependency_is_migrated_with_zero_manual_edits() {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("downstream-path");
    let _ = std::fs::remove_dir_all(&root);
    let compat = repo().join("engine-compat");
    write(
        &root.join("Cargo.toml"),
        &format!(
            "# A downstream app: its own comments stay.\n[package]\nname = \"downstream-app\"\n\
             version = \"0.1.0\" # kept too\nedition = \"2021\"\n\n[workspace]\n\n[dependencies]\n\
             engine-compat = {{ path = {:?} }}\n",
            compat.display().to_string()
        ),
    );
    write(&root.join("src/lib.rs"), SOURCE);
    std::fs::copy(repo().join("Cargo.lock"), root.join("Cargo.lock")).unwrap();
    let (ok, out) = ssot(&root, &["migrate", "--status"]);
    assert!(ok && out.contains("phase 2"), "{out}");
    let manifest = fix_twice_and_build(&root, &root.join("Cargo.toml"));
    assert!(!manifest.contains("engine-compat"), "{manifest}");
    assert!(
        manifest.starts_with("# A downstream app: its own comments stay.\n"),
        "{manifest}"
    );
    assert!(
        manifest.contains("version = \"0.1.0\" # kept too"),
        "{manifest}"
    );
    let core = pathdiff::diff_paths(
        repo().join("engine-core").canonicalize().unwrap(),
        root.canonicalize().unwrap(),
    )
    .unwrap();
    assert!(
        manifest.contains(&format!(
            "engine-core = {{ path = \"{}\" }}",
            core.display()
        )),
        "{manifest}"
    );
    assert!(
        manifest.contains("engine-factory = { path = "),
        "{manifest}"
    );
    let lib = std::fs::read_to_string(root.join("src/lib.rs")).unwrap();
    assert!(
        lib.contains("use engine_core::{EngineConfig, UserExecutionEngine};"),
        "{lib}"
    );
    assert!(
        lib.contains("use engine_factory::ExecutionEngineFactory;"),
        "{lib}"
    );
}

#[test]
fn a_workspace_inherited_dependency_is_migrated_through_the_workspace_table() {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("downstream-inherited");
    let _ = std::fs::remove_dir_all(&root);
    let compat = repo().join("engine-compat");
    write(
        &root.join("Cargo.toml"),
        &format!(
            "[workspace]\nmembers = [\"app\"]\nresolver = \"2\"\n\n[workspace.dependencies]\n\
             engine-compat = {{ path = {:?} }}\n",
            compat.display().to_string()
        ),
    );
    write(
        &root.join("app/Cargo.toml"),
        "[package]\nname = \"app\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\n\
         engine-compat = { workspace = true }\n",
    );
    write(&root.join("app/src/lib.rs"), SOURCE);
    std::fs::copy(repo().join("Cargo.lock"), root.join("Cargo.lock")).unwrap();
    let app = fix_twice_and_build(&root, &root.join("app/Cargo.toml"));
    assert!(app.contains("engine-core = { workspace = true }"), "{app}");
    assert!(
        app.contains("engine-factory = { workspace = true }"),
        "{app}"
    );
    assert!(!app.contains("engine-compat"), "{app}");
    let ws = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    assert!(ws.contains("engine-core = { path = "), "{ws}");
    assert!(ws.contains("engine-factory = { path = "), "{ws}");
}
