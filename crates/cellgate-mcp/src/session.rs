//! Sessions: what the edge remembers about a client between messages, and
//! the event streams that make Streamable HTTP resumable.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use cellgate_kernel::{CancellationToken, Identity, LogLevel, McpError};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

/// How a session's messages travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    Stdio,
    StreamableHttp,
    LegacySse,
}

/// A frame on an SSE connection.
#[derive(Debug, Clone)]
pub enum Frame {
    Event {
        id: Arc<str>,
        data: Arc<str>,
        last: bool,
    },
    End,
}

/// Where messages go that belong to one request, or to the session as a whole.
pub trait Outbound: Send + Sync {
    fn send(&self, msg: &Value, last: bool);
    /// Closes the live connection but keeps the stream resumable.
    fn close(&self) {}
}

/// The history of one SSE stream of a session (a POST response stream, or
/// stream 0: the standalone GET stream), kept for `Last-Event-ID`.
struct EventStream {
    history: VecDeque<(u64, Arc<str>, bool)>,
    next_seq: u64,
    live: Option<mpsc::UnboundedSender<Frame>>,
    done: bool,
}

pub struct Session {
    pub id: Arc<str>,
    pub transport: TransportKind,
    version: RwLock<Arc<str>>,
    client_capabilities: RwLock<Arc<Value>>,
    client_info: RwLock<Value>,
    initialized: AtomicBool,
    log_level: AtomicU8,
    subscriptions: Mutex<HashSet<String>>,
    pending: Mutex<HashMap<String, oneshot::Sender<Result<Value, McpError>>>>,
    in_flight: Mutex<HashMap<String, CancellationToken>>,
    next_request_id: AtomicU64,
    streams: Mutex<HashMap<u64, EventStream>>,
    next_stream: AtomicU64,
    history_limit: usize,
    last_seen: AtomicI64,
    started: Instant,
    /// Session-wide messages (list changes, resource updates) for transports
    /// with a single channel (stdio, legacy SSE); HTTP uses stream 0.
    direct: RwLock<Option<Arc<dyn Outbound>>>,
    pub closed: CancellationToken,
    /// Who opened the session (set by the transport); only the same
    /// principal of the same tenant may use it afterwards.
    identity: RwLock<Option<Identity>>,
    /// Cancelled when the transport's input ends (stdio EOF): calls in
    /// flight finish, but open-ended ones (`subscriptions/listen`) stop.
    input_ended: CancellationToken,
}

fn key(id: &Value) -> String {
    id.to_string()
}

