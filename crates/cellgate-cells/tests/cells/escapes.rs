//! Escape attempts and resource abuse: each written as a cell, each denied
//! with a clear error (and the sandbox stops audited).

use cellgate_cells::{CellError, InstallRequest, RunError};
use serde_json::json;

use crate::support::{EMIT, FD_WRITE, emitted, empty_args, env, manifest, wat};

const FD_READ_RIGHT: u64 = 1 << 1;
const FD_WRITE_RIGHT: u64 = 1 << 6;
const O_CREAT: u32 = 1;

/// A cell that opens `path` relative to the first preopened directory
/// (fd 3), following symlinks, and emits the WASI errno (0 = opened).
fn open_cell(path: &str, oflags: u32, rights: u64) -> Vec<u8> {
    wat(&format!(
        r#"(module
  {FD_WRITE}
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 400) "{path}")
  {EMIT}
  (func (export "_start")
    (call $emit (call $path_open (i32.const 3) (i32.const 1) (i32.const 400) (i32.const {len})
      (i32.const {oflags}) (i64.const {rights}) (i64.const {rights}) (i32.const 0) (i32.const 120)))))"#,
        len = path.len()
    ))
}

/// Host layout: `<root>/secret.txt` outside, `<root>/data/inside.txt` and
/// a symlink `<root>/data/link` → `../secret.txt` inside the grant.
fn layout(root: &std::path::Path) -> std::path::PathBuf {
    let data = root.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(root.join("secret.txt"), "top secret").unwrap();
    std::fs::write(data.join("inside.txt"), "hello").unwrap();
    std::os::unix::fs::symlink("../secret.txt", data.join("link")).unwrap();
    std::os::unix::fs::symlink(root.join("secret.txt"), data.join("abslink")).unwrap();
    data
}

async fn errno_of(path: &str, oflags: u32, rights: u64, access: &str) -> (u32, std::path::PathBuf) {
    let mount_root = tempfile::tempdir().unwrap();
    let data = layout(mount_root.path());
    let env =
        crate::support::env_with(|c| c.mount_roots = vec![mount_root.path().to_owned()]).await;
    let module = open_cell(path, oflags, rights);
    let m = manifest(
        "opener",
        &module,
        json!({ "permissions": { "dirs": [{ "path": "/data", "access": access }] } }),
    );
    let sig = env.key.sign(&m);
    let mut request = InstallRequest::new(m, module, Some(sig));
    request.mounts.insert("/data".into(), data.clone());
    env.install_request(request).await.unwrap();
    let n = emitted(&env.call_ok("opener", empty_args()).await);
    // Keep the directory alive until the call is done.
    let kept = mount_root.keep();
    (n, kept)
}

#[tokio::test]
async fn reads_inside_the_grant_work() {
    let (errno, _) = errno_of("inside.txt", 0, FD_READ_RIGHT, "read").await;
    assert_eq!(
        errno, 0,
        "the granted file must open (else the escape tests prove nothing)"
    );
}

#[tokio::test]
async fn reads_outside_the_grant_are_denied() {
    for path in [
        "../secret.txt",
        "/etc/passwd",
        "link",
        "abslink",
        "inside.txt/../../secret.txt",
    ] {
        let (errno, _) = errno_of(path, 0, FD_READ_RIGHT, "read").await;
        assert_ne!(errno, 0, "opening `{path}` escaped the granted directory");
    }
}

#[tokio::test]
async fn writes_to_a_read_only_grant_are_denied() {
    let (errno, root) = errno_of("new.txt", O_CREAT, FD_READ_RIGHT | FD_WRITE_RIGHT, "read").await;
    assert_ne!(errno, 0, "created a file in a read-only grant");
    assert!(!root.join("data/new.txt").exists());
    let (errno, root) = errno_of(
        "new.txt",
        O_CREAT,
        FD_READ_RIGHT | FD_WRITE_RIGHT,
        "read-write",
    )
    .await;
    assert_eq!(errno, 0, "a read-write grant must allow creating files");
    assert!(root.join("data/new.txt").exists());
}

