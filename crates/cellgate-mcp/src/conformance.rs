//! The `conformance` provider (`cellgate serve --demo`): the tools, resources
//! and prompts the official MCP conformance suite calls, implemented for
//! real: the sampling tool asks the client's model, the progress tool sends
//! progress, the watched resource changes and notifies subscribers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use cellgate_kernel::{
    BoxFuture, CallContext, LogLevel, McpError, Prompt, Provider, ProviderEvent, Resource,
    ResourceTemplate, Tool,
};
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

/// A 1×1 red PNG.
pub const TEST_IMAGE_BASE64: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==";
/// A minimal WAV file.
pub const TEST_AUDIO_BASE64: &str = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA=";

const WATCHED_URI: &str = "test://watched-resource";
const TEMPLATE: &str = "test://template/{id}/data";

pub struct ConformanceProvider {
    events: broadcast::Sender<ProviderEvent>,
    watched_revision: AtomicU64,
}

impl ConformanceProvider {
    /// Creates the provider; inside a runtime it also starts the ticker that
    /// updates `test://watched-resource` every `watch_every`.
    pub fn new(watch_every: Duration) -> Arc<Self> {
        let (events, _) = broadcast::channel(64);
        let p = Arc::new(Self {
            events,
            watched_revision: AtomicU64::new(0),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            let weak: Weak<Self> = Arc::downgrade(&p);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(watch_every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let Some(p) = weak.upgrade() else { break };
                    p.watched_revision.fetch_add(1, Ordering::Relaxed);
                    let _ = p.events.send(ProviderEvent::ResourceUpdated {
                        uri: WATCHED_URI.into(),
                    });
                }
            });
        }
        p
    }
}

fn text(t: impl Into<String>) -> Value {
    json!({ "type": "text", "text": t.into() })
}

fn ok_text(t: impl Into<String>) -> Value {
    json!({ "content": [text(t)] })
}

fn tool_error(t: impl Into<String>) -> Value {
    json!({ "content": [text(t)], "isError": true })
}

fn empty_schema() -> Value {
    json!({ "type": "object", "properties": {} })
}

fn read_only() -> Value {
    json!({ "readOnlyHint": true, "idempotentHint": true, "openWorldHint": false })
}

fn tools() -> Vec<Tool> {
    let image_icon = json!([{ "src": format!("data:image/png;base64,{TEST_IMAGE_BASE64}"), "mimeType": "image/png", "sizes": ["1x1"] }]);
    vec![
        Tool::new("test_simple_text", "Tests simple text content response", empty_schema()).with("annotations", read_only()),
        Tool::new("test_image_content", "Tests image content response", empty_schema())
            .with("annotations", read_only())
            .with("icons", image_icon),
        Tool::new("test_audio_content", "Tests audio content response", empty_schema()).with("annotations", read_only()),
        Tool::new("test_embedded_resource", "Tests embedded resource content response", empty_schema())
            .with("annotations", read_only()),
        Tool::new(
            "test_multiple_content_types",
            "Tests response with multiple content types (text, image, resource)",
            empty_schema(),
        )
        .with("annotations", read_only()),
        Tool::new("test_tool_with_logging", "Tests tool that emits log messages during execution", empty_schema()),
        Tool::new("test_tool_with_progress", "Tests tool that reports progress notifications", empty_schema()),
        Tool::new("test_error_handling", "Tests error response handling", empty_schema()),
        Tool::new(
            "test_reconnection",
            "Tests SSE stream disconnection and client reconnection (SEP-1699): the server closes the stream mid-call and the result arrives after the client reconnects.",
            empty_schema(),
        ),
        Tool::new(
            "test_sampling",
            "Tests server-initiated sampling (LLM completion request)",
            json!({ "type": "object", "properties": { "prompt": { "type": "string", "description": "The prompt to send to the LLM" } }, "required": ["prompt"] }),
        ),
        Tool::new(
            "test_elicitation",
            "Tests server-initiated elicitation (user input request)",
            json!({ "type": "object", "properties": { "message": { "type": "string", "description": "The message to show the user" } }, "required": ["message"] }),
        ),
        Tool::new("test_elicitation_sep1034_defaults", "Tests elicitation with default values per SEP-1034", empty_schema()),
        Tool::new("test_elicitation_sep1330_enums", "Tests elicitation with enum schema improvements per SEP-1330", empty_schema()),
        Tool::new(
            "json_schema_2020_12_tool",
            "Tool with JSON Schema 2020-12 features for conformance testing (SEP-1613)",
            json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "$defs": { "address": { "type": "object", "properties": { "street": { "type": "string" }, "city": { "type": "string" } } } },
                "properties": { "name": { "type": "string" }, "address": { "$ref": "#/$defs/address" } },
                "additionalProperties": false
            }),
        ),
        Tool::new(
            "echo",
            "Echoes its text back, with its length as structured output",
            json!({ "type": "object", "properties": { "text": { "type": "string" } }, "required": ["text"] }),
        )
        .with("title", json!("Echo"))
        .with(
            "outputSchema",
            json!({ "type": "object", "properties": { "text": { "type": "string" }, "length": { "type": "integer" } }, "required": ["text", "length"] }),
        )
        .with("annotations", read_only()),
    ]
}

