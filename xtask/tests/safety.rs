//! `cargo ssot migrate --fix` never damages a user's workspace: one scratch downstream
//! workspace per case (a dev-dependency only, a build-dependency, a target-specific one, a
//! renamed one, a workspace-inherited one with its keys, a symlinked module, a file that is not
//! UTF-8, a file that does not parse), each fixed with zero manual edits and built under
//! `-D deprecated`; the private-registry case at the manifest level (it cannot resolve offline);
//! cargo fix's rules on dirty trees; a failed verification restoring every byte; a file changed
//! between the scan and the write refused; and `apply_edits` never panicking.

use std::path::{Path, PathBuf};
use std::process::Command;

use proptest::prelude::*;

const LEGACY: &str = r#"//! A downstream crate still on the legacy names.
use engine_compat::{EngineConfig, ExecutionEngine};

/// How many runs an engine holds.
pub fn capacity(engine: &ExecutionEngine) -> usize {
    engine.config().max_accepted_runs()
}

/// A copy of the engine's configuration.
pub fn config(engine: &ExecutionEngine) -> EngineConfig {
    engine.config().clone()
}
"#;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn compat() -> String {
    repo().join("engine-compat").display().to_string()
}

/// Shared with tests/downstream.rs, so the engine crates compile once.
fn downstream_target() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("downstream-target")
}

fn write(path: &Path, text: impl AsRef<[u8]>) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.invalid",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A fresh scratch workspace named `name` with `files`, the repository's lockfile, and
/// everything committed to a git repository of its own.
fn fixture(name: &str, files: &[(&str, &[u8])]) -> PathBuf {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("safety-{name}"));
    let _ = std::fs::remove_dir_all(&root);
    for (path, text) in files {
        write(&root.join(path), text);
    }
    std::fs::copy(repo().join("Cargo.lock"), root.join("Cargo.lock")).unwrap();
    git(&root, &["init", "-q"]);
    git(&root, &["add", "-A"]);
    git(&root, &["commit", "-q", "-m", "fixture"]);
    root
}

fn ssot(dir: &Path, args: &[&str]) -> (Option<i32>, String) {
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
    (out.status.code(), text)
}

/// Every file's bytes, `target/` and `.git/` left out.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<_> = walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_entry(|e| e.file_name() != "target" && e.file_name() != ".git")
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| (e.path().to_path_buf(), std::fs::read(e.path()).unwrap()))
        .collect();
    files.sort();
    files
}

/// Fails naming the files whose bytes differ (or that appeared or went away).
fn assert_same(before: &[(PathBuf, Vec<u8>)], after: &[(PathBuf, Vec<u8>)], what: &str) {
    let differ: Vec<String> = before
        .iter()
        .chain(after)
        .filter(|entry| !(before.contains(entry) && after.contains(entry)))
        .map(|(p, _)| p.display().to_string())
        .collect();
    assert!(differ.is_empty(), "{what}: these files differ: {differ:?}");
}

/// `--fix` succeeds and says it verified the build; then an independent `cargo check` of
/// every target under `-D deprecated` agrees, and `--check` finds no deprecated name left.
fn fix_and_build(root: &Path) -> String {
    let (code, out) = ssot(root, &["migrate", "--fix"]);
    assert_eq!(code, Some(0), "--fix failed:\n{out}");
    assert!(out.contains("verified:"), "the fix checked itself:\n{out}");
    let build = Command::new(env!("CARGO"))
        .args([
            "check",
            "--quiet",
            "--workspace",
            "--all-targets",
            "--manifest-path",
        ])
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
    let (_, check) = ssot(root, &["migrate", "--check"]);
    assert!(check.contains("SSOT001 deprecated-name: 0"), "{check}");
    out
}

fn toml(path: &Path) -> toml_edit::DocumentMut {
    std::fs::read_to_string(path).unwrap().parse().unwrap()
}

fn package(name: &str, deps: &str) -> String {
    format!(
        "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n\n{deps}"
    )
}

