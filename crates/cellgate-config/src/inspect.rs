//! `[inspect]` and `[filter]`: what calls may contain. Owned by cellgate-inspect.

use std::collections::BTreeMap;
use std::net::IpAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::diagnostic::Problem;

/// Inspection of tool arguments and outputs: schema validation, size and
/// depth limits, scored threat rules.
///
/// Every threat rule that matches a call adds its score once (the sum over
/// distinct rules); a call whose score reaches `block_threshold` is refused,
/// one that reaches `flag_threshold` goes through and is noted in the audit
/// trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct InspectConfig {
    /// Inspect calls at all.
    pub enabled: bool,
    /// Validate tool arguments against the tool's `inputSchema` (JSON
    /// Schema). A violation is refused with an invalid-params error naming
    /// the JSON pointer of the offending field. Remote `$ref`s are never
    /// fetched.
    pub validate_schema: bool,
    /// Also scan what comes back (tool results, resource contents, prompt
    /// messages) with the rules that apply to outputs: prompt injection
    /// planted in data a tool fetched (indirect injection).
    pub scan_outputs: bool,
    /// Compiled tool input schemas kept in memory (one per tool name; a
    /// changed definition is recompiled).
    pub schema_cache_size: u32,
    /// Extra rule files (TOML, the format of the built-in rules) loaded after
    /// the built-in set. Relative paths are taken from the working directory.
    /// A rule id may appear only once across all files.
    pub rule_files: Vec<String>,
    /// Largest size of a call's arguments, serialized as JSON, in bytes.
    pub max_argument_bytes: u64,
    /// Deepest nesting of objects and arrays in a call's arguments (the
    /// arguments object itself is depth 1).
    pub max_depth: u32,
    /// Longest string value in a call's arguments, in bytes.
    pub max_string_length: u64,
    /// Most elements in one array of a call's arguments.
    pub max_array_length: u64,
    /// Threat score at which a call is let through but flagged in the audit trail.
    pub flag_threshold: u32,
    /// Threat score at which a call is refused (error -32006 naming the rules).
    pub block_threshold: u32,
    /// Ids of rules (built-in or from `rule_files`) that are not applied.
    pub disabled_rules: Vec<String>,
    /// Hosts that URLs in arguments may target although they look internal
    /// (SSRF rule): exact names (`metadata.google.internal`), `*.suffix`
    /// wildcards (`*.svc.cluster.local`) or IP literals.
    pub ssrf_allow_hosts: Vec<String>,
    /// Address ranges (CIDR, such as `10.20.0.0/16` or `fd00::/8`) that URLs
    /// in arguments may target although they are private (SSRF rule).
    pub ssrf_allow_cidrs: Vec<String>,
    /// Per-tenant policies, by tenant id. A key set here replaces the default
    /// above for that tenant (lists are replaced, not merged); keys left out
    /// keep the default.
    pub tenants: BTreeMap<String, InspectTenantConfig>,
}

impl Default for InspectConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            validate_schema: true,
            scan_outputs: true,
            schema_cache_size: 1024,
            rule_files: Vec::new(),
            max_argument_bytes: 1024 * 1024,
            max_depth: 32,
            max_string_length: 256 * 1024,
            max_array_length: 10_000,
            flag_threshold: 30,
            block_threshold: 70,
            disabled_rules: Vec::new(),
            ssrf_allow_hosts: Vec::new(),
            ssrf_allow_cidrs: Vec::new(),
            tenants: BTreeMap::new(),
        }
    }
}

/// One tenant's inspection policy: every key is optional and replaces the
/// default of `[inspect]` for this tenant.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct InspectTenantConfig {
    /// Largest size of a call's arguments, serialized as JSON, in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_argument_bytes: Option<u64>,
    /// Deepest nesting of objects and arrays in a call's arguments.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_depth: Option<u32>,
    /// Longest string value in a call's arguments, in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_string_length: Option<u64>,
    /// Most elements in one array of a call's arguments.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_array_length: Option<u64>,
    /// Threat score at which a call is flagged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flag_threshold: Option<u32>,
    /// Threat score at which a call is refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_threshold: Option<u32>,
    /// Ids of rules not applied for this tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled_rules: Option<Vec<String>>,
    /// Hosts this tenant's URLs may target although they look internal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssrf_allow_hosts: Option<Vec<String>>,
    /// Address ranges (CIDR) this tenant's URLs may target although they are private.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssrf_allow_cidrs: Option<Vec<String>>,
}

