use std::future::Future;
use std::pin::Pin;

use serde_json::{Map, Value};
use tokio::sync::broadcast;

use crate::{CallContext, McpError, Prompt, Resource, ResourceTemplate, Tool};

/// A boxed, sendable future: the provider trait is used as `dyn Provider`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Something that changed in a provider, which connected clients may need to hear.
#[derive(Debug, Clone, PartialEq)]
pub enum ProviderEvent {
    ToolsChanged,
    ResourcesChanged,
    PromptsChanged,
    /// The content of one resource changed (for `resources/subscribe`).
    ResourceUpdated {
        uri: String,
    },
}

/// Anything that offers tools, resources or prompts: an upstream MCP server,
/// a WebAssembly cell, a built-in service. Every method has a default that
/// offers nothing, so a provider implements only what it serves.
///
/// A provider answers for the names it lists. For reads of a resource URI it
/// does not serve, it returns [`McpError::resource_not_found`] so the catalog
/// can ask the next provider.
pub trait Provider: Send + Sync + 'static {
    /// A short, stable identifier (used in logs and metrics).
    fn id(&self) -> &str;

    fn list_tools<'a>(
        &'a self,
        _ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<Vec<Tool>, McpError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    /// Runs a tool. Returns a `CallToolResult` object (`content`, optional
    /// `structuredContent`, `isError`). A failure of the tool itself is a
    /// result with `isError: true`; an `Err` is a protocol error.
    fn call_tool<'a>(
        &'a self,
        _ctx: &'a CallContext,
        name: &'a str,
        _arguments: Map<String, Value>,
    ) -> BoxFuture<'a, Result<Value, McpError>> {
        Box::pin(async move { Err(McpError::invalid_params(format!("unknown tool: {name}"))) })
    }

    fn list_resources<'a>(
        &'a self,
        _ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<Vec<Resource>, McpError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn list_resource_templates<'a>(
        &'a self,
        _ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<Vec<ResourceTemplate>, McpError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    /// Returns a `ReadResourceResult` object (`contents`).
    fn read_resource<'a>(
        &'a self,
        _ctx: &'a CallContext,
        uri: &'a str,
    ) -> BoxFuture<'a, Result<Value, McpError>> {
        Box::pin(async move { Err(McpError::resource_not_found(uri)) })
    }

    fn list_prompts<'a>(
        &'a self,
        _ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<Vec<Prompt>, McpError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    /// Returns a `GetPromptResult` object (`messages`, optional `description`).
    fn get_prompt<'a>(
        &'a self,
        _ctx: &'a CallContext,
        name: &'a str,
        _arguments: Map<String, Value>,
    ) -> BoxFuture<'a, Result<Value, McpError>> {
        Box::pin(async move { Err(McpError::invalid_params(format!("unknown prompt: {name}"))) })
    }

    /// Answers `completion/complete` for a prompt or resource template this
    /// provider serves; `Ok(None)` when the reference is not its own.
    fn complete<'a>(
        &'a self,
        _ctx: &'a CallContext,
        _params: &'a Value,
    ) -> BoxFuture<'a, Result<Option<Value>, McpError>> {
        Box::pin(async { Ok(None) })
    }

    /// Change events; `None` for a provider whose offer never changes.
    fn events(&self) -> Option<broadcast::Receiver<ProviderEvent>> {
        None
    }

    /// Whether a tool (`tool = true`) or prompt this provider did not list
    /// is still its own: a provider that fronts something currently down
    /// (an upstream that never came up) claims its names, so the caller
    /// hears why the call fails rather than "unknown tool".
    fn claims(&self, _name: &str, _tool: bool) -> bool {
        false
    }

    /// Whether this provider fronts servers nobody here wrote (upstreams).
    /// Its tools and prompts yield to the gateway's own of the same name,
    /// so an upstream can never shadow, say, `approve_tool_pin`.
    fn fronts_others(&self) -> bool {
        false
    }
}
