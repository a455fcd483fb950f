//! Importing the MCP server lists of other clients (Claude Desktop, Cursor,
//! VS Code) and appending them to a `cellgate.toml` text.

use std::collections::{BTreeMap, HashSet};

use cellgate_config::{
    HttpTransport, StdioTransport, UpstreamConfig, UpstreamTransport, check_http_url,
    is_valid_upstream_name,
};
use serde_json::{Map, Value};

/// Why a server list could not be imported or rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("expected an object with `mcpServers` (Claude Desktop, Cursor) or `servers` (VS Code)")]
    NoServers,
    #[error("server `{name}`: {message}")]
    Entry { name: String, message: String },
    #[error("the configuration text is not valid TOML: {0}")]
    Toml(String),
    #[error("upstream names already taken: {}", .0.join(", "))]
    Duplicates(Vec<String>),
    #[error("cannot append `[[upstreams]]` tables: {0}")]
    Append(String),
}

/// Reads `{"mcpServers": {...}}` (Claude Desktop, Cursor, Windsurf, Cline)
/// or `{"servers": {...}}` (VS Code `.vscode/mcp.json`; comments and
/// trailing commas allowed) into upstream configurations, in file order.
///
/// An entry is stdio when it has `command` (`args`, `env`, `cwd`), and HTTP
/// when it has `url` (`headers`): `type` `"sse"` selects the legacy SSE
/// transport, `"http"`/`"streamable-http"` Streamable HTTP; without a
/// `type`, a URL whose path ends in `/sse` is taken as legacy SSE (as Cursor
/// does). `"disabled": true` imports the server disabled. Names are kept
/// when valid, else every character outside letters, digits, `_` and `-`
/// becomes `-`. Variables such as `${input:token}` are kept verbatim.
pub fn import_mcp_servers(json_text: &str) -> Result<Vec<UpstreamConfig>, ImportError> {
    let cleaned = strip_jsonc(json_text);
    let root: Value =
        serde_json::from_str(&cleaned).map_err(|e| ImportError::Json(e.to_string()))?;
    let servers = root
        .get("mcpServers")
        .or_else(|| root.get("servers"))
        .and_then(Value::as_object)
        .ok_or(ImportError::NoServers)?;
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (raw_name, entry) in servers {
        let name = sanitize_name(raw_name);
        let bad = |message: String| ImportError::Entry {
            name: raw_name.clone(),
            message,
        };
        if !seen.insert(name.to_ascii_lowercase()) {
            return Err(bad(format!(
                "becomes the upstream name `{name}`, which another server already has"
            )));
        }
        let Some(obj) = entry.as_object() else {
            return Err(bad("is not an object".into()));
        };
        let mut cfg = UpstreamConfig::new(name, transport_of(obj).map_err(bad)?);
        if obj.get("disabled").and_then(Value::as_bool) == Some(true) {
            cfg.enabled = false;
        }
        out.push(cfg);
    }
    Ok(out)
}

fn transport_of(obj: &Map<String, Value>) -> Result<UpstreamTransport, String> {
    let kind = obj
        .get("type")
        .and_then(Value::as_str)
        .map(str::to_ascii_lowercase);
    let command = obj.get("command").and_then(Value::as_str);
    let url = obj
        .get("url")
        .or_else(|| obj.get("serverUrl"))
        .and_then(Value::as_str);
    match (kind.as_deref(), command, url) {
        (Some("stdio") | None, Some(command), _) => {
            if command.trim().is_empty() {
                return Err("`command` is empty".into());
            }
            Ok(UpstreamTransport::Stdio(StdioTransport {
                command: command.to_owned(),
                args: strings(obj.get("args"), "args")?,
                env: string_map(obj.get("env"), "env")?,
                cwd: obj.get("cwd").and_then(Value::as_str).map(str::to_owned),
            }))
        }
        (Some("stdio"), None, _) => Err("type `stdio` needs a `command`".into()),
        (kind, _, Some(url)) => {
            check_http_url(url)?;
            let http = HttpTransport {
                url: url.to_owned(),
                headers: string_map(obj.get("headers"), "headers")?,
            };
            match kind {
                Some("sse") => Ok(UpstreamTransport::Sse(http)),
                Some("http" | "streamable-http" | "streamablehttp" | "streamable_http") => {
                    Ok(UpstreamTransport::Http(http))
                }
                None if url_path(url).ends_with("/sse") => Ok(UpstreamTransport::Sse(http)),
                None => Ok(UpstreamTransport::Http(http)),
                Some(other) => Err(format!(
                    "unknown type {other:?} (expected stdio, http or sse)"
                )),
            }
        }
        (Some(k @ ("http" | "sse")), _, None) => Err(format!("type `{k}` needs a `url`")),
        (Some(other), _, None) => Err(format!(
            "unknown type {other:?} (expected stdio, http or sse)"
        )),
        (None, None, None) => Err("has neither `command` nor `url`".into()),
    }
}

