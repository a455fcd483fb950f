//! The edge over real sockets: Streamable HTTP, legacy SSE and stdio against
//! the conformance provider, good input and bad.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cellgate_kernel::{Catalog, MeterLayer, Metrics, Pipeline, TraceLayer};
use cellgate_mcp::conformance::ConformanceProvider;
use cellgate_mcp::{EdgeConfig, McpServer};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

fn server_with(config: EdgeConfig) -> Arc<McpServer> {
    let metrics = Metrics::new();
    let pipeline = Pipeline::builder(Catalog::new(vec![ConformanceProvider::new(
        Duration::from_millis(200),
    )]))
    .layer(TraceLayer)
    .layer(MeterLayer::new(metrics.clone()))
    .build();
    McpServer::new(pipeline, config, metrics)
}

async fn start_with(config: EdgeConfig) -> (SocketAddr, Arc<McpServer>) {
    let server = server_with(config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = cellgate_mcp::http::router(server.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, server)
}

async fn start() -> (SocketAddr, Arc<McpServer>) {
    start_with(EdgeConfig {
        max_body_bytes: 64 * 1024,
        ..EdgeConfig::default()
    })
    .await
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    /// JSON-RPC messages in an SSE body (or the JSON body itself).
    fn messages(&self) -> Vec<Value> {
        if self
            .header("content-type")
            .is_some_and(|c| c.starts_with("text/event-stream"))
        {
            self.body
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .filter(|d| !d.trim().is_empty())
                .map(|d| serde_json::from_str(d).unwrap())
                .collect()
        } else {
            vec![self.json()]
        }
    }
}

/// One HTTP/1.1 exchange on a fresh connection, with exact control of headers and bytes.
async fn raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("response within 10s")
        .unwrap();
    parse_response(&buf)
}

fn parse_response(buf: &[u8]) -> Resp {
    let text = String::from_utf8_lossy(buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

const JSON: (&str, &str) = ("content-type", "application/json");
const ACCEPT: (&str, &str) = ("accept", "application/json, text/event-stream");

async fn post(addr: SocketAddr, session: Option<&str>, body: &Value) -> Resp {
    let mut h = vec![JSON, ACCEPT];
    if let Some(s) = session {
        h.push(("mcp-session-id", s));
    }
    raw(addr, "POST", "/mcp", &h, body.to_string().as_bytes()).await
}

fn init_body(version: &str, caps: Value) -> Value {
    json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":version,"capabilities":caps,"clientInfo":{"name":"edge-test","version":"1"}}})
}

async fn session(addr: SocketAddr, version: &str, caps: Value) -> String {
    let r = post(addr, None, &init_body(version, caps)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["result"]["protocolVersion"], json!(version));
    let sid = r.header("mcp-session-id").expect("session id").to_owned();
    let r = post(
        addr,
        Some(&sid),
        &json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
    )
    .await;
    assert_eq!(r.status, 202);
    sid
}

fn call(id: i64, name: &str, args: Value) -> Value {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":name,"arguments":args}})
}

#[tokio::test]
async fn handshake_list_call_read_prompt() {
    let (addr, _) = start().await;
    let sid = session(addr, "2025-11-25", json!({})).await;
    let tools = post(
        addr,
        Some(&sid),
        &json!({"jsonrpc":"2.0","id":2,"method":"tools/list"}),
    )
    .await
    .json();
    let names: Vec<&str> = tools["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"test_simple_text") && names.contains(&"echo"),
        "{names:?}"
    );
    let echo = post(addr, Some(&sid), &call(3, "echo", json!({"text":"héllo"})))
        .await
        .json();
    assert_eq!(
        echo["result"]["structuredContent"],
        json!({"text":"héllo","length":5})
    );
    let res = post(addr, Some(&sid), &json!({"jsonrpc":"2.0","id":4,"method":"resources/read","params":{"uri":"test://template/7/data"}})).await.json();
    assert!(
        res["result"]["contents"][0]["text"]
            .as_str()
            .unwrap()
            .contains("Data for ID: 7")
    );
    let p = post(addr, Some(&sid), &json!({"jsonrpc":"2.0","id":5,"method":"prompts/get","params":{"name":"test_prompt_with_arguments","arguments":{"arg1":"a","arg2":"b"}}})).await.json();
    assert_eq!(
        p["result"]["messages"][0]["content"]["text"],
        json!("Prompt with arguments: arg1='a', arg2='b'")
    );
    let c = post(addr, Some(&sid), &json!({"jsonrpc":"2.0","id":6,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"test_prompt_with_arguments"},"argument":{"name":"arg1","value":"pa"}}})).await.json();
    assert_eq!(
        c["result"]["completion"]["values"],
        json!(["paris", "park"])
    );
    let d = raw(addr, "DELETE", "/mcp", &[("mcp-session-id", &sid)], b"").await;
    assert_eq!(d.status, 204);
    let gone = post(
        addr,
        Some(&sid),
        &json!({"jsonrpc":"2.0","id":7,"method":"ping"}),
    )
    .await;
    assert_eq!(gone.status, 404);
}

#[tokio::test]
async fn every_handshake_revision_negotiates() {
    let (addr, _) = start().await;
    for v in ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"] {
        session(addr, v, json!({})).await;
    }
    let r = post(addr, None, &init_body("2031-01-01", json!({})))
        .await
        .json();
    assert_eq!(r["result"]["protocolVersion"], json!("2025-11-25"));
}

