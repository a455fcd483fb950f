//! The OAuth 2.0 Device Authorization Grant (RFC 8628) with cellgate as its
//! own authorization server: how `cellgate login` gets a token on a machine
//! without a browser.
//!
//! 1. The device posts to `/oauth/device_authorization` and gets a device
//!    code (secret, kept by the device) and a user code such as `BCDF-GHJK`.
//! 2. Someone who may approve (an admin of a tenant, proving it with an API
//!    key or token) opens `/device`, enters the user code, and approves it
//!    for their tenant with the roles the token should carry, or denies it.
//! 3. Meanwhile the device polls `/oauth/token`, getting
//!    `authorization_pending`, `slow_down` (polled before the interval had
//!    passed; the interval then grows by 5 seconds), `access_denied`,
//!    `expired_token`, or finally an access token signed by the instance key.
//!
//! State lives in the store, so any replica can answer any step.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cellgate_kernel::PrincipalKind;
use cellgate_store::{
    DeviceApproval, DeviceCodeStatus, NewDeviceCode, Store, StoreError, TenantId,
};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::clock::{Clock, ms};
use crate::{Authenticator, Identity, LocalIssuer, TokenRequest};

/// The `grant_type` of a device-code token request.
pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// User-code symbols: consonants only (RFC 8628 §6.1), so codes are easy to
/// read aloud and spell no words; no vowels, no 0/O or 1/I confusion.
pub const USER_CODE_ALPHABET: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";
/// Seconds added to the interval on each `slow_down` (RFC 8628 §3.5).
pub const SLOW_DOWN_SECS: i64 = 5;
/// Expired grants are deleted this long after they expire (until then a
/// poll still gets `expired_token` rather than `invalid_grant`).
const PURGE_AFTER: Duration = Duration::from_secs(3600);

/// How the device flow behaves.
#[derive(Debug, Clone)]
pub struct DeviceFlowSettings {
    /// The public origin of this instance (`https://gateway.example.com`);
    /// the verification page is `<base_url>/device`.
    pub base_url: String,
    /// How long a device code stays valid.
    pub code_ttl: Duration,
    /// The least time between polls.
    pub interval: Duration,
    /// Lifetime of the tokens handed out.
    pub token_ttl: Duration,
    /// Roles allowed to approve codes.
    pub approver_roles: Vec<String>,
    pub clock: Clock,
}

/// An OAuth error answer (RFC 6749 §5.2, RFC 8628 §3.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    pub status: StatusCode,
    pub error: &'static str,
    pub description: String,
}

impl OAuthError {
    fn new(error: &'static str, description: impl Into<String>) -> OAuthError {
        OAuthError {
            status: StatusCode::BAD_REQUEST,
            error,
            description: description.into(),
        }
    }

    fn server(description: impl Into<String>) -> OAuthError {
        OAuthError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            error: "temporarily_unavailable",
            description: description.into(),
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.error, "error_description": self.description });
        no_store((self.status, Json(body)).into_response())
    }
}

fn no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// The answer to a device authorization request (RFC 8628 §3.2).
#[derive(Clone, serde::Serialize)]
pub struct DeviceAuthorizationResponse {
    pub device_code: String,
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: String,
    pub expires_in: u64,
    pub interval: u64,
}

impl std::fmt::Debug for DeviceAuthorizationResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceAuthorizationResponse")
            .field("device_code", &"<redacted>")
            .field("user_code", &self.user_code)
            .field("verification_uri", &self.verification_uri)
            .field("expires_in", &self.expires_in)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

/// A successful token answer (RFC 6749 §5.1).
#[derive(Clone, serde::Serialize)]
pub struct DeviceTokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

impl std::fmt::Debug for DeviceTokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceTokenResponse")
            .field("access_token", &"<redacted>")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .finish()
    }
}

/// What the approver decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Approve,
    Deny,
}

/// Why an approval was not recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecideError {
    #[error("only holders of the role(s) {0} may approve devices")]
    NotAllowed(String),
    #[error("no pending code {0} (it may have expired, or been used already)")]
    UnknownCode(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the store failed: {0}")]
    Store(String),
}

