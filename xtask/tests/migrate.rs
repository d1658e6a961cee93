//! `cargo xtask migrate` on the fixture workspaces: findings, exit codes, JSON, baselines,
//! status, and `--fix` (expected output, idempotence, and the rewritten crate compiling with
//! `RUSTFLAGS=-D deprecated`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn xtask(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .output()
        .expect("xtask runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `migrate --check` on a workspace, run from its root (paths are shown relative to it).
fn check(manifest: &Path, extra: &[&str]) -> Output {
    let m = manifest.to_str().unwrap();
    let mut args = vec!["migrate", "--check", "--manifest-path", m];
    args.extend_from_slice(extra);
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(&args)
        .current_dir(manifest.parent().unwrap())
        .output()
        .expect("xtask runs")
}

/// Copies a fixture workspace to a fresh temporary directory, turning relative path
/// dependencies into absolute ones so the copy still builds.
fn copy_fixture(name: &str, tag: &str) -> PathBuf {
    let dst = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("fixture-{name}-{tag}"));
    let _ = std::fs::remove_dir_all(&dst);
    let src = fixture(name);
    for entry in walkdir::WalkDir::new(&src) {
        let entry = entry.unwrap();
        let rel = entry.path().strip_prefix(&src).unwrap();
        let out = dst.join(rel);
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&out).unwrap();
        } else if entry.file_name() == "Cargo.toml" {
            let dir = entry.path().parent().unwrap();
            let text = std::fs::read_to_string(entry.path()).unwrap();
            let fixed: Vec<String> = text
                .lines()
                .map(|l| match l.split_once("path = \"") {
                    Some((head, tail)) => {
                        let (p, rest) = tail.split_once('"').unwrap();
                        let abs = dir.join(p).canonicalize().unwrap();
                        format!("{head}path = {:?}{rest}", abs.display().to_string())
                    }
                    None => l.to_owned(),
                })
                .collect();
            std::fs::write(&out, fixed.join("\n") + "\n").unwrap();
        } else {
            std::fs::copy(entry.path(), &out).unwrap();
        }
    }
    dst
}

/// The findings of a human report, each as one `path:line:col  CODE name  message  help: ...`
/// line (the pinned `expected.txt` format), read back from the rustc-style diagnostics.
fn findings_of(out: &Output) -> Vec<String> {
    let text = stdout(out);
    let mut found = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(rest) = line.strip_prefix("error[") else {
            continue;
        };
        let (code, title) = rest.split_once("]: ").unwrap();
        let (message, name) = title.rsplit_once(" (").unwrap();
        let name = name.trim_end_matches(')');
        let mut location = "";
        let mut help = "";
        for next in lines.by_ref() {
            if let Some(at) = next.trim_start().strip_prefix("--> ") {
                location = at;
            } else if let Some(h) = next.trim_start().strip_prefix("= help: ") {
                help = h;
                break;
            }
        }
        found.push(format!(
            "{location}  {code} {name}  {message}  help: {help}"
        ));
    }
    found
}

