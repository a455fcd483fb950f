//! What a caller may do, and how often.
//!
//! - [`Roles`]: role hierarchies with levels and permissions (read, write,
//!   execute, admin, delegate), built-in sets plus each tenant's own roles.
//! - [`Matrix`]: the permission matrix, glob rules per tool, prompt or
//!   resource with a required level or permission, audit and approval flags,
//!   and optional CEL conditions.
//! - [`Directory`]: the tenant-side data these need (status, plan, roles,
//!   rules, role assignments), read from the store and cached.
//! - [`RateLimiter`]: GCRA limits per tenant, principal and tool, in-process
//!   ([`MemoryLimiter`]) or shared through Redis ([`RedisLimiter`]).
//! - The pipeline stages that apply them: [`TenantStage`],
//!   [`RateLimitStage`], [`AuthorizeStage`], and [`ServerScopeStage`],
//!   which confines a virtual server's callers to its subset.
//!
//! It does not authenticate (cellgate-auth establishes the principal) and it
//! does not inspect content (cellgate-inspect does).

mod cel;
mod directory;
mod matrix;
mod ratelimit;
mod roles;
mod servers;
mod stages;

pub use cel::{Condition, ConditionError};
pub use directory::{Directory, Member, PolicyError, StoredRule, TenantPolicy};
pub use matrix::{Access, Caller, Matrix, Requirement, Rule, RuleError, Target, check};
pub use ratelimit::{LimitKey, MemoryLimiter, RateLimiter, RedisLimiter, limit_keys};
pub use roles::{Permission, Permissions, Role, Roles};
pub use servers::{ListKind, ServerScopeStage};
pub use stages::{
    AuthorizeStage, RateLimitMetrics, RateLimitStage, RequireAuthStage, TOOL_REQUIREMENT_META,
    TenantStage, declared_requirement,
};