#[tokio::test]
async fn progress_and_logging_stream_as_sse_before_the_result() {
    let (addr, _) = start().await;
    let sid = session(addr, "2025-11-25", json!({})).await;
    let mut body = call(2, "test_tool_with_progress", json!({}));
    body["params"]["_meta"] = json!({"progressToken": "tok-1"});
    let r = post(addr, Some(&sid), &body).await;
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("text/event-stream")
    );
    assert!(
        r.body.starts_with("id: "),
        "priming event first: {}",
        r.body
    );
    assert!(r.body.contains("retry: "));
    let msgs = r.messages();
    let progress: Vec<f64> = msgs
        .iter()
        .filter(|m| m["method"] == "notifications/progress")
        .map(|m| m["params"]["progress"].as_f64().unwrap())
        .collect();
    assert_eq!(progress, vec![0.0, 50.0, 100.0]);
    assert_eq!(
        msgs.last().unwrap()["result"]["content"][0]["text"],
        json!("tok-1")
    );

    // logging/setLevel filters what the logging tool may send.
    let r = post(
        addr,
        Some(&sid),
        &json!({"jsonrpc":"2.0","id":3,"method":"logging/setLevel","params":{"level":"error"}}),
    )
    .await;
    assert_eq!(r.json()["result"], json!({}));
    let r = post(
        addr,
        Some(&sid),
        &call(4, "test_tool_with_logging", json!({})),
    )
    .await;
    assert!(
        r.messages()
            .iter()
            .all(|m| m["method"] != "notifications/message"),
        "info logs filtered at level error"
    );
    let r = post(
        addr,
        Some(&sid),
        &json!({"jsonrpc":"2.0","id":5,"method":"logging/setLevel","params":{"level":"debug"}}),
    )
    .await;
    assert_eq!(r.status, 200);
    let r = post(
        addr,
        Some(&sid),
        &call(6, "test_tool_with_logging", json!({})),
    )
    .await;
    assert_eq!(
        r.messages()
            .iter()
            .filter(|m| m["method"] == "notifications/message")
            .count(),
        3
    );
}

/// A streaming connection that we read incrementally.
struct Stream {
    reader: BufReader<TcpStream>,
}

