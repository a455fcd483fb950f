//! Administrative actions as MCP tools: tenants, their members, roles and
//! permission rules. They are ordinary tools behind the ordinary pipeline,
//! so every administrative act is authenticated, authorized (each tool
//! declares the `admin` permission), rate-limited and audited like any call;
//! the REST API and the CLI are thin clients of these tools.
//!
//! Acting on another tenant than one's own is the privilege of the
//! administrators of the operator tenant (`policy.operator_tenant`); it is
//! checked here, in one place ([`AdminProvider::target_tenant`]).
//!
//! Not here: the decisions themselves (cellgate-policy), credentials
//! (cellgate-auth), the audit chain (cellgate-audit).

mod keys;
mod tools;
mod upstreams;

use std::sync::{Arc, OnceLock, Weak};

use cellgate_kernel::{AuthMethod, BoxFuture, CallContext, Catalog, McpError, Provider, Tool};
use cellgate_policy::{Directory, Permission, Permissions, Roles};
use serde_json::{Map, Value, json};

pub use tools::ADMIN_TOOLS;

/// The services some administrative tools act on; a tool whose service is
/// absent is not offered.
#[derive(Default, Clone)]
pub struct AdminServices {
    pub api_keys: Option<Arc<cellgate_auth::ApiKeyService>>,
    pub audit: Option<AuditTools>,
    /// Upstream MCP servers, when any are configured.
    pub federation: Option<Arc<cellgate_federation::Federation>>,
    /// Adding and removing upstreams at run time (persisted elsewhere).
    pub runtime_upstreams: Option<Arc<dyn RuntimeUpstreams>>,
}

/// Upstreams added and removed while running. The implementation persists
/// them (credentials sealed) and applies the change to the federation;
/// errors are messages for the caller.
pub trait RuntimeUpstreams: Send + Sync {
    /// `entry` has the shape of one `[[upstreams]]` table of `cellgate.toml`.
    fn add(&self, entry: Value, replace: bool) -> BoxFuture<'_, Result<Value, String>>;
    fn remove<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Value, String>>;
}

/// What the audit tools need.
#[derive(Clone)]
pub struct AuditTools {
    pub sink: cellgate_audit::AuditSink,
    pub store: cellgate_store::Store,
    /// Keys whose checkpoints verify (this instance's, and other replicas').
    pub trusted: Vec<cellgate_audit::VerifyingKey>,
}

/// The provider of administrative tools.
pub struct AdminProvider {
    directory: Arc<Directory>,
    services: AdminServices,
    tools: Vec<Tool>,
    /// The catalog this provider sits in, to read what other providers'
    /// tools declare (set once after the catalog is built; weak, since the
    /// catalog owns this provider).
    catalog: OnceLock<Weak<Catalog>>,
}

impl AdminProvider {
    pub fn new(directory: Arc<Directory>, services: AdminServices) -> Arc<Self> {
        let mut tools = tools::definitions();
        if services.api_keys.is_some() {
            tools.extend(keys::definitions());
        }
        if services.audit.is_some() {
            tools.extend(keys::audit_definitions());
        }
        if services.federation.is_some() {
            tools.extend(upstreams::definitions());
        }
        Arc::new(Self {
            directory,
            services,
            tools,
            catalog: OnceLock::new(),
        })
    }

    /// Lets `check_tenant_permission` see what tools of other providers declare.
    pub fn attach(&self, catalog: &Arc<Catalog>) {
        let _ = self.catalog.set(Arc::downgrade(catalog));
    }

    pub(crate) fn catalog(&self) -> Option<Arc<Catalog>> {
        self.catalog.get().and_then(Weak::upgrade)
    }

    pub(crate) fn services(&self) -> &AdminServices {
        &self.services
    }

    pub(crate) fn directory(&self) -> &Directory {
        &self.directory
    }

    fn operator_tenant(&self) -> &str {
        &self.directory.config.operator_tenant
    }

