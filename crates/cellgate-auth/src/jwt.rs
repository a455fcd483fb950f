//! JWT bearer tokens: configured issuers, their keys (static or JWKS), the
//! checks every token must pass, the mapping of claims onto a principal, and
//! the cache of verified tokens.
//!
//! The token's header is only trusted for `kid` (a lookup name) and `alg`,
//! which must be in the issuer's configured list and fit the key's type, so
//! `alg: none`, key confusion (an RSA public key used as an HMAC secret) and
//! keys embedded in the token (`jwk`, `jku`, `x5u`) get nowhere. The issuer
//! is picked by the unverified `iss`, then everything is checked against
//! that issuer's keys.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cellgate_kernel::{AuthMethod, Principal, PrincipalKind};
use cellgate_store::TenantId;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde_json::{Map, Value};

use crate::cache::{TtlCache, digest};
use crate::clock::{Clock, ms};
use crate::{AuthError, Identity, SetupError};

/// Longest token accepted, in bytes; longer ones are refused before parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Largest JWKS document read, in bytes.
const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Most keys taken from one JWKS document.
const MAX_JWKS_KEYS: usize = 64;
/// Most candidate keys tried for a token without `kid`.
const MAX_CANDIDATES: usize = 8;
/// Longest accepted `kid`, principal or role, in bytes.
const MAX_NAME_BYTES: usize = 255;
/// Most roles taken from a token.
const MAX_ROLES: usize = 64;
/// How long a JWKS fetch may take.
const JWKS_TIMEOUT: Duration = Duration::from_secs(5);

/// Which claims name the principal, the tenant and the roles. A dotted path
/// (`realm_access.roles`) reaches into nested objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimMapping {
    pub principal: String,
    pub tenant: String,
    pub roles: String,
}

impl Default for ClaimMapping {
    fn default() -> Self {
        ClaimMapping {
            principal: "sub".into(),
            tenant: "tenant".into(),
            roles: "roles".into(),
        }
    }
}

/// Where an issuer's verification keys come from.
#[derive(Clone)]
pub enum KeySpec {
    /// An HMAC shared secret.
    Secret {
        secret: Vec<u8>,
        kid: Option<String>,
    },
    /// A PEM public key (RSA, EC P-256/P-384 or Ed25519).
    Pem { pem: String, kid: Option<String> },
    /// A JWKS URL, fetched on first use, again after `refresh`, and when a
    /// token names an unknown `kid` but no more often than `min_refetch`.
    Jwks {
        url: String,
        refresh: Duration,
        min_refetch: Duration,
    },
    /// An Ed25519 public key (the instance's own issuer).
    Ed25519 {
        key: ed25519_dalek::VerifyingKey,
        kid: Option<String>,
    },
}

impl std::fmt::Debug for KeySpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySpec::Secret { kid, .. } => f
                .debug_struct("Secret")
                .field("secret", &"<redacted>")
                .field("kid", kid)
                .finish(),
            KeySpec::Pem { kid, .. } => f.debug_struct("Pem").field("kid", kid).finish(),
            KeySpec::Jwks {
                url,
                refresh,
                min_refetch,
            } => f
                .debug_struct("Jwks")
                .field("url", url)
                .field("refresh", refresh)
                .field("min_refetch", min_refetch)
                .finish(),
            KeySpec::Ed25519 { kid, .. } => f.debug_struct("Ed25519").field("kid", kid).finish(),
        }
    }
}

/// One trusted issuer, as the verifier needs it.
#[derive(Debug, Clone)]
pub struct IssuerSpec {
    /// A short name for errors and logs.
    pub name: String,
    /// The exact `iss` claim.
    pub issuer: String,
    /// Accepted `aud` values; a token must carry one of them.
    pub audiences: Vec<String>,
    /// Accepted algorithms; all HMAC or all public-key.
    pub algorithms: Vec<Algorithm>,
    pub keys: KeySpec,
    /// Tolerated clock skew on `exp` and `nbf`.
    pub leeway: Duration,
    pub claims: ClaimMapping,
    /// Every token of this issuer is for this tenant.
    pub pinned_tenant: Option<String>,
    pub principal_kind: PrincipalKind,
}

/// A verification key with what it may be used for.
#[derive(Clone)]
struct VerifyKey {
    kid: Option<String>,
    family: AlgorithmFamily,
    /// Set when the key is good for one algorithm only (a JWK's `alg`, an
    /// EC key's curve).
    alg: Option<Algorithm>,
    key: DecodingKey,
}

