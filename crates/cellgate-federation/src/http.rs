//! The HTTP transports: Streamable HTTP (each message a `POST`, answered
//! with JSON or an SSE stream; `Mcp-Session-Id`, `MCP-Protocol-Version`;
//! a `GET` stream for the server's own messages) and the legacy HTTP+SSE
//! transport (one `GET` event stream, `POST`s to the endpoint it announces).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cellgate_config::HttpTransport;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Client, RequestBuilder, Response, StatusCode, Url};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::session::{CallError, CloseReason, Outgoing, Shared, lock};

struct Link {
    client: Client,
    url: String,
    headers: HeaderMap,
    session_id: Mutex<Option<String>>,
    shared: Arc<Shared>,
    max: usize,
    stop: CancellationToken,
}

fn build(
    cfg: &HttpTransport,
    max: usize,
    connect_timeout: Duration,
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> Result<Arc<Link>, String> {
    let client = Client::builder()
        .connect_timeout(connect_timeout)
        .build()
        .map_err(|e| format!("cannot set up an HTTP client: {e}"))?;
    let mut headers = HeaderMap::new();
    for (k, v) in &cfg.headers {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| format!("{k:?} is not an HTTP header name"))?;
        let value = HeaderValue::from_str(v)
            .map_err(|_| format!("the value of header {k:?} is not valid in HTTP"))?;
        headers.insert(name, value);
    }
    Url::parse(&cfg.url).map_err(|e| format!("{:?} is not a URL: {e}", cfg.url))?;
    Ok(Arc::new(Link {
        client,
        url: cfg.url.clone(),
        headers,
        session_id: Mutex::new(None),
        shared,
        max,
        stop,
    }))
}

/// Starts a Streamable HTTP connection (nothing is sent until the first
/// message, `initialize`).
pub(crate) fn start(
    cfg: &HttpTransport,
    max: usize,
    connect_timeout: Duration,
    shared: Arc<Shared>,
    out_rx: mpsc::UnboundedReceiver<Outgoing>,
    stop: CancellationToken,
) -> Result<(), String> {
    let link = build(cfg, max, connect_timeout, shared, stop)?;
    tokio::spawn(link.writer(out_rx));
    Ok(())
}

impl Link {
    fn with_headers(&self, req: RequestBuilder) -> RequestBuilder {
        let mut req = req.headers(self.headers.clone());
        if let Some(sid) = lock(&self.session_id).as_deref() {
            req = req.header("mcp-session-id", sid);
        }
        if let Some(v) = lock(&self.shared.protocol_version).as_deref() {
            req = req.header("mcp-protocol-version", v);
        }
        req
    }

    async fn writer(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Outgoing>) {
        loop {
            let out = tokio::select! {
                o = rx.recv() => match o { Some(o) => o, None => break },
                _ = self.stop.cancelled() => break,
            };
            if out.request_id.is_some() {
                // Requests may stream for long; they run side by side.
                tokio::spawn(self.clone().post(out));
            } else {
                // Notifications and responses go in order (initialized first).
                let initialized = out.msg.get("method").and_then(Value::as_str)
                    == Some("notifications/initialized");
                self.clone().post(out).await;
                if initialized {
                    tokio::spawn(self.clone().listen());
                }
            }
        }
        let sid = lock(&self.session_id).clone();
        if let Some(sid) = sid {
            let _ = self
                .client
                .delete(&self.url)
                .headers(self.headers.clone())
                .header("mcp-session-id", sid)
                .timeout(Duration::from_secs(2))
                .send()
                .await;
        }
    }

    fn fail(&self, id: Option<i64>, what: String) {
        match id {
            Some(id) => self.shared.fail_request(id, CallError::Transport(what)),
            None => tracing::warn!(upstream = %self.shared.upstream, "{what}"),
        }
    }