impl Session {
    /// Who the session belongs to; `None` until a transport says.
    pub fn identity(&self) -> Option<Identity> {
        self.identity
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records who makes the session's requests. The first identity binds
    /// the session; later ones (a refreshed token: new claims or roles) must
    /// be the same principal in the same tenant, see [`Session::admits`].
    pub fn set_identity(&self, identity: Identity) {
        *self.identity.write().unwrap_or_else(|e| e.into_inner()) = Some(identity);
    }

    /// Whether `who` may use this session. A session id that leaks to
    /// another principal is worth nothing to it.
    pub fn admits(&self, who: &Identity) -> bool {
        match &*self.identity.read().unwrap_or_else(|e| e.into_inner()) {
            None => true,
            Some(owner) => owner.tenant == who.tenant && owner.principal.id == who.principal.id,
        }
    }

    pub fn new(transport: TransportKind, history_limit: usize) -> Arc<Self> {
        let s = Arc::new(Self {
            id: Arc::from(uuid::Uuid::new_v4().simple().to_string()),
            transport,
            version: RwLock::new(Arc::from(crate::protocol::LATEST_SESSION_VERSION)),
            client_capabilities: RwLock::new(Arc::new(Value::Object(Default::default()))),
            client_info: RwLock::new(Value::Null),
            initialized: AtomicBool::new(false),
            log_level: AtomicU8::new(LogLevel::Debug as u8),
            subscriptions: Mutex::new(HashSet::new()),
            pending: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
            next_request_id: AtomicU64::new(1),
            streams: Mutex::new(HashMap::new()),
            next_stream: AtomicU64::new(1),
            history_limit: history_limit.max(1),
            last_seen: AtomicI64::new(0),
            started: Instant::now(),
            direct: RwLock::new(None),
            closed: CancellationToken::new(),
            identity: RwLock::new(None),
            input_ended: CancellationToken::new(),
        });
        s.touch();
        s
    }

    pub fn end_input(&self) {
        self.input_ended.cancel();
    }

    pub fn input_ended(&self) -> CancellationToken {
        self.input_ended.clone()
    }

    pub fn touch(&self) {
        self.last_seen
            .store(self.started.elapsed().as_millis() as i64, Ordering::Relaxed);
    }

    pub fn idle_for(&self) -> Duration {
        let now = self.started.elapsed().as_millis() as i64;
        Duration::from_millis((now - self.last_seen.load(Ordering::Relaxed)).max(0) as u64)
    }

    pub fn version(&self) -> Arc<str> {
        self.version
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_handshake(&self, version: &str, capabilities: Value, info: Value) {
        *self.version.write().unwrap_or_else(|e| e.into_inner()) = Arc::from(version);
        *self
            .client_capabilities
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(capabilities);
        *self.client_info.write().unwrap_or_else(|e| e.into_inner()) = info;
    }

    pub fn client_capabilities(&self) -> Arc<Value> {
        self.client_capabilities
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn client_info(&self) -> Value {
        self.client_info
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn mark_initialized(&self) {
        self.initialized.store(true, Ordering::Relaxed);
    }

    pub fn is_initialized(&self) -> bool {
        self.initialized.load(Ordering::Relaxed)
    }

    pub fn set_log_level(&self, level: LogLevel) {
        self.log_level.store(level as u8, Ordering::Relaxed);
    }

    /// Lets no log message through, whatever its level.
    pub fn mute_logs(&self) {
        self.log_level.store(u8::MAX, Ordering::Relaxed);
    }

    pub fn log_enabled(&self, level: LogLevel) -> bool {
        level as u8 >= self.log_level.load(Ordering::Relaxed)
    }

    pub fn subscribe(&self, uri: &str) {
        self.subscriptions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(uri.to_owned());
    }

    pub fn unsubscribe(&self, uri: &str) -> bool {
        self.subscriptions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uri)
    }

    pub fn is_subscribed(&self, uri: &str) -> bool {
        self.subscriptions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(uri)
    }

    // ---- server-to-client requests ----

    /// Allocates an id for a server-to-client request and a receiver for its answer.
    pub fn expect_response(&self) -> (Value, oneshot::Receiver<Result<Value, McpError>>) {
        let id = Value::from(format!(
            "s{}",
            self.next_request_id.fetch_add(1, Ordering::Relaxed)
        ));
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key(&id), tx);
        (id, rx)
    }

    pub fn forget_response(&self, id: &Value) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key(id));
    }

    /// Fails every server-to-client request still waiting for an answer
    /// (the transport ended, so no answer can come).
    pub fn fail_pending(&self, why: &str) {
        let waiting: Vec<_> = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        for (_, tx) in waiting {
            let _ = tx.send(Err(McpError::new(
                cellgate_kernel::codes::SERVER_ERROR,
                why.to_owned(),
            )));
        }
    }

    pub fn pending_count(&self) -> usize {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Routes a client's response to the request waiting for it; false when
    /// nothing waits for that id.
    pub fn deliver_response(&self, id: &Value, outcome: Result<Value, McpError>) -> bool {
        match self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key(id))
        {
            Some(tx) => tx.send(outcome).is_ok(),
            None => false,
        }
    }

    // ---- requests in flight (for cancellation) ----

    /// Registers a client request; `None` when one with the same id is still running.
    pub fn begin_request(&self, id: &Value) -> Option<CancellationToken> {
        let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let k = key(id);
        if map.contains_key(&k) {
            return None;
        }
        let token = self.closed.child_token();
        map.insert(k, token.clone());
        Some(token)
    }