impl VerifyKey {
    fn fits(&self, alg: Algorithm) -> bool {
        self.family == alg.family() && self.alg.is_none_or(|a| a == alg)
    }
}

enum Keys {
    Static(Arc<Vec<VerifyKey>>),
    Jwks(JwksSource),
}

struct Issuer {
    spec: IssuerSpec,
    keys: Keys,
    leeway_secs: i64,
}

/// Verifies JWT bearer tokens of a set of issuers. Cheap to share behind an
/// `Arc`; verified tokens are cached (by SHA-256 of the token, until their
/// `exp`), so a warm call costs a hash and a map lookup.
pub struct JwtVerifier {
    issuers: Vec<Issuer>,
    cache: TtlCache<Identity>,
    clock: Clock,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field(
                "issuers",
                &self
                    .issuers
                    .iter()
                    .map(|i| i.spec.name.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// Builds the verifier; static keys are parsed now, JWKS are fetched on
    /// first use. `cache_entries` bounds the verified-token cache (0: off).
    pub fn new(
        specs: Vec<IssuerSpec>,
        cache_entries: usize,
        clock: Clock,
    ) -> Result<JwtVerifier, SetupError> {
        let mut client = None;
        let mut issuers = Vec::with_capacity(specs.len());
        for (i, spec) in specs.into_iter().enumerate() {
            let at = |field: &str| format!("auth.issuers[{i}].{field}");
            if spec.algorithms.is_empty() {
                return Err(SetupError::invalid(at("algorithms"), "no algorithm listed"));
            }
            let hmac = spec
                .algorithms
                .iter()
                .filter(|a| a.family() == AlgorithmFamily::Hmac)
                .count();
            if hmac != 0 && hmac != spec.algorithms.len() {
                return Err(SetupError::invalid(
                    at("algorithms"),
                    "HMAC and public-key algorithms cannot be mixed in one issuer",
                ));
            }
            if spec.audiences.is_empty() {
                return Err(SetupError::invalid(
                    at("audience"),
                    format!(
                        "issuer `{}` has no audience: tokens must be bound to this resource",
                        spec.name
                    ),
                ));
            }
            if issuers
                .iter()
                .any(|o: &Issuer| o.spec.issuer == spec.issuer)
            {
                return Err(SetupError::invalid(
                    at("issuer"),
                    format!("two issuers have iss {:?}", spec.issuer),
                ));
            }
            let keys = match &spec.keys {
                KeySpec::Jwks {
                    url,
                    refresh,
                    min_refetch,
                } => {
                    if hmac != 0 {
                        return Err(SetupError::invalid(
                            at("jwks_url"),
                            "HMAC secrets are never taken from a JWKS",
                        ));
                    }
                    let client = match &client {
                        Some(c) => c,
                        None => client.insert(http_client()?),
                    };
                    Keys::Jwks(JwksSource {
                        issuer: spec.name.clone(),
                        url: url.clone(),
                        client: client.clone(),
                        refresh_ms: ms(*refresh),
                        min_refetch_ms: ms(*min_refetch),
                        clock: clock.clone(),
                        state: RwLock::new(JwksState::default()),
                        fetch_lock: tokio::sync::Mutex::new(()),
                        fetches: AtomicU64::new(0),
                    })
                }
                other => {
                    let key = static_key(other).map_err(|m| SetupError::invalid(at("keys"), m))?;
                    if !spec.algorithms.iter().any(|a| key.fits(*a)) {
                        return Err(SetupError::invalid(
                            at("algorithms"),
                            format!(
                                "the key of issuer `{}` fits none of the listed algorithms {:?}",
                                spec.name, spec.algorithms
                            ),
                        ));
                    }
                    Keys::Static(Arc::new(vec![key]))
                }
            };
            let leeway_secs = i64::try_from(spec.leeway.as_secs()).unwrap_or(i64::MAX);
            issuers.push(Issuer {
                spec,
                keys,
                leeway_secs,
            });
        }
        Ok(JwtVerifier {
            issuers,
            cache: TtlCache::new(cache_entries),
            clock,
        })
    }

    /// Whether any issuer is configured.
    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    /// How many times the JWKS of the named issuer was fetched (for tests
    /// and metrics); `None` if it has no JWKS.
    pub fn jwks_fetches(&self, issuer_name: &str) -> Option<u64> {
        self.issuers
            .iter()
            .find(|i| i.spec.name == issuer_name)
            .and_then(|i| match &i.keys {
                Keys::Jwks(source) => Some(source.fetches.load(Ordering::Relaxed)),
                Keys::Static(_) => None,
            })
    }

    /// Verified tokens currently cached.
    pub fn cached_tokens(&self) -> usize {
        self.cache.len()
    }

    /// Verifies a token and maps its claims to an identity.
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLarge {
                size: token.len(),
                max: MAX_TOKEN_BYTES,
            });
        }
        let now_ms = self.clock.now_ms();
        let cache_key = digest(token);
        if let Some(identity) = self.cache.get(&cache_key, now_ms) {
            return Ok(identity);
        }
        let parsed = parse(token)?;
        let iss = match parsed.claims.get("iss") {
            Some(Value::String(iss)) => iss,
            Some(_) => return Err(bad_claim("iss", "is not a string")),
            None => return Err(AuthError::MissingClaim("iss".into())),
        };
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.spec.issuer == *iss)
            .ok_or_else(|| AuthError::UnknownIssuer(printable(iss)))?;
        let spec = &issuer.spec;
        let alg = parsed
            .alg
            .parse::<Algorithm>()
            .ok()
            .filter(|a| spec.algorithms.contains(a))
            .ok_or_else(|| AuthError::AlgorithmNotAllowed {
                alg: printable(&parsed.alg),
                issuer: spec.name.clone(),
            })?;
        let keys = match &issuer.keys {
            Keys::Static(keys) => keys.clone(),
            Keys::Jwks(source) => source.keys(parsed.kid.as_deref()).await?,
        };
        let candidates = candidates(&keys, alg, parsed.kid.as_deref(), &spec.name)?;
        let verified = candidates.iter().any(|key| {
            jsonwebtoken::crypto::verify(parsed.signature, parsed.message.as_bytes(), &key.key, alg)
                .unwrap_or(false)
        });
        if !verified {
            return Err(AuthError::BadSignature);
        }
        let now_secs = now_ms.div_euclid(1000);
        let exp = check_times(&parsed.claims, now_secs, issuer.leeway_secs)?;
        check_audience(&parsed.claims, &spec.audiences)?;
        let identity = map_identity(spec, parsed.claims)?;
        let valid_until_ms = exp.saturating_add(issuer.leeway_secs).saturating_mul(1000);
        self.cache
            .insert(cache_key, identity.clone(), valid_until_ms, now_ms);
        Ok(identity)
    }
}

