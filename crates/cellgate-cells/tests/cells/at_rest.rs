//! What a cell leaves on disk and in the store, and what survives a
//! restart: behaviour profiles, sealed environment values, compiled
//! artefacts.

use std::time::Duration;

use cellgate_cells::{CellError, CellState, InstallRequest};
use cellgate_store::SecretSeal;
use serde_json::json;

use crate::support::{
    EMIT, FD_WRITE, echo_manifest, echo_module, emitted, empty_args, env, env_with, manifest, wat,
};

#[tokio::test]
async fn profiles_survive_a_restart_after_a_suspend_or_a_flush() {
    let mut env = env_with(|c| {
        // Never written during calls: only the suspend and the flush save.
        c.profile_save_interval = Duration::from_secs(3600);
    })
    .await;
    let module = echo_module();
    env.install(echo_manifest(&module), module).await.unwrap();
    for i in 0..3 {
        env.call("echo", "echo", json!({ "i": i }))
            .await
            .unwrap()
            .result
            .unwrap();
    }
    let (t, a) = (env.tenant.clone(), env.actor.clone());
    env.registry.suspend(&t, &a, "echo", None).await.unwrap();
    env.reopen().await;
    let (record, profile) = env.registry.inspect(&t, "echo").await.unwrap();
    assert_eq!(record.state, CellState::Suspended);
    assert_eq!(profile["calls"], 3, "{profile}");
    assert_eq!(profile["metrics"]["fuelUsed"]["samples"], 3);
    let fuel_mean = profile["metrics"]["fuelUsed"]["mean"].as_f64().unwrap();
    assert!(fuel_mean > 0.0);

    env.registry.activate(&t, &a, "echo").await.unwrap();
    for i in 0..2 {
        env.call("echo", "echo", json!({ "i": i }))
            .await
            .unwrap()
            .result
            .unwrap();
    }
    assert_eq!(env.registry.flush_profiles().await, 1);
    assert_eq!(env.registry.flush_profiles().await, 0, "nothing changed");
    env.reopen().await;
    let (_, profile) = env.registry.inspect(&t, "echo").await.unwrap();
    assert_eq!(profile["calls"], 5, "{profile}");
    assert_eq!(profile["metrics"]["fuelUsed"]["samples"], 5);

    // A new installation starts a new profile, in the store as well.
    let module = echo_module();
    let m = echo_manifest(&module);
    let mut request = InstallRequest::new(m.clone(), module, Some(env.key.sign(&m)));
    request.replace = true;
    env.install_request(request).await.unwrap();
    env.reopen().await;
    let (_, profile) = env.registry.inspect(&t, "echo").await.unwrap();
    assert_eq!(profile["calls"], 0, "{profile}");
}

/// Emits 100 × the number of environment variables + the size of the
/// environment buffer.
fn env_cell() -> Vec<u8> {
    wat(&format!(
        r#"(module
  {FD_WRITE}
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $sizes (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  {EMIT}
  (func (export "_start")
    (drop (call $sizes (i32.const 120) (i32.const 124)))
    (call $emit (i32.add (i32.mul (i32.load (i32.const 120)) (i32.const 100)) (i32.load (i32.const 124))))))"#
    ))
}

