//! `migrate --status`: which migration phase a workspace has reached, and what blocks the next.

use std::collections::BTreeMap;

use crate::model::{Finding, Rule};

/// The migration phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Legacy engines, duplicates, factory bypasses, shared state or files that could not be
    /// checked remain.
    One,
    /// Only uses of the deprecated aliases remain: run `cargo ssot migrate --fix`.
    Two,
    /// No compat use is left: the dependency can go (or is gone).
    Three,
}

/// The phase and the reasons it is not further.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The phase reached.
    pub phase: Phase,
    /// What blocks the next phase, one line each.
    pub blockers: Vec<String>,
    /// Whether the migration is complete (phase 3 and no compat dependency).
    pub complete: bool,
}

/// Derives the status from findings.
pub fn status(findings: &[Finding]) -> Status {
    let mut per_rule: BTreeMap<Rule, Vec<&Finding>> = BTreeMap::new();
    for f in findings {
        per_rule.entry(f.rule).or_default().push(f);
    }
    let describe = |rule: Rule, what: &str| -> Option<String> {
        per_rule.get(&rule).map(|fs| {
            let mut files: Vec<&str> = fs.iter().map(|f| f.path.as_str()).collect();
            files.dedup();
            let shown: Vec<&str> = files.iter().take(5).copied().collect();
            format!(
                "{} {}: {} {what} in {} file(s): {}{}",
                rule.code(),
                rule.name(),
                fs.len(),
                files.len(),
                shown.join(", "),
                if files.len() > 5 { ", ..." } else { "" }
            )
        })
    };
    let phase_one: Vec<String> = [
        (
            Rule::Unscanned,
            "files that could not be checked (make them readable UTF-8 Rust, or exclude them)",
        ),
        (Rule::DuplicateEngine, "engine definitions to delete"),
        (
            Rule::FactoryBypass,
            "constructions to route through the factory",
        ),
        (Rule::SharedState, "global shared states to remove"),
    ]
    .into_iter()
    .filter_map(|(r, w)| describe(r, w))
    .collect();
    if !phase_one.is_empty() {
        return Status {
            phase: Phase::One,
            blockers: phase_one,
            complete: false,
        };
    }
    if let Some(b) = describe(
        Rule::DeprecatedName,
        "uses of deprecated names (run `cargo ssot migrate --fix`)",
    ) {
        return Status {
            phase: Phase::Two,
            blockers: vec![b],
            complete: false,
        };
    }
    let deps: Vec<String> = describe(
        Rule::CompatDependency,
        "dependencies on engine-compat to remove, then set `deprecated = \"deny\"`",
    )
    .into_iter()
    .collect();
    Status {
        phase: Phase::Three,
        complete: deps.is_empty(),
        blockers: deps,
    }
}
