//! Plain timing loop (no harness, no thresholds): `cargo bench -p cellgate-inspect`.
//! Prints nanoseconds per call through pipelines with and without the
//! stages, and per document for the stages' engines on their own.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use cellgate_config::{FilterConfig, InspectConfig};
use cellgate_inspect::{ContentFilterStage, FilterPolicy, InspectPolicy, InspectStage};
use cellgate_kernel::{
    BoxFuture, Call, CallContext, Catalog, McpError, Pipeline, Provider, Request, Tool,
};
use serde_json::{Map, Value, json};

struct Noop;

impl Provider for Noop {
    fn id(&self) -> &str {
        "noop"
    }
    fn list_tools<'a>(&'a self, _: &'a CallContext) -> BoxFuture<'a, Result<Vec<Tool>, McpError>> {
        Box::pin(async {
            Ok(vec![Tool::new(
                "noop",
                "does nothing",
                json!({"type": "object", "properties": {"q": {"type": "string"}, "n": {"type": "integer"}, "lang": {"enum": ["en", "de"]}}, "required": ["q"]}),
            )])
        })
    }
    fn call_tool<'a>(
        &'a self,
        _: &'a CallContext,
        _: &'a str,
        _: Map<String, Value>,
    ) -> BoxFuture<'a, Result<Value, McpError>> {
        Box::pin(async { Ok(json!({"content": [{"type": "text", "text": "ok"}]})) })
    }
}

fn time(label: &str, iters: u32, mut f: impl FnMut()) {
    for _ in 0..iters / 10 {
        f();
    }
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    let ns = start.elapsed().as_nanos() as f64 / f64::from(iters);
    println!("{label:<58} {ns:>10.0} ns/call");
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let catalog = Catalog::new(vec![Arc::new(Noop) as Arc<dyn Provider>]);
    let inspect = || InspectStage::from_config(&InspectConfig::default(), catalog.clone()).unwrap();
    let filter = || ContentFilterStage::from_config(&FilterConfig::default()).unwrap();
    let pipelines = [
        (
            "pipeline: no layers",
            Pipeline::builder(catalog.clone()).build(),
        ),
        (
            "pipeline: inspect",
            Pipeline::builder(catalog.clone())
                .layer(inspect().into_layer())
                .build(),
        ),
        (
            "pipeline: filter",
            Pipeline::builder(catalog.clone())
                .layer(filter().into_layer())
                .build(),
        ),
        (
            "pipeline: filter + inspect",
            Pipeline::builder(catalog.clone())
                .layer(filter().into_layer())
                .layer(inspect().into_layer())
                .build(),
        ),
    ];
    let args = json!({"q": "weather in Berlin tomorrow", "n": 3, "lang": "en"});
    let args = args.as_object().unwrap().clone();
    for (label, p) in &pipelines {
        time(label, 200_000, || {
            let call = Call {
                ctx: CallContext::detached("bench"),
                request: Request::CallTool {
                    name: "noop".into(),
                    arguments: args.clone(),
                },
            };
            black_box(rt.block_on(p.call(call)).unwrap());
        });
    }

    let stage = inspect();
    let policy = InspectPolicy::default();
    let f = filter();
    let fpolicy = FilterPolicy::default();
    let schema = json!({"type": "object", "properties": {"q": {"type": "string"}}});
    time("inspect engine: small clean arguments", 500_000, || {
        black_box(stage.assess_arguments(&policy, &args, Some(&schema)));
    });
    let clean = Value::Object(args.clone());
    time("filter engine: small clean arguments", 500_000, || {
        let mut doc = clean.clone();
        black_box(f.filter(&fpolicy, &mut doc, false));
    });
    let dirty = json!({"q": "mail jane@example.com, card 4111 1111 1111 1111", "n": 3});
    time(
        "filter engine: arguments with an e-mail and a card",
        200_000,
        || {
            let mut doc = dirty.clone();
            black_box(f.filter(&fpolicy, &mut doc, false));
        },
    );
    let page =
        "The quick brown fox jumps over the lazy dog. Zoë's café serves crème brûlée. ".repeat(26);
    let output = json!({"content": [{"type": "text", "text": page}]});
    println!(
        "(output text: {} bytes, with non-ASCII letters)",
        page.len()
    );
    time("inspect engine: 2 KB output", 50_000, || {
        black_box(stage.assess_output(&policy, &output));
    });
    time("filter engine: 2 KB output", 50_000, || {
        let mut doc = output.clone();
        black_box(f.filter(&fpolicy, &mut doc, true));
    });
    let s = f.stats().snapshot();
    for st in &s.stages {
        println!(
            "filter stage {:<8} items {:>9}  time {:>9.3} ms",
            st.stage,
            st.items,
            st.time.as_secs_f64() * 1e3
        );
    }
}