fn elicitation_text(prefix: &str, r: Result<Value, McpError>) -> Value {
    match r {
        Ok(r) => ok_text(format!(
            "{prefix}: action={}, content={}",
            r.get("action").and_then(Value::as_str).unwrap_or("unknown"),
            r.get("content").cloned().unwrap_or_else(|| json!({}))
        )),
        Err(e) => tool_error(format!("Elicitation not supported or error: {}", e.message)),
    }
}

fn string_arg<'a>(args: &'a Map<String, Value>, name: &str) -> Result<&'a str, Value> {
    args.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| tool_error(format!("arguments.{name} is required and must be a string")))
}

impl ConformanceProvider {
    async fn run(
        &self,
        ctx: &CallContext,
        name: &str,
        args: Map<String, Value>,
    ) -> Result<Value, McpError> {
        let sleep = || tokio::time::sleep(Duration::from_millis(50));
        Ok(match name {
            "test_simple_text" => ok_text("This is a simple text response for testing."),
            "test_image_content" => {
                json!({ "content": [{ "type": "image", "data": TEST_IMAGE_BASE64, "mimeType": "image/png" }] })
            }
            "test_audio_content" => {
                json!({ "content": [{ "type": "audio", "data": TEST_AUDIO_BASE64, "mimeType": "audio/wav" }] })
            }
            "test_embedded_resource" => json!({ "content": [{ "type": "resource", "resource": {
                "uri": "test://embedded-resource", "mimeType": "text/plain", "text": "This is an embedded resource content." } }] }),
            "test_multiple_content_types" => json!({ "content": [
                text("Multiple content types test:"),
                { "type": "image", "data": TEST_IMAGE_BASE64, "mimeType": "image/png" },
                { "type": "resource", "resource": { "uri": "test://mixed-content-resource", "mimeType": "application/json",
                    "text": json!({ "test": "data", "value": 123 }).to_string() } }
            ] }),
            "test_tool_with_logging" => {
                for (i, msg) in [
                    "Tool execution started",
                    "Tool processing data",
                    "Tool execution completed",
                ]
                .iter()
                .enumerate()
                {
                    if i > 0 {
                        sleep().await;
                    }
                    ctx.log(LogLevel::Info, Some("conformance"), json!(msg));
                }
                ok_text("Tool with logging executed successfully")
            }
            "test_tool_with_progress" => {
                for (i, p) in [0.0, 50.0, 100.0].into_iter().enumerate() {
                    if i > 0 {
                        sleep().await;
                    }
                    ctx.progress(p, Some(100.0), Some(&format!("Completed step {p} of 100")));
                }
                match ctx.progress_token() {
                    Some(Value::String(s)) => ok_text(s.clone()),
                    Some(other) => ok_text(other.to_string()),
                    None => ok_text("0"),
                }
            }
            "test_error_handling" => {
                tool_error("This tool intentionally returns an error for testing")
            }
            "test_reconnection" => {
                ctx.peer.close_stream();
                tokio::time::sleep(Duration::from_millis(100)).await;
                ok_text(
                    "Reconnection test completed successfully. If you received this, the client properly reconnected after stream closure.",
                )
            }
            "test_sampling" => {
                let prompt = match string_arg(&args, "prompt") {
                    Ok(p) => p,
                    Err(e) => return Ok(e),
                };
                let r = ctx
                    .sample(json!({ "messages": [{ "role": "user", "content": { "type": "text", "text": prompt } }], "maxTokens": 100 }))
                    .await;
                match r {
                    Ok(r) => {
                        let reply = r
                            .pointer("/content/text")
                            .or_else(|| r.pointer("/content/0/text"))
                            .and_then(Value::as_str)
                            .unwrap_or("No response");
                        ok_text(format!("LLM response: {reply}"))
                    }
                    Err(e) => tool_error(format!("Sampling not supported or error: {}", e.message)),
                }
            }
            "test_elicitation" => {
                let message = match string_arg(&args, "message") {
                    Ok(m) => m,
                    Err(e) => return Ok(e),
                };
                let r = ctx
                    .elicit(json!({ "message": message, "requestedSchema": { "type": "object",
                        "properties": { "response": { "type": "string", "description": "User's response" } }, "required": ["response"] } }))
                    .await;
                elicitation_text("User response", r)
            }
            "test_elicitation_sep1034_defaults" => {
                let r = ctx
                    .elicit(json!({ "message": "Please review and update the form fields with defaults", "requestedSchema": {
                        "type": "object",
                        "properties": {
                            "name": { "type": "string", "description": "User name", "default": "John Doe" },
                            "age": { "type": "integer", "description": "User age", "default": 30 },
                            "score": { "type": "number", "description": "User score", "default": 95.5 },
                            "status": { "type": "string", "description": "User status", "enum": ["active", "inactive", "pending"], "default": "active" },
                            "verified": { "type": "boolean", "description": "Verification status", "default": true }
                        },
                        "required": [] } }))
                    .await;
                elicitation_text("Elicitation completed", r)
            }
            "test_elicitation_sep1330_enums" => {
                let r = ctx
                    .elicit(json!({ "message": "Please select options from the enum fields", "requestedSchema": {
                        "type": "object",
                        "properties": {
                            "untitledSingle": { "type": "string", "description": "Select one option", "enum": ["option1", "option2", "option3"] },
                            "titledSingle": { "type": "string", "description": "Select one option with titles", "oneOf": [
                                { "const": "value1", "title": "First Option" }, { "const": "value2", "title": "Second Option" }, { "const": "value3", "title": "Third Option" } ] },
                            "legacyEnum": { "type": "string", "description": "Select one option (legacy)", "enum": ["opt1", "opt2", "opt3"],
                                "enumNames": ["Option One", "Option Two", "Option Three"] },
                            "untitledMulti": { "type": "array", "description": "Select multiple options", "minItems": 1, "maxItems": 3,
                                "items": { "type": "string", "enum": ["option1", "option2", "option3"] } },
                            "titledMulti": { "type": "array", "description": "Select multiple options with titles", "minItems": 1, "maxItems": 3,
                                "items": { "anyOf": [ { "const": "value1", "title": "First Choice" }, { "const": "value2", "title": "Second Choice" },
                                    { "const": "value3", "title": "Third Choice" } ] } }
                        },
                        "required": [] } }))
                    .await;
                elicitation_text("Elicitation completed", r)
            }
            "json_schema_2020_12_tool" => {
                if let Some(k) = args.keys().find(|k| *k != "name" && *k != "address") {
                    return Ok(tool_error(format!(
                        "arguments.{k} is not allowed (additionalProperties: false)"
                    )));
                }
                ok_text(format!(
                    "JSON Schema 2020-12 tool called with: {}",
                    Value::Object(args)
                ))
            }
            "echo" => {
                let t = match string_arg(&args, "text") {
                    Ok(t) => t,
                    Err(e) => return Ok(e),
                };
                json!({ "content": [text(t)], "structuredContent": { "text": t, "length": t.chars().count() } })
            }
            other => return Err(McpError::invalid_params(format!("unknown tool: {other}"))),
        })
    }
}

