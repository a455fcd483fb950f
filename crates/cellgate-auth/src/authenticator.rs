//! [`Authenticator`]: one entry point that turns a presented credential
//! (JWT, API key, or nothing) into an [`Identity`].

use std::sync::Arc;

use crate::apikeys::{ApiKeyService, looks_like_api_key};
use crate::jwt::{JwtVerifier, MAX_TOKEN_BYTES};
use crate::{AuthError, Identity, ResourceServer};

/// A credential as it came with a request.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Credential<'a> {
    /// `Authorization: Bearer <value>`: a JWT or an API key.
    Bearer(&'a str),
    /// `X-API-Key: <value>`.
    ApiKey(&'a str),
}

impl std::fmt::Debug for Credential<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Bearer(_) => f.write_str("Bearer(<redacted>)"),
            Credential::ApiKey(_) => f.write_str("ApiKey(<redacted>)"),
        }
    }
}

/// What an [`Authenticator`] is made of.
pub struct AuthenticatorParts {
    /// Refuse requests without a credential.
    pub required: bool,
    /// The tenant of anonymous callers when authentication is optional.
    pub anonymous_tenant: String,
    pub resource: ResourceServer,
    /// Configured issuers and, usually, the instance's own.
    pub jwt: Arc<JwtVerifier>,
    /// `None`: API keys are refused.
    pub api_keys: Option<Arc<ApiKeyService>>,
    /// Exact paths, or prefixes ending in `/*`, served without authentication.
    pub exempt_paths: Vec<String>,
}

/// Authenticates credentials: JWTs through the verifier set, API keys
/// through the key service. Cheap to share behind an `Arc`.
pub struct Authenticator {
    required: bool,
    anonymous: Identity,
    resource: ResourceServer,
    jwt: Arc<JwtVerifier>,
    api_keys: Option<Arc<ApiKeyService>>,
    exempt_exact: Vec<String>,
    exempt_prefixes: Vec<String>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("required", &self.required)
            .field("resource", &self.resource.resource())
            .field("jwt", &self.jwt)
            .field("api_keys", &self.api_keys.is_some())
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    pub fn new(parts: AuthenticatorParts) -> Authenticator {
        let (prefixes, exact): (Vec<String>, Vec<String>) = parts
            .exempt_paths
            .into_iter()
            .partition(|p| p.ends_with("/*"));
        Authenticator {
            required: parts.required,
            anonymous: Identity::anonymous(&parts.anonymous_tenant),
            resource: parts.resource,
            jwt: parts.jwt,
            api_keys: parts.api_keys,
            exempt_exact: exact,
            // "/x/*" matches everything below "/x/".
            exempt_prefixes: prefixes
                .into_iter()
                .map(|p| p.trim_end_matches('*').to_owned())
                .collect(),
        }
    }

    pub fn is_required(&self) -> bool {
        self.required
    }

    pub fn resource(&self) -> &ResourceServer {
        &self.resource
    }

    pub fn jwt(&self) -> &Arc<JwtVerifier> {
        &self.jwt
    }

    pub fn api_keys(&self) -> Option<&Arc<ApiKeyService>> {
        self.api_keys.as_ref()
    }

    /// Whether `path` is served without authentication. A path with dot
    /// segments, empty segments or percent-escapes is never exempt, so it
    /// cannot reach a protected route by way of an exempt prefix.
    pub fn is_exempt(&self, path: &str) -> bool {
        let suspicious = path.contains('%')
            || path.contains("//")
            || path
                .split('/')
                .any(|segment| segment == "." || segment == "..");
        if suspicious {
            return false;
        }
        self.exempt_exact.iter().any(|p| p == path)
            || self
                .exempt_prefixes
                .iter()
                .any(|p| path.starts_with(p.as_str()))
    }

    /// Authenticates what a request presented. No credential: an error when
    /// authentication is required, else the anonymous identity of the local
    /// tenant. A credential that is presented must be valid either way.
    pub async fn authenticate(
        &self,
        credential: Option<Credential<'_>>,
    ) -> Result<Identity, AuthError> {
        match credential {
            None if self.required => Err(AuthError::Missing),
            None => Ok(self.anonymous.clone()),
            Some(Credential::Bearer(token)) => self.authenticate_token(token).await,
            Some(Credential::ApiKey(key)) => self.authenticate_api_key(key).await,
        }
    }

    /// Authenticates a bearer value: an API key if it starts with `cgk_`,
    /// else a JWT.
    pub async fn authenticate_token(&self, token: &str) -> Result<Identity, AuthError> {
        let token = token.trim();
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLarge {
                size: token.len(),
                max: MAX_TOKEN_BYTES,
            });
        }
        if token.is_empty() {
            return Err(AuthError::Malformed("the bearer token is empty".into()));
        }
        if looks_like_api_key(token) {
            return self.authenticate_api_key(token).await;
        }
        self.jwt.verify(token).await
    }

    async fn authenticate_api_key(&self, key: &str) -> Result<Identity, AuthError> {
        let key = key.trim();
        if key.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLarge {
                size: key.len(),
                max: MAX_TOKEN_BYTES,
            });
        }
        match &self.api_keys {
            Some(service) => service.verify(key).await,
            None => Err(AuthError::ApiKeysDisabled),
        }
    }
}
