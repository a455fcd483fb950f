//! `[auth]`: who may call. Owned by the authentication work (cellgate-auth).

use std::collections::HashSet;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::diagnostic::Problem;

/// Authentication of callers: JWT bearer tokens from configured issuers, API
/// keys issued by cellgate, and tokens of the instance's own issuer (dev
/// tokens and the device authorization grant).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Refuse calls without a valid credential (JWT bearer token or API key).
    /// Off by default only for a loopback listener: a single local tenant.
    /// A credential that is presented must be valid even when this is off.
    pub required: bool,
    /// The canonical URL of this gateway's MCP endpoint, such as
    /// `https://gateway.example.com/mcp`. Tokens are bound to it: it is the
    /// default audience of every issuer, the `resource` of the OAuth metadata
    /// and the audience of the instance's own tokens. Default:
    /// `http://<server.listen>/mcp`.
    pub resource_url: Option<String>,
    /// Authorization servers (issuer URLs) that clients should get tokens
    /// from, advertised in `/.well-known/oauth-protected-resource`. The
    /// instance's own issuer is added when the device flow is on.
    pub authorization_servers: Vec<String>,
    /// OAuth scopes advertised in the protected-resource metadata.
    pub scopes_supported: Vec<String>,
    /// Paths served without authentication: exact paths, or prefixes ending
    /// in `/*` (`/.well-known/*` matches everything below `/.well-known/`).
    pub exempt_paths: Vec<String>,
    /// Verified tokens kept in memory (so a warm call skips the signature
    /// check); 0 turns the cache off.
    pub token_cache_entries: u32,
    /// External JWT issuers whose bearer tokens are accepted.
    pub issuers: Vec<IssuerConfig>,
    /// API keys issued by cellgate (`cgk_…`).
    pub api_keys: ApiKeysConfig,
    /// The instance's own issuer: an Ed25519 key in the data directory
    /// (`instance.key`) signing dev tokens and device-flow tokens.
    pub local_issuer: LocalIssuerConfig,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            required: false,
            resource_url: None,
            authorization_servers: Vec::new(),
            scopes_supported: Vec::new(),
            exempt_paths: [
                "/healthz",
                "/readyz",
                "/.well-known/*",
                "/oauth/*",
                "/device",
            ]
            .map(String::from)
            .to_vec(),
            token_cache_entries: 10_000,
            issuers: Vec::new(),
            api_keys: ApiKeysConfig::default(),
            local_issuer: LocalIssuerConfig::default(),
        }
    }
}

/// A JWS algorithm an issuer may sign with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256 (shared secret).
    HS256,
    /// HMAC with SHA-384 (shared secret).
    HS384,
    /// HMAC with SHA-512 (shared secret).
    HS512,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// RSASSA-PSS with SHA-384.
    PS384,
    /// RSASSA-PSS with SHA-512.
    PS512,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// ECDSA on P-384 with SHA-384.
    ES384,
    /// Ed25519.
    EdDSA,
}

impl JwtAlgorithm {
    /// HMAC algorithms verify with a shared secret; the others with a public key.
    pub fn is_hmac(self) -> bool {
        matches!(self, Self::HS256 | Self::HS384 | Self::HS512)
    }

    /// The JWS name (`RS256`, `EdDSA`, …), as in a token's `alg` header.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HS256 => "HS256",
            Self::HS384 => "HS384",
            Self::HS512 => "HS512",
            Self::RS256 => "RS256",
            Self::RS384 => "RS384",
            Self::RS512 => "RS512",
            Self::PS256 => "PS256",
            Self::PS384 => "PS384",
            Self::PS512 => "PS512",
            Self::ES256 => "ES256",
            Self::ES384 => "ES384",
            Self::EdDSA => "EdDSA",
        }
    }
}

/// Which kind of principal an issuer's tokens stand for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PrincipalKindConfig {
    /// A person.
    #[default]
    User,
    /// An AI agent acting on its own account.
    Agent,
    /// A machine client.
    Service,
}

