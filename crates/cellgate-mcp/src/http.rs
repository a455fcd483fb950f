//! Streamable HTTP (`/mcp`) and the legacy HTTP+SSE transport (`/sse` +
//! `/messages`), as an axum router over one [`McpServer`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cellgate_kernel::{Identity, McpError};
use futures_util::stream::{self, Stream};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::DropGuard;

use crate::jsonrpc::{self, Message, Payload};
use crate::protocol;
use crate::server::McpServer;
use crate::session::{Frame, Outbound, Session, TransportKind, parse_event_id};

pub const SESSION_HEADER: &str = "mcp-session-id";
pub const VERSION_HEADER: &str = "mcp-protocol-version";
const LAST_EVENT_ID: &str = "last-event-id";
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The MCP routes: `/mcp` (POST, GET, DELETE), `/sse`, `/messages`.
pub fn router(server: Arc<McpServer>) -> Router {
    Router::new()
        .route("/mcp", post(post_mcp).get(get_mcp).delete(delete_mcp))
        .route("/sse", get(legacy_sse))
        .route("/messages", post(legacy_post))
        .with_state(server)
}

// ---------- responses ----------

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn rpc_error(status: StatusCode, id: Value, error: McpError) -> Response {
    json_response(status, &jsonrpc::response(&id, Err(error)))
}

pub(crate) fn json_status(status: StatusCode, body: &Value) -> Response {
    json_response(status, body)
}

/// A request refused before it reaches the server; boxed because a
/// `Response` is large and these are the rare path.
type Refusal = Box<Response>;

fn plain_error(status: StatusCode, code: i64, message: String) -> Refusal {
    Box::new(rpc_error(status, Value::Null, McpError::new(code, message)))
}

// ---------- request checks ----------

fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, p)| {
            if p.chars().all(|c| c.is_ascii_digit()) {
                h
            } else {
                host
            }
        })
    };
    matches!(
        name.to_ascii_lowercase().as_str(),
        "localhost" | "127.0.0.1" | "::1"
    )
}

fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split(']')
            .next()
            .map(|h| &host[..h.len() + 1])
            .unwrap_or(host);
    }
    host.rsplit_once(':').map_or(host, |(h, p)| {
        if p.chars().all(|c| c.is_ascii_digit()) {
            h
        } else {
            host
        }
    })
}

/// DNS-rebinding protection: the Host must be loopback or configured, and a
/// browser's Origin, when present, must be loopback or configured.
fn check_origin_and_host(server: &McpServer, headers: &HeaderMap) -> Result<(), Refusal> {
    let cfg = &server.config;
    if let Some(host) = headers.get(header::HOST) {
        let host = host.to_str().unwrap_or("");
        let allowed = is_loopback_host(host)
            || cfg.allowed_hosts.iter().any(|h| {
                h.eq_ignore_ascii_case(host) || h.eq_ignore_ascii_case(host_without_port(host))
            });
        if !allowed {
            return Err(plain_error(
                StatusCode::FORBIDDEN,
                -32000,
                format!(
                    "Host {host:?} is not allowed (DNS-rebinding protection); add it to server.allowed_hosts"
                ),
            ));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let host = origin.split_once("://").map(|(_, rest)| rest).unwrap_or("");
        let allowed = (!host.is_empty() && is_loopback_host(host.trim_end_matches('/')))
            || cfg.allowed_origins.iter().any(|o| {
                o.trim_end_matches('/')
                    .eq_ignore_ascii_case(origin.trim_end_matches('/'))
            });
        if !allowed {
            return Err(plain_error(
                StatusCode::FORBIDDEN,
                -32000,
                format!("Origin {origin:?} is not allowed; add it to server.allowed_origins"),
            ));
        }
    }
    Ok(())
}

fn check_content_type(headers: &HeaderMap) -> Result<(), Refusal> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = ct.split(';').next().unwrap_or("").trim();
    if media.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(plain_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            -32600,
            format!(
                "Content-Type must be application/json, got {:?}",
                if ct.is_empty() { "(none)" } else { ct }
            ),
        ))
    }
}

