//! The REST API over real sockets, in front of a real pipeline: a catalog of
//! test providers behind a test layer that refuses anonymous callers
//! (-32001) and rate-limits one tool (-32005), with an authentication
//! stand-in that puts an `Identity` on requests carrying a test header.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cellgate_kernel::{
    AuthMethod, BoxFuture, Call, CallContext, Catalog, Identity, McpError, Pipeline, Principal,
    PrincipalKind, Prompt, Provider, Resource, ResourceTemplate, Stage, StageLayer, Tool, codes,
};
use cellgate_rest::RestOptions;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---------- the pipeline under the router ----------

/// What the test layer saw: one `before` per call that reached the
/// pipeline, one `after` per call that got past it.
#[derive(Debug, Clone)]
struct Entry {
    phase: &'static str,
    method: &'static str,
    target: Option<String>,
    tenant: String,
    principal: String,
    protocol: String,
    session: Option<String>,
    code: Option<i64>,
}

type Log = Arc<Mutex<Vec<Entry>>>;

/// Refuses anonymous callers with -32001 and `limited` with -32005, and
/// logs every call on the way in and out.
struct Gate(Log);

impl Stage for Gate {
    type State = Entry;

    fn before<'a>(&'a self, call: &'a mut Call) -> BoxFuture<'a, Result<Entry, McpError>> {
        Box::pin(async move {
            let entry = Entry {
                phase: "before",
                method: call.request.method(),
                target: call.request.target().map(str::to_owned),
                tenant: call.ctx.tenant.to_string(),
                principal: call.ctx.principal.id.to_string(),
                protocol: call.ctx.protocol_version.to_string(),
                session: call.ctx.session_id.as_deref().map(str::to_owned),
                code: None,
            };
            self.0.lock().unwrap().push(entry.clone());
            if call.ctx.principal.kind == PrincipalKind::Anonymous {
                return Err(McpError::unauthenticated(format!(
                    "tenant {} refuses anonymous callers: send a credential",
                    call.ctx.tenant
                )));
            }
            if call.request.target() == Some("limited") {
                return Err(McpError::rate_limited(
                    "rate limit of tool `limited` reached",
                    Duration::from_millis(1500),
                ));
            }
            Ok(entry)
        })
    }

    fn after<'a>(
        &'a self,
        mut entry: Entry,
        result: &'a mut Result<Value, McpError>,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            entry.phase = "after";
            entry.code = result.as_ref().err().map(|e| e.code);
            self.0.lock().unwrap().push(entry);
        })
    }
}

fn text(s: &str) -> Value {
    json!({ "content": [{ "type": "text", "text": s }] })
}

/// Tools that echo, fail, raise any protocol error, wait to be cancelled,
/// describe their context and panic; a prompt; resources.
struct Demo;

impl Provider for Demo {
    fn id(&self) -> &str {
        "demo"
    }

    fn list_tools<'a>(&'a self, _: &'a CallContext) -> BoxFuture<'a, Result<Vec<Tool>, McpError>> {
        let schema = json!({ "type": "object" });
        Box::pin(async move {
            Ok([
                "echo", "fail", "error", "wait", "whoami", "panic", "limited",
            ]
            .into_iter()
            .map(|n| Tool::new(n, n, schema.clone()))
            .collect())
        })
    }