/// The device flow's server side.
pub struct DeviceFlow {
    store: Store,
    issuer: Arc<LocalIssuer>,
    authenticator: Arc<Authenticator>,
    settings: DeviceFlowSettings,
}

impl std::fmt::Debug for DeviceFlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceFlow")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `BCDF-GHJK` from anything a person might type (`bcdfghjk`, `BCDF GHJK`).
pub fn normalize_user_code(input: &str) -> Option<String> {
    let symbols: String = input
        .chars()
        .filter(|c| !matches!(c, '-' | ' ' | '\t'))
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if symbols.len() != 8 || !symbols.bytes().all(|b| USER_CODE_ALPHABET.contains(&b)) {
        return None;
    }
    Some(format!("{}-{}", &symbols[..4], &symbols[4..]))
}

fn valid_client_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 255 && s.bytes().all(|b| b.is_ascii_graphic())
}

fn valid_scope(s: &str) -> bool {
    s.len() <= 1024
        && s.split(' ').all(|t| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
        })
}

impl DeviceFlow {
    pub fn new(
        store: Store,
        issuer: Arc<LocalIssuer>,
        authenticator: Arc<Authenticator>,
        settings: DeviceFlowSettings,
    ) -> DeviceFlow {
        DeviceFlow {
            store,
            issuer,
            authenticator,
            settings,
        }
    }

    fn verification_uri(&self) -> String {
        format!("{}/device", self.settings.base_url.trim_end_matches('/'))
    }

    /// Starts a grant for `client_id` (RFC 8628 §3.1-3.2).
    pub async fn start(
        &self,
        client_id: Option<&str>,
        scope: Option<&str>,
    ) -> Result<DeviceAuthorizationResponse, OAuthError> {
        let client_id = client_id
            .filter(|c| !c.is_empty())
            .ok_or_else(|| OAuthError::new("invalid_request", "client_id is required"))?;
        if !valid_client_id(client_id) {
            return Err(OAuthError::new("invalid_client", "client_id is not valid"));
        }
        let scope = scope.filter(|s| !s.is_empty());
        if scope.is_some_and(|s| !valid_scope(s)) {
            return Err(OAuthError::new("invalid_scope", "scope is not valid"));
        }
        let now = self.settings.clock.now_ms();
        let devices = self.store.device_codes();
        if let Err(error) = devices.purge_expired(now - ms(PURGE_AFTER)).await {
            tracing::warn!(%error, "purging expired device codes failed");
        }
        let interval = self.settings.interval.as_secs().max(1);
        let expires_in = self.settings.code_ttl.as_secs().max(1);
        for _ in 0..5 {
            let device_code = URL_SAFE_NO_PAD.encode(crate::random::bytes::<32>());
            let symbols = crate::random::symbols(USER_CODE_ALPHABET, 8);
            let user_code = format!("{}-{}", &symbols[..4], &symbols[4..]);
            let grant = NewDeviceCode {
                device_code_hash: sha256_hex(&device_code),
                user_code: user_code.clone(),
                client_id: Some(client_id.to_owned()),
                scope: scope.map(str::to_owned),
                interval_secs: i64::try_from(interval).unwrap_or(5),
                created_at_ms: now,
                expires_at_ms: now.saturating_add(ms(self.settings.code_ttl)),
            };
            match devices.create(&grant).await {
                Ok(()) => {
                    let verification_uri = self.verification_uri();
                    return Ok(DeviceAuthorizationResponse {
                        device_code,
                        verification_uri_complete: format!(
                            "{verification_uri}?user_code={user_code}"
                        ),
                        user_code,
                        verification_uri,
                        expires_in,
                        interval,
                    });
                }
                // A user code already in use: draw again.
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(OAuthError::server(e.to_string())),
            }
        }
        Err(OAuthError::server("could not draw an unused user code"))
    }

