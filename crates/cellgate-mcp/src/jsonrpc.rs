//! JSON-RPC 2.0 framing: from bytes to typed messages, with the checks that
//! must happen before a parser sees hostile input.

use cellgate_kernel::McpError;
use serde_json::{Map, Value, json};

/// One incoming JSON-RPC message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Request {
        id: Value,
        method: String,
        params: Option<Map<String, Value>>,
    },
    Notification {
        method: String,
        params: Option<Map<String, Value>>,
    },
    Response {
        id: Value,
        outcome: Result<Value, McpError>,
    },
}

/// What a body held: one message or a batch (2025-03-26 and earlier).
#[derive(Debug)]
pub enum Payload {
    Single(Message),
    Batch(Vec<Result<Message, Box<Rejection>>>),
}

/// A message that could not be accepted: the error and the id to answer
/// with (`null` when none could be read).
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub id: Value,
    pub error: McpError,
}

/// Returns the nesting depth of a JSON text without parsing it, so that a
/// body of ten thousand `[` is refused before any recursive parser runs.
pub fn nesting_depth_exceeds(bytes: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Parses a body into messages. `max_depth` bounds nesting. The rejection
/// is boxed: it is large and the rare path.
pub fn parse(bytes: &[u8], max_depth: usize) -> Result<Payload, Box<Rejection>> {
    let reject = |error| {
        Box::new(Rejection {
            id: Value::Null,
            error,
        })
    };
    let text = std::str::from_utf8(bytes).map_err(|e| {
        reject(McpError::parse_error(format!(
            "body is not valid UTF-8 (first bad byte at offset {})",
            e.valid_up_to()
        )))
    })?;
    if nesting_depth_exceeds(bytes, max_depth) {
        return Err(reject(McpError::parse_error(format!(
            "JSON nesting is deeper than the limit of {max_depth} levels"
        ))));
    }
    let value: Value = serde_json::from_str(text)
        .map_err(|e| reject(McpError::parse_error(format!("invalid JSON: {e}"))))?;
    match value {
        Value::Array(items) => {
            if items.is_empty() {
                return Err(reject(McpError::invalid_request("empty batch")));
            }
            Ok(Payload::Batch(items.into_iter().map(classify).collect()))
        }
        other => classify(other).map(Payload::Single),
    }
}

fn valid_id(id: &Value) -> bool {
    match id {
        Value::String(_) => true,
        Value::Number(n) => n.is_i64() || n.is_u64(),
        _ => false,
    }
}

/// Checks the shape of one JSON-RPC message.
pub fn classify(value: Value) -> Result<Message, Box<Rejection>> {
    let Value::Object(mut obj) = value else {
        return Err(Box::new(Rejection {
            id: Value::Null,
            error: McpError::invalid_request("a JSON-RPC message must be an object"),
        }));
    };
    let id = obj.remove("id");
    let answer_id = id.clone().filter(valid_id).unwrap_or(Value::Null);
    let bad = |msg: String| {
        Box::new(Rejection {
            id: answer_id.clone(),
            error: McpError::invalid_request(msg),
        })
    };
    match obj.get("jsonrpc") {
        Some(Value::String(v)) if v == "2.0" => {}
        Some(other) => return Err(bad(format!("field `jsonrpc` must be \"2.0\", got {other}"))),
        None => return Err(bad("field `jsonrpc` is missing (must be \"2.0\")".into())),
    }
    if let Some(method) = obj.remove("method") {
        let Value::String(method) = method else {
            return Err(bad("field `method` must be a string".into()));
        };
        let params = match obj.remove("params") {
            None | Some(Value::Null) => None,
            Some(Value::Object(p)) => Some(p),
            Some(_) => {
                return Err(Box::new(Rejection {
                    id: answer_id,
                    error: McpError::invalid_params("field `params` must be an object"),
                }));
            }
        };
        return match id {
            None => Ok(Message::Notification { method, params }),
            Some(id) if valid_id(&id) => Ok(Message::Request { id, method, params }),
            Some(other) => Err(bad(format!(
                "field `id` must be a string or an integer, got {other}"
            ))),
        };
    }
    let Some(id) = id else {
        return Err(bad("a message needs `method` (request or notification) or `id` with `result`/`error` (response)".into()));
    };
    if let Some(result) = obj.remove("result") {
        return Ok(Message::Response {
            id,
            outcome: Ok(result),
        });
    }
    if let Some(error) = obj.remove("error") {
        let error = serde_json::from_value::<McpError>(error)
            .map_err(|e| bad(format!("field `error` is not a JSON-RPC error object: {e}")))?;
        return Ok(Message::Response {
            id,
            outcome: Err(error),
        });
    }
    Err(bad("a response needs `result` or `error`".into()))
}

pub fn response(id: &Value, outcome: Result<Value, McpError>) -> Value {
    match outcome {
        Ok(result) => json!({ "jsonrpc": "2.0", "id": id, "result": result }),
        Err(error) => json!({ "jsonrpc": "2.0", "id": id, "error": error }),
    }
}

pub fn notification(method: &str, params: Value) -> Value {
    json!({ "jsonrpc": "2.0", "method": method, "params": params })
}

pub fn request(id: &Value, method: &str, params: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cellgate_kernel::codes;

    fn err_code(b: &[u8]) -> i64 {
        match parse(b, 64) {
            Err(r) => r.error.code,
            Ok(Payload::Single(m)) => panic!("accepted {m:?}"),
            Ok(Payload::Batch(_)) => panic!("accepted batch"),
        }
    }

    #[test]
    fn rejects_bad_input_with_exact_codes() {
        assert_eq!(err_code(b"{not json"), codes::PARSE_ERROR);
        assert_eq!(err_code(b"\xff\xfe"), codes::PARSE_ERROR);
        assert_eq!(err_code(b"42"), codes::INVALID_REQUEST);
        assert_eq!(
            err_code(br#"{"id":1,"method":"x"}"#),
            codes::INVALID_REQUEST
        );
        assert_eq!(
            err_code(br#"{"jsonrpc":"1.0","id":1,"method":"x"}"#),
            codes::INVALID_REQUEST
        );
        assert_eq!(
            err_code(br#"{"jsonrpc":"2.0","id":1,"method":7}"#),
            codes::INVALID_REQUEST
        );
        assert_eq!(
            err_code(br#"{"jsonrpc":"2.0","id":true,"method":"x"}"#),
            codes::INVALID_REQUEST
        );
        assert_eq!(
            err_code(br#"{"jsonrpc":"2.0","id":1.5,"method":"x"}"#),
            codes::INVALID_REQUEST
        );
        assert_eq!(
            err_code(br#"{"jsonrpc":"2.0","id":1,"method":"x","params":[1]}"#),
            codes::INVALID_PARAMS
        );
        assert_eq!(
            err_code(br#"{"jsonrpc":"2.0","id":1}"#),
            codes::INVALID_REQUEST
        );
        assert_eq!(err_code(b"[]"), codes::INVALID_REQUEST);
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(err_code(deep.as_bytes()), codes::PARSE_ERROR);
    }

    #[test]
    fn depth_ignores_brackets_in_strings() {
        let s = format!(r#"{{"a":"{}"}}"#, "[".repeat(500));
        assert!(!nesting_depth_exceeds(s.as_bytes(), 4));
        assert!(!nesting_depth_exceeds(br#"{"a":"\"[[[[[["}"#, 2));
        assert!(nesting_depth_exceeds(b"[[[[[", 4));
    }

    #[test]
    fn classifies_messages() {
        let Ok(Payload::Single(Message::Request { id, method, params })) =
            parse(br#"{"jsonrpc":"2.0","id":"a","method":"ping"}"#, 8)
        else {
            panic!()
        };
        assert_eq!((id, method.as_str(), params), (json!("a"), "ping", None));
        assert!(matches!(
            parse(
                br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
                8
            ),
            Ok(Payload::Single(Message::Notification { .. }))
        ));
        assert!(matches!(
            parse(
                br#"{"jsonrpc":"2.0","id":3,"error":{"code":-1,"message":"no"}}"#,
                8
            ),
            Ok(Payload::Single(Message::Response {
                outcome: Err(_),
                ..
            }))
        ));
        let Ok(Payload::Batch(items)) =
            parse(br#"[{"jsonrpc":"2.0","id":1,"method":"ping"}, 5]"#, 8)
        else {
            panic!()
        };
        assert!(items[0].is_ok() && items[1].is_err());
    }
}