    fn call_tool<'a>(
        &'a self,
        ctx: &'a CallContext,
        name: &'a str,
        args: Map<String, Value>,
    ) -> BoxFuture<'a, Result<Value, McpError>> {
        Box::pin(async move {
            match name {
                "echo" | "limited" => {
                    let mut r = text(&Value::Object(args.clone()).to_string());
                    r["structuredContent"] = Value::Object(args);
                    Ok(r)
                }
                "fail" => {
                    let mut r = text("the tool could not do it");
                    r["isError"] = json!(true);
                    Ok(r)
                }
                "error" => {
                    let code = args["code"].as_i64().unwrap();
                    let message = args["message"].as_str().unwrap().to_owned();
                    let mut e = McpError::new(code, message);
                    e.data = args.get("data").cloned();
                    Err(e)
                }
                "wait" => {
                    ctx.cancel.cancelled().await;
                    Err(McpError::cancelled("wait: cancelled"))
                }
                "whoami" => Ok(json!({ "content": [], "structuredContent": {
                    "tenant": &*ctx.tenant,
                    "principal": &*ctx.principal.id,
                    "protocol": &*ctx.protocol_version,
                    "session": ctx.session_id.as_deref(),
                    "capabilities": &*ctx.client_capabilities,
                }})),
                "panic" => panic!("the panic tool panicked"),
                other => Err(McpError::invalid_params(format!("unknown tool: {other}"))),
            }
        })
    }

    fn list_prompts<'a>(
        &'a self,
        _: &'a CallContext,
    ) -> BoxFuture<'a, Result<Vec<Prompt>, McpError>> {
        Box::pin(async {
            Ok(vec![Prompt::new("greet").with(
                "arguments",
                json!([{ "name": "name", "required": true }]),
            )])
        })
    }

    fn get_prompt<'a>(
        &'a self,
        _: &'a CallContext,
        name: &'a str,
        args: Map<String, Value>,
    ) -> BoxFuture<'a, Result<Value, McpError>> {
        Box::pin(async move {
            if name != "greet" {
                return Err(McpError::invalid_params(format!("unknown prompt: {name}")));
            }
            let who = args.get("name").and_then(Value::as_str).ok_or_else(|| {
                McpError::invalid_params("prompt `greet` needs the argument `name`")
            })?;
            Ok(
                json!({ "messages": [{ "role": "user", "content": { "type": "text", "text": format!("Hello, {who}") } }] }),
            )
        })
    }

    fn list_resources<'a>(
        &'a self,
        _: &'a CallContext,
    ) -> BoxFuture<'a, Result<Vec<Resource>, McpError>> {
        Box::pin(async { Ok(vec![Resource::new("test://hello?x=1&y=2", "hello")]) })
    }

    fn list_resource_templates<'a>(
        &'a self,
        _: &'a CallContext,
    ) -> BoxFuture<'a, Result<Vec<ResourceTemplate>, McpError>> {
        Box::pin(async { Ok(vec![ResourceTemplate::new("test://items/{id}", "item")]) })
    }

    fn read_resource<'a>(
        &'a self,
        _: &'a CallContext,
        uri: &'a str,
    ) -> BoxFuture<'a, Result<Value, McpError>> {
        Box::pin(async move {
            if uri == "test://hello?x=1&y=2" {
                Ok(json!({ "contents": [{ "uri": uri, "text": "hello" }] }))
            } else {
                Err(McpError::resource_not_found(uri))
            }
        })
    }
}

/// Enough tools to need a second page.
struct Bulk;

const BULK: usize = 120;

impl Provider for Bulk {
    fn id(&self) -> &str {
        "bulk"
    }
    fn list_tools<'a>(&'a self, _: &'a CallContext) -> BoxFuture<'a, Result<Vec<Tool>, McpError>> {
        Box::pin(async {
            Ok((0..BULK)
                .map(|i| Tool::new(format!("bulk_{i:03}"), "bulk", json!({ "type": "object" })))
                .collect())
        })
    }
}

const ADMIN_TOOLS: &[&str] = &[
    "create_tenant",
    "list_tenants",
    "get_tenant",
    "suspend_tenant",
    "resume_tenant",
    "delete_tenant",
    "add_tenant_user",
    "remove_tenant_user",
    "list_tenant_users",
    "list_roles",
    "set_permission_rule",
    "delete_permission_rule",
    "list_permission_rules",
    "create_api_key",
    "revoke_api_key",
    "list_api_keys",
    "create_audit_log",
    "verify_audit_chain",
];

/// Offers the administrative tools' names and records each call; answers
/// like the real tools do (structured content, or a tool error).
#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<(String, Map<String, Value>)>>,
}

impl Provider for Recorder {
    fn id(&self) -> &str {
        "admin"
    }
    fn list_tools<'a>(&'a self, _: &'a CallContext) -> BoxFuture<'a, Result<Vec<Tool>, McpError>> {
        Box::pin(async {
            Ok(ADMIN_TOOLS
                .iter()
                .map(|n| Tool::new(*n, "admin", json!({ "type": "object" })))
                .collect())
        })
    }
    fn call_tool<'a>(
        &'a self,
        _: &'a CallContext,
        name: &'a str,
        args: Map<String, Value>,
    ) -> BoxFuture<'a, Result<Value, McpError>> {
        Box::pin(async move {
            self.calls
                .lock()
                .unwrap()
                .push((name.to_owned(), args.clone()));
            let failed =
                |m: String| json!({ "content": [{ "type": "text", "text": m }], "isError": true });
            let tenant = args.get("tenant").and_then(Value::as_str).unwrap_or("");
            if tenant == "ghost" {
                return Ok(failed("tenant `ghost` does not exist".into()));
            }
            if name == "create_tenant" && args.get("id") == Some(&json!("taken")) {
                return Ok(failed("tenant `taken` already exists".into()));
            }
            if name == "revoke_api_key" && args.get("id") == Some(&json!("nokey")) {
                return Ok(failed(format!("tenant `{tenant}` has no API key `nokey`")));
            }
            if name == "delete_tenant" && !args.contains_key("confirm") {
                return Err(McpError::invalid_params("`confirm` is required"));
            }
            if name == "suspend_tenant" && tenant == "operator" {
                return Err(McpError::forbidden(
                    "suspending tenants is reserved to administrators of the operator tenant",
                ));
            }
            let value = json!({ "tool": name, "arguments": args });
            Ok(
                json!({ "content": [{ "type": "text", "text": value.to_string() }], "structuredContent": value }),
            )
        })
    }
}

