//! The `migrate --check` report: human lines or one JSON object, and the summary.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::baseline::BaselineEntry;
use crate::model::{Finding, Rule};
use crate::scan::Scan;

/// The summary that ends every report. Field names are stable (see the xtask README section).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Rust files and manifests scanned.
    pub files_scanned: usize,
    /// Lines of Rust scanned.
    pub lines_scanned: usize,
    /// All findings (before the baseline is applied).
    pub findings_total: usize,
    /// Findings per rule code, every code present.
    pub findings_per_rule: BTreeMap<&'static str, usize>,
    /// Files with at least one finding.
    pub files_with_findings: usize,
    /// Files without findings / files scanned, in percent (100 when nothing was scanned).
    pub compliance_percent: f64,
}

impl Summary {
    /// Summarises a scan.
    pub fn of(scan: &Scan) -> Self {
        let mut per_rule: BTreeMap<&'static str, usize> =
            Rule::ALL.iter().map(|r| (r.code(), 0)).collect();
        for f in &scan.findings {
            *per_rule.entry(f.rule.code()).or_default() += 1;
        }
        let with: std::collections::BTreeSet<&str> =
            scan.findings.iter().map(|f| f.path.as_str()).collect();
        let files = scan.files.len();
        let compliance = if files == 0 {
            100.0
        } else {
            let clean = files.saturating_sub(with.len()) as f64;
            (clean * 1000.0 / files as f64).round() / 10.0
        };
        Self {
            files_scanned: files,
            lines_scanned: scan.lines,
            findings_total: scan.findings.len(),
            findings_per_rule: per_rule,
            files_with_findings: with.len(),
            compliance_percent: compliance,
        }
    }

    /// Human-readable summary lines.
    pub fn human(&self) -> String {
        let rules: Vec<String> = Rule::ALL
            .iter()
            .map(|r| {
                format!(
                    "{} {}: {}",
                    r.code(),
                    r.name(),
                    self.findings_per_rule[r.code()]
                )
            })
            .collect();
        format!(
            "summary: {} files scanned ({} lines), {} findings in {} files, compliance {:.1}%\n  {}",
            self.files_scanned,
            self.lines_scanned,
            self.findings_total,
            self.files_with_findings,
            self.compliance_percent,
            rules.join("\n  ")
        )
    }
}

/// The whole `--check` result, as emitted by `--format json`.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport<'a> {
    /// Format version (1).
    pub schema_version: u32,
    /// Absolute workspace root.
    pub workspace: String,
    /// Every finding.
    pub findings: Vec<&'a Finding>,
    /// With `--baseline`: findings not in the baseline (these fail the check).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_findings: Option<Vec<&'a Finding>>,
    /// With `--baseline`: baseline entries fixed since (with how many went away).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fixed: Option<Vec<BaselineEntry>>,
    /// The summary.
    pub summary: Summary,
    /// 0 clean (or nothing new), 1 findings.
    pub exit_code: i32,
}
