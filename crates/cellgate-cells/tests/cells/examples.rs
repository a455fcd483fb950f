//! The example cells shipped in `cells/`, built from source.

use std::process::Command;

use cellgate_cells::analyse;
use serde_json::{Value, json};

use crate::support::{echo_manifest, echo_module, env};

#[tokio::test]
async fn the_wat_echo_cell_answers_with_its_request() {
    let env = env().await;
    let module = echo_module();
    let m = echo_manifest(&module);
    assert!(analyse(&module, &m).is_clean());
    env.install(m, module).await.unwrap();
    let report = env
        .call(
            "echo",
            "echo",
            json!({ "list": [1, 2, 3], "nested": { "ok": true } }),
        )
        .await
        .unwrap();
    assert_eq!(
        report.result.unwrap(),
        json!({ "tool": "echo", "arguments": { "list": [1, 2, 3], "nested": { "ok": true } } })
    );
    assert!(report.stats.fuel_used > 0);
    assert!(report.stats.peak_memory_bytes >= 2 * 65536);
}

/// Builds `cells/text-stats/main.c` with clang for wasm32-wasi; `None`
/// when no such toolchain is installed (an error when
/// CELLGATE_REQUIRE_INTEROP=1, as in CI).
fn build_c_cell(out: &std::path::Path) -> Option<Vec<u8>> {
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/../../cells/text-stats/main.c");
    let status = Command::new("clang")
        .args(["--target=wasm32-wasi", "-O2", "-o"])
        .arg(out)
        .arg(source)
        .status();
    let required = std::env::var("CELLGATE_REQUIRE_INTEROP").is_ok_and(|v| v == "1");
    match status {
        Ok(s) if s.success() => Some(std::fs::read(out).unwrap()),
        other => {
            let why = format!(
                "clang could not build the C cell for wasm32-wasi ({other:?}); install: apt-get install clang lld wasi-libc libclang-rt-dev-wasm32"
            );
            assert!(!required, "{why}");
            eprintln!("SKIPPED: {why}");
            None
        }
    }
}

#[tokio::test]
async fn the_c_text_stats_cell_counts_words() {
    let env = env().await;
    let Some(module) = build_c_cell(&env.tmp.path().join("text-stats.wasm")) else {
        return;
    };
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../cells/text-stats/manifest.json"
    );
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["module"]["sha256"] = json!(cellgate_cells::signing::sha256_hex(&module));
    let m = cellgate_cells::Manifest::from_value(v).unwrap();
    let report = analyse(&module, &m);
    assert!(report.is_clean(), "{report}: imports {:?}", report.imports);
    env.install(m, module).await.unwrap();

    let out = env
        .call(
            "text-stats",
            "stats",
            json!({ "text": "two words\nand a ünïcode line" }),
        )
        .await
        .unwrap()
        .result
        .unwrap();
    assert_eq!(out, json!({ "chars": 28, "words": 6, "lines": 2 }));

    let err = env
        .call("text-stats", "stats", json!({ "other": 1 }))
        .await
        .unwrap()
        .result
        .unwrap_err();
    assert_eq!(
        err,
        cellgate_cells::RunError::Exit {
            code: 1,
            stderr: "missing argument `text`".into()
        }
    );
}
