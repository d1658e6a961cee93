//! How findings are shown: as rustc shows diagnostics (`annotate-snippets`: the source line,
//! the span underlined, `help:`; paths relative to the current directory; colour only on a
//! terminal), as GitHub workflow annotations, and as SARIF 2.1.0 for code-scanning services.

use std::path::Path;

use annotate_snippets::{AnnotationKind, Element, Level, Renderer, Snippet};
use serde_json::{json, Value};

use crate::model::{Finding, Rule};

/// `path` (relative to the workspace `root`) as seen from `cwd`.
pub fn display_path(root: &Path, path: &str, cwd: &Path) -> String {
    let full = root.join(path);
    pathdiff::diff_paths(&full, cwd)
        .unwrap_or(full)
        .to_string_lossy()
        .replace('\\', "/")
}

/// The byte range of 1-based (line, column) .. (end line, end column) in `source`.
fn byte_range(source: &str, f: &Finding) -> std::ops::Range<usize> {
    let offset = |line: usize, column: usize| {
        let start: usize = source
            .split_inclusive('\n')
            .take(line.saturating_sub(1))
            .map(str::len)
            .sum();
        let text = source[start..].lines().next().unwrap_or("");
        start
            + text
                .char_indices()
                .nth(column.saturating_sub(1))
                .map_or(text.len(), |(i, _)| i)
    };
    let start = offset(f.line, f.column).min(source.len());
    let end = if f.end_line == 0 {
        start
    } else {
        offset(f.end_line, f.end_column).clamp(start, source.len())
    };
    start..end.max(start)
}

/// One finding as rustc would show it. `source` is the file's text (`None` when it cannot be
/// read: then only the message and help are shown).
pub fn human(f: &Finding, shown_path: &str, source: Option<&str>, color: bool) -> String {
    let title = format!("{} ({})", f.message, f.rule.name());
    let help = format!("help: {}", f.help);
    let mut elements: Vec<Element<'_>> = Vec::new();
    if let Some(source) = source {
        elements.push(
            Snippet::source(source)
                .path(shown_path)
                .fold(true)
                .annotation(AnnotationKind::Primary.span(byte_range(source, f)))
                .into(),
        );
    }
    elements.push(
        Level::HELP
            .message(help.trim_start_matches("help: "))
            .into(),
    );
    let report = &[Level::ERROR
        .primary_title(title.as_str())
        .id(f.rule.code())
        .elements(elements)];
    let renderer = if color {
        Renderer::styled()
    } else {
        Renderer::plain()
    };
    let mut out = renderer.render(report);
    if source.is_none() {
        out.push_str(&format!("\n  --> {shown_path}:{}:{}", f.line, f.column));
    }
    out
}

/// One finding as a GitHub Actions workflow command (an annotation on the pull request).
pub fn github(f: &Finding, shown_path: &str) -> String {
    // Workflow commands escape `%`, CR and LF in data, and also `:` and `,` in properties.
    let data = |s: &str| {
        s.replace('%', "%25")
            .replace('\r', "%0D")
            .replace('\n', "%0A")
    };
    let prop = |s: &str| data(s).replace(':', "%3A").replace(',', "%2C");
    format!(
        "::error file={},line={},col={},endLine={},endColumn={},title={}::{} (help: {})",
        prop(shown_path),
        f.line,
        f.column,
        f.end_line.max(f.line),
        f.end_column.max(f.column),
        prop(&format!("{} {}", f.rule.code(), f.rule.name())),
        data(&f.message),
        data(&f.help),
    )
}

/// What a rule checks, for SARIF's rule metadata.
fn rule_description(rule: Rule) -> &'static str {
    match rule {
        Rule::Unscanned => {
            "A Rust file that could not be checked: not UTF-8, not valid Rust, unreadable, or behind a symlink leaving the workspace."
        }
        Rule::DeprecatedName => "A use of a deprecated legacy engine name from engine-compat.",
        Rule::DuplicateEngine => {
            "An engine or engine-factory type defined outside engine-core / engine-factory."
        }
        Rule::FactoryBypass => "An engine built anywhere but engine-factory.",
        Rule::CompatDependency => "A package depending on engine-compat.",
        Rule::SharedState => "Process-global mutable state in engine-related code.",
    }
}

/// The findings as one SARIF 2.1.0 log: rule metadata for every rule, one result per finding,
/// and, for a deprecated name whose canonical path is known, a fix replacing the span.
pub fn sarif(findings: &[&Finding], version: &str) -> Value {
    let rules: Vec<Value> = Rule::ALL
        .iter()
        .map(|r| {
            json!({
                "id": r.code(),
                "name": r.name(),
                "shortDescription": { "text": rule_description(*r) },
                "defaultConfiguration": { "level": "error" },
            })
        })
        .collect();
    let results: Vec<Value> = findings
        .iter()
        .map(|f| {
            let region = json!({
                "startLine": f.line,
                "startColumn": f.column,
                "endLine": f.end_line.max(f.line),
                "endColumn": f.end_column.max(f.column),
            });
            let mut result = json!({
                "ruleId": f.rule.code(),
                "ruleIndex": Rule::ALL.iter().position(|r| *r == f.rule).unwrap_or(0),
                "level": "error",
                "message": { "text": format!("{} (help: {})", f.message, f.help) },
                "locations": [{
                    "physicalLocation": {
                        "artifactLocation": { "uri": f.path, "uriBaseId": "%SRCROOT%" },
                        "region": region,
                    }
                }],
                "partialFingerprints": { "ssotFingerprint/v1": f.fingerprint },
            });
            if let Some(canonical) = f
                .help
                .strip_prefix("use `")
                .and_then(|h| h.strip_suffix('`'))
                .filter(|_| f.rule == Rule::DeprecatedName)
            {
                result["fixes"] = json!([{
                    "description": { "text": format!("use `{canonical}`") },
                    "artifactChanges": [{
                        "artifactLocation": { "uri": f.path, "uriBaseId": "%SRCROOT%" },
                        "replacements": [{
                            "deletedRegion": region,
                            "insertedContent": { "text": canonical },
                        }],
                    }],
                }]);
            }
            result
        })
        .collect();
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {
                "driver": {
                    "name": "cargo-ssot",
                    "version": version,
                    "informationUri": "https://github.com/",
                    "rules": rules,
                }
            },
            "results": results,
        }]
    })
}
