//! [`HttpAuthLayer`]: authentication in front of axum routes.

use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::http::{HeaderMap, header};
use axum::response::Response;
use cellgate_kernel::BoxFuture;
use tower::{Layer, Service};

use crate::jwt::MAX_TOKEN_BYTES;
use crate::{AuthError, Authenticator, Credential};

/// The header an API key may come in instead of `Authorization: Bearer`.
pub const API_KEY_HEADER: &str = "x-api-key";

/// Query parameters that would carry a credential; refused, because URLs
/// end up in logs, histories and `Referer` headers.
const QUERY_CREDENTIALS: &[&str] = &["access_token", "api_key", "apikey", "token"];

/// A tower layer that authenticates every request outside the exempt paths
/// and puts the [`crate::Identity`] into its extensions, or answers 401
/// (400 for a malformed request, 503 when credentials cannot be checked)
/// with `WWW-Authenticate` and a JSON body naming the problem.
///
/// ```no_run
/// # fn demo(auth: std::sync::Arc<cellgate_auth::Authenticator>, app: axum::Router) -> axum::Router {
/// app.layer(cellgate_auth::HttpAuthLayer::new(auth))
/// # }
/// ```
#[derive(Clone)]
pub struct HttpAuthLayer {
    auth: Arc<Authenticator>,
    refusals: Option<Arc<dyn RefusalLog>>,
}

impl HttpAuthLayer {
    pub fn new(auth: Arc<Authenticator>) -> HttpAuthLayer {
        HttpAuthLayer {
            auth,
            refusals: None,
        }
    }

    /// Reports every refused request to `log` (the binary sends them to the
    /// audit log): these requests never reach the pipeline, whose audit
    /// layer records everything else.
    pub fn with_refusal_log(mut self, log: Arc<dyn RefusalLog>) -> HttpAuthLayer {
        self.refusals = Some(log);
        self
    }
}

/// A request [`HttpAuthLayer`] refused. It never holds the credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthRefusal {
    /// The request path, without the query.
    pub path: String,
    /// The HTTP status answered (401, 400 or 503).
    pub status: u16,
    /// [`AuthError::reason`]: a fixed label such as `invalid_token`.
    pub reason: &'static str,
}

/// Where refused requests are reported. The answer waits for `refused`, so
/// an implementation applies its own back-pressure (a flood of bad
/// credentials is slowed rather than dropped from the record).
pub trait RefusalLog: Send + Sync {
    fn refused(&self, refusal: AuthRefusal) -> BoxFuture<'_, ()>;
}

impl<S> Layer<S> for HttpAuthLayer {
    type Service = HttpAuth<S>;

    fn layer(&self, inner: S) -> HttpAuth<S> {
        HttpAuth {
            auth: self.auth.clone(),
            refusals: self.refusals.clone(),
            inner,
        }
    }
}

/// The service [`HttpAuthLayer`] wraps around a route.
#[derive(Clone)]
pub struct HttpAuth<S> {
    auth: Arc<Authenticator>,
    refusals: Option<Arc<dyn RefusalLog>>,
    inner: S,
}

impl<S> Service<Request> for HttpAuth<S>
where
    S: Service<Request, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let auth = self.auth.clone();
        let refusals = self.refusals.clone();
        // The clone that was polled ready serves this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            if auth.is_exempt(request.uri().path()) {
                return inner.call(request).await;
            }
            let outcome = match credential_of(request.uri().query(), request.headers()) {
                Ok(credential) => auth.authenticate(credential).await,
                Err(refused) => Err(refused),
            };
            match outcome {
                Ok(identity) => {
                    request.extensions_mut().insert(identity);
                    inner.call(request).await
                }
                Err(error) => {
                    tracing::debug!(reason = error.reason(), %error, path = %request.uri().path(), "request refused");
                    let response = auth.resource().refusal(&error);
                    if let Some(log) = refusals {
                        log.refused(AuthRefusal {
                            path: request.uri().path().to_owned(),
                            status: response.status().as_u16(),
                            reason: error.reason(),
                        })
                        .await;
                    }
                    Ok(response)
                }
            }
        })
    }
}

/// The one credential a request carries, if any.
pub fn credential_of<'r>(
    query: Option<&str>,
    headers: &'r HeaderMap,
) -> Result<Option<Credential<'r>>, AuthError> {
    if let Some(query) = query {
        let named = query.split('&').any(|pair| {
            let name = pair.split_once('=').map_or(pair, |(n, _)| n);
            QUERY_CREDENTIALS
                .iter()
                .any(|c| c.eq_ignore_ascii_case(name))
        });
        if named {
            return Err(AuthError::TokenInQuery);
        }
    }
    let mut authorization = headers.get_all(header::AUTHORIZATION).iter();
    let mut api_key = headers.get_all(API_KEY_HEADER).iter();
    let (auth_value, key_value) = (authorization.next(), api_key.next());
    if authorization.next().is_some()
        || api_key.next().is_some()
        || (auth_value.is_some() && key_value.is_some())
    {
        return Err(AuthError::MultipleCredentials);
    }
    let too_large = |size| AuthError::TooLarge {
        size,
        max: MAX_TOKEN_BYTES,
    };
    if let Some(value) = auth_value {
        if value.len() > MAX_TOKEN_BYTES + "Bearer ".len() {
            return Err(too_large(value.len()));
        }
        let text = value
            .to_str()
            .map_err(|_| AuthError::Malformed("the Authorization header is not ASCII".into()))?;
        let (scheme, token) = text.split_once(' ').unwrap_or((text, ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::UnsupportedScheme(crate::jwt::printable(scheme)));
        }
        return Ok(Some(Credential::Bearer(token.trim())));
    }
    if let Some(value) = key_value {
        if value.len() > MAX_TOKEN_BYTES {
            return Err(too_large(value.len()));
        }
        let text = value
            .to_str()
            .map_err(|_| AuthError::Malformed("the X-API-Key header is not ASCII".into()))?;
        return Ok(Some(Credential::ApiKey(text.trim())));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).expect("value"));
        }
        map
    }

    #[test]
    fn credentials_are_found_and_ambiguity_refused() {
        let none = HeaderMap::new();
        assert_eq!(credential_of(None, &none), Ok(None));
        let h = headers(&[("authorization", "bearer abc")]);
        assert_eq!(credential_of(None, &h), Ok(Some(Credential::Bearer("abc"))));
        let h = headers(&[("x-api-key", "cgk_x")]);
        assert_eq!(
            credential_of(Some("a=1"), &h),
            Ok(Some(Credential::ApiKey("cgk_x")))
        );
        let h = headers(&[("authorization", "Basic dXNlcg==")]);
        assert!(matches!(
            credential_of(None, &h),
            Err(AuthError::UnsupportedScheme(s)) if s == "Basic"
        ));
        for both in [
            headers(&[("authorization", "Bearer a"), ("x-api-key", "b")]),
            headers(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]),
            headers(&[("x-api-key", "a"), ("x-api-key", "b")]),
        ] {
            assert_eq!(
                credential_of(None, &both),
                Err(AuthError::MultipleCredentials)
            );
        }
        for query in ["access_token=x", "a=1&ACCESS_TOKEN=y", "api_key", "token=z"] {
            assert_eq!(
                credential_of(Some(query), &none),
                Err(AuthError::TokenInQuery),
                "{query}"
            );
        }
        let big = format!("Bearer {}", "a".repeat(MAX_TOKEN_BYTES + 1));
        let h = headers(&[("authorization", &big)]);
        assert!(matches!(
            credential_of(None, &h),
            Err(AuthError::TooLarge { .. })
        ));
    }
}
