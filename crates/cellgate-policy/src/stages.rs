//! The pipeline stages of this crate, in pipeline order: require
//! authentication, check the tenant, rate-limit, authorize.

use std::sync::Arc;

use cellgate_config::RateLimitConfig;
use cellgate_kernel::{
    AuthMethod, BoxFuture, Call, CallContext, Catalog, McpError, Request, Stage, Verdict,
};
use cellgate_store::TenantStatus;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde_json::{Map, Value};

use crate::directory::TenantPolicy;
use crate::matrix::{Caller, check};
use crate::ratelimit::{Limited, limit_keys};
use crate::{Directory, Permission, RateLimiter, Target};

/// `_meta` key on a tool definition by which a provider declares the
/// permission its tool needs when no rule says otherwise (e.g. `"admin"`).
pub const TOOL_REQUIREMENT_META: &str = "io.cellgate/requires";

/// Refuses unauthenticated calls when authentication is required. The
/// transport authenticates (HTTP answers 401 before any JSON-RPC); this
/// stage makes sure no entry point forgets to.
pub struct RequireAuthStage {
    pub required: bool,
}

impl Stage for RequireAuthStage {
    type State = ();
    fn before<'a>(&'a self, call: &'a mut Call) -> BoxFuture<'a, Result<(), McpError>> {
        Box::pin(async move {
            if self.required && call.ctx.principal.auth == AuthMethod::None {
                call.ctx.trail.deny("authenticate", "no credential");
                return Err(McpError::unauthenticated(
                    "authentication required: present a bearer token or an API key",
                ));
            }
            call.ctx.trail.allow("authenticate");
            Ok(())
        })
    }
}

async fn tenant_policy(
    directory: &Directory,
    ctx: &CallContext,
) -> Result<Arc<TenantPolicy>, McpError> {
    match directory.policy(&ctx.tenant).await {
        Ok(Some(p)) => Ok(p),
        // Same words for a missing tenant as for a forbidden one would hide
        // nothing here: the caller's own credential names the tenant.
        Ok(None) => Err(McpError::forbidden(format!(
            "tenant `{}` does not exist",
            ctx.tenant
        ))),
        Err(e) => {
            tracing::error!(tenant = %ctx.tenant, error = %e, "loading the tenant policy failed");
            Err(McpError::internal(
                "the tenant's policy could not be loaded",
            ))
        }
    }
}

/// Refuses calls into tenants that do not exist or are suspended.
pub struct TenantStage {
    pub directory: Arc<Directory>,
}

impl Stage for TenantStage {
    type State = ();
    fn before<'a>(&'a self, call: &'a mut Call) -> BoxFuture<'a, Result<(), McpError>> {
        Box::pin(async move {
            let policy = match tenant_policy(&self.directory, &call.ctx).await {
                Ok(p) => p,
                Err(e) => {
                    call.ctx.trail.deny("tenant", e.message.clone());
                    return Err(e);
                }
            };
            if policy.tenant.status == TenantStatus::Suspended {
                call.ctx.trail.deny("tenant", "suspended");
                return Err(McpError::forbidden(format!(
                    "tenant `{}` is suspended",
                    call.ctx.tenant
                )));
            }
            call.ctx.trail.allow("tenant");
            Ok(())
        })
    }
}

/// GCRA limits per tenant, principal and tool, by the tenant's plan.
pub struct RateLimitStage {
    pub directory: Arc<Directory>,
    pub limiter: Arc<dyn RateLimiter>,
    pub config: RateLimitConfig,
    pub metrics: RateLimitMetrics,
}

