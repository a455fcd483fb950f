//! The layers that every pipeline has from the start: request logging and
//! metering. Each is a `tower::Layer`; later concerns follow the same shape.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio::sync::mpsc;
use tower::{Layer, Service};

use crate::metrics::{MethodLabel, MethodOutcome};
use crate::{BoxFuture, Call, CallRecord, McpError, Metrics};

/// Logs every call: method, target, tenant, outcome and latency.
#[derive(Clone, Copy, Default)]
pub struct TraceLayer;

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;
    fn layer(&self, inner: S) -> Trace<S> {
        Trace { inner }
    }
}

#[derive(Clone)]
pub struct Trace<S> {
    inner: S,
}

impl<S> Service<Call> for Trace<S>
where
    S: Service<Call, Response = Value, Error = McpError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Value;
    type Error = McpError;
    type Future = BoxFuture<'static, Result<Value, McpError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), McpError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let method = call.request.method();
        let target = call.request.target().map(str::to_owned);
        let tenant = call.ctx.tenant.clone();
        let started = Instant::now();
        let fut = self.inner.call(call);
        Box::pin(async move {
            let result = fut.await;
            let micros = started.elapsed().as_micros() as u64;
            match &result {
                Ok(_) => {
                    tracing::debug!(method, target = target.as_deref(), %tenant, micros, "call ok")
                }
                Err(e) => {
                    tracing::info!(method, target = target.as_deref(), %tenant, micros, code = e.code, error = %e.message, "call failed")
                }
            }
            result
        })
    }
}

/// Counts calls by method and outcome, records latency, and hands a
/// [`CallRecord`] to the call-log writer when one is attached.
#[derive(Clone)]
pub struct MeterLayer {
    metrics: Arc<Metrics>,
    records: Option<mpsc::Sender<CallRecord>>,
}

impl MeterLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            records: None,
        }
    }
    /// Also send a record of each call to `tx` (dropped, and counted, when full).
    pub fn with_records(mut self, tx: mpsc::Sender<CallRecord>) -> Self {
        self.records = Some(tx);
        self
    }
}

impl<S> Layer<S> for MeterLayer {
    type Service = Meter<S>;
    fn layer(&self, inner: S) -> Meter<S> {
        Meter {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Meter<S> {
    inner: S,
    layer: MeterLayer,
}

/// The outcome label of a result: `ok`, `tool_error` (a result with
/// `isError: true`) or `error` (a protocol error).
fn outcome(result: &Result<Value, McpError>) -> &'static str {
    match result {
        Ok(v) if v.get("isError").and_then(Value::as_bool) == Some(true) => "tool_error",
        Ok(_) => "ok",
        Err(_) => "error",
    }
}

impl<S> Service<Call> for Meter<S>
where
    S: Service<Call, Response = Value, Error = McpError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Value;
    type Error = McpError;
    type Future = BoxFuture<'static, Result<Value, McpError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), McpError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let method = call.request.method();
        let record_base = self.layer.records.as_ref().map(|tx| {
            (
                tx.clone(),
                call.ctx.tenant.clone(),
                call.ctx.principal.id.clone(),
                call.request.target().map(str::to_owned),
            )
        });
        let layer = self.layer.clone();
        let started = Instant::now();
        let fut = self.inner.call(call);
        Box::pin(async move {
            let result = fut.await;
            let elapsed = started.elapsed();
            let outcome = outcome(&result);
            let m = &layer.metrics;
            m.requests
                .get_or_create(&MethodOutcome {
                    method: method.to_owned(),
                    outcome: outcome.to_owned(),
                })
                .inc();
            m.latency
                .get_or_create(&MethodLabel {
                    method: method.to_owned(),
                })
                .observe(elapsed.as_secs_f64());
            if let Some((tx, tenant, principal, target)) = record_base {
                let record = CallRecord {
                    tenant,
                    principal,
                    method,
                    target,
                    outcome,
                    error_code: result.as_ref().err().map(|e| e.code),
                    latency_us: elapsed.as_micros() as u64,
                    at_ms: SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_millis() as i64)
                        .unwrap_or(0),
                };
                if tx.try_send(record).is_err() {
                    m.records_dropped.inc();
                }
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CallContext, Catalog, Pipeline, Provider, Request, Tool};
    use serde_json::{Map, json};

    struct Echo;
    impl Provider for Echo {
        fn id(&self) -> &str {
            "echo"
        }
        fn list_tools<'a>(
            &'a self,
            _: &'a CallContext,
        ) -> BoxFuture<'a, Result<Vec<Tool>, McpError>> {
            Box::pin(async { Ok(vec![Tool::new("echo", "echo", json!({"type":"object"}))]) })
        }
        fn call_tool<'a>(
            &'a self,
            _: &'a CallContext,
            _name: &'a str,
            args: Map<String, Value>,
        ) -> BoxFuture<'a, Result<Value, McpError>> {
            Box::pin(async move {
                Ok(json!({"content":[{"type":"text","text": Value::Object(args).to_string()}]}))
            })
        }
    }

    #[tokio::test]
    async fn meter_counts_and_records() {
        let metrics = Metrics::new();
        let (tx, mut rx) = mpsc::channel(8);
        let p = Pipeline::builder(Catalog::new(vec![Arc::new(Echo)]))
            .layer(TraceLayer)
            .layer(MeterLayer::new(metrics.clone()).with_records(tx))
            .build();
        let ctx = CallContext::detached("t1");
        let ok = p
            .call(Call {
                ctx: ctx.clone(),
                request: Request::CallTool {
                    name: "echo".into(),
                    arguments: Map::new(),
                },
            })
            .await;
        assert!(ok.is_ok());
        let err = p
            .call(Call {
                ctx,
                request: Request::CallTool {
                    name: "nope".into(),
                    arguments: Map::new(),
                },
            })
            .await
            .unwrap_err();
        assert_eq!(err.code, crate::codes::INVALID_PARAMS);
        let text = metrics.render();
        assert!(
            text.contains(r#"cellgate_requests_total{method="tools/call",outcome="ok"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"cellgate_requests_total{method="tools/call",outcome="error"} 1"#),
            "{text}"
        );
        let r1 = rx.recv().await.unwrap();
        assert_eq!(
            (r1.method, r1.outcome, &*r1.tenant),
            ("tools/call", "ok", "t1")
        );
        let r2 = rx.recv().await.unwrap();
        assert_eq!(
            (r2.outcome, r2.error_code, r2.target.as_deref()),
            ("error", Some(-32602), Some("nope"))
        );
    }
}
