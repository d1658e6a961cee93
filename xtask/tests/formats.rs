//! The report formats of `migrate`, on the legacy fixture: rustc-style diagnostics with paths
//! relative to the current directory, JSON with end positions and severity, a SARIF 2.1.0 log
//! that validates against the SARIF schema (checked in as `tests/sarif-2.1.0.schema.json`),
//! GitHub workflow annotations, and `--status --format json`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn legacy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/legacy")
}

/// Runs the installed binary from `dir` (so paths are shown relative to it).
fn ssot(dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cargo-ssot"))
        .arg("ssot")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("cargo-ssot runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn human_output_is_rustc_style_with_paths_from_the_current_directory() {
    let (code, out) = ssot(&legacy(), &["migrate", "--check"]);
    assert_eq!(code, Some(1));
    assert!(
        out.contains("error[SSOT001]: legacy name `ExecutionEngine` imported from engine_compat"),
        "{out}"
    );
    assert!(out.contains(" --> app/src/lib.rs:8:20\n"), "{out}");
    assert!(
        out.contains("8 | use engine_compat::ExecutionEngine;\n"),
        "{out}"
    );
    assert!(
        out.contains("  |                    ^^^^^^^^^^^^^^^\n"),
        "the span is underlined:\n{out}"
    );
    assert!(
        out.contains("= help: use `engine_core::UserExecutionEngine`"),
        "{out}"
    );
    assert!(
        !out.contains('\u{1b}'),
        "no colour when stdout is not a terminal"
    );
    // From the app directory, the same file is `src/lib.rs`; from above, a longer path.
    let (_, out) = ssot(
        &legacy().join("app"),
        &["migrate", "--check", "--manifest-path", "../Cargo.toml"],
    );
    assert!(out.contains(" --> src/lib.rs:8:20\n"), "{out}");
    let (_, out) = ssot(
        &legacy().join(".."),
        &["migrate", "--check", "--manifest-path", "legacy/Cargo.toml"],
    );
    assert!(out.contains(" --> legacy/app/src/lib.rs:8:20\n"), "{out}");
}

#[test]
fn json_has_end_positions_and_severity_and_status_has_json() {
    let (_, out) = ssot(&legacy(), &["migrate", "--check", "--format", "json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let first = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "app/src/lib.rs" && f["line"] == 8)
        .unwrap();
    assert_eq!(
        (
            first["column"].as_u64(),
            first["end_line"].as_u64(),
            first["end_column"].as_u64()
        ),
        (Some(20), Some(8), Some(35))
    );
    assert_eq!(first["severity"], "error");
    let (code, out) = ssot(&legacy(), &["migrate", "--status", "--format", "json"]);
    assert_eq!(code, Some(0));
    let s: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["phase"], 2);
    assert_eq!(s["complete"], false);
    assert!(
        s["blockers"][0].as_str().unwrap().contains("SSOT001"),
        "{s}"
    );
}

#[test]
fn sarif_validates_against_the_schema_with_rules_and_fixes() {
    let (code, out) = ssot(&legacy(), &["migrate", "--check", "--format", "sarif"]);
    assert_eq!(code, Some(1));
    let log: Value = serde_json::from_str(&out).unwrap();
    let schema: Value = serde_json::from_str(include_str!("sarif-2.1.0.schema.json")).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("the SARIF schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(&log)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect();
    assert!(errors.is_empty(), "SARIF schema violations: {errors:#?}");
    let run = &log["runs"][0];
    assert_eq!(run["tool"]["driver"]["rules"].as_array().unwrap().len(), 6);
    let results = run["results"].as_array().unwrap();
    assert_eq!(results.len(), 37, "one result per finding");
    let fixed = results
        .iter()
        .find(|r| r["ruleId"] == "SSOT001" && r["fixes"].is_array())
        .expect("a deprecated name carries its fix");
    let replacement = &fixed["fixes"][0]["artifactChanges"][0]["replacements"][0];
    assert!(replacement["insertedContent"]["text"]
        .as_str()
        .unwrap()
        .starts_with("engine_"));
    // The validator is not vacuous: a log without its version fails it.
    let mut broken = log.clone();
    broken.as_object_mut().unwrap().remove("version");
    assert!(!validator.is_valid(&broken));
}

#[test]
fn github_annotations_are_workflow_commands() {
    let (_, out) = ssot(&legacy(), &["migrate", "--check", "--format", "github"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 37);
    assert!(
        lines.iter().all(|l| l.starts_with("::error file=")),
        "{out}"
    );
    assert!(out.contains("::error file=app/src/lib.rs,line=8,col=20,endLine=8,endColumn=35,title=SSOT001 deprecated-name::legacy name `ExecutionEngine` imported from engine_compat (help: use `engine_core::UserExecutionEngine`)"), "{out}");
}
