//! Routing headers of the stateless revision over HTTP (SEP-2243): the
//! headers repeat parts of the body (`Mcp-Method`, `Mcp-Name`, and
//! `Mcp-Param-*` for tool arguments a tool marks with `x-mcp-header`) so that
//! proxies can route without parsing JSON. A server must refuse a request
//! whose headers disagree with its body, or an intermediary could be made to
//! route on a value the server never acts on.

use axum::http::HeaderMap;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use cellgate_kernel::{McpError, Tool, codes};
use serde_json::{Map, Value};

pub const METHOD_HEADER: &str = "mcp-method";
pub const NAME_HEADER: &str = "mcp-name";
pub const PARAM_HEADER_PREFIX: &str = "mcp-param-";
/// The schema annotation naming a tool argument's header.
pub const X_MCP_HEADER: &str = "x-mcp-header";

/// A header that disagrees with the body (answered with 400 and -32020).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderMismatch {
    #[error("header {0} is missing; it must repeat the request body")]
    Missing(String),
    #[error("header {header} is {found:?} but the body says {expected:?}")]
    Differs {
        header: String,
        found: String,
        expected: String,
    },
    #[error("header {0} is sent more than once")]
    Repeated(String),
    #[error("header {0} is not valid: {1}")]
    Malformed(String, &'static str),
    #[error("header {0} is sent but the body has no value for it")]
    Unexpected(String),
}

impl From<HeaderMismatch> for McpError {
    fn from(e: HeaderMismatch) -> Self {
        McpError::new(codes::HEADER_MISMATCH, e.to_string())
    }
}

/// The body field that `Mcp-Name` repeats for a method, and whether the
/// header is required (the core methods) or checked only when sent (tasks).
fn name_field(method: &str) -> Option<(&'static str, bool)> {
    match method {
        "tools/call" | "prompts/get" => Some(("name", true)),
        "resources/read" => Some(("uri", true)),
        "tasks/get" | "tasks/update" | "tasks/cancel" => Some(("taskId", false)),
        _ => None,
    }
}

/// One header's value, with surrounding whitespace removed (RFC 9110 §5.5).
fn single<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, HeaderMismatch> {
    let mut values = headers.get_all(name).iter();
    let Some(v) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(HeaderMismatch::Repeated(name.to_owned()));
    }
    let v = v
        .to_str()
        .map_err(|_| HeaderMismatch::Malformed(name.to_owned(), "not visible ASCII"))?;
    Ok(Some(v.trim_matches([' ', '\t'])))
}

/// Decodes a header value: `=?base64?…?=` carries base64 (canonical, padded)
/// of UTF-8; anything else is taken literally.
pub fn decode_value(name: &str, raw: &str) -> Result<String, HeaderMismatch> {
    let Some(payload) = raw
        .strip_prefix("=?base64?")
        .and_then(|r| r.strip_suffix("?="))
    else {
        return Ok(raw.to_owned());
    };
    let bytes = STANDARD
        .decode(payload)
        .map_err(|_| HeaderMismatch::Malformed(name.to_owned(), "invalid base64"))?;
    String::from_utf8(bytes).map_err(|_| HeaderMismatch::Malformed(name.to_owned(), "not UTF-8"))
}

fn compare(name: &str, found: Option<&str>, expected: Option<&str>) -> Result<(), HeaderMismatch> {
    match (found, expected) {
        (None, None) => Ok(()),
        (None, Some(_)) => Err(HeaderMismatch::Missing(name.to_owned())),
        (Some(_), None) => Err(HeaderMismatch::Unexpected(name.to_owned())),
        (Some(raw), Some(expected)) => {
            let found = decode_value(name, raw)?;
            if found == expected {
                Ok(())
            } else {
                Err(HeaderMismatch::Differs {
                    header: name.to_owned(),
                    found,
                    expected: expected.to_owned(),
                })
            }
        }
    }
}

