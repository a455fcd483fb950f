//! Behaviour profiles: host calls as a metric, and sampling after a
//! MEDIUM anomaly.

use cellgate_cells::{AnomalyAction, CellState, ProfileConfig};
use cellgate_store::AuditQuery;
use serde_json::{Value, json};

use crate::support::{EMIT, FD_WRITE, echo_manifest, echo_module, env, env_with, manifest, wat};

/// Calls `fd_write` with an empty buffer list `n` times, then emits `n`.
fn chatty(n: u32) -> Vec<u8> {
    wat(&format!(
        r#"(module
  {FD_WRITE}
  (memory (export "memory") 1)
  {EMIT}
  (func (export "_start")
    (local $i i32)
    (block $done
      (loop $again
        (br_if $done (i32.ge_u (local.get $i) (i32.const {n})))
        (drop (call $fd_write (i32.const 1) (i32.const 100) (i32.const 0) (i32.const 108)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $again)))
    (call $emit (i32.const {n}))))"#
    ))
}

#[tokio::test]
async fn host_calls_are_counted_per_call_and_profiled() {
    let env = env().await;
    for (name, n) in [("quiet", 0u32), ("chatty", 40)] {
        let module = chatty(n);
        env.install(manifest(name, &module, json!({})), module)
            .await
            .unwrap();
        let report = env.call(name, "run", json!({})).await.unwrap();
        assert_eq!(report.result.unwrap()["n"], format!("{n:03}"));
        // n empty writes and the one that emits the result.
        assert_eq!(report.stats.host_calls, u64::from(n) + 1, "{name}");
        let (_, profile) = env.registry.inspect(&env.tenant, name).await.unwrap();
        assert_eq!(
            profile["metrics"]["hostCalls"],
            json!({ "mean": f64::from(n) + 1.0, "std": 0.0, "samples": 1 }),
            "{profile}"
        );
    }
}

async fn sample_entries(env: &crate::support::Env) -> Vec<cellgate_store::AuditRecord> {
    env.store
        .audit()
        .entries(&AuditQuery::default(), 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.category.as_deref() == Some("cell.sample"))
        .collect()
}

#[tokio::test]
async fn a_medium_anomaly_puts_the_next_calls_under_audited_sampling() {
    assert_eq!(ProfileConfig::default().on_medium, AnomalyAction::Sample);
    let env = env_with(|c| {
        c.profile.warmup_calls = 5;
        c.profile.sample_calls = 3;
        // Any anomaly is MEDIUM (whose action stays the default), and only
        // a gross one counts: wall-clock noise on a busy host must not
        // start a sampling of its own.
        c.profile.z_low = 200.0;
        c.profile.z_medium = 200.0;
        c.profile.z_high = 1e12;
        c.profile.z_critical = 1e12;
    })
    .await;
    let module = echo_module();
    env.install(echo_manifest(&module), module).await.unwrap();
    for i in 0..6 {
        env.call("echo", "echo", json!({ "i": i }))
            .await
            .unwrap()
            .result
            .unwrap();
    }
    assert!(sample_entries(&env).await.is_empty());

    let big = "x".repeat(100_000);
    env.call("echo", "echo", json!({ "i": big }))
        .await
        .unwrap()
        .result
        .unwrap();
    let (record, profile) = env.registry.inspect(&env.tenant, "echo").await.unwrap();
    assert_eq!(record.state, CellState::Active);
    assert_eq!(profile["lastAnomaly"]["severity"], "MEDIUM", "{profile}");
    assert_eq!(
        profile["sampling"],
        json!({ "active": true, "remaining": 3 })
    );
    assert!(
        env.audited("cell.anomaly", "Sample (the next 3 calls")
            .await
    );
    assert!(
        sample_entries(&env).await.is_empty(),
        "the anomaly itself is no sample"
    );

    let secret = "needle-0451";
    for i in 0..4 {
        env.call("echo", "echo", json!({ "secret": secret, "i": i }))
            .await
            .unwrap()
            .result
            .unwrap();
    }
    let samples = sample_entries(&env).await;
    assert_eq!(samples.len(), 3, "the fourth call is not sampled");
    for (i, entry) in samples.iter().enumerate() {
        let message = entry.message.as_deref().unwrap();
        assert!(!message.contains(secret), "raw content audited: {message}");
        let m: Value = serde_json::from_str(message).unwrap();
        let args = json!({ "secret": secret, "i": i });
        let digest = cellgate_audit::to_hex(&cellgate_audit::args_digest(&args));
        assert_eq!(m["argumentsSha256"], digest);
        assert_eq!(entry.args_digest.as_deref(), Some(digest.as_str()));
        let output = json!({ "tool": "echo", "arguments": args });
        assert_eq!(
            m["outputSha256"],
            cellgate_audit::to_hex(&cellgate_audit::args_digest(&output))
        );
        assert_eq!(m["samplesRemaining"], 2 - i as u64);
        assert_eq!(entry.target.as_deref(), Some("echo__echo"));
        for metric in [
            "fuelUsed",
            "peakMemoryBytes",
            "durationUs",
            "outputBytes",
            "hostCalls",
        ] {
            assert!(m["stats"][metric].is_u64(), "{metric} missing: {m}");
        }
        assert!(m["stats"]["hostCalls"].as_u64().unwrap() > 0);
    }
    let (_, profile) = env.registry.inspect(&env.tenant, "echo").await.unwrap();
    assert_eq!(
        profile["sampling"],
        json!({ "active": false, "remaining": 0 })
    );
}