fn expected(name: &str) -> Vec<String> {
    std::fs::read_to_string(fixture(name).join("expected.txt"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn each_fixture_reports_exactly_its_expected_findings_and_exit_code() {
    for (name, code) in [
        ("legacy", 1),
        ("own_engine", 1),
        ("global_map", 1),
        ("reexports", 1),
        ("clean", 0),
    ] {
        let out = check(&fixture(name).join("Cargo.toml"), &[]);
        assert_eq!(findings_of(&out), expected(name), "fixture {name}");
        assert_eq!(
            out.status.code(),
            Some(code),
            "fixture {name}: {}",
            stdout(&out)
        );
        assert!(stdout(&out).contains("summary: "), "summary printed");
    }
}

#[test]
fn legacy_fixture_names_all_22_legacy_names_and_every_rule_fires_somewhere() {
    let legacy = expected("legacy").join("\n");
    for name in xtask::legacy::aliases().keys() {
        assert!(
            legacy.contains(&format!("`{name}`")) || legacy.contains(&format!("::{name}`")),
            "{name} not exercised by the fixture"
        );
    }
    let all = ["legacy", "own_engine", "global_map"]
        .map(|n| expected(n).join("\n"))
        .join("\n");
    for code in ["SSOT001", "SSOT002", "SSOT003", "SSOT004", "SSOT005"] {
        assert!(all.contains(code), "{code} never fires");
    }
}

#[test]
fn json_report_has_the_documented_fields() {
    let out = check(
        &fixture("own_engine").join("Cargo.toml"),
        &["--format", "json"],
    );
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["exit_code"], 1);
    let s = &v["summary"];
    assert_eq!(s["files_scanned"], 2);
    assert_eq!(s["findings_total"], 9);
    assert_eq!(s["files_with_findings"], 1);
    assert_eq!(s["compliance_percent"], 50.0);
    assert_eq!(s["findings_per_rule"]["SSOT002"], 5);
    assert_eq!(s["findings_per_rule"]["SSOT003"], 4);
    assert_eq!(s["findings_per_rule"]["SSOT001"], 0);
    let f = &v["findings"][0];
    for field in [
        "rule",
        "path",
        "line",
        "end_line",
        "end_column",
        "severity",
        "column",
        "subject",
        "message",
        "help",
        "fingerprint",
    ] {
        assert!(!f[field].is_null(), "finding field {field}");
    }
    assert_eq!(f["rule"], "SSOT003");
    assert_eq!(f["path"], "src/lib.rs");
}

#[test]
fn baseline_fails_only_on_new_findings_and_survives_unrelated_edits() {
    let ws = copy_fixture("legacy", "baseline");
    let manifest = ws.join("Cargo.toml");
    let baseline = ws.join("ssot-baseline.json");
    let m = manifest.to_str().unwrap();
    let out = xtask(&[
        "migrate",
        "--write-baseline",
        baseline.to_str().unwrap(),
        "--manifest-path",
        m,
    ]);
    assert_eq!(out.status.code(), Some(0));
    let b = ["--baseline", baseline.to_str().unwrap()];
    assert_eq!(check(&manifest, &b).status.code(), Some(0), "nothing new");

    // Unrelated edits: lines inserted above every finding, code moved down.
    let lib = ws.join("app/src/lib.rs");
    let text = std::fs::read_to_string(&lib).unwrap();
    let shifted = text.replacen(
        "#![allow(dead_code)]\n",
        "#![allow(dead_code)]\n\n// moved\n\n",
        1,
    );
    std::fs::write(&lib, &shifted).unwrap();
    let out = check(&manifest, &b);
    assert_eq!(
        out.status.code(),
        Some(0),
        "line shifts are not new findings:\n{}",
        stdout(&out)
    );

    // A new violation fails, and only it is listed.
    std::fs::write(
        &lib,
        format!("{shifted}\npub fn extra(_: &engine_compat::MCPEnhancedExecutionEngine) {{}}\n"),
    )
    .unwrap();
    let out = check(&manifest, &b);
    assert_eq!(out.status.code(), Some(1));
    let listed = findings_of(&out);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(listed[0].contains("MCPEnhancedExecutionEngine"));

    // Fixing one recorded finding is reported as fixed.
    let fixed = shifted
        .replace(
            "pub const LABEL: &str = \"ExecutionEngine\";",
            "pub const LABEL: &str = \"x\";",
        )
        .replace(
            "        std::any::type_name::<engine_compat::UserExecutionEngineFactory>(),\n",
            "",
        );
    std::fs::write(&lib, fixed).unwrap();
    let out = check(&manifest, &b);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stdout(&out).contains(
            "fixed since baseline: SSOT001 app/src/lib.rs UserExecutionEngineFactory (x1)"
        ),
        "{}",
        stdout(&out)
    );

    let bad = ws.join("missing.json");
    let out = check(&manifest, &["--baseline", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.json"));
}

#[test]
fn status_names_the_phase_and_its_blockers() {
    let status = |dir: &Path| {
        stdout(&xtask(&[
            "migrate",
            "--status",
            "--manifest-path",
            dir.join("Cargo.toml").to_str().unwrap(),
        ]))
    };
    let s = status(&fixture("own_engine"));
    assert!(s.starts_with("phase 1"), "{s}");
    assert!(s.contains("SSOT002") && s.contains("SSOT003"), "{s}");
    let s = status(&fixture("legacy"));
    assert!(s.starts_with("phase 2"), "{s}");
    assert!(s.contains("cargo ssot migrate --fix"), "{s}");
    let s = status(&fixture("clean"));
    assert!(s.starts_with("phase 3, complete"), "{s}");
}

#[test]
fn fix_rewrites_to_the_expected_source_is_idempotent_and_compiles_with_deny_deprecated() {
    let ws = copy_fixture("legacy", "fix");
    let m = ws.join("Cargo.toml");
    let m = m.to_str().unwrap();
    let lib = ws.join("app/src/lib.rs");
    let before = std::fs::read_to_string(&lib).unwrap();

    let dry = xtask(&["migrate", "--fix", "--dry-run", "--manifest-path", m]);
    assert_eq!(dry.status.code(), Some(0));
    let diff = stdout(&dry);
    assert!(
        diff.starts_with("--- a/app/src/lib.rs\n+++ b/app/src/lib.rs\n"),
        "{diff}"
    );
    assert!(
        diff.contains("\n-use engine_compat::ExecutionEngine;\n"),
        "{diff}"
    );
    assert!(
        diff.contains("\n+use engine_core::UserExecutionEngine;\n"),
        "{diff}"
    );
    assert_eq!(
        std::fs::read_to_string(&lib).unwrap(),
        before,
        "--dry-run writes nothing"
    );

    assert_eq!(
        xtask(&["migrate", "--fix", "--manifest-path", m])
            .status
            .code(),
        Some(0)
    );
    let after = std::fs::read_to_string(&lib).unwrap();
    let expected = std::fs::read_to_string(fixture("legacy").join("expected_fixed.rs")).unwrap();
    assert_eq!(after, expected);
    // Unrelated bytes are untouched: the string and the comments naming ExecutionEngine stay.
    assert!(after.contains("pub const LABEL: &str = \"ExecutionEngine\";"));
    assert!(after.contains("Strings and comments mentioning ExecutionEngine stay."));
    assert!(after.contains("// a comment inside the group"));

    // Idempotent: a second run changes nothing, and no SSOT001 is left.
    assert_eq!(
        xtask(&["migrate", "--fix", "--manifest-path", m])
            .status
            .code(),
        Some(0)
    );
    assert_eq!(std::fs::read_to_string(&lib).unwrap(), after);
    let out = check(&ws.join("Cargo.toml"), &[]);
    let left = findings_of(&out);
    assert!(
        left.is_empty(),
        "the fix also dropped the compat dependency: {left:?}"
    );
    let manifest = std::fs::read_to_string(ws.join("app/Cargo.toml")).unwrap();
    assert!(!manifest.contains("engine-compat"), "{manifest}");

    // The rewritten crate compiles with deprecation denied (pinned to this workspace's lockfile).
    std::fs::copy(root().join("Cargo.lock"), ws.join("Cargo.lock")).unwrap();
    let build = Command::new(env!("CARGO"))
        .args(["check", "--quiet", "--lib"])
        .current_dir(&ws)
        .env("RUSTFLAGS", "-D deprecated")
        .env(
            "CARGO_TARGET_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("downstream-target"),
        )
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "{}",
        String::from_utf8_lossy(&build.stderr)
    );
}

#[test]
fn a_file_that_does_not_parse_is_an_ssot000_finding_naming_the_file() {
    let ws = copy_fixture("clean", "broken");
    std::fs::write(ws.join("src/broken.rs"), "//! broken\nfn oops( {\n").unwrap();
    let out = check(&ws.join("Cargo.toml"), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let found = findings_of(&out);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("src/broken.rs:2:") && found[0].contains("SSOT000 unscanned-file"),
        "{found:?}"
    );
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(xtask(&["migrate"]).status.code(), Some(2));
    assert_eq!(
        xtask(&["migrate", "--dry-run", "--check"]).status.code(),
        Some(2)
    );
    let out = xtask(&[
        "migrate",
        "--check",
        "--manifest-path",
        "/nonexistent/Cargo.toml",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/Cargo.toml"));
}

#[test]
fn this_workspace_is_clean_and_tidy() {
    let problems = xtask::tidy::tidy(&root()).unwrap();
    assert!(
        problems.is_empty(),
        "tidy problems:\n{}",
        problems.join("\n")
    );
    let out = check(&root().join("Cargo.toml"), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
}

#[test]
fn use_chains_through_the_packages_own_modules_are_followed_and_fixed() {
    let ws = copy_fixture("reexports", "fix");
    let m = ws.join("Cargo.toml");
    let m = m.to_str().unwrap();
    // --fix verifies its result with `cargo check` under -D deprecated (exit 0 means it built).
    let fixed = xtask(&["migrate", "--fix", "--manifest-path", m]);
    assert_eq!(fixed.status.code(), Some(0), "{}", stdout(&fixed));
    let said = format!(
        "{}{}",
        stdout(&fixed),
        String::from_utf8_lossy(&fixed.stderr)
    );
    assert!(
        said.contains("verified: reexports build(s) under -D deprecated"),
        "{said}"
    );
    let service = std::fs::read_to_string(ws.join("src/service.rs")).unwrap();
    assert!(
        service.contains("use engine_core::ToolDispatcher as Dispatch;"),
        "{service}"
    );
    assert!(
        service.contains("_e: Option<&UserExecutionEngine>, _f: Option<&ExecutionEngineFactory>"),
        "names used through the glob are renamed: {service}"
    );
    assert!(
        service.contains("use crate::names::*;"),
        "the glob stays: {service}"
    );
    let lib = std::fs::read_to_string(ws.join("src/lib.rs")).unwrap();
    assert!(
        lib.contains("std::any::type_name::<ToolDispatcher>()"),
        "{lib}"
    );
    // Nothing left, and a second run changes nothing.
    assert!(findings_of(&check(&ws.join("Cargo.toml"), &[])).is_empty());
    let again = xtask(&["migrate", "--fix", "--manifest-path", m]);
    assert_eq!(again.status.code(), Some(0));
    assert_eq!(
        std::fs::read_to_string(ws.join("src/service.rs")).unwrap(),
        service
    );
    assert_eq!(std::fs::read_to_string(ws.join("src/lib.rs")).unwrap(), lib);
}
