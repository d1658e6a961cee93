//! Validated identifier newtypes: [`UserId`], [`ThreadId`], [`RunId`], [`RequestId`].
//!
//! Every id is checked when it is built, so an invalid or placeholder id cannot exist in a
//! [`UserExecutionContext`](crate::UserExecutionContext). Ids are backed by an `Arc<str>`: cloning
//! one is a reference-count bump, never a string copy.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::limits::{
    ALLOWED_DEFAULTS, FORBIDDEN_PREFIXES, FORBIDDEN_VALUES, MAX_ID_BYTES, SHORT_VALUE_CHARS,
};
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// Checks one id value for the field `field`; the single validation rule set shared by all ids.
pub(crate) fn validate(field: &'static str, value: &str) -> Result<(), IdError> {
    let reject = |reason| {
        Err(IdError {
            field,
            value: preview(value),
            reason,
        })
    };
    let trimmed = value.trim();
    if trimmed.is_empty() {
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
    if let Some(c) = value
        .chars()
        .find(|c| c.general_category() == GeneralCategory::Format)
    {
        return reject(IdRejection::InvisibleCharacter {
            code_point: u32::from(c),
        });
    }
    if trimmed.len() != value.len() {
        return reject(IdRejection::SurroundingWhitespace);
    }
    // Placeholders are compared on the trimmed, case-folded value.
    let folded = trimmed.to_lowercase();
    if FORBIDDEN_VALUES.contains(&folded.as_str()) {
        return reject(IdRejection::Placeholder);
    }
    if folded.chars().count() < SHORT_VALUE_CHARS && !ALLOWED_DEFAULTS.contains(&folded.as_str()) {
        if let Some(prefix) = FORBIDDEN_PREFIXES.iter().find(|p| folded.starts_with(*p)) {
            return reject(IdRejection::PlaceholderPrefix { prefix });
        }
    }
    Ok(())
}

/// Why an id value was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdRejection {
    /// Empty or only whitespace.
    Empty,
    /// Longer than the limit, in bytes.
    TooLong {
        /// The value's length in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// Contains a control character (newline, NUL, escape, ...).
    ControlCharacter,
    /// Starts or ends with whitespace, so it would look like another id in logs and pages.
    SurroundingWhitespace,
    /// Contains an invisible formatting character (Unicode category Cf: zero-width space or
    /// joiner, byte-order mark, bidirectional override, ...), so it would look like another id.
    InvisibleCharacter {
        /// The character, as `U+XXXX`.
        code_point: u32,
    },
    /// One of the forbidden placeholder values (`test`, `null`, `default`, ...).
    Placeholder,
    /// A short value starting with a forbidden placeholder prefix.
    PlaceholderPrefix {
        /// The matched prefix, for example `temp_`.
        prefix: &'static str,
    },
}

impl fmt::Display for IdRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("must not be empty or whitespace"),
            Self::TooLong { len, max } => write!(f, "is {len} bytes long; at most {max} allowed"),
            Self::ControlCharacter => f.write_str("must not contain control characters"),
            Self::SurroundingWhitespace => {
                f.write_str("must not start or end with whitespace; trim it before building the id")
            }
            Self::InvisibleCharacter { code_point } => write!(
                f,
                "must not contain the invisible formatting character U+{code_point:04X} (Unicode category Cf), which would make it look like another id"
            ),
            Self::Placeholder => {
                f.write_str("is a placeholder value; pass the real id from the request")
            }
            Self::PlaceholderPrefix { prefix } => write!(
                f,
                "starts with the placeholder prefix `{prefix}`; pass the real id from the request"
            ),
        }
    }
}

/// An id value that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {reason} (got \"{value}\")")]
#[non_exhaustive]
pub struct IdError {
    /// The field the value was meant for (`user_id`, `thread_id`, `run_id`, `request_id`).
    pub field: &'static str,
    /// A printable, shortened rendering of the rejected value.
    pub value: String,
    /// Why it was rejected.
    pub reason: IdRejection,
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
        #[derive(Clone, Eq, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(Arc<str>);

        /// Equal strings; the same allocation (an id and its clones, the common case on the
        /// run path) answers without comparing bytes.
        impl PartialEq for $name {
            #[inline]
            fn eq(&self, other: &Self) -> bool {
                Arc::ptr_eq(&self.0, &other.0) || *self.0 == *other.0
            }
        }