// ---------- the server ----------

const MAX_BODY: usize = 4096;

struct Harness {
    addr: SocketAddr,
    log: Log,
    recorder: Arc<Recorder>,
}

impl Harness {
    /// Calls that reached the pipeline so far.
    fn calls(&self) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.phase == "before")
            .count()
    }
    fn last_before(&self) -> Entry {
        let log = self.log.lock().unwrap();
        log.iter()
            .rev()
            .find(|e| e.phase == "before")
            .unwrap()
            .clone()
    }
    fn last_admin_call(&self) -> (String, Map<String, Value>) {
        self.recorder.calls.lock().unwrap().last().unwrap().clone()
    }
}

/// The authentication stand-in: `x-test-principal` (and optionally
/// `x-test-tenant`, default `acme`) become the request's Identity.
async fn identify(
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let header = |req: &axum::extract::Request, name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (principal, tenant) = (
        header(&req, "x-test-principal"),
        header(&req, "x-test-tenant"),
    );
    if let Some(principal) = principal {
        let identity = Identity {
            tenant: tenant.unwrap_or_else(|| "acme".into()),
            principal: Principal {
                id: Arc::from(principal.as_str()),
                kind: PrincipalKind::User,
                roles: Arc::from(vec!["admin".to_owned()]),
                scopes: Arc::from(Vec::new()),
                auth: AuthMethod::ApiKey,
                claims: None,
            },
        };
        req.extensions_mut().insert(identity);
    }
    next.run(req).await
}

async fn start() -> Harness {
    let log = Log::default();
    let recorder = Arc::new(Recorder::default());
    let catalog = Catalog::new(vec![Arc::new(Demo), recorder.clone(), Arc::new(Bulk)]);
    let pipeline = Pipeline::builder(catalog)
        .layer(StageLayer::new(Gate(log.clone())))
        .build();
    let app = cellgate_rest::router(
        pipeline,
        RestOptions {
            max_body_bytes: MAX_BODY,
            default_tenant: "anon-tenant".into(),
        },
    )
    .layer(axum::middleware::from_fn(identify));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Harness {
        addr,
        log,
        recorder,
    }
}

// ---------- a raw HTTP/1.1 client ----------

#[derive(Debug)]
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
    /// `error.code` and `error.message` of an error body.
    fn error(&self) -> (i64, String) {
        let v = self.json();
        (
            v["error"]["code"]
                .as_i64()
                .unwrap_or_else(|| panic!("no error.code: {v}")),
            v["error"]["message"].as_str().unwrap().to_owned(),
        )
    }
}

/// Sends `head` (request line and headers, without the blank line) and
/// `body` on a fresh connection and reads the whole answer.
async fn exchange(addr: SocketAddr, head: &str, body: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("{head}\r\n").as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("response within 10s")
        .unwrap();
    parse_response(&buf)
}

async fn raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    exchange(addr, &head, body).await
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

/// A request as `who` (anonymous when `None`) with an optional JSON body.
async fn call(
    h: &Harness,
    method: &str,
    path: &str,
    who: Option<&str>,
    body: Option<&Value>,
) -> Resp {
    let mut headers = Vec::new();
    if let Some(who) = who {
        headers.push(("x-test-principal", who));
    }
    let bytes = body.map(Value::to_string).unwrap_or_default();
    if body.is_some() {
        headers.push(JSON);
    }
    raw(h.addr, method, path, &headers, bytes.as_bytes()).await
}

async fn get(h: &Harness, path: &str) -> Resp {
    call(h, "GET", path, Some("alice"), None).await
}

async fn post(h: &Harness, path: &str, body: &Value) -> Resp {
    call(h, "POST", path, Some("alice"), Some(body)).await
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

// ---------- tools ----------

#[tokio::test]
async fn tools_are_listed_page_by_page_with_the_cursor() {
    let h = start().await;
    let first = get(&h, "/api/v1/tools").await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.header("content-type"), Some("application/json"));
    assert_eq!(first.header("cache-control"), Some("no-store"));
    let page = first.json();
    let tools = page["tools"].as_array().unwrap();
    assert_eq!(tools.len(), cellgate_kernel::PAGE_SIZE);
    assert_eq!(tools[0]["name"], json!("echo"));
    let cursor = page["nextCursor"]
        .as_str()
        .expect("a second page")
        .to_owned();

    let second = get(&h, &format!("/api/v1/tools?cursor={cursor}")).await;
    assert_eq!(second.status, 200, "{}", second.body);
    let rest = second.json();
    let total = 7 + ADMIN_TOOLS.len() + BULK;
    assert_eq!(
        rest["tools"].as_array().unwrap().len(),
        total - cellgate_kernel::PAGE_SIZE
    );
    assert!(rest.get("nextCursor").is_none());
    assert_eq!(h.calls(), 2, "one pipeline call per page");
    let entry = h.last_before();
    assert_eq!((entry.method, entry.target), ("tools/list", None));

    let bad = get(&h, "/api/v1/tools?cursor=nope").await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    let (code, message) = bad.error();
    assert_eq!(code, codes::INVALID_PARAMS);
    assert!(message.contains("invalid cursor"), "{message}");
}

