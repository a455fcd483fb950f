//! Component cells (world `cellgate:cell/tool`): components written for
//! the test in component WebAssembly text (always run), the shipped Python
//! example and a network probe built with componentize-py (skipped when the
//! toolchain is missing, unless CELLGATE_REQUIRE_INTEROP=1).

use std::path::{Path, PathBuf};
use std::process::Command;

use cellgate_cells::{CellError, RunError, analyse, signing::sha256_hex};
use serde_json::{Value, json};

use crate::support::{env, manifest, wat};

/// A component whose `call` runs `body` (core wasm instructions) in a core
/// function `(param $name i32 i32) (param $args i32 i32) (result i32)`
/// that returns a pointer to the lowered `result<string, string>`. Memory
/// from 1024 up is handed out by a bump allocator.
fn component(body: &str, extra_imports: &str) -> Vec<u8> {
    wat(&format!(
        r#"(component
  {extra_imports}
  (core module $m
    (memory (export "memory") 1)
    (global $bump (mut i32) (i32.const 1024))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      (local.set $p (global.get $bump))
      (global.set $bump (i32.add (global.get $bump) (local.get 3)))
      (local.get $p))
    (func (export "call") (param $np i32) (param $nl i32) (param $ap i32) (param $al i32) (result i32)
      {body}))
  (core instance $i (instantiate $m))
  (func (export "call") (param "name" string) (param "args" string) (result (result string (error string)))
    (canon lift (core func $i "call") (memory (core memory $i "memory")) (realloc (core func $i "realloc")))))"#
    ))
}

/// `ok(args)`: answers with the arguments it was given.
const ECHO_ARGS: &str = r#"
      (i32.store (i32.const 0) (i32.const 0))
      (i32.store (i32.const 4) (local.get $ap))
      (i32.store (i32.const 8) (local.get $al))
      (i32.const 0)"#;

/// `err(name)`: fails with the tool name as the message.
const ERR_NAME: &str = r#"
      (i32.store (i32.const 0) (i32.const 1))
      (i32.store (i32.const 4) (local.get $np))
      (i32.store (i32.const 8) (local.get $nl))
      (i32.const 0)"#;

fn component_manifest(name: &str, module: &[u8], mut extra: Value) -> cellgate_cells::Manifest {
    // Declared in the JSON (not patched afterwards): validation depends on
    // the kind (network grants are for components only).
    extra["module"] = json!({ "sha256": sha256_hex(module), "kind": "component" });
    manifest(name, module, extra)
}

#[tokio::test]
async fn a_component_answers_through_the_wit_world() {
    let env = env().await;
    let module = component(ECHO_ARGS, "");
    let m = component_manifest("comp-echo", &module, json!({}));
    let report = analyse(&module, &m);
    assert!(report.is_clean(), "{report}");
    env.install(m, module).await.unwrap();
    let args = json!({ "list": [1, 2, 3], "text": "ünï" });
    let report = env.call("comp-echo", "run", args.clone()).await.unwrap();
    assert_eq!(report.result.unwrap(), args);
    assert!(report.stats.fuel_used > 0);
    assert_eq!(report.stats.peak_memory_bytes, 65536);
    // A fresh instance per call: the bump allocator starts over, so the
    // same call gives the same answer again.
    let again = env.call("comp-echo", "run", args.clone()).await.unwrap();
    assert_eq!(again.result.unwrap(), args);
}

#[tokio::test]
async fn a_component_error_becomes_a_tool_error() {
    let env = env().await;
    let module = component(ERR_NAME, "");
    env.install(component_manifest("comp-err", &module, json!({})), module)
        .await
        .unwrap();
    let err = env
        .call("comp-err", "run", json!({}))
        .await
        .unwrap()
        .result
        .unwrap_err();
    assert_eq!(
        err,
        RunError::Failed {
            message: "run".into()
        }
    );
}

#[tokio::test]
async fn component_limits_stop_loops_memory_bombs_and_non_json() {
    let env = env().await;
    let spin = component("(loop $l (br $l)) (unreachable)", "");
    env.install(component_manifest("comp-spin", &spin, json!({})), spin)
        .await
        .unwrap();
    let err = env
        .call("comp-spin", "run", json!({}))
        .await
        .unwrap()
        .result
        .unwrap_err();
    assert!(matches!(err, RunError::FuelExhausted { .. }), "{err}");
    assert!(env.audited("cell.denied", "fuel budget").await);

    let bomb = component(
        "(loop $l (br_if $l (i32.ne (memory.grow (i32.const 1)) (i32.const -1)))) (unreachable)",
        "",
    );
    env.install(component_manifest("comp-bomb", &bomb, json!({})), bomb)
        .await
        .unwrap();
    let err = env
        .call("comp-bomb", "run", json!({}))
        .await
        .unwrap()
        .result
        .unwrap_err();
    assert!(
        matches!(err, RunError::MemoryLimit { limit: 2097152, .. }),
        "{err}"
    );

    // ok("{\"tool\"…") is not JSON when the arguments are cut: answer the
    // name instead, which is not JSON at all.
    let text = component(
        r#"(i32.store (i32.const 0) (i32.const 0))
           (i32.store (i32.const 4) (local.get $np))
           (i32.store (i32.const 8) (local.get $nl))
           (i32.const 0)"#,
        "",
    );
    env.install(component_manifest("comp-text", &text, json!({})), text)
        .await
        .unwrap();
    let err = env
        .call("comp-text", "run", json!({}))
        .await
        .unwrap()
        .result
        .unwrap_err();
    assert!(matches!(err, RunError::BadOutput { .. }), "{err}");
}