/// The parts of a token, decoded but not yet trusted.
struct Parsed<'a> {
    alg: String,
    kid: Option<String>,
    claims: Map<String, Value>,
    /// `header.payload`, the signed bytes.
    message: &'a str,
    signature: &'a str,
}

fn malformed(why: &str) -> AuthError {
    AuthError::Malformed(why.to_owned())
}

fn bad_claim(claim: &str, problem: &str) -> AuthError {
    AuthError::BadClaim {
        claim: claim.to_owned(),
        problem: problem.to_owned(),
    }
}

fn is_b64url(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn parse(token: &str) -> Result<Parsed<'_>, AuthError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("a JWT has three dot-separated parts"));
    };
    if header.is_empty() || payload.is_empty() {
        return Err(malformed("the header or payload is empty"));
    }
    if ![header, payload, signature].iter().all(|p| is_b64url(p)) {
        return Err(malformed("a part is not base64url"));
    }
    let header_json = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| malformed("the header is not base64url"))?;
    let Ok(Value::Object(header_obj)) = serde_json::from_slice::<Value>(&header_json) else {
        return Err(malformed("the header is not a JSON object"));
    };
    let alg = match header_obj.get("alg") {
        Some(Value::String(alg)) => alg.clone(),
        _ => return Err(malformed("the header has no `alg`")),
    };
    if alg.eq_ignore_ascii_case("none") {
        return Err(AuthError::Unsigned);
    }
    if header_obj.contains_key("crit") {
        return Err(malformed(
            "critical header extensions (`crit`) are not supported",
        ));
    }
    let kid = match header_obj.get("kid") {
        None => None,
        Some(Value::String(kid)) if !kid.is_empty() && kid.len() <= MAX_NAME_BYTES => {
            Some(kid.clone())
        }
        Some(_) => return Err(malformed("the `kid` header is not a short string")),
    };
    if signature.is_empty() {
        return Err(malformed("the signature is empty"));
    }
    let payload_json = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| malformed("the payload is not base64url"))?;
    let Ok(Value::Object(claims)) = serde_json::from_slice::<Value>(&payload_json) else {
        return Err(malformed("the payload is not a JSON object"));
    };
    let message = &token[..header.len() + 1 + payload.len()];
    Ok(Parsed {
        alg,
        kid,
        claims,
        message,
        signature,
    })
}