impl Stream {
    async fn open(
        addr: SocketAddr,
        method: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, Stream) {
        let mut s = TcpStream::connect(addr).await.unwrap();
        // `connection: close` (as in `raw`): the end of the response is then
        // the end of the connection, which is what `next_message` can see.
        // Under keep-alive, a finished SSE body leaves the socket open.
        let mut req = format!(
            "{method} /mcp HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        s.write_all(body).await.unwrap();
        let mut reader = BufReader::new(s);
        let mut status_line = String::new();
        reader.read_line(&mut status_line).await.unwrap();
        let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
        loop {
            let mut l = String::new();
            reader.read_line(&mut l).await.unwrap();
            if l == "\r\n" || l.is_empty() {
                break;
            }
        }
        (status, Stream { reader })
    }

    /// Next `data:` payload that is JSON, skipping chunk sizes, ids and keep-alives.
    async fn next_message(&mut self) -> Option<Value> {
        loop {
            let mut l = String::new();
            let n = tokio::time::timeout(Duration::from_secs(10), self.reader.read_line(&mut l))
                .await
                .expect("event within 10s")
                .unwrap();
            if n == 0 {
                return None;
            }
            if let Some(d) = l.trim_end().strip_prefix("data: ")
                && let Ok(v) = serde_json::from_str(d)
            {
                return Some(v);
            }
        }
    }

    async fn next_event_id(&mut self) -> String {
        loop {
            let mut l = String::new();
            self.reader.read_line(&mut l).await.unwrap();
            if let Some(id) = l.trim_end().strip_prefix("id: ") {
                return id.to_owned();
            }
        }
    }
}

#[tokio::test]
async fn sampling_round_trip_over_http() {
    let (addr, _) = start().await;
    let sid = session(addr, "2025-11-25", json!({"sampling":{},"elicitation":{}})).await;
    let body = call(2, "test_sampling", json!({"prompt":"2+2?"})).to_string();
    let (status, mut stream) = Stream::open(
        addr,
        "POST",
        &[JSON, ACCEPT, ("mcp-session-id", &sid)],
        body.as_bytes(),
    )
    .await;
    assert_eq!(status, 200);
    let req = stream.next_message().await.unwrap();
    assert_eq!(req["method"], json!("sampling/createMessage"));
    assert_eq!(
        req["params"]["messages"][0]["content"]["text"],
        json!("2+2?")
    );
    let answer = json!({"jsonrpc":"2.0","id":req["id"],"result":{"role":"assistant","content":{"type":"text","text":"4"},"model":"test"}});
    assert_eq!(post(addr, Some(&sid), &answer).await.status, 202);
    let result = stream.next_message().await.unwrap();
    assert_eq!(
        result["result"]["content"][0]["text"],
        json!("LLM response: 4")
    );

    // Without the capability the tool reports an error instead of asking.
    let plain = session(addr, "2025-11-25", json!({})).await;
    let r = post(
        addr,
        Some(&plain),
        &call(3, "test_sampling", json!({"prompt":"x"})),
    )
    .await
    .json();
    assert_eq!(r["result"]["isError"], json!(true));
}

#[tokio::test]
async fn closed_stream_resumes_with_last_event_id() {
    let (addr, _) = start().await;
    let sid = session(addr, "2025-11-25", json!({})).await;
    let r = post(addr, Some(&sid), &call(9, "test_reconnection", json!({}))).await;
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("text/event-stream")
    );
    assert!(
        r.messages().is_empty(),
        "the server closes the stream before the result: {}",
        r.body
    );
    let last = r
        .body
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .unwrap()
        .to_owned();
    let (status, mut stream) = Stream::open(
        addr,
        "GET",
        &[
            ("accept", "text/event-stream"),
            ("mcp-session-id", &sid),
            ("last-event-id", &last),
        ],
        b"",
    )
    .await;
    assert_eq!(status, 200);
    let result = stream.next_message().await.unwrap();
    assert_eq!(result["id"], json!(9));
    assert!(
        result["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("Reconnection test completed")
    );
    let bad = raw(
        addr,
        "GET",
        "/mcp",
        &[
            ("accept", "text/event-stream"),
            ("mcp-session-id", &sid),
            ("last-event-id", "nonsense"),
        ],
        b"",
    )
    .await;
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn subscriptions_deliver_updates_on_the_get_stream() {
    let (addr, _) = start().await;
    let sid = session(addr, "2025-11-25", json!({})).await;
    let (status, mut stream) = Stream::open(
        addr,
        "GET",
        &[("accept", "text/event-stream"), ("mcp-session-id", &sid)],
        b"",
    )
    .await;
    assert_eq!(status, 200);
    let _priming = stream.next_event_id().await;
    let r = post(addr, Some(&sid), &json!({"jsonrpc":"2.0","id":2,"method":"resources/subscribe","params":{"uri":"test://watched-resource"}})).await;
    assert_eq!(r.json()["result"], json!({}));
    let update = stream.next_message().await.unwrap();
    assert_eq!(update["method"], json!("notifications/resources/updated"));
    assert_eq!(update["params"]["uri"], json!("test://watched-resource"));
}

#[tokio::test]
async fn cancellation_stops_the_call_and_sends_no_result() {
    let (addr, server) = start().await;
    let sid = session(addr, "2025-11-25", json!({"sampling":{}})).await;
    let body = call(77, "test_sampling", json!({"prompt":"never answered"})).to_string();
    let (_, mut stream) = Stream::open(
        addr,
        "POST",
        &[JSON, ACCEPT, ("mcp-session-id", &sid)],
        body.as_bytes(),
    )
    .await;
    let req = stream.next_message().await.unwrap();
    assert_eq!(req["method"], json!("sampling/createMessage"));
    let cancel = json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":77,"reason":"user"}});
    assert_eq!(post(addr, Some(&sid), &cancel).await.status, 202);
    assert!(
        stream.next_message().await.is_none(),
        "stream ends without a response"
    );
    let s = server.sessions.get(&sid).unwrap();
    assert_eq!(s.in_flight_count(), 0);
}

#[tokio::test]
async fn bad_input_gets_precise_errors_and_leaves_no_state() {
    let (addr, server) = start().await;
    let sid = session(addr, "2025-11-25", json!({})).await;
    let before = server.sessions.len();
    let s = Some(sid.as_str());
    let post_raw = |h: Vec<(&'static str, &'static str)>, body: Vec<u8>| async move {
        raw(addr, "POST", "/mcp", &h, &body).await
    };

    let r = post_raw(vec![JSON, ACCEPT], b"{not json".to_vec()).await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_i64()),
        (400, Some(-32700))
    );
    let r = post_raw(vec![JSON, ACCEPT], b"\xff\xfe{}".to_vec()).await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_i64()),
        (400, Some(-32700))
    );
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("UTF-8")
    );
    let r = post_raw(vec![JSON, ACCEPT], br#"{"jsonrpc":"2.0","id":1}"#.to_vec()).await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_i64()),
        (400, Some(-32600))
    );
    let deep = format!("{}{}", "[".repeat(50_000), "]".repeat(50_000));
    let r = post_raw(vec![JSON, ACCEPT], deep.into_bytes()).await;
    assert_eq!(r.status, 413, "64 KiB limit in this test comes first");
    let deep = format!("{}1{}", "[".repeat(1_000), "]".repeat(1_000));
    let r = post_raw(vec![JSON, ACCEPT], deep.into_bytes()).await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_i64()),
        (400, Some(-32700))
    );
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("deeper than the limit of 64")
    );
    let big = vec![b' '; 70 * 1024];
    let r = post_raw(vec![JSON, ACCEPT], big).await;
    assert_eq!(r.status, 413);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("65536 bytes")
    );
    let r = post_raw(vec![("content-type", "text/plain"), ACCEPT], b"{}".to_vec()).await;
    assert_eq!(r.status, 415);
    let r = post_raw(vec![JSON, ("accept", "text/html")], b"{}".to_vec()).await;
    assert_eq!(r.status, 406);

    // Session rules.
    let r = post(
        addr,
        None,
        &json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}),
    )
    .await;
    assert_eq!(r.status, 400);
    let r = post(
        addr,
        Some("no-such-session"),
        &json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}),
    )
    .await;
    assert_eq!(r.status, 404);
    let r = raw(
        addr,
        "POST",
        "/mcp",
        &[
            JSON,
            ACCEPT,
            ("mcp-session-id", &sid),
            ("mcp-protocol-version", "1999-01-01"),
        ],
        b"{}",
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("1999-01-01"));
    let r = raw(
        addr,
        "POST",
        "/mcp",
        &[JSON, ACCEPT, ("origin", "http://evil.example.com")],
        init_body("2025-11-25", json!({})).to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.status, 403);
    let r = raw(
        addr,
        "POST",
        "/mcp",
        &[JSON, ACCEPT, ("host", "evil.example.com")],
        init_body("2025-11-25", json!({})).to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.status, 403);
    let r = raw(
        addr,
        "POST",
        "/mcp",
        &[JSON, ACCEPT, ("origin", "http://localhost:3000")],
        init_body("2025-11-25", json!({})).to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "loopback origins are fine");
    server.sessions.remove(r.header("mcp-session-id").unwrap());

    // JSON-RPC errors inside a session.
    let code = |r: Resp| r.json()["error"]["code"].as_i64();
    assert_eq!(
        code(post(addr, s, &json!({"jsonrpc":"2.0","id":1,"method":"no/such"})).await),
        Some(-32601)
    );
    assert_eq!(
        code(
            post(
                addr,
                s,
                &json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}})
            )
            .await
        ),
        Some(-32602)
    );
    assert_eq!(
        code(
            post(
                addr,
                s,
                &json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"nope"}})
            )
            .await
        ),
        Some(-32602)
    );
    assert_eq!(code(post(addr, s, &json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":[1]}})).await), Some(-32602));
    assert_eq!(
        code(
            post(
                addr,
                s,
                &json!({"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"cursor":"garbage"}})
            )
            .await
        ),
        Some(-32602)
    );
    assert_eq!(code(post(addr, s, &json!({"jsonrpc":"2.0","id":1,"method":"logging/setLevel","params":{"level":"loud"}})).await), Some(-32602));
    assert_eq!(code(post(addr, s, &json!({"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"test://nope"}})).await), Some(-32002));
    assert_eq!(code(post(addr, s, &json!({"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"test_prompt_with_arguments"}})).await), Some(-32602));
    assert_eq!(code(post(addr, s, &json!({"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/x"}}})).await), Some(-32602));
    assert_eq!(
        code(post(addr, s, &json!([{"jsonrpc":"2.0","id":1,"method":"ping"}])).await),
        Some(-32600),
        "no batches after 2025-03-26"
    );

    // A failed initialize leaves no session behind.
    let r = post(
        addr,
        None,
        &json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"capabilities":{}}}),
    )
    .await;
    assert_eq!(r.json()["error"]["code"], json!(-32602));
    assert!(r.header("mcp-session-id").is_none());
    assert_eq!(server.sessions.len(), before);
}

#[tokio::test]
async fn batches_work_on_2025_03_26() {
    let (addr, _) = start().await;
    let sid = session(addr, "2025-03-26", json!({})).await;
    let r = post(addr, Some(&sid), &json!([
        {"jsonrpc":"2.0","id":1,"method":"ping"},
        {"jsonrpc":"2.0","method":"notifications/initialized"},
        {"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"text":"b"}}},
        {"bad":true}
    ])).await;
    let arr = r.json();
    let arr = arr.as_array().unwrap();
    assert_eq!(arr.len(), 3);
    assert!(
        arr.iter()
            .any(|m| m["id"] == json!(2) && m["result"]["structuredContent"]["text"] == json!("b"))
    );
    assert!(arr.iter().any(|m| m["error"]["code"] == json!(-32600)));
}

fn envelope(caps: Value) -> Value {
    json!({"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":caps,"io.modelcontextprotocol/clientInfo":{"name":"t","version":"1"}})
}

/// A stateless request with the headers a 2026-07-28 client sends; `extra`
/// adds or (same name) replaces headers.
async fn stateless(
    addr: SocketAddr,
    id: i64,
    method: &str,
    mut params: Value,
    caps: Value,
    extra: &[(&str, &str)],
) -> Resp {
    params["_meta"] = envelope(caps);
    let name = params["name"]
        .as_str()
        .or(params["uri"].as_str())
        .or(params["taskId"].as_str())
        .map(str::to_owned);
    let mut h: Vec<(&str, &str)> = vec![
        JSON,
        ACCEPT,
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", method),
    ];
    if let Some(n) = &name {
        h.push(("mcp-name", n));
    }
    for (k, v) in extra {
        h.retain(|(hk, _)| !hk.eq_ignore_ascii_case(k));
        if !v.is_empty() {
            h.push((k, v));
        }
    }
    let body = json!({"jsonrpc":"2.0","id":id,"method":method,"params":params});
    raw(addr, "POST", "/mcp", &h, body.to_string().as_bytes()).await
}

#[tokio::test]
async fn stateless_discover_and_call() {
    let (addr, server) = start().await;
    let before = server.sessions.len();
    let r = stateless(addr, 1, "server/discover", json!({}), json!({}), &[]).await;
    let v = r.json();
    assert!(
        v["result"]["supportedVersions"]
            .as_array()
            .unwrap()
            .contains(&json!("2026-07-28"))
    );
    assert_eq!(v["result"]["resultType"], json!("complete"));
    assert_eq!(v["result"]["cacheScope"], json!("public"));
    assert!(v["result"]["capabilities"]["extensions"]["io.modelcontextprotocol/tasks"].is_object());
    assert_eq!(
        v["result"]["_meta"]["io.modelcontextprotocol/serverInfo"]["name"],
        json!("cellgate")
    );
    let r = stateless(
        addr,
        2,
        "tools/call",
        json!({"name":"echo","arguments":{"text":"stateless"}}),
        json!({}),
        &[],
    )
    .await;
    let v = r.json();
    assert_eq!(v["result"]["structuredContent"]["text"], json!("stateless"));
    assert_eq!(v["result"]["resultType"], json!("complete"));
    assert!(r.header("mcp-session-id").is_none());
    for (method, params, scope, ttl) in [
        ("tools/list", json!({}), "private", 60_000),
        ("prompts/list", json!({}), "private", 60_000),
        ("resources/list", json!({}), "private", 60_000),
        ("resources/templates/list", json!({}), "private", 60_000),
        (
            "resources/read",
            json!({"uri":"test://static-text"}),
            "private",
            0,
        ),
    ] {
        let v = stateless(addr, 3, method, params, json!({}), &[])
            .await
            .json();
        assert_eq!(v["result"]["cacheScope"], json!(scope), "{method}");
        assert_eq!(v["result"]["ttlMs"], json!(ttl), "{method}");
    }
    // Without a requested log level, no log message reaches the client.
    let r = stateless(
        addr,
        4,
        "tools/call",
        json!({"name":"test_logging_tool","arguments":{}}),
        json!({}),
        &[],
    )
    .await;
    assert!(
        r.messages()
            .iter()
            .all(|m| m["method"] != "notifications/message")
    );
    assert_eq!(
        server.sessions.len(),
        before,
        "stateless requests leave no session"
    );
}

#[tokio::test]
async fn stateless_bad_envelopes_and_headers_get_precise_errors() {
    let (addr, _) = start().await;
    let post_raw = |id: i64, params: Value, headers: Vec<(&'static str, &'static str)>| async move {
        let body = json!({"jsonrpc":"2.0","id":id,"method":"server/discover","params":params});
        raw(addr, "POST", "/mcp", &headers, body.to_string().as_bytes()).await
    };
    let base = vec![
        JSON,
        ACCEPT,
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "server/discover"),
    ];
    for (id, params) in [
        (101, json!({})),
        (
            102,
            json!({"_meta":{"io.modelcontextprotocol/clientCapabilities":{}}}),
        ),
        (
            104,
            json!({"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}),
        ),
    ] {
        let r = post_raw(id, params, base.clone()).await;
        assert_eq!(r.status, 400, "{}", r.body);
        assert_eq!(r.json()["error"]["code"], json!(-32602));
        assert_eq!(
            r.json()["id"],
            json!(id),
            "the error answers the request's id"
        );
    }
    // Unsupported revision, header and body agreeing: -32022 naming both lists.
    let mut meta = envelope(json!({}));
    meta["io.modelcontextprotocol/protocolVersion"] = json!("v999");
    let r = post_raw(
        301,
        json!({"_meta": meta}),
        vec![
            JSON,
            ACCEPT,
            ("mcp-protocol-version", "v999"),
            ("mcp-method", "server/discover"),
        ],
    )
    .await;
    assert_eq!(r.status, 400);
    let v = r.json();
    assert_eq!(
        (v["id"].clone(), v["error"]["code"].clone()),
        (json!(301), json!(-32022))
    );
    assert_eq!(v["error"]["data"]["requested"], json!("v999"));
    // Header and body disagreeing: -32020.
    let r = post_raw(302, json!({"_meta": meta}), base.clone()).await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (400, json!(-32020))
    );
    // Removed and unknown methods: 404 with -32601.
    for m in [
        "initialize",
        "ping",
        "logging/setLevel",
        "resources/subscribe",
        "unknown/method",
    ] {
        let r = stateless(addr, 5, m, json!({}), json!({}), &[]).await;
        assert_eq!(
            (r.status, r.json()["error"]["code"].clone()),
            (404, json!(-32601)),
            "{m}"
        );
    }
    // Routing headers must repeat the body.
    let call = json!({"name":"echo","arguments":{"text":"x"}});
    for extra in [
        vec![("mcp-method", "prompts/list")],
        vec![("mcp-method", "")],
        vec![("mcp-method", "TOOLS/CALL")],
        vec![("mcp-name", "other")],
        vec![("mcp-name", "")],
    ] {
        let r = stateless(addr, 6, "tools/call", call.clone(), json!({}), &extra).await;
        assert_eq!(
            (r.status, r.json()["error"]["code"].clone()),
            (400, json!(-32020)),
            "{extra:?}"
        );
    }
    let r = stateless(
        addr,
        7,
        "tools/call",
        call.clone(),
        json!({}),
        &[("MCP-NAME", "  echo  ")],
    )
    .await;
    assert_eq!(
        r.status, 200,
        "header names fold, values are trimmed: {}",
        r.body
    );
    // Mcp-Param-* for arguments marked x-mcp-header.
    let routed = json!({"name":"test_custom_header","arguments":{"region":"Hello"}});
    for (value, ok) in [
        ("Hello", true),
        ("=?base64?SGVsbG8=?=", true),
        ("=?base64?SGVsbG8?=", false),
        ("=?base64?SGVs!!!bG8=?=", false),
        ("Bye", false),
        ("", false),
    ] {
        let r = stateless(
            addr,
            8,
            "tools/call",
            routed.clone(),
            json!({}),
            &[("mcp-param-region", value)],
        )
        .await;
        assert_eq!(r.status == 200, ok, "{value:?}: {}", r.body);
        if !ok {
            assert_eq!(r.json()["error"]["code"], json!(-32020));
        }
    }
    // A capability the client did not declare: -32021 naming it, 400.
    let r = stateless(
        addr,
        9,
        "tools/call",
        json!({"name":"test_missing_capability","arguments":{}}),
        json!({}),
        &[],
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], json!(-32021));
    assert_eq!(
        r.json()["error"]["data"]["requiredCapabilities"],
        json!({"sampling":{}})
    );
}

#[tokio::test]
async fn input_required_rounds_carry_sealed_state() {
    let (addr, _) = start().await;
    let caps = json!({"elicitation":{},"sampling":{},"roots":{}});
    let tool = |extra: Value| {
        let mut p = json!({"name":"test_input_required_result_multi_round","arguments":{}});
        for (k, v) in extra.as_object().unwrap() {
            p[k] = v.clone();
        }
        p
    };
    let r1 = stateless(addr, 1, "tools/call", tool(json!({})), caps.clone(), &[])
        .await
        .json()["result"]
        .clone();
    assert_eq!(r1["resultType"], json!("input_required"));
    assert_eq!(
        r1["inputRequests"]["step1"]["method"],
        json!("elicitation/create")
    );
    let state1 = r1["requestState"].as_str().unwrap().to_owned();
    let r2 = stateless(addr, 2, "tools/call", tool(json!({"inputResponses":{"step1":{"action":"accept","content":{"name":"Ada"}}},"requestState":state1})), caps.clone(), &[]).await.json()["result"].clone();
    assert_eq!(r2["resultType"], json!("input_required"));
    assert!(r2["inputRequests"].get("step1").is_none());
    let state2 = r2["requestState"].as_str().unwrap().to_owned();
    // Round 3 sends only step2: step1's answer comes back from the state.
    let r3 = stateless(addr, 3, "tools/call", tool(json!({"inputResponses":{"step2":{"action":"accept","content":{"color":"green"}}},"requestState":state2.clone()})), caps.clone(), &[]).await.json();
    assert_eq!(r3["result"]["resultType"], json!("complete"));
    assert_eq!(r3["result"]["content"][0]["text"], json!("Ada likes green"));
    // A tampered state, a state of another tool, a bad answer, null responses: -32602.
    let tampered = format!("{state2}-TAMPERED");
    let mut other = json!({"name":"test_input_required_result_request_state","arguments":{},"requestState":state2});
    other["inputResponses"] = json!({"confirm":{"action":"accept","content":{"ok":true}}});
    for params in [
        tool(json!({"inputResponses":{"step2":{"action":"accept"}},"requestState":tampered})),
        other,
        json!({"name":"test_input_required_result_elicitation","arguments":{},"inputResponses":{"user_name":12345}}),
        json!({"name":"test_input_required_result_elicitation","arguments":{},"inputResponses":null}),
    ] {
        let r = stateless(addr, 4, "tools/call", params.clone(), caps.clone(), &[]).await;
        assert_eq!(
            (r.status, r.json()["error"]["code"].clone()),
            (400, json!(-32602)),
            "{params}"
        );
    }
    // Concurrent asks arrive together; undeclared capabilities are not asked.
    let r = stateless(
        addr,
        5,
        "tools/call",
        json!({"name":"test_input_required_result_multiple_inputs","arguments":{}}),
        caps.clone(),
        &[],
    )
    .await
    .json();
    let keys: Vec<&String> = r["result"]["inputRequests"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(keys, ["client_roots", "greeting", "user_name"]);
    let r = stateless(
        addr,
        6,
        "tools/call",
        json!({"name":"test_input_required_result_capabilities","arguments":{}}),
        json!({"sampling":{}}),
        &[],
    )
    .await
    .json();
    let methods: Vec<&str> = r["result"]["inputRequests"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v["method"].as_str().unwrap())
        .collect();
    assert_eq!(methods, ["sampling/createMessage"]);
    // prompts/get can ask too; list methods never do.
    let r = stateless(
        addr,
        7,
        "prompts/get",
        json!({"name":"test_input_required_result_prompt"}),
        caps.clone(),
        &[],
    )
    .await
    .json();
    assert_eq!(r["result"]["resultType"], json!("input_required"));
    let r = stateless(addr, 8, "tools/list", json!({}), caps, &[])
        .await
        .json();
    assert_eq!(r["result"]["resultType"], json!("complete"));
}

#[tokio::test]
async fn tasks_run_in_the_background_for_their_owner() {
    let (addr, server) = start().await;
    let tasks_caps = json!({"elicitation":{},"extensions":{"io.modelcontextprotocol/tasks":{}}});
    let call_tool = |name: &str, args: Value| json!({"name": name, "arguments": args});
    // Without the extension: sync, and the task methods are refused with -32021.
    let r = stateless(
        addr,
        1,
        "tools/call",
        call_tool("slow_compute", json!({"seconds":0.01})),
        json!({}),
        &[],
    )
    .await
    .json();
    assert_eq!(r["result"]["resultType"], json!("complete"));
    for m in ["tasks/get", "tasks/cancel"] {
        let r = stateless(addr, 2, m, json!({"taskId":"x"}), json!({}), &[]).await;
        assert_eq!(
            (r.status, r.json()["error"]["code"].clone()),
            (400, json!(-32021)),
            "{m}"
        );
    }
    let r = stateless(
        addr,
        3,
        "tools/call",
        call_tool("failing_job", json!({})),
        json!({}),
        &[],
    )
    .await
    .json();
    assert_eq!(r["error"]["code"], json!(-32021), "taskSupport required");
    assert!(
        r["error"]["data"]["requiredCapabilities"]["extensions"]["io.modelcontextprotocol/tasks"]
            .is_object()
    );
    // With it: a flat CreateTaskResult, readable at once, cancellable.
    let created = stateless(
        addr,
        4,
        "tools/call",
        call_tool("slow_compute", json!({"seconds":60})),
        tasks_caps.clone(),
        &[],
    )
    .await
    .json()["result"]
        .clone();
    assert_eq!(created["resultType"], json!("task"));
    assert!(created.get("requestState").is_none() && created.get("task").is_none());
    assert_eq!(created["status"], json!("working"));
    let id = created["taskId"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 32);
    let got = stateless(
        addr,
        5,
        "tasks/get",
        json!({"taskId":id}),
        tasks_caps.clone(),
        &[],
    )
    .await
    .json();
    assert_eq!(
        (
            got["result"]["taskId"].clone(),
            got["result"]["resultType"].clone()
        ),
        (json!(id), json!("complete"))
    );
    let r = stateless(
        addr,
        6,
        "tasks/get",
        json!({"taskId":id}),
        tasks_caps.clone(),
        &[("mcp-name", "wrong")],
    )
    .await;
    assert_eq!(r.json()["error"]["code"], json!(-32020));
    let ack = stateless(
        addr,
        7,
        "tasks/cancel",
        json!({"taskId":id}),
        tasks_caps.clone(),
        &[],
    )
    .await
    .json();
    assert_eq!(
        ack["result"],
        json!({"resultType":"complete","_meta":{"io.modelcontextprotocol/serverInfo":server.server_info()}})
    );
    let got = stateless(
        addr,
        8,
        "tasks/get",
        json!({"taskId":id}),
        tasks_caps.clone(),
        &[],
    )
    .await
    .json();
    assert_eq!(got["result"]["status"], json!("cancelled"));
    let r = stateless(
        addr,
        9,
        "tasks/get",
        json!({"taskId":"0123456789abcdef0123456789abcdef"}),
        tasks_caps.clone(),
        &[],
    )
    .await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (400, json!(-32602))
    );
    // A task that asks: input_required until tasks/update answers, then completed.
    let id = stateless(
        addr,
        10,
        "tools/call",
        call_tool("confirm_delete", json!({"filename":"a.txt"})),
        tasks_caps.clone(),
        &[],
    )
    .await
    .json()["result"]["taskId"]
        .as_str()
        .unwrap()
        .to_owned();
    let detail = loop {
        let d = stateless(
            addr,
            11,
            "tasks/get",
            json!({"taskId":id}),
            tasks_caps.clone(),
            &[],
        )
        .await
        .json()["result"]
            .clone();
        if d["status"] == "input_required" {
            break d;
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(
        detail["inputRequests"]["confirm"]["method"],
        json!("elicitation/create")
    );
    stateless(addr, 12, "tasks/update", json!({"taskId":id,"inputResponses":{"confirm":{"action":"accept","content":{"confirm":true}}}}), tasks_caps.clone(), &[]).await;
    let done = loop {
        let d = stateless(
            addr,
            13,
            "tasks/get",
            json!({"taskId":id}),
            tasks_caps.clone(),
            &[],
        )
        .await
        .json()["result"]
            .clone();
        if d["status"] == "completed" {
            break d;
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(done["result"]["content"][0]["text"], json!("Deleted a.txt"));
    assert!(done.get("requestState").is_none());
    // A protocol error fails the task with the error inlined.
    let id = stateless(
        addr,
        14,
        "tools/call",
        call_tool("protocol_error_job", json!({})),
        tasks_caps.clone(),
        &[],
    )
    .await
    .json()["result"]["taskId"]
        .as_str()
        .unwrap()
        .to_owned();
    let failed = loop {
        let d = stateless(
            addr,
            15,
            "tasks/get",
            json!({"taskId":id}),
            tasks_caps.clone(),
            &[],
        )
        .await
        .json()["result"]
            .clone();
        if d["status"] == "failed" {
            break d;
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(failed["error"]["code"], json!(-32603));
    assert!(failed.get("result").is_none());
    // Removed v1 methods.
    for m in ["tasks/result", "tasks/list"] {
        let r = stateless(addr, 16, m, json!({"taskId":id}), tasks_caps.clone(), &[]).await;
        assert_eq!(r.json()["error"]["code"], json!(-32601), "{m}");
    }
    assert!(!server.tasks.is_empty());
}

#[tokio::test]
async fn listen_stream_acknowledges_then_sends_what_was_asked() {
    let (addr, _) = start().await;
    let body = json!({"jsonrpc":"2.0","id":"sub-1","method":"subscriptions/listen","params":{"_meta":envelope(json!({})),"notifications":{"toolsListChanged":true}}});
    let (status, mut stream) = Stream::open(
        addr,
        "POST",
        &[
            JSON,
            ACCEPT,
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "subscriptions/listen"),
        ],
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 200);
    let ack = stream.next_message().await.unwrap();
    assert_eq!(
        ack["method"],
        json!("notifications/subscriptions/acknowledged")
    );
    assert_eq!(
        ack["params"]["notifications"],
        json!({"toolsListChanged": true})
    );
    assert_eq!(
        ack["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
        json!("sub-1")
    );
    // A prompt change is filtered out; the tool change arrives, tagged.
    for tool in ["test_trigger_prompt_change", "test_trigger_tool_change"] {
        let r = stateless(
            addr,
            2,
            "tools/call",
            json!({"name":tool,"arguments":{}}),
            json!({}),
            &[],
        )
        .await;
        assert_eq!(r.status, 200);
    }
    let n = stream.next_message().await.unwrap();
    assert_eq!(n["method"], json!("notifications/tools/list_changed"));
    assert_eq!(
        n["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
        json!("sub-1")
    );
    let r = stateless(
        addr,
        3,
        "subscriptions/listen",
        json!({"notifications": 5}),
        json!({}),
        &[],
    )
    .await;
    assert_eq!(r.json()["error"]["code"], json!(-32602));
}

#[tokio::test]
async fn answers_are_sse_when_the_client_prefers_it() {
    let (addr, _) = start().await;
    let sid = session(addr, "2025-11-25", json!({})).await;
    let body = json!({"jsonrpc":"2.0","id":9,"method":"tools/list"}).to_string();
    for (accept, sse) in [
        ("application/json, text/event-stream", false),
        ("text/event-stream, application/json", true),
        ("application/json;q=0.5, text/event-stream", true),
        ("text/event-stream;q=0.4, application/json", false),
        ("text/event-stream, */*", true),
    ] {
        let r = raw(
            addr,
            "POST",
            "/mcp",
            &[JSON, ("accept", accept), ("mcp-session-id", &sid)],
            body.as_bytes(),
        )
        .await;
        let ct = r.header("content-type").unwrap().to_owned();
        assert_eq!(ct.starts_with("text/event-stream"), sse, "{accept}");
        if sse {
            assert!(r.body.starts_with("id: "), "opens with the priming event");
        }
        assert!(r.messages().last().unwrap()["result"]["tools"].is_array());
    }
}

#[tokio::test]
async fn legacy_sse_transport() {
    let (addr, _) = start().await;
    let (status, mut stream) = {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET /sse HTTP/1.1\r\nhost: {addr}\r\naccept: text/event-stream\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut reader = BufReader::new(s);
        let mut l = String::new();
        reader.read_line(&mut l).await.unwrap();
        (l.split(' ').nth(1).unwrap().to_owned(), Stream { reader })
    };
    assert_eq!(status, "200");
    let endpoint = loop {
        let mut l = String::new();
        stream.reader.read_line(&mut l).await.unwrap();
        if let Some(p) = l.trim_end().strip_prefix("data: ") {
            break p.to_owned();
        }
    };
    assert!(endpoint.starts_with("/messages?sessionId="));
    let r = raw(
        addr,
        "POST",
        &endpoint,
        &[JSON],
        init_body("2024-11-05", json!({})).to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.status, 202);
    let init = stream.next_message().await.unwrap();
    assert_eq!(init["result"]["protocolVersion"], json!("2024-11-05"));
    raw(
        addr,
        "POST",
        &endpoint,
        &[JSON],
        call(2, "echo", json!({"text":"legacy"}))
            .to_string()
            .as_bytes(),
    )
    .await;
    let r = stream.next_message().await.unwrap();
    assert_eq!(r["result"]["content"][0]["text"], json!("legacy"));
    let r = raw(addr, "POST", "/messages?sessionId=nope", &[JSON], b"{}").await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn stdio_round_trip_with_sampling_and_bad_lines() {
    let server = server_with(EdgeConfig {
        max_body_bytes: 4096,
        ..EdgeConfig::default()
    });
    let (client, srv) = tokio::io::duplex(1 << 16);
    let (srv_r, srv_w) = tokio::io::split(srv);
    let task = tokio::spawn(cellgate_mcp::stdio::serve(
        server.clone(),
        BufReader::new(srv_r),
        srv_w,
    ));
    let (cr, mut cw) = tokio::io::split(client);
    let mut lines = BufReader::new(cr).lines();
    let mut send = async |v: String| {
        cw.write_all(v.as_bytes()).await.unwrap();
        cw.write_all(b"\n").await.unwrap();
    };
    send(json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}).to_string()).await;
    let r: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(r["error"]["code"], json!(-32600), "not initialized yet");
    send(init_body("2025-06-18", json!({"sampling":{}})).to_string()).await;
    let r: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(r["result"]["protocolVersion"], json!("2025-06-18"));
    send(json!({"jsonrpc":"2.0","method":"notifications/initialized"}).to_string()).await;
    send("{oops".into()).await;
    let r: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(r["error"]["code"], json!(-32700));
    send("x".repeat(5000)).await;
    let r: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("exceeds the limit of 4096")
    );
    send(call(2, "test_sampling", json!({"prompt":"hi"})).to_string()).await;
    let req: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(req["method"], json!("sampling/createMessage"));
    send(json!({"jsonrpc":"2.0","id":req["id"],"result":{"role":"assistant","content":{"type":"text","text":"yo"},"model":"m"}}).to_string()).await;
    let r: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(r["result"]["content"][0]["text"], json!("LLM response: yo"));
    // End the server's input. Dropping `cw` alone would not: the duplex stays
    // open while its read half (`lines`) lives.
    cw.shutdown().await.unwrap();
    task.await.unwrap().unwrap();
    assert!(server.sessions.is_empty());
}

#[tokio::test]
async fn stdio_end_of_input_fails_calls_waiting_for_the_client() {
    let server = server_with(EdgeConfig::default());
    let (client, srv) = tokio::io::duplex(1 << 16);
    let (srv_r, srv_w) = tokio::io::split(srv);
    let task = tokio::spawn(cellgate_mcp::stdio::serve(
        server,
        BufReader::new(srv_r),
        srv_w,
    ));
    let (cr, mut cw) = tokio::io::split(client);
    let mut lines = BufReader::new(cr).lines();
    for line in [
        init_body("2025-11-25", json!({"sampling":{}})),
        json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
        call(2, "test_sampling", json!({"prompt":"hi"})),
    ] {
        cw.write_all(format!("{line}\n").as_bytes()).await.unwrap();
    }
    let _init = lines.next_line().await.unwrap().unwrap();
    let req: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(req["method"], json!("sampling/createMessage"));
    // The client goes away without answering: the call fails with that
    // reason (not with the request timeout) and the server exits.
    cw.shutdown().await.unwrap();
    let r: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    let text = r["result"]["content"][0]["text"].as_str().unwrap();
    assert!(
        text.contains("the session closed before the client answered"),
        "{text}"
    );
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_cancelled_call_leaves_no_pending_client_request() {
    let (addr, server) = start().await;
    let sid = session(addr, "2025-11-25", json!({"sampling":{}})).await;
    let body = call(7, "test_sampling", json!({"prompt":"hi"})).to_string();
    let (_, mut stream) = Stream::open(
        addr,
        "POST",
        &[JSON, ACCEPT, ("mcp-session-id", &sid)],
        body.as_bytes(),
    )
    .await;
    let req = stream.next_message().await.unwrap();
    assert_eq!(req["method"], json!("sampling/createMessage"));
    let s = server.sessions.get(&sid).unwrap();
    assert_eq!(s.pending_count(), 1);
    post(
        addr,
        Some(&sid),
        &json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":7}}),
    )
    .await;
    while s.in_flight_count() > 0 {
        tokio::task::yield_now().await;
    }
    assert_eq!(s.pending_count(), 0, "the dropped wait removed its entry");
}

/// An edge behind a stand-in authentication layer that takes the caller
/// from `x-test-caller: principal@tenant`.
async fn start_with_callers() -> (SocketAddr, Arc<McpServer>) {
    use axum::extract::Request;
    use axum::middleware::{self, Next};
    use cellgate_kernel::{AuthMethod, Identity, Principal, PrincipalKind};

    async fn identify(mut req: Request, next: Next) -> axum::response::Response {
        let caller = req
            .headers()
            .get("x-test-caller")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once('@'))
            .map(|(p, t)| (p.to_owned(), t.to_owned()));
        if let Some((principal, tenant)) = caller {
            req.extensions_mut().insert(Identity {
                tenant,
                principal: Principal {
                    id: Arc::from(principal.as_str()),
                    kind: PrincipalKind::User,
                    roles: Arc::from(vec!["admin".to_owned()]),
                    scopes: Arc::from(Vec::new()),
                    auth: AuthMethod::Jwt,
                    claims: None,
                },
            });
        }
        next.run(req).await
    }

    let server = server_with(EdgeConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = cellgate_mcp::http::router(server.clone()).layer(middleware::from_fn(identify));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, server)
}

#[tokio::test]
async fn sessions_belong_to_the_principal_that_opened_them() {
    let (addr, server) = start_with_callers().await;
    let as_caller = |who: &'static str, sid: Option<String>, body: Value| async move {
        let mut h = vec![JSON, ACCEPT, ("x-test-caller", who)];
        let sid_owned = sid.unwrap_or_default();
        if !sid_owned.is_empty() {
            h.push(("mcp-session-id", sid_owned.as_str()));
        }
        raw(addr, "POST", "/mcp", &h, body.to_string().as_bytes()).await
    };
    let r = as_caller("alice@acme", None, init_body("2025-11-25", json!({}))).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let sid = r.header("mcp-session-id").unwrap().to_owned();
    let list = json!({"jsonrpc":"2.0","id":2,"method":"tools/list"});
    assert_eq!(
        as_caller("alice@acme", Some(sid.clone()), list.clone())
            .await
            .status,
        200
    );
    // Another principal, or the same name in another tenant, cannot use it,
    // and cannot tell it from a session that does not exist.
    for intruder in ["bob@acme", "alice@beta"] {
        let r = as_caller(intruder, Some(sid.clone()), list.clone()).await;
        assert_eq!(r.status, 404, "{intruder}: {}", r.body);
        let r = raw(
            addr,
            "GET",
            "/mcp",
            &[
                ("accept", "text/event-stream"),
                ("mcp-session-id", &sid),
                ("x-test-caller", intruder),
            ],
            b"",
        )
        .await;
        assert_eq!(r.status, 404, "{intruder} GET: {}", r.body);
        let r = raw(
            addr,
            "DELETE",
            "/mcp",
            &[("mcp-session-id", &sid), ("x-test-caller", intruder)],
            b"",
        )
        .await;
        assert_eq!(r.status, 404, "{intruder} DELETE");
    }
    assert!(
        server.sessions.get(&sid).is_some(),
        "the intruders changed nothing"
    );
    let owner = server.sessions.get(&sid).unwrap().identity().unwrap();
    assert_eq!(
        (owner.tenant.as_str(), &*owner.principal.id),
        ("acme", "alice")
    );
    let r = raw(
        addr,
        "DELETE",
        "/mcp",
        &[("mcp-session-id", &sid), ("x-test-caller", "alice@acme")],
        b"",
    )
    .await;
    assert_eq!(r.status, 204);
}
