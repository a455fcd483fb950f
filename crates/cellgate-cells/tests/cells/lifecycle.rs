//! The lifecycle, the provider (tools as the pipeline sees them) and
//! behaviour profiles.

use base64::Engine as _;
use cellgate_cells::{
    AnomalyAction, CELL_ADMIN_TOOLS, CellError, CellProvider, CellState, InstallRequest,
    TOOL_REQUIREMENT_META,
};
use cellgate_kernel::{CallContext, Provider};
use serde_json::{Map, Value, json};

use crate::support::{echo_manifest, echo_module, empty_args, env, env_with};

fn args(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

async fn tool_names(provider: &CellProvider, ctx: &CallContext) -> Vec<String> {
    provider
        .list_tools(ctx)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .filter(|n| !n.starts_with("cell_"))
        .collect()
}

#[tokio::test]
async fn states_move_as_documented_and_only_active_cells_serve() {
    let env = env().await;
    let provider = CellProvider::new(env.registry.clone());
    let ctx = CallContext::detached("acme");
    let module = echo_module();
    let m = echo_manifest(&module);
    let sig = env.key.sign(&m);
    let mut request = InstallRequest::new(m, module, Some(sig));
    request.activate = false;
    let record = env.install_request(request).await.unwrap();
    assert_eq!(record.state, CellState::Verified);
    assert!(tool_names(&provider, &ctx).await.is_empty());

    let r = &env.registry;
    let (t, a) = (&env.tenant, &env.actor);
    assert_eq!(
        r.activate(t, a, "echo").await.unwrap().state,
        CellState::Active
    );
    assert_eq!(tool_names(&provider, &ctx).await, ["echo__echo"]);

    let s = r
        .suspend(t, a, "echo", Some("maintenance".into()))
        .await
        .unwrap();
    assert_eq!(
        (s.state, s.state_reason.as_deref()),
        (CellState::Suspended, Some("maintenance"))
    );
    assert!(tool_names(&provider, &ctx).await.is_empty());
    let err = env.call("echo", "echo", empty_args()).await.unwrap_err();
    assert!(
        err.to_string().contains("is SUSPENDED: cannot call"),
        "{err}"
    );

    assert_eq!(
        r.activate(t, a, "echo").await.unwrap().state,
        CellState::Active
    );
    env.call("echo", "echo", empty_args())
        .await
        .unwrap()
        .result
        .unwrap();

    assert_eq!(
        r.revoke(t, a, "echo", None).await.unwrap().state,
        CellState::Revoked
    );
    let err = r.activate(t, a, "echo").await.unwrap_err();
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

    let digest = record.manifest.module.sha256.clone();
    let module_file = env
        .tmp
        .path()
        .join(format!("data/cells/acme/modules/{digest}.wasm"));
    assert!(module_file.exists());
    r.uninstall(t, a, "echo").await.unwrap();
    assert!(!module_file.exists());
    assert!(matches!(
        r.inspect(t, "echo").await,
        Err(CellError::NotInstalled(_))
    ));
    for category in [
        "cell.install",
        "cell.activate",
        "cell.suspend",
        "cell.revoke",
        "cell.uninstall",
    ] {
        assert!(
            env.audited(category, "echo").await,
            "no {category} audit entry"
        );
    }
}

#[tokio::test]
async fn installing_twice_needs_replace() {
    let env = env().await;
    let module = echo_module();
    let m = echo_manifest(&module);
    env.install(m.clone(), module.clone()).await.unwrap();
    let err = env.install(m.clone(), module.clone()).await.unwrap_err();
    assert!(matches!(err, CellError::AlreadyInstalled(_)), "{err}");
    let mut request = InstallRequest::new(m.clone(), module, Some(env.key.sign(&m)));
    request.replace = true;
    env.install_request(request).await.unwrap();
}

#[tokio::test]
async fn the_provider_publishes_namespaced_tools_and_admin_tools() {
    let env = env().await;
    let provider = CellProvider::new(env.registry.clone());
    let ctx = CallContext::detached("acme");
    let module = echo_module();
    let m = echo_manifest(&module);
    let sig = env.key.sign(&m);

    // Install through the admin tool, as a client would.
    let result = provider
        .call_tool(
            &ctx,
            "cell_install",
            args(json!({
                "manifest": serde_json::to_value(&m).unwrap(),
                "module": base64::engine::general_purpose::STANDARD.encode(&module),
                "signature": serde_json::to_value(&sig).unwrap(),
            })),
        )
        .await
        .unwrap();
    assert_eq!(result.get("isError"), None, "{result}");
    assert_eq!(result["structuredContent"]["state"], "ACTIVE");

    let tools = provider.list_tools(&ctx).await.unwrap();
    for name in CELL_ADMIN_TOOLS {
        let tool = tools.iter().find(|t| t.name == *name).unwrap();
        assert_eq!(
            tool.extra["_meta"][TOOL_REQUIREMENT_META], "admin",
            "{name}"
        );
    }
    let echo = tools.iter().find(|t| t.name == "echo__echo").unwrap();
    assert_eq!(echo.input_schema, json!({ "type": "object" }));
    assert_eq!(echo.extra["annotations"]["readOnlyHint"], true);
    assert_eq!(
        echo.extra["_meta"]["io.cellgate/cell"]["sha256"],
        m.module.sha256
    );

    let result = provider
        .call_tool(&ctx, "echo__echo", args(json!({ "text": "héllo" })))
        .await
        .unwrap();
    assert_eq!(
        result["structuredContent"],
        json!({ "tool": "echo", "arguments": { "text": "héllo" } })
    );

    // Another tenant sees none of acme's cells.
    env.store
        .tenants()
        .create(
            &cellgate_store::TenantId::parse("globex").unwrap(),
            "Globex",
        )
        .await
        .unwrap();
    let other = CallContext::detached("globex");
    assert!(tool_names(&provider, &other).await.is_empty());
    let err = provider
        .call_tool(&other, "echo__echo", Map::new())
        .await
        .unwrap_err();
    assert!(err.message.contains("unknown tool"), "{}", err.message);

    // A refused install answers with every violation.
    let bad = cellgate_cells::Manifest {
        name: "bad".into(),
        ..m.clone()
    };
    let result = provider
        .call_tool(
            &ctx,
            "cell_install",
            args(json!({
                "manifest": serde_json::to_value(&bad).unwrap(),
                "module": base64::engine::general_purpose::STANDARD.encode(b"not wasm"),
            })),
        )
        .await
        .unwrap();
    assert_eq!(result["isError"], true);
    let text = result["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("digest mismatch"), "{text}");

    let inspect = provider
        .call_tool(&ctx, "cell_inspect", args(json!({ "name": "echo" })))
        .await
        .unwrap();
    assert_eq!(inspect["structuredContent"]["profile"]["calls"], 1);
}

#[tokio::test]
async fn a_profile_anomaly_suspends_the_cell() {
    let env = env_with(|c| {
        c.profile.warmup_calls = 5;
        c.profile.on_high = AnomalyAction::Suspend;
        c.profile.on_critical = AnomalyAction::Suspend;
    })
    .await;
    let module = echo_module();
    env.install(echo_manifest(&module), module).await.unwrap();
    for i in 0..8 {
        env.call("echo", "echo", json!({ "i": i }))
            .await
            .unwrap()
            .result
            .unwrap();
    }
    let (record, _) = env.registry.inspect(&env.tenant, "echo").await.unwrap();
    assert_eq!(
        record.state,
        CellState::Active,
        "regular calls must not trip the profile"
    );

    // Same cell, same tool, a thousand times the usual output.
    let big = "x".repeat(100_000);
    env.call("echo", "echo", json!({ "i": big }))
        .await
        .unwrap()
        .result
        .unwrap();
    let (record, profile) = env.registry.inspect(&env.tenant, "echo").await.unwrap();
    assert_eq!(record.state, CellState::Suspended);
    assert!(
        record
            .state_reason
            .as_deref()
            .unwrap()
            .contains("outputBytes"),
        "{record:?}"
    );
    assert_eq!(profile["anomalies"], 1);
    assert!(env.audited("cell.anomaly", "echo").await);
    assert!(env.audited("cell.suspend", "ACTIVE → SUSPENDED").await);
    let err = env.call("echo", "echo", empty_args()).await.unwrap_err();
    assert!(
        matches!(
            err,
            CellError::WrongState {
                state: CellState::Suspended,
                ..
            }
        ),
        "{err}"
    );
}
