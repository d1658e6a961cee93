//! Payload hygiene for tool arguments and results: secret keys redacted, long strings and lists
//! cut (the limits are in [`crate::limits`]).

use serde_json::Value;

use crate::limits::{
    MAX_ARGUMENT_CHARS, MAX_LIST_ITEMS, MAX_RESULT_CHARS, REDACTED, SECRET_KEY_MARKERS,
};

/// Redacts secret keys and truncates strings (200 chars) and lists (10 items) in tool arguments.
pub(crate) fn sanitize_arguments(value: &Value) -> Value {
    sanitize(value, MAX_ARGUMENT_CHARS)
}

/// Truncates strings (500 chars) and lists (10 items) in tool results, and redacts secret keys.
pub(crate) fn sanitize_result(value: &Value) -> Value {
    sanitize(value, MAX_RESULT_CHARS)
}

/// Cuts `s` to `max` characters, marking the cut with how much was removed.
pub(crate) fn truncate_str(s: &str, max: usize) -> String {
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
}