fn url_path(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path = rest.find('/').map_or("", |i| &rest[i..]);
    path.split(['?', '#'])
        .next()
        .unwrap_or("")
        .trim_end_matches('/')
}

fn strings(v: Option<&Value>, field: &str) -> Result<Vec<String>, String> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                other => Err(format!("`{field}` holds {other}, not a string")),
            })
            .collect(),
        Some(other) => Err(format!(
            "`{field}` must be an array of strings, got {other}"
        )),
    }
}

fn string_map(v: Option<&Value>, field: &str) -> Result<BTreeMap<String, String>, String> {
    match v {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                Value::Number(_) | Value::Bool(_) => Ok((k.clone(), v.to_string())),
                other => Err(format!("`{field}.{k}` is {other}, not a string")),
            })
            .collect(),
        Some(other) => Err(format!(
            "`{field}` must be an object of strings, got {other}"
        )),
    }
}

fn sanitize_name(raw: &str) -> String {
    if is_valid_upstream_name(raw) {
        return raw.to_owned();
    }
    let mut s: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if s.is_empty() {
        s.push_str("server");
    }
    s
}

/// Removes `//` and `/* */` comments and trailing commas outside strings
/// (VS Code's mcp.json is JSON with comments).
fn strip_jsonc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut in_string = false;
    let mut escaped = false;
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut prev = ' ';
                for c in chars.by_ref() {
                    if prev == '*' && c == '/' {
                        break;
                    }
                    if c == '\n' {
                        out.push('\n');
                    }
                    prev = c;
                }
            }
            '}' | ']' => {
                // Drop a comma that only whitespace separates from the closer.
                let trimmed = out.trim_end();
                if trimmed.ends_with(',') {
                    let keep = trimmed.len() - 1;
                    let tail = out[trimmed.len()..].to_owned();
                    out.truncate(keep);
                    out.push_str(&tail);
                }
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out
}

/// Appends one `[[upstreams]]` table per server to `existing` (a
/// `cellgate.toml` text, possibly empty), leaving the existing text
/// untouched. Refuses names that are already taken (regardless of case),
/// naming them. The result is checked to parse back to the same upstreams.
pub fn render_upstreams_toml(
    existing: &str,
    upstreams: &[UpstreamConfig],
) -> Result<String, ImportError> {
    let table: toml::Table =
        toml::from_str(existing).map_err(|e| ImportError::Toml(e.message().to_owned()))?;
    let before: Vec<UpstreamConfig> = match table.get("upstreams") {
        None => Vec::new(),
        Some(v) => v.clone().try_into().map_err(|e: toml::de::Error| {
            ImportError::Toml(format!("`upstreams`: {}", e.message()))
        })?,
    };
    let mut taken: HashSet<String> = before.iter().map(|u| u.name.to_ascii_lowercase()).collect();
    let mut dups = Vec::new();
    for u in upstreams {
        if !taken.insert(u.name.to_ascii_lowercase()) {
            dups.push(u.name.clone());
        }
    }
    if !dups.is_empty() {
        return Err(ImportError::Duplicates(dups));
    }
    let mut out = existing.to_owned();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    for u in upstreams {
        if !out.is_empty() {
            out.push('\n');
        }
        render_one(&mut out, u);
    }
    // The appended text must read back as exactly these upstreams.
    let check: toml::Table = toml::from_str(&out).map_err(|e| {
        ImportError::Append(format!(
            "the result does not parse ({}); is `upstreams` written as an inline array?",
            e.message()
        ))
    })?;
    let after: Vec<UpstreamConfig> = check
        .get("upstreams")
        .cloned()
        .map(|v| v.try_into())
        .transpose()
        .map_err(|e: toml::de::Error| ImportError::Append(e.message().to_owned()))?
        .unwrap_or_default();
    let expected: Vec<UpstreamConfig> = before
        .into_iter()
        .chain(upstreams.iter().cloned())
        .collect();
    if after != expected {
        return Err(ImportError::Append(
            "the result does not read back as the existing plus the new upstreams".into(),
        ));
    }
    Ok(out)
}