#[tokio::test]
async fn a_tool_call_answers_its_result_and_flags_tool_errors() {
    let h = start().await;
    let args = json!({ "text": "hi", "n": [1, 2, { "deep": true }] });
    let r = post(&h, "/api/v1/tools/echo", &args).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["structuredContent"], args);
    assert_eq!(r.json()["content"][0]["text"], json!(args.to_string()));
    assert_eq!(r.header("x-cellgate-tool-error"), None);
    let entry = h.last_before();
    assert_eq!(
        (entry.method, entry.target.as_deref()),
        ("tools/call", Some("echo"))
    );

    let failed = post(&h, "/api/v1/tools/fail", &json!({})).await;
    assert_eq!(failed.status, 200, "a tool error is the tool's answer");
    assert_eq!(failed.header("x-cellgate-tool-error"), Some("true"));
    assert_eq!(failed.json()["isError"], json!(true));
    assert_eq!(
        failed.json()["content"][0]["text"],
        json!("the tool could not do it")
    );

    // No body at all: no arguments.
    let empty = raw(
        h.addr,
        "POST",
        "/api/v1/tools/echo",
        &[("x-test-principal", "alice")],
        b"",
    )
    .await;
    assert_eq!(empty.status, 200, "{}", empty.body);
    assert_eq!(empty.json()["structuredContent"], json!({}));

    let unknown = post(&h, "/api/v1/tools/nope", &json!({})).await;
    assert_eq!(unknown.status, 400, "{}", unknown.body);
    let (code, message) = unknown.error();
    assert_eq!(code, codes::INVALID_PARAMS);
    assert_eq!(message, "unknown tool: nope");
    assert_eq!(unknown.json()["error"]["data"], json!({ "name": "nope" }));
    assert_eq!(h.calls(), 4);
}

#[tokio::test]
async fn every_call_gets_a_fresh_context_from_the_identity() {
    let h = start().await;
    let r = post(&h, "/api/v1/tools/whoami", &json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["structuredContent"],
        json!({ "tenant": "acme", "principal": "alice", "protocol": "2025-11-25", "session": null, "capabilities": {} })
    );
    let other = raw(
        h.addr,
        "POST",
        "/api/v1/tools/whoami",
        &[("x-test-principal", "bob"), ("x-test-tenant", "globex")],
        b"",
    )
    .await;
    assert_eq!(other.status, 200, "{}", other.body);
    let who = &other.json()["structuredContent"];
    assert_eq!(
        (&who["tenant"], &who["principal"]),
        (&json!("globex"), &json!("bob"))
    );
    let entry = h.last_before();
    assert_eq!(
        (
            entry.tenant.as_str(),
            entry.protocol.as_str(),
            entry.session
        ),
        ("globex", "2025-11-25", None)
    );
}

