//! Lifecycle events, their per-run envelope, and payload hygiene (redaction and truncation).
//!
//! Every event a run emits is wrapped in an [`EventEnvelope`] that carries the user, thread and
//! run ids, a per-run sequence number starting at 1 and a timestamp that never goes backwards
//! within the run. Serialized to JSON, an envelope looks like:
//!
//! ```json
//! {"user_id":"alice","thread_id":"t1","run_id":"r1","seq":1,"timestamp_us":1764093935000000,
//!  "event":{"type":"agent_started","agent_name":"assistant"}}
//! ```

use std::borrow::Cow;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::{RunId, ThreadId, UserId};

/// How a run ended. Carried by the single terminal [`AgentEvent::AgentCompleted`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// The agent returned an answer.
    Completed,
    /// The agent returned an error or panicked.
    Failed,
    /// The run exceeded the engine's run timeout.
    TimedOut,
    /// The run was cancelled (by id, by engine shutdown, or while queued).
    Cancelled,
}

impl RunStatus {
    /// The snake_case name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::Cancelled => "cancelled",
        }
    }
}

/// How one tool call ended. Carried by [`AgentEvent::ToolCompleted`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolStatus {
    /// The tool returned a value.
    Success,
    /// The tool returned an error, panicked, or does not exist.
    Error,
    /// The tool exceeded the tool timeout.
    Timeout,
    /// The permission policy denied the call; the tool did not run.
    PermissionDenied,
    /// The run was cancelled while the tool ran.
    Cancelled,
}

/// One lifecycle event. Serialized with a `type` tag in snake_case
/// (`agent_started`, `agent_thinking`, `tool_executing`, `tool_completed`, `agent_completed`,
/// `agent_error`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentEvent {
    /// The run was accepted; always the first event of a run (sequence number 1).
    AgentStarted {
        /// The agent that runs.
        agent_name: Arc<str>,
    },
    /// The agent reports progress in words (also used for the "queued" notice).
    AgentThinking {
        /// What the agent is doing.
        reasoning: Cow<'static, str>,
    },
    /// A tool call starts. Arguments are redacted and truncated.
    ToolExecuting {
        /// The tool.
        tool_name: Arc<str>,
        /// Call number within the run, starting at 1; pairs this event with its completion.
        call_id: u32,
        /// The (sanitized) arguments.
        arguments: Value,
    },
    /// A tool call ended, whatever happened.
    ToolCompleted {
        /// The tool.
        tool_name: Arc<str>,
        /// The call number of the matching `tool_executing`.
        call_id: u32,
        /// How it ended.
        status: ToolStatus,
        /// The (sanitized) result, on success.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<Value>,
        /// The error, otherwise.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// Wall time of the call.
        duration_ms: u64,
    },
    /// The terminal event: exactly one ends every run.
    AgentCompleted {
        /// The agent that ran.
        agent_name: Arc<str>,
        /// How the run ended.
        status: RunStatus,
        /// `true` only for [`RunStatus::Completed`].
        success: bool,
        /// The agent's answer (not truncated: it is what the user asked for).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<String>,
        /// The error, for any status but `completed`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// Wall time from acceptance to end, queue time included.
        duration_ms: u64,
    },
    /// An error inside the run (agent error, panic or timeout), reported before the terminal
    /// `agent_completed`.
    AgentError {
        /// What went wrong.
        message: String,
    },
}

impl AgentEvent {
    /// The snake_case event kind, as in the JSON `type` field.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::AgentStarted { .. } => "agent_started",
            Self::AgentThinking { .. } => "agent_thinking",
            Self::ToolExecuting { .. } => "tool_executing",
            Self::ToolCompleted { .. } => "tool_completed",
            Self::AgentCompleted { .. } => "agent_completed",
            Self::AgentError { .. } => "agent_error",
        }
    }

    /// Whether this is the run's terminal event.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::AgentCompleted { .. })
    }
}

/// An event with its routing and ordering data. Built only by the engine, from the run's own
/// context: a run cannot stamp another user's id on its events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventEnvelope {
    /// The user the event belongs to; the only user who may receive it.
    pub user_id: UserId,
    /// The thread of the run.
    pub thread_id: ThreadId,
    /// The run.
    pub run_id: RunId,
    /// 1 for the first event of a run, +1 for each next one; a consumer that sees a jump knows
    /// events were dropped.
    pub seq: u64,
    /// Microseconds since the Unix epoch; never decreases within a run.
    pub timestamp_us: u64,
    /// The event itself.
    pub event: AgentEvent,
}

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

/// Redacts secret keys and truncates strings (200 chars) and lists (10 items) in tool arguments.
pub fn sanitize_arguments(value: &Value) -> Value {
    sanitize(value, MAX_ARGUMENT_CHARS)
}

/// Truncates strings (500 chars) and lists (10 items) in tool results, and redacts secret keys.
pub fn sanitize_result(value: &Value) -> Value {
    sanitize(value, MAX_RESULT_CHARS)
}