    async fn post(self: Arc<Self>, out: Outgoing) {
        let rid = out.request_id;
        let body = serde_json::to_vec(&out.msg).unwrap_or_default();
        let req = self
            .with_headers(self.client.post(&self.url))
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json, text/event-stream")
            .body(body);
        let resp = tokio::select! {
            r = req.send() => r,
            _ = self.stop.cancelled() => return,
        };
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                return self.fail(rid, format!("cannot reach {}: {}", self.url, chain(&e)));
            }
        };
        if let Some(sid) = resp
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
        {
            lock(&self.session_id).get_or_insert_with(|| sid.to_owned());
        }
        let status = resp.status();
        if status == StatusCode::NOT_FOUND && lock(&self.session_id).is_some() {
            self.shared.close(CloseReason::SessionExpired);
            return;
        }
        if status == StatusCode::ACCEPTED || status == StatusCode::NO_CONTENT {
            return;
        }
        if !status.is_success() {
            let text = read_limited(resp, 1024).await.unwrap_or_default();
            let text = String::from_utf8_lossy(&text);
            return self.fail(
                rid,
                format!("HTTP {status} from {}: {}", self.url, text.trim()),
            );
        }
        if is_event_stream(&resp) {
            if let Err(e) = self.read_events(resp, rid).await {
                self.fail(rid, e);
            }
            if let Some(id) = rid {
                self.shared.fail_request(
                    id,
                    CallError::Transport("the response stream ended before the answer".into()),
                );
            }
            return;
        }
        match read_limited(resp, self.max).await {
            Ok(bytes) if bytes.len() > self.max => self.fail(
                rid,
                format!(
                    "the answer is larger than the limit of {} bytes (max_message_bytes)",
                    self.max
                ),
            ),
            Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => {}
            Ok(bytes) => match serde_json::from_slice::<Value>(&bytes) {
                Ok(v) => {
                    self.shared.deliver(v, rid);
                    if let Some(id) = rid {
                        self.shared.fail_request(
                            id,
                            CallError::Transport(
                                "the answer was not the response to the request".into(),
                            ),
                        );
                    }
                }
                Err(e) => self.fail(rid, format!("the answer is not JSON: {e}")),
            },
            Err(e) => self.fail(rid, format!("cannot read the answer: {}", chain(&e))),
        }
    }

    /// Reads an SSE response, delivering each message. `via` is the request
    /// whose stream it is.
    async fn read_events(&self, mut resp: Response, via: Option<i64>) -> Result<(), String> {
        let mut parser = SseParser::new(self.max);
        loop {
            let chunk = tokio::select! {
                c = resp.chunk() => c,
                _ = self.stop.cancelled() => return Ok(()),
            };
            match chunk {
                Ok(Some(bytes)) => {
                    for ev in parser.feed(&bytes)? {
                        if (ev.event.is_empty() || ev.event == "message") && !ev.data.is_empty() {
                            match serde_json::from_str::<Value>(&ev.data) {
                                Ok(v) => self.shared.deliver(v, via),
                                Err(_) => self.shared.note_garbage(&ev.data),
                            }
                        }
                    }
                }
                Ok(None) => return Ok(()),
                Err(e) => return Err(format!("the event stream broke: {}", chain(&e))),
            }
        }
    }

    /// The standalone `GET` stream for the server's own messages (list
    /// changes, resource updates). A server that offers none (405) is fine.
    async fn listen(self: Arc<Self>) {
        let mut delay = Duration::from_secs(1);
        loop {
            if self.stop.is_cancelled() || self.shared.is_closed() {
                return;
            }
            let req = self
                .with_headers(self.client.get(&self.url))
                .header(ACCEPT, "text/event-stream");
            let resp = tokio::select! {
                r = req.send() => r,
                _ = self.stop.cancelled() => return,
            };
            match resp {
                Ok(r) if r.status().is_success() && is_event_stream(&r) => {
                    let _ = self.read_events(r, None).await;
                    delay = Duration::from_secs(1);
                }
                Ok(r) if r.status() == StatusCode::NOT_FOUND => {
                    self.shared.close(CloseReason::SessionExpired);
                    return;
                }
                Ok(_) => return,
                Err(_) => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.stop.cancelled() => return,
            }
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    }
}

/// Starts a legacy HTTP+SSE connection: opens the event stream, waits for
/// its `endpoint` event, then posts every message there.
pub(crate) fn start_legacy_sse(
    cfg: &HttpTransport,
    max: usize,
    connect_timeout: Duration,
    shared: Arc<Shared>,
    out_rx: mpsc::UnboundedReceiver<Outgoing>,
    stop: CancellationToken,
) -> Result<(), String> {
    let link = build(cfg, max, connect_timeout, shared, stop)?;
    tokio::spawn(legacy(link, out_rx, connect_timeout));
    Ok(())
}