/// One external issuer of JWT bearer tokens. Exactly one key source:
/// `secret`, `pem`, `key_file` or `jwks_url`.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct IssuerConfig {
    /// A short name for logs and error messages, unique among issuers.
    pub name: String,
    /// The exact `iss` claim of this issuer's tokens.
    pub issuer: String,
    /// Accepted `aud` values; a token must name one of them. Default: the
    /// `resource_url`.
    pub audience: Vec<String>,
    /// Algorithms accepted from this issuer (never taken from a token).
    /// HMAC (`HS*`) and public-key algorithms cannot be mixed.
    pub algorithms: Vec<JwtAlgorithm>,
    /// HMAC only: the shared secret (at least 32 bytes). Prefer `key_file`
    /// or the environment so it stays out of files.
    pub secret: Option<String>,
    /// Public-key algorithms: the issuer's public key, PEM (`BEGIN PUBLIC
    /// KEY` or `BEGIN RSA PUBLIC KEY`).
    pub pem: Option<String>,
    /// A file holding the PEM public key (public-key algorithms) or the
    /// shared secret (HMAC; surrounding whitespace is ignored).
    pub key_file: Option<String>,
    /// The key id (`kid`) of the static key; tokens naming another `kid` are
    /// refused. Unset: any `kid`, or none, is accepted.
    pub kid: Option<String>,
    /// Where the issuer publishes its keys (JWKS). `https://`, or `http://`
    /// on a loopback address only.
    pub jwks_url: Option<String>,
    /// Seconds after which the JWKS is fetched again.
    pub jwks_refresh_secs: u64,
    /// Least seconds between two fetches caused by a token with an unknown
    /// `kid`, so forged tokens cannot cause a fetch storm.
    pub jwks_min_refetch_secs: u64,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
    /// The claim naming the principal.
    pub principal_claim: String,
    /// The claim naming the tenant (a dotted path reaches into objects).
    pub tenant_claim: String,
    /// Pins every token of this issuer to one tenant: the tenant claim may
    /// then be absent, but if present it must name this tenant.
    pub tenant: Option<String>,
    /// The claim holding the roles: an array of strings, or one string of
    /// names separated by spaces or commas (a dotted path reaches into
    /// objects, e.g. `realm_access.roles`).
    pub roles_claim: String,
    /// What kind of principal the tokens stand for: `user`, `agent` or `service`.
    pub principal_kind: PrincipalKindConfig,
}

impl Default for IssuerConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            issuer: String::new(),
            audience: Vec::new(),
            algorithms: Vec::new(),
            secret: None,
            pem: None,
            key_file: None,
            kid: None,
            jwks_url: None,
            jwks_refresh_secs: 300,
            jwks_min_refetch_secs: 30,
            leeway_secs: 60,
            principal_claim: "sub".into(),
            tenant_claim: "tenant".into(),
            tenant: None,
            roles_claim: "roles".into(),
            principal_kind: PrincipalKindConfig::User,
        }
    }
}

// Hand-written so the shared secret never reaches a log line.
impl fmt::Debug for IssuerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuerConfig")
            .field("name", &self.name)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("algorithms", &self.algorithms)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field(
                "pem",
                &self.pem.as_ref().map(|p| format!("<{} bytes>", p.len())),
            )
            .field("key_file", &self.key_file)
            .field("kid", &self.kid)
            .field("jwks_url", &self.jwks_url)
            .field("jwks_refresh_secs", &self.jwks_refresh_secs)
            .field("jwks_min_refetch_secs", &self.jwks_min_refetch_secs)
            .field("leeway_secs", &self.leeway_secs)
            .field("principal_claim", &self.principal_claim)
            .field("tenant_claim", &self.tenant_claim)
            .field("tenant", &self.tenant)
            .field("roles_claim", &self.roles_claim)
            .field("principal_kind", &self.principal_kind)
            .finish()
    }
}