/// Cuts `s` to `max` characters, marking the cut with how much was removed.
pub fn truncate_str(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_owned(),
        Some((cut, _)) => {
            let removed = s[cut..].chars().count();
            format!("{}...[truncated {removed} chars]", &s[..cut])
        }
    }
}

fn is_secret_key(key: &str) -> bool {
    let lower = key.to_ascii_lowercase();
    SECRET_KEY_MARKERS.iter().any(|m| lower.contains(m))
}

fn sanitize(value: &Value, max_chars: usize) -> Value {
    match value {
        Value::String(s) => Value::String(truncate_str(s, max_chars)),
        Value::Array(items) => {
            let mut out: Vec<Value> = items
                .iter()
                .take(MAX_LIST_ITEMS)
                .map(|v| sanitize(v, max_chars))
                .collect();
            if items.len() > MAX_LIST_ITEMS {
                out.push(Value::String(format!(
                    "...[truncated {} more items]",
                    items.len() - MAX_LIST_ITEMS
                )));
            }
            Value::Array(out)
        }
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = if is_secret_key(k) {
                        Value::String(REDACTED.to_owned())
                    } else {
                        sanitize(v, max_chars)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secret_keys_are_redacted_at_any_depth() {
        let args = json!({
            "query": "weather",
            "Password": "hunter2",
            "nested": {"api_key": "k", "AuthHeader": "Bearer x", "db_credentials": ["a"], "n": 3},
            "access_token": "t",
            "client_secret": "s"
        });
        let out = sanitize_arguments(&args);
        assert_eq!(out["query"], "weather");
        assert_eq!(out["Password"], REDACTED);
        assert_eq!(out["nested"]["api_key"], REDACTED);
        assert_eq!(out["nested"]["AuthHeader"], REDACTED);
        assert_eq!(out["nested"]["db_credentials"], REDACTED);
        assert_eq!(out["nested"]["n"], 3);
        assert_eq!(out["access_token"], REDACTED);
        assert_eq!(out["client_secret"], REDACTED);
        assert!(!out.to_string().contains("hunter2"));
    }

    #[test]
    fn strings_and_lists_are_cut_and_marked() {
        let long = "é".repeat(250);
        let out = sanitize_arguments(&json!({ "text": long }));
        let s = out["text"].as_str().unwrap();
        assert!(s.starts_with(&"é".repeat(200)));
        assert!(s.ends_with("...[truncated 50 chars]"), "{s}");
        let res = sanitize_result(&json!("x".repeat(600)));
        assert!(res.as_str().unwrap().ends_with("...[truncated 100 chars]"));
        assert_eq!(
            sanitize_result(&json!("y".repeat(500))),
            json!("y".repeat(500))
        );
        let list: Vec<u32> = (0..15).collect();
        let out = sanitize_result(&json!(list));
        let arr = out.as_array().unwrap();
        assert_eq!(arr.len(), 11);
        assert_eq!(arr[9], 9);
        assert_eq!(arr[10], "...[truncated 5 more items]");
    }

    #[test]
    fn events_serialize_with_snake_case_names() {
        let env = EventEnvelope {
            user_id: UserId::new("alice").unwrap(),
            thread_id: ThreadId::new("t1").unwrap(),
            run_id: RunId::new("r1").unwrap(),
            seq: 1,
            timestamp_us: 5,
            event: AgentEvent::AgentCompleted {
                agent_name: "a".into(),
                status: RunStatus::TimedOut,
                success: false,
                result: None,
                error: Some("slow".into()),
                duration_ms: 3,
            },
        };
        let v = serde_json::to_value(&env).unwrap();
        assert_eq!(v["user_id"], "alice");
        assert_eq!(v["event"]["type"], "agent_completed");
        assert_eq!(v["event"]["status"], "timed_out");
        assert!(v["event"].get("result").is_none());
        let back: EventEnvelope = serde_json::from_value(v).unwrap();
        assert_eq!(back, env);
        let kinds = [
            AgentEvent::AgentStarted {
                agent_name: "a".into(),
            },
            AgentEvent::AgentThinking {
                reasoning: "r".into(),
            },
            AgentEvent::ToolExecuting {
                tool_name: "t".into(),
                call_id: 1,
                arguments: json!({}),
            },
            AgentEvent::ToolCompleted {
                tool_name: "t".into(),
                call_id: 1,
                status: ToolStatus::PermissionDenied,
                result: None,
                error: None,
                duration_ms: 0,
            },
            AgentEvent::AgentError {
                message: "m".into(),
            },
        ];
        for k in kinds {
            let v = serde_json::to_value(&k).unwrap();
            assert_eq!(v["type"], k.kind());
            assert!(!k.is_terminal());
        }
        let v = serde_json::to_value(ToolStatus::PermissionDenied).unwrap();
        assert_eq!(v, "permission_denied");
    }
}