fn render_one(out: &mut String, u: &UpstreamConfig) {
    let defaults = UpstreamConfig::new(u.name.clone(), u.transport.clone());
    out.push_str("[[upstreams]]\n");
    push_kv(out, "name", &quote(&u.name));
    if !u.enabled {
        push_kv(out, "enabled", "false");
    }
    if u.timeout_secs != defaults.timeout_secs {
        push_kv(out, "timeout_secs", &u.timeout_secs.to_string());
    }
    if u.connect_timeout_secs != defaults.connect_timeout_secs {
        push_kv(
            out,
            "connect_timeout_secs",
            &u.connect_timeout_secs.to_string(),
        );
    }
    if u.max_message_bytes != defaults.max_message_bytes {
        push_kv(out, "max_message_bytes", &u.max_message_bytes.to_string());
    }
    if u.forward_roots {
        push_kv(out, "forward_roots", "true");
    }
    if u.replicas != defaults.replicas
        && let Ok(v) = toml::Value::try_from(&u.replicas)
    {
        push_kv(out, "replicas", &v.to_string());
    }
    let sub = |out: &mut String, table: &str, value: Value| {
        if let Ok(toml::Value::Table(t)) = toml::Value::try_from(value) {
            out.push_str(&format!("[upstreams.{table}]\n"));
            for (k, v) in t {
                push_kv(out, &key(&k), &v.to_string());
            }
        }
    };
    match &u.transport {
        UpstreamTransport::Stdio(s) => {
            out.push_str("[upstreams.transport]\n");
            push_kv(out, "type", "\"stdio\"");
            push_kv(out, "command", &quote(&s.command));
            if !s.args.is_empty() {
                let args: Vec<String> = s.args.iter().map(|a| quote(a)).collect();
                push_kv(out, "args", &format!("[{}]", args.join(", ")));
            }
            if let Some(cwd) = &s.cwd {
                push_kv(out, "cwd", &quote(cwd));
            }
            push_map(out, "upstreams.transport.env", &s.env);
        }
        UpstreamTransport::Http(h) | UpstreamTransport::Sse(h) => {
            let kind = if matches!(u.transport, UpstreamTransport::Sse(_)) {
                "sse"
            } else {
                "http"
            };
            out.push_str("[upstreams.transport]\n");
            push_kv(out, "type", &quote(kind));
            push_kv(out, "url", &quote(&h.url));
            push_map(out, "upstreams.transport.headers", &h.headers);
        }
    }
    if u.health != defaults.health {
        sub(
            out,
            "health",
            serde_json::to_value(&u.health).unwrap_or_default(),
        );
    }
    if u.restart != defaults.restart {
        sub(
            out,
            "restart",
            serde_json::to_value(&u.restart).unwrap_or_default(),
        );
    }
    if u.breaker != defaults.breaker {
        sub(
            out,
            "breaker",
            serde_json::to_value(&u.breaker).unwrap_or_default(),
        );
    }
    if u.retry != defaults.retry {
        sub(
            out,
            "retry",
            serde_json::to_value(&u.retry).unwrap_or_default(),
        );
    }
    if u.cache != defaults.cache {
        sub(
            out,
            "cache",
            serde_json::to_value(&u.cache).unwrap_or_default(),
        );
    }
    if let Some(e) = &u.escalation {
        sub(
            out,
            "escalation",
            serde_json::to_value(e).unwrap_or_default(),
        );
    }
}

