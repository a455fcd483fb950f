//! Tool-definition pinning (rug-pull protection): the first definition of a
//! tool seen from an upstream is pinned by its fingerprint; a later,
//! different definition is held back until an operator approves it.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use cellgate_kernel::{BoxFuture, Tool};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The fields of a tool definition that are pinned.
pub const PINNED_FIELDS: [&str; 5] = [
    "name",
    "description",
    "inputSchema",
    "outputSchema",
    "annotations",
];

/// Hex SHA-256 of the canonical JSON (keys sorted at every level, no
/// whitespace) of the tool's pinned fields, absent fields left out.
pub fn tool_fingerprint(tool: &Tool) -> String {
    let mut obj = Map::new();
    obj.insert("name".into(), Value::String(tool.name.clone()));
    if let Some(d) = &tool.description {
        obj.insert("description".into(), Value::String(d.clone()));
    }
    obj.insert("inputSchema".into(), tool.input_schema.clone());
    for key in ["outputSchema", "annotations"] {
        if let Some(v) = tool.extra.get(key) {
            obj.insert(key.into(), v.clone());
        }
    }
    let mut text = String::new();
    canonical_json(&Value::Object(obj), &mut text);
    let digest = Sha256::digest(text.as_bytes());
    let mut hex = String::with_capacity(64);
    for b in digest {
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

/// Writes `v` as JSON with object keys sorted (by their UTF-16-agnostic
/// byte order) and no insignificant whitespace.
pub fn canonical_json(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical_json(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// A pin store failed; with pinning on, the tools it could not check are
/// held back (fail closed).
#[derive(Debug, Clone, thiserror::Error)]
#[error("pin store: {0}")]
pub struct PinStoreError(pub String);

/// Where pinned fingerprints are kept, by upstream and tool (the name the
/// upstream gives it). The in-memory [`MemoryPinStore`] forgets on restart;
/// a store-backed implementation keeps pins across restarts.
pub trait PinStore: Send + Sync + 'static {
    /// The pinned fingerprint, if the tool was seen before.
    fn get<'a>(
        &'a self,
        upstream: &'a str,
        tool: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, PinStoreError>>;
    /// Pins (or re-pins, on approval) a fingerprint.
    fn set<'a>(
        &'a self,
        upstream: &'a str,
        tool: &'a str,
        fingerprint: &'a str,
    ) -> BoxFuture<'a, Result<(), PinStoreError>>;
}

/// Pins in memory.
#[derive(Debug, Default)]
pub struct MemoryPinStore {
    pins: Mutex<HashMap<(String, String), String>>,
}

impl MemoryPinStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl PinStore for MemoryPinStore {
    fn get<'a>(
        &'a self,
        upstream: &'a str,
        tool: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, PinStoreError>> {
        let pin = self
            .pins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(upstream.to_owned(), tool.to_owned()))
            .cloned();
        Box::pin(async move { Ok(pin) })
    }

    fn set<'a>(
        &'a self,
        upstream: &'a str,
        tool: &'a str,
        fingerprint: &'a str,
    ) -> BoxFuture<'a, Result<(), PinStoreError>> {
        self.pins.lock().unwrap_or_else(|e| e.into_inner()).insert(
            (upstream.to_owned(), tool.to_owned()),
            fingerprint.to_owned(),
        );
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fingerprint_ignores_key_order_and_unpinned_fields() {
        let a: Tool = serde_json::from_value(json!({
            "name": "t", "description": "d",
            "inputSchema": {"type": "object", "properties": {"a": {"type": "string"}, "b": {}}},
            "annotations": {"readOnlyHint": true, "title": "x"},
            "icons": [{"src": "a.png"}]
        }))
        .unwrap();
        let b: Tool = serde_json::from_value(json!({
            "annotations": {"title": "x", "readOnlyHint": true},
            "inputSchema": {"properties": {"b": {}, "a": {"type": "string"}}, "type": "object"},
            "description": "d", "name": "t",
            "icons": [{"src": "other.png"}]
        }))
        .unwrap();
        assert_eq!(tool_fingerprint(&a), tool_fingerprint(&b));
        assert_eq!(tool_fingerprint(&a).len(), 64);
        for changed in [
            json!({"name": "t", "description": "d ", "inputSchema": a.input_schema}),
            json!({"name": "t", "description": "d", "inputSchema": {"type": "object"}}),
        ] {
            let c: Tool = serde_json::from_value(changed).unwrap();
            assert_ne!(tool_fingerprint(&a), tool_fingerprint(&c));
        }
        let with_output = a.clone().with("outputSchema", json!({"type": "object"}));
        assert_ne!(tool_fingerprint(&a), tool_fingerprint(&with_output));
    }

    #[test]
    fn canonical_json_is_compact_and_sorted() {
        let mut s = String::new();
        canonical_json(&json!({"b": [1, {"d": "\"", "c": null}], "a": 1.5}), &mut s);
        assert_eq!(s, r#"{"a":1.5,"b":[1,{"c":null,"d":"\""}]}"#);
    }

    #[tokio::test]
    async fn memory_store_keeps_pins_per_upstream_and_tool() {
        let s = MemoryPinStore::new();
        assert_eq!(s.get("u", "t").await.unwrap(), None);
        s.set("u", "t", "h1").await.unwrap();
        s.set("v", "t", "h2").await.unwrap();
        assert_eq!(s.get("u", "t").await.unwrap().as_deref(), Some("h1"));
        assert_eq!(s.get("v", "t").await.unwrap().as_deref(), Some("h2"));
        s.set("u", "t", "h3").await.unwrap();
        assert_eq!(s.get("u", "t").await.unwrap().as_deref(), Some("h3"));
    }
}