    pub fn end_request(&self, id: &Value) {
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key(id));
    }

    pub fn cancel_request(&self, id: &Value) -> bool {
        match self
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key(id))
        {
            Some(t) => {
                t.cancel();
                true
            }
            None => false,
        }
    }

    pub fn in_flight_count(&self) -> usize {
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    // ---- session-wide channel ----

    pub fn direct(&self) -> Option<Arc<dyn Outbound>> {
        self.direct
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_direct(&self, out: Arc<dyn Outbound>) {
        *self.direct.write().unwrap_or_else(|e| e.into_inner()) = Some(out);
    }

    /// Sends a message that belongs to no request (list changes, resource
    /// updates): on the direct channel, or on HTTP stream 0.
    pub fn send_unrelated(self: &Arc<Self>, msg: &Value) {
        if let Some(out) = self
            .direct
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            out.send(msg, false);
            return;
        }
        self.push_event(0, msg, false);
    }

    // ---- resumable SSE streams ----

    /// Opens a new stream for a POST response; returns its id and the live receiver.
    pub fn open_stream(&self) -> (u64, mpsc::UnboundedReceiver<Frame>) {
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        // Forget finished streams beyond a bound, oldest first.
        if streams.len() >= 64 {
            let mut done: Vec<u64> = streams
                .iter()
                .filter(|(k, s)| s.done && **k != 0)
                .map(|(k, _)| *k)
                .collect();
            done.sort_unstable();
            for k in done.into_iter().take(streams.len() - 32) {
                streams.remove(&k);
            }
        }
        streams.insert(
            id,
            EventStream {
                history: VecDeque::new(),
                next_seq: 1,
                live: Some(tx),
                done: false,
            },
        );
        (id, rx)
    }

    pub fn drop_stream(&self, stream: u64) {
        self.streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&stream);
    }

    pub fn event_id(&self, stream: u64, seq: u64) -> Arc<str> {
        Arc::from(format!("{stream}-{seq}"))
    }

    /// Appends a message to a stream's history and sends it to the live
    /// connection if there is one. `last` ends the stream.
    pub fn push_event(&self, stream: u64, msg: &Value, last: bool) {
        let data: Arc<str> = Arc::from(msg.to_string());
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        let s = streams.entry(stream).or_insert_with(|| EventStream {
            history: VecDeque::new(),
            next_seq: 1,
            live: None,
            done: false,
        });
        if s.done {
            return;
        }
        let seq = s.next_seq;
        s.next_seq += 1;
        s.history.push_back((seq, data.clone(), last));
        while s.history.len() > self.history_limit {
            s.history.pop_front();
        }
        if last {
            s.done = true;
        }
        if let Some(live) = &s.live {
            let id = self.event_id(stream, seq);
            let ok = live.send(Frame::Event { id, data, last }).is_ok();
            if !ok {
                s.live = None;
            } else if last {
                let _ = live.send(Frame::End);
                s.live = None;
            }
        }
    }

    /// Ends the live connection of a stream; the stream stays resumable.
    pub fn close_live(&self, stream: u64) {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = streams.get_mut(&stream)
            && let Some(live) = s.live.take()
        {
            let _ = live.send(Frame::End);
        }
    }

    /// Ends a stream without a final message (a cancelled request).
    pub fn finish_stream(&self, stream: u64) {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = streams.get_mut(&stream) {
            s.done = true;
            if let Some(live) = s.live.take() {
                let _ = live.send(Frame::End);
            }
        }
    }

    /// Attaches a live connection to stream `stream` after replaying the
    /// events after `after_seq`. Stream 0 is created on first use. Returns
    /// `None` for a stream this session never had (or has forgotten).
    pub fn attach(&self, stream: u64, after_seq: u64) -> Option<mpsc::UnboundedReceiver<Frame>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        let s = if stream == 0 {
            streams.entry(0).or_insert_with(|| EventStream {
                history: VecDeque::new(),
                next_seq: 1,
                live: None,
                done: false,
            })
        } else {
            streams.get_mut(&stream)?
        };
        for (seq, data, last) in s.history.iter().filter(|(seq, _, _)| *seq > after_seq) {
            let _ = tx.send(Frame::Event {
                id: self.event_id(stream, *seq),
                data: data.clone(),
                last: *last,
            });
        }
        if s.done {
            let _ = tx.send(Frame::End);
        } else {
            // A new GET replaces an older one on the same stream.
            if let Some(old) = s.live.replace(tx) {
                let _ = old.send(Frame::End);
            }
        }
        Some(rx)
    }

    /// The next sequence number stream 0 will use (for a fresh GET's priming id).
    pub fn stream_position(&self, stream: u64) -> u64 {
        let streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        streams.get(&stream).map(|s| s.next_seq - 1).unwrap_or(0)
    }
}