#[tokio::test]
async fn binding_a_grant_outside_the_mount_roots_is_refused() {
    let env = env().await;
    let module = open_cell("x", 0, FD_READ_RIGHT);
    let m = manifest(
        "opener",
        &module,
        json!({ "permissions": { "dirs": [{ "path": "/data", "access": "read" }] } }),
    );
    let sig = env.key.sign(&m);
    let mut request = InstallRequest::new(m, module, Some(sig));
    request.mounts.insert("/data".into(), "/etc".into());
    let err = env.install_request(request).await.unwrap_err();
    assert!(
        matches!(&err, CellError::Invalid { field, message } if field == "mounts./data" && message.contains("mount root")),
        "{err}"
    );
}

#[tokio::test]
async fn the_scratch_directory_is_fresh_per_call_and_removed() {
    let env = env().await;
    // Creates /tmp/marker exclusively: succeeds only if the directory is new.
    let module = wat(&format!(
        r#"(module
  {FD_WRITE}
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 400) "marker")
  {EMIT}
  (func (export "_start")
    (call $emit (call $path_open (i32.const 3) (i32.const 0) (i32.const 400) (i32.const 6)
      (i32.const 5) (i64.const 66) (i64.const 66) (i32.const 0) (i32.const 120)))))"#
    ));
    let m = manifest(
        "scratch",
        &module,
        json!({ "permissions": { "scratch": true } }),
    );
    env.install(m, module).await.unwrap();
    let before: Vec<_> = scratch_dirs();
    assert_eq!(emitted(&env.call_ok("scratch", empty_args()).await), 0);
    assert_eq!(
        emitted(&env.call_ok("scratch", empty_args()).await),
        0,
        "state survived a call"
    );
    assert_eq!(
        scratch_dirs(),
        before,
        "a scratch directory was left behind"
    );
}

fn scratch_dirs() -> Vec<std::path::PathBuf> {
    let mut dirs: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("cellgate-scratch-"))
        })
        .collect();
    dirs.sort();
    dirs
}

#[tokio::test]
async fn only_granted_environment_variables_are_visible() {
    let env = env().await;
    // Emits count × 100 + buffer size of the environment.
    let module = wat(&format!(
        r#"(module
  {FD_WRITE}
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $sizes (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  {EMIT}
  (func (export "_start")
    (drop (call $sizes (i32.const 120) (i32.const 124)))
    (call $emit (i32.add (i32.mul (i32.load (i32.const 120)) (i32.const 100)) (i32.load (i32.const 124))))))"#
    ));
    let m = manifest(
        "envy",
        &module,
        json!({ "permissions": { "env": ["ALLOWED"] } }),
    );
    let sig = env.key.sign(&m);
    let mut request = InstallRequest::new(m.clone(), module.clone(), Some(sig.clone()));
    request.env.insert("ALLOWED".into(), "yes".into());
    env.install_request(request).await.unwrap();
    // One variable, "ALLOWED=yes\0": nothing of the host's environment.
    assert!(std::env::var_os("PATH").is_some());
    assert_eq!(emitted(&env.call_ok("envy", empty_args()).await), 112);

    let mut request = InstallRequest::new(m, module, Some(sig));
    request.env.insert("SECRET".into(), "x".into());
    request.replace = true;
    let err = env.install_request(request).await.unwrap_err();
    assert!(
        matches!(&err, CellError::Invalid { field, .. } if field == "env.SECRET"),
        "{err}"
    );
}

async fn run_abuse(name: &str, body: &str, limits: serde_json::Value) -> RunError {
    let env = env().await;
    let module = wat(&format!(
        r#"(module
  {FD_WRITE}
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  {body})"#
    ));
    let m = manifest(name, &module, json!({ "limits": limits }));
    env.install(m, module).await.unwrap();
    let report = env.call(name, "run", empty_args()).await.unwrap();
    let err = report.result.expect_err("the abusive call succeeded");
    if err.is_limit() {
        assert!(
            env.audited("cell.denied", &format!("cell `{name}`")).await,
            "no audit entry for {err}"
        );
    }
    err
}