    /// Answers a token request of the device (RFC 8628 §3.4-3.5).
    pub async fn poll(
        &self,
        device_code: Option<&str>,
        client_id: Option<&str>,
    ) -> Result<DeviceTokenResponse, OAuthError> {
        let device_code = device_code
            .filter(|c| !c.is_empty() && c.len() <= 256)
            .ok_or_else(|| OAuthError::new("invalid_request", "device_code is required"))?;
        let hash = sha256_hex(device_code);
        let now = self.settings.clock.now_ms();
        let devices = self.store.device_codes();
        let polled = devices
            .poll(&hash, now, SLOW_DOWN_SECS)
            .await
            .map_err(|e| OAuthError::server(e.to_string()))?
            .ok_or_else(|| OAuthError::new("invalid_grant", "the device code is not known"))?;
        let grant = polled.record;
        if let (Some(expected), Some(given)) = (&grant.client_id, client_id)
            && expected != given
        {
            return Err(OAuthError::new(
                "invalid_grant",
                "the device code was issued to another client",
            ));
        }
        if grant.is_expired_at(now) {
            return Err(OAuthError::new(
                "expired_token",
                "the device code has expired; start again",
            ));
        }
        match grant.status {
            DeviceCodeStatus::Denied => {
                Err(OAuthError::new("access_denied", "the request was denied"))
            }
            DeviceCodeStatus::Pending if polled.too_fast => Err(OAuthError::new(
                "slow_down",
                format!(
                    "polled too fast; wait {} seconds between polls",
                    grant.interval_secs
                ),
            )),
            DeviceCodeStatus::Pending => Err(OAuthError::new(
                "authorization_pending",
                "waiting for the user code to be approved",
            )),
            DeviceCodeStatus::Approved => {
                // Taking the grant deletes it: the token is handed out once.
                let taken = devices
                    .take_approved(&hash, now)
                    .await
                    .map_err(|e| OAuthError::server(e.to_string()))?
                    .ok_or_else(|| {
                        OAuthError::new("invalid_grant", "the device code was already used")
                    })?;
                let (Some(tenant), Some(principal)) = (taken.tenant, taken.principal) else {
                    return Err(OAuthError::server("the approval is incomplete"));
                };
                let scopes: Vec<String> = taken
                    .scope
                    .as_deref()
                    .unwrap_or("")
                    .split(' ')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect();
                let issued = self
                    .issuer
                    .issue(&TokenRequest {
                        tenant: tenant.to_string(),
                        principal,
                        roles: taken.roles,
                        scopes,
                        ttl: Some(self.settings.token_ttl),
                        kind: PrincipalKind::User,
                    })
                    .map_err(|e| OAuthError::server(e.to_string()))?;
                Ok(DeviceTokenResponse {
                    access_token: issued.token.expose().to_owned(),
                    token_type: "Bearer",
                    expires_in: issued.expires_in,
                    scope: taken.scope,
                })
            }
        }
    }

    /// Records an approver's decision on a user code. The approver must hold
    /// an approver role; the grant is for the approver's own tenant.
    pub async fn decide(
        &self,
        approver: &Identity,
        user_code: &str,
        decision: Decision,
        principal: Option<&str>,
        roles: &[String],
    ) -> Result<(), DecideError> {
        let allowed = approver.principal.is_authenticated()
            && self
                .settings
                .approver_roles
                .iter()
                .any(|r| approver.has_role(r));
        if !allowed {
            return Err(DecideError::NotAllowed(
                self.settings.approver_roles.join(", "),
            ));
        }
        let code = normalize_user_code(user_code)
            .ok_or_else(|| DecideError::UnknownCode(crate::jwt::printable(user_code)))?;
        let now = self.settings.clock.now_ms();
        let devices = self.store.device_codes();
        let by = approver.principal.id.to_string();
        let done = match decision {
            Decision::Deny => devices.deny(&code, &by, now).await,
            Decision::Approve => {
                let tenant = TenantId::parse(&approver.tenant)
                    .map_err(|e| DecideError::Invalid(e.to_string()))?;
                let principal = principal
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .unwrap_or(&by)
                    .to_owned();
                if roles.iter().any(|r| r.contains([' ', ',', '"'])) {
                    return Err(DecideError::Invalid(
                        "role names cannot contain spaces, commas or quotes".into(),
                    ));
                }
                let approval = DeviceApproval {
                    tenant,
                    principal,
                    roles: roles.to_vec(),
                    approved_by: by.clone(),
                };
                devices.approve(&code, &approval, now).await
            }
        };
        match done {
            Ok(true) => {
                tracing::info!(user_code = %code, by = %by, tenant = %approver.tenant, ?decision, "device code decided");
                Ok(())
            }
            Ok(false) => Err(DecideError::UnknownCode(code)),
            Err(StoreError::Invalid { message, .. }) => Err(DecideError::Invalid(message)),
            Err(e) => Err(DecideError::Store(e.to_string())),
        }
    }