/// Text from a token, safe for messages and headers: printable ASCII, short.
pub(crate) fn printable(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .filter(|c| *c != '"' && *c != '\\')
        .take(80)
        .collect()
}

fn candidates<'k>(
    keys: &'k [VerifyKey],
    alg: Algorithm,
    kid: Option<&str>,
    issuer: &str,
) -> Result<Vec<&'k VerifyKey>, AuthError> {
    let fitting = keys.iter().filter(|k| k.fits(alg));
    let found: Vec<&VerifyKey> = match kid {
        // A named key: only that one (or unnamed static keys).
        Some(kid) => fitting
            .filter(|k| k.kid.as_deref().is_none_or(|own| own == kid))
            .take(MAX_CANDIDATES)
            .collect(),
        None => fitting.take(MAX_CANDIDATES).collect(),
    };
    if !found.is_empty() {
        return Ok(found);
    }
    match kid {
        Some(kid) if !keys.iter().any(|k| k.kid.as_deref() == Some(kid)) => {
            Err(AuthError::UnknownKeyId {
                kid: printable(kid),
                issuer: issuer.to_owned(),
            })
        }
        _ => Err(AuthError::NoSuitableKey {
            alg: format!("{alg:?}"),
            issuer: issuer.to_owned(),
        }),
    }
}

/// A NumericDate claim as whole seconds.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, AuthError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                Ok(Some(i))
            } else if let Some(f) = n.as_f64().filter(|f| f.is_finite() && f.abs() < 1e15) {
                Ok(Some(f.floor() as i64))
            } else {
                Err(bad_claim(name, "is not a valid time"))
            }
        }
        Some(_) => Err(bad_claim(name, "is not a number")),
    }
}

/// Checks `exp` (required) and `nbf`; returns `exp`.
fn check_times(claims: &Map<String, Value>, now: i64, leeway: i64) -> Result<i64, AuthError> {
    let exp = numeric_date(claims, "exp")?.ok_or_else(|| AuthError::MissingClaim("exp".into()))?;
    if now >= exp.saturating_add(leeway) {
        return Err(AuthError::Expired { at: exp });
    }
    if let Some(nbf) = numeric_date(claims, "nbf")?
        && now.saturating_add(leeway) < nbf
    {
        return Err(AuthError::NotYetValid { at: nbf });
    }
    Ok(exp)
}

fn check_audience(claims: &Map<String, Value>, accepted: &[String]) -> Result<(), AuthError> {
    let matches = |aud: &str| accepted.iter().any(|a| a == aud);
    let ok = match claims.get("aud") {
        None => return Err(AuthError::MissingClaim("aud".into())),
        Some(Value::String(aud)) => matches(aud),
        Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str().is_some_and(matches)),
        Some(_) => return Err(bad_claim("aud", "is neither a string nor an array")),
    };
    if ok {
        Ok(())
    } else {
        Err(AuthError::WrongAudience {
            expected: accepted.join(", "),
        })
    }
}

/// The value at a dotted path (`a.b.c`); a key that itself contains dots is
/// found too when it exists verbatim.
fn claim<'v>(claims: &'v Map<String, Value>, path: &str) -> Option<&'v Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    let mut parts = path.split('.');
    let mut current = claims.get(parts.next()?)?;
    for part in parts {
        current = current.as_object()?.get(part)?;
    }
    Some(current)
}

/// A list claim: an array of strings, or one string separated by spaces or commas.
fn string_list(value: Option<&Value>, name: &str) -> Result<Vec<String>, AuthError> {
    let items: Vec<String> = match value {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => s
            .split([' ', ','])
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| bad_claim(name, "holds something other than strings"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad_claim(name, "is neither a string nor an array")),
    };
    if items.len() > MAX_ROLES {
        return Err(bad_claim(name, "holds too many entries"));
    }
    if items
        .iter()
        .any(|i| i.len() > MAX_NAME_BYTES || i.contains('\0'))
    {
        return Err(bad_claim(name, "holds an entry that is too long"));
    }
    Ok(items)
}