/// API keys issued by cellgate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ApiKeysConfig {
    /// Accept API keys.
    pub enabled: bool,
    /// Seconds a successful verification is remembered (an Argon2 check per
    /// call would be far too slow). Revoking on this instance takes effect
    /// at once; on other replicas within this time. 0 turns the cache off.
    pub cache_ttl_secs: u64,
    /// Seconds between writes of keys' last-used times (collected in memory
    /// meanwhile, so a call does not cost a write).
    pub last_used_flush_secs: u64,
}

impl Default for ApiKeysConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            cache_ttl_secs: 30,
            last_used_flush_secs: 60,
        }
    }
}

/// The instance's own issuer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct LocalIssuerConfig {
    /// Accept tokens signed by the instance key (`cellgate token issue`,
    /// device flow). Replicas must share `instance.key` to accept each
    /// other's tokens.
    pub enabled: bool,
    /// The `iss` of the instance's tokens. Default: the origin of
    /// `resource_url` (such as `https://gateway.example.com`).
    pub issuer: Option<String>,
    /// Lifetime of issued tokens when none is asked for, in seconds.
    pub token_ttl_secs: u64,
    /// Longest lifetime a token may be issued with, in seconds.
    pub max_token_ttl_secs: u64,
    /// Serve the OAuth device authorization grant (`/oauth/device_authorization`,
    /// `/oauth/token`, `/device`) so `cellgate login` can get a token.
    pub device_flow: bool,
    /// Seconds a device code stays valid.
    pub device_code_ttl_secs: u64,
    /// Seconds a device must wait between polls of `/oauth/token`.
    pub device_poll_interval_secs: u64,
    /// Roles allowed to approve a device code (the approver presents an API
    /// key or token of their tenant on the `/device` page).
    pub approver_roles: Vec<String>,
}

impl Default for LocalIssuerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            issuer: None,
            token_ttl_secs: 3600,
            max_token_ttl_secs: 30 * 24 * 3600,
            device_flow: true,
            device_code_ttl_secs: 600,
            device_poll_interval_secs: 5,
            approver_roles: vec!["admin".into()],
        }
    }
}

/// Shortest accepted HMAC secret, in bytes (RFC 7518 §3.2: at least the
/// hash size; 32 bytes for HS256).
pub const MIN_HMAC_SECRET_BYTES: usize = 32;