async fn legacy(
    link: Arc<Link>,
    mut out_rx: mpsc::UnboundedReceiver<Outgoing>,
    connect_timeout: Duration,
) {
    let shared = link.shared.clone();
    let req = link
        .client
        .get(&link.url)
        .headers(link.headers.clone())
        .header(ACCEPT, "text/event-stream");
    let resp = tokio::select! {
        r = tokio::time::timeout(connect_timeout, req.send()) => r,
        _ = link.stop.cancelled() => return,
    };
    let mut resp = match resp {
        Ok(Ok(r)) if r.status().is_success() => r,
        Ok(Ok(r)) => {
            return shared.close(CloseReason::Transport(format!(
                "GET {} answered HTTP {}",
                link.url,
                r.status()
            )));
        }
        Ok(Err(e)) => {
            return shared.close(CloseReason::Transport(format!(
                "cannot open the event stream at {}: {}",
                link.url,
                chain(&e)
            )));
        }
        Err(_) => {
            return shared.close(CloseReason::Transport(format!(
                "{} did not answer within the connect timeout",
                link.url
            )));
        }
    };
    let base = Url::parse(&link.url).ok();
    let (endpoint_tx, endpoint_rx) = oneshot::channel::<Url>();
    let reader = link.clone();
    tokio::spawn(async move {
        let mut endpoint_tx = Some(endpoint_tx);
        let mut parser = SseParser::new(reader.max);
        let outcome = loop {
            let chunk = tokio::select! {
                c = resp.chunk() => c,
                _ = reader.stop.cancelled() => return,
            };
            let bytes = match chunk {
                Ok(Some(b)) => b,
                Ok(None) => break "the event stream ended".to_owned(),
                Err(e) => break format!("the event stream broke: {}", chain(&e)),
            };
            let events = match parser.feed(&bytes) {
                Ok(ev) => ev,
                Err(e) => break e,
            };
            for ev in events {
                if ev.event == "endpoint" {
                    let url = base.as_ref().and_then(|b| b.join(ev.data.trim()).ok());
                    if let (Some(url), Some(tx)) = (url, endpoint_tx.take()) {
                        let _ = tx.send(url);
                    }
                } else if (ev.event.is_empty() || ev.event == "message") && !ev.data.is_empty() {
                    match serde_json::from_str::<Value>(&ev.data) {
                        Ok(v) => reader.shared.deliver(v, None),
                        Err(_) => reader.shared.note_garbage(&ev.data),
                    }
                }
            }
        };
        reader.shared.close(CloseReason::Transport(outcome));
    });
    let endpoint = tokio::select! {
        e = tokio::time::timeout(connect_timeout, endpoint_rx) => match e {
            Ok(Ok(url)) => url,
            _ => {
                return shared.close(CloseReason::Transport(format!(
                    "the event stream at {} announced no endpoint",
                    link.url
                )));
            }
        },
        _ = link.stop.cancelled() => return,
        _ = shared.closed() => return,
    };
    loop {
        let out = tokio::select! {
            o = out_rx.recv() => match o { Some(o) => o, None => return },
            _ = link.stop.cancelled() => return,
        };
        let body = serde_json::to_vec(&out.msg).unwrap_or_default();
        let sent = link
            .client
            .post(endpoint.clone())
            .headers(link.headers.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => link.fail(
                out.request_id,
                format!("HTTP {} from {endpoint}", r.status()),
            ),
            Err(e) => link.fail(
                out.request_id,
                format!("cannot reach {endpoint}: {}", chain(&e)),
            ),
        }
    }
}

fn is_event_stream(resp: &Response) -> bool {
    resp.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        })
}

/// Reads a body, stopping once it passes `max` bytes (the result is then
/// longer than `max`, which the caller reports).
async fn read_limited(mut resp: Response, max: usize) -> Result<Vec<u8>, reqwest::Error> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        out.extend_from_slice(&chunk);
        if out.len() > max {
            break;
        }
    }
    Ok(out)
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SseEvent {
    pub event: String,
    pub data: String,
    pub id: Option<String>,
}

/// An incremental `text/event-stream` parser with a size limit.
pub(crate) struct SseParser {
    buf: Vec<u8>,
    event: String,
    data: String,
    has_data: bool,
    id: Option<String>,
    max: usize,
}

impl SseParser {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            event: String::new(),
            data: String::new(),
            has_data: false,
            id: None,
            max,
        }
    }

    pub(crate) fn feed(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, String> {
        self.buf.extend_from_slice(chunk);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(pos) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let end = start + pos;
            let line = self.buf[start..end]
                .strip_suffix(b"\r")
                .unwrap_or(&self.buf[start..end]);
            let line = String::from_utf8_lossy(line).into_owned();
            start = end + 1;
            if let Some(ev) = self.line(&line) {
                events.push(ev);
            }
            if self.data.len() > self.max {
                return Err(format!(
                    "an event is larger than the limit of {} bytes (max_message_bytes)",
                    self.max
                ));
            }
        }
        self.buf.drain(..start);
        if self.buf.len() > self.max {
            return Err(format!(
                "a line of the event stream is longer than the limit of {} bytes (max_message_bytes)",
                self.max
            ));
        }
        Ok(events)
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            if !self.has_data {
                self.event.clear();
                return None;
            }
            self.has_data = false;
            return Some(SseEvent {
                event: std::mem::take(&mut self.event),
                data: std::mem::take(&mut self.data),
                id: self.id.clone(),
            });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = value.to_owned(),
            "id" => self.id = Some(value.to_owned()),
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_across_chunks() {
        let mut p = SseParser::new(1024);
        let mut all = Vec::new();
        for chunk in [
            &b"id: 1\nretry: 100\ndata:\n\n: comment\nevent: endpoint\nda"[..],
            b"ta: /messages?s=1\r\n\r\ndata: {\"a\":\ndata: 1}\n",
            b"\n",
        ] {
            all.extend(p.feed(chunk).unwrap());
        }
        assert_eq!(all.len(), 3, "{all:?}");
        assert_eq!(all[0].data, "");
        assert_eq!(all[0].id.as_deref(), Some("1"));
        assert_eq!(all[1].event, "endpoint");
        assert_eq!(all[1].data, "/messages?s=1");
        assert_eq!(all[2].event, "");
        assert_eq!(all[2].data, "{\"a\":\n1}");
    }

    #[test]
    fn sse_limit() {
        let mut p = SseParser::new(16);
        assert!(p.feed(b"data: 0123456789abcdef0\n").is_err());
        let mut p = SseParser::new(16);
        assert!(p.feed(&[b'x'; 40]).is_err());
    }
}