impl InspectConfig {
    pub(crate) fn validate(&self, p: &mut Vec<Problem>) {
        range(
            p,
            "inspect.schema_cache_size",
            u64::from(self.schema_cache_size),
            1,
            1_000_000,
        );
        for (i, file) in self.rule_files.iter().enumerate() {
            if file.trim().is_empty() {
                p.push(Problem::new(
                    format!("inspect.rule_files[{i}]"),
                    "must not be empty (a path to a TOML rule file)",
                ));
            }
        }
        let t = InspectTenantConfig {
            max_argument_bytes: Some(self.max_argument_bytes),
            max_depth: Some(self.max_depth),
            max_string_length: Some(self.max_string_length),
            max_array_length: Some(self.max_array_length),
            flag_threshold: Some(self.flag_threshold),
            block_threshold: Some(self.block_threshold),
            disabled_rules: Some(self.disabled_rules.clone()),
            ssrf_allow_hosts: Some(self.ssrf_allow_hosts.clone()),
            ssrf_allow_cidrs: Some(self.ssrf_allow_cidrs.clone()),
        };
        t.validate(p, "inspect", None);
        for (tenant, over) in &self.tenants {
            if tenant.trim().is_empty() {
                p.push(Problem::new(
                    "inspect.tenants",
                    "a tenant id must not be empty",
                ));
                continue;
            }
            over.validate(
                p,
                &format!("inspect.tenants.{tenant}"),
                Some((self.flag_threshold, self.block_threshold)),
            );
        }
    }
}

impl InspectTenantConfig {
    /// `defaults` are the thresholds a tenant inherits, so that a tenant
    /// setting only one threshold is still checked against the other.
    fn validate(&self, p: &mut Vec<Problem>, prefix: &str, defaults: Option<(u32, u32)>) {
        let key = |k: &str| format!("{prefix}.{k}");
        if let Some(v) = self.max_argument_bytes {
            range(p, &key("max_argument_bytes"), v, 64, 1 << 30);
        }
        if let Some(v) = self.max_depth {
            range(p, &key("max_depth"), u64::from(v), 1, 1024);
        }
        if let Some(v) = self.max_string_length {
            range(p, &key("max_string_length"), v, 1, 1 << 30);
        }
        if let Some(v) = self.max_array_length {
            range(p, &key("max_array_length"), v, 1, 100_000_000);
        }
        if let Some(v) = self.flag_threshold {
            range(p, &key("flag_threshold"), u64::from(v), 1, 1_000_000);
        }
        if let Some(v) = self.block_threshold {
            range(p, &key("block_threshold"), u64::from(v), 1, 1_000_000);
        }
        let flag = self.flag_threshold.or(defaults.map(|d| d.0));
        let block = self.block_threshold.or(defaults.map(|d| d.1));
        if let (Some(flag), Some(block)) = (flag, block)
            && flag > block
            && (self.flag_threshold.is_some() || self.block_threshold.is_some())
        {
            let k = if self.flag_threshold.is_some() {
                "flag_threshold"
            } else {
                "block_threshold"
            };
            p.push(Problem::new(
                key(k),
                format!(
                    "flag_threshold ({flag}) must not be above block_threshold ({block}): a call would be refused before it could be flagged"
                ),
            ));
        }
        for (i, id) in self.disabled_rules.iter().flatten().enumerate() {
            if id.trim().is_empty() {
                p.push(Problem::new(
                    format!("{prefix}.disabled_rules[{i}]"),
                    "must not be empty (a rule id such as \"exfil.base64\")",
                ));
            }
        }
        for (i, host) in self.ssrf_allow_hosts.iter().flatten().enumerate() {
            if !is_host_pattern(host) {
                p.push(Problem::new(
                    format!("{prefix}.ssrf_allow_hosts[{i}]"),
                    format!(
                        "{host:?} is not a host name, `*.suffix` wildcard or IP address (no scheme, port or path)"
                    ),
                ));
            }
        }
        for (i, cidr) in self.ssrf_allow_cidrs.iter().flatten().enumerate() {
            if let Err(why) = check_cidr(cidr) {
                p.push(Problem::new(format!("{prefix}.ssrf_allow_cidrs[{i}]"), why));
            }
        }
    }
}