fn accepts(headers: &HeaderMap, media: &str) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .map(|p| p.split(';').next().unwrap_or("").trim())
                .any(|p| p.eq_ignore_ascii_case(media) || p == "*/*")
        })
}

fn header_version(headers: &HeaderMap) -> Option<String> {
    headers
        .get(VERSION_HEADER)
        .map(|v| v.to_str().unwrap_or("").trim().to_owned())
}

/// A session request's `MCP-Protocol-Version` must name a revision we speak.
fn check_version_header(version: Option<&str>, id: Value) -> Result<(), Refusal> {
    match version {
        Some(v) if !protocol::is_supported(v) => Err(Box::new(rpc_error(
            StatusCode::BAD_REQUEST,
            id,
            McpError::new(
                -32600,
                format!(
                    "MCP-Protocol-Version {v:?} is not supported; supported: {}",
                    protocol::ALL_VERSIONS.join(", ")
                ),
            ),
        ))),
        _ => Ok(()),
    }
}

/// One media range of an Accept header, with its weight and position.
fn accept_weight(headers: &HeaderMap, media: &str) -> Option<(f32, usize)> {
    let (kind, _) = media.split_once('/').unwrap_or((media, ""));
    let mut best: Option<(f32, usize, u8)> = None;
    let ranges = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','));
    for (pos, range) in ranges.enumerate() {
        let mut parts = range.split(';');
        let name = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        // A more specific range decides over a wildcard (RFC 9110 §12.5.1).
        let specificity = if name == media {
            3
        } else if name == format!("{kind}/*") {
            2
        } else if name == "*/*" {
            1
        } else {
            continue;
        };
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        if best.is_none_or(|(_, _, s)| specificity > s) {
            best = Some((q, pos, specificity));
        }
    }
    best.map(|(q, pos, _)| (q, pos))
}

/// Whether a POST's answer should be an SSE stream even when it is a single
/// message: the client prefers `text/event-stream` over `application/json`
/// (a higher q-value, or the same q-value and listed first).
fn prefers_sse(headers: &HeaderMap) -> bool {
    match (
        accept_weight(headers, "text/event-stream"),
        accept_weight(headers, "application/json"),
    ) {
        (Some((qs, ps)), Some((qj, pj))) => qs > qj || (qs == qj && qs > 0.0 && ps < pj),
        _ => false,
    }
}

async fn read_body(server: &McpServer, req: Request) -> Result<Bytes, Refusal> {
    let limit = server.config.max_body_bytes;
    let too_big = || {
        plain_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            -32600,
            format!("request body exceeds the limit of {limit} bytes (server.max_body_bytes)"),
        )
    };
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        && len > limit
    {
        return Err(too_big());
    }
    axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|_| too_big())
}

/// The session a request names, if it exists and belongs to the caller. A
/// session of someone else answers exactly like an unknown one.
fn session_from_headers(
    server: &McpServer,
    headers: &HeaderMap,
    identity: &Identity,
) -> Result<Arc<Session>, Refusal> {
    let Some(id) = headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok()) else {
        return Err(plain_error(
            StatusCode::BAD_REQUEST,
            -32000,
            "Mcp-Session-Id header is required: send `initialize` first to obtain a session".into(),
        ));
    };
    match server.sessions.get(id) {
        Some(s) if s.transport == TransportKind::StreamableHttp && s.admits(identity) => {
            // A refreshed credential may carry new roles or claims.
            s.set_identity(identity.clone());
            Ok(s)
        }
        _ => Err(plain_error(
            StatusCode::NOT_FOUND,
            -32001,
            "session not found: it expired or was deleted; start a new one with `initialize`"
                .into(),
        )),
    }
}

