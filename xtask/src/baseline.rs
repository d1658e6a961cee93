//! Baselines: today's findings recorded so `--check --baseline` fails only on new ones.
//!
//! Entries are keyed by rule, path, subject and the finding's source line text (whitespace
//! collapsed) — never by line number — and counted, so moving code or editing other lines
//! does not turn an old finding into a new one.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::model::{Finding, Rule};
use crate::XtaskError;

/// One recorded finding kind with how often it occurred.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaselineEntry {
    /// The rule.
    pub rule: Rule,
    /// File path relative to the workspace root.
    pub path: String,
    /// The subject (legacy name, type, static, package).
    pub subject: String,
    /// The line-number-free key.
    pub fingerprint: String,
    /// How many findings share the key.
    pub count: usize,
}

/// The baseline file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Baseline {
    /// Format version (1).
    pub schema_version: u32,
    /// Entries, sorted by fingerprint.
    pub entries: Vec<BaselineEntry>,
}

impl Baseline {
    /// A baseline of `findings`.
    pub fn from_findings(findings: &[Finding]) -> Self {
        let mut map: BTreeMap<&str, BaselineEntry> = BTreeMap::new();
        for f in findings {
            map.entry(&f.fingerprint)
                .or_insert_with(|| BaselineEntry {
                    rule: f.rule,
                    path: f.path.clone(),
                    subject: f.subject.clone(),
                    fingerprint: f.fingerprint.clone(),
                    count: 0,
                })
                .count += 1;
        }
        Self {
            schema_version: 1,
            entries: map.into_values().collect(),
        }
    }

    /// Reads a baseline file.
    ///
    /// # Errors
    /// [`XtaskError::Baseline`] naming the file when it is missing or malformed.
    pub fn read(path: &Path) -> Result<Self, XtaskError> {
        let err = |message: String| XtaskError::Baseline {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let b: Baseline = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        if b.schema_version != 1 {
            return Err(err(format!(
                "unsupported schema_version {}",
                b.schema_version
            )));
        }
        Ok(b)
    }

    /// Writes the baseline as pretty JSON.
    ///
    /// # Errors
    /// [`XtaskError::Baseline`] when the file cannot be written.
    pub fn write(&self, path: &Path) -> Result<(), XtaskError> {
        let text = serde_json::to_string_pretty(self).map_err(|e| XtaskError::Baseline {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        std::fs::write(path, text + "\n").map_err(|e| XtaskError::Baseline {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// Splits `findings` against the baseline: the findings beyond the recorded counts (new),
    /// and the recorded entries no longer fully present (fixed, with how many went away).
    pub fn compare<'f>(&self, findings: &'f [Finding]) -> (Vec<&'f Finding>, Vec<BaselineEntry>) {
        let mut remaining: BTreeMap<&str, usize> = self
            .entries
            .iter()
            .map(|e| (e.fingerprint.as_str(), e.count))
            .collect();
        let mut new = Vec::new();
        for f in findings {
            match remaining.get_mut(f.fingerprint.as_str()) {
                Some(n) if *n > 0 => *n -= 1,
                _ => new.push(f),
            }
        }
        let fixed = self
            .entries
            .iter()
            .filter_map(|e| {
                let left = remaining.get(e.fingerprint.as_str()).copied().unwrap_or(0);
                (left > 0).then(|| BaselineEntry {
                    count: left,
                    ..e.clone()
                })
            })
            .collect();
        (new, fixed)
    }
}