#[tokio::test]
async fn without_an_identity_the_caller_is_the_default_tenants_anonymous_and_gets_401() {
    let h = start().await;
    for (method, path) in [
        ("GET", "/api/v1/tools"),
        ("POST", "/api/v1/tools/echo"),
        ("GET", "/api/v1/tenants"),
    ] {
        let r = call(&h, method, path, None, None).await;
        assert_eq!(r.status, 401, "{method} {path}: {}", r.body);
        let (code, message) = r.error();
        assert_eq!(code, codes::UNAUTHENTICATED);
        assert!(message.contains("tenant anon-tenant"), "{message}");
        let entry = h.last_before();
        assert_eq!(
            (entry.tenant.as_str(), entry.principal.as_str()),
            ("anon-tenant", "anonymous")
        );
    }
    assert!(h.recorder.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_rate_limit_is_429_with_retry_after_in_whole_seconds() {
    let h = start().await;
    let r = post(&h, "/api/v1/tools/limited", &json!({})).await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.header("retry-after"), Some("2"), "1500 ms rounds up");
    assert_eq!(
        r.json(),
        json!({ "error": { "code": -32005, "message": "rate limit of tool `limited` reached", "data": { "retryAfterMs": 1500 } } })
    );
}

#[tokio::test]
async fn pipeline_errors_map_to_http_statuses() {
    let h = start().await;
    let table: &[(i64, u16)] = &[
        (codes::PARSE_ERROR, 400),
        (codes::INVALID_REQUEST, 400),
        (codes::INVALID_PARAMS, 400),
        (codes::METHOD_NOT_FOUND, 404),
        (codes::RESOURCE_NOT_FOUND, 404),
        (codes::UNAUTHENTICATED, 401),
        (codes::FORBIDDEN, 403),
        (codes::RATE_LIMITED, 429),
        (codes::BLOCKED, 422),
        (codes::REQUEST_CANCELLED, 408),
        (codes::INTERNAL_ERROR, 500),
        (codes::SERVER_ERROR, 500),
        (codes::MISSING_REQUIRED_CLIENT_CAPABILITY, 501),
    ];
    for &(code, status) in table {
        let data = json!({ "why": code, "retryAfterMs": 2001 });
        let args = json!({ "code": code, "message": format!("failure {code}"), "data": data });
        let r = post(&h, "/api/v1/tools/error", &args).await;
        assert_eq!(r.status, status, "code {code}: {}", r.body);
        assert_eq!(
            r.json(),
            json!({ "error": { "code": code, "message": format!("failure {code}"), "data": data } }),
            "code {code}"
        );
        let retry = r.header("retry-after");
        assert_eq!(retry, (status == 429).then_some("3"), "code {code}");
        assert_eq!(r.header("x-cellgate-tool-error"), None);
    }
    // Without data there is no `data` key.
    let r = post(
        &h,
        "/api/v1/tools/error",
        &json!({ "code": -32003, "message": "no" }),
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json(),
        json!({ "error": { "code": -32003, "message": "no" } })
    );
    // The layer saw each call end with its code.
    let log = h.log.lock().unwrap();
    let ends: Vec<i64> = log
        .iter()
        .filter(|e| e.phase == "after")
        .filter_map(|e| e.code)
        .collect();
    assert_eq!(ends.len(), table.len() + 1);
}

#[tokio::test]
async fn a_panicking_provider_is_a_500_and_the_server_carries_on() {
    let h = start().await;
    let r = post(&h, "/api/v1/tools/panic", &json!({})).await;
    assert_eq!(r.status, 500, "{}", r.body);
    let (code, message) = r.error();
    assert_eq!(code, codes::INTERNAL_ERROR);
    assert!(!message.contains("panicked"), "no internals: {message}");
    let ok = post(&h, "/api/v1/tools/echo", &json!({ "a": 1 })).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_its_call() {
    let h = start().await;
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    let head = format!(
        "POST /api/v1/tools/wait HTTP/1.1\r\nhost: {}\r\nx-test-principal: alice\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{{}}",
        h.addr
    );
    s.write_all(head.as_bytes()).await.unwrap();
    eventually("the call to reach the pipeline", || {
        h.log
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.target.as_deref() == Some("wait"))
    })
    .await;
    // Still running: nothing has ended it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ended = |h: &Harness| {
        h.log
            .lock()
            .unwrap()
            .iter()
            .find(|e| e.phase == "after" && e.target.as_deref() == Some("wait"))
            .map(|e| e.code)
    };
    assert_eq!(ended(&h), None);
    drop(s);
    eventually("the call to end as cancelled", || ended(&h).is_some()).await;
    assert_eq!(ended(&h), Some(Some(codes::REQUEST_CANCELLED)));
}

// ---------- bad input ----------

