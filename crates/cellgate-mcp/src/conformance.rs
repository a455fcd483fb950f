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
            "Tool with JSON Schema 2020-12 features for conformance testing (SEP-1613, SEP-2106)",
            json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "$defs": { "address": { "$anchor": "addressDef", "type": "object", "properties": { "street": { "type": "string" }, "city": { "type": "string" } } } },
                "properties": {
                    "name": { "type": "string" },
                    "address": { "$ref": "#/$defs/address" },
                    "contactMethod": { "type": "string", "enum": ["phone", "email"] },
                    "phone": { "type": "string" },
                    "email": { "type": "string" }
                },
                "allOf": [{ "anyOf": [{ "required": ["phone"] }, { "required": ["email"] }] }],
                "if": { "properties": { "contactMethod": { "const": "phone" } }, "required": ["contactMethod"] },
                "then": { "required": ["phone"] },
                "else": { "required": ["email"] },
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
        Tool::new(
            "test_custom_header",
            "Routes by region; the region travels in the Mcp-Param-Region header too (SEP-2243)",
            json!({ "type": "object", "properties": { "region": { "type": "string", "x-mcp-header": "Region" } }, "required": ["region"] }),
        )
        .with("annotations", read_only()),
        Tool::new("test_logging_tool", "Logs at info and warning level while it runs", empty_schema()),
        Tool::new("test_missing_capability", "Needs sampling: refuses clients that did not declare it", empty_schema()),
        Tool::new("test_streaming_elicitation", "Reports progress, then asks the user to confirm", empty_schema()),
        Tool::new("test_trigger_tool_change", "Announces that the tool list changed", empty_schema()),
        Tool::new("test_trigger_prompt_change", "Announces that the prompt list changed", empty_schema()),
        Tool::new("test_input_required_result_elicitation", "Asks the user for their name (input-required round)", empty_schema()),
        Tool::new("test_input_required_result_sampling", "Asks the client's model a question (input-required round)", empty_schema()),
        Tool::new("test_input_required_result_list_roots", "Asks the client for its roots (input-required round)", empty_schema()),
        Tool::new("test_input_required_result_request_state", "Asks for a confirmation carried over in requestState", empty_schema()),
        Tool::new("test_input_required_result_multiple_inputs", "Asks for a name, a greeting and the roots at once", empty_schema()),
        Tool::new("test_input_required_result_multi_round", "Asks two questions, one per round", empty_schema()),
        Tool::new("test_input_required_result_tampered_state", "Asks for a confirmation; the state must come back intact", empty_schema()),
        Tool::new("test_input_required_result_capabilities", "Asks only what the client declared it can answer", empty_schema()),
        Tool::new("greet", "Greets by name (always answers at once)", json!({ "type": "object", "properties": { "name": { "type": "string" } }, "required": ["name"] })),
        task_tool(
            "slow_compute",
            "Works for `seconds` seconds, as a task when the client supports tasks",
            json!({ "type": "object", "properties": { "seconds": { "type": "number", "minimum": 0 }, "label": { "type": "string" } } }),
            "optional",
        ),
        task_tool("failing_job", "Runs as a task and ends with a tool error", empty_schema(), "required"),
        task_tool("protocol_error_job", "Runs as a task and ends with a protocol error", empty_schema(), "optional"),
        task_tool(
            "confirm_delete",
            "Asks the user to confirm deleting a file, as a task",
            json!({ "type": "object", "properties": { "filename": { "type": "string" } }, "required": ["filename"] }),
            "optional",
        ),
        task_tool("multi_input", "Asks two questions at once, as a task", empty_schema(), "optional"),
        task_tool(
            "test_tool_with_task",
            "Asks for the user's name, then finishes the work as a task",
            empty_schema(),
            "required",
        ),
    ]
}

fn task_tool(name: &str, description: &str, schema: Value, support: &str) -> Tool {
    Tool::new(name, description, schema).with("execution", json!({ "taskSupport": support }))
}

fn name_schema(field: &str) -> Value {
    json!({ "type": "object", "properties": { field: { "type": "string" } }, "required": [field] })
}

fn elicit_params(message: &str, schema: Value) -> Value {
    json!({ "message": message, "requestedSchema": schema })
}

fn sampling_params(prompt: &str, max_tokens: u32) -> Value {
    json!({ "messages": [{ "role": "user", "content": { "type": "text", "text": prompt } }], "maxTokens": max_tokens })
}