// ---------- SSE encoding ----------

fn sse_event(id: &str, data: &str) -> Bytes {
    let mut s = String::with_capacity(data.len() + id.len() + 24);
    s.push_str("id: ");
    s.push_str(id);
    s.push('\n');
    for line in data.split('\n') {
        s.push_str("data: ");
        s.push_str(line);
        s.push('\n');
    }
    s.push('\n');
    Bytes::from(s)
}

fn priming(id: &str, retry: Duration) -> Bytes {
    Bytes::from(format!(
        "id: {id}\nretry: {}\ndata: \n\n",
        retry.as_millis()
    ))
}

/// An SSE answer. `guard`, if any, lives as long as the body: dropping the
/// connection drops it.
fn sse_response(
    head: Vec<Bytes>,
    rx: mpsc::UnboundedReceiver<Frame>,
    keep_alive: bool,
    guard: Option<DropGuard>,
) -> Response {
    use futures_util::StreamExt;
    let body = stream::iter(head.into_iter().map(Ok::<_, Infallible>))
        .chain_frames(rx, keep_alive)
        .map(move |item| {
            let _alive = &guard;
            item
        });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

trait ChainFrames: Stream<Item = Result<Bytes, Infallible>> + Sized + Send + 'static {
    fn chain_frames(
        self,
        rx: mpsc::UnboundedReceiver<Frame>,
        keep_alive: bool,
    ) -> impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
        use futures_util::StreamExt;
        let frames = stream::unfold((rx, false), move |(mut rx, ended)| async move {
            if ended {
                return None;
            }
            let frame = if keep_alive {
                tokio::select! {
                    f = rx.recv() => f,
                    _ = tokio::time::sleep(KEEP_ALIVE) => return Some((Bytes::from_static(b": keep-alive\n\n"), (rx, false))),
                }
            } else {
                rx.recv().await
            };
            match frame {
                Some(Frame::Event { id, data, .. }) => Some((sse_event(&id, &data), (rx, false))),
                Some(Frame::End) | None => None,
            }
        });
        self.chain(frames.map(Ok))
    }
}

impl<S: Stream<Item = Result<Bytes, Infallible>> + Sized + Send + 'static> ChainFrames for S {}

// ---------- Streamable HTTP ----------

/// Request-related messages of one POST go onto that POST's event stream.
struct PostStream {
    session: Arc<Session>,
    stream: u64,
}

impl Outbound for PostStream {
    fn send(&self, msg: &Value, last: bool) {
        self.session.push_event(self.stream, msg, last);
    }
    fn close(&self) {
        self.session.close_live(self.stream);
    }
}

/// Batch items (2025-03-26) have no stream of their own: their related
/// messages go on the session's GET stream.
struct UnrelatedStream(Arc<Session>);

impl Outbound for UnrelatedStream {
    fn send(&self, msg: &Value, _last: bool) {
        self.0.send_unrelated(msg);
    }
}

/// The identity an authentication layer in front of the router put on the
/// request; without one, the anonymous caller of the default tenant.
fn identity_of(server: &McpServer, extensions: &axum::http::Extensions) -> Identity {
    extensions
        .get::<Identity>()
        .cloned()
        .unwrap_or_else(|| Identity::anonymous(&server.config.default_tenant))
}

/// The [`identity_of`] a handler that extracted `Option<Extension<Identity>>`.
fn caller(server: &McpServer, identity: Option<Extension<Identity>>) -> Identity {
    identity
        .map(|Extension(i)| i)
        .unwrap_or_else(|| Identity::anonymous(&server.config.default_tenant))
}