#[tokio::test]
async fn bad_input_is_refused_with_a_message_and_never_reaches_the_pipeline() {
    let h = start().await;
    let who = ("x-test-principal", "alice");
    let expect = |r: &Resp, status: u16, code: i64, needle: &str| {
        assert_eq!(r.status, status, "{}", r.body);
        let (c, message) = r.error();
        assert_eq!(c, code, "{message}");
        assert!(message.contains(needle), "{needle:?} not in {message:?}");
        assert_eq!(r.header("content-type"), Some("application/json"));
    };
    let path = "/api/v1/tools/echo";

    let r = raw(
        h.addr,
        "POST",
        path,
        &[who, ("content-type", "text/plain")],
        b"{}",
    )
    .await;
    expect(
        &r,
        415,
        codes::INVALID_REQUEST,
        "Content-Type must be application/json, got \"text/plain\"",
    );
    let r = raw(h.addr, "POST", path, &[who], b"{}").await;
    expect(&r, 415, codes::INVALID_REQUEST, "got none");
    let r = raw(h.addr, "POST", path, &[who, JSON], b"{\"a\": ").await;
    expect(
        &r,
        400,
        codes::PARSE_ERROR,
        "request body is not valid JSON",
    );
    let r = raw(h.addr, "POST", path, &[who, JSON], b"{\"a\": \"\xff\xfe\"}").await;
    expect(&r, 400, codes::PARSE_ERROR, "not valid JSON");
    let r = raw(h.addr, "POST", path, &[who, JSON], b"{} {}").await;
    expect(&r, 400, codes::PARSE_ERROR, "trailing characters");
    for (body, kind) in [
        (&b"[1, 2]"[..], "an array"),
        (b"\"text\"", "a string"),
        (b"42", "a number"),
        (b"null", "null"),
        (b"true", "a boolean"),
    ] {
        let r = raw(h.addr, "POST", path, &[who, JSON], body).await;
        expect(
            &r,
            400,
            codes::INVALID_PARAMS,
            &format!("must be a JSON object (the arguments), got {kind}"),
        );
    }
    let prompt = raw(h.addr, "POST", "/api/v1/prompts/greet", &[who, JSON], b"[]").await;
    expect(&prompt, 400, codes::INVALID_PARAMS, "got an array");

    // Nesting deeper than the parser's limit is an error, not a crash.
    let deep = format!("{{\"a\":{}{}}}", "[".repeat(1000), "]".repeat(1000));
    let r = raw(h.addr, "POST", path, &[who, JSON], deep.as_bytes()).await;
    expect(&r, 400, codes::PARSE_ERROR, "recursion limit");

    // Too large, announced by Content-Length and not announced (chunked).
    let big = format!("{{\"a\":\"{}\"}}", "x".repeat(MAX_BODY));
    let r = raw(h.addr, "POST", path, &[who, JSON], big.as_bytes()).await;
    expect(
        &r,
        413,
        codes::INVALID_REQUEST,
        &format!("exceeds the limit of {MAX_BODY} bytes"),
    );
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\nx-test-principal: alice\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n",
        h.addr
    );
    let mut chunked = Vec::new();
    for piece in big.as_bytes().chunks(1000) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let r = exchange(h.addr, &head, &chunked).await;
    expect(&r, 413, codes::INVALID_REQUEST, "exceeds the limit");
    // An announced length over the limit is refused before the body comes.
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\nx-test-principal: alice\r\ncontent-type: application/json\r\ncontent-length: 100000000\r\n",
        h.addr
    );
    let r = exchange(h.addr, &head, b"").await;
    expect(&r, 413, codes::INVALID_REQUEST, "exceeds the limit");
    // Just under the limit is fine.
    let fits = format!("{{\"a\":\"{}\"}}", "x".repeat(MAX_BODY - 8));
    assert_eq!(fits.len(), MAX_BODY);
    let r = raw(h.addr, "POST", path, &[who, JSON], fits.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let calls = h.calls();
    assert_eq!(calls, 1, "only the request that fits made a call");

    // Queries: unknown parameters, a missing one.
    let r = get(&h, "/api/v1/tools?limit=5").await;
    expect(&r, 400, codes::INVALID_PARAMS, "unknown field `limit`");
    let r = get(&h, "/api/v1/tenants?all=true").await;
    expect(&r, 400, codes::INVALID_PARAMS, "unknown field `all`");
    let r = get(&h, "/api/v1/resources/read").await;
    expect(
        &r,
        400,
        codes::INVALID_PARAMS,
        "the query parameter `uri` is required",
    );
    // A path segment that is not UTF-8 once decoded.
    let r = post(&h, "/api/v1/tools/%FF", &json!({})).await;
    expect(&r, 400, codes::INVALID_PARAMS, "invalid path");

    // Paths and methods that do not exist.
    let r = get(&h, "/api/v1/nothing/here").await;
    expect(
        &r,
        404,
        codes::METHOD_NOT_FOUND,
        "there is no endpoint GET /api/v1/nothing/here",
    );
    let r = call(&h, "DELETE", "/api/v1/tools", Some("alice"), None).await;
    expect(
        &r,
        405,
        codes::INVALID_REQUEST,
        "DELETE is not allowed on /api/v1/tools",
    );
    let allow = r.header("allow").unwrap_or_default();
    assert!(allow.contains("GET"), "Allow: {allow}");
    let r = get(&h, "/api/v1/tools/echo").await;
    expect(&r, 405, codes::INVALID_REQUEST, "GET is not allowed");
    assert_eq!(r.header("allow"), Some("POST"));

    assert_eq!(h.calls(), calls, "no refused request reached the pipeline");
}

// ---------- prompts and resources ----------

