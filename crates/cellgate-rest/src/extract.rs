//! Extractors: who calls, the path, the query and the JSON body, each
//! refusing bad input with a JSON error that names the problem.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use cellgate_kernel::{Identity, codes};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::Rest;
use crate::error::ApiError;

/// The caller: the [`Identity`] the authentication layer put on the
/// request, or the anonymous caller of the default tenant without one.
pub(crate) struct Caller(pub(crate) Identity);

impl FromRequestParts<Rest> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &Rest) -> Result<Self, Self::Rejection> {
        Ok(Caller(
            parts
                .extensions
                .get::<Identity>()
                .cloned()
                .unwrap_or_else(|| Identity::anonymous(&state.options.default_tenant)),
        ))
    }
}

/// Path parameters; a segment that does not decode is a 400.
pub(crate) struct PathParams<T>(pub(crate) T);

impl<T, S> FromRequestParts<S> for PathParams<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(t)| PathParams(t))
            .map_err(|e| ApiError::bad_request(format!("invalid path: {}", e.body_text())))
    }
}

/// The query string; unknown parameters are refused rather than ignored,
/// so that a misspelt one never silently does nothing.
pub(crate) struct QueryParams<T>(pub(crate) T);

impl<T, S> FromRequestParts<S> for QueryParams<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(t)| QueryParams(t))
            .map_err(|e| ApiError::bad_request(format!("invalid query string: {}", e.body_text())))
    }
}

/// A query string with no parameters at all.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NoQuery {}

/// A JSON object body: the arguments of a tool or prompt. An empty body is
/// the empty object; anything else must be `application/json`, parse, be an
/// object and fit in `max_body_bytes`.
pub(crate) struct JsonObject(pub(crate) Map<String, Value>);

impl FromRequest<Rest> for JsonObject {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Rest) -> Result<Self, ApiError> {
        let limit = state.options.max_body_bytes;
        let (parts, body) = req.into_parts();
        let too_big = || {
            ApiError::refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                codes::INVALID_REQUEST,
                format!("request body exceeds the limit of {limit} bytes"),
            )
        };
        if content_length(&parts.headers).is_some_and(|len| len > limit) {
            return Err(too_big());
        }
        let bytes: Bytes = match Limited::new(body, limit).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return Err(too_big()),
            Err(e) => {
                return Err(ApiError::refuse(
                    StatusCode::BAD_REQUEST,
                    codes::INVALID_REQUEST,
                    format!("the request body could not be read: {e}"),
                ));
            }
        };
        if bytes.is_empty() {
            return Ok(JsonObject(Map::new()));
        }
        check_content_type(&parts.headers)?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::refuse(
                StatusCode::BAD_REQUEST,
                codes::PARSE_ERROR,
                format!("request body is not valid JSON: {e}"),
            )
        })?;
        match value {
            Value::Object(map) => Ok(JsonObject(map)),
            other => Err(ApiError::bad_request(format!(
                "request body must be a JSON object (the arguments), got {}",
                kind(&other)
            ))),
        }
    }
}

fn content_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let raw = headers.get(header::CONTENT_TYPE);
    let text = raw.map(|v| v.to_str().unwrap_or("(not ASCII)"));
    let media = text.and_then(|t| t.split(';').next()).unwrap_or("").trim();
    if media.eq_ignore_ascii_case("application/json") {
        return Ok(());
    }
    Err(ApiError::refuse(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        codes::INVALID_REQUEST,
        format!(
            "Content-Type must be application/json, got {}",
            text.map_or_else(|| "none".to_owned(), |t| format!("{t:?}"))
        ),
    ))
}

/// How a JSON value that is not an object is named in messages.
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
