//! The same sequence of tool calls against the official memory server
//! (Node, over stdio) and against the provider; their graphs and search
//! results must be equal.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::Stdio;

use cellgate_memory::MemoryProvider;
use cellgate_store::{Store, StoreConfig};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// The official server over stdio.
struct Official {
    child: Child,
    stdin: ChildStdin,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
    next_id: u64,
    _dir: crate::TempDir,
}

impl Official {
    /// Starts it, or `None` (after a notice) when Node or the package is
    /// missing and `CELLGATE_REQUIRE_INTEROP` is not `1`.
    async fn start() -> Option<Official> {
        let tools = std::env::var_os("CELLGATE_TOOLS_DIR")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/cellgate-tools"))
            })?;
        let modules = tools.join("npm/node_modules");
        let node = modules.join(".bin/node");
        let script = modules.join("@modelcontextprotocol/server-memory/dist/index.js");
        if !node.exists() || !script.exists() {
            assert!(
                std::env::var("CELLGATE_REQUIRE_INTEROP").as_deref() != Ok("1"),
                "CELLGATE_REQUIRE_INTEROP=1 but {} or {} is missing; run scripts/tools",
                node.display(),
                script.display()
            );
            let _ = writeln!(
                std::io::stderr(),
                "note: the official memory server is not installed under {}; skipping the comparison",
                modules.display()
            );
            return None;
        }
        let dir = crate::TempDir::new("memory-official");
        let mut child = Command::new(&node)
            .arg(&script)
            .env("MEMORY_FILE_PATH", dir.path().join("memory.jsonl"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("starting the official memory server");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut server = Official {
            child,
            stdin,
            stdout,
            next_id: 1,
            _dir: dir,
        };
        server
            .request(
                "initialize",
                json!({
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": { "name": "cellgate-memory-test", "version": "0" }
                }),
            )
            .await;
        server
            .send(json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }))
            .await;
        Some(server)
    }

    async fn send(&mut self, message: Value) {
        let mut line = message.to_string();
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .await
            .expect("writing to the server");
        self.stdin.flush().await.expect("flushing");
    }

    async fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send(json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }))
            .await;
        loop {
            let line =
                tokio::time::timeout(std::time::Duration::from_secs(30), self.stdout.next_line())
                    .await
                    .expect("the official server answers within 30 s")
                    .expect("reading from the server")
                    .expect("the server closed its output");
            let message: Value = serde_json::from_str(&line).expect("a JSON-RPC line");
            if message.get("id") == Some(&json!(id)) {
                return message
                    .get("result")
                    .cloned()
                    .unwrap_or_else(|| panic!("{method}: {message}"));
            }
        }
    }

    async fn call(&mut self, tool: &str, args: Value) -> Value {
        self.request("tools/call", json!({ "name": tool, "arguments": args }))
            .await
    }
}

impl Drop for Official {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn steps() -> Vec<(&'static str, Value)> {
    vec![
        (
            "create_entities",
            json!({ "entities": [
                { "name": "Alice", "entityType": "person", "observations": ["Works at Acme", "Likes tea"] },
                { "name": "Acme", "entityType": "company", "observations": ["Makes anvils"] },
                { "name": "Bob", "entityType": "person", "observations": [] }
            ]}),
        ),
        // Alice exists already: only Carol is created.
        (
            "create_entities",
            json!({ "entities": [
                { "name": "Alice", "entityType": "robot", "observations": ["ignored"] },
                { "name": "Carol", "entityType": "person", "observations": ["Speaks TEA-ceremony Japanese"] }
            ]}),
        ),
        (
            "create_relations",
            json!({ "relations": [
                { "from": "Alice", "to": "Acme", "relationType": "works_at" },
                { "from": "Bob", "to": "Alice", "relationType": "knows" },
                { "from": "Carol", "to": "Nobody", "relationType": "knows" }
            ]}),
        ),
        (
            "create_relations",
            json!({ "relations": [
                { "from": "Alice", "to": "Acme", "relationType": "works_at" },
                { "from": "Alice", "to": "Acme", "relationType": "founded" }
            ]}),
        ),
        (
            "add_observations",
            json!({ "observations": [
                { "entityName": "Alice", "contents": ["Likes tea", "Plays chess"] },
                { "entityName": "Bob", "contents": ["Drives a van"] }
            ]}),
        ),
        (
            "add_observations",
            json!({ "observations": [
                { "entityName": "Bob", "contents": ["never stored"] },
                { "entityName": "Ghost", "contents": ["x"] }
            ]}),
        ),
        (
            "delete_observations",
            json!({ "deletions": [
                { "entityName": "Alice", "observations": ["Works at Acme", "not there"] },
                { "entityName": "Ghost", "observations": ["x"] }
            ]}),
        ),
        (
            "delete_relations",
            json!({ "relations": [
                { "from": "Alice", "to": "Acme", "relationType": "founded" }
            ]}),
        ),
        ("search_nodes", json!({ "query": "TEA" })),
        ("search_nodes", json!({ "query": "person" })),
        ("search_nodes", json!({ "query": "nothing matches this" })),
        ("open_nodes", json!({ "names": ["Acme", "Nobody"] })),
        ("read_graph", json!({})),
        (
            "delete_entities",
            json!({ "entityNames": ["Acme", "Ghost"] }),
        ),
        ("read_graph", json!({})),
        ("search_nodes", json!({ "query": "a" })),
    ]
}

pub async fn same_results_as_the_official_server(store: Store, _: StoreConfig) {
    let Some(mut official) = Official::start().await else {
        return;
    };
    let t = crate::tenant(&store, "interop").await;
    let p = MemoryProvider::with_defaults(store);
    let ctx = crate::as_user(&t, "agent-1");
    for (i, (tool, args)) in steps().into_iter().enumerate() {
        let theirs = official.call(tool, args.clone()).await;
        let ours = crate::call_raw(&p, &ctx, tool, args.clone()).await;
        let error = |r: &Value| r.get("isError") == Some(&json!(true));
        assert_eq!(
            error(&ours),
            error(&theirs),
            "step {i} {tool}: ours {ours} theirs {theirs}"
        );
        if error(&theirs) {
            // The official SDK words failures its own way; the cause must be the same.
            let text = theirs["content"][0]["text"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let our_text = ours["content"][0]["text"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            assert!(
                text.contains(&our_text),
                "step {i} {tool}: ours {our_text:?} theirs {text:?}"
            );
            continue;
        }
        assert_eq!(
            ours["structuredContent"], theirs["structuredContent"],
            "step {i} {tool} {args}"
        );
        assert_eq!(ours["content"], theirs["content"], "step {i} {tool} {args}");
    }
}