impl AuthConfig {
    pub(crate) fn validate(&self, p: &mut Vec<Problem>) {
        if let Some(url) = &self.resource_url
            && let Err(why) = check_url(url, false)
        {
            p.push(Problem::new("auth.resource_url", why));
        }
        for (i, url) in self.authorization_servers.iter().enumerate() {
            if let Err(why) = check_url(url, false) {
                p.push(Problem::new(
                    format!("auth.authorization_servers[{i}]"),
                    why,
                ));
            }
        }
        for (i, scope) in self.scopes_supported.iter().enumerate() {
            if !is_scope_token(scope) {
                p.push(Problem::new(
                    format!("auth.scopes_supported[{i}]"),
                    format!(
                        "{scope:?} is not a scope: use printable ASCII without spaces, `\"` or `\\`"
                    ),
                ));
            }
        }
        for (i, path) in self.exempt_paths.iter().enumerate() {
            let body = path.strip_suffix("/*").unwrap_or(path);
            if !path.starts_with('/') || body.contains(['*', ' ', '?', '#', '%']) {
                p.push(Problem::new(
                    format!("auth.exempt_paths[{i}]"),
                    format!(
                        "{path:?} is not a path such as /healthz or a prefix such as /.well-known/*"
                    ),
                ));
            }
        }
        range(
            p,
            "auth.token_cache_entries",
            u64::from(self.token_cache_entries),
            0,
            1_000_000,
        );
        let mut names = HashSet::new();
        let mut issuers = HashSet::new();
        for (i, issuer) in self.issuers.iter().enumerate() {
            let key = format!("auth.issuers[{i}]");
            issuer.validate(&key, p);
            if !issuer.name.is_empty() && !names.insert(issuer.name.as_str()) {
                p.push(Problem::new(
                    format!("{key}.name"),
                    format!("another issuer is already named {:?}", issuer.name),
                ));
            }
            if !issuer.issuer.is_empty() && !issuers.insert(issuer.issuer.as_str()) {
                p.push(Problem::new(
                    format!("{key}.issuer"),
                    format!(
                        "another issuer already has iss {:?}; a token must match one issuer",
                        issuer.issuer
                    ),
                ));
            }
        }
        let a = &self.api_keys;
        range(p, "auth.api_keys.cache_ttl_secs", a.cache_ttl_secs, 0, 3600);
        range(
            p,
            "auth.api_keys.last_used_flush_secs",
            a.last_used_flush_secs,
            1,
            3600,
        );
        let l = &self.local_issuer;
        if let Some(iss) = &l.issuer
            && iss.trim().is_empty()
        {
            p.push(Problem::new(
                "auth.local_issuer.issuer",
                "must not be empty",
            ));
        }
        if let Some(iss) = &l.issuer
            && issuers.contains(iss.as_str())
        {
            p.push(Problem::new(
                "auth.local_issuer.issuer",
                format!("{iss:?} is also the iss of a configured issuer"),
            ));
        }
        range(
            p,
            "auth.local_issuer.max_token_ttl_secs",
            l.max_token_ttl_secs,
            60,
            365 * 24 * 3600,
        );
        range(
            p,
            "auth.local_issuer.token_ttl_secs",
            l.token_ttl_secs,
            60,
            l.max_token_ttl_secs.max(60),
        );
        range(
            p,
            "auth.local_issuer.device_code_ttl_secs",
            l.device_code_ttl_secs,
            60,
            3600,
        );
        range(
            p,
            "auth.local_issuer.device_poll_interval_secs",
            l.device_poll_interval_secs,
            1,
            60,
        );
        if l.device_flow && l.approver_roles.is_empty() {
            p.push(Problem::new(
                "auth.local_issuer.approver_roles",
                "the device flow needs at least one role allowed to approve codes",
            ));
        }
        for (i, role) in l.approver_roles.iter().enumerate() {
            if role.trim().is_empty() {
                p.push(Problem::new(
                    format!("auth.local_issuer.approver_roles[{i}]"),
                    "must not be empty",
                ));
            }
        }
    }
}

impl PrincipalKindConfig {
    /// `user`, `agent` or `service`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Agent => "agent",
            Self::Service => "service",
        }
    }
}

