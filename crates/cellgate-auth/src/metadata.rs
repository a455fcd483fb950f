//! cellgate as an OAuth 2.1 protected resource (the MCP authorization
//! spec): the metadata document of RFC 9728, and the `WWW-Authenticate`
//! answers of RFC 6750 that point clients to it.

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::{AuthError, Identity, SetupError};

/// Where the RFC 9728 metadata lives, before the resource's own path.
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// The protected resource: its canonical URL (the audience tokens must be
/// bound to), the authorization servers that issue tokens for it and the
/// scopes it knows.
#[derive(Debug, Clone)]
pub struct ResourceServer {
    resource: String,
    origin: String,
    metadata_path: String,
    metadata_url: String,
    authorization_servers: Vec<String>,
    scopes_supported: Vec<String>,
}

impl ResourceServer {
    /// `resource_url` is the canonical URL of the MCP endpoint, such as
    /// `https://gateway.example.com/mcp`.
    pub fn new(
        resource_url: &str,
        authorization_servers: Vec<String>,
        scopes_supported: Vec<String>,
    ) -> Result<ResourceServer, SetupError> {
        let url = url::Url::parse(resource_url).map_err(|e| {
            SetupError::invalid("auth.resource_url", format!("{resource_url:?}: {e}"))
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(SetupError::invalid(
                "auth.resource_url",
                format!("{resource_url:?} is not an http(s) URL with a host"),
            ));
        }
        if url.fragment().is_some() {
            return Err(SetupError::invalid(
                "auth.resource_url",
                "a resource URL must not have a fragment (RFC 8707)",
            ));
        }
        let origin = url.origin().ascii_serialization();
        // RFC 9728 §3.1: the well-known segment goes between the host and
        // the resource's path.
        let path = url.path().trim_end_matches('/');
        let metadata_path = format!("{METADATA_PATH}{path}");
        let metadata_url = format!("{origin}{metadata_path}");
        Ok(ResourceServer {
            resource: resource_url.to_owned(),
            origin,
            metadata_path,
            metadata_url,
            authorization_servers,
            scopes_supported,
        })
    }

    /// The canonical resource URL (the audience of tokens).
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// `scheme://host[:port]` of the resource URL.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The absolute URL of the metadata document.
    pub fn metadata_url(&self) -> &str {
        &self.metadata_url
    }

    pub fn authorization_servers(&self) -> &[String] {
        &self.authorization_servers
    }

    /// Adds an authorization server (the instance's own issuer) unless listed.
    pub fn add_authorization_server(&mut self, issuer: &str) {
        if !self.authorization_servers.iter().any(|a| a == issuer) {
            self.authorization_servers.push(issuer.to_owned());
        }
    }

    /// The RFC 9728 metadata document.
    pub fn metadata(&self) -> Value {
        json!({
            "resource": self.resource,
            "authorization_servers": self.authorization_servers,
            "scopes_supported": self.scopes_supported,
            "bearer_methods_supported": ["header"],
            "resource_name": "cellgate",
        })
    }

    /// The `WWW-Authenticate` value for a refused request: only
    /// `resource_metadata` when no credential came, plus `error` and
    /// `error_description` when one came and was bad.
    pub fn www_authenticate(&self, error: &AuthError) -> String {
        let mut value = format!("Bearer resource_metadata=\"{}\"", self.metadata_url);
        if let Some(code) = error.oauth_error() {
            value.push_str(&format!(
                ", error=\"{code}\", error_description=\"{}\"",
                quotable(&error.to_string())
            ));
        }
        value
    }

    /// The `WWW-Authenticate` value of a 403 for missing scopes.
    pub fn insufficient_scope(&self, required: &[&str]) -> String {
        let scope = required
            .iter()
            .map(|s| quotable(s))
            .collect::<Vec<_>>()
            .join(" ");
        format!(
            "Bearer error=\"insufficient_scope\", scope=\"{scope}\", resource_metadata=\"{}\", \
             error_description=\"the token lacks a required scope\"",
            self.metadata_url
        )
    }

    /// The HTTP answer to a refused credential: the error's status, the
    /// `WWW-Authenticate` header and a JSON body naming the problem.
    pub fn refusal(&self, error: &AuthError) -> Response {
        let mut response = (error.status(), axum::Json(error.body())).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if error.status() != StatusCode::SERVICE_UNAVAILABLE
            && let Ok(value) = HeaderValue::from_str(&self.www_authenticate(error))
        {
            headers.insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }

    /// The 403 answer for a token that lacks `required` scopes.
    pub fn forbidden(&self, required: &[&str]) -> Response {
        let body = json!({
            "error": "insufficient_scope",
            "scope": required.join(" "),
            "error_description": format!("this request needs the scope(s): {}", required.join(" ")),
        });
        let mut response = (StatusCode::FORBIDDEN, axum::Json(body)).into_response();
        if let Ok(value) = HeaderValue::from_str(&self.insufficient_scope(required)) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }

    /// The 403 to answer when the identity lacks a scope in `required`;
    /// `None` when it holds them all.
    pub fn check_scopes(&self, identity: &Identity, required: &[&str]) -> Option<Response> {
        if required.iter().all(|s| identity.has_scope(s)) {
            None
        } else {
            Some(self.forbidden(required))
        }
    }

    /// `GET /.well-known/oauth-protected-resource` and, when the resource
    /// URL has a path, `GET /.well-known/oauth-protected-resource/<path>`.
    pub fn router(&self) -> Router {
        let doc = Arc::new(self.metadata());
        let serve = move || {
            let doc = doc.clone();
            async move {
                (
                    [(header::CACHE_CONTROL, "public, max-age=300")],
                    axum::Json((*doc).clone()),
                )
            }
        };
        let mut router = Router::new().route(METADATA_PATH, get(serve.clone()));
        if self.metadata_path != METADATA_PATH {
            router = router.route(&self.metadata_path, get(serve));
        }
        router
    }
}

/// Text fit for a quoted-string in a header: printable ASCII without `"`
/// and `\`.
fn quotable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' {
                c
            } else if c == '"' {
                '\''
            } else {
                ' '
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> ResourceServer {
        ResourceServer::new(
            "https://gw.example.com/mcp",
            vec!["https://idp.example.com".into()],
            vec!["mcp:tools".into()],
        )
        .expect("valid")
    }

    #[test]
    fn metadata_follows_rfc_9728() {
        let s = server();
        assert_eq!(
            s.metadata_url(),
            "https://gw.example.com/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(
            s.metadata(),
            json!({
                "resource": "https://gw.example.com/mcp",
                "authorization_servers": ["https://idp.example.com"],
                "scopes_supported": ["mcp:tools"],
                "bearer_methods_supported": ["header"],
                "resource_name": "cellgate",
            })
        );
        let root = ResourceServer::new("http://127.0.0.1:8080", vec![], vec![]).expect("valid");
        assert_eq!(
            root.metadata_url(),
            "http://127.0.0.1:8080/.well-known/oauth-protected-resource"
        );
        assert!(ResourceServer::new("ftp://x/y", vec![], vec![]).is_err());
        assert!(ResourceServer::new("https://x/y#f", vec![], vec![]).is_err());
        assert!(ResourceServer::new("not a url", vec![], vec![]).is_err());
    }

    #[test]
    fn www_authenticate_values() {
        let s = server();
        assert_eq!(
            s.www_authenticate(&AuthError::Missing),
            "Bearer resource_metadata=\"https://gw.example.com/.well-known/oauth-protected-resource/mcp\""
        );
        assert_eq!(
            s.www_authenticate(&AuthError::Expired { at: 5 }),
            "Bearer resource_metadata=\"https://gw.example.com/.well-known/oauth-protected-resource/mcp\", \
             error=\"invalid_token\", error_description=\"the token expired at 5 (Unix time)\""
        );
        let quoted = s.www_authenticate(&AuthError::UnknownIssuer("a\"b\\c".into()));
        assert!(!quoted.contains('\\'), "{quoted}");
        assert_eq!(quoted.matches('"').count(), 6, "{quoted}");
        assert_eq!(
            s.insufficient_scope(&["mcp:tools", "mcp:admin"]),
            "Bearer error=\"insufficient_scope\", scope=\"mcp:tools mcp:admin\", \
             resource_metadata=\"https://gw.example.com/.well-known/oauth-protected-resource/mcp\", \
             error_description=\"the token lacks a required scope\""
        );
    }

    #[test]
    fn refusals_carry_status_header_and_body() {
        let s = server();
        let r = s.refusal(&AuthError::BadSignature);
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(
            r.headers()[header::WWW_AUTHENTICATE]
                .to_str()
                .is_ok_and(|v| v.contains("error=\"invalid_token\""))
        );
        let r = s.refusal(&AuthError::TokenInQuery);
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert!(
            r.headers()[header::WWW_AUTHENTICATE]
                .to_str()
                .is_ok_and(|v| v.contains("invalid_request"))
        );
        let r = s.forbidden(&["mcp:admin"]);
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let anonymous = Identity::anonymous("local");
        assert!(s.check_scopes(&anonymous, &[]).is_none());
        assert!(s.check_scopes(&anonymous, &["x"]).is_some());
    }
}