fn push_kv(out: &mut String, k: &str, v: &str) {
    out.push_str(k);
    out.push_str(" = ");
    out.push_str(v);
    out.push('\n');
}

fn push_map(out: &mut String, table: &str, map: &BTreeMap<String, String>) {
    if map.is_empty() {
        return;
    }
    out.push_str(&format!("[{table}]\n"));
    for (k, v) in map {
        push_kv(out, &key(k), &quote(v));
    }
}

fn key(k: &str) -> String {
    if !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        k.to_owned()
    } else {
        quote(k)
    }
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04X}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stdio(u: &UpstreamConfig) -> &StdioTransport {
        match &u.transport {
            UpstreamTransport::Stdio(s) => s,
            other => panic!("not stdio: {other:?}"),
        }
    }

    #[test]
    fn claude_desktop_and_cursor() {
        let text = r#"{
          "mcpServers": {
            "filesystem": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem", "/tmp"]},
            "github.com/acme": {"command": "gh-mcp", "env": {"TOKEN": "x", "N": 3}},
            "remote": {"url": "https://mcp.example.com/mcp", "headers": {"Authorization": "Bearer t"}},
            "legacy": {"url": "http://127.0.0.1:3001/sse"},
            "typed": {"type": "sse", "url": "http://127.0.0.1:3001/events"},
            "off": {"command": "x", "disabled": true}
          }
        }"#;
        let ups = import_mcp_servers(text).unwrap();
        let names: Vec<&str> = ups.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "filesystem",
                "github-com-acme",
                "remote",
                "legacy",
                "typed",
                "off"
            ]
        );
        assert_eq!(stdio(&ups[0]).command, "npx");
        assert_eq!(stdio(&ups[0]).args.len(), 3);
        assert_eq!(stdio(&ups[1]).env["N"], "3");
        assert!(
            matches!(&ups[2].transport, UpstreamTransport::Http(h) if h.headers["Authorization"] == "Bearer t")
        );
        assert!(matches!(&ups[3].transport, UpstreamTransport::Sse(_)));
        assert!(matches!(&ups[4].transport, UpstreamTransport::Sse(_)));
        assert!(!ups[5].enabled && ups[0].enabled);
    }

    #[test]
    fn vscode_with_comments_and_trailing_commas() {
        let text = r#"{
          // Servers of this workspace
          "inputs": [{"type": "promptString", "id": "tok"}],
          "servers": {
            "time": {"type": "stdio", "command": "uvx", "args": ["mcp-server-time"], "cwd": "/w", /* note */},
            "api": {"type": "http", "url": "https://api.example.com/mcp", "headers": {"X-Key": "${input:tok}"}},
            "old": {"type": "sse", "url": "https://old.example.com/sse"},
          },
        }"#;
        let ups = import_mcp_servers(text).unwrap();
        assert_eq!(ups.len(), 3);
        assert_eq!(stdio(&ups[0]).cwd.as_deref(), Some("/w"));
        assert!(
            matches!(&ups[1].transport, UpstreamTransport::Http(h) if h.headers["X-Key"] == "${input:tok}")
        );
        assert!(matches!(&ups[2].transport, UpstreamTransport::Sse(_)));
        // Comment markers inside strings are kept.
        let ups =
            import_mcp_servers(r#"{"servers": {"u": {"url": "http://h/a//b/*c*/"}}}"#).unwrap();
        assert!(
            matches!(&ups[0].transport, UpstreamTransport::Http(h) if h.url == "http://h/a//b/*c*/")
        );
    }

    #[test]
    fn bad_input_is_named() {
        for (text, needle) in [
            ("{", "not valid JSON"),
            ("{}", "mcpServers"),
            (r#"{"mcpServers": []}"#, "mcpServers"),
            (
                r#"{"mcpServers": {"a": 1}}"#,
                "server `a`: is not an object",
            ),
            (
                r#"{"mcpServers": {"a": {}}}"#,
                "neither `command` nor `url`",
            ),
            (
                r#"{"mcpServers": {"a": {"type": "ws", "url": "http://h/"}}}"#,
                "unknown type",
            ),
            (
                r#"{"mcpServers": {"a": {"url": "ftp://h/"}}}"#,
                "http or https",
            ),
            (
                r#"{"mcpServers": {"a": {"command": "x", "args": "y"}}}"#,
                "array of strings",
            ),
            (
                r#"{"mcpServers": {"a b": {"command": "x"}, "a-b": {"command": "y"}}}"#,
                "already has",
            ),
        ] {
            let e = import_mcp_servers(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn render_appends_and_reads_back() {
        let text = r#"{"mcpServers": {
            "fs": {"command": "npx", "args": ["-y", "server \"quoted\"", "C:\\dir"], "env": {"A B": "1"}},
            "remote": {"url": "https://mcp.example.com/mcp", "headers": {"Authorization": "Bearer t"}}
        }}"#;
        let ups = import_mcp_servers(text).unwrap();
        let existing = "# my gateway\n[server]\nlisten = \"127.0.0.1:9000\"";
        let out = render_upstreams_toml(existing, &ups).unwrap();
        assert!(out.starts_with(existing), "existing text untouched");
        let config = cellgate_config::check_text(&out).unwrap();
        assert_eq!(config.upstreams, ups);
        assert_eq!(config.server.listen, "127.0.0.1:9000");

        // From empty, then appending more to the result.
        let first = render_upstreams_toml("", &ups[..1]).unwrap();
        assert!(first.starts_with("[[upstreams]]"));
        let second = render_upstreams_toml(&first, &ups[1..]).unwrap();
        assert_eq!(cellgate_config::check_text(&second).unwrap().upstreams, ups);

        // Non-default settings survive.
        let mut tuned = ups[1].clone();
        tuned.name = "tuned".into();
        tuned.enabled = false;
        tuned.timeout_secs = 7;
        tuned.breaker.failure_threshold = 2;
        tuned.retry.max_attempts = 2;
        tuned.cache.tools = vec!["get_*".into()];
        tuned.escalation = Some(cellgate_config::EscalationConfig {
            webhook_url: Some("https://hooks.example/x".into()),
            headers: [("Authorization".to_owned(), "Bearer h".to_owned())].into(),
            timeout_secs: 3,
        });
        let mut pooled = ups[0].clone();
        pooled.name = "pooled".into();
        pooled.replicas = cellgate_config::Replicas::Count(3);
        let mut spread = tuned.clone();
        spread.name = "spread".into();
        spread.escalation = None;
        if let UpstreamTransport::Http(h) | UpstreamTransport::Sse(h) = &mut spread.transport {
            h.url.clear();
        }
        spread.replicas = cellgate_config::Replicas::Endpoints(vec![
            cellgate_config::ReplicaEndpoint {
                url: "http://a.example/mcp".into(),
                headers: Default::default(),
            },
            cellgate_config::ReplicaEndpoint {
                url: "http://b.example/mcp".into(),
                headers: [("X-Zone".to_owned(), "b".to_owned())].into(),
            },
        ]);
        let all = [tuned, pooled, spread];
        let out = render_upstreams_toml("", &all).unwrap();
        assert_eq!(cellgate_config::check_text(&out).unwrap().upstreams, all);
    }

    #[test]
    fn render_refuses_duplicates_naming_them() {
        let ups = import_mcp_servers(
            r#"{"mcpServers": {"fs": {"command": "a"}, "web": {"url": "http://h/"}}}"#,
        )
        .unwrap();
        let existing = render_upstreams_toml("", &ups[..1]).unwrap();
        let mut again = ups.clone();
        again[1].name = "FS".into();
        match render_upstreams_toml(&existing, &again) {
            Err(ImportError::Duplicates(names)) => assert_eq!(names, ["fs", "FS"]),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            render_upstreams_toml("not toml = = 1", &ups),
            Err(ImportError::Toml(_))
        ));
        assert!(matches!(
            render_upstreams_toml("upstreams = []\n", &ups),
            Err(ImportError::Append(_))
        ));
    }
}