/// `cellgate_rate_limited_total{scope}`: calls refused by a rate limit, by
/// the scope whose limit was hit (`tenant`, `principal`, `tool`, or
/// `unavailable` when the limiter itself failed).
#[derive(Clone, Default)]
pub struct RateLimitMetrics {
    refused: Family<ScopeLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScopeLabel {
    scope: &'static str,
}

impl RateLimitMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "rate_limited",
            "Calls refused by a rate limit, by the scope whose limit was hit",
            self.refused.clone(),
        );
    }

    /// Refusals counted so far for `scope`.
    pub fn refused(&self, scope: &'static str) -> u64 {
        self.refused.get_or_create(&ScopeLabel { scope }).get()
    }
}

impl Stage for RateLimitStage {
    type State = ();
    fn before<'a>(&'a self, call: &'a mut Call) -> BoxFuture<'a, Result<(), McpError>> {
        Box::pin(async move {
            let policy = tenant_policy(&self.directory, &call.ctx).await?;
            let plan = self
                .config
                .plans
                .get(&policy.tenant.plan)
                .or_else(|| self.config.plans.get("default"));
            let Some(plan) = plan else {
                call.ctx.trail.allow("rate_limit");
                return Ok(());
            };
            let tool = match &call.request {
                Request::CallTool { name, .. } => Some(name.as_str()),
                _ => None,
            };
            let keys = limit_keys(plan, &call.ctx.tenant, &call.ctx.principal.id, tool);
            match self.limiter.check(&keys).await {
                Ok(Limited::No) => {
                    call.ctx.trail.allow("rate_limit");
                    Ok(())
                }
                Ok(Limited::Yes { scope, retry_after }) => {
                    self.metrics
                        .refused
                        .get_or_create(&ScopeLabel { scope })
                        .inc();
                    call.ctx.trail.deny("rate_limit", format!("{scope} limit"));
                    Err(McpError::rate_limited(
                        format!(
                            "rate limit of the {scope} exceeded (plan `{}`); retry in {} ms",
                            policy.tenant.plan,
                            retry_after.as_millis().max(1)
                        ),
                        retry_after,
                    ))
                }
                Err(e) => {
                    // Deny by default: limits are a control, not a hint.
                    tracing::error!(error = %e, "rate limiter failed; refusing the call");
                    self.metrics
                        .refused
                        .get_or_create(&ScopeLabel {
                            scope: "unavailable",
                        })
                        .inc();
                    call.ctx.trail.deny("rate_limit", "limiter unavailable");
                    Err(McpError::new(
                        cellgate_kernel::codes::SERVER_ERROR,
                        e.to_string(),
                    ))
                }
            }
        })
    }
}

/// Roles → permissions, the permission matrix and CEL conditions. Refuses
/// calls the caller may not make, and removes from lists what it may not see.
pub struct AuthorizeStage {
    pub directory: Arc<Directory>,
    pub catalog: Arc<Catalog>,
}

/// What `after` needs to filter a list.
pub struct ListFilter {
    policy: Arc<TenantPolicy>,
    ctx: CallContext,
    roles: Vec<String>,
    kind: ListKind,
}

#[derive(Clone, Copy)]
enum ListKind {
    Tools,
    Prompts,
    Resources,
    Templates,
}

impl AuthorizeStage {
    fn roles(&self, policy: &TenantPolicy, ctx: &CallContext) -> Option<Vec<String>> {
        let credential_roles: Vec<String> = if ctx.principal.auth == AuthMethod::None {
            self.directory.config.anonymous_roles.clone()
        } else {
            ctx.principal.roles.to_vec()
        };
        policy.roles_of(&ctx.principal.id, &credential_roles)
    }
}

/// The permission a tool definition (its fields besides name, description
/// and input schema) declares through [`TOOL_REQUIREMENT_META`].
pub fn declared_requirement(tool: Option<&Map<String, Value>>) -> Option<Permission> {
    tool?
        .get("_meta")?
        .get(TOOL_REQUIREMENT_META)?
        .as_str()
        .and_then(Permission::parse)
}

/// The caller's verified token claims, or `null`, borrowed.
fn claims_of(ctx: &CallContext) -> &Value {
    static NONE: Value = Value::Null;
    ctx.principal.claims.as_deref().unwrap_or(&NONE)
}