#[tokio::test]
async fn component_imports_are_checked_against_the_grants() {
    let env = env().await;
    let module = component(
        ECHO_ARGS,
        r#"(import "wasi:sockets/tcp@0.2.0" (instance))
           (import "wasi:filesystem/preopens@0.2.0" (instance))
           (import "wasi:cli/stdout@0.2.0" (instance))
           (import "example:evil/host" (instance))"#,
    );
    let m = component_manifest("comp-imports", &module, json!({}));
    let Err(CellError::Analysis(report)) = env.install(m, module.clone()).await else {
        panic!("an ungranted component import must be refused");
    };
    let rules: Vec<(&str, &str)> = report
        .violations
        .iter()
        .map(|v| (v.rule, v.message.as_str()))
        .collect();
    assert_eq!(rules.len(), 3, "{rules:?}");
    assert!(rules[0].1.contains("wasi:sockets/tcp") && rules[0].0 == "ungranted_capability");
    assert!(rules[1].1.contains("wasi:filesystem/preopens"));
    assert_eq!(rules[2].0, "unknown_import");
    assert!(env.audited("cell.refused", "wasi:sockets/tcp").await);

    // With the grants (and without the unknown import) it installs.
    let module = component(
        ECHO_ARGS,
        r#"(import "wasi:sockets/tcp@0.2.0" (instance))
           (import "wasi:filesystem/preopens@0.2.0" (instance))"#,
    );
    let m = component_manifest(
        "comp-imports",
        &module,
        json!({ "permissions": { "scratch": true, "network": [{ "host": "127.0.0.1", "port": 9 }] } }),
    );
    assert!(analyse(&module, &m).is_clean());
}

#[tokio::test]
async fn a_component_without_the_call_export_is_refused_at_install() {
    let env = env().await;
    let module = wat(r#"(component
  (core module $m (func (export "f") (result i32) (i32.const 0)))
  (core instance $i (instantiate $m))
  (func (export "call") (result u32) (canon lift (core func $i "f"))))"#);
    let m = component_manifest("comp-bad", &module, json!({}));
    let err = env.install(m, module).await.unwrap_err();
    assert!(
        matches!(&err, CellError::Compile(m) if m.contains("cellgate:cell/tool")),
        "{err}"
    );
}

// ---- componentize-py ----------------------------------------------------------

/// componentize-py from the tools directory scripts/tools fills.
fn componentize_py() -> Option<PathBuf> {
    let tools = std::env::var_os("CELLGATE_TOOLS_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/cellgate-tools"))
        })?;
    let bin = tools.join("cells-venv/bin/componentize-py");
    bin.is_file().then_some(bin)
}

/// Builds the Python component `<dir>/<module>.py` for the cell world with
/// componentize-py; cached by the digest of the sources (a build takes
/// about 15 s). `None` when the toolchain is missing, an error when
/// CELLGATE_REQUIRE_INTEROP=1 (as in CI).
fn build_python(dir: &Path, module: &str, stub_wasi: bool) -> Option<Vec<u8>> {
    let required = std::env::var("CELLGATE_REQUIRE_INTEROP").is_ok_and(|v| v == "1");
    let Some(bin) = componentize_py() else {
        let why =
            "componentize-py is not installed in $CELLGATE_TOOLS_DIR/cells-venv; run scripts/tools";
        assert!(!required, "{why}");
        eprintln!("SKIPPED: {why}");
        return None;
    };
    let wit = concat!(env!("CARGO_MANIFEST_DIR"), "/wit/cell.wit");
    let mut key = std::fs::read(dir.join(format!("{module}.py"))).unwrap();
    key.extend(std::fs::read(wit).unwrap());
    key.extend(bin.to_string_lossy().as_bytes());
    key.push(u8::from(stub_wasi));
    let cached = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "componentize-{module}-{}.wasm",
        &sha256_hex(&key)[..16]
    ));
    if let Ok(bytes) = std::fs::read(&cached) {
        return Some(bytes);
    }
    let tmp = cached.with_extension("partial");
    let mut cmd = Command::new(&bin);
    cmd.args(["--quiet", "-d", wit, "-w", "tool", "componentize"]);
    if stub_wasi {
        cmd.arg("--stub-wasi");
    }
    let out = cmd
        .args(["-p"])
        .arg(dir)
        .arg(module)
        .arg("-o")
        .arg(&tmp)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "componentize-py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::rename(&tmp, &cached).unwrap();
    Some(std::fs::read(&cached).unwrap())
}

