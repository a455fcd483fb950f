//! The tenant-side data authorization needs: status and plan (the tenant
//! registry), the tenant's own roles, permission rules and role assignments
//! (tenant-scoped documents). Read through a short-lived cache so a call
//! costs no query; writes through this type invalidate at once, and other
//! replicas see them within [`Directory::CACHE_TTL`].

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use cellgate_config::{PermissionRuleConfig, PolicyConfig};
use cellgate_kernel::PrincipalKind;
use cellgate_store::{Store, StoreError, Tenant, TenantId};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::matrix::{Matrix, Rule, RuleError};
use crate::{Role, Roles};

const ROLES: &str = "policy.roles";
const RULES: &str = "policy.rules";
const PRINCIPALS: &str = "policy.principals";
/// Page size when loading a tenant's collections.
const PAGE: u32 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("permission rule `{id}`: {error}")]
    Rule { id: String, error: RuleError },
    #[error("invalid {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("tenant `{0}` does not exist")]
    UnknownTenant(String),
}

/// A principal registered in a tenant (a user, agent or service), with the
/// roles assigned there. Credentials add their own roles on top.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub id: String,
    pub kind: PrincipalKind,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub roles: Vec<String>,
    /// A disabled member is refused whatever its credential says.
    #[serde(default)]
    pub disabled: bool,
}

/// A tenant's rule as stored: its place in the order and the rule itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredRule {
    pub id: String,
    pub order: i64,
    pub rule: PermissionRuleConfig,
}

/// Everything authorization knows about one tenant.
#[derive(Debug)]
pub struct TenantPolicy {
    pub tenant: Tenant,
    pub roles: Roles,
    /// The tenant's rules, then the instance's.
    pub matrix: Matrix,
    pub members: HashMap<String, Member>,
}

impl TenantPolicy {
    /// The roles a caller has here: those its credential carries plus those
    /// assigned to it in this tenant; `None` if the member is disabled.
    pub fn roles_of(&self, principal: &str, credential_roles: &[String]) -> Option<Vec<String>> {
        let mut roles = credential_roles.to_vec();
        if let Some(m) = self.members.get(principal) {
            if m.disabled {
                return None;
            }
            for r in &m.roles {
                if !roles.contains(r) {
                    roles.push(r.clone());
                }
            }
        }
        Some(roles)
    }
}

pub struct Directory {
    store: Store,
    builtin: Roles,
    instance_rules: Matrix,
    pub config: PolicyConfig,
    cache: RwLock<HashMap<String, (Instant, Arc<TenantPolicy>)>>,
}

impl Directory {
    /// How stale a cached tenant policy may get before it is read again.
    pub const CACHE_TTL: Duration = Duration::from_secs(2);