fn caller<'a>(ctx: &'a CallContext, roles: &'a [String], claims: &'a Value) -> Caller<'a> {
    Caller {
        id: &ctx.principal.id,
        kind: ctx.principal.kind.as_str(),
        roles,
        tenant: &ctx.tenant,
        claims,
    }
}

impl Stage for AuthorizeStage {
    type State = Option<ListFilter>;

    fn before<'a>(
        &'a self,
        call: &'a mut Call,
    ) -> BoxFuture<'a, Result<Option<ListFilter>, McpError>> {
        Box::pin(async move {
            let policy = tenant_policy(&self.directory, &call.ctx).await?;
            let Some(roles) = self.roles(&policy, &call.ctx) else {
                call.ctx.trail.deny("authorize", "member disabled");
                return Err(McpError::forbidden(format!(
                    "principal `{}` is disabled in tenant `{}`",
                    call.ctx.principal.id, call.ctx.tenant
                )));
            };
            let list = |kind| {
                Ok(Some(ListFilter {
                    policy: policy.clone(),
                    ctx: call.ctx.clone(),
                    roles: roles.clone(),
                    kind,
                }))
            };
            let (target, declared_perm, args) = match &call.request {
                Request::ListTools { .. } => return list(ListKind::Tools),
                Request::ListPrompts { .. } => return list(ListKind::Prompts),
                Request::ListResources { .. } => return list(ListKind::Resources),
                Request::ListResourceTemplates { .. } => return list(ListKind::Templates),
                Request::Complete { .. } => {
                    call.ctx.trail.allow("authorize");
                    return Ok(None);
                }
                Request::CallTool { name, arguments } => {
                    let tool = self.catalog.tool(&call.ctx, name).await?;
                    let perm = declared_requirement(tool.as_ref().map(|t| &t.extra));
                    (Target::Tool(name), perm, Some(arguments))
                }
                Request::GetPrompt { name, arguments } => {
                    (Target::Prompt(name), None, Some(arguments))
                }
                Request::ReadResource { uri } => (Target::Resource(uri), None, None),
            };
            let claims = claims_of(&call.ctx);
            let req = policy.matrix.requirement(&target, declared_perm);
            // Only a condition reads the arguments: copy them into a JSON
            // value for it, not on every call.
            let args = match (&req.condition, args) {
                (Some(_), Some(a)) => Value::Object(a.clone()),
                _ => Value::Object(Map::new()),
            };
            let access = check(
                &req,
                &policy.roles,
                &caller(&call.ctx, &roles, claims),
                &target,
                Some(&args),
            );
            if access.audit {
                call.ctx
                    .trail
                    .record("authorize", Verdict::Flag, Some("audit required".into()));
            }
            if access.approval {
                call.ctx
                    .trail
                    .record("authorize", Verdict::Flag, Some("approval required".into()));
            }
            if !access.allowed {
                call.ctx.trail.deny("authorize", access.reason.clone());
                return Err(McpError::forbidden(access.reason));
            }
            call.ctx.trail.allow("authorize");
            Ok(None)
        })
    }

    fn after<'a>(
        &'a self,
        state: Option<ListFilter>,
        result: &'a mut Result<Value, McpError>,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let (Some(f), Ok(Value::Object(obj))) = (state, result) else {
                return;
            };
            let (key, name_field) = match f.kind {
                ListKind::Tools => ("tools", "name"),
                ListKind::Prompts => ("prompts", "name"),
                ListKind::Resources => ("resources", "uri"),
                ListKind::Templates => ("resourceTemplates", "uriTemplate"),
            };
            let who = caller(&f.ctx, &f.roles, claims_of(&f.ctx));
            let Some(Value::Array(items)) = obj.get_mut(key) else {
                return;
            };
            let before = items.len();
            items.retain(|item| {
                let Some(name) = item.get(name_field).and_then(Value::as_str) else {
                    return false;
                };
                let target = match f.kind {
                    ListKind::Tools => Target::Tool(name),
                    ListKind::Prompts => Target::Prompt(name),
                    ListKind::Resources | ListKind::Templates => Target::Resource(name),
                };
                let perm = match f.kind {
                    ListKind::Tools => declared_requirement(item.as_object()),
                    _ => None,
                };
                let req = f.policy.matrix.requirement(&target, perm);
                check(&req, &f.policy.roles, &who, &target, None).allowed
            });
            let hidden = before - items.len();
            if hidden > 0 {
                f.ctx.trail.record(
                    "authorize",
                    Verdict::Modify,
                    Some(format!("{hidden} hidden from the list")),
                );
            } else {
                f.ctx.trail.allow("authorize");
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryLimiter;
    use crate::directory::{Member, StoredRule};
    use cellgate_config::{PermissionRuleConfig, PolicyConfig, RatePlan};
    use cellgate_kernel::{Pipeline, Principal, PrincipalKind, Provider, StageLayer, Tool, codes};
    use cellgate_store::{Store, StoreConfig, TenantId};
    use serde_json::json;

    /// Offers `echo`, `admin_thing` (declares admin) and a prompt.
    struct Tools;
    impl Provider for Tools {
        fn id(&self) -> &str {
            "tools"
        }
        fn list_tools<'a>(
            &'a self,
            _: &'a CallContext,
        ) -> BoxFuture<'a, Result<Vec<Tool>, McpError>> {
            Box::pin(async {
                Ok(vec![
                    Tool::new("echo", "echo", json!({"type": "object"})),
                    Tool::new("fs__write", "write", json!({"type": "object"})),
                    Tool::new("admin_thing", "admin", json!({"type": "object"}))
                        .with("_meta", json!({ TOOL_REQUIREMENT_META: "admin" })),
                ])
            })
        }
        fn call_tool<'a>(
            &'a self,
            _: &'a CallContext,
            name: &'a str,
            _: Map<String, Value>,
        ) -> BoxFuture<'a, Result<Value, McpError>> {
            Box::pin(async move { Ok(json!({"content": [{"type": "text", "text": name}]})) })
        }
    }

    struct Fixture {
        pipeline: Pipeline,
        metrics: RateLimitMetrics,
        directory: Arc<Directory>,
        _dir: TempDir,
    }

    struct TempDir(std::path::PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    async fn fixture(plan: RatePlan, rules: Vec<PermissionRuleConfig>) -> Fixture {
        let dir = std::env::temp_dir().join(format!(
            "cellgate-policy-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let store = Store::open(&StoreConfig::Sqlite {
            path: dir.join("t.db"),
        })
        .await
        .unwrap();
        for t in ["acme", "beta"] {
            store
                .tenants()
                .ensure(&TenantId::parse(t).unwrap(), t)
                .await
                .unwrap();
        }
        let directory = Arc::new(
            Directory::new(
                store,
                PolicyConfig {
                    rules,
                    ..Default::default()
                },
            )
            .unwrap(),
        );
        let catalog = Catalog::new(vec![Arc::new(Tools)]);
        let metrics = RateLimitMetrics::default();
        let rate = RateLimitConfig {
            plans: [("default".to_owned(), plan)].into(),
            ..Default::default()
        };
        let pipeline = Pipeline::builder(catalog.clone())
            .layer(StageLayer::new(AuthorizeStage {
                directory: directory.clone(),
                catalog,
            }))
            .layer(StageLayer::new(RateLimitStage {
                directory: directory.clone(),
                limiter: Arc::new(MemoryLimiter::new()),
                config: rate,
                metrics: metrics.clone(),
            }))
            .layer(StageLayer::new(TenantStage {
                directory: directory.clone(),
            }))
            .layer(StageLayer::new(RequireAuthStage { required: true }))
            .build();
        Fixture {
            pipeline,
            metrics,
            directory,
            _dir: TempDir(dir),
        }
    }

    fn ctx(tenant: &str, id: &str, roles: &[&str]) -> CallContext {
        let mut c = CallContext::detached(tenant);
        c.principal = Principal {
            id: Arc::from(id),
            kind: PrincipalKind::User,
            roles: roles.iter().map(|r| r.to_string()).collect(),
            scopes: Arc::from(Vec::new()),
            auth: AuthMethod::Jwt,
            claims: None,
        };
        c
    }

    fn call(ctx: CallContext, tool: &str, args: Value) -> Call {
        Call {
            ctx,
            request: Request::CallTool {
                name: tool.into(),
                arguments: args.as_object().cloned().unwrap_or_default(),
            },
        }
    }

    fn unlimited() -> RatePlan {
        RatePlan {
            tenant_per_second: 0,
            principal_per_second: 0,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn anonymous_is_refused_when_auth_is_required() {
        let f = fixture(unlimited(), vec![]).await;
        let e = f
            .pipeline
            .call(call(CallContext::detached("acme"), "echo", json!({})))
            .await
            .unwrap_err();
        assert_eq!(e.code, codes::UNAUTHENTICATED);
    }

    #[tokio::test]
    async fn roles_decide_and_lists_show_only_what_may_be_called() {
        let f = fixture(unlimited(), vec![]).await;
        let viewer = ctx("acme", "v", &["viewer"]);
        let e = f
            .pipeline
            .call(call(viewer.clone(), "echo", json!({})))
            .await
            .unwrap_err();
        assert_eq!(e.code, codes::FORBIDDEN);
        assert!(e.message.contains("`execute` permission"), "{}", e.message);
        let trail = viewer.trail.snapshot();
        assert!(
            trail
                .iter()
                .any(|d| d.layer == "authorize" && d.verdict == Verdict::Deny),
            "{trail:?}"
        );

        let dev = ctx("acme", "d", &["developer"]);
        assert!(
            f.pipeline
                .call(call(dev.clone(), "echo", json!({})))
                .await
                .is_ok()
        );
        let e = f
            .pipeline
            .call(call(dev.clone(), "admin_thing", json!({})))
            .await
            .unwrap_err();
        assert!(e.message.contains("`admin` permission"), "{}", e.message);

        let list = |c: CallContext| Call {
            ctx: c,
            request: Request::ListTools { cursor: None },
        };
        let names = |v: Value| -> Vec<String> {
            v["tools"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["name"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(
            names(f.pipeline.call(list(dev)).await.unwrap()),
            ["echo", "fs__write"]
        );
        assert!(names(f.pipeline.call(list(viewer)).await.unwrap()).is_empty());
        let admin = ctx("acme", "a", &["admin"]);
        assert_eq!(names(f.pipeline.call(list(admin)).await.unwrap()).len(), 3);
    }

    #[tokio::test]
    async fn tenant_rules_members_and_conditions() {
        let f = fixture(
            unlimited(),
            vec![PermissionRuleConfig {
                pattern: "fs__*".into(),
                permission: Some("write".into()),
                ..Default::default()
            }],
        )
        .await;
        let dev = ctx("acme", "dana", &["developer"]);
        let e = f
            .pipeline
            .call(call(dev.clone(), "fs__write", json!({})))
            .await
            .unwrap_err();
        assert!(e.message.contains("rule \"fs__*\""), "{}", e.message);

        // A tenant rule comes first: developers may write under /tmp.
        f.directory
            .put_rule(
                "acme",
                &StoredRule {
                    id: "tmp-writes".into(),
                    order: 1,
                    rule: PermissionRuleConfig {
                        pattern: "fs__write".into(),
                        permission: Some("execute".into()),
                        condition: Some(r#"args.path.startsWith("/tmp/")"#.into()),
                        ..Default::default()
                    },
                },
            )
            .await
            .unwrap();
        assert!(
            f.pipeline
                .call(call(dev.clone(), "fs__write", json!({"path": "/tmp/x"})))
                .await
                .is_ok()
        );
        assert!(
            f.pipeline
                .call(call(dev.clone(), "fs__write", json!({"path": "/etc/x"})))
                .await
                .is_err()
        );
        // The rule is acme's alone.
        let beta_dev = ctx("beta", "dana", &["developer"]);
        assert!(
            f.pipeline
                .call(call(beta_dev, "fs__write", json!({"path": "/tmp/x"})))
                .await
                .is_err()
        );

        // Roles assigned in the tenant add to the credential's; disabling wins.
        let viewer = ctx("acme", "vic", &["viewer"]);
        assert!(
            f.pipeline
                .call(call(viewer.clone(), "echo", json!({})))
                .await
                .is_err()
        );
        let mut member = Member {
            id: "vic".into(),
            kind: PrincipalKind::User,
            name: "Vic".into(),
            roles: vec!["developer".into()],
            disabled: false,
        };
        f.directory.put_member("acme", &member).await.unwrap();
        assert!(
            f.pipeline
                .call(call(viewer.clone(), "echo", json!({})))
                .await
                .is_ok()
        );
        member.disabled = true;
        f.directory.put_member("acme", &member).await.unwrap();
        let e = f
            .pipeline
            .call(call(viewer, "echo", json!({})))
            .await
            .unwrap_err();
        assert!(e.message.contains("disabled"), "{}", e.message);

        // A bad rule is refused and nothing is stored.
        let bad = StoredRule {
            id: "bad".into(),
            order: 0,
            rule: PermissionRuleConfig {
                pattern: "x[".into(),
                deny: true,
                ..Default::default()
            },
        };
        assert!(f.directory.put_rule("acme", &bad).await.is_err());
        assert_eq!(f.directory.describe("acme").await.unwrap().2.len(), 1);
    }

    #[tokio::test]
    async fn suspended_and_unknown_tenants_are_refused() {
        let f = fixture(unlimited(), vec![]).await;
        let e = f
            .pipeline
            .call(call(ctx("ghost", "a", &["admin"]), "echo", json!({})))
            .await
            .unwrap_err();
        assert_eq!(e.code, codes::FORBIDDEN);
        assert!(e.message.contains("does not exist"));
        f.directory
            .store()
            .tenants()
            .set_status(&TenantId::parse("acme").unwrap(), TenantStatus::Suspended)
            .await
            .unwrap();
        f.directory.invalidate("acme");
        let e = f
            .pipeline
            .call(call(ctx("acme", "a", &["admin"]), "echo", json!({})))
            .await
            .unwrap_err();
        assert!(e.message.contains("suspended"), "{}", e.message);
    }

    #[tokio::test]
    async fn rate_limits_refuse_with_retry_after_per_principal() {
        let plan = RatePlan {
            tenant_per_second: 0,
            principal_per_second: 1,
            principal_burst: 2,
            ..Default::default()
        };
        let f = fixture(plan, vec![]).await;
        let dev = || ctx("acme", "d", &["developer"]);
        assert!(
            f.pipeline
                .call(call(dev(), "echo", json!({})))
                .await
                .is_ok()
        );
        assert!(
            f.pipeline
                .call(call(dev(), "echo", json!({})))
                .await
                .is_ok()
        );
        let e = f
            .pipeline
            .call(call(dev(), "echo", json!({})))
            .await
            .unwrap_err();
        assert_eq!(e.code, codes::RATE_LIMITED);
        assert!(e.data.as_ref().unwrap()["retryAfterMs"].as_u64().unwrap() >= 1);
        assert_eq!(f.metrics.refused("principal"), 1);
        assert_eq!(f.metrics.refused("tenant"), 0);
        // Someone else is not affected.
        assert!(
            f.pipeline
                .call(call(ctx("acme", "e", &["developer"]), "echo", json!({})))
                .await
                .is_ok()
        );
    }
}