async fn post_mcp(State(server): State<Arc<McpServer>>, req: Request) -> Response {
    let headers = req.headers().clone();
    let identity = identity_of(&server, req.extensions());
    if let Err(r) = check_origin_and_host(&server, &headers) {
        return *r;
    }
    if let Err(r) = check_content_type(&headers) {
        return *r;
    }
    if !(accepts(&headers, "application/json") && accepts(&headers, "text/event-stream")) {
        return *plain_error(
            StatusCode::NOT_ACCEPTABLE,
            -32600,
            "Accept must list both application/json and text/event-stream".into(),
        );
    }
    let prefer_sse = prefers_sse(&headers);
    let header_version = header_version(&headers);
    if headers.contains_key(SESSION_HEADER)
        && let Err(r) = check_version_header(header_version.as_deref(), Value::Null)
    {
        // A session request is never stateless: refuse before reading the body.
        return *r;
    }
    let body = match read_body(&server, req).await {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let payload = match jsonrpc::parse(&body, server.config.max_json_depth) {
        Ok(p) => p,
        Err(r) => return rpc_error(StatusCode::BAD_REQUEST, r.id, r.error),
    };

    let msg = match payload {
        Payload::Single(m) => m,
        Payload::Batch(items) => {
            if let Err(r) = check_version_header(header_version.as_deref(), Value::Null) {
                return *r;
            }
            let session = match session_from_headers(&server, &headers, &identity) {
                Ok(s) => s,
                Err(r) => return *r,
            };
            return post_batch(server, session, items).await;
        }
    };

    // Stateless requests carry their revision in the body; they are checked
    // against the header there, with the request's id in the answer.
    if let Some(r) = crate::stateless::try_handle(
        &server,
        &headers,
        header_version.as_deref(),
        &msg,
        prefer_sse,
        &identity,
    )
    .await
    {
        return r;
    }
    let id = match &msg {
        Message::Request { id, .. } => id.clone(),
        _ => Value::Null,
    };
    if let Err(r) = check_version_header(header_version.as_deref(), id) {
        return *r;
    }

    if let Message::Request { id, method, params } = &msg
        && method == "initialize"
    {
        if headers.contains_key(SESSION_HEADER) {
            return rpc_error(
                StatusCode::BAD_REQUEST,
                id.clone(),
                McpError::invalid_request(
                    "initialize must not carry Mcp-Session-Id: it starts a new session",
                ),
            );
        }
        return initialize(
            server,
            id.clone(),
            params.clone().unwrap_or_default(),
            identity,
        )
        .await;
    }

    let session = match session_from_headers(&server, &headers, &identity) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    match msg {
        Message::Request { .. } => {
            run_request(server, session, msg, Mode::Session, prefer_sse).await
        }
        other => {
            let out: Arc<dyn Outbound> = Arc::new(UnrelatedStream(session.clone()));
            server.handle_message(&session, other, out).await;
            StatusCode::ACCEPTED.into_response()
        }
    }
}

async fn initialize(
    server: Arc<McpServer>,
    id: Value,
    params: serde_json::Map<String, Value>,
    identity: Identity,
) -> Response {
    let session = Session::new(TransportKind::StreamableHttp, server.config.sse_history);
    session.set_identity(identity);
    let out: Arc<dyn Outbound> = Arc::new(UnrelatedStream(session.clone()));
    let msg = Message::Request {
        id: id.clone(),
        method: "initialize".into(),
        params: Some(params),
    };
    let response = server
        .handle_message(&session, msg, out)
        .await
        .unwrap_or(Value::Null);
    if response.get("error").is_some() {
        // Nothing was registered: a failed handshake leaves no session behind.
        return json_response(StatusCode::OK, &response);
    }
    server.sessions.insert(session.clone());
    let mut r = json_response(StatusCode::OK, &response);
    if let Ok(v) = HeaderValue::from_str(&session.id) {
        r.headers_mut().insert(SESSION_HEADER, v);
    }
    r
}

/// Whether a POST belongs to a session (its stream stays resumable when the
/// client drops it) or stands alone (a dropped connection cancels the call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Session,
    Stateless,
}

