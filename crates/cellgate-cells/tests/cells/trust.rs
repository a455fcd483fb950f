//! Signatures, digests, static analysis and re-verification.

use cellgate_cells::{
    CellError, CellPolicy, CellState, InstallRequest, PublisherKey, TrustError, analyse,
};
use serde_json::json;

use crate::support::{echo_manifest, echo_module, empty_args, env, manifest, wat};

#[tokio::test]
async fn module_bytes_other_than_the_signed_digest_are_refused() {
    let env = env().await;
    let module = echo_module();
    let m = echo_manifest(&module);
    let sig = env.key.sign(&m);
    let mut tampered = module.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let err = env
        .install_request(InstallRequest::new(m, tampered, Some(sig)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, CellError::Trust(TrustError::DigestMismatch { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("module digest mismatch"), "{err}");
    assert!(env.audited("cell.refused", "digest mismatch").await);
    assert!(env.registry.records(&env.tenant).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_manifest_altered_after_signing_is_refused() {
    let env = env().await;
    let module = echo_module();
    let m = echo_manifest(&module);
    let sig = env.key.sign(&m);
    let mut altered = m.clone();
    altered.limits.fuel *= 10;
    let err = env
        .install_request(InstallRequest::new(altered, module, Some(sig)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, CellError::Trust(TrustError::BadSignature { .. })),
        "{err}"
    );
}

#[tokio::test]
async fn untrusted_and_unsigned_cells_are_refused_unless_allowed() {
    let env = env().await;
    let module = echo_module();
    let m = echo_manifest(&module);
    let stranger = PublisherKey::generate();
    let err = env
        .install_request(InstallRequest::new(
            m.clone(),
            module.clone(),
            Some(stranger.sign(&m)),
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CellError::Trust(TrustError::UntrustedKey { key_id }) if *key_id == stranger.key_id()),
        "{err}"
    );

    let err = env
        .install_request(InstallRequest::new(m.clone(), module.clone(), None))
        .await
        .unwrap_err();
    assert!(
        matches!(err, CellError::Trust(TrustError::Unsigned)),
        "{err}"
    );

    env.registry
        .set_policy(
            &env.tenant,
            &env.actor,
            &CellPolicy {
                allow_unsigned: true,
            },
        )
        .await
        .unwrap();
    let record = env
        .install_request(InstallRequest::new(m, module, None))
        .await
        .unwrap();
    assert_eq!(record.state, CellState::Active);
    assert!(record.publisher.is_none());
}

#[tokio::test]
async fn static_analysis_reports_every_violation() {
    let module = wat(r#"(module
  (import "wasi_snapshot_preview1" "path_open" (func (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "sock_accept" (func (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_raise" (func (param i32) (result i32)))
  (import "env" "escape" (func))
  (memory (export "memory") 1 1000))"#);
    let m = manifest("bad", &module, json!({}));
    let report = analyse(&module, &m);
    let rules: Vec<(&str, &str)> = report
        .violations
        .iter()
        .map(|v| (v.rule, v.message.as_str()))
        .collect();
    let has = |rule: &str, text: &str| rules.iter().any(|(r, m)| *r == rule && m.contains(text));
    assert!(has("ungranted_capability", "path_open"), "{rules:?}");
    assert!(has("ungranted_capability", "sock_accept"), "{rules:?}");
    assert!(has("ungranted_capability", "random_get"), "{rules:?}");
    assert!(has("unknown_import", "proc_raise"), "{rules:?}");
    assert!(has("unknown_import", "`env`.`escape`"), "{rules:?}");
    assert!(
        has("memory_over_limit", "declared memory maximum"),
        "{rules:?}"
    );
    assert!(has("missing_export", "_start"), "{rules:?}");
    assert_eq!(report.imports.len(), 5);

    // The same module is refused at install, with the report.
    let env = env().await;
    let err = env.install(m, module).await.unwrap_err();
    match err {
        CellError::Analysis(report) => assert_eq!(report.violations.len(), rules.len()),
        other => panic!("expected an analysis refusal, got {other}"),
    }
    assert!(env.audited("cell.refused", "static analysis").await);
}

#[tokio::test]
async fn granted_capabilities_pass_analysis_and_garbage_is_malformed() {
    let module = wat(r#"(module
  (import "wasi_snapshot_preview1" "path_open" (func (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func (param i32 i64 i32) (result i32)))
  (memory (export "memory") 1 16)
  (func (export "_start")))"#);
    let m = manifest(
        "good",
        &module,
        json!({ "permissions": { "dirs": [{ "path": "/data", "access": "read" }], "clock": true } }),
    );
    assert!(analyse(&module, &m).is_clean(), "{}", analyse(&module, &m));

    let garbage = b"\0asm\x01\0\0\0\x01\xff\xff".to_vec();
    let report = analyse(&garbage, &manifest("junk", &garbage, json!({})));
    assert_eq!(report.violations.len(), 1);
    assert_eq!(report.violations[0].rule, "malformed");
}

#[tokio::test]
async fn reverification_revokes_a_cell_whose_module_was_tampered_with() {
    let env = env().await;
    let module = echo_module();
    let m = echo_manifest(&module);
    let digest = m.module.sha256.clone();
    env.install(m, module).await.unwrap();
    env.call("echo", "echo", json!({ "a": 1 }))
        .await
        .unwrap()
        .result
        .unwrap();

    let report = env.registry.reverify(&env.tenant).await.unwrap();
    assert_eq!(report[0].outcome, "ok");

    let path = env
        .tmp
        .path()
        .join(format!("data/cells/acme/modules/{digest}.wasm"));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(b"\0\x04evil");
    std::fs::write(&path, bytes).unwrap();

    let report = env.registry.reverify(&env.tenant).await.unwrap();
    assert_eq!(report[0].outcome, "REVOKED");
    assert!(
        report[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("digest mismatch"),
        "{report:?}"
    );
    let err = env.call("echo", "echo", empty_args()).await.unwrap_err();
    assert!(
        matches!(
            err,
            CellError::WrongState {
                state: CellState::Revoked,
                ..
            }
        ),
        "{err}"
    );
    assert!(env.audited("cell.revoke", "re-verification failed").await);
}

#[tokio::test]
async fn reverification_revokes_cells_of_a_publisher_no_longer_trusted() {
    let env = env().await;
    let module = echo_module();
    env.install(echo_manifest(&module), module).await.unwrap();
    assert!(
        env.registry
            .untrust_publisher(&env.tenant, &env.actor, &env.key.key_id())
            .await
            .unwrap()
    );
    let all = env.registry.reverify_all().await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].0, "acme");
    assert_eq!(all[0].1.outcome, "REVOKED");
}
