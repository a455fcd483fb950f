//! The kernel of cellgate: what a call is, who makes it, what serves it, and
//! the pipeline every call passes through.
//!
//! This crate defines [`Call`], [`CallContext`], [`Principal`], the
//! [`Provider`] trait (anything that offers tools, resources or prompts), the
//! [`Catalog`] that routes a request to its provider, and the [`Pipeline`]: a
//! stack of `tower` layers around that catalog. Later concerns (authentication,
//! rate limits, audit, …) are added as layers here, never inside handlers.
//!
//! It is *not* a transport and does no I/O of its own: the MCP edge
//! (`cellgate-mcp`) frames JSON-RPC and implements [`ClientPeer`]; storage lives
//! in `cellgate-store`.

mod catalog;
mod context;
mod error;
mod layers;
mod metrics;
mod model;
mod pipeline;
mod provider;
mod stage;
mod trail;

pub use catalog::{Catalog, PAGE_SIZE};
pub use context::{
    AuthMethod, CallContext, ClientPeer, DetachedPeer, Identity, LogLevel, Principal, PrincipalKind,
};
pub use error::{McpError, codes};
pub use layers::{MeterLayer, TraceLayer};
pub use metrics::{CallRecord, Metrics};
pub use model::{Prompt, Resource, ResourceTemplate, Tool};
pub use pipeline::{Call, Pipeline, PipelineBuilder, Request};
pub use provider::{BoxFuture, Provider, ProviderEvent};
pub use stage::{Stage, StageLayer, StageService};
pub use tokio_util::sync::CancellationToken;
pub use trail::{Decision, DecisionTrail, Verdict};