#[tokio::test]
async fn the_python_json_tools_cell_flattens_and_picks() {
    let dir = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../cells/json-tools"
    ));
    let Some(module) = build_python(dir, "app", true) else {
        return;
    };
    let env = env().await;
    let mut v: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    v["module"]["sha256"] = json!(sha256_hex(&module));
    let m = cellgate_cells::Manifest::from_value(v).unwrap();
    let report = analyse(&module, &m);
    assert!(report.is_clean(), "{report}: imports {:?}", report.imports);
    assert!(report.imports.is_empty(), "{:?}", report.imports);
    env.install(m, module).await.unwrap();

    let doc = json!({ "a": { "b": 1, "c": [true, null] }, "d": "x" });
    let out = env
        .call("json-tools", "flatten", json!({ "document": doc }))
        .await
        .unwrap()
        .result
        .unwrap();
    assert_eq!(
        out,
        json!({ "flat": { "a.b": 1, "a.c.0": true, "a.c.1": null, "d": "x" } })
    );
    let out = env
        .call(
            "json-tools",
            "pick",
            json!({ "document": doc, "paths": ["a.c.0", "d"] }),
        )
        .await
        .unwrap()
        .result
        .unwrap();
    assert_eq!(out, json!({ "values": { "a.c.0": true, "d": "x" } }));
    let err = env
        .call(
            "json-tools",
            "pick",
            json!({ "document": doc, "paths": ["a.zz"] }),
        )
        .await
        .unwrap()
        .result
        .unwrap_err();
    assert_eq!(
        err,
        RunError::Failed {
            message: "path `a.zz` not found".into()
        }
    );
}

/// A one-shot TCP server on 127.0.0.1 that answers `pong` to a line.
fn pong_server() -> (u16, std::thread::JoinHandle<bool>) {
    use std::io::{BufRead, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        listener.set_nonblocking(false).unwrap();
        let Ok((stream, _)) = listener.accept() else {
            return false;
        };
        let mut line = String::new();
        let mut reader = std::io::BufReader::new(&stream);
        if reader.read_line(&mut line).is_err() || line != "ping\n" {
            return false;
        }
        (&stream).write_all(b"pong").is_ok()
    });
    (port, handle)
}

#[tokio::test]
async fn a_component_reaches_only_granted_destinations() {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cells"));
    let Some(module) = build_python(dir, "net_probe", false) else {
        return;
    };
    let (port, server) = pong_server();
    // An unused port: bound, then closed, so nothing listens there.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let env = env().await;
    let m = component_manifest(
        "net-probe",
        &module,
        json!({
            // A Python component imports every WASI interface.
            "permissions": {
                "scratch": true, "clock": true, "random": true,
                "network": [{ "host": "127.0.0.1", "port": port }]
            },
            "limits": { "memoryBytes": 67108864, "fuel": 2000000000, "timeoutMs": 10000, "maxOutputBytes": 65536 }
        }),
    );
    // Without the network grant the import itself is refused.
    let mut ungranted = m.clone();
    ungranted.permissions.network.clear();
    let report = analyse(&module, &ungranted);
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.rule == "ungranted_capability" && v.message.contains("wasi:sockets")),
        "{report}"
    );
    env.install(m, module).await.unwrap();

    let report = env
        .call(
            "net-probe",
            "run",
            json!({ "host": "127.0.0.1", "port": port }),
        )
        .await
        .unwrap();
    assert_eq!(report.result.unwrap(), json!({ "reply": "pong" }));
    assert!(report.denials.is_empty(), "{:?}", report.denials);
    // Socket, connect, stream reads and writes: all host calls.
    assert!(report.stats.host_calls >= 4, "{:?}", report.stats);
    assert!(server.join().unwrap(), "the server saw the cell's line");

    let report = env
        .call(
            "net-probe",
            "run",
            json!({ "host": "127.0.0.1", "port": closed }),
        )
        .await
        .unwrap();
    let err = report.result.unwrap_err();
    assert!(
        matches!(&err, RunError::Failed { message } if message.starts_with("connect failed")),
        "{err}"
    );
    let expected = format!("TCP connect to 127.0.0.1:{closed} is not granted");
    assert!(
        report.denials.iter().any(|d| d.contains(&expected)),
        "{:?}",
        report.denials
    );
    assert!(env.audited("cell.denied", &expected).await);
}
