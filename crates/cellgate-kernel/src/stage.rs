//! [`Stage`]: the shape most pipeline layers share (look at the call, maybe
//! refuse it, then look at its result), and [`StageLayer`], which turns a
//! stage into a `tower::Layer`. Writing a concern as a stage keeps the tower
//! plumbing in one place.

use std::sync::Arc;
use std::task::{Context, Poll};

use serde_json::Value;
use tower::{Layer, Service};

use crate::{BoxFuture, Call, McpError};

/// One concern of the pipeline.
///
/// `before` runs on the way in; an `Err` ends the call there (inner layers
/// never see it) and `after` is not called. Otherwise the state it returns
/// is handed to `after` with the result of the inner layers, which `after`
/// may change (redaction) or replace (an output that must be blocked).
pub trait Stage: Send + Sync + 'static {
    type State: Send + 'static;

    fn before<'a>(&'a self, call: &'a mut Call) -> BoxFuture<'a, Result<Self::State, McpError>>;

    fn after<'a>(
        &'a self,
        _state: Self::State,
        _result: &'a mut Result<Value, McpError>,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
}

/// A [`Stage`] as a `tower::Layer`.
pub struct StageLayer<S> {
    stage: Arc<S>,
}

impl<S> StageLayer<S> {
    pub fn new(stage: S) -> Self {
        Self {
            stage: Arc::new(stage),
        }
    }
    pub fn from_arc(stage: Arc<S>) -> Self {
        Self { stage }
    }
}

impl<S> Clone for StageLayer<S> {
    fn clone(&self) -> Self {
        Self {
            stage: self.stage.clone(),
        }
    }
}

impl<S, I> Layer<I> for StageLayer<S> {
    type Service = StageService<S, I>;
    fn layer(&self, inner: I) -> Self::Service {
        StageService {
            stage: self.stage.clone(),
            inner,
        }
    }
}

pub struct StageService<S, I> {
    stage: Arc<S>,
    inner: I,
}

impl<S, I: Clone> Clone for StageService<S, I> {
    fn clone(&self) -> Self {
        Self {
            stage: self.stage.clone(),
            inner: self.inner.clone(),
        }
    }
}

impl<S, I> Service<Call> for StageService<S, I>
where
    S: Stage,
    I: Service<Call, Response = Value, Error = McpError> + Clone + Send + 'static,
    I::Future: Send + 'static,
{
    type Response = Value;
    type Error = McpError;
    type Future = BoxFuture<'static, Result<Value, McpError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), McpError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut call: Call) -> Self::Future {
        let stage = self.stage.clone();
        // The clone that was polled ready goes into the future; a fresh clone
        // stays behind for the next call (the tower idiom).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let state = stage.before(&mut call).await?;
            let mut result = inner.call(call).await;
            stage.after(state, &mut result).await;
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CallContext, Catalog, Pipeline, Request};
    use serde_json::{Map, json};

    /// Refuses tools named `forbidden`; upper-cases error messages.
    struct Gate;
    impl Stage for Gate {
        type State = ();
        fn before<'a>(&'a self, call: &'a mut Call) -> BoxFuture<'a, Result<(), McpError>> {
            Box::pin(async move {
                match call.request.target() {
                    Some("forbidden") => Err(McpError::new(crate::codes::FORBIDDEN, "no")),
                    _ => Ok(()),
                }
            })
        }
        fn after<'a>(
            &'a self,
            _: (),
            result: &'a mut Result<Value, McpError>,
        ) -> BoxFuture<'a, ()> {
            Box::pin(async move {
                if let Err(e) = result {
                    e.message = e.message.to_uppercase();
                }
            })
        }
    }

    #[tokio::test]
    async fn before_can_refuse_and_after_sees_the_result() {
        let p = Pipeline::builder(Catalog::new(vec![]))
            .layer(StageLayer::new(Gate))
            .build();
        let call = |name: &str| Call {
            ctx: CallContext::detached("t"),
            request: Request::CallTool {
                name: name.into(),
                arguments: Map::new(),
            },
        };
        let refused = p.call(call("forbidden")).await.unwrap_err();
        assert_eq!(
            (refused.code, refused.message.as_str()),
            (crate::codes::FORBIDDEN, "no")
        );
        let unknown = p.call(call("other")).await.unwrap_err();
        assert!(unknown.message.starts_with("UNKNOWN TOOL"), "{unknown:?}");
        let _ = json!({});
    }
}