fn map_identity(spec: &IssuerSpec, claims: Map<String, Value>) -> Result<Identity, AuthError> {
    let mapping = &spec.claims;
    let principal = match claim(&claims, &mapping.principal) {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_NAME_BYTES => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => return Err(bad_claim(&mapping.principal, "is not a short string")),
        None => return Err(AuthError::MissingClaim(mapping.principal.clone())),
    };
    let claimed_tenant = match claim(&claims, &mapping.tenant) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(bad_claim(&mapping.tenant, "is not a string")),
    };
    let tenant = match (&spec.pinned_tenant, claimed_tenant) {
        (Some(pinned), Some(found)) if &found != pinned => {
            return Err(AuthError::WrongTenant {
                found: printable(&found),
                pinned: pinned.clone(),
                issuer: spec.name.clone(),
            });
        }
        (Some(pinned), _) => pinned.clone(),
        (None, Some(found)) => found,
        (None, None) => return Err(AuthError::MissingClaim(mapping.tenant.clone())),
    };
    if TenantId::parse(&tenant).is_err() {
        return Err(bad_claim(&mapping.tenant, "is not a valid tenant id"));
    }
    let roles = string_list(claim(&claims, &mapping.roles), &mapping.roles)?;
    let mut scopes = match claims.get("scope") {
        Some(Value::String(s)) => s
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        None => Vec::new(),
        Some(_) => return Err(bad_claim("scope", "is not a space-separated string")),
    };
    for scope in string_list(claims.get("scp"), "scp")? {
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    Ok(Identity {
        tenant,
        principal: Principal {
            id: Arc::from(principal.as_str()),
            kind: spec.principal_kind,
            roles: Arc::from(roles),
            scopes: Arc::from(scopes),
            auth: AuthMethod::Jwt,
            claims: Some(Arc::new(Value::Object(claims))),
        },
    })
}

// ---- keys --------------------------------------------------------------------

fn static_key(spec: &KeySpec) -> Result<VerifyKey, String> {
    match spec {
        KeySpec::Secret { secret, kid } => {
            if secret.len() < 32 {
                return Err("HMAC secrets must be at least 32 bytes".into());
            }
            Ok(VerifyKey {
                kid: kid.clone(),
                family: AlgorithmFamily::Hmac,
                alg: None,
                key: DecodingKey::from_secret(secret),
            })
        }
        KeySpec::Pem { pem, kid } => {
            let (family, alg, key) = pem_key(pem)?;
            Ok(VerifyKey {
                kid: kid.clone(),
                family,
                alg,
                key,
            })
        }
        KeySpec::Ed25519 { key, kid } => Ok(VerifyKey {
            kid: kid.clone(),
            family: AlgorithmFamily::Ed,
            alg: Some(Algorithm::EdDSA),
            key: DecodingKey::from_ed_der(key.as_bytes()),
        }),
        KeySpec::Jwks { .. } => Err("a JWKS is not a static key".into()),
    }
}

