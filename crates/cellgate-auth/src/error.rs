//! Why a credential was refused, and how each reason is answered over HTTP
//! and in MCP.

use axum::http::StatusCode;
use cellgate_kernel::McpError;
use serde_json::json;

/// Why authentication failed. The message names the problem (expired, bad
/// signature, unknown key id, wrong audience, …) so an operator can fix a
/// client; for API keys it never says which part of the key was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    #[error("no credential was presented")]
    Missing,
    #[error("the token is {size} bytes; at most {max} are accepted")]
    TooLarge { size: usize, max: usize },
    #[error("the token is malformed: {0}")]
    Malformed(String),
    #[error("unsigned tokens (alg \"none\") are refused")]
    Unsigned,
    #[error("algorithm {alg} is not accepted from issuer `{issuer}`")]
    AlgorithmNotAllowed { alg: String, issuer: String },
    #[error("the token's issuer {0:?} is not trusted")]
    UnknownIssuer(String),
    #[error("issuer `{issuer}` has no key with id {kid:?}")]
    UnknownKeyId { kid: String, issuer: String },
    #[error("issuer `{issuer}` has no key for algorithm {alg}")]
    NoSuitableKey { alg: String, issuer: String },
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token expired at {at} (Unix time)")]
    Expired { at: i64 },
    #[error("the token is not valid before {at} (Unix time)")]
    NotYetValid { at: i64 },
    #[error("the token's audience does not include this resource ({expected})")]
    WrongAudience { expected: String },
    #[error("the token lacks the `{0}` claim")]
    MissingClaim(String),
    #[error("the `{claim}` claim {problem}")]
    BadClaim { claim: String, problem: String },
    #[error(
        "the token is for tenant {found:?}, but issuer `{issuer}` only serves tenant {pinned:?}"
    )]
    WrongTenant {
        found: String,
        pinned: String,
        issuer: String,
    },
    #[error("the keys of issuer `{issuer}` could not be fetched: {reason}")]
    KeysUnavailable { issuer: String, reason: String },
    #[error("the API key is not valid")]
    InvalidApiKey,
    #[error("the API key has been revoked")]
    ApiKeyRevoked,
    #[error("the API key has expired")]
    ApiKeyExpired,
    #[error("API keys are not accepted here")]
    ApiKeysDisabled,
    #[error("access tokens in the query string are refused; send an Authorization header")]
    TokenInQuery,
    #[error("the Authorization scheme {0:?} is not supported; use Bearer")]
    UnsupportedScheme(String),
    #[error("more than one credential was presented; send exactly one")]
    MultipleCredentials,
    #[error("authentication is unavailable right now: {0}")]
    Unavailable(String),
}

impl AuthError {
    /// A stable, machine-readable name of the reason (`expired`,
    /// `bad_signature`, …), sent as `reason` in error bodies.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_credential",
            AuthError::TooLarge { .. } => "token_too_large",
            AuthError::Malformed(_) => "malformed_token",
            AuthError::Unsigned => "unsigned_token",
            AuthError::AlgorithmNotAllowed { .. } => "algorithm_not_allowed",
            AuthError::UnknownIssuer(_) => "unknown_issuer",
            AuthError::UnknownKeyId { .. } => "unknown_key_id",
            AuthError::NoSuitableKey { .. } => "no_suitable_key",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired { .. } => "expired",
            AuthError::NotYetValid { .. } => "not_yet_valid",
            AuthError::WrongAudience { .. } => "wrong_audience",
            AuthError::MissingClaim(_) => "missing_claim",
            AuthError::BadClaim { .. } => "bad_claim",
            AuthError::WrongTenant { .. } => "wrong_tenant",
            AuthError::KeysUnavailable { .. } => "keys_unavailable",
            AuthError::InvalidApiKey => "invalid_api_key",
            AuthError::ApiKeyRevoked => "api_key_revoked",
            AuthError::ApiKeyExpired => "api_key_expired",
            AuthError::ApiKeysDisabled => "api_keys_disabled",
            AuthError::TokenInQuery => "token_in_query",
            AuthError::UnsupportedScheme(_) => "unsupported_scheme",
            AuthError::MultipleCredentials => "multiple_credentials",
            AuthError::Unavailable(_) => "unavailable",
        }
    }

    /// The OAuth error code for `WWW-Authenticate` (RFC 6750 §3.1): `None`
    /// when no credential was presented (the header then carries no error).
    pub fn oauth_error(&self) -> Option<&'static str> {
        match self {
            AuthError::Missing | AuthError::Unavailable(_) | AuthError::KeysUnavailable { .. } => {
                None
            }
            AuthError::TokenInQuery
            | AuthError::UnsupportedScheme(_)
            | AuthError::MultipleCredentials => Some("invalid_request"),
            _ => Some("invalid_token"),
        }
    }

    /// 401 for a missing or bad credential, 400 for a malformed request
    /// (RFC 6750 §3.1 `invalid_request`), 503 when the server cannot check
    /// credentials at the moment.
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::Unavailable(_) | AuthError::KeysUnavailable { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            _ if self.oauth_error() == Some("invalid_request") => StatusCode::BAD_REQUEST,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// The same failure as an MCP error (`UNAUTHENTICATED`, -32001), for
    /// transports without HTTP statuses.
    pub fn to_mcp_error(&self) -> McpError {
        McpError::unauthenticated(self.to_string()).with_data(json!({ "reason": self.reason() }))
    }

    /// The JSON body of an HTTP error answer.
    pub fn body(&self) -> serde_json::Value {
        json!({
            "error": self.oauth_error().unwrap_or("unauthorized"),
            "reason": self.reason(),
            "error_description": self.to_string(),
        })
    }
}

/// Building the authentication stack from configuration failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// A configured value is unusable (`key` is the dotted config key).
    #[error("`{key}`: {message}")]
    Invalid { key: String, message: String },
    /// A key file could not be read or written.
    #[error("{action} {path}: {error}")]
    Io {
        action: &'static str,
        path: String,
        error: std::io::Error,
    },
    /// The HTTP client for JWKS could not be built.
    #[error("building the HTTP client: {0}")]
    Http(String),
}

impl SetupError {
    pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> SetupError {
        SetupError::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_oauth_codes() {
        assert_eq!(AuthError::Missing.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(AuthError::Missing.oauth_error(), None);
        assert_eq!(
            AuthError::Expired { at: 1 }.oauth_error(),
            Some("invalid_token")
        );
        assert_eq!(AuthError::TokenInQuery.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            AuthError::Unavailable("db".into()).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let mcp = AuthError::BadSignature.to_mcp_error();
        assert_eq!(mcp.code, cellgate_kernel::codes::UNAUTHENTICATED);
        assert_eq!(
            mcp.data.as_ref().and_then(|d| d["reason"].as_str()),
            Some("bad_signature")
        );
    }

    #[test]
    fn api_key_failures_do_not_say_which_part_was_wrong() {
        let text = AuthError::InvalidApiKey.to_string();
        let words: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(words, ["the", "API", "key", "is", "not", "valid"]);
        for word in ["id", "secret", "prefix", "unknown"] {
            assert!(!words.contains(&word), "{text}");
        }
    }
}
