//! Definitions that providers publish. Each keeps the fields cellgate routes
//! on as typed fields and every other field verbatim in `extra`, so that a
//! definition from an upstream server passes through unchanged (including
//! fields from protocol revisions newer than this code).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A tool definition as listed by `tools/list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(rename = "inputSchema")]
    pub input_schema: Value,
    /// title, outputSchema, annotations, icons, _meta, …
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Tool {
    /// A tool with an object input schema; add the rest with [`Tool::with`].
    pub fn new(
        name: impl Into<String>,
        description: impl Into<String>,
        input_schema: Value,
    ) -> Self {
        Self {
            name: name.into(),
            description: Some(description.into()),
            input_schema,
            extra: Map::new(),
        }
    }
    /// Sets an extra field (`title`, `outputSchema`, `annotations`, `icons`, …).
    pub fn with(mut self, key: &str, value: Value) -> Self {
        self.extra.insert(key.to_owned(), value);
        self
    }
    pub fn output_schema(&self) -> Option<&Value> {
        self.extra.get("outputSchema")
    }
}

/// A concrete resource as listed by `resources/list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resource {
    pub uri: String,
    pub name: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Resource {
    pub fn new(uri: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            uri: uri.into(),
            name: name.into(),
            extra: Map::new(),
        }
    }
    pub fn with(mut self, key: &str, value: Value) -> Self {
        self.extra.insert(key.to_owned(), value);
        self
    }
}

/// A parameterised resource (RFC 6570 level-1 template).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceTemplate {
    #[serde(rename = "uriTemplate")]
    pub uri_template: String,
    pub name: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ResourceTemplate {
    pub fn new(uri_template: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            uri_template: uri_template.into(),
            name: name.into(),
            extra: Map::new(),
        }
    }
    pub fn with(mut self, key: &str, value: Value) -> Self {
        self.extra.insert(key.to_owned(), value);
        self
    }
    /// Matches `uri` against the template; returns the variables on success.
    /// Supports simple `{var}` expressions, each matching a non-empty run of
    /// characters other than `/`.
    pub fn match_uri(&self, uri: &str) -> Option<Map<String, Value>> {
        let mut vars = Map::new();
        let mut rest = uri;
        let mut tpl = self.uri_template.as_str();
        while !tpl.is_empty() {
            if let Some(after_brace) = tpl.strip_prefix('{') {
                let end = after_brace.find('}')?;
                let name = &after_brace[..end];
                tpl = &after_brace[end + 1..];
                // The variable runs until the next literal of the template.
                let next_lit_len = tpl.find('{').unwrap_or(tpl.len());
                let next_lit = &tpl[..next_lit_len];
                let stop = if next_lit.is_empty() {
                    rest.len()
                } else {
                    rest.find(next_lit)?
                };
                let value = &rest[..stop];
                if value.is_empty() || value.contains('/') {
                    return None;
                }
                vars.insert(name.to_owned(), Value::String(value.to_owned()));
                rest = &rest[stop..];
            } else {
                let lit_len = tpl.find('{').unwrap_or(tpl.len());
                let lit = &tpl[..lit_len];
                rest = rest.strip_prefix(lit)?;
                tpl = &tpl[lit_len..];
            }
        }
        rest.is_empty().then_some(vars)
    }
}

/// A prompt as listed by `prompts/list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prompt {
    pub name: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Prompt {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            extra: Map::new(),
        }
    }
    pub fn with(mut self, key: &str, value: Value) -> Self {
        self.extra.insert(key.to_owned(), value);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn template_matching() {
        let t = ResourceTemplate::new("test://template/{id}/data", "t");
        assert_eq!(
            t.match_uri("test://template/42/data").unwrap()["id"],
            json!("42")
        );
        assert!(t.match_uri("test://template//data").is_none());
        assert!(t.match_uri("test://template/4/2/data").is_none());
        assert!(t.match_uri("test://template/42/datax").is_none());
        assert!(t.match_uri("other://template/42/data").is_none());
        let two = ResourceTemplate::new("a://{x}-{y}", "t");
        let v = two.match_uri("a://1-2").unwrap();
        assert_eq!((v["x"].as_str(), v["y"].as_str()), (Some("1"), Some("2")));
    }

    #[test]
    fn unknown_fields_round_trip() {
        let raw = json!({"name":"t","inputSchema":{"type":"object"},"icons":[{"src":"x"}],"futureField":1});
        let tool: Tool = serde_json::from_value(raw.clone()).unwrap();
        assert_eq!(serde_json::to_value(&tool).unwrap(), raw);
    }
}
