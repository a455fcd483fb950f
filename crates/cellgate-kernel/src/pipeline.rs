//! The pipeline: every call the edge accepts passes through one `tower`
//! stack whose innermost service is the [`Catalog`].

use std::sync::Arc;
use std::task::{Context, Poll};

use serde_json::{Map, Value};
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceExt};

use crate::{BoxFuture, CallContext, Catalog, McpError};

/// A typed MCP request that a provider answers. Lifecycle messages
/// (`initialize`, `ping`, notifications) stay at the edge.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    ListTools {
        cursor: Option<String>,
    },
    CallTool {
        name: String,
        arguments: Map<String, Value>,
    },
    ListResources {
        cursor: Option<String>,
    },
    ListResourceTemplates {
        cursor: Option<String>,
    },
    ReadResource {
        uri: String,
    },
    ListPrompts {
        cursor: Option<String>,
    },
    GetPrompt {
        name: String,
        arguments: Map<String, Value>,
    },
    Complete {
        params: Value,
    },
}

impl Request {
    /// The JSON-RPC method this request came as.
    pub fn method(&self) -> &'static str {
        match self {
            Request::ListTools { .. } => "tools/list",
            Request::CallTool { .. } => "tools/call",
            Request::ListResources { .. } => "resources/list",
            Request::ListResourceTemplates { .. } => "resources/templates/list",
            Request::ReadResource { .. } => "resources/read",
            Request::ListPrompts { .. } => "prompts/list",
            Request::GetPrompt { .. } => "prompts/get",
            Request::Complete { .. } => "completion/complete",
        }
    }
    /// The tool, prompt or resource the request is about, if any.
    pub fn target(&self) -> Option<&str> {
        match self {
            Request::CallTool { name, .. } | Request::GetPrompt { name, .. } => Some(name),
            Request::ReadResource { uri } => Some(uri),
            _ => None,
        }
    }
}

/// One call travelling through the pipeline.
#[derive(Debug, Clone)]
pub struct Call {
    pub ctx: CallContext,
    pub request: Request,
}

/// The innermost service: hands the request to the catalog.
#[derive(Clone)]
struct Dispatch(Arc<Catalog>);

impl Service<Call> for Dispatch {
    type Response = Value;
    type Error = McpError;
    type Future = BoxFuture<'static, Result<Value, McpError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), McpError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let catalog = self.0.clone();
        Box::pin(async move {
            let Call { ctx, request } = call;
            let work = async {
                match request {
                    Request::ListTools { cursor } => {
                        catalog.list_tools(&ctx, cursor.as_deref()).await
                    }
                    Request::CallTool { name, arguments } => {
                        catalog.call_tool(&ctx, &name, arguments).await
                    }
                    Request::ListResources { cursor } => {
                        catalog.list_resources(&ctx, cursor.as_deref()).await
                    }
                    Request::ListResourceTemplates { cursor } => {
                        catalog
                            .list_resource_templates(&ctx, cursor.as_deref())
                            .await
                    }
                    Request::ReadResource { uri } => catalog.read_resource(&ctx, &uri).await,
                    Request::ListPrompts { cursor } => {
                        catalog.list_prompts(&ctx, cursor.as_deref()).await
                    }
                    Request::GetPrompt { name, arguments } => {
                        catalog.get_prompt(&ctx, &name, arguments).await
                    }
                    Request::Complete { params } => catalog.complete(&ctx, &params).await,
                }
            };
            tokio::select! {
                r = work => r,
                _ = ctx.cancel.cancelled() => Err(McpError::cancelled("request cancelled")),
            }
        })
    }
}

type Inner = BoxCloneSyncService<Call, Value, McpError>;

/// The assembled stack. Cheap to clone; [`Pipeline::call`] is the only way a
/// request reaches a provider.
#[derive(Clone)]
pub struct Pipeline {
    svc: Inner,
    catalog: Arc<Catalog>,
}

impl Pipeline {
    pub fn builder(catalog: Arc<Catalog>) -> PipelineBuilder {
        PipelineBuilder {
            svc: BoxCloneSyncService::new(Dispatch(catalog.clone())),
            catalog,
        }
    }

    pub async fn call(&self, call: Call) -> Result<Value, McpError> {
        self.svc.clone().oneshot(call).await
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }
}

/// Adds layers from the inside out: the last layer added sees the call first.
pub struct PipelineBuilder {
    svc: Inner,
    catalog: Arc<Catalog>,
}

impl PipelineBuilder {
    pub fn layer<L>(self, layer: L) -> Self
    where
        L: Layer<Inner>,
        L::Service:
            Service<Call, Response = Value, Error = McpError> + Clone + Send + Sync + 'static,
        <L::Service as Service<Call>>::Future: Send + 'static,
    {
        Self {
            svc: BoxCloneSyncService::new(layer.layer(self.svc)),
            catalog: self.catalog,
        }
    }

    pub fn build(self) -> Pipeline {
        Pipeline {
            svc: self.svc,
            catalog: self.catalog,
        }
    }
}