    pub(crate) fn is_operator(&self, ctx: &CallContext) -> bool {
        *ctx.tenant == *self.operator_tenant()
    }

    /// The tenant an action is about: the caller's own, unless `tenant` names
    /// another and the caller administers the operator tenant.
    pub(crate) fn target_tenant(
        &self,
        ctx: &CallContext,
        args: &Map<String, Value>,
    ) -> Result<String, McpError> {
        match args.get("tenant") {
            None | Some(Value::Null) => Ok(ctx.tenant.to_string()),
            Some(Value::String(t)) if **t == *ctx.tenant => Ok(t.clone()),
            Some(Value::String(t)) if self.is_operator(ctx) => Ok(t.clone()),
            Some(Value::String(_)) => Err(McpError::forbidden(format!(
                "only administrators of the operator tenant `{}` may act on other tenants",
                self.operator_tenant()
            ))),
            Some(_) => Err(McpError::invalid_params("`tenant` must be a string")),
        }
    }

    /// The caller's level and permissions in its own tenant, for delegation
    /// checks: nobody grants more than it has.
    pub(crate) async fn caller_rights(
        &self,
        ctx: &CallContext,
    ) -> Result<(u32, Permissions, Roles), McpError> {
        let policy = self
            .directory
            .policy(&ctx.tenant)
            .await
            .map_err(|e| McpError::internal(e.to_string()))?
            .ok_or_else(|| {
                McpError::forbidden(format!("tenant `{}` does not exist", ctx.tenant))
            })?;
        let credential: Vec<String> = if ctx.principal.auth == AuthMethod::None {
            self.directory.config.anonymous_roles.clone()
        } else {
            ctx.principal.roles.to_vec()
        };
        let roles = policy
            .roles_of(&ctx.principal.id, &credential)
            .unwrap_or_default();
        let (level, perms) = policy.roles.effective(&roles);
        Ok((level, perms, policy.roles.clone()))
    }

    /// Refuses granting `roles` (in `target`'s role set) above the caller's
    /// own level, or without the `delegate` permission.
    pub(crate) async fn check_grant(
        &self,
        ctx: &CallContext,
        target_roles: &Roles,
        roles: &[String],
    ) -> Result<(), McpError> {
        let (level, perms, _) = self.caller_rights(ctx).await?;
        if !perms.contains(Permission::Delegate) {
            return Err(McpError::forbidden(
                "granting roles needs the `delegate` permission",
            ));
        }
        for r in roles {
            let Some(role) = target_roles.get(r) else {
                return Err(McpError::invalid_params(format!(
                    "role `{r}` is not defined in the tenant"
                )));
            };
            if role.level > level {
                return Err(McpError::forbidden(format!(
                    "role `{r}` (level {}) is above the caller's own level {level}",
                    role.level
                )));
            }
        }
        Ok(())
    }
}

/// A successful tool result carrying `value` as structured content and as
/// text for clients that read only text.
pub(crate) fn ok(value: Value) -> Value {
    json!({
        "content": [{ "type": "text", "text": value.to_string() }],
        "structuredContent": value,
    })
}

/// A tool-level failure (the call was valid; the action could not be done).
pub(crate) fn failed(message: impl Into<String>) -> Value {
    json!({ "content": [{ "type": "text", "text": message.into() }], "isError": true })
}

impl Provider for AdminProvider {
    fn id(&self) -> &str {
        "admin"
    }

    fn list_tools<'a>(
        &'a self,
        _ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<Vec<Tool>, McpError>> {
        Box::pin(async move { Ok(self.tools.clone()) })
    }

    fn call_tool<'a>(
        &'a self,
        ctx: &'a CallContext,
        name: &'a str,
        arguments: Map<String, Value>,
    ) -> BoxFuture<'a, Result<Value, McpError>> {
        Box::pin(async move { tools::call(self, ctx, name, arguments).await })
    }
}
