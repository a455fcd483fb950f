use std::time::Duration;
use cellgate_kernel::{Catalog, MeterLayer, Metrics, Pipeline, TraceLayer};
use cellgate_mcp::conformance::ConformanceProvider;
use cellgate_mcp::{EdgeConfig, McpServer};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn dbg_cancel() {
    let metrics = Metrics::new();
    let pipeline = Pipeline::builder(Catalog::new(vec![ConformanceProvider::new(Duration::from_millis(200))])).layer(TraceLayer).layer(MeterLayer::new(metrics.clone())).build();
    let server = McpServer::new(pipeline, EdgeConfig::default(), metrics);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = cellgate_mcp::http::router(server.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let post = |sid: Option<String>, body: String, close: bool| async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut req = format!("POST /mcp HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\ncontent-length: {}\r\n", body.len());
        if close { req.push_str("connection: close\r\n"); }
        if let Some(sid) = sid { req.push_str(&format!("mcp-session-id: {sid}\r\n")); }
        req.push_str("\r\n");
        req.push_str(&body);
        s.write_all(req.as_bytes()).await.unwrap();
        s
    };
    let mut s = post(None, json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{"sampling":{}},"clientInfo":{"name":"x","version":"1"}}}).to_string(), true).await;
    let mut buf = String::new(); s.read_to_string(&mut buf).await.unwrap();
    let sid = buf.lines().find_map(|l| l.strip_prefix("mcp-session-id: ")).unwrap().trim().to_owned();
    let mut s = post(Some(sid.clone()), json!({"jsonrpc":"2.0","method":"notifications/initialized"}).to_string(), true).await;
    let mut buf = String::new(); s.read_to_string(&mut buf).await.unwrap();
    let mut st = post(Some(sid.clone()), json!({"jsonrpc":"2.0","id":77,"method":"tools/call","params":{"name":"test_sampling","arguments":{"prompt":"p"}}}).to_string(), false).await;
    let mut b = vec![0u8; 4096];
    let n = st.read(&mut b).await.unwrap();
    eprintln!("FIRST: {:?}", String::from_utf8_lossy(&b[..n]));
    let mut s = post(Some(sid.clone()), json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":77}}).to_string(), true).await;
    let mut buf = String::new(); s.read_to_string(&mut buf).await.unwrap();
    eprintln!("CANCEL: {buf:?}");
    loop {
        match tokio::time::timeout(Duration::from_secs(3), st.read(&mut b)).await {
            Ok(Ok(0)) => { eprintln!("EOF"); break; }
            Ok(Ok(n)) => eprintln!("MORE: {:?}", String::from_utf8_lossy(&b[..n])),
            Ok(Err(e)) => { eprintln!("ERR {e}"); break; }
            Err(_) => { eprintln!("TIMEOUT"); break; }
        }
    }
    eprintln!("in flight {}", server.sessions.get(&sid).unwrap().in_flight_count());
}
