//! Escalation of incidents that repairs do not fix: the webhook.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cellgate_config::EscalationConfig;
use reqwest::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use serde::Serialize;
use serde_json::{Value, json};

use crate::incidents::Incident;

/// What is known about one escalation; the webhook receives it as JSON
/// (see [`Escalation::body`]).
#[derive(Debug, Clone, Serialize)]
pub struct Escalation {
    pub upstream: String,
    /// Which replica (0-based) failed, and of how many.
    pub replica: usize,
    pub replicas: usize,
    /// The replica's endpoint (URL without credentials) or `process N`.
    pub endpoint: String,
    /// Consecutive failed repairs (restarts or reconnections) so far.
    pub failed_repairs: u32,
    /// Whether cellgate gave up repairing (`restart.max_attempts` reached
    /// or restart policy `never`).
    pub gave_up: bool,
    /// The last failure.
    pub detail: String,
    pub incident: Option<Incident>,
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Escalation {
    /// The webhook's JSON body.
    pub fn body(&self) -> Value {
        json!({
            "event": "incident_escalated",
            "upstream": self.upstream,
            "replica": self.replica,
            "replicas": self.replicas,
            "endpoint": self.endpoint,
            "failed_repairs": self.failed_repairs,
            "gave_up": self.gave_up,
            "detail": self.detail,
            "incident": self.incident.as_ref().map(|i| json!({
                "id": i.id,
                "kind": i.kind,
                "detail": i.detail,
                "repair_attempts": i.repair_attempts,
                "outcome": i.outcome,
                "started_at": unix_secs(i.started_at),
                "updated_at": unix_secs(i.updated_at),
            })),
            "sent_at": unix_secs(SystemTime::now()),
        })
    }
}

/// POSTs `body` to the webhook of `cfg` within its timeout. The error is a
/// sentence for the log.
pub(crate) async fn post_webhook(
    client: &reqwest::Client,
    cfg: &EscalationConfig,
    body: &Value,
) -> Result<(), String> {
    let Some(url) = cfg.webhook_url.as_deref() else {
        return Ok(());
    };
    let mut req = client
        .post(url)
        .timeout(Duration::from_secs(cfg.timeout_secs))
        .header(CONTENT_TYPE, "application/json")
        .body(body.to_string());
    for (k, v) in &cfg.headers {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| format!("{k:?} is not an HTTP header name"))?;
        let value = HeaderValue::from_str(v)
            .map_err(|_| format!("the value of header {k:?} is not valid in HTTP"))?;
        req = req.header(name, value);
    }
    let shown = crate::federation::without_credentials(url);
    let resp = req
        .send()
        .await
        .map_err(|e| format!("cannot deliver to {shown}: {e}"))?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("{shown} answered HTTP {}", resp.status()))
    }
}