    /// The RFC 8414 metadata of the instance as an authorization server.
    pub fn authorization_server_metadata(&self) -> serde_json::Value {
        let base = self.settings.base_url.trim_end_matches('/');
        json!({
            "issuer": self.issuer.issuer(),
            "device_authorization_endpoint": format!("{base}/oauth/device_authorization"),
            "token_endpoint": format!("{base}/oauth/token"),
            "grant_types_supported": [DEVICE_CODE_GRANT],
            "response_types_supported": [],
            "token_endpoint_auth_methods_supported": ["none"],
        })
    }

    /// `POST /oauth/device_authorization`, `POST /oauth/token`,
    /// `GET`/`POST /device` and `GET /.well-known/oauth-authorization-server`.
    /// All are meant to be exempt from the authentication layer.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/oauth/device_authorization", post(device_authorization))
            .route("/oauth/token", post(token))
            .route("/device", get(device_page).post(device_decide))
            .route("/.well-known/oauth-authorization-server", get(as_metadata))
            .with_state(self)
    }
}

type Fields = HashMap<String, String>;

async fn device_authorization(
    State(flow): State<Arc<DeviceFlow>>,
    Form(form): Form<Fields>,
) -> Response {
    match flow
        .start(
            form.get("client_id").map(String::as_str),
            form.get("scope").map(String::as_str),
        )
        .await
    {
        Ok(answer) => no_store(Json(answer).into_response()),
        Err(e) => e.into_response(),
    }
}

async fn token(State(flow): State<Arc<DeviceFlow>>, Form(form): Form<Fields>) -> Response {
    match form.get("grant_type").map(String::as_str) {
        Some(DEVICE_CODE_GRANT) => {}
        Some(_) => {
            return OAuthError::new(
                "unsupported_grant_type",
                format!("only {DEVICE_CODE_GRANT} is supported"),
            )
            .into_response();
        }
        None => {
            return OAuthError::new("invalid_request", "grant_type is required").into_response();
        }
    }
    match flow
        .poll(
            form.get("device_code").map(String::as_str),
            form.get("client_id").map(String::as_str),
        )
        .await
    {
        Ok(answer) => no_store(Json(answer).into_response()),
        Err(e) => e.into_response(),
    }
}

async fn as_metadata(State(flow): State<Arc<DeviceFlow>>) -> Response {
    Json(flow.authorization_server_metadata()).into_response()
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// An HTML page with headers that keep it out of frames and caches.
fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>{title}</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem}}\
         label{{display:block;margin-top:1rem}}input{{width:100%;padding:.4rem;font-size:1rem}}\
         button{{margin-top:1.2rem;margin-right:.5rem;padding:.5rem 1rem;font-size:1rem}}\
         .code{{font-family:monospace;letter-spacing:.15em}}</style></head>\
         <body><h1>{title}</h1>{body}</body></html>",
        title = escape(title),
    );
    let mut response = (status, Html(html)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    no_store(response)
}

fn form_html(user_code: &str) -> String {
    format!(
        "<p>Enter the code shown on the device, and prove that you may approve it \
         with an API key or access token of your tenant (a role allowed to approve \
         devices is needed). The device gets a token for your tenant with the roles below.</p>\
         <form method=\"post\" action=\"/device\" autocomplete=\"off\">\
         <label>Code <input class=\"code\" name=\"user_code\" value=\"{code}\" placeholder=\"BCDF-GHJK\" required></label>\
         <label>Your API key or token <input type=\"password\" name=\"credential\" required></label>\
         <label>Principal the token is for (default: you) <input name=\"principal\"></label>\
         <label>Roles of the token (comma-separated) <input name=\"roles\" placeholder=\"developer, viewer\"></label>\
         <button type=\"submit\" name=\"decision\" value=\"approve\">Approve</button>\
         <button type=\"submit\" name=\"decision\" value=\"deny\">Deny</button>\
         </form>",
        code = escape(user_code),
    )
}

