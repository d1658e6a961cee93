//! Findings, rules and source edits shared by every check.

use serde::{Deserialize, Serialize};

/// The migration rules. Codes are stable; they appear in reports, JSON and baselines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Rule {
    /// A Rust file the scan could not check: not UTF-8, not valid Rust, unreadable, or reached
    /// through a symlink that leaves the workspace. Reported, never skipped silently.
    #[serde(rename = "SSOT000")]
    Unscanned,
    /// A use of an `engine_compat` path or of a legacy name imported from it.
    #[serde(rename = "SSOT001")]
    DeprecatedName,
    /// An engine or engine-factory type defined outside engine-core / engine-factory.
    #[serde(rename = "SSOT002")]
    DuplicateEngine,
    /// A `UserExecutionEngine` built anywhere but engine-factory.
    #[serde(rename = "SSOT003")]
    FactoryBypass,
    /// A crate depending on engine-compat without being on the allow-list.
    #[serde(rename = "SSOT004")]
    CompatDependency,
    /// Process-global mutable state (a static holding a lock or a map) in engine-related code.
    #[serde(rename = "SSOT005")]
    SharedState,
}

impl Rule {
    /// Every rule, in code order.
    pub const ALL: [Rule; 6] = [
        Rule::Unscanned,
        Rule::DeprecatedName,
        Rule::DuplicateEngine,
        Rule::FactoryBypass,
        Rule::CompatDependency,
        Rule::SharedState,
    ];
    /// The stable code, e.g. `SSOT001`.
    pub fn code(self) -> &'static str {
        match self {
            Rule::Unscanned => "SSOT000",
            Rule::DeprecatedName => "SSOT001",
            Rule::DuplicateEngine => "SSOT002",
            Rule::FactoryBypass => "SSOT003",
            Rule::CompatDependency => "SSOT004",
            Rule::SharedState => "SSOT005",
        }
    }
    /// The short name, e.g. `deprecated-name`.
    pub fn name(self) -> &'static str {
        match self {
            Rule::Unscanned => "unscanned-file",
            Rule::DeprecatedName => "deprecated-name",
            Rule::DuplicateEngine => "duplicate-engine",
            Rule::FactoryBypass => "factory-bypass",
            Rule::CompatDependency => "compat-dependency",
            Rule::SharedState => "shared-state",
        }
    }
}

/// A byte-range replacement in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    /// Start byte offset.
    pub start: usize,
    /// End byte offset (exclusive).
    pub end: usize,
    /// The new text.
    pub text: String,
}

/// The severity of a finding, as JSON, SARIF and GitHub annotations name it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Fails `migrate --check`.
    #[default]
    Error,
}

/// One violation at one place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// The rule.
    pub rule: Rule,
    /// Path relative to the workspace root, with `/` separators.
    pub path: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// 1-based line where the span ends.
    #[serde(default)]
    pub end_line: usize,
    /// 1-based column (exclusive) where the span ends, in characters.
    #[serde(default)]
    pub end_column: usize,
    /// How serious it is: every rule fails `--check`, so `error`.
    #[serde(default)]
    pub severity: Severity,
    /// What the finding is about (a legacy name, a type, a static, a package).
    pub subject: String,
    /// What is wrong.
    pub message: String,
    /// What to write instead.
    pub help: String,
    /// A line-number-free key that survives unrelated edits (used by baselines).
    pub fingerprint: String,
}

impl Finding {
    /// The human report line: `path:line:col  CODE name  message  help: ...`.
    pub fn human(&self) -> String {
        format!(
            "{}:{}:{}  {} {}  {}  help: {}",
            self.path,
            self.line,
            self.column,
            self.rule.code(),
            self.rule.name(),
            self.message,
            self.help
        )
    }
}
