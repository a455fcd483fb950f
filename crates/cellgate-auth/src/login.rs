//! The client side of the device flow, for `cellgate login`: ask for a
//! code, show the user where to approve it, poll until a token comes.

use std::time::Duration;

use serde::Deserialize;

use crate::Secret;
use crate::device::DEVICE_CODE_GRANT;

/// Where to log in.
#[derive(Debug, Clone)]
pub struct LoginOptions {
    /// The instance's base URL, such as `https://gateway.example.com`.
    pub base_url: String,
    /// How the client names itself (`cellgate-cli`).
    pub client_id: String,
    /// OAuth scopes to ask for, space-separated.
    pub scope: Option<String>,
}

impl LoginOptions {
    pub fn new(base_url: &str) -> LoginOptions {
        LoginOptions {
            base_url: base_url.trim_end_matches('/').to_owned(),
            client_id: "cellgate-cli".into(),
            scope: None,
        }
    }
}

/// The server's answer to the device authorization request.
#[derive(Clone, Deserialize)]
pub struct DeviceAuthorization {
    pub device_code: String,
    pub user_code: String,
    pub verification_uri: String,
    #[serde(default)]
    pub verification_uri_complete: Option<String>,
    pub expires_in: u64,
    /// Seconds between polls; 5 when the server does not say (RFC 8628 §3.2).
    #[serde(default = "default_interval")]
    pub interval: u64,
}

fn default_interval() -> u64 {
    5
}

impl std::fmt::Debug for DeviceAuthorization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceAuthorization")
            .field("device_code", &"<redacted>")
            .field("user_code", &self.user_code)
            .field("verification_uri", &self.verification_uri)
            .field("expires_in", &self.expires_in)
            .field("interval", &self.interval)
            .finish()
    }
}

impl DeviceAuthorization {
    /// What to tell the user.
    pub fn instructions(&self) -> String {
        let mut text = format!(
            "To sign in, open {} and enter the code {}",
            self.verification_uri, self.user_code
        );
        if let Some(complete) = &self.verification_uri_complete {
            text.push_str(&format!("\n(or open {complete} directly)"));
        }
        text.push_str(&format!(
            "\nThe code is valid for {} minutes.",
            self.expires_in.div_ceil(60)
        ));
        text
    }
}

/// The token that ends a successful login.
#[derive(Debug, Clone)]
pub struct LoginToken {
    pub access_token: Secret,
    pub token_type: String,
    pub expires_in: Option<u64>,
    pub scope: Option<String>,
}

#[derive(Deserialize)]
struct TokenBody {
    access_token: String,
    token_type: String,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    scope: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// Why a login did not produce a token.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("the request to {url} failed: {reason}")]
    Http { url: String, reason: String },
    #[error("the server refused: {error}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Refused {
        error: String,
        description: Option<String>,
    },
    #[error("the request was denied on the verification page")]
    Denied,
    #[error("the code expired before it was approved; run the login again")]
    Expired,
}

/// What one poll told the client to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollAnswer {
    Pending,
    SlowDown,
}

/// The wait before the next poll: the current interval, grown by 5 seconds
/// after `slow_down` (RFC 8628 §3.5).
pub fn next_interval(current: Duration, answer: &PollAnswer) -> Duration {
    match answer {
        PollAnswer::Pending => current,
        PollAnswer::SlowDown => current + Duration::from_secs(5),
    }
}

fn http_client() -> Result<reqwest::Client, LoginError> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .user_agent(concat!("cellgate/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| LoginError::Http {
            url: String::new(),
            reason: e.to_string(),
        })
}

fn form_body(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

async fn post_form(
    client: &reqwest::Client,
    url: &str,
    pairs: &[(&str, &str)],
) -> Result<(reqwest::StatusCode, Vec<u8>), LoginError> {
    let http = |e: reqwest::Error| LoginError::Http {
        url: url.to_owned(),
        reason: e.to_string(),
    };
    let response = client
        .post(url)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(reqwest::header::ACCEPT, "application/json")
        .body(form_body(pairs))
        .send()
        .await
        .map_err(http)?;
    let status = response.status();
    let body = response.bytes().await.map_err(http)?;
    Ok((status, body.to_vec()))
}

fn refused(status: reqwest::StatusCode, body: &[u8]) -> LoginError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => LoginError::Refused {
            error: e.error,
            description: e.error_description,
        },
        Err(_) => LoginError::Refused {
            error: format!("HTTP {status}"),
            description: None,
        },
    }
}