/// The text of a sampling answer.
fn sampled_text(r: &Value) -> &str {
    r.pointer("/content/text")
        .or_else(|| r.pointer("/content/0/text"))
        .and_then(Value::as_str)
        .unwrap_or("No response")
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
                let r = ctx.sample(sampling_params(prompt, 100)).await;
                match r {
                    Ok(r) => ok_text(format!("LLM response: {}", sampled_text(&r))),
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
            "test_custom_header" => {
                let region = match string_arg(&args, "region") {
                    Ok(r) => r,
                    Err(e) => return Ok(e),
                };
                ok_text(format!("Routed to region {region}"))
            }
            "test_logging_tool" => {
                ctx.log(
                    LogLevel::Info,
                    Some("conformance"),
                    json!("logging tool started"),
                );
                ctx.log(
                    LogLevel::Warning,
                    Some("conformance"),
                    json!("logging tool warning"),
                );
                ok_text("Logging tool finished")
            }
            "test_missing_capability" => {
                let r = ctx.sample(sampling_params("Say hello", 20)).await?;
                ok_text(format!("LLM response: {}", sampled_text(&r)))
            }
            "test_streaming_elicitation" => {
                ctx.progress(0.0, Some(1.0), Some("asking for confirmation"));
                let r = ctx
                    .elicit_named("confirm", elicit_params("Continue?", json!({ "type": "object", "properties": { "ok": { "type": "boolean" } }, "required": ["ok"] })))
                    .await;
                elicitation_text("Confirmation", r)
            }
            "test_trigger_tool_change" | "test_trigger_prompt_change" => {
                let ev = if name == "test_trigger_tool_change" {
                    ProviderEvent::ToolsChanged
                } else {
                    ProviderEvent::PromptsChanged
                };
                let _ = self.events.send(ev);
                ok_text("List change announced")
            }
            "test_input_required_result_elicitation" => {
                let r = ctx
                    .elicit_named(
                        "user_name",
                        elicit_params("What is your name?", name_schema("name")),
                    )
                    .await?;
                ok_text(format!(
                    "Hello, {}!",
                    r.pointer("/content/name")
                        .and_then(Value::as_str)
                        .unwrap_or("stranger")
                ))
            }
            "test_input_required_result_sampling" => {
                let r = ctx
                    .sample_named(
                        "capital_question",
                        sampling_params("What is the capital of France?", 100),
                    )
                    .await?;
                ok_text(format!("LLM response: {}", sampled_text(&r)))
            }
            "test_input_required_result_list_roots" => {
                let r = ctx.list_roots_named("client_roots").await?;
                let uris: Vec<&str> = r["roots"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|x| x["uri"].as_str()).collect())
                    .unwrap_or_default();
                ok_text(format!("Client roots: {}", uris.join(", ")))
            }
            "test_input_required_result_request_state"
            | "test_input_required_result_tampered_state" => {
                let r = ctx
                    .elicit_named("confirm", elicit_params("Please confirm", json!({ "type": "object", "properties": { "ok": { "type": "boolean" } }, "required": ["ok"] })))
                    .await?;
                let ok = r
                    .pointer("/content/ok")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                ok_text(format!("Confirmation received: ok={ok}"))
            }
            "test_input_required_result_multiple_inputs" => {
                let (name, greeting, roots) = tokio::join!(
                    ctx.elicit_named(
                        "user_name",
                        elicit_params("What is your name?", name_schema("name"))
                    ),
                    ctx.sample_named("greeting", sampling_params("Generate a greeting", 50)),
                    ctx.list_roots_named("client_roots"),
                );
                let (name, greeting, roots) = (name?, greeting?, roots?);
                ok_text(format!(
                    "{} {} (roots: {})",
                    sampled_text(&greeting),
                    name.pointer("/content/name")
                        .and_then(Value::as_str)
                        .unwrap_or("stranger"),
                    roots["roots"].as_array().map_or(0, Vec::len)
                ))
            }
            "test_input_required_result_multi_round" => {
                let n = ctx
                    .elicit_named(
                        "step1",
                        elicit_params("Step 1: What is your name?", name_schema("name")),
                    )
                    .await?;
                let c = ctx
                    .elicit_named(
                        "step2",
                        elicit_params("Step 2: What is your favorite color?", name_schema("color")),
                    )
                    .await?;
                ok_text(format!(
                    "{} likes {}",
                    n.pointer("/content/name")
                        .and_then(Value::as_str)
                        .unwrap_or("someone"),
                    c.pointer("/content/color")
                        .and_then(Value::as_str)
                        .unwrap_or("no color")
                ))
            }
            "test_input_required_result_capabilities" => {
                // Only ask what the client declared it can answer.
                let mut answers = Vec::new();
                if ctx.client_supports("sampling") {
                    let r = ctx
                        .sample_named("capability_sample", sampling_params("Say hello", 20))
                        .await?;
                    answers.push(format!("sampled: {}", sampled_text(&r)));
                }
                if ctx.client_supports("elicitation") {
                    let r = ctx
                        .elicit_named(
                            "capability_elicit",
                            elicit_params("What is your name?", name_schema("name")),
                        )
                        .await?;
                    answers.push(format!("elicited: {}", r["action"].as_str().unwrap_or("?")));
                }
                if answers.is_empty() {
                    answers.push("the client declared nothing to ask".into());
                }
                ok_text(answers.join("; "))
            }
            "greet" => {
                let n = match string_arg(&args, "name") {
                    Ok(n) => n,
                    Err(e) => return Ok(e),
                };
                ok_text(format!("Hello, {n}!"))
            }
            "slow_compute" => {
                let seconds = args
                    .get("seconds")
                    .and_then(Value::as_f64)
                    .unwrap_or(1.0)
                    .max(0.0);
                let label = args.get("label").and_then(Value::as_str).unwrap_or("job");
                if seconds > 0.0 {
                    ctx.continue_in_background();
                    tokio::time::sleep(Duration::from_secs_f64(seconds.min(3600.0))).await;
                }
                ok_text(format!("Computed {label} in {seconds}s"))
            }
            "failing_job" => {
                ctx.continue_in_background();
                tokio::time::sleep(Duration::from_millis(500)).await;
                tool_error("failing_job failed on purpose")
            }
            "protocol_error_job" => {
                ctx.continue_in_background();
                return Err(McpError::internal("protocol_error_job broke on purpose"));
            }
            "confirm_delete" => {
                let file = match string_arg(&args, "filename") {
                    Ok(f) => f,
                    Err(e) => return Ok(e),
                };
                ctx.continue_in_background();
                let r = ctx
                    .elicit_named("confirm", elicit_params(&format!("Delete {file}?"), json!({ "type": "object", "properties": { "confirm": { "type": "boolean" } }, "required": ["confirm"] })))
                    .await?;
                let yes =
                    r["action"] == "accept" && r.pointer("/content/confirm") == Some(&json!(true));
                ok_text(if yes {
                    format!("Deleted {file}")
                } else {
                    format!("Kept {file}")
                })
            }
            "multi_input" => {
                ctx.continue_in_background();
                let (a, b) = tokio::join!(
                    ctx.elicit_named("first", elicit_params("First answer?", name_schema("name"))),
                    ctx.elicit_named(
                        "second",
                        elicit_params("Second answer?", name_schema("name"))
                    ),
                );
                let (a, b) = (a?, b?);
                ok_text(format!(
                    "Answers: {} and {}",
                    a.pointer("/content/name")
                        .and_then(Value::as_str)
                        .unwrap_or("?"),
                    b.pointer("/content/name")
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                ))
            }
            "test_tool_with_task" => {
                let r = ctx
                    .elicit_named(
                        "user_name",
                        elicit_params("What is your name?", name_schema("name")),
                    )
                    .await?;
                let who = r
                    .pointer("/content/name")
                    .and_then(Value::as_str)
                    .unwrap_or("stranger")
                    .to_owned();
                ctx.continue_in_background();
                tokio::time::sleep(Duration::from_millis(200)).await;
                ok_text(format!("Hello, {who}! The task is done."))
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
                Prompt::new("test_input_required_result_prompt")
                    .with("title", json!("Prompt That Asks"))
                    .with(
                        "description",
                        json!("Asks the user what context to use before it is built"),
                    ),
            ])
        })
    }

    fn get_prompt<'a>(
        &'a self,
        ctx: &'a CallContext,
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
                "test_input_required_result_prompt" => {
                    let r = ctx
                        .elicit_named(
                            "user_context",
                            elicit_params(
                                "What context should the prompt use?",
                                name_schema("context"),
                            ),
                        )
                        .await?;
                    let context = r
                        .pointer("/content/context")
                        .and_then(Value::as_str)
                        .unwrap_or("none");
                    json!({ "messages": [user(text(format!("Use this context: {context}")))] })
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