/// Parses an SSE event id of the form `<stream>-<seq>`.
pub fn parse_event_id(id: &str) -> Option<(u64, u64)> {
    let (s, q) = id.split_once('-')?;
    Some((s.parse().ok()?, q.parse().ok()?))
}

/// All live sessions of one edge, with idle expiry.
pub struct SessionRegistry {
    sessions: RwLock<HashMap<Arc<str>, Arc<Session>>>,
    idle_limit: Duration,
    on_count: Box<dyn Fn(i64) + Send + Sync>,
}

impl SessionRegistry {
    pub fn new(idle_limit: Duration, on_count: impl Fn(i64) + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(Self {
            sessions: RwLock::new(HashMap::new()),
            idle_limit,
            on_count: Box::new(on_count),
        })
    }

    pub fn insert(&self, s: Arc<Session>) {
        let mut map = self.sessions.write().unwrap_or_else(|e| e.into_inner());
        map.insert(s.id.clone(), s);
        (self.on_count)(map.len() as i64);
    }

    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        let s = self
            .sessions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned();
        if let Some(s) = &s {
            s.touch();
        }
        s
    }

    pub fn remove(&self, id: &str) -> Option<Arc<Session>> {
        let mut map = self.sessions.write().unwrap_or_else(|e| e.into_inner());
        let s = map.remove(id);
        (self.on_count)(map.len() as i64);
        if let Some(s) = &s {
            s.closed.cancel();
        }
        s
    }

    pub fn all(&self) -> Vec<Arc<Session>> {
        self.sessions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.sessions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes sessions idle longer than the limit that have nothing in flight.
    pub fn expire_idle(&self) -> usize {
        let expired: Vec<Arc<str>> = self
            .sessions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|s| s.idle_for() > self.idle_limit && s.in_flight_count() == 0)
            .map(|s| s.id.clone())
            .collect();
        for id in &expired {
            self.remove(id);
        }
        expired.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn replay_after_last_event_id() {
        let s = Session::new(TransportKind::StreamableHttp, 16);
        let (id, mut rx) = s.open_stream();
        s.push_event(id, &json!({"n":1}), false);
        s.close_live(id);
        s.push_event(id, &json!({"n":2}), false);
        s.push_event(id, &json!({"n":3}), true);
        let mut seen = vec![];
        while let Ok(f) = rx.try_recv() {
            seen.push(f);
        }
        assert_eq!(seen.len(), 2, "one event then End");
        let mut rx = s.attach(id, 1).unwrap();
        let mut data = vec![];
        while let Ok(Frame::Event { data: d, .. }) = rx.try_recv() {
            data.push(d.to_string());
        }
        assert_eq!(data, vec![r#"{"n":2}"#, r#"{"n":3}"#]);
        assert!(s.attach(999, 0).is_none());
        assert_eq!(parse_event_id("3-7"), Some((3, 7)));
        assert_eq!(parse_event_id("x"), None);
    }

    #[test]
    fn duplicate_in_flight_ids_are_refused() {
        let s = Session::new(TransportKind::Stdio, 4);
        assert!(s.begin_request(&json!(1)).is_some());
        assert!(s.begin_request(&json!(1)).is_none());
        assert!(
            s.begin_request(&json!("1")).is_some(),
            "string and number ids differ"
        );
        assert!(s.cancel_request(&json!(1)));
        s.end_request(&json!(1));
        assert!(!s.cancel_request(&json!(1)));
    }

    #[test]
    fn idle_sessions_expire() {
        let reg = SessionRegistry::new(Duration::from_millis(0), |_| {});
        let s = Session::new(TransportKind::StreamableHttp, 4);
        reg.insert(s.clone());
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(reg.expire_idle(), 1);
        assert!(reg.get(&s.id).is_none());
        assert!(s.closed.is_cancelled());
    }
}