/// Step 1: asks the server for a device code.
pub async fn request_device_code(
    client: &reqwest::Client,
    options: &LoginOptions,
) -> Result<DeviceAuthorization, LoginError> {
    let url = format!("{}/oauth/device_authorization", options.base_url);
    let mut pairs = vec![("client_id", options.client_id.as_str())];
    if let Some(scope) = &options.scope {
        pairs.push(("scope", scope));
    }
    let (status, body) = post_form(client, &url, &pairs).await?;
    if !status.is_success() {
        return Err(refused(status, &body));
    }
    serde_json::from_slice(&body).map_err(|e| LoginError::Http {
        url,
        reason: format!("unexpected answer: {e}"),
    })
}

/// Step 2: polls the token endpoint until the code is approved, denied or
/// expired, waiting the interval between polls and growing it on `slow_down`.
pub async fn poll_for_token(
    client: &reqwest::Client,
    options: &LoginOptions,
    authorization: &DeviceAuthorization,
) -> Result<LoginToken, LoginError> {
    let url = format!("{}/oauth/token", options.base_url);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(authorization.expires_in);
    let mut interval = Duration::from_secs(authorization.interval.max(1));
    loop {
        tokio::time::sleep(interval).await;
        if tokio::time::Instant::now() >= deadline {
            return Err(LoginError::Expired);
        }
        let (status, body) = post_form(
            client,
            &url,
            &[
                ("grant_type", DEVICE_CODE_GRANT),
                ("device_code", &authorization.device_code),
                ("client_id", &options.client_id),
            ],
        )
        .await?;
        if status.is_success() {
            let token: TokenBody = serde_json::from_slice(&body).map_err(|e| LoginError::Http {
                url: url.clone(),
                reason: format!("unexpected answer: {e}"),
            })?;
            return Ok(LoginToken {
                access_token: Secret::new(token.access_token),
                token_type: token.token_type,
                expires_in: token.expires_in,
                scope: token.scope,
            });
        }
        let answer = match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(e) if e.error == "authorization_pending" => PollAnswer::Pending,
            Ok(e) if e.error == "slow_down" => PollAnswer::SlowDown,
            Ok(e) if e.error == "access_denied" => return Err(LoginError::Denied),
            Ok(e) if e.error == "expired_token" => return Err(LoginError::Expired),
            _ => return Err(refused(status, &body)),
        };
        interval = next_interval(interval, &answer);
    }
}

/// The whole login: requests a code, hands it to `show` (print the
/// [`DeviceAuthorization::instructions`]), then polls for the token.
pub async fn device_login(
    options: &LoginOptions,
    show: impl FnOnce(&DeviceAuthorization),
) -> Result<LoginToken, LoginError> {
    let client = http_client()?;
    let authorization = request_device_code(&client, options).await?;
    show(&authorization);
    poll_for_token(&client, options, &authorization).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_down_grows_the_interval_by_five_seconds() {
        let start = Duration::from_secs(5);
        assert_eq!(next_interval(start, &PollAnswer::Pending), start);
        let slower = next_interval(start, &PollAnswer::SlowDown);
        assert_eq!(slower, Duration::from_secs(10));
        assert_eq!(
            next_interval(slower, &PollAnswer::SlowDown),
            Duration::from_secs(15)
        );
    }

    #[test]
    fn instructions_name_the_page_and_code_and_hide_the_device_code() {
        let auth = DeviceAuthorization {
            device_code: "secret-device-code".into(),
            user_code: "BCDF-GHJK".into(),
            verification_uri: "http://127.0.0.1:8080/device".into(),
            verification_uri_complete: Some(
                "http://127.0.0.1:8080/device?user_code=BCDF-GHJK".into(),
            ),
            expires_in: 600,
            interval: 5,
        };
        let text = auth.instructions();
        assert!(text.contains("http://127.0.0.1:8080/device and enter the code BCDF-GHJK"));
        assert!(text.contains("10 minutes"));
        assert!(!format!("{auth:?}").contains("secret-device-code"));
        assert_eq!(form_body(&[("a", "b c"), ("d", "&")]), "a=b+c&d=%26");
    }
}