fn completion(candidates: &[&str], prefix: &str) -> Value {
    let values: Vec<&str> = candidates
        .iter()
        .copied()
        .filter(|c| c.starts_with(prefix))
        .collect();
    json!({ "completion": { "values": values, "total": values.len(), "hasMore": false } })
}

impl Provider for ConformanceProvider {
    fn id(&self) -> &str {
        "conformance"
    }

    fn list_tools<'a>(
        &'a self,
        _ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<Vec<Tool>, McpError>> {
        Box::pin(async { Ok(tools()) })
    }

    fn call_tool<'a>(
        &'a self,
        ctx: &'a CallContext,
        name: &'a str,
        arguments: Map<String, Value>,
    ) -> BoxFuture<'a, Result<Value, McpError>> {
        Box::pin(self.run(ctx, name, arguments))
    }

    fn list_resources<'a>(
        &'a self,
        _ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<Vec<Resource>, McpError>> {
        Box::pin(async {
            Ok(vec![
                Resource::new("test://static-text", "static-text")
                    .with("title", json!("Static Text Resource"))
                    .with("description", json!("A static text resource for testing"))
                    .with("mimeType", json!("text/plain")),
                Resource::new("test://static-binary", "static-binary")
                    .with("title", json!("Static Binary Resource"))
                    .with(
                        "description",
                        json!("A static binary resource (image) for testing"),
                    )
                    .with("mimeType", json!("image/png")),
                Resource::new(WATCHED_URI, "watched-resource")
                    .with("title", json!("Watched Resource"))
                    .with(
                        "description",
                        json!("A resource that changes periodically; subscribe to hear about it"),
                    )
                    .with("mimeType", json!("text/plain")),
            ])
        })
    }

    fn list_resource_templates<'a>(
        &'a self,
        _ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<Vec<ResourceTemplate>, McpError>> {
        Box::pin(async {
            Ok(vec![
                ResourceTemplate::new(TEMPLATE, "template")
                    .with("title", json!("Resource Template"))
                    .with(
                        "description",
                        json!("A resource template with parameter substitution"),
                    )
                    .with("mimeType", json!("application/json")),
            ])
        })
    }

    fn read_resource<'a>(
        &'a self,
        _ctx: &'a CallContext,
        uri: &'a str,
    ) -> BoxFuture<'a, Result<Value, McpError>> {
        Box::pin(async move {
            let content = match uri {
                "test://static-text" => {
                    json!({ "uri": uri, "mimeType": "text/plain", "text": "This is the content of the static text resource." })
                }
                "test://static-binary" => {
                    json!({ "uri": uri, "mimeType": "image/png", "blob": TEST_IMAGE_BASE64 })
                }
                WATCHED_URI => {
                    let rev = self.watched_revision.load(Ordering::Relaxed);
                    let text = if rev == 0 {
                        "Watched resource content".to_owned()
                    } else {
                        format!("Watched resource content (revision {rev})")
                    };
                    json!({ "uri": uri, "mimeType": "text/plain", "text": text })
                }
                _ => {
                    let Some(vars) = ResourceTemplate::new(TEMPLATE, "template").match_uri(uri)
                    else {
                        return Err(McpError::resource_not_found(uri));
                    };
                    let id = vars.get("id").and_then(Value::as_str).unwrap_or_default();
                    json!({ "uri": uri, "mimeType": "application/json",
                        "text": json!({ "id": id, "templateTest": true, "data": format!("Data for ID: {id}") }).to_string() })
                }
            };
            Ok(json!({ "contents": [content] }))
        })
    }

    fn list_prompts<'a>(
        &'a self,
        _ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<Vec<Prompt>, McpError>> {
        Box::pin(async {
            let arg = |name: &str, description: &str| json!({ "name": name, "description": description, "required": true });
            Ok(vec![
                Prompt::new("test_simple_prompt")
                    .with("title", json!("Simple Test Prompt"))
                    .with("description", json!("A simple prompt without arguments")),
                Prompt::new("test_prompt_with_arguments")
                    .with("title", json!("Prompt With Arguments"))
                    .with("description", json!("A prompt with required arguments"))
                    .with(
                        "arguments",
                        json!([
                            arg("arg1", "First test argument"),
                            arg("arg2", "Second test argument")
                        ]),
                    ),
                Prompt::new("test_prompt_with_embedded_resource")
                    .with("title", json!("Prompt With Embedded Resource"))
                    .with(
                        "description",
                        json!("A prompt that includes an embedded resource"),
                    )
                    .with(
                        "arguments",
                        json!([arg("resourceUri", "URI of the resource to embed")]),
                    ),
                Prompt::new("test_prompt_with_image")
                    .with("title", json!("Prompt With Image"))
                    .with("description", json!("A prompt that includes image content")),
            ])
        })
    }

    fn get_prompt<'a>(
        &'a self,
        _ctx: &'a CallContext,
        name: &'a str,
        args: Map<String, Value>,
    ) -> BoxFuture<'a, Result<Value, McpError>> {
        Box::pin(async move {
            let need = |k: &str| {
                args.get(k)
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| {
                        McpError::invalid_params(format!("prompt {name}: argument {k} is required"))
                    })
            };
            let user = |content: Value| json!({ "role": "user", "content": content });
            Ok(match name {
                "test_simple_prompt" => {
                    json!({ "messages": [user(text("This is a simple prompt for testing."))] })
                }
                "test_prompt_with_arguments" => {
                    let (a1, a2) = (need("arg1")?, need("arg2")?);
                    json!({ "messages": [user(text(format!("Prompt with arguments: arg1='{a1}', arg2='{a2}'")))] })
                }
                "test_prompt_with_embedded_resource" => {
                    let uri = need("resourceUri")?;
                    json!({ "messages": [
                        user(json!({ "type": "resource", "resource": { "uri": uri, "mimeType": "text/plain", "text": "Embedded resource content for testing." } })),
                        user(text("Please process the embedded resource above."))
                    ] })
                }
                "test_prompt_with_image" => json!({ "messages": [
                    user(json!({ "type": "image", "data": TEST_IMAGE_BASE64, "mimeType": "image/png" })),
                    user(text("Please analyze the image above."))
                ] }),
                other => return Err(McpError::invalid_params(format!("unknown prompt: {other}"))),
            })
        })
    }

    fn complete<'a>(
        &'a self,
        _ctx: &'a CallContext,
        params: &'a Value,
    ) -> BoxFuture<'a, Result<Option<Value>, McpError>> {
        Box::pin(async move {
            let r = &params["ref"];
            let arg = params
                .pointer("/argument/name")
                .and_then(Value::as_str)
                .unwrap_or("");
            let value = params
                .pointer("/argument/value")
                .and_then(Value::as_str)
                .unwrap_or("");
            Ok(
                match (
                    r["type"].as_str(),
                    r["name"].as_str().or(r["uri"].as_str()),
                    arg,
                ) {
                    (Some("ref/prompt"), Some("test_prompt_with_arguments"), "arg1" | "arg2") => {
                        Some(completion(
                            &["alpha", "beta", "gamma", "paris", "park"],
                            value,
                        ))
                    }
                    (
                        Some("ref/prompt"),
                        Some("test_prompt_with_embedded_resource"),
                        "resourceUri",
                    ) => Some(completion(
                        &["test://static-text", "test://static-binary", WATCHED_URI],
                        value,
                    )),
                    (Some("ref/resource"), Some(TEMPLATE), "id") => {
                        Some(completion(&["1", "2", "3", "42", "100"], value))
                    }
                    (Some("ref/prompt"), Some(n), _) if n.starts_with("test_") => {
                        Some(completion(&[], value))
                    }
                    _ => None,
                },
            )
        })
    }

    fn events(&self) -> Option<broadcast::Receiver<ProviderEvent>> {
        Some(self.events.subscribe())
    }
}