#[tokio::test]
async fn prompts_and_resources() {
    let h = start().await;
    let r = get(&h, "/api/v1/prompts").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["prompts"][0]["name"], json!("greet"));

    let r = post(&h, "/api/v1/prompts/greet", &json!({ "name": "Ada" })).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["messages"][0]["content"]["text"],
        json!("Hello, Ada")
    );
    let entry = h.last_before();
    assert_eq!(
        (entry.method, entry.target.as_deref()),
        ("prompts/get", Some("greet"))
    );
    let r = post(&h, "/api/v1/prompts/greet", &json!({})).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.error().1, "prompt `greet` needs the argument `name`");
    let r = post(&h, "/api/v1/prompts/nope", &json!({})).await;
    assert_eq!(
        (r.status, r.error().1.as_str()),
        (400, "unknown prompt: nope")
    );

    let r = get(&h, "/api/v1/resources").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["resources"],
        json!([{ "uri": "test://hello?x=1&y=2", "name": "hello" }])
    );
    let r = get(&h, "/api/v1/resources/templates").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["resourceTemplates"][0]["uriTemplate"],
        json!("test://items/{id}")
    );
    // The URI travels percent-encoded in the query.
    let r = get(
        &h,
        "/api/v1/resources/read?uri=test%3A%2F%2Fhello%3Fx%3D1%26y%3D2",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["contents"][0]["text"], json!("hello"));
    let entry = h.last_before();
    assert_eq!(
        (entry.method, entry.target.as_deref()),
        ("resources/read", Some("test://hello?x=1&y=2"))
    );
    let r = get(&h, "/api/v1/resources/read?uri=test%3A%2F%2Fmissing").await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(
        r.json(),
        json!({ "error": { "code": -32002, "message": "resource not found: test://missing", "data": { "uri": "test://missing" } } })
    );
    assert_eq!(h.calls(), 8);
}

// ---------- administrative aliases ----------

#[tokio::test]
async fn admin_routes_call_their_tool_with_path_and_body_as_arguments() {
    let h = start().await;
    type Case = (
        &'static str,
        &'static str,
        Option<Value>,
        &'static str,
        Value,
        u16,
    );
    let cases: Vec<Case> = vec![
        (
            "GET",
            "/api/v1/tenants",
            None,
            "list_tenants",
            json!({}),
            200,
        ),
        (
            "POST",
            "/api/v1/tenants",
            Some(json!({ "id": "globex", "name": "Globex", "plan": "pro" })),
            "create_tenant",
            json!({ "id": "globex", "name": "Globex", "plan": "pro" }),
            201,
        ),
        (
            "GET",
            "/api/v1/tenants/globex",
            None,
            "get_tenant",
            json!({ "tenant": "globex" }),
            200,
        ),
        (
            "POST",
            "/api/v1/tenants/globex/suspend",
            None,
            "suspend_tenant",
            json!({ "tenant": "globex" }),
            200,
        ),
        (
            "POST",
            "/api/v1/tenants/globex/resume",
            None,
            "resume_tenant",
            json!({ "tenant": "globex" }),
            200,
        ),
        (
            "DELETE",
            "/api/v1/tenants/globex?confirm=globex",
            None,
            "delete_tenant",
            json!({ "tenant": "globex", "confirm": "globex" }),
            200,
        ),
        (
            "GET",
            "/api/v1/tenants/globex/users",
            None,
            "list_tenant_users",
            json!({ "tenant": "globex" }),
            200,
        ),
        (
            "POST",
            "/api/v1/tenants/globex/users",
            Some(json!({ "principal": "carol", "roles": ["viewer"], "kind": "agent" })),
            "add_tenant_user",
            json!({ "tenant": "globex", "principal": "carol", "roles": ["viewer"], "kind": "agent" }),
            200,
        ),
        (
            "DELETE",
            "/api/v1/tenants/globex/users/carol%40example.com",
            None,
            "remove_tenant_user",
            json!({ "tenant": "globex", "principal": "carol@example.com" }),
            200,
        ),
        (
            "GET",
            "/api/v1/tenants/globex/keys",
            None,
            "list_api_keys",
            json!({ "tenant": "globex" }),
            200,
        ),
        (
            "POST",
            "/api/v1/tenants/globex/keys",
            Some(json!({ "principal": "ci", "name": "CI", "ttl_secs": 3600, "tenant": "globex" })),
            "create_api_key",
            json!({ "tenant": "globex", "principal": "ci", "name": "CI", "ttl_secs": 3600 }),
            201,
        ),
        (
            "DELETE",
            "/api/v1/tenants/globex/keys/k1b2c3",
            None,
            "revoke_api_key",
            json!({ "tenant": "globex", "id": "k1b2c3" }),
            200,
        ),
        (
            "GET",
            "/api/v1/tenants/globex/rules",
            None,
            "list_permission_rules",
            json!({ "tenant": "globex" }),
            200,
        ),
        (
            "POST",
            "/api/v1/tenants/globex/rules",
            Some(json!({ "id": "no-shell", "pattern": "shell_*", "deny": true, "order": 5 })),
            "set_permission_rule",
            json!({ "tenant": "globex", "id": "no-shell", "pattern": "shell_*", "deny": true, "order": 5 }),
            200,
        ),
        (
            "DELETE",
            "/api/v1/tenants/globex/rules/no-shell",
            None,
            "delete_permission_rule",
            json!({ "tenant": "globex", "id": "no-shell" }),
            200,
        ),
        (
            "GET",
            "/api/v1/tenants/globex/roles",
            None,
            "list_roles",
            json!({ "tenant": "globex" }),
            200,
        ),
        (
            "POST",
            "/api/v1/audit/events",
            Some(json!({ "category": "deployment", "message": "v2 is live" })),
            "create_audit_log",
            json!({ "category": "deployment", "message": "v2 is live" }),
            201,
        ),
        (
            "GET",
            "/api/v1/audit/verify",
            None,
            "verify_audit_chain",
            json!({}),
            200,
        ),
    ];
    for (i, (method, path, body, tool, args, status)) in cases.into_iter().enumerate() {
        let r = call(&h, method, path, Some("alice"), body.as_ref()).await;
        assert_eq!(r.status, status, "{method} {path}: {}", r.body);
        assert_eq!(
            h.calls(),
            i + 1,
            "{method} {path}: exactly one pipeline call"
        );
        let (called, got) = h.last_admin_call();
        assert_eq!(
            (called.as_str(), Value::Object(got)),
            (tool, args.clone()),
            "{method} {path}"
        );
        // The structured content is the answer.
        assert_eq!(
            r.json(),
            json!({ "tool": tool, "arguments": args }),
            "{method} {path}"
        );
        assert_eq!(r.header("x-cellgate-tool-error"), None);
        let entry = h.last_before();
        assert_eq!(
            (
                entry.method,
                entry.target.as_deref(),
                entry.principal.as_str()
            ),
            ("tools/call", Some(tool), "alice")
        );
    }
}