/// A stateless request runs in a throwaway session that is never registered.
pub(crate) async fn stateless_request(
    server: Arc<McpServer>,
    session: Arc<Session>,
    msg: Message,
    prefer_sse: bool,
) -> Response {
    run_request(server, session, msg, Mode::Stateless, prefer_sse).await
}

/// Runs one request. Answers with plain JSON when the result comes before
/// any other message (the common case) and the client does not prefer SSE;
/// otherwise with an SSE stream that starts with a priming event, so the
/// client can resume it.
async fn run_request(
    server: Arc<McpServer>,
    session: Arc<Session>,
    msg: Message,
    mode: Mode,
    prefer_sse: bool,
) -> Response {
    let (stream, mut rx) = session.open_stream();
    let out: Arc<dyn Outbound> = Arc::new(PostStream {
        session: session.clone(),
        stream,
    });
    // For a stateless request the connection is the call's lifetime: if the
    // client goes away (this future or the SSE body is dropped), it ends.
    let guard = (mode == Mode::Stateless).then(|| session.closed.clone().drop_guard());
    {
        let server = server.clone();
        let session = session.clone();
        tokio::spawn(async move {
            match server.handle_message(&session, msg, out).await {
                Some(resp) => session.push_event(stream, &resp, true),
                None => session.finish_stream(stream),
            }
        });
    }
    let first = rx.recv().await;
    if !prefer_sse
        && let Some(Frame::Event {
            data, last: true, ..
        }) = &first
    {
        session.drop_stream(stream);
        if let Some(g) = guard {
            g.disarm();
        }
        let error = serde_json::from_str::<Value>(data)
            .ok()
            .and_then(|v| v.get("error").cloned());
        let code = error
            .as_ref()
            .and_then(|e| e.get("code"))
            .and_then(Value::as_i64);
        let status = match (mode, code) {
            (Mode::Stateless, Some(c)) => crate::stateless::http_status(c),
            // A rate limit is an HTTP matter too: proxies and clients know
            // 429 + Retry-After, whatever the revision.
            (Mode::Session, Some(cellgate_kernel::codes::RATE_LIMITED)) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            _ => StatusCode::OK,
        };
        let mut response = (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            data.to_string(),
        )
            .into_response();
        if status == StatusCode::TOO_MANY_REQUESTS
            && let Some(ms) = error
                .as_ref()
                .and_then(|e| e.pointer("/data/retryAfterMs"))
                .and_then(Value::as_u64)
        {
            // Retry-After counts whole seconds; round up so a client that
            // obeys it is not refused again.
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(ms.div_ceil(1000).max(1)),
            );
        }
        return response;
    }
    let mut head = vec![priming(
        &session.event_id(stream, 0),
        server.config.sse_retry,
    )];
    let rx = match first {
        Some(Frame::Event { id, data, .. }) => {
            head.push(sse_event(&id, &data));
            rx
        }
        Some(Frame::End) | None => mpsc::unbounded_channel().1,
    };
    sse_response(head, rx, false, guard)
}

async fn post_batch(
    server: Arc<McpServer>,
    session: Arc<Session>,
    items: Vec<Result<Message, Box<crate::jsonrpc::Rejection>>>,
) -> Response {
    let version = session.version();
    if !protocol::allows_batches(&version) {
        return rpc_error(
            StatusCode::BAD_REQUEST,
            Value::Null,
            McpError::invalid_request(format!(
                "JSON-RPC batches are not part of protocol {version}; send one message per request"
            )),
        );
    }
    let out: Arc<dyn Outbound> = Arc::new(UnrelatedStream(session.clone()));
    let futures = items.into_iter().map(|item| {
        let server = server.clone();
        let session = session.clone();
        let out = out.clone();
        async move {
            match item {
                Ok(Message::Request { method, .. }) if method == "initialize" => {
                    Some(jsonrpc::response(
                        &Value::Null,
                        Err(McpError::invalid_request(
                            "initialize cannot be part of a batch",
                        )),
                    ))
                }
                Ok(m) => server.handle_message(&session, m, out).await,
                Err(r) => Some(jsonrpc::response(&r.id, Err(r.error))),
            }
        }
    });
    let responses: Vec<Value> = futures_util::future::join_all(futures)
        .await
        .into_iter()
        .flatten()
        .collect();
    if responses.is_empty() {
        StatusCode::ACCEPTED.into_response()
    } else {
        json_response(StatusCode::OK, &Value::Array(responses))
    }
}

