//! Per-tenant inspection policies: limits, thresholds, disabled rules and
//! the SSRF allow-list, and the [`InspectPolicies`] trait through which the
//! stage asks for a tenant's.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use cellgate_config::InspectConfig;

use crate::InspectError;
use crate::ssrf::SsrfAllow;

/// Size and shape limits on a call's arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest serialized size of the arguments, in bytes.
    pub max_argument_bytes: u64,
    /// Deepest nesting (the arguments object is depth 1).
    pub max_depth: u32,
    /// Longest string value, in bytes.
    pub max_string_length: u64,
    /// Most elements in one array.
    pub max_array_length: u64,
}

impl Default for Limits {
    fn default() -> Self {
        let c = InspectConfig::default();
        Self {
            max_argument_bytes: c.max_argument_bytes,
            max_depth: c.max_depth,
            max_string_length: c.max_string_length,
            max_array_length: c.max_array_length,
        }
    }
}

/// What inspection enforces for one tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct InspectPolicy {
    pub limits: Limits,
    /// A call whose threat score reaches this is let through and flagged.
    pub flag_threshold: u32,
    /// A call whose threat score reaches this is refused.
    pub block_threshold: u32,
    /// Rule ids not applied.
    pub disabled_rules: HashSet<String>,
    /// Internal hosts and ranges URLs may target anyway.
    pub ssrf_allow: SsrfAllow,
}

impl Default for InspectPolicy {
    fn default() -> Self {
        let c = InspectConfig::default();
        Self {
            limits: Limits::default(),
            flag_threshold: c.flag_threshold,
            block_threshold: c.block_threshold,
            disabled_rules: HashSet::new(),
            ssrf_allow: SsrfAllow::default(),
        }
    }
}

impl InspectPolicy {
    /// The default policy of `[inspect]`.
    pub fn from_config(cfg: &InspectConfig) -> Result<Self, InspectError> {
        Ok(Self {
            limits: Limits {
                max_argument_bytes: cfg.max_argument_bytes,
                max_depth: cfg.max_depth,
                max_string_length: cfg.max_string_length,
                max_array_length: cfg.max_array_length,
            },
            flag_threshold: cfg.flag_threshold,
            block_threshold: cfg.block_threshold,
            disabled_rules: cfg.disabled_rules.iter().cloned().collect(),
            ssrf_allow: SsrfAllow::new(&cfg.ssrf_allow_hosts, &cfg.ssrf_allow_cidrs)
                .map_err(|m| InspectError::config("inspect.ssrf_allow_cidrs", m))?,
        })
    }

    /// The policy of `tenant`: its overrides in `[inspect.tenants.<id>]`
    /// over the default.
    pub fn for_tenant(cfg: &InspectConfig, tenant: &str) -> Result<Self, InspectError> {
        let mut p = Self::from_config(cfg)?;
        let Some(t) = cfg.tenants.get(tenant) else {
            return Ok(p);
        };
        let l = &mut p.limits;
        l.max_argument_bytes = t.max_argument_bytes.unwrap_or(l.max_argument_bytes);
        l.max_depth = t.max_depth.unwrap_or(l.max_depth);
        l.max_string_length = t.max_string_length.unwrap_or(l.max_string_length);
        l.max_array_length = t.max_array_length.unwrap_or(l.max_array_length);
        p.flag_threshold = t.flag_threshold.unwrap_or(p.flag_threshold);
        p.block_threshold = t.block_threshold.unwrap_or(p.block_threshold);
        if let Some(d) = &t.disabled_rules {
            p.disabled_rules = d.iter().cloned().collect();
        }
        if t.ssrf_allow_hosts.is_some() || t.ssrf_allow_cidrs.is_some() {
            p.ssrf_allow = SsrfAllow::new(
                t.ssrf_allow_hosts.as_ref().unwrap_or(&cfg.ssrf_allow_hosts),
                t.ssrf_allow_cidrs.as_ref().unwrap_or(&cfg.ssrf_allow_cidrs),
            )
            .map_err(|m| {
                InspectError::config(format!("inspect.tenants.{tenant}.ssrf_allow_cidrs"), m)
            })?;
        }
        Ok(p)
    }

    pub(crate) fn is_disabled(&self, rule: &str) -> bool {
        !self.disabled_rules.is_empty() && self.disabled_rules.contains(rule)
    }
}

/// Where the inspection stage gets each tenant's policy. Implement it to
/// keep policies elsewhere (a database, a control plane); [`StaticInspectPolicies`]
/// holds them from the configuration.
pub trait InspectPolicies: Send + Sync {
    fn policy(&self, tenant: &str) -> Arc<InspectPolicy>;
}

/// A default policy and per-tenant ones, fixed at start-up.
#[derive(Debug, Clone, Default)]
pub struct StaticInspectPolicies {
    default: Arc<InspectPolicy>,
    tenants: HashMap<String, Arc<InspectPolicy>>,
}

impl StaticInspectPolicies {
    pub fn new(default: InspectPolicy) -> Self {
        Self {
            default: Arc::new(default),
            tenants: HashMap::new(),
        }
    }

    pub fn with_tenant(mut self, tenant: impl Into<String>, policy: InspectPolicy) -> Self {
        self.tenants.insert(tenant.into(), Arc::new(policy));
        self
    }

    /// The default of `[inspect]` and one policy per `[inspect.tenants.<id>]`.
    pub fn from_config(cfg: &InspectConfig) -> Result<Self, InspectError> {
        let mut s = Self::new(InspectPolicy::from_config(cfg)?);
        for tenant in cfg.tenants.keys() {
            s = s.with_tenant(tenant.clone(), InspectPolicy::for_tenant(cfg, tenant)?);
        }
        Ok(s)
    }
}

impl InspectPolicies for StaticInspectPolicies {
    fn policy(&self, tenant: &str) -> Arc<InspectPolicy> {
        self.tenants.get(tenant).unwrap_or(&self.default).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_overrides_replace_defaults() {
        let cfg: InspectConfig = toml::from_str(
            "block_threshold = 60\ndisabled_rules = [\"exfil.hex\"]\nssrf_allow_cidrs = [\"10.0.0.0/8\"]\n[tenants.acme]\nblock_threshold = 200\nmax_depth = 4\nssrf_allow_hosts = [\"*.acme.internal\"]\n[tenants.strict]\ndisabled_rules = []\n",
        )
        .unwrap();
        let p = StaticInspectPolicies::from_config(&cfg).unwrap();
        let d = p.policy("nobody");
        assert_eq!((d.block_threshold, d.limits.max_depth), (60, 32));
        assert!(d.is_disabled("exfil.hex"));
        let acme = p.policy("acme");
        assert_eq!((acme.block_threshold, acme.limits.max_depth), (200, 4));
        assert_eq!(acme.flag_threshold, 30, "not overridden");
        assert!(acme.is_disabled("exfil.hex"), "inherited");
        assert_ne!(acme.ssrf_allow, d.ssrf_allow);
        assert!(
            !p.policy("strict").is_disabled("exfil.hex"),
            "replaced by an empty list"
        );
    }
}