async fn device_page(Query(query): Query<Fields>) -> Response {
    let code = query
        .get("user_code")
        .and_then(|c| normalize_user_code(c))
        .unwrap_or_default();
    page(StatusCode::OK, "Connect a device", &form_html(&code))
}

async fn device_decide(State(flow): State<Arc<DeviceFlow>>, Form(form): Form<Fields>) -> Response {
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or("");
    let user_code = field("user_code");
    let again = |status: StatusCode, message: &str| {
        page(
            status,
            "Connect a device",
            &format!(
                "<p role=\"alert\"><strong>{}</strong></p>{}",
                escape(message),
                form_html(&normalize_user_code(user_code).unwrap_or_default())
            ),
        )
    };
    let decision = match field("decision") {
        "approve" => Decision::Approve,
        "deny" => Decision::Deny,
        _ => return again(StatusCode::BAD_REQUEST, "Choose Approve or Deny."),
    };
    let credential = field("credential").trim();
    if credential.is_empty() {
        return again(
            StatusCode::UNAUTHORIZED,
            "An API key or token is needed to approve a device.",
        );
    }
    let approver = match flow.authenticator.authenticate_token(credential).await {
        Ok(identity) => identity,
        Err(e) => {
            return again(
                StatusCode::UNAUTHORIZED,
                &format!("The credential was refused: {e}."),
            );
        }
    };
    let roles: Vec<String> = field("roles")
        .split([',', ' '])
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(str::to_owned)
        .collect();
    let principal = Some(field("principal")).filter(|p| !p.trim().is_empty());
    match flow
        .decide(&approver, user_code, decision, principal, &roles)
        .await
    {
        Ok(()) => {
            let (title, text) = match decision {
                Decision::Approve => (
                    "Device approved",
                    format!(
                        "The device now gets a token for tenant <strong>{}</strong>. You can close this page.",
                        escape(&approver.tenant)
                    ),
                ),
                Decision::Deny => (
                    "Device denied",
                    "The device will not get a token. You can close this page.".to_owned(),
                ),
            };
            page(StatusCode::OK, title, &format!("<p>{text}</p>"))
        }
        Err(e @ DecideError::NotAllowed(_)) => again(StatusCode::FORBIDDEN, &e.to_string()),
        Err(e @ DecideError::Store(_)) => again(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        Err(e) => again(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_codes_normalize() {
        assert_eq!(
            normalize_user_code("bcdf-ghjk").as_deref(),
            Some("BCDF-GHJK")
        );
        assert_eq!(
            normalize_user_code(" BCDF GHJK ").as_deref(),
            Some("BCDF-GHJK")
        );
        assert_eq!(
            normalize_user_code("BCDFGHJK").as_deref(),
            Some("BCDF-GHJK")
        );
        for bad in ["BCDF-GHJ", "ABCD-EFGH", "BCDF-GHJKL", "", "BCDF-GHJ0"] {
            assert_eq!(normalize_user_code(bad), None, "{bad}");
        }
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert!(form_html("\"><script>").contains("&quot;&gt;&lt;script&gt;"));
    }

    #[test]
    fn debug_hides_codes_and_tokens() {
        let grant = DeviceAuthorizationResponse {
            device_code: "device-secret".into(),
            user_code: "BCDF-GHJK".into(),
            verification_uri: "http://h/device".into(),
            verification_uri_complete: "http://h/device?user_code=BCDF-GHJK".into(),
            expires_in: 600,
            interval: 5,
        };
        let token = DeviceTokenResponse {
            access_token: "token-secret".into(),
            token_type: "Bearer",
            expires_in: 60,
            scope: None,
        };
        let shown = format!("{grant:?} {token:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("BCDF-GHJK"), "{shown}");
    }

    #[test]
    fn scopes_and_clients_are_checked() {
        assert!(valid_scope("mcp:read mcp:write"));
        assert!(!valid_scope("a  b"));
        assert!(!valid_scope("a\"b"));
        assert!(valid_client_id("cellgate-cli"));
        assert!(!valid_client_id("has space"));
    }
}