async fn get_mcp(
    State(server): State<Arc<McpServer>>,
    identity: Option<Extension<Identity>>,
    headers: HeaderMap,
) -> Response {
    let identity = caller(&server, identity);
    if let Err(r) = check_origin_and_host(&server, &headers) {
        return *r;
    }
    if !accepts(&headers, "text/event-stream") {
        return *plain_error(
            StatusCode::NOT_ACCEPTABLE,
            -32600,
            "Accept must include text/event-stream".into(),
        );
    }
    if let Err(r) = check_version_header(header_version(&headers).as_deref(), Value::Null) {
        return *r;
    }
    let session = match session_from_headers(&server, &headers, &identity) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let retry = server.config.sse_retry;
    if let Some(last) = headers.get(LAST_EVENT_ID) {
        let last = last.to_str().unwrap_or("");
        let Some((stream, seq)) = parse_event_id(last) else {
            return *plain_error(
                StatusCode::BAD_REQUEST,
                -32600,
                format!("Last-Event-ID {last:?} was not issued by this server"),
            );
        };
        let Some(rx) = session.attach(stream, seq) else {
            return *plain_error(
                StatusCode::NOT_FOUND,
                -32001,
                format!("stream of event {last:?} is no longer available"),
            );
        };
        return sse_response(
            vec![Bytes::from(format!("retry: {}\n\n", retry.as_millis()))],
            rx,
            stream == 0,
            None,
        );
    }
    let position = session.stream_position(0);
    let rx = session
        .attach(0, position)
        .unwrap_or_else(|| mpsc::unbounded_channel().1);
    sse_response(
        vec![priming(&session.event_id(0, position), retry)],
        rx,
        true,
        None,
    )
}

async fn delete_mcp(
    State(server): State<Arc<McpServer>>,
    identity: Option<Extension<Identity>>,
    headers: HeaderMap,
) -> Response {
    let identity = caller(&server, identity);
    if let Err(r) = check_origin_and_host(&server, &headers) {
        return *r;
    }
    let session = match session_from_headers(&server, &headers, &identity) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    server.sessions.remove(&session.id);
    StatusCode::NO_CONTENT.into_response()
}

// ---------- legacy HTTP+SSE (2024-11-05) ----------

/// The legacy transport has one SSE connection per session; every message
/// from the server goes there as `event: message`.
struct LegacyChannel(mpsc::UnboundedSender<Frame>);

impl Outbound for LegacyChannel {
    fn send(&self, msg: &Value, last: bool) {
        let _ = self.0.send(Frame::Event {
            id: Arc::from(""),
            data: Arc::from(msg.to_string()),
            last,
        });
    }
}

/// Removes the session when its SSE connection goes away.
struct LegacyGuard {
    server: Arc<McpServer>,
    id: Arc<str>,
}

impl Drop for LegacyGuard {
    fn drop(&mut self) {
        self.server.sessions.remove(&self.id);
    }
}

