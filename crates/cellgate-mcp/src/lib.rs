//! The MCP edge of cellgate: JSON-RPC framing, sessions, protocol-version
//! negotiation, and the transports (stdio, Streamable HTTP at `/mcp`, legacy
//! HTTP+SSE at `/sse` + `/messages`). It turns bytes into pipeline calls and
//! pipeline results back into bytes.
//!
//! It is *not* where tools live (providers do) nor where policy lives (the
//! pipeline's layers do). The decisions it makes about versions, sessions and
//! streams are written down in this crate's README.

pub mod conformance;
pub mod headers;
pub mod http;
pub mod jsonrpc;
pub mod mrtr;
pub mod protocol;
pub mod server;
pub mod session;
pub mod stateless;
pub mod stdio;
pub mod subscriptions;
pub mod tasks;

pub use server::{EdgeConfig, McpServer};