        /// The string's hash, as equality compares strings.
        impl std::hash::Hash for $name {
            #[inline]
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                self.0.hash(state);
            }
        }

        impl $name {
            /// The field name used in error messages and metadata checks.
            pub const FIELD: &'static str = $field;

            /// Validates `value` and wraps it.
            ///
            /// # Errors
            /// [`IdError`] naming the field and the reason when the value is empty, too long,
            /// has surrounding whitespace, contains control or invisible formatting characters,
            /// or is a placeholder.
            pub fn new(value: impl AsRef<str>) -> Result<Self, IdError> {
                let value = value.as_ref();
                validate($field, value)?;
                Ok(Self(Arc::from(value)))
            }

            #[doc = concat!("A fresh, globally unique id (`", $prefix, "_<uuid>`).")]
            pub fn generate() -> Self {
                Self(generated(concat!($prefix, "_")))
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

/// `<prefix><uuid as 32 hex digits>` in one allocation (the `Arc` itself): the text is put
/// together on the stack.
fn generated(prefix: &str) -> Arc<str> {
    const HEX: usize = uuid::fmt::Simple::LENGTH;
    let mut buf = [0u8; 64];
    let len = prefix.len() + HEX;
    debug_assert!(len <= buf.len(), "id prefix too long");
    buf[..prefix.len()].copy_from_slice(prefix.as_bytes());
    uuid::Uuid::new_v4()
        .simple()
        .encode_lower(&mut buf[prefix.len()..len]);
    // Both parts are ASCII.
    Arc::from(std::str::from_utf8(&buf[..len]).unwrap_or_default())
}

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

    /// Ids that would look like another id in a log or on a page, for every id type.
    #[test]
    fn lookalike_ids_are_refused_with_the_rule_named() {
        let cases: &[(&str, IdRejection, &str)] = &[
            (" null ", IdRejection::SurroundingWhitespace, "whitespace"),
            ("test ", IdRejection::SurroundingWhitespace, "whitespace"),
            (" alice", IdRejection::SurroundingWhitespace, "whitespace"),
            (
                "alice\u{a0}",
                IdRejection::SurroundingWhitespace,
                "whitespace",
            ),
            (
                "null\u{200b}",
                IdRejection::InvisibleCharacter { code_point: 0x200b },
                "U+200B",
            ),
            (
                "alice\u{200b}",
                IdRejection::InvisibleCharacter { code_point: 0x200b },
                "U+200B",
            ),
            (
                "al\u{200d}ice",
                IdRejection::InvisibleCharacter { code_point: 0x200d },
                "U+200D",
            ),
            (
                "\u{feff}alice",
                IdRejection::InvisibleCharacter { code_point: 0xfeff },
                "U+FEFF",
            ),
            (
                "alice\u{202e}",
                IdRejection::InvisibleCharacter { code_point: 0x202e },
                "U+202E",
            ),
            (
                "\u{2066}bob\u{2069}",
                IdRejection::InvisibleCharacter { code_point: 0x2066 },
                "U+2066",
            ),
            (
                "soft\u{ad}hyphen",
                IdRejection::InvisibleCharacter { code_point: 0xad },
                "U+00AD",
            ),
            ("NULL", IdRejection::Placeholder, "placeholder"),
            ("Demo", IdRejection::Placeholder, "placeholder"),
        ];
        for (value, reason, words) in cases {
            for (field, err) in [
                ("user_id", UserId::new(value).unwrap_err()),
                ("thread_id", ThreadId::new(value).unwrap_err()),
                ("run_id", RunId::new(value).unwrap_err()),
                ("request_id", RequestId::new(value).unwrap_err()),
            ] {
                assert_eq!(err.field, field, "{value:?}");
                assert_eq!(&err.reason, reason, "{value:?} as {field}");
                let msg = err.to_string();
                assert!(msg.contains(field) && msg.contains(words), "{msg}");
                let hidden = msg
                    .chars()
                    .any(|c| c.general_category() == GeneralCategory::Format);
                assert!(!hidden, "the error prints the value escaped: {msg:?}");
            }
        }
        // Ordinary non-ASCII ids stay valid: only invisible characters are refused.
        for ok in ["José", "Ｔest", "ユーザー", "alice bob", "a-b_c.d@e"] {
            assert!(UserId::new(ok).is_ok(), "{ok:?} should be accepted");
        }
    }
}