/// A PEM public key of any supported type.
fn pem_key(pem: &str) -> Result<(AlgorithmFamily, Option<Algorithm>, DecodingKey), String> {
    if pem.contains("PRIVATE KEY") {
        return Err("this PEM holds a private key; configure the issuer's public key".into());
    }
    let bytes = pem.as_bytes();
    if let Ok(key) = DecodingKey::from_rsa_pem(bytes) {
        return Ok((AlgorithmFamily::Rsa, None, key));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(bytes) {
        // An uncompressed point: 65 bytes on P-256, 97 on P-384.
        let alg = match key.try_get_as_bytes().map(<[u8]>::len) {
            Ok(65) => Algorithm::ES256,
            Ok(97) => Algorithm::ES384,
            _ => return Err("only P-256 and P-384 EC keys are supported".into()),
        };
        return Ok((AlgorithmFamily::Ec, Some(alg), key));
    }
    if let Ok(key) = DecodingKey::from_ed_pem(bytes) {
        if key.try_get_as_bytes().map(<[u8]>::len) != Ok(32) {
            return Err("only Ed25519 keys are supported for EdDSA".into());
        }
        return Ok((AlgorithmFamily::Ed, Some(Algorithm::EdDSA), key));
    }
    Err("not an RSA, EC (P-256, P-384) or Ed25519 public key in PEM".into())
}

fn b64_len(value: Option<&Value>) -> Option<(String, usize)> {
    let s = value?.as_str()?;
    let decoded = URL_SAFE_NO_PAD.decode(s).ok()?;
    Some((s.to_owned(), decoded.len()))
}

/// One JWK, if it is a signature key of a supported type; `None` skips it.
fn jwk_key(jwk: &Value) -> Option<VerifyKey> {
    let obj = jwk.as_object()?;
    if obj.get("use").is_some_and(|u| u != "sig") {
        return None;
    }
    let kid = match obj.get("kid") {
        None => None,
        Some(Value::String(k)) if !k.is_empty() && k.len() <= MAX_NAME_BYTES => Some(k.clone()),
        Some(_) => return None,
    };
    let declared = match obj.get("alg") {
        None => None,
        Some(Value::String(a)) => Some(a.parse::<Algorithm>().ok()?),
        Some(_) => return None,
    };
    let (family, alg, key) = match obj.get("kty")?.as_str()? {
        "RSA" => {
            let (n, n_len) = b64_len(obj.get("n"))?;
            let (e, e_len) = b64_len(obj.get("e"))?;
            // 2048 to 8192 bits; small exponents only.
            if !(256..=1024).contains(&n_len) || e_len == 0 || e_len > 8 {
                return None;
            }
            let key = DecodingKey::from_rsa_components(&n, &e).ok()?;
            (AlgorithmFamily::Rsa, declared, key)
        }
        "EC" => {
            let (curve_alg, size) = match obj.get("crv")?.as_str()? {
                "P-256" => (Algorithm::ES256, 32),
                "P-384" => (Algorithm::ES384, 48),
                _ => return None,
            };
            let (x, x_len) = b64_len(obj.get("x"))?;
            let (y, y_len) = b64_len(obj.get("y"))?;
            if x_len != size || y_len != size || declared.is_some_and(|d| d != curve_alg) {
                return None;
            }
            let key = DecodingKey::from_ec_components(&x, &y).ok()?;
            (AlgorithmFamily::Ec, Some(curve_alg), key)
        }
        "OKP" => {
            if obj.get("crv")?.as_str()? != "Ed25519" {
                return None;
            }
            let (x, x_len) = b64_len(obj.get("x"))?;
            if x_len != 32 {
                return None;
            }
            let key = DecodingKey::from_ed_components(&x).ok()?;
            (AlgorithmFamily::Ed, Some(Algorithm::EdDSA), key)
        }
        // Symmetric ("oct") keys are never taken from a JWKS.
        _ => return None,
    };
    if alg.is_some_and(|a| a.family() != family) {
        return None;
    }
    Some(VerifyKey {
        kid,
        family,
        alg,
        key,
    })
}

/// The signature keys of a JWKS document.
fn parse_jwks(body: &[u8]) -> Result<Vec<VerifyKey>, String> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("no `keys` array")?;
    let parsed: Vec<VerifyKey> = keys
        .iter()
        .take(MAX_JWKS_KEYS)
        .filter_map(jwk_key)
        .collect();
    if parsed.is_empty() {
        return Err("no usable signature key (RSA, EC P-256/P-384, Ed25519)".into());
    }
    Ok(parsed)
}

