//! The numbers and rules the engine enforces, in one place: id validation, context nesting,
//! payload hygiene, and the range check every config builder in the workspace shares.
//!
//! Nothing here is needed to run an engine; it is for reading (what exactly is refused or cut)
//! and for crates that validate their own configuration the same way.
//!
//! ```
//! use engine_core::limits::{check_range, MAX_ID_BYTES};
//!
//! assert_eq!(MAX_ID_BYTES, 256);
//! let err = check_range("max_sockets", 0usize, 1..=100).unwrap_err();
//! assert_eq!(err.to_string(), "invalid configuration: max_sockets = 0 is outside the allowed range 1..=100");
//! ```

use std::fmt::Debug;
use std::ops::RangeInclusive;

use crate::error::ConfigError;

/// Longest accepted id, in bytes.
pub const MAX_ID_BYTES: usize = 256;

/// Values rejected outright (compared case-insensitively): the placeholders the legacy system
/// leaked into production ids.
pub const FORBIDDEN_VALUES: &[&str] = &[
    "registry",
    "placeholder",
    "default",
    "temp",
    "none",
    "null",
    "undefined",
    "0",
    "1",
    "xxx",
    "yyy",
    "example",
    "test",
    "demo",
    "sample",
    "template",
    "mock",
    "fake",
    "dummy",
];

/// Prefixes rejected (case-insensitively) on values shorter than
/// [`SHORT_VALUE_CHARS`] characters, unless the value is in [`ALLOWED_DEFAULTS`].
pub const FORBIDDEN_PREFIXES: &[&str] = &[
    "placeholder_",
    "registry_",
    "temp_",
    "example_",
    "demo_",
    "sample_",
    "template_",
    "mock_",
    "fake_",
    "default_",
];

/// Well-known `default_*` values that are real, deliberate ids and stay allowed.
pub const ALLOWED_DEFAULTS: &[&str] = &[
    "default_user",
    "default_admin",
    "default_system",
    "default_account",
    "default_service",
    "default_client",
    "default_guest",
];

/// Values with fewer characters than this are checked against [`FORBIDDEN_PREFIXES`].
pub const SHORT_VALUE_CHARS: usize = 20;

/// Deepest operation nesting: a context at depth `MAX_OPERATION_DEPTH - 1` cannot have a child.
pub const MAX_OPERATION_DEPTH: u32 = 10;

/// Metadata keys reserved for the context's own fields; using one in a metadata map is an error.
pub const RESERVED_METADATA_KEYS: &[&str] = &[
    "user_id",
    "thread_id",
    "run_id",
    "request_id",
    "connection_id",
    "websocket_client_id",
    "created_at",
    "db_session",
    "parent_request_id",
    "operation_depth",
];

/// The text of the `agent_thinking` event a run gets when it waited in the queue longer than
/// [`EngineConfig::queue_notice_after`](crate::EngineConfig::queue_notice_after).
pub const QUEUED_NOTICE: &str = "Request queued due to user load";

/// Longest argument string kept in events, in characters.
pub const MAX_ARGUMENT_CHARS: usize = 200;
/// Longest result string kept in events, in characters.
pub const MAX_RESULT_CHARS: usize = 500;
/// Most list items kept in events.
pub const MAX_LIST_ITEMS: usize = 10;
/// Substrings that mark an argument key as secret (compared case-insensitively).
pub const SECRET_KEY_MARKERS: &[&str] =
    &["password", "secret", "key", "token", "auth", "credential"];
/// What a secret value is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// Checks `value` against `range`, naming `field` in the error. Shared by every config builder
/// in the workspace so ranges are reported the same way everywhere.
///
/// # Errors
/// [`ConfigError`] naming the field, the value and the range.
pub fn check_range<T: PartialOrd + Debug>(
    field: &'static str,
    value: T,
    range: RangeInclusive<T>,
) -> Result<T, ConfigError> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError {
            field,
            value: format!("{value:?}"),
            range: format!("{:?}..={:?}", range.start(), range.end()),
        })
    }
}