#[test]
fn a_dev_dependency_only_is_migrated_in_dev_dependencies_keeping_keys_and_permissions() {
    let manifest = package(
        "dev-only",
        &format!(
            "[dependencies]\n\n[dev-dependencies]\n# legacy names, for the tests only\n\
             engine-compat = {{ path = {:?}, default-features = false }} # pinned\n",
            compat()
        ),
    );
    let test = "//! A test on the legacy names.\nuse engine_compat::ExecutionEngine;\n\n\
                #[test]\nfn names() {\n    let _ = std::any::type_name::<ExecutionEngine>();\n}\n";
    let root = fixture(
        "dev-only",
        &[
            ("Cargo.toml", manifest.as_bytes()),
            ("src/lib.rs", b"//! lib\npub fn one() -> u32 {\n    1\n}\n"),
            ("tests/t.rs", test.as_bytes()),
        ],
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            root.join("tests/t.rs"),
            std::fs::Permissions::from_mode(0o664),
        )
        .unwrap();
    }
    let out = fix_and_build(&root);
    assert!(
        out.contains("rewrote 1 file(s)") && out.contains("and 1 manifest(s)"),
        "{out}"
    );
    let text = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    assert!(
        text.contains("# legacy names, for the tests only\nengine-core = "),
        "{text}"
    );
    let doc = toml(&root.join("Cargo.toml"));
    let dev = doc["dev-dependencies"].as_table_like().unwrap();
    assert!(dev.get("engine-compat").is_none(), "{text}");
    let core = dev
        .get("engine-core")
        .and_then(|i| i.as_table_like())
        .unwrap();
    assert_eq!(
        core.get("default-features").and_then(|v| v.as_bool()),
        Some(false)
    );
    assert!(core.get("path").is_some());
    assert!(
        doc["dependencies"].as_table_like().unwrap().is_empty(),
        "{text}"
    );
    let t = std::fs::read_to_string(root.join("tests/t.rs")).unwrap();
    assert!(t.contains("use engine_core::UserExecutionEngine;"), "{t}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(root.join("tests/t.rs"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o664,
            "the rewrite keeps the file's permissions"
        );
    }
}

#[test]
fn a_build_dependency_is_migrated_in_build_dependencies() {
    let manifest = package(
        "build-dep",
        &format!(
            "[build-dependencies]\nengine-compat = {{ path = {:?} }}\n",
            compat()
        ),
    );
    let build = "//! Build script on the legacy names.\nfn main() {\n    \
                 let _ = std::any::type_name::<engine_compat::ExecutionEngine>();\n}\n";
    let root = fixture(
        "build-dep",
        &[
            ("Cargo.toml", manifest.as_bytes()),
            ("build.rs", build.as_bytes()),
            ("src/lib.rs", b"//! lib\n"),
        ],
    );
    fix_and_build(&root);
    let doc = toml(&root.join("Cargo.toml"));
    let deps = doc["build-dependencies"].as_table_like().unwrap();
    assert!(deps.get("engine-core").is_some() && deps.get("engine-compat").is_none());
    assert!(doc.get("dependencies").is_none(), "{doc}");
    let b = std::fs::read_to_string(root.join("build.rs")).unwrap();
    assert!(b.contains("engine_core::UserExecutionEngine"), "{b}");
}

#[cfg(unix)]
#[test]
fn a_target_specific_dependency_is_migrated_in_its_target_table() {
    let manifest = package(
        "target-dep",
        &format!(
            "[target.'cfg(unix)'.dependencies]\nengine-compat = {{ path = {:?} }}\n",
            compat()
        ),
    );
    let lib = "//! lib\n/// Capacity.\n#[cfg(unix)]\npub fn capacity(e: &engine_compat::ExecutionEngine) -> usize {\n    \
               e.config().max_accepted_runs()\n}\n";
    let root = fixture(
        "target-dep",
        &[
            ("Cargo.toml", manifest.as_bytes()),
            ("src/lib.rs", lib.as_bytes()),
        ],
    );
    fix_and_build(&root);
    let text = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    assert!(
        text.contains("[target.'cfg(unix)'.dependencies]\nengine-core = { path = "),
        "{text}"
    );
    assert!(!text.contains("engine-compat"), "{text}");
}