/// The content filter (concept extraction, classification, policy, tagging)
/// applied to inputs and outputs.
///
/// Detectors find e-mail addresses, phone numbers, payment cards (Luhn
/// checked), IBANs (mod-97 checked), national identity numbers, IP addresses
/// and secrets (cloud keys, tokens, private keys); each category gets an
/// action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct FilterConfig {
    /// Filter calls at all.
    pub enabled: bool,
    /// Filter inputs: tool arguments and prompt arguments (redaction
    /// rewrites them before the provider sees them).
    pub inputs: bool,
    /// Filter outputs: tool results (text content and structuredContent),
    /// resource contents, prompt messages and error messages.
    pub outputs: bool,
    /// What to do when a detector category is found.
    pub actions: FilterActions,
    /// National identity number patterns, each a named regular expression
    /// (Rust `regex` syntax). Findings are tagged `pii.national_id.<name>`
    /// and handled by `actions.national_id`. The shipped list holds the US
    /// Social Security Number as an example; setting this key replaces it
    /// (an empty list turns the detector off).
    pub national_ids: Vec<NationalIdPattern>,
    /// Per-tenant policies, by tenant id. Keys set here replace the defaults
    /// above for that tenant; keys left out keep them.
    pub tenants: BTreeMap<String, FilterTenantConfig>,
}

impl Default for FilterConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            inputs: true,
            outputs: true,
            actions: FilterActions::default(),
            national_ids: vec![NationalIdPattern {
                name: "us_ssn".into(),
                pattern: r"\b(?:00[1-9]|0[1-9]\d|[1-578]\d\d|6[0-57-9]\d|66[0-57-9])-(?:0[1-9]|[1-9]\d)-(?:000[1-9]|00[1-9]\d|0[1-9]\d\d|[1-9]\d{3})\b".into(),
            }],
            tenants: BTreeMap::new(),
        }
    }
}

/// What the content filter does with a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FilterAction {
    /// Let it through, unrecorded beyond statistics.
    Allow,
    /// Let it through and record its concept tag in the audit trail.
    Tag,
    /// Replace it with a typed placeholder such as `[REDACTED:email]`.
    Redact,
    /// Refuse the call (input) or withhold the result (output).
    Block,
}

impl FilterAction {
    /// The action as written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            FilterAction::Allow => "allow",
            FilterAction::Tag => "tag",
            FilterAction::Redact => "redact",
            FilterAction::Block => "block",
        }
    }
}

/// The action of each detector category.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct FilterActions {
    /// E-mail addresses (`pii.email`).
    pub email: FilterAction,
    /// Phone numbers in international (`+44 20 7946 0958`) or North American
    /// (`(415) 555-2671`) form (`pii.phone`).
    pub phone: FilterAction,
    /// Payment card numbers, 13–19 digits passing the Luhn check (`finance.card`).
    pub card: FilterAction,
    /// IBANs passing the mod-97 check (`finance.iban`).
    pub iban: FilterAction,
    /// National identity numbers from `national_ids` (`pii.national_id.<name>`).
    pub national_id: FilterAction,
    /// IPv4 and IPv6 addresses (`net.ip`).
    pub ip: FilterAction,
    /// Credentials: AWS keys, PEM private keys, JWTs, GitHub, Slack and
    /// OpenAI-style tokens, `api_key=…` assignments (`secret.*`).
    pub secret: FilterAction,
}

impl Default for FilterActions {
    fn default() -> Self {
        Self {
            email: FilterAction::Tag,
            phone: FilterAction::Tag,
            card: FilterAction::Redact,
            iban: FilterAction::Redact,
            national_id: FilterAction::Redact,
            ip: FilterAction::Allow,
            secret: FilterAction::Redact,
        }
    }
}

/// A named national identity number pattern.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NationalIdPattern {
    /// Lower-case name (letters, digits, `_`), used in the tag
    /// (`pii.national_id.<name>`) and the placeholder (`[REDACTED:<name>]`).
    pub name: String,
    /// Regular expression (Rust `regex` syntax) matching one number.
    pub pattern: String,
}

/// One tenant's content-filter policy: keys set here replace the defaults of
/// `[filter]` for this tenant.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct FilterTenantConfig {
    /// Filter this tenant's inputs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inputs: Option<bool>,
    /// Filter this tenant's outputs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outputs: Option<bool>,
    /// Actions for this tenant, by category; categories left out keep the default.
    pub actions: FilterActionOverrides,
}

/// Per-category actions of one tenant; a category left out keeps the default.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct FilterActionOverrides {
    /// E-mail addresses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<FilterAction>,
    /// Phone numbers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone: Option<FilterAction>,
    /// Payment card numbers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub card: Option<FilterAction>,
    /// IBANs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iban: Option<FilterAction>,
    /// National identity numbers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub national_id: Option<FilterAction>,
    /// IP addresses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<FilterAction>,
    /// Credentials and tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<FilterAction>,
}