impl IssuerConfig {
    fn validate(&self, key: &str, p: &mut Vec<Problem>) {
        let mut problem = |field: &str, message: String| {
            p.push(Problem::new(format!("{key}.{field}"), message));
        };
        if self.name.trim().is_empty() {
            problem("name", "must not be empty".into());
        }
        if self.issuer.trim().is_empty() {
            problem(
                "issuer",
                "must not be empty: it is the `iss` claim tokens must carry".into(),
            );
        }
        for (i, aud) in self.audience.iter().enumerate() {
            if aud.trim().is_empty() {
                problem(&format!("audience[{i}]"), "must not be empty".into());
            }
        }
        if self.algorithms.is_empty() {
            problem(
                "algorithms",
                "list the algorithms this issuer signs with, such as [\"RS256\"]".into(),
            );
        }
        let hmac = self.algorithms.iter().filter(|a| a.is_hmac()).count();
        if hmac > 0 && hmac < self.algorithms.len() {
            problem(
                "algorithms",
                "HMAC (HS*) and public-key algorithms cannot be mixed in one issuer: \
                 a public key must never be usable as an HMAC secret"
                    .into(),
            );
        }
        let sources = [
            self.secret.is_some(),
            self.pem.is_some(),
            self.key_file.is_some(),
            self.jwks_url.is_some(),
        ]
        .iter()
        .filter(|s| **s)
        .count();
        if sources != 1 {
            problem(
                "secret",
                format!(
                    "give exactly one key source (secret, pem, key_file or jwks_url), found {sources}"
                ),
            );
        }
        let is_hmac = hmac > 0 && hmac == self.algorithms.len();
        if is_hmac {
            if self.pem.is_some() || self.jwks_url.is_some() {
                problem(
                    "algorithms",
                    "HMAC issuers take `secret` or `key_file`, not `pem` or `jwks_url`".into(),
                );
            }
            if let Some(secret) = &self.secret
                && secret.len() < MIN_HMAC_SECRET_BYTES
            {
                problem(
                    "secret",
                    format!(
                        "is {} bytes; HMAC secrets must be at least {MIN_HMAC_SECRET_BYTES} bytes",
                        secret.len()
                    ),
                );
            }
        } else if self.secret.is_some() {
            problem(
                "secret",
                "only HMAC (HS*) issuers take a secret; public-key issuers take pem, key_file or jwks_url"
                    .into(),
            );
        }
        if let Some(pem) = &self.pem
            && !pem.contains("-----BEGIN ")
        {
            problem("pem", "is not PEM (no `-----BEGIN` line)".into());
        }
        if self.key_file.as_deref() == Some("") {
            problem("key_file", "must not be empty".into());
        }
        if let Some(url) = &self.jwks_url {
            if let Err(why) = check_url(url, true) {
                problem("jwks_url", why);
            }
            if self.kid.is_some() {
                problem(
                    "kid",
                    "applies to a static key; JWKS keys carry their own kid".into(),
                );
            }
        }
        if self.kid.as_deref().is_some_and(|k| k.is_empty()) {
            problem("kid", "must not be empty".into());
        }
        if !(10..=86_400).contains(&self.jwks_refresh_secs) {
            problem(
                "jwks_refresh_secs",
                format!("{} is outside 10..=86400", self.jwks_refresh_secs),
            );
        }
        if !(1..=3600).contains(&self.jwks_min_refetch_secs) {
            problem(
                "jwks_min_refetch_secs",
                format!("{} is outside 1..=3600", self.jwks_min_refetch_secs),
            );
        }
        if self.leeway_secs > 600 {
            problem(
                "leeway_secs",
                format!("{} is outside 0..=600", self.leeway_secs),
            );
        }
        for (field, value) in [
            ("principal_claim", &self.principal_claim),
            ("tenant_claim", &self.tenant_claim),
            ("roles_claim", &self.roles_claim),
        ] {
            if value.trim().is_empty() {
                problem(field, "must name a claim".into());
            }
        }
        if let Some(tenant) = &self.tenant
            && !is_tenant_id(tenant)
        {
            problem(
                "tenant",
                format!(
                    "{tenant:?} is not a tenant id (1-64 of a-z, 0-9, `_`, `-`, starting with a letter or digit)"
                ),
            );
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

/// An absolute `http(s)://host[...]` URL without fragment. With
/// `https_unless_loopback`, plain `http` is accepted only for loopback hosts.
fn check_url(url: &str, https_unless_loopback: bool) -> Result<(), String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!(
            "{url:?} is not an absolute URL such as https://gateway.example.com/mcp"
        ));
    };
    if !matches!(scheme, "http" | "https") {
        return Err(format!("{url:?}: only http and https URLs are accepted"));
    }
    let host_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..host_end];
    if authority.is_empty() || authority.contains(['@', ' ']) {
        return Err(format!("{url:?} has no valid host"));
    }
    if url.contains('#') || url.contains(char::is_whitespace) {
        return Err(format!("{url:?} must not contain a fragment or spaces"));
    }
    if https_unless_loopback && scheme == "http" {
        let host = authority
            .rsplit_once(':')
            .filter(|(h, port)| !h.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(authority, |(h, _)| h);
        let loopback = host == "localhost" || host == "[::1]" || host.starts_with("127.");
        if !loopback {
            return Err(format!(
                "{url:?}: keys must be fetched over https (plain http only on loopback)"
            ));
        }
    }
    Ok(())
}