/// Checks `Mcp-Method` and `Mcp-Name` against the body. Method values are
/// case-sensitive; header names are not (HeaderMap folds them).
pub fn check_routing(
    headers: &HeaderMap,
    method: &str,
    params: &Map<String, Value>,
) -> Result<(), HeaderMismatch> {
    let found = single(headers, METHOD_HEADER)?;
    compare("Mcp-Method", found, Some(method))?;
    if let Some((field, required)) = name_field(method) {
        let expected = params.get(field).and_then(Value::as_str);
        let found = single(headers, NAME_HEADER)?;
        if required || found.is_some() {
            compare("Mcp-Name", found, expected)?;
        }
    }
    Ok(())
}

/// How an argument value is written in its header; `None` when it has no
/// header form (absent, null, objects, arrays).
fn render(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Checks the `Mcp-Param-*` headers of a `tools/call` against the arguments
/// the tool's input schema marks with `x-mcp-header` (top-level properties).
pub fn check_params(
    headers: &HeaderMap,
    tool: &Tool,
    arguments: &Map<String, Value>,
) -> Result<(), HeaderMismatch> {
    let Some(props) = tool
        .input_schema
        .get("properties")
        .and_then(Value::as_object)
    else {
        return Ok(());
    };
    for (prop, schema) in props {
        let Some(token) = schema.get(X_MCP_HEADER).and_then(Value::as_str) else {
            continue;
        };
        let name = format!("Mcp-Param-{token}");
        let found = single(headers, &name.to_ascii_lowercase())?;
        let expected = arguments.get(prop).and_then(render);
        compare(&name, found, expected.as_deref())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use serde_json::json;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn p(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn routing_headers_must_repeat_the_body() {
        let call = p(json!({"name": "echo"}));
        let ok = headers(&[("MCP-METHOD", "tools/call"), ("mcp-name", "  echo  ")]);
        assert_eq!(check_routing(&ok, "tools/call", &call), Ok(()));
        for bad in [
            headers(&[("mcp-name", "echo")]),
            headers(&[("mcp-method", "TOOLS/CALL"), ("mcp-name", "echo")]),
            headers(&[("mcp-method", "tools/call")]),
            headers(&[("mcp-method", "tools/call"), ("mcp-name", "other")]),
            headers(&[
                ("mcp-method", "tools/call"),
                ("mcp-name", "echo"),
                ("mcp-name", "echo"),
            ]),
        ] {
            assert!(check_routing(&bad, "tools/call", &call).is_err(), "{bad:?}");
        }
        let b64 = headers(&[
            ("mcp-method", "tools/call"),
            ("mcp-name", "=?base64?ZWNobw==?="),
        ]);
        assert_eq!(check_routing(&b64, "tools/call", &call), Ok(()));
        // Tasks: Mcp-Name is optional but must match when sent.
        let get = p(json!({"taskId": "abc"}));
        assert!(check_routing(&headers(&[("mcp-method", "tasks/get")]), "tasks/get", &get).is_ok());
        assert!(
            check_routing(
                &headers(&[("mcp-method", "tasks/get"), ("mcp-name", "xyz")]),
                "tasks/get",
                &get
            )
            .is_err()
        );
    }

    #[test]
    fn param_headers_decode_base64_strictly() {
        let tool = Tool::new(
            "t",
            "d",
            json!({"type": "object", "properties": {"region": {"type": "string", "x-mcp-header": "Region"}}}),
        );
        let args = p(json!({"region": "Hello"}));
        let with = |v: &str| headers(&[("mcp-param-region", v)]);
        assert_eq!(check_params(&with("Hello"), &tool, &args), Ok(()));
        assert_eq!(
            check_params(&with("=?base64?SGVsbG8=?="), &tool, &args),
            Ok(())
        );
        for bad in ["=?base64?SGVsbG8?=", "=?base64?SGVs!!!bG8=?=", "Bye"] {
            assert!(check_params(&with(bad), &tool, &args).is_err(), "{bad}");
        }
        assert_eq!(
            check_params(&HeaderMap::new(), &tool, &args),
            Err(HeaderMismatch::Missing("Mcp-Param-Region".into()))
        );
        assert_eq!(
            check_params(&with("Hello"), &tool, &Map::new()),
            Err(HeaderMismatch::Unexpected("Mcp-Param-Region".into()))
        );
        let literal = p(json!({"region": "=?base64?SGVsbG8="}));
        assert_eq!(
            check_params(&with("=?base64?SGVsbG8="), &tool, &literal),
            Ok(())
        );
    }
}