impl FilterConfig {
    pub(crate) fn validate(&self, p: &mut Vec<Problem>) {
        let mut seen = std::collections::BTreeSet::new();
        for (i, id) in self.national_ids.iter().enumerate() {
            let ok_name = !id.name.is_empty()
                && id
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !ok_name {
                p.push(Problem::new(
                    format!("filter.national_ids[{i}].name"),
                    format!(
                        "{:?} is not a lower-case name of letters, digits and `_` (such as \"us_ssn\")",
                        id.name
                    ),
                ));
            } else if !seen.insert(id.name.as_str()) {
                p.push(Problem::new(
                    format!("filter.national_ids[{i}].name"),
                    format!("{:?} is used by an earlier pattern", id.name),
                ));
            }
            if id.pattern.trim().is_empty() {
                p.push(Problem::new(
                    format!("filter.national_ids[{i}].pattern"),
                    "must not be empty",
                ));
            }
        }
        for tenant in self.tenants.keys() {
            if tenant.trim().is_empty() {
                p.push(Problem::new(
                    "filter.tenants",
                    "a tenant id must not be empty",
                ));
            }
        }
    }
}

fn range(p: &mut Vec<Problem>, key: &str, value: u64, min: u64, max: u64) {
    if value < min || value > max {
        p.push(Problem::new(
            key,
            format!("{value} is outside {min}..={max}"),
        ));
    }
}

fn is_host_pattern(s: &str) -> bool {
    let name = s.strip_prefix("*.").unwrap_or(s);
    !name.is_empty()
        && (name.parse::<IpAddr>().is_ok()
            || name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_'))
}

fn check_cidr(s: &str) -> Result<(), String> {
    let bad = || format!("{s:?} is not an address range such as 10.20.0.0/16 or fd00::/8");
    let (addr, len) = s.split_once('/').ok_or_else(bad)?;
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if len > max {
        return Err(format!("{s:?}: the prefix length {len} is above {max}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::check_text;

    fn keys(text: &str) -> Vec<String> {
        check_text(text)
            .unwrap_err()
            .into_iter()
            .map(|d| d.key.unwrap_or_default())
            .collect()
    }

    #[test]
    fn defaults_are_valid_and_documented() {
        let c = check_text("").unwrap();
        assert!(c.inspect.enabled && c.filter.enabled);
        assert_eq!(c.inspect.block_threshold, 70);
        assert_eq!(c.filter.national_ids[0].name, "us_ssn");
        let schema = crate::json_schema().to_string();
        assert!(schema.contains("Threat score at which a call is refused"));
        assert!(schema.contains("[REDACTED:email]"));
        let vars = crate::env_overrides();
        assert!(
            vars.iter()
                .any(|(v, _)| v == "CELLGATE_INSPECT_BLOCK_THRESHOLD")
        );
        assert!(
            vars.iter()
                .any(|(v, _)| v == "CELLGATE_FILTER_ACTIONS_CARD")
        );
    }

    #[test]
    fn inspect_values_are_checked_with_their_keys() {
        let k = keys(
            "[inspect]\nmax_depth = 0\nflag_threshold = 90\nblock_threshold = 50\nssrf_allow_cidrs = [\"10.0.0.0/33\", \"nope\"]\nssrf_allow_hosts = [\"http://x\"]\nrule_files = [\"\"]\n[inspect.tenants.acme]\nblock_threshold = 10\nmax_array_length = 0\n",
        );
        for want in [
            "inspect.max_depth",
            "inspect.flag_threshold",
            "inspect.ssrf_allow_cidrs[0]",
            "inspect.ssrf_allow_cidrs[1]",
            "inspect.ssrf_allow_hosts[0]",
            "inspect.rule_files[0]",
            "inspect.tenants.acme.block_threshold",
            "inspect.tenants.acme.max_array_length",
        ] {
            assert!(k.contains(&want.to_string()), "{want} missing in {k:?}");
        }
    }

    #[test]
    fn filter_values_are_checked_with_their_keys() {
        let k = keys(
            "[filter]\nnational_ids = [{ name = \"Bad Name\", pattern = \"x\" }, { name = \"ok\", pattern = \" \" }, { name = \"ok\", pattern = \"y\" }]\n",
        );
        assert_eq!(
            k,
            vec![
                "filter.national_ids[0].name",
                "filter.national_ids[1].pattern",
                "filter.national_ids[2].name"
            ]
        );
        let c = check_text(
            "[filter.actions]\nemail = \"block\"\n[filter.tenants.acme.actions]\ncard = \"allow\"\n",
        )
        .unwrap();
        assert_eq!(c.filter.actions.email.as_str(), "block");
        assert_eq!(
            c.filter.tenants["acme"].actions.card.map(|a| a.as_str()),
            Some("allow")
        );
        assert!(check_text("[filter.actions]\nemail = \"shred\"\n").is_err());
    }
}