#[tokio::test]
async fn admin_tool_errors_are_404_or_409_and_protocol_errors_keep_their_mapping() {
    let h = start().await;
    let r = get(&h, "/api/v1/tenants/ghost").await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(
        r.json(),
        json!({ "error": { "message": "tenant `ghost` does not exist" } })
    );
    assert_eq!(r.header("x-cellgate-tool-error"), Some("true"));

    let r = call(
        &h,
        "DELETE",
        "/api/v1/tenants/acme/keys/nokey",
        Some("alice"),
        None,
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(
        r.json()["error"]["message"],
        json!("tenant `acme` has no API key `nokey`")
    );

    let r = post(&h, "/api/v1/tenants", &json!({ "id": "taken" })).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(
        r.json(),
        json!({ "error": { "message": "tenant `taken` already exists" } })
    );
    assert_eq!(r.header("x-cellgate-tool-error"), Some("true"));

    // The tool, not the route, decides what is missing.
    let r = call(&h, "DELETE", "/api/v1/tenants/acme", Some("alice"), None).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(
        r.error(),
        (codes::INVALID_PARAMS, "`confirm` is required".into())
    );
    assert_eq!(
        h.last_admin_call(),
        (
            "delete_tenant".into(),
            json!({ "tenant": "acme" }).as_object().unwrap().clone()
        )
    );
    let r = call(
        &h,
        "POST",
        "/api/v1/tenants/operator/suspend",
        Some("alice"),
        None,
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.error().0, codes::FORBIDDEN);

    let r = call(&h, "GET", "/api/v1/tenants/acme/users", None, None).await;
    assert_eq!(r.status, 401, "{}", r.body);
    let calls = h.calls();

    // The body may repeat the path's tenant, never contradict it.
    let r = post(
        &h,
        "/api/v1/tenants/acme/users",
        &json!({ "principal": "x", "tenant": "globex" }),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(
        r.error().1,
        "`tenant` in the body (\"globex\") contradicts the path (\"acme\"); leave it out"
    );
    let r = post(
        &h,
        "/api/v1/tenants/acme/keys",
        &json!({ "principal": "x", "tenant": 7 }),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.error().1.contains("(a number) contradicts"), "{}", r.body);
    let r = raw(
        h.addr,
        "POST",
        "/api/v1/tenants",
        &[("x-test-principal", "alice"), JSON],
        b"[\"globex\"]",
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.error().1.contains("got an array"), "{}", r.body);
    let r = get(&h, "/api/v1/tenants/acme?confirm=acme").await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.error().1.contains("unknown field `confirm`"),
        "{}",
        r.body
    );
    assert_eq!(h.calls(), calls, "refused before the pipeline");
}
