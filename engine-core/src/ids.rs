//! Validated identifier newtypes: [`UserId`], [`ThreadId`], [`RunId`], [`RequestId`].
//!
//! Every id is checked when it is built, so an invalid or placeholder id cannot exist in a
//! [`UserExecutionContext`](crate::UserExecutionContext). Ids are backed by an `Arc<str>`: cloning
//! one is a reference-count bump, never a string copy.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{IdError, IdRejection};

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

/// Checks one id value for the field `field`; the single validation rule set shared by all ids.
pub(crate) fn validate(field: &'static str, value: &str) -> Result<(), IdError> {
    let reject = |reason| {
        Err(IdError {
            field,
            value: preview(value),
            reason,
        })
    };
    if value.trim().is_empty() {
        return reject(IdRejection::Empty);
    }
    if value.len() > MAX_ID_BYTES {
        return reject(IdRejection::TooLong {
            len: value.len(),
            max: MAX_ID_BYTES,
        });
    }
    if value.chars().any(char::is_control) {
        return reject(IdRejection::ControlCharacter);
    }
    let lower = value.to_ascii_lowercase();
    if FORBIDDEN_VALUES.contains(&lower.as_str()) {
        return reject(IdRejection::Placeholder);
    }
    if value.chars().count() < SHORT_VALUE_CHARS && !ALLOWED_DEFAULTS.contains(&lower.as_str()) {
        if let Some(prefix) = FORBIDDEN_PREFIXES.iter().find(|p| lower.starts_with(*p)) {
            return reject(IdRejection::PlaceholderPrefix { prefix });
        }
    }
    Ok(())
}

/// A short, printable rendering of a rejected value for error messages.
fn preview(value: &str) -> String {
    let escaped: String = value.escape_debug().take(64).collect();
    if value.escape_debug().nth(64).is_some() {
        format!("{escaped}...")
    } else {
        escaped
    }
}

macro_rules! define_id {
    ($(#[$meta:meta])* $name:ident, $field:literal, $prefix:literal) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(Arc<str>);

        impl $name {
            /// The field name used in error messages and metadata checks.
            pub const FIELD: &'static str = $field;

            /// Validates `value` and wraps it.
            ///
            /// # Errors
            /// [`IdError`] naming the field and the reason when the value is empty, too long,
            /// contains control characters or is a placeholder.
            pub fn new(value: impl AsRef<str>) -> Result<Self, IdError> {
                let value = value.as_ref();
                validate($field, value)?;
                Ok(Self(Arc::from(value)))
            }

            #[doc = concat!("A fresh, globally unique id (`", $prefix, "_<uuid>`).")]
            pub fn generate() -> Self {
                Self(Arc::from(format!(concat!($prefix, "_{}"), uuid::Uuid::new_v4().simple())))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                Self::new(value)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = IdError;
            fn try_from(value: &str) -> Result<Self, IdError> {
                Self::new(value)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(value: &str) -> Result<Self, IdError> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0.to_string()
            }
        }
    };
}

define_id!(
    /// The end user a run belongs to. Every event, engine and subscription is bound to one.
    UserId,
    "user_id",
    "user"
);
define_id!(
    /// The conversation thread a run belongs to.
    ThreadId,
    "thread_id",
    "thread"
);
define_id!(
    /// One agent run (one user message being answered). Sequence numbers restart at 1 per run.
    RunId,
    "run_id",
    "run"
);
define_id!(
    /// One request or sub-operation inside a run; child contexts get a new one.
    RequestId,
    "request_id",
    "req"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_ids() {
        for v in [
            "alice",
            "user-42",
            "usr_9f8e7d6c",
            "default_user",
            "DEFAULT_ADMIN",
            "2",
        ] {
            assert!(UserId::new(v).is_ok(), "{v} should be accepted");
        }
    }

    #[test]
    fn rejects_every_placeholder_case_insensitively() {
        for v in FORBIDDEN_VALUES {
            for candidate in [v.to_string(), v.to_uppercase()] {
                let err = ThreadId::new(&candidate).unwrap_err();
                assert_eq!(err.field, "thread_id");
                assert_eq!(err.reason, IdRejection::Placeholder);
                assert!(err.to_string().contains("thread_id"), "{err}");
                assert!(err.to_string().contains("placeholder"), "{err}");
            }
        }
    }

    #[test]
    fn rejects_short_prefixed_values_but_allows_long_ones_and_defaults() {
        for p in FORBIDDEN_PREFIXES {
            let short = format!("{p}x");
            let err = RunId::new(&short).unwrap_err();
            assert_eq!(err.reason, IdRejection::PlaceholderPrefix { prefix: p });
            assert!(err.to_string().contains(p), "{err}");
            let long = format!("{p}{}", "a".repeat(SHORT_VALUE_CHARS));
            assert!(RunId::new(&long).is_ok(), "{long} is long enough");
        }
        for d in ALLOWED_DEFAULTS {
            assert!(UserId::new(d).is_ok(), "{d} is an allowed default");
        }
        for bad in ["default_placeholder", "default_temp", "default_mock"] {
            assert!(UserId::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rejects_empty_long_and_control_values() {
        let e = UserId::new("   ").unwrap_err();
        assert_eq!(e.reason, IdRejection::Empty);
        assert!(e.to_string().contains("user_id must not be empty"), "{e}");
        let e = UserId::new("a".repeat(257)).unwrap_err();
        assert_eq!(e.reason, IdRejection::TooLong { len: 257, max: 256 });
        assert!(UserId::new("a".repeat(256)).is_ok());
        let e = RequestId::new("ab\ncd").unwrap_err();
        assert_eq!(e.reason, IdRejection::ControlCharacter);
        assert!(e.to_string().contains("request_id"));
    }

    #[test]
    fn generated_ids_are_unique_valid_and_serde_round_trips() {
        let a = RunId::generate();
        let b = RunId::generate();
        assert_ne!(a, b);
        assert!(a.as_str().starts_with("run_"));
        assert!(RunId::new(a.as_str()).is_ok());
        let json = serde_json::to_string(&a).unwrap();
        let back: RunId = serde_json::from_str(&json).unwrap();
        assert_eq!(a, back);
        assert!(serde_json::from_str::<UserId>("\"null\"").is_err());
    }
}
