//! The REST API of cellgate, under `/api/v1`: JSON in, JSON out.
//!
//! This crate **is** a thin HTTP client of the pipeline. Every request that
//! passes its input checks becomes exactly one [`cellgate_kernel::Call`],
//! sent through [`Pipeline::call`], so a REST call is authenticated,
//! authorized, rate-limited, inspected, filtered and audited exactly like
//! the same call over MCP. Handlers translate (path, query and body into a
//! [`cellgate_kernel::Request`]; the result or [`cellgate_kernel::McpError`]
//! into a status and a JSON body) and nothing else.
//!
//! It is **not**:
//! - an authentication layer: the caller is the
//!   [`cellgate_kernel::Identity`] that the layer in front of the router put
//!   into the request's extensions (the anonymous caller of
//!   [`RestOptions::default_tenant`] when there is none, as on the MCP edge);
//! - a place for business logic: the administrative routes are aliases of
//!   the administrative tools (`cellgate-admin`), which decide everything;
//! - an MCP transport: there are no sessions, no streaming and no
//!   server-to-client requests (a tool that needs sampling or elicitation
//!   fails here as it would for an MCP client without those capabilities).
//!
//! The endpoints and the error mapping are listed in this crate's
//! `README.md`.

mod admin;
mod error;
mod extract;
mod handlers;

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{any, delete, get, post};
use cellgate_kernel::Pipeline;

/// Settings of the REST router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestOptions {
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// The tenant of requests that carry no [`cellgate_kernel::Identity`]
    /// (no authentication layer installed): they run as its anonymous caller.
    pub default_tenant: String,
}

impl Default for RestOptions {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            default_tenant: "local".into(),
        }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct Rest {
    pub(crate) pipeline: Pipeline,
    pub(crate) options: Arc<RestOptions>,
}

/// The routes under `/api/v1`, ready to be merged into the app (inside the
/// authentication layer). Unknown paths under `/api/v1` answer 404 and wrong
/// methods 405, both with a JSON error body; the router sets no fallback of
/// its own, so it merges with routers that do.
pub fn router(pipeline: Pipeline, options: RestOptions) -> Router {
    use admin::*;
    use handlers::*;
    let state = Rest {
        pipeline,
        options: Arc::new(options),
    };
    Router::new()
        // MCP primitives
        .route("/api/v1/tools", get(list_tools))
        .route("/api/v1/tools/{name}", post(call_tool))
        .route("/api/v1/prompts", get(list_prompts))
        .route("/api/v1/prompts/{name}", post(get_prompt))
        .route("/api/v1/resources", get(list_resources))
        .route("/api/v1/resources/templates", get(list_resource_templates))
        .route("/api/v1/resources/read", get(read_resource))
        // administrative tools
        .route("/api/v1/tenants", get(list_tenants).post(create_tenant))
        .route(
            "/api/v1/tenants/{id}",
            get(of_tenant("get_tenant")).delete(delete_tenant),
        )
        .route(
            "/api/v1/tenants/{id}/suspend",
            post(into_tenant("suspend_tenant", StatusCode::OK)),
        )
        .route(
            "/api/v1/tenants/{id}/resume",
            post(into_tenant("resume_tenant", StatusCode::OK)),
        )
        .route(
            "/api/v1/tenants/{id}/users",
            get(of_tenant("list_tenant_users"))
                .post(into_tenant("add_tenant_user", StatusCode::OK)),
        )
        .route(
            "/api/v1/tenants/{id}/users/{principal}",
            delete(in_tenant("remove_tenant_user", "principal")),
        )
        .route(
            "/api/v1/tenants/{id}/keys",
            get(of_tenant("list_api_keys"))
                .post(into_tenant("create_api_key", StatusCode::CREATED)),
        )
        .route(
            "/api/v1/tenants/{id}/keys/{key_id}",
            delete(in_tenant("revoke_api_key", "id")),
        )
        .route(
            "/api/v1/tenants/{id}/rules",
            get(of_tenant("list_permission_rules"))
                .post(into_tenant("set_permission_rule", StatusCode::OK)),
        )
        .route(
            "/api/v1/tenants/{id}/rules/{rule_id}",
            delete(in_tenant("delete_permission_rule", "id")),
        )
        .route("/api/v1/tenants/{id}/roles", get(of_tenant("list_roles")))
        .route("/api/v1/audit/events", post(create_audit_event))
        .route("/api/v1/audit/verify", get(verify_audit))
        // everything else under the prefix
        .route("/api/v1/{*rest}", any(no_such_endpoint))
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}
