//! The configuration file: what is accepted, and errors that name the file, the server and the
//! field (a table of cases).

use std::path::Path;
use std::time::Duration;

use engine_mcp::{Approval, ConfigError, McpConfig, Transport};

#[test]
fn the_mcp_servers_format_with_the_engines_keys_is_read() {
    let text = r#"{
      "mcpServers": {
        "time": { "command": "uvx", "args": ["mcp-server-time"], "env": {"TZ": "UTC"} },
        "docs": { "type": "http", "url": "https://example.test/mcp",
                  "headers": {"X-User": "{user}"}, "perUser": true,
                  "requireApproval": ["delete"], "denyTools": ["drop"],
                  "callTimeoutMs": 1500, "idleTimeoutSecs": 60, "toolsTtlSecs": 30 },
        "off": { "command": "x", "disabled": true }
      },
      "otherClientKey": 1
    }"#;
    let c = McpConfig::parse(text, Path::new("mcp.json")).unwrap();
    assert_eq!(c.servers.len(), 2, "the disabled server is left out");
    let time = c.servers.iter().find(|s| s.name == "time").unwrap();
    assert!(
        matches!(&time.transport, Transport::Stdio { command, args, .. }
        if command == "uvx" && args == &["mcp-server-time"])
    );
    assert_eq!(time.prefix, "time.");
    assert!(!time.per_user);
    assert_eq!(time.approval, Approval::Never);
    let docs = c.servers.iter().find(|s| s.name == "docs").unwrap();
    assert!(docs.per_user);
    assert!(docs.requires_approval("delete") && !docs.requires_approval("read"));
    assert!(docs.offers("read") && !docs.offers("drop"));
    assert_eq!(docs.call_timeout, Some(Duration::from_millis(1500)));
    assert_eq!(docs.idle_timeout, Duration::from_secs(60));
    assert_eq!(docs.tools_ttl, Duration::from_secs(30));
}

#[test]
fn every_mistake_names_the_file_the_server_and_the_field() {
    // (server object, field named in the error, a phrase of the problem)
    let cases = [
        (r#"{"args": ["x"]}"#, "command", "missing"),
        (r#"{"command": 5}"#, "command", "must be a string"),
        (r#"{"command": ""}"#, "command", "must not be empty"),
        (r#"{"command": "x", "url": "http://a"}"#, "url", "not both"),
        (
            r#"{"command": "x", "args": "a b"}"#,
            "args",
            "array of strings",
        ),
        (
            r#"{"command": "x", "env": {"A": 1}}"#,
            "env",
            "`A` must be a string",
        ),
        (
            r#"{"command": "x", "headers": {}}"#,
            "headers",
            "only a server with `url`",
        ),
        (r#"{"url": "ftp://a"}"#, "url", "http://"),
        (
            r#"{"url": "http://a", "env": {}}"#,
            "env",
            "only a server with `command`",
        ),
        (r#"{"url": "http://a", "type": "sse"}"#, "type", "SSE-only"),
        (r#"{"command": "x", "type": "http"}"#, "type", "stdio"),
        (
            r#"{"command": "x", "perUser": "yes"}"#,
            "perUser",
            "true or false",
        ),
        (r#"{"command": "x", "perUser": true}"#, "env", "{user}"),
        (
            r#"{"command": "x", "env": {"U": "{user}"}}"#,
            "env",
            "perUser",
        ),
        (
            r#"{"url": "http://a", "headers": {"U": "{user}"}}"#,
            "headers",
            "perUser",
        ),
        (
            r#"{"command": "x", "requireApproval": "yes"}"#,
            "requireApproval",
            "array",
        ),
        (
            r#"{"command": "x", "callTimeoutMs": 0}"#,
            "callTimeoutMs",
            "whole number",
        ),
        (
            r#"{"command": "x", "idleTimeoutSecs": -1}"#,
            "idleTimeoutSecs",
            "whole number",
        ),
        (
            r#"{"command": "x", "toolsTtlSecs": 1.5}"#,
            "toolsTtlSecs",
            "whole number",
        ),
        (
            r#"{"command": "x", "allowTools": [1]}"#,
            "allowTools",
            "array of strings",
        ),
        (
            r#"{"command": "x", "timeout": 5}"#,
            "timeout",
            "unknown field",
        ),
        (r#""npx""#, "(server)", "object"),
    ];
    for (server, field, phrase) in cases {
        let text = format!(r#"{{"mcpServers": {{"srv": {server}}}}}"#);
        let err = McpConfig::parse(&text, Path::new("/etc/engine/mcp.json")).unwrap_err();
        let ConfigError::Field {
            server: s,
            field: f,
            ..
        } = &err
        else {
            panic!("{server}: {err}");
        };
        assert_eq!((s.as_str(), f.as_str()), ("srv", field), "{server}: {err}");
        let msg = err.to_string();
        assert!(msg.contains("/etc/engine/mcp.json"), "{msg}");
        assert!(
            msg.contains("`srv`") && msg.contains(&format!("`{field}`")),
            "{msg}"
        );
        assert!(msg.contains(phrase), "{server}: {msg} lacks {phrase}");
    }
}

#[test]
fn a_bad_name_bad_json_or_no_servers_is_named_too() {
    let err = McpConfig::parse(
        r#"{"mcpServers": {"a.b": {"command": "x"}}}"#,
        Path::new("f.json"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("`a.b`"), "{err}");
    let err = McpConfig::parse("{", Path::new("f.json")).unwrap_err();
    assert!(matches!(err, ConfigError::Json { .. }) && err.to_string().contains("f.json"));
    let err = McpConfig::parse(r#"{"servers": {}}"#, Path::new("f.json")).unwrap_err();
    assert!(matches!(err, ConfigError::NoServers { .. }), "{err}");
    let err = McpConfig::from_file("/nonexistent/mcp.json").unwrap_err();
    assert!(err.to_string().contains("/nonexistent/mcp.json"), "{err}");
}