async fn legacy_sse(
    State(server): State<Arc<McpServer>>,
    identity: Option<Extension<Identity>>,
    headers: HeaderMap,
) -> Response {
    let identity = caller(&server, identity);
    if let Err(r) = check_origin_and_host(&server, &headers) {
        return *r;
    }
    let session = Session::new(TransportKind::LegacySse, server.config.sse_history);
    session.set_identity(identity);
    let (tx, rx) = mpsc::unbounded_channel();
    session.set_direct(Arc::new(LegacyChannel(tx)));
    server.sessions.insert(session.clone());
    let guard = LegacyGuard {
        server: server.clone(),
        id: session.id.clone(),
    };
    let endpoint = Bytes::from(format!(
        "event: endpoint\ndata: /messages?sessionId={}\n\n",
        session.id
    ));
    let frames = stream::unfold((rx, guard), |(mut rx, guard)| async move {
        let frame = tokio::select! {
            f = rx.recv() => f,
            _ = tokio::time::sleep(KEEP_ALIVE) => return Some((Bytes::from_static(b": keep-alive\n\n"), (rx, guard))),
        };
        match frame {
            Some(Frame::Event { data, .. }) => Some((
                Bytes::from(format!("event: message\ndata: {data}\n\n")),
                (rx, guard),
            )),
            _ => None,
        }
    });
    use futures_util::StreamExt;
    let body = stream::once(async move { endpoint })
        .chain(frames)
        .map(Ok::<_, Infallible>);
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[derive(serde::Deserialize)]
struct LegacyQuery {
    #[serde(rename = "sessionId")]
    session_id: Option<String>,
}

async fn legacy_post(
    State(server): State<Arc<McpServer>>,
    Query(q): Query<LegacyQuery>,
    req: Request,
) -> Response {
    let headers = req.headers().clone();
    let identity = identity_of(&server, req.extensions());
    if let Err(r) = check_origin_and_host(&server, &headers) {
        return *r;
    }
    if let Err(r) = check_content_type(&headers) {
        return *r;
    }
    let Some(id) = q.session_id else {
        return *plain_error(
            StatusCode::BAD_REQUEST,
            -32000,
            "query parameter sessionId is required".into(),
        );
    };
    let session = match server.sessions.get(&id) {
        Some(s) if s.transport == TransportKind::LegacySse && s.admits(&identity) => s,
        _ => {
            return *plain_error(
                StatusCode::NOT_FOUND,
                -32001,
                "session not found: open /sse again".into(),
            );
        }
    };
    let body = match read_body(&server, req).await {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let messages = match jsonrpc::parse(&body, server.config.max_json_depth) {
        Ok(Payload::Single(m)) => vec![Ok(m)],
        Ok(Payload::Batch(items)) => items,
        Err(r) => return rpc_error(StatusCode::BAD_REQUEST, r.id, r.error),
    };
    let direct: Arc<dyn Outbound> = match session.direct() {
        Some(d) => d,
        None => {
            return *plain_error(
                StatusCode::GONE,
                -32001,
                "the session's SSE stream is closed".into(),
            );
        }
    };
    for m in messages {
        let server = server.clone();
        let session = session.clone();
        let out = direct.clone();
        tokio::spawn(async move {
            let response = match m {
                Ok(m) => server.handle_message(&session, m, out.clone()).await,
                Err(r) => Some(jsonrpc::response(&r.id, Err(r.error))),
            };
            if let Some(r) = response {
                out.send(&r, false);
            }
        });
    }
    (StatusCode::ACCEPTED, "Accepted").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "localhost:8080",
            "127.0.0.1:1",
            "[::1]:80",
            "[::1]",
            "LOCALHOST",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "evil.example.com",
            "127.0.0.2",
            "localhost.evil.com:80",
            "[::2]:80",
            "",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
        assert_eq!(host_without_port("example.com:8080"), "example.com");
        assert_eq!(host_without_port("[::1]:8080"), "[::1]");
    }

    #[test]
    fn sse_event_splits_lines() {
        assert_eq!(
            &sse_event("1-2", "a\nb")[..],
            b"id: 1-2\ndata: a\ndata: b\n\n"
        );
        assert_eq!(
            &priming("3-0", Duration::from_millis(500))[..],
            b"id: 3-0\nretry: 500\ndata: \n\n"
        );
    }
}
