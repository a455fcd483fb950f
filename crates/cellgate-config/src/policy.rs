//! `[policy]` and `[rate_limit]`: what a caller may do, and how often.
//! Owned by cellgate-policy.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::diagnostic::Problem;

/// Roles, the permission matrix and tenant rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// The built-in role hierarchy: `standard` (viewer < developer < operator
    /// < team_lead < admin) or `governance` (read_only < operator <
    /// coordinator < governance < emergency). Tenants may add their own roles.
    pub role_set: RoleSet,
    /// Roles of the anonymous caller when authentication is off (the single
    /// local tenant on loopback). Default: `admin`, so a local instance is
    /// fully usable without setup.
    pub anonymous_roles: Vec<String>,
    /// The tenant whose administrators manage other tenants (create,
    /// suspend, delete). Administrators of other tenants manage only their own.
    pub operator_tenant: String,
    /// The permission matrix: rules tried in order after each tenant's own
    /// rules; the first whose pattern matches decides. A tool without a
    /// matching rule needs the permission its provider declares, else `execute`.
    pub rules: Vec<PermissionRuleConfig>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            role_set: RoleSet::Standard,
            anonymous_roles: vec!["admin".into()],
            operator_tenant: "local".into(),
            rules: Vec::new(),
        }
    }
}

/// A built-in role hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RoleSet {
    /// viewer (10) < developer (20) < operator (30) < team_lead (40) < admin (50).
    Standard,
    /// read_only (10) < operator (20) < coordinator (30) < governance (40) < emergency (50).
    Governance,
}

/// One row of the permission matrix.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PermissionRuleConfig {
    /// Glob over names: `*` any run of characters, `?` one, `[abc]` a class.
    /// For example `github__*` or `delete_*`.
    pub pattern: String,
    /// What the pattern names: `tool` (default), `prompt` or `resource` (a URI).
    pub kind: RuleKind,
    /// The caller needs a role of at least this level (a number, or the
    /// name of a role whose level counts).
    pub min_role: Option<String>,
    /// The caller needs this permission: read, write, execute, admin, delegate.
    pub permission: Option<String>,
    /// Refuse outright, whoever asks (to hide a tool from everyone).
    pub deny: bool,
    /// Calls must be audited even if auditing is sampled or off.
    pub audit: bool,
    /// Calls need approval first (used by the governance gate).
    pub approval: bool,
    /// A CEL expression over `principal`, `tenant`, `tool`, `args` and
    /// `claims` that must be true, e.g. `args.path.startsWith("/tmp/")`.
    pub condition: Option<String>,
}

/// What a permission rule's pattern names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    #[default]
    Tool,
    Prompt,
    Resource,
}

pub(crate) const PERMISSIONS: &[&str] = &["read", "write", "execute", "admin", "delegate"];

impl PolicyConfig {
    pub(crate) fn validate(&self, p: &mut Vec<Problem>) {
        for (i, rule) in self.rules.iter().enumerate() {
            let key = |k: &str| format!("policy.rules[{i}].{k}");
            if rule.pattern.trim().is_empty() {
                p.push(Problem::new(key("pattern"), "must not be empty"));
            }
            if let Some(perm) = &rule.permission
                && !PERMISSIONS.contains(&perm.as_str())
            {
                p.push(Problem::new(
                    key("permission"),
                    format!("{perm:?} is not one of {}", PERMISSIONS.join(", ")),
                ));
            }
            if !rule.deny
                && rule.min_role.is_none()
                && rule.permission.is_none()
                && rule.condition.is_none()
            {
                p.push(Problem::new(
                    key("pattern"),
                    "the rule requires nothing: set min_role, permission, condition or deny",
                ));
            }
        }
        if self.operator_tenant.is_empty() {
            p.push(Problem::new("policy.operator_tenant", "must not be empty"));
        }
    }
}

/// Rate limits (GCRA) per tenant, principal and tool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Limit calls at all.
    pub enabled: bool,
    /// `memory` (one process) or `redis` (shared by replicas).
    pub backend: RateLimitBackend,
    /// Redis only: `redis://host:6379/0`.
    pub redis_url: Option<String>,
    /// Limits by plan name; a tenant's plan picks one (`default` when the
    /// tenant's plan has no entry).
    pub plans: BTreeMap<String, RatePlan>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            backend: RateLimitBackend::Memory,
            redis_url: None,
            plans: BTreeMap::from([("default".to_owned(), RatePlan::default())]),
        }
    }
}

/// Where rate-limit state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitBackend {
    Memory,
    Redis,
}

/// Sustained rates (calls per second) and bursts; a rate of 0 means no
/// limit (the burst is then unused), a burst of 0 means "as many as one
/// second's rate".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RatePlan {
    /// All calls of one tenant.
    pub tenant_per_second: u32,
    pub tenant_burst: u32,
    /// All calls of one principal.
    pub principal_per_second: u32,
    pub principal_burst: u32,
    /// Calls of one principal to one tool.
    pub tool_per_second: u32,
    pub tool_burst: u32,
}

impl Default for RatePlan {
    fn default() -> Self {
        Self {
            tenant_per_second: 2000,
            tenant_burst: 4000,
            principal_per_second: 500,
            principal_burst: 1000,
            tool_per_second: 0,
            tool_burst: 0,
        }
    }
}

impl RateLimitConfig {
    pub(crate) fn validate(&self, p: &mut Vec<Problem>) {
        match (self.backend, &self.redis_url) {
            (RateLimitBackend::Redis, None) => p.push(Problem::new(
                "rate_limit.redis_url",
                "required with backend = \"redis\" (redis://host:6379)",
            )),
            (RateLimitBackend::Redis, Some(u))
                if !(u.starts_with("redis://") || u.starts_with("rediss://")) =>
            {
                p.push(Problem::new(
                    "rate_limit.redis_url",
                    "must start with redis:// or rediss://",
                ))
            }
            _ => {}
        }
    }
}
