//! The audit layer of the pipeline.

use std::sync::Arc;
use std::time::Instant;

use cellgate_kernel::{
    BoxFuture, Call, DecisionTrail, McpError, Request, Stage, StageLayer, codes,
};
use serde_json::Value;

use crate::event::now_ms;
use crate::{AuditEvent, AuditMetrics, AuditSink, DecisionRecord, EntryKind, Outcome, Slot};

/// The audit layer: [`AuditStage`] as a `tower::Layer`.
pub type AuditLayer = StageLayer<AuditStage>;

/// Records every call that reaches it in the audit chain.
///
/// Add it to the `PipelineBuilder` *after* the security layers (the last
/// layer added sees the call first), so that it wraps them: calls they
/// refuse come back to it as errors and are recorded with the trail of
/// decisions, including the refusal.
///
/// `before` reserves the entry's place in the writer's queue, so a call
/// runs only if its entry is sure to be queued: when the queue stays full
/// past the back-pressure bound, or the writer cannot store, the call is
/// refused before any layer or provider sees it (fail closed), and counted
/// in `calls_refused{reason}`. It also captures the tenant, principal,
/// method, target and the SHA-256 of the canonical arguments (never the
/// arguments). `after` adds the outcome, error code, latency and the trail.
/// A call whose future is dropped before it finishes (client gone,
/// timeout) is still recorded, as a cancelled error.
#[derive(Clone)]
pub struct AuditStage {
    sink: AuditSink,
}

impl AuditStage {
    pub fn new(sink: AuditSink) -> AuditStage {
        AuditStage { sink }
    }

    /// The stage as a layer for `PipelineBuilder::layer`.
    pub fn layer(sink: AuditSink) -> AuditLayer {
        StageLayer::new(AuditStage::new(sink))
    }
}

/// What [`AuditStage::before`] hands to `after`: the reserved place and the
/// call as it arrived. Dropped without `after` (the call's future was
/// dropped), it records the call as cancelled.
pub struct PendingEntry {
    slot: Option<Slot>,
    started: Instant,
    tenant: String,
    principal_id: String,
    principal_kind: &'static str,
    method: &'static str,
    target: Option<String>,
    args_digest: Option<[u8; 32]>,
    trail: Arc<DecisionTrail>,
    metrics: Arc<AuditMetrics>,
}

impl PendingEntry {
    fn finish(&mut self, outcome: Outcome, error_code: Option<i64>) {
        let Some(slot) = self.slot.take() else {
            return;
        };
        let event = AuditEvent {
            at_ms: now_ms(),
            tenant: std::mem::take(&mut self.tenant),
            kind: EntryKind::Call,
            principal_id: std::mem::take(&mut self.principal_id),
            principal_kind: self.principal_kind.to_owned(),
            method: self.method.to_owned(),
            target: self.target.take(),
            args_digest: self.args_digest,
            outcome,
            error_code,
            latency_us: u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX),
            decisions: self
                .trail
                .snapshot()
                .iter()
                .map(DecisionRecord::from)
                .collect(),
            category: None,
            message: None,
        };
        slot.send(event);
    }
}

impl Drop for PendingEntry {
    fn drop(&mut self) {
        if self.slot.is_some() {
            self.metrics.calls_abandoned.inc();
            self.finish(Outcome::Error, Some(codes::REQUEST_CANCELLED));
        }
    }
}

/// The digest of what a request carries as arguments: the arguments of a
/// tool call or prompt, the params of a completion. Lists and reads carry
/// none beyond their target.
fn request_args_digest(request: &Request) -> Option<[u8; 32]> {
    match request {
        Request::CallTool { arguments, .. } | Request::GetPrompt { arguments, .. } => {
            // Borrowing into a `Value` needs a clone of the map; digesting
            // the map directly keeps this allocation-free.
            Some(digest_object(arguments))
        }
        Request::Complete { params } => Some(crate::args_digest(params)),
        _ => None,
    }
}

fn digest_object(map: &serde_json::Map<String, Value>) -> [u8; 32] {
    use sha2::{Digest as _, Sha256};
    let mut members: Vec<(&String, &Value)> = map.iter().collect();
    members.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut bytes = Vec::with_capacity(256);
    bytes.push(b'{');
    for (i, (key, value)) in members.into_iter().enumerate() {
        if i > 0 {
            bytes.push(b',');
        }
        crate::canonical::write_str(key, &mut bytes);
        bytes.push(b':');
        crate::canonical::write_canonical(value, &mut bytes);
    }
    bytes.push(b'}');
    Sha256::digest(&bytes).into()
}

impl Stage for AuditStage {
    type State = PendingEntry;

    fn before<'a>(&'a self, call: &'a mut Call) -> BoxFuture<'a, Result<PendingEntry, McpError>> {
        Box::pin(async move {
            let started = Instant::now();
            let slot = self.sink.reserve().await.map_err(|refusal| {
                tracing::warn!(
                    reason = refusal.as_str(),
                    method = call.request.method(),
                    tenant = %call.ctx.tenant,
                    "call refused: the audit log cannot take its entry"
                );
                refusal.to_mcp_error()
            })?;
            Ok(PendingEntry {
                slot: Some(slot),
                started,
                tenant: call.ctx.tenant.to_string(),
                principal_id: call.ctx.principal.id.to_string(),
                principal_kind: call.ctx.principal.kind.as_str(),
                method: call.request.method(),
                target: call.request.target().map(str::to_owned),
                args_digest: request_args_digest(&call.request),
                trail: call.ctx.trail.clone(),
                metrics: self.sink.metrics().clone(),
            })
        })
    }

    fn after<'a>(
        &'a self,
        mut state: PendingEntry,
        result: &'a mut Result<Value, McpError>,
    ) -> BoxFuture<'a, ()> {
        let outcome = Outcome::of(result);
        let code = result.as_ref().err().map(|e| e.code);
        state.finish(outcome, code);
        Box::pin(async {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn object_digest_matches_the_canonical_digest() {
        let args = json!({ "z": [1, { "b": 2, "a": 1 }], "a": "x", "é": null });
        let Value::Object(map) = &args else {
            panic!("not an object")
        };
        assert_eq!(digest_object(map), crate::args_digest(&args));
        assert_eq!(
            digest_object(&serde_json::Map::new()),
            crate::args_digest(&json!({}))
        );
    }

    #[test]
    fn only_requests_with_arguments_have_a_digest() {
        let call = Request::CallTool {
            name: "t".into(),
            arguments: serde_json::Map::new(),
        };
        assert_eq!(
            request_args_digest(&call),
            Some(crate::args_digest(&json!({})))
        );
        assert_eq!(
            request_args_digest(&Request::ReadResource { uri: "x:y".into() }),
            None
        );
        assert_eq!(
            request_args_digest(&Request::ListTools { cursor: None }),
            None
        );
        assert_eq!(
            request_args_digest(&Request::Complete {
                params: json!({ "ref": 1 })
            }),
            Some(crate::args_digest(&json!({ "ref": 1 })))
        );
    }
}