fn limits(fuel: u64, timeout_ms: u64, memory: u64, output: u64) -> serde_json::Value {
    json!({ "fuel": fuel, "timeoutMs": timeout_ms, "memoryBytes": memory, "maxOutputBytes": output })
}

#[tokio::test]
async fn an_endless_loop_runs_out_of_fuel() {
    let err = run_abuse(
        "spin",
        r#"(func (export "_start") (loop $l (br $l)))"#,
        limits(1_000_000, 10_000, 1 << 20, 1024),
    )
    .await;
    assert_eq!(err, RunError::FuelExhausted { limit: 1_000_000 });
    assert!(
        err.to_string().contains("fuel budget of 1000000 exhausted"),
        "{err}"
    );
}

#[tokio::test]
async fn an_endless_loop_with_ample_fuel_hits_the_deadline() {
    let err = run_abuse(
        "spin",
        r#"(func (export "_start") (loop $l (br $l)))"#,
        limits(1_000_000_000_000, 100, 1 << 20, 1024),
    )
    .await;
    assert_eq!(err, RunError::Timeout { timeout_ms: 100 });
}

#[tokio::test]
async fn a_memory_bomb_is_stopped_by_the_limiter() {
    let err = run_abuse(
        "bomb",
        r#"(func (export "_start") (loop $l (drop (memory.grow (i32.const 16))) (br $l)))"#,
        limits(10_000_000, 2_000, 2 << 20, 1024),
    )
    .await;
    assert_eq!(
        err,
        RunError::MemoryLimit {
            limit: 2 << 20,
            requested: 33 * 65536
        }
    );
}

#[tokio::test]
async fn huge_output_is_refused() {
    let err = run_abuse(
        "flood",
        r#"(func (export "_start")
            (i32.store (i32.const 0) (i32.const 0))
            (i32.store (i32.const 4) (i32.const 65536))
            (loop $l (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))) (br $l)))"#,
        limits(10_000_000, 2_000, 1 << 20, 1000),
    )
    .await;
    assert_eq!(err, RunError::OutputTooLarge { limit: 1000 });
}

#[tokio::test]
async fn endless_recursion_is_a_stack_overflow() {
    let err = run_abuse(
        "deep",
        r#"(func $f (call $f)) (func (export "_start") (call $f))"#,
        limits(1_000_000_000, 2_000, 1 << 20, 1024),
    )
    .await;
    assert_eq!(err, RunError::StackOverflow);
}

#[tokio::test]
async fn a_trap_is_reported() {
    let err = run_abuse(
        "trap",
        r#"(func (export "_start") unreachable)"#,
        limits(1_000_000, 2_000, 1 << 20, 1024),
    )
    .await;
    assert!(
        matches!(&err, RunError::Trap { message } if message.contains("unreachable")),
        "{err}"
    );
}

#[tokio::test]
async fn a_non_zero_exit_is_a_tool_error_with_stderr() {
    let err = run_abuse(
        "quits",
        r#"(data (i32.const 300) "bad input")
           (func (export "_start")
             (i32.store (i32.const 0) (i32.const 300))
             (i32.store (i32.const 4) (i32.const 9))
             (drop (call $fd_write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8)))
             (call $exit (i32.const 3)))"#,
        limits(1_000_000, 2_000, 1 << 20, 1024),
    )
    .await;
    assert_eq!(
        err,
        RunError::Exit {
            code: 3,
            stderr: "bad input".into()
        }
    );
}

#[tokio::test]
async fn output_that_is_not_json_is_refused() {
    let err = run_abuse(
        "garbage",
        r#"(data (i32.const 300) "not json")
           (func (export "_start")
             (i32.store (i32.const 0) (i32.const 300))
             (i32.store (i32.const 4) (i32.const 8))
             (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))"#,
        limits(1_000_000, 2_000, 1 << 20, 1024),
    )
    .await;
    assert!(matches!(err, RunError::BadOutput { .. }), "{err}");
}