#[tokio::test]
async fn environment_values_are_sealed_at_rest_and_open_only_for_their_cell() {
    let env = env_with(|c| c.refresh = Duration::ZERO).await;
    let module = env_cell();
    for (name, value) in [("envy", "s3cret-of-envy"), ("other", "x")] {
        let m = manifest(
            name,
            &module,
            json!({ "permissions": { "env": ["TOKEN"] } }),
        );
        let sig = env.key.sign(&m);
        let mut request = InstallRequest::new(m, module.clone(), Some(sig));
        request.env.insert("TOKEN".into(), value.into());
        env.install_request(request).await.unwrap();
    }
    // "TOKEN=s3cret-of-envy\0" is 21 bytes.
    assert_eq!(emitted(&env.call_ok("envy", empty_args()).await), 121);
    assert_eq!(emitted(&env.call_ok("other", empty_args()).await), 108);

    let docs = env.store.scope(&env.tenant).documents();
    let stored = docs.get("cells", "envy").await.unwrap().unwrap().value;
    let text = stored.to_string();
    assert!(!text.contains("s3cret"), "clear value in the store: {text}");
    assert!(stored.get("env").is_none());
    let sealed = stored["sealedEnv"]["TOKEN"].as_str().unwrap().to_owned();
    // The instance key opens it, but only as envy's TOKEN.
    let seal = SecretSeal::load_or_create(&env.tmp.path().join("data")).unwrap();
    let owner = |cell: &str, var: &str| format!("cellgate-cell-env\0acme\0{cell}\0{var}");
    assert_eq!(
        seal.open(&owner("envy", "TOKEN"), &sealed).unwrap(),
        b"s3cret-of-envy"
    );
    assert!(seal.open(&owner("other", "TOKEN"), &sealed).is_err());
    assert!(seal.open(&owner("envy", "OTHER"), &sealed).is_err());

    // Moved into another cell's record, it does not open: the cell is not
    // run with a missing variable, the call is refused naming it.
    let mut other = docs.get("cells", "other").await.unwrap().unwrap().value;
    other["sealedEnv"]["TOKEN"] = json!(sealed);
    docs.put("cells", "other", &other).await.unwrap();
    let err = env.call("other", "run", empty_args()).await.unwrap_err();
    assert!(
        matches!(&err, CellError::Invalid { field, .. } if field == "sealedEnv.TOKEN"),
        "{err}"
    );

    // A record from before sealing (clear `env`) still runs, and is sealed
    // at its next write.
    let mut legacy = docs.get("cells", "other").await.unwrap().unwrap().value;
    legacy.as_object_mut().unwrap().remove("sealedEnv");
    legacy["env"] = json!({ "TOKEN": "legacy" });
    docs.put("cells", "other", &legacy).await.unwrap();
    assert_eq!(emitted(&env.call_ok("other", empty_args()).await), 113);
    let (t, a) = (&env.tenant, &env.actor);
    env.registry.suspend(t, a, "other", None).await.unwrap();
    let resealed = docs.get("cells", "other").await.unwrap().unwrap().value;
    assert!(resealed.get("env").is_none(), "{resealed}");
    assert!(!resealed.to_string().contains("legacy"));
    env.registry.activate(t, a, "other").await.unwrap();
    assert_eq!(emitted(&env.call_ok("other", empty_args()).await), 113);
}

#[tokio::test]
async fn compiled_cells_are_cached_on_disk_and_checked_before_loading() {
    let mut env = env().await;
    let module = echo_module();
    let m = echo_manifest(&module);
    let digest = m.module.sha256.clone();
    env.install(m, module).await.unwrap();
    assert_eq!(env.registry.compilations(), 1);
    let cache_dir = env.tmp.path().join("data").join("cells-cache");
    let files: Vec<_> = std::fs::read_dir(&cache_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let file = files[0].clone();
    assert!(
        file.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(&digest)
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "cache file is {mode:o}");
    }
    let good = std::fs::read(&file).unwrap();

    // A restart loads the artefact instead of compiling.
    env.reopen().await;
    env.call("echo", "echo", json!({ "a": 1 }))
        .await
        .unwrap()
        .result
        .unwrap();
    assert_eq!(env.registry.compilations(), 0);

    // An altered artefact (its tag no longer matches) is recompiled and
    // the file rewritten; so is a truncated one.
    let mut altered = good.clone();
    let last = altered.len() - 1;
    altered[last] ^= 0xff;
    for broken in [altered, good[..10].to_vec()] {
        std::fs::write(&file, &broken).unwrap();
        env.reopen().await;
        let answer = env
            .call("echo", "echo", json!({ "a": 2 }))
            .await
            .unwrap()
            .result
            .unwrap();
        assert_eq!(answer["arguments"]["a"], 2, "{answer}");
        assert_eq!(env.registry.compilations(), 1);
        let rewritten = std::fs::read(&file).unwrap();
        assert_ne!(rewritten, broken);
        env.reopen().await;
        env.call("echo", "echo", empty_args()).await.unwrap();
        assert_eq!(env.registry.compilations(), 0, "the rewritten file loads");
    }

    // Written under another instance key, it is not trusted either.
    std::fs::remove_file(env.tmp.path().join("data").join("upstream-secrets.key")).unwrap();
    env.reopen().await;
    env.call("echo", "echo", empty_args()).await.unwrap();
    assert_eq!(env.registry.compilations(), 1);
}

#[tokio::test]
async fn a_network_grant_on_a_command_module_is_refused() {
    let env = env().await;
    let module = echo_module();
    let mut m = echo_manifest(&module);
    m.permissions
        .network
        .push(cellgate_cells::manifest::NetworkGrant {
            host: "127.0.0.1".into(),
            port: 9,
        });
    let err = env.install(m, module).await.unwrap_err();
    let CellError::Manifest(errors) = &err else {
        panic!("expected a manifest error, got {err}");
    };
    assert!(
        err.to_string().contains("permissions.network") && err.to_string().contains("preview 1"),
        "{errors:?}"
    );
}