    pub fn new(store: Store, config: PolicyConfig) -> Result<Self, PolicyError> {
        let rules = config
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                Rule::compile(r).map_err(|error| PolicyError::Rule {
                    id: format!("policy.rules[{i}]"),
                    error,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            store,
            builtin: Roles::builtin(config.role_set),
            instance_rules: Matrix::new(rules),
            config,
            cache: RwLock::new(HashMap::new()),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The tenant's policy; `Ok(None)` when the tenant does not exist.
    pub async fn policy(&self, tenant: &str) -> Result<Option<Arc<TenantPolicy>>, PolicyError> {
        if let Some((at, p)) = self
            .cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(tenant)
            && at.elapsed() < Self::CACHE_TTL
        {
            return Ok(Some(p.clone()));
        }
        let Ok(id) = TenantId::parse(tenant) else {
            return Ok(None);
        };
        let Some(record) = self.store.tenants().get(&id).await? else {
            self.cache
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(tenant);
            return Ok(None);
        };
        let docs = self.store.scope(&id).documents();
        let custom: Vec<Role> = load(&docs, ROLES).await?;
        let mut stored: Vec<StoredRule> = load(&docs, RULES).await?;
        stored.sort_by(|a, b| a.order.cmp(&b.order).then_with(|| a.id.cmp(&b.id)));
        let tenant_rules = stored
            .iter()
            .map(|s| {
                Rule::compile(&s.rule).map_err(|error| PolicyError::Rule {
                    id: s.id.clone(),
                    error,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let members: Vec<Member> = load(&docs, PRINCIPALS).await?;
        let policy = Arc::new(TenantPolicy {
            tenant: record,
            roles: self.builtin.with(custom),
            matrix: Matrix::layered(&Matrix::new(tenant_rules), &self.instance_rules),
            members: members.into_iter().map(|m| (m.id.clone(), m)).collect(),
        });
        self.cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(tenant.to_owned(), (Instant::now(), policy.clone()));
        Ok(Some(policy))
    }

    /// Forgets the cached policy of `tenant` (after a write, or a tenant
    /// status change made elsewhere in this process).
    pub fn invalidate(&self, tenant: &str) {
        self.cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(tenant);
    }

    async fn require(&self, tenant: &str) -> Result<TenantId, PolicyError> {
        let id = TenantId::parse(tenant).map_err(PolicyError::Store)?;
        if self.store.tenants().get(&id).await?.is_none() {
            return Err(PolicyError::UnknownTenant(tenant.to_owned()));
        }
        Ok(id)
    }

    /// Adds or replaces a tenant role.
    pub async fn put_role(&self, tenant: &str, role: &Role) -> Result<(), PolicyError> {
        check_name("role name", &role.name)?;
        let id = self.require(tenant).await?;
        self.store
            .scope(&id)
            .documents()
            .put(ROLES, &role.name, &json!(role))
            .await?;
        self.invalidate(tenant);
        Ok(())
    }

    /// Adds or replaces a tenant rule; the rule is compiled first, so a bad
    /// rule is refused and nothing is written.
    pub async fn put_rule(&self, tenant: &str, rule: &StoredRule) -> Result<(), PolicyError> {
        check_name("rule id", &rule.id)?;
        Rule::compile(&rule.rule).map_err(|error| PolicyError::Rule {
            id: rule.id.clone(),
            error,
        })?;
        let id = self.require(tenant).await?;
        self.store
            .scope(&id)
            .documents()
            .put(RULES, &rule.id, &json!(rule))
            .await?;
        self.invalidate(tenant);
        Ok(())
    }

    pub async fn delete_rule(&self, tenant: &str, rule_id: &str) -> Result<bool, PolicyError> {
        let id = self.require(tenant).await?;
        let gone = self
            .store
            .scope(&id)
            .documents()
            .delete(RULES, rule_id)
            .await?;
        self.invalidate(tenant);
        Ok(gone)
    }

    /// Registers (or updates) a member of a tenant.
    pub async fn put_member(&self, tenant: &str, member: &Member) -> Result<(), PolicyError> {
        check_name("principal id", &member.id)?;
        let id = self.require(tenant).await?;
        self.store
            .scope(&id)
            .documents()
            .put(PRINCIPALS, &member.id, &json!(member))
            .await?;
        self.invalidate(tenant);
        Ok(())
    }

    pub async fn remove_member(&self, tenant: &str, principal: &str) -> Result<bool, PolicyError> {
        let id = self.require(tenant).await?;
        let gone = self
            .store
            .scope(&id)
            .documents()
            .delete(PRINCIPALS, principal)
            .await?;
        self.invalidate(tenant);
        Ok(gone)
    }

    /// The tenant's members, roles (built-in and own) and rules, for listing.
    pub async fn describe(
        &self,
        tenant: &str,
    ) -> Result<(Vec<Member>, Vec<Role>, Vec<StoredRule>), PolicyError> {
        let id = self.require(tenant).await?;
        let docs = self.store.scope(&id).documents();
        let mut members: Vec<Member> = load(&docs, PRINCIPALS).await?;
        members.sort_by(|a, b| a.id.cmp(&b.id));
        let policy = self
            .policy(tenant)
            .await?
            .ok_or_else(|| PolicyError::UnknownTenant(tenant.to_owned()))?;
        let mut roles: Vec<Role> = policy.roles.all().cloned().collect();
        roles.sort_by(|a, b| a.level.cmp(&b.level).then_with(|| a.name.cmp(&b.name)));
        let mut rules: Vec<StoredRule> = load(&docs, RULES).await?;
        rules.sort_by(|a, b| a.order.cmp(&b.order).then_with(|| a.id.cmp(&b.id)));
        Ok((members, roles, rules))
    }
}

fn check_name(field: &'static str, s: &str) -> Result<(), PolicyError> {
    if s.is_empty() || s.len() > 255 || s.chars().any(char::is_control) {
        return Err(PolicyError::Invalid {
            field,
            message: "must be 1 to 255 bytes without control characters".into(),
        });
    }
    Ok(())
}

async fn load<T: serde::de::DeserializeOwned>(
    docs: &cellgate_store::Documents,
    collection: &str,
) -> Result<Vec<T>, PolicyError> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = docs.list(collection, after.as_deref(), PAGE).await?;
        let done = page.len() < PAGE as usize;
        after = page.last().map(|d| d.key.clone());
        for d in page {
            // Rows were validated on the way in; one that no longer parses
            // was edited by hand and is skipped loudly rather than failing
            // every call of the tenant.
            match serde_json::from_value::<T>(d.value) {
                Ok(v) => out.push(v),
                Err(e) => {
                    tracing::error!(collection, key = %d.key, error = %e, "skipping an unreadable policy document")
                }
            }
        }
        if done {
            return Ok(out);
        }
    }
}