/// RFC 6749 §3.3 scope-token: %x21 / %x23-5B / %x5D-7E, at least one.
fn is_scope_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
}

/// The store's tenant-id rule (`cellgate_store::TenantId`), restated here
/// because this crate does not depend on the store.
fn is_tenant_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        && !s.starts_with(['_', '-'])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    fn problems(text: &str) -> Vec<String> {
        match crate::check_text(text) {
            Ok(_) => Vec::new(),
            Err(diagnostics) => diagnostics
                .into_iter()
                .map(|d| format!("{}: {}", d.key.unwrap_or_default(), d.message))
                .collect(),
        }
    }

    #[test]
    fn defaults_are_valid_and_exempt_the_oauth_paths() {
        let config = Config::load(None, Vec::new()).expect("defaults load");
        assert!(!config.auth.required);
        assert_eq!(
            config.auth.exempt_paths,
            [
                "/healthz",
                "/readyz",
                "/.well-known/*",
                "/oauth/*",
                "/device"
            ]
        );
        assert!(config.auth.api_keys.enabled && config.auth.local_issuer.enabled);
    }

    #[test]
    fn environment_overrides_reach_auth_keys() {
        let env = [
            ("CELLGATE_AUTH_REQUIRED", "true"),
            ("CELLGATE_AUTH_RESOURCE_URL", "https://gw.example.com/mcp"),
            ("CELLGATE_AUTH_API_KEYS_CACHE_TTL_SECS", "5"),
            ("CELLGATE_AUTH_LOCAL_ISSUER_DEVICE_FLOW", "false"),
            (
                "CELLGATE_AUTH_ISSUERS",
                r#"[{ name = "idp", issuer = "https://idp.example.com", algorithms = ["RS256"], jwks_url = "https://idp.example.com/jwks" }]"#,
            ),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let config = Config::load(None, env).expect("loads");
        assert!(config.auth.required);
        assert_eq!(
            config.auth.resource_url.as_deref(),
            Some("https://gw.example.com/mcp")
        );
        assert_eq!(config.auth.api_keys.cache_ttl_secs, 5);
        assert!(!config.auth.local_issuer.device_flow);
        assert_eq!(config.auth.issuers.len(), 1);
        assert_eq!(config.auth.issuers[0].algorithms, [JwtAlgorithm::RS256]);
        let vars: Vec<String> = crate::env_overrides().into_iter().map(|(v, _)| v).collect();
        assert!(vars.contains(&"CELLGATE_AUTH_REQUIRED".to_owned()));
        assert!(vars.contains(&"CELLGATE_AUTH_LOCAL_ISSUER_TOKEN_TTL_SECS".to_owned()));
    }

    #[test]
    fn a_good_issuer_passes() {
        let text = r#"
[auth]
required = true
resource_url = "https://gw.example.com/mcp"
scopes_supported = ["mcp:tools", "mcp:read"]

[[auth.issuers]]
name = "corp"
issuer = "https://idp.example.com/realms/corp"
algorithms = ["RS256", "PS256"]
jwks_url = "https://idp.example.com/realms/corp/certs"
tenant_claim = "org_id"
roles_claim = "realm_access.roles"

[[auth.issuers]]
name = "ci"
issuer = "ci"
algorithms = ["HS256"]
secret = "0123456789abcdef0123456789abcdef"
tenant = "build"
"#;
        assert_eq!(problems(text), Vec::<String>::new());
    }

    #[test]
    fn bad_issuers_are_reported_with_their_keys() {
        let text = r#"
[[auth.issuers]]
name = "mixed"
issuer = "x"
algorithms = ["HS256", "RS256"]
secret = "short"

[[auth.issuers]]
name = "mixed"
issuer = "x"
algorithms = []
jwks_url = "http://idp.example.com/certs"
pem = "-----BEGIN PUBLIC KEY-----"
tenant = "Not Valid"
"#;
        let found = problems(text);
        let has = |key: &str, part: &str| {
            found
                .iter()
                .any(|p| p.starts_with(&format!("{key}:")) && p.contains(part))
        };
        assert!(
            has("auth.issuers[0].algorithms", "cannot be mixed"),
            "{found:#?}"
        );
        assert!(has("auth.issuers[1].name", "already named"), "{found:#?}");
        assert!(
            has("auth.issuers[1].issuer", "already has iss"),
            "{found:#?}"
        );
        assert!(
            has("auth.issuers[1].algorithms", "list the algorithms"),
            "{found:#?}"
        );
        assert!(
            has("auth.issuers[1].secret", "exactly one key source"),
            "{found:#?}"
        );
        assert!(has("auth.issuers[1].jwks_url", "https"), "{found:#?}");
        assert!(
            has("auth.issuers[1].tenant", "not a tenant id"),
            "{found:#?}"
        );
    }

    #[test]
    fn short_hmac_secrets_and_misplaced_secrets_are_refused() {
        let text = r#"
[[auth.issuers]]
name = "a"
issuer = "a"
algorithms = ["HS256"]
secret = "too-short"

[[auth.issuers]]
name = "b"
issuer = "b"
algorithms = ["ES256"]
secret = "0123456789abcdef0123456789abcdef"
"#;
        let found = problems(text);
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("auth.issuers[0].secret:") && p.contains("at least 32")),
            "{found:#?}"
        );
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("auth.issuers[1].secret:") && p.contains("only HMAC")),
            "{found:#?}"
        );
    }

    #[test]
    fn urls_paths_and_ranges_are_checked() {
        let text = r#"
[auth]
resource_url = "gw.example.com/mcp"
authorization_servers = ["https://ok.example.com", "ftp://no"]
scopes_supported = ["has space"]
exempt_paths = ["healthz", "/ok/*", "/bad*"]
token_cache_entries = 2000000

[auth.api_keys]
last_used_flush_secs = 0

[auth.local_issuer]
device_poll_interval_secs = 0
approver_roles = []
"#;
        let found = problems(text);
        for key in [
            "auth.resource_url",
            "auth.authorization_servers[1]",
            "auth.scopes_supported[0]",
            "auth.exempt_paths[0]",
            "auth.exempt_paths[2]",
            "auth.token_cache_entries",
            "auth.api_keys.last_used_flush_secs",
            "auth.local_issuer.device_poll_interval_secs",
            "auth.local_issuer.approver_roles",
        ] {
            assert!(
                found.iter().any(|p| p.starts_with(&format!("{key}:"))),
                "{key} not reported in {found:#?}"
            );
        }
        assert!(
            !found.iter().any(|p| p.starts_with("auth.exempt_paths[1]")),
            "{found:#?}"
        );
        assert!(
            !found
                .iter()
                .any(|p| p.starts_with("auth.authorization_servers[0]")),
            "{found:#?}"
        );
    }

    #[test]
    fn loopback_jwks_over_http_is_allowed() {
        assert!(check_url("http://127.0.0.1:8080/jwks", true).is_ok());
        assert!(check_url("http://localhost/jwks", true).is_ok());
        assert!(check_url("http://[::1]:9/jwks", true).is_ok());
        assert!(check_url("http://evil.example.com/jwks", true).is_err());
        assert!(check_url("https://idp/jwks", true).is_ok());
    }

    #[test]
    fn debug_hides_the_secret() {
        let issuer = IssuerConfig {
            secret: Some("hunter2-hunter2-hunter2-hunter2-x".into()),
            ..IssuerConfig::default()
        };
        let shown = format!("{issuer:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