fn http_client() -> Result<reqwest::Client, SetupError> {
    reqwest::Client::builder()
        .timeout(JWKS_TIMEOUT)
        .redirect(reqwest::redirect::Policy::limited(3))
        .user_agent(concat!("cellgate/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| SetupError::Http(e.to_string()))
}

#[derive(Default)]
struct JwksState {
    keys: Arc<Vec<VerifyKey>>,
    fetched_at_ms: Option<i64>,
    last_attempt_ms: Option<i64>,
    last_error: Option<String>,
}

/// The keys behind a JWKS URL, fetched lazily: on first use, when older than
/// the refresh interval, and when a token names a `kid` not in the set, but
/// never twice within `min_refetch` (a stream of forged `kid`s costs one
/// fetch per interval, not one per token).
struct JwksSource {
    issuer: String,
    url: String,
    client: reqwest::Client,
    refresh_ms: i64,
    min_refetch_ms: i64,
    clock: Clock,
    state: RwLock<JwksState>,
    fetch_lock: tokio::sync::Mutex<()>,
    fetches: AtomicU64,
}

impl JwksSource {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, JwksState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, JwksState> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    async fn keys(&self, kid: Option<&str>) -> Result<Arc<Vec<VerifyKey>>, AuthError> {
        let now = self.clock.now_ms();
        let (wanted, last_attempt) = {
            let state = self.read();
            let knows_kid =
                kid.is_none_or(|kid| state.keys.iter().any(|k| k.kid.as_deref() == Some(kid)));
            let wanted = match state.fetched_at_ms {
                None => true,
                Some(at) => now.saturating_sub(at) >= self.refresh_ms || !knows_kid,
            };
            (wanted, state.last_attempt_ms)
        };
        let allowed = last_attempt.is_none_or(|at| now.saturating_sub(at) >= self.min_refetch_ms);
        if wanted && allowed {
            self.refetch(last_attempt).await;
        }
        let state = self.read();
        if state.fetched_at_ms.is_none() {
            return Err(AuthError::KeysUnavailable {
                issuer: self.issuer.clone(),
                reason: state
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "not fetched yet".into()),
            });
        }
        Ok(state.keys.clone())
    }

    /// Fetches once, unless another task fetched since `seen_attempt`.
    async fn refetch(&self, seen_attempt: Option<i64>) {
        let _one_at_a_time = self.fetch_lock.lock().await;
        {
            let mut state = self.write();
            if state.last_attempt_ms != seen_attempt {
                return;
            }
            state.last_attempt_ms = Some(self.clock.now_ms());
        }
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let fetched = self.fetch().await;
        let mut state = self.write();
        match fetched {
            Ok(keys) => {
                tracing::debug!(issuer = %self.issuer, url = %self.url, keys = keys.len(), "JWKS fetched");
                state.keys = Arc::new(keys);
                state.fetched_at_ms = Some(self.clock.now_ms());
                state.last_error = None;
            }
            Err(error) => {
                tracing::warn!(issuer = %self.issuer, url = %self.url, %error, "fetching the JWKS failed");
                state.last_error = Some(error);
            }
        }
    }

    async fn fetch(&self) -> Result<Vec<VerifyKey>, String> {
        let mut response = self
            .client
            .get(&self.url)
            .header(
                reqwest::header::ACCEPT,
                "application/jwk-set+json, application/json",
            )
            .send()
            .await
            .map_err(|e| format!("GET {}: {e}", self.url))?;
        if !response.status().is_success() {
            return Err(format!("GET {}: HTTP {}", self.url, response.status()));
        }
        if response
            .content_length()
            .is_some_and(|l| l > MAX_JWKS_BYTES as u64)
        {
            return Err(format!("the JWKS is larger than {MAX_JWKS_BYTES} bytes"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("reading {}: {e}", self.url))?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!("the JWKS is larger than {MAX_JWKS_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        parse_jwks(&body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn parse_refuses_malformed_tokens() {
        let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256"}"#);
        let p = URL_SAFE_NO_PAD.encode(br#"{"iss":"x"}"#);
        for (token, reason) in [
            ("", "three"),
            ("a.b", "three"),
            ("a.b.c.d", "three"),
            (&format!("{h}.{p}.sig+/"), "base64url"),
            (&format!("{h}..sig"), "empty"),
            (
                &format!("{}.{p}.sig", URL_SAFE_NO_PAD.encode(b"not json")),
                "JSON object",
            ),
            (
                &format!("{h}.{}.sig", URL_SAFE_NO_PAD.encode(b"[1]")),
                "JSON object",
            ),
            (
                &format!("{}.{p}.sig", URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT"}"#)),
                "no `alg`",
            ),
            (&format!("{h}.{p}."), "signature is empty"),
        ] {
            match parse(token) {
                Err(AuthError::Malformed(why)) => assert!(why.contains(reason), "{token}: {why}"),
                Err(other) => panic!("{token}: expected Malformed, got {other:?}"),
                Ok(_) => panic!("{token}: accepted"),
            }
        }
        let none = URL_SAFE_NO_PAD.encode(br#"{"alg":"nOnE"}"#);
        assert!(matches!(
            parse(&format!("{none}.{p}.")),
            Err(AuthError::Unsigned)
        ));
    }

    #[test]
    fn times_and_audiences() {
        let claims = obj(json!({ "exp": 100, "nbf": 50, "aud": ["a", "b"] }));
        assert_eq!(check_times(&claims, 60, 0).ok(), Some(100));
        assert_eq!(
            check_times(&claims, 100, 0).err(),
            Some(AuthError::Expired { at: 100 })
        );
        assert_eq!(check_times(&claims, 105, 10).ok(), Some(100));
        assert_eq!(
            check_times(&claims, 40, 0).err(),
            Some(AuthError::NotYetValid { at: 50 })
        );
        assert!(check_times(&obj(json!({})), 1, 0).is_err());
        assert!(check_times(&obj(json!({ "exp": "soon" })), 1, 0).is_err());
        assert!(check_times(&obj(json!({ "exp": 99.5 })), 1, 0).is_ok());
        assert!(check_audience(&claims, &["b".into()]).is_ok());
        assert!(matches!(
            check_audience(&claims, &["c".into()]),
            Err(AuthError::WrongAudience { .. })
        ));
        assert!(check_audience(&obj(json!({ "aud": "c" })), &["c".into()]).is_ok());
        assert!(check_audience(&obj(json!({})), &["c".into()]).is_err());
    }

    #[test]
    fn claims_map_with_paths_lists_and_pinned_tenants() {
        let spec = IssuerSpec {
            name: "kc".into(),
            issuer: "kc".into(),
            audiences: vec!["x".into()],
            algorithms: vec![Algorithm::RS256],
            keys: KeySpec::Secret {
                secret: vec![0; 32],
                kid: None,
            },
            leeway: Duration::ZERO,
            claims: ClaimMapping {
                principal: "preferred_username".into(),
                tenant: "org.id".into(),
                roles: "realm_access.roles".into(),
            },
            pinned_tenant: None,
            principal_kind: PrincipalKind::Agent,
        };
        let claims = obj(json!({
            "preferred_username": "ada",
            "org": { "id": "acme" },
            "realm_access": { "roles": ["admin", "dev"] },
            "scope": "mcp:read mcp:write",
            "scp": ["mcp:read", "extra"],
        }));
        let id = map_identity(&spec, claims.clone()).expect("maps");
        assert_eq!(id.tenant, "acme");
        assert_eq!(&*id.principal.id, "ada");
        assert_eq!(&*id.principal.roles, ["admin", "dev"]);
        assert_eq!(&*id.principal.scopes, ["mcp:read", "mcp:write", "extra"]);
        assert_eq!(id.principal.kind, PrincipalKind::Agent);

        let pinned = IssuerSpec {
            pinned_tenant: Some("acme".into()),
            ..spec.clone()
        };
        assert!(map_identity(&pinned, claims.clone()).is_ok());
        let other = IssuerSpec {
            pinned_tenant: Some("beta".into()),
            ..spec.clone()
        };
        assert!(matches!(
            map_identity(&other, claims),
            Err(AuthError::WrongTenant { .. })
        ));
        let roles_as_string = obj(json!({
            "preferred_username": "ada", "org": { "id": "acme" },
            "realm_access": { "roles": "a, b c" },
        }));
        let id = map_identity(&spec, roles_as_string).expect("maps");
        assert_eq!(&*id.principal.roles, ["a", "b", "c"]);
        let bad_tenant = obj(json!({ "preferred_username": "ada", "org": { "id": "../etc" } }));
        assert!(matches!(
            map_identity(&spec, bad_tenant),
            Err(AuthError::BadClaim { .. })
        ));
    }

    #[test]
    fn jwks_parsing_skips_what_it_cannot_use() {
        let rsa: Value =
            serde_json::from_str(include_str!("../tests/fixtures/rsa_public.jwk.json"))
                .expect("fixture");
        let ec: Value =
            serde_json::from_str(include_str!("../tests/fixtures/ec256_public.jwk.json"))
                .expect("fixture");
        let mut rsa_enc = rsa.clone();
        rsa_enc["use"] = json!("enc");
        let mut ec_wrong_alg = ec.clone();
        ec_wrong_alg["alg"] = json!("ES384");
        let doc = json!({ "keys": [
            rsa, ec, rsa_enc, ec_wrong_alg,
            { "kty": "oct", "k": "c2VjcmV0" },
            { "kty": "OKP", "crv": "Ed25519", "x": "AAAA" },
            { "kty": "OKP", "crv": "X25519", "x": URL_SAFE_NO_PAD.encode([0u8; 32]) },
            "not an object",
        ]});
        let keys = parse_jwks(doc.to_string().as_bytes()).expect("parses");
        let families: Vec<AlgorithmFamily> = keys.iter().map(|k| k.family).collect();
        assert_eq!(families, [AlgorithmFamily::Rsa, AlgorithmFamily::Ec]);
        assert_eq!(keys[1].alg, Some(Algorithm::ES256));
        assert!(parse_jwks(b"{\"keys\": []}").is_err());
        assert!(parse_jwks(b"nope").is_err());
    }

    #[test]
    fn pem_keys_are_typed_and_private_keys_refused() {
        let load = |pem: &str| pem_key(pem).map(|(f, a, _)| (f, a));
        assert_eq!(
            load(include_str!("../tests/fixtures/rsa_public.pem")),
            Ok((AlgorithmFamily::Rsa, None))
        );
        assert_eq!(
            load(include_str!("../tests/fixtures/ec256_public.pem")),
            Ok((AlgorithmFamily::Ec, Some(Algorithm::ES256)))
        );
        assert_eq!(
            load(include_str!("../tests/fixtures/ec384_public.pem")),
            Ok((AlgorithmFamily::Ec, Some(Algorithm::ES384)))
        );
        assert_eq!(
            load(include_str!("../tests/fixtures/ed25519_public.pem")),
            Ok((AlgorithmFamily::Ed, Some(Algorithm::EdDSA)))
        );
        assert!(
            load(include_str!("../tests/fixtures/rsa_private.pem"))
                .is_err_and(|e| e.contains("private key"))
        );
        assert!(load("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n").is_err());
    }
}