#[test]
fn a_renamed_dependency_is_migrated_under_the_canonical_names() {
    let manifest = package(
        "renamed",
        &format!(
            "[dependencies]\nlegacy = {{ package = \"engine-compat\", path = {:?} }}\n",
            compat()
        ),
    );
    let lib = "//! lib\nuse legacy::{ExecutionEngine, UnifiedExecutionEngineFactory};\n\n\
               /// Capacity.\npub fn capacity(e: &ExecutionEngine, _f: &UnifiedExecutionEngineFactory) -> usize {\n    \
               e.config().max_accepted_runs()\n}\n";
    let root = fixture(
        "renamed",
        &[
            ("Cargo.toml", manifest.as_bytes()),
            ("src/lib.rs", lib.as_bytes()),
        ],
    );
    fix_and_build(&root);
    let doc = toml(&root.join("Cargo.toml"));
    let deps = doc["dependencies"].as_table_like().unwrap();
    assert!(deps.get("legacy").is_none(), "{doc}");
    for c in ["engine-core", "engine-factory"] {
        let t = deps.get(c).and_then(|i| i.as_table_like()).unwrap();
        assert!(
            t.get("package").is_none() && t.get("path").is_some(),
            "{doc}"
        );
    }
}

#[test]
fn a_workspace_inherited_optional_dependency_keeps_its_keys_and_feature() {
    let root_manifest = format!(
        "[workspace]\nmembers = [\"app\"]\nresolver = \"2\"\n\n[workspace.dependencies]\n\
         engine-compat = {{ path = {:?}, default-features = false }}\n",
        compat()
    );
    let app = "[package]\nname = \"app\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
               [dependencies]\nengine-compat = { workspace = true, optional = true }\n\n\
               [features]\ndefault = [\"legacy\"]\nlegacy = [\"dep:engine-compat\"]\n";
    let lib = "//! app\n/// Capacity.\n#[cfg(feature = \"legacy\")]\npub fn capacity(e: &engine_compat::ExecutionEngine) -> usize {\n    \
               e.config().max_accepted_runs()\n}\n";
    let root = fixture(
        "inherited",
        &[
            ("Cargo.toml", root_manifest.as_bytes()),
            ("app/Cargo.toml", app.as_bytes()),
            ("app/src/lib.rs", lib.as_bytes()),
        ],
    );
    fix_and_build(&root);
    let app = toml(&root.join("app/Cargo.toml"));
    let core = app["dependencies"]["engine-core"].as_table_like().unwrap();
    assert_eq!(core.get("workspace").and_then(|v| v.as_bool()), Some(true));
    assert_eq!(core.get("optional").and_then(|v| v.as_bool()), Some(true));
    assert!(app["dependencies"].get("engine-compat").is_none(), "{app}");
    let legacy: Vec<&str> = app["features"]["legacy"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(legacy, ["dep:engine-core"]);
    let ws = toml(&root.join("Cargo.toml"));
    let core = ws["workspace"]["dependencies"]["engine-core"]
        .as_table_like()
        .unwrap();
    assert_eq!(
        core.get("default-features").and_then(|v| v.as_bool()),
        Some(false)
    );
}

/// A private registry cannot resolve offline: the manifest edit is checked on its own.
#[test]
fn a_private_registry_dependency_keeps_registry_features_and_default_features() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("safety-registry");
    let _ = std::fs::remove_dir_all(&dir);
    let manifest = dir.join("app/Cargo.toml");
    write(
        &manifest,
        "[package]\nname = \"app\"\nversion = \"0.1.0\"\n\n[dependencies]\n\
         # from the company registry\n\
         engine-compat = { version = \"0.1\", registry = \"corp\", features = [\"tracing\"], default-features = false, optional = true } # pinned\n\
         serde = \"1\"\n\n[features]\nlegacy = [\"dep:engine-compat\", \"serde/std\"]\n",
    );
    let workspace = dir.join("Cargo.toml");
    write(
        &workspace,
        "[workspace]\nmembers = [\"app\"]\n\n[workspace.dependencies]\n\
         engine-compat = { version = \"0.1\", registry = \"corp\", default-features = false }\n",
    );
    let needs = xtask::manifest::Needs {
        canonical: ["engine-core", "engine-factory"].into_iter().collect(),
        compat: false,
    };
    let mut set = xtask::manifest::ManifestSet::new();
    set.edit_package(&manifest, &workspace, &needs).unwrap();
    let edits = set.edits();
    assert_eq!(edits.len(), 1);
    let after = &edits[0].after;
    assert!(
        after.contains(
            "# from the company registry\nengine-core = { version = \"0.1\", registry = \"corp\""
        ),
        "{after}"
    );
    let doc: toml_edit::DocumentMut = after.parse().unwrap();
    let deps = doc["dependencies"].as_table_like().unwrap();
    assert!(deps.get("engine-compat").is_none(), "{after}");
    assert!(deps.get("serde").is_some(), "{after}");
    for c in ["engine-core", "engine-factory"] {
        let t = deps.get(c).and_then(|i| i.as_table_like()).unwrap();
        assert_eq!(
            t.get("version").and_then(|v| v.as_str()),
            Some("0.1"),
            "{c}"
        );
        assert_eq!(
            t.get("registry").and_then(|v| v.as_str()),
            Some("corp"),
            "{c}"
        );
        assert_eq!(
            t.get("default-features").and_then(|v| v.as_bool()),
            Some(false),
            "{c}"
        );
        assert_eq!(
            t.get("optional").and_then(|v| v.as_bool()),
            Some(true),
            "{c}"
        );
        let features: Vec<&str> = t
            .get("features")
            .and_then(|f| f.as_array())
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert_eq!(features, ["tracing"], "{c}");
    }
    let legacy: Vec<&str> = doc["features"]["legacy"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(
        legacy,
        ["dep:engine-core", "dep:engine-factory", "serde/std"]
    );

    // An inherited entry: the workspace table gets the canonical crates with its keys.
    write(
        &manifest,
        "[package]\nname = \"app\"\nversion = \"0.1.0\"\n\n[dependencies]\n\
         engine-compat = { workspace = true, features = [\"tracing\"] }\n",
    );
    let mut set = xtask::manifest::ManifestSet::new();
    set.edit_package(&manifest, &workspace, &needs).unwrap();
    let edits = set.edits();
    assert_eq!(edits.len(), 2);
    let ws_after = edits.iter().find(|e| e.path == workspace).unwrap();
    let doc: toml_edit::DocumentMut = ws_after.after.parse().unwrap();
    let core = doc["workspace"]["dependencies"]["engine-core"]
        .as_table_like()
        .unwrap();
    assert_eq!(core.get("registry").and_then(|v| v.as_str()), Some("corp"));
    assert_eq!(
        core.get("default-features").and_then(|v| v.as_bool()),
        Some(false)
    );
    let app_after = edits.iter().find(|e| e.path == manifest).unwrap();
    assert!(
        app_after
            .after
            .contains("engine-core = { workspace = true, features = [\"tracing\"] }"),
        "{}",
        app_after.after
    );

    // A feature of engine-compat named in [features]: reported, and engine-compat stays.
    write(
        &manifest,
        "[package]\nname = \"app\"\nversion = \"0.1.0\"\n\n[dependencies]\n\
         engine-compat = { version = \"0.1\", optional = true }\n\n[features]\nx = [\"engine-compat/extra\"]\n",
    );
    let mut set = xtask::manifest::ManifestSet::new();
    set.edit_package(&manifest, &workspace, &needs).unwrap();
    assert!(
        set.notes.iter().any(|n| n.contains("engine-compat/extra")),
        "{:?}",
        set.notes
    );
    let after = &set.edits()[0].after;
    assert!(
        after.contains("engine-compat = { version = \"0.1\", optional = true }"),
        "{after}"
    );
    // Its implicit feature becomes explicit, and turns the new crates on too.
    assert!(
        after.contains(
            "engine-compat = [\"dep:engine-compat\", \"dep:engine-core\", \"dep:engine-factory\"]"
        ),
        "{after}"
    );
}

#[cfg(unix)]
#[test]
fn a_symlinked_module_is_scanned_and_fixed_through_the_link_and_external_links_are_reported() {
    let outside = Path::new(env!("CARGO_TARGET_TMPDIR")).join("safety-outside");
    let _ = std::fs::remove_dir_all(&outside);
    write(
        &outside.join("external.rs"),
        "//! outside\nuse engine_compat::ExecutionEngine;\n",
    );
    let root_manifest = "[workspace]\nmembers = [\"app\"]\nresolver = \"2\"\n";
    let app = format!(
        "[package]\nname = \"app\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\n\
         engine-compat = {{ path = {:?} }}\n",
        compat()
    );
    let root = fixture(
        "symlink",
        &[
            ("Cargo.toml", root_manifest.as_bytes()),
            ("app/Cargo.toml", app.as_bytes()),
            ("app/src/lib.rs", b"//! app\npub mod linked;\n"),
            ("shared/linked.rs", LEGACY.as_bytes()),
        ],
    );
    let src = root.join("app/src");
    std::os::unix::fs::symlink("../../shared/linked.rs", src.join("linked.rs")).unwrap();
    std::os::unix::fs::symlink(outside.join("external.rs"), src.join("external.rs")).unwrap();
    // A link back to an ancestor: followed once, never in a loop.
    std::os::unix::fs::symlink("..", src.join("again")).unwrap();
    git(&root, &["add", "-A"]);
    git(&root, &["commit", "-q", "-m", "links"]);

    let (code, out) = ssot(&root, &["migrate", "--check"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("--> app/src/linked.rs:2:"),
        "the linked module is scanned:\n{out}"
    );
    assert!(out.contains("error[SSOT000]"), "{out}");
    assert!(out.contains("app/src/external.rs"), "{out}");
    assert!(out.contains("outside the workspace root"), "{out}");
    let (_, followed) = ssot(&root, &["migrate", "--check", "--follow-external-symlinks"]);
    assert!(
        followed.contains("--> app/src/external.rs:2:"),
        "{followed}"
    );
    assert!(!followed.contains("SSOT000]"), "{followed}");

    let out = fix_and_build(&root);
    assert!(
        out.contains("warning: app/src/external.rs:1:1: not checked or fixed"),
        "{out}"
    );
    assert!(
        std::fs::symlink_metadata(src.join("linked.rs"))
            .unwrap()
            .file_type()
            .is_symlink(),
        "the link stays a link"
    );
    let shared = std::fs::read_to_string(root.join("shared/linked.rs")).unwrap();
    assert!(
        shared.contains("use engine_core::{EngineConfig, UserExecutionEngine};"),
        "{shared}"
    );
    assert_eq!(
        std::fs::read_to_string(outside.join("external.rs")).unwrap(),
        "//! outside\nuse engine_compat::ExecutionEngine;\n",
        "nothing outside the workspace is written"
    );
}

#[test]
fn a_file_that_is_not_utf8_is_reported_and_the_rest_is_scanned_and_fixed() {
    let manifest = package(
        "not-utf8",
        &format!(
            "[dependencies]\nengine-compat = {{ path = {:?} }}\n",
            compat()
        ),
    );
    let notes: &[u8] = b"//! notes\n// caf\xe9\n";
    let root = fixture(
        "not-utf8",
        &[
            ("Cargo.toml", manifest.as_bytes()),
            ("src/lib.rs", LEGACY.as_bytes()),
            ("src/notes.rs", notes),
        ],
    );
    let (code, out) = ssot(&root, &["migrate", "--check"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("error[SSOT000]: not UTF-8"), "{out}");
    assert!(out.contains("--> src/notes.rs:2:7"), "{out}");
    assert!(
        out.contains("--> src/lib.rs:2:"),
        "the scan went on:\n{out}"
    );
    fix_and_build(&root);
    assert_eq!(std::fs::read(root.join("src/notes.rs")).unwrap(), notes);
}

#[test]
fn a_file_that_does_not_parse_is_reported_and_the_rest_is_scanned_and_fixed() {
    let manifest = package(
        "no-parse",
        &format!(
            "[dependencies]\nengine-compat = {{ path = {:?} }}\n",
            compat()
        ),
    );
    let broken: &[u8] = b"//! a fixture, not a module\nfn oops( {\n";
    let root = fixture(
        "no-parse",
        &[
            ("Cargo.toml", manifest.as_bytes()),
            ("src/lib.rs", LEGACY.as_bytes()),
            ("src/fixtures/broken.rs", broken),
        ],
    );
    let (code, out) = ssot(&root, &["migrate", "--check"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("error[SSOT000]: cannot parse Rust source"),
        "{out}"
    );
    assert!(out.contains("--> src/fixtures/broken.rs:2:"), "{out}");
    assert!(
        out.contains("--> src/lib.rs:2:"),
        "the scan went on:\n{out}"
    );
    fix_and_build(&root);
    assert_eq!(
        std::fs::read(root.join("src/fixtures/broken.rs")).unwrap(),
        broken
    );
}

fn legacy_fixture(name: &str) -> PathBuf {
    let manifest = package(
        name,
        &format!(
            "[dependencies]\nengine-compat = {{ path = {:?} }}\n",
            compat()
        ),
    );
    fixture(
        name,
        &[
            ("Cargo.toml", manifest.as_bytes()),
            ("src/lib.rs", LEGACY.as_bytes()),
        ],
    )
}

#[test]
fn a_dirty_tree_is_refused_naming_the_files_unless_allowed() {
    let root = legacy_fixture("dirty");
    let lib = root.join("src/lib.rs");
    write(&lib, format!("{LEGACY}// an edit not committed\n"));
    let before = snapshot(&root);
    let (code, out) = ssot(&root, &["migrate", "--fix", "--no-verify"]);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("src/lib.rs (dirty)") && out.contains("--allow-dirty"),
        "{out}"
    );
    assert_same(&before, &snapshot(&root), "nothing written");

    // Staged only: --allow-staged is enough.
    git(&root, &["add", "src/lib.rs"]);
    let (code, out) = ssot(&root, &["migrate", "--fix", "--no-verify"]);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("src/lib.rs (staged)") && out.contains("--allow-staged"),
        "{out}"
    );
    assert_same(&before, &snapshot(&root), "nothing written");
    let (code, out) = ssot(
        &root,
        &["migrate", "--fix", "--no-verify", "--allow-staged"],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(std::fs::read_to_string(&lib)
        .unwrap()
        .contains("engine_core"));

    // Untracked files are changes too; --allow-dirty accepts any.
    let root = legacy_fixture("dirty-untracked");
    write(&root.join("notes.txt"), "new");
    let (code, out) = ssot(&root, &["migrate", "--fix", "--no-verify"]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("notes.txt (dirty)"), "{out}");
    let (code, out) = ssot(&root, &["migrate", "--fix", "--no-verify", "--allow-dirty"]);
    assert_eq!(code, Some(0), "{out}");
}

#[test]
fn outside_a_repository_fix_needs_allow_no_vcs() {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("safety-no-vcs");
    let _ = std::fs::remove_dir_all(&root);
    write(
        &root.join("Cargo.toml"),
        package(
            "no-vcs",
            &format!(
                "[dependencies]\nengine-compat = {{ path = {:?} }}\n",
                compat()
            ),
        ),
    );
    write(&root.join("src/lib.rs"), LEGACY);
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_cargo-ssot"))
            .args(["ssot", "migrate", "--fix", "--no-verify"])
            .args(extra)
            .current_dir(&root)
            // The scratch directory sits inside this repository's ignored target/: hide it.
            .env("GIT_CEILING_DIRECTORIES", root.parent().unwrap())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("no git repository") && err.contains("--allow-no-vcs"),
        "{err}"
    );
    let (code, err) = run(&["--allow-no-vcs"]);
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn a_failed_verification_restores_every_byte_and_broken_code_keeps_the_edits() {
    let manifest = package(
        "unbuildable",
        &format!(
            "[dependencies]\nengine-compat = {{ path = {:?} }}\n",
            compat()
        ),
    );
    let lib = format!("{LEGACY}\n/// Broken for a reason of its own.\npub fn broken() -> u32 {{\n    \"not a number\"\n}}\n");
    let root = fixture(
        "unbuildable",
        &[
            ("Cargo.toml", manifest.as_bytes()),
            ("src/lib.rs", lib.as_bytes()),
        ],
    );
    let before = snapshot(&root);
    let (code, out) = ssot(&root, &["migrate", "--fix"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("rewrote 1 file(s)") && out.contains("and 1 manifest(s)"),
        "{out}"
    );
    assert!(out.contains("restored"), "{out}");
    assert!(
        out.contains("mismatched types"),
        "the compiler's errors are shown:\n{out}"
    );
    assert_eq!(
        snapshot(&root),
        before,
        "every byte restored, Cargo.lock included"
    );

    let (code, out) = ssot(&root, &["migrate", "--fix", "--broken-code"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("--broken-code"), "{out}");
    let lib = std::fs::read_to_string(root.join("src/lib.rs")).unwrap();
    assert!(lib.contains("engine_core::"), "the edits are kept: {lib}");
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    assert!(manifest.contains("engine-core = "), "{manifest}");
}

#[test]
fn a_file_changed_between_scan_and_write_is_refused_and_nothing_is_written() {
    let root = legacy_fixture("changed");
    let lib = root.join("src/lib.rs");
    let ws = xtask::scan::Workspace::load(&root.join("Cargo.toml")).unwrap();
    let scan = ws.scan().unwrap();
    let rewrites = xtask::fix::rewrites(&ws, &scan).unwrap();
    assert_eq!(rewrites.len(), 1);
    // A second file that did not change: all or nothing, it is not written either.
    let other = root.join("Cargo.toml");
    let other_text = std::fs::read_to_string(&other).unwrap();
    fn changes<'a>(
        other: &'a Path,
        other_text: &'a str,
        r: &'a xtask::fix::Rewrite,
    ) -> Vec<xtask::transaction::Change<'a>> {
        vec![
            xtask::transaction::Change {
                path: other,
                before: other_text.as_bytes(),
                after: b"# replaced\n",
            },
            xtask::transaction::Change {
                path: &r.file,
                before: r.before.as_bytes(),
                after: r.after.as_bytes(),
            },
        ]
    }
    let edited = format!("// an edit made after the scan\n{LEGACY}");
    write(&lib, &edited);
    let err =
        xtask::transaction::write_all(&changes(&other, &other_text, &rewrites[0])).unwrap_err();
    assert!(
        matches!(err, xtask::XtaskError::ChangedSinceScan { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("src/lib.rs"), "{err}");
    assert_eq!(std::fs::read_to_string(&lib).unwrap(), edited);
    assert_eq!(std::fs::read_to_string(&other).unwrap(), other_text);

    // Unchanged, the same writes go through (so the refusal above is the check's doing).
    write(&lib, LEGACY);
    let written =
        xtask::transaction::write_all(&changes(&other, &other_text, &rewrites[0])).unwrap();
    assert_eq!(written.len(), 2);
    assert_eq!(std::fs::read_to_string(&lib).unwrap(), rewrites[0].after);
    written.restore().unwrap();
    assert_eq!(std::fs::read_to_string(&lib).unwrap(), LEGACY);
    assert_eq!(std::fs::read_to_string(&other).unwrap(), other_text);
}

#[test]
fn help_lists_the_safety_flags() {
    let out = Command::new(env!("CARGO_BIN_EXE_cargo-ssot"))
        .args(["ssot", "migrate", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--allow-dirty",
        "--allow-staged",
        "--allow-no-vcs",
        "--broken-code",
        "--follow-external-symlinks",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}

proptest! {
    #[test]
    fn apply_edits_never_panics(
        source in "(?s).{0,40}",
        edits in proptest::collection::vec((0usize..50, 0usize..50, ".{0,4}"), 0..6),
    ) {
        let edits: Vec<xtask::model::Edit> = edits
            .into_iter()
            .map(|(start, end, text)| xtask::model::Edit { start, end, text })
            .collect();
        let result = xtask::fix::apply_edits(&source, &edits);
        let fits = edits.iter().all(|e| {
            e.start <= e.end && source.is_char_boundary(e.start) && source.is_char_boundary(e.end)
        });
        if !fits {
            prop_assert!(result.is_err());
        }
        if let Ok(out) = result {
            // Every byte outside the edits is kept: removing the edits' texts leaves the rest.
            let mut distinct: Vec<&xtask::model::Edit> = Vec::new();
            for e in &edits {
                if !distinct.contains(&e) {
                    distinct.push(e);
                }
            }
            let kept = source.len() - distinct.iter().map(|e| e.end - e.start).sum::<usize>();
            let added: usize = distinct.iter().map(|e| e.text.len()).sum();
            prop_assert_eq!(out.len(), kept + added);
        }
    }
}
