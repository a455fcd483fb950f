//! Multi-round-trip requests (SEP-2322, revision 2026-07-28).
//!
//! A stateless request has no connection on which the server could ask the
//! client something. Instead the call runs until it asks; the ask is not
//! sent but collected, the call ends, and the client receives an
//! input-required result naming every collected request. The client retries
//! the same request with `inputResponses` (keyed like the requests) and the
//! echoed `requestState`; the call runs again from the start and this time
//! each ask is answered from what the client sent. Answers of earlier rounds
//! travel in `requestState`, sealed with an HMAC so the client cannot forge
//! or alter them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cellgate_kernel::{BoxFuture, ClientPeer, LogLevel, McpError, codes};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

/// Methods whose results may be input-required (the spec's list, less the
/// removed `tasks/result`).
pub const INPUT_METHODS: [&str; 3] = ["tools/call", "prompts/get", "resources/read"];

/// How long a `requestState` stays valid: long enough for a human to answer
/// an elicitation, short enough that a leaked state soon becomes useless.
pub const STATE_LIFETIME: Duration = Duration::from_secs(15 * 60);

type HmacSha256 = Hmac<Sha256>;

/// Why a `requestState` was refused. Every case is answered with -32602.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("params.requestState is not a state this server issued")]
    Malformed,
    #[error("params.requestState failed its integrity check (it was altered or forged)")]
    Tampered,
    #[error("params.requestState has expired; start the request again without it")]
    Expired,
    #[error("params.requestState belongs to a different request or caller")]
    OtherRequest,
}

impl From<StateError> for McpError {
    fn from(e: StateError) -> Self {
        McpError::invalid_params(e.to_string())
    }
}

/// What a sealed `requestState` carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SealedState {
    /// Binds the state to one request of one caller (see [`RequestBinding`]).
    binding: String,
    /// Unix seconds after which the state is refused.
    expires: u64,
    /// Answers of earlier rounds, by input key.
    answers: Map<String, Value>,
}

/// Identifies "the same request by the same caller" across rounds: a digest
/// of tenant, principal, method, target and arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestBinding(String);

impl RequestBinding {
    pub fn new(owner: &str, method: &str, params: &Map<String, Value>) -> Self {
        let mut h = Sha256::new();
        for part in [
            owner,
            method,
            params.get("name").and_then(Value::as_str).unwrap_or(""),
            params.get("uri").and_then(Value::as_str).unwrap_or(""),
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        h.update(params.get("arguments").unwrap_or(&Value::Null).to_string());
        Self(hex(&h.finalize()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Seals and opens `requestState` with a key that lives as long as the
/// process: a restart invalidates outstanding states, which only costs the
/// client a fresh first round.
pub struct StateSealer {
    key: [u8; 32],
}

impl StateSealer {
    pub fn random() -> Self {
        Self {
            key: rand::random(),
        }
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.key).expect("HMAC accepts any key length")
    }

    fn seal_at(&self, binding: &RequestBinding, answers: Map<String, Value>, now: u64) -> String {
        let state = SealedState {
            binding: binding.0.clone(),
            expires: now + STATE_LIFETIME.as_secs(),
            answers,
        };
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&state).unwrap_or_default());
        let mut mac = self.mac();
        mac.update(body.as_bytes());
        let tag = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{body}.{tag}")
    }

    pub fn seal(&self, binding: &RequestBinding, answers: Map<String, Value>) -> String {
        self.seal_at(binding, answers, now_secs())
    }

    fn open_at(
        &self,
        token: &str,
        binding: &RequestBinding,
        now: u64,
    ) -> Result<Map<String, Value>, StateError> {
        let (body, tag) = token.split_once('.').ok_or(StateError::Malformed)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| StateError::Tampered)?;
        let mut mac = self.mac();
        mac.update(body.as_bytes());
        // `verify_slice` compares in constant time.
        mac.verify_slice(&tag).map_err(|_| StateError::Tampered)?;
        let raw = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| StateError::Malformed)?;
        let state: SealedState = serde_json::from_slice(&raw).map_err(|_| StateError::Malformed)?;
        if state.expires < now {
            return Err(StateError::Expired);
        }
        if state.binding != binding.0 {
            return Err(StateError::OtherRequest);
        }
        Ok(state.answers)
    }

    /// Verifies a state and returns the answers it carries.
    pub fn open(
        &self,
        token: &str,
        binding: &RequestBinding,
    ) -> Result<Map<String, Value>, StateError> {
        self.open_at(token, binding, now_secs())
    }
}

/// One round of an input-gathering request: the answers known so far and
/// the asks that found none.
pub struct InputRound {
    binding: RequestBinding,
    answers: Map<String, Value>,
    pending: Mutex<BTreeMap<String, Value>>,
    invalid: Mutex<Option<McpError>>,
    next_auto: AtomicU64,
}

impl InputRound {
    /// Reads `inputResponses` and `requestState` from a request's params.
    pub fn from_params(
        sealer: &StateSealer,
        binding: RequestBinding,
        params: &Map<String, Value>,
    ) -> Result<Self, McpError> {
        let mut answers = match params.get("requestState") {
            None => Map::new(),
            Some(Value::String(s)) => sealer.open(s, &binding)?,
            Some(_) => {
                return Err(McpError::invalid_params(
                    "params.requestState must be a string",
                ));
            }
        };
        match params.get("inputResponses") {
            None => {}
            Some(Value::Object(fresh)) => {
                // Answers of this round win over older ones under the same key.
                answers.extend(fresh.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            Some(_) => {
                return Err(McpError::invalid_params(
                    "params.inputResponses must be an object mapping input keys to the client's results",
                ));
            }
        }
        Ok(Self {
            binding,
            answers,
            pending: Mutex::new(BTreeMap::new()),
            invalid: Mutex::new(None),
            next_auto: AtomicU64::new(1),
        })
    }

    /// The key for an ask the provider did not name: the same on every
    /// round because the call replays its asks in the same order.
    fn auto_key(&self, method: &str) -> String {
        let n = self.next_auto.fetch_add(1, Ordering::Relaxed);
        let kind = method.split('/').next().unwrap_or("input");
        format!("{kind}-{n}")
    }

    fn ask(&self, key: &str, method: &str, params: Value) -> Result<Value, McpError> {
        match self.answers.get(key) {
            Some(Value::Object(answer)) => Ok(Value::Object(answer.clone())),
            Some(other) => {
                let e = McpError::invalid_params(format!(
                    "params.inputResponses.{key} must be the client's result object for {method}, got {other}"
                ));
                *self.invalid.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.clone());
                Err(e)
            }
            None => {
                self.pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(
                        key.to_owned(),
                        json!({ "method": method, "params": params }),
                    );
                Err(McpError::new(
                    codes::SERVER_ERROR,
                    format!("{method}: input required; the client answers in its next round"),
                ))
            }
        }
    }

    /// Turns the call's own outcome into the round's outcome: a bad answer
    /// is the client's protocol error, and any unanswered ask makes the
    /// result input-required (whatever the provider made of the ask's error).
    pub fn finish(
        &self,
        sealer: &StateSealer,
        outcome: Result<Value, McpError>,
    ) -> Result<Value, McpError> {
        if let Some(e) = self
            .invalid
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            return Err(e);
        }
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        if pending.is_empty() {
            return outcome;
        }
        let requests: Map<String, Value> = pending.into_iter().collect();
        Ok(json!({
            "resultType": "input_required",
            "inputRequests": requests,
            "requestState": sealer.seal(&self.binding, self.answers.clone()),
        }))
    }

    /// Whether an ask of this round found no answer.
    pub fn has_pending(&self) -> bool {
        !self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }
}

/// The peer of a stateless call: notifications go to the request's stream,
/// asks are answered from the round or collected for the client.
pub struct StatelessPeer {
    pub inner: Arc<dyn ClientPeer>,
    /// `None` for methods that may not be input-required.
    pub round: Option<Arc<InputRound>>,
    pub method: String,
}

impl StatelessPeer {
    fn ask(&self, key: Option<&str>, method: &str, params: Value) -> Result<Value, McpError> {
        let Some(round) = &self.round else {
            return Err(McpError::new(
                codes::SERVER_ERROR,
                format!(
                    "{method}: a stateless {} request cannot ask the client anything",
                    self.method
                ),
            ));
        };
        let key = key.map_or_else(|| round.auto_key(method), str::to_owned);
        round.ask(&key, method, params)
    }
}

impl ClientPeer for StatelessPeer {
    fn notify(&self, method: &str, params: Value) {
        self.inner.notify(method, params);
    }
    fn request(&self, method: &str, params: Value) -> BoxFuture<'static, Result<Value, McpError>> {
        let r = self.ask(None, method, params);
        Box::pin(async move { r })
    }
    fn request_named(
        &self,
        key: &str,
        method: &str,
        params: Value,
    ) -> BoxFuture<'static, Result<Value, McpError>> {
        let r = self.ask(Some(key), method, params);
        Box::pin(async move { r })
    }
    fn log_enabled(&self, level: LogLevel) -> bool {
        self.inner.log_enabled(level)
    }
    fn close_stream(&self) {
        self.inner.close_stream();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn state_round_trips_and_refuses_tampering() {
        let s = StateSealer::random();
        let b = RequestBinding::new("t\0p", "tools/call", &params(json!({"name":"x"})));
        let mut answers = Map::new();
        answers.insert("a".into(), json!({"ok": true}));
        let token = s.seal(&b, answers.clone());
        assert_eq!(s.open(&token, &b).unwrap(), answers);
        assert_eq!(
            s.open(&format!("{token}-TAMPERED"), &b),
            Err(StateError::Tampered)
        );
        let (body, tag) = token.split_once('.').unwrap();
        let mut forged = body.to_owned();
        forged.replace_range(0..1, if &body[..1] == "A" { "B" } else { "A" });
        assert_eq!(
            s.open(&format!("{forged}.{tag}"), &b),
            Err(StateError::Tampered)
        );
        assert_eq!(s.open("no-dot", &b), Err(StateError::Malformed));
        let other = RequestBinding::new("t\0p", "tools/call", &params(json!({"name":"y"})));
        assert_eq!(s.open(&token, &other), Err(StateError::OtherRequest));
        assert_eq!(
            StateSealer::random().open(&token, &b),
            Err(StateError::Tampered),
            "another process's key does not verify"
        );
        let old = s.seal_at(&b, Map::new(), 0);
        assert_eq!(s.open(&old, &b), Err(StateError::Expired));
    }

    #[test]
    fn unanswered_asks_make_the_result_input_required() {
        let s = StateSealer::random();
        let b = RequestBinding::new("o", "tools/call", &Map::new());
        let round = InputRound::from_params(
            &s,
            b.clone(),
            &params(json!({"inputResponses": {"a": {"x": 1}, "extra": {"y": 2}}})),
        )
        .unwrap();
        assert_eq!(
            round.ask("a", "roots/list", json!({})).unwrap(),
            json!({"x": 1})
        );
        assert!(round.ask("b", "roots/list", json!({})).is_err());
        let r = round.finish(&s, Ok(json!({"content": []}))).unwrap();
        assert_eq!(r["resultType"], "input_required");
        assert_eq!(r["inputRequests"]["b"]["method"], "roots/list");
        // The next round carries "a" in the state and "b" in inputResponses.
        let next = InputRound::from_params(
            &s,
            b,
            &params(
                json!({"inputResponses": {"b": {"roots": []}}, "requestState": r["requestState"]}),
            ),
        )
        .unwrap();
        assert!(next.ask("a", "roots/list", json!({})).is_ok());
        assert!(next.ask("b", "roots/list", json!({})).is_ok());
        assert_eq!(next.finish(&s, Ok(json!(1))).unwrap(), json!(1));
    }

    #[test]
    fn bad_answers_and_bad_params_are_protocol_errors() {
        let s = StateSealer::random();
        let b = RequestBinding::new("o", "tools/call", &Map::new());
        for bad in [
            json!({"inputResponses": null}),
            json!({"inputResponses": [1]}),
            json!({"requestState": 7}),
        ] {
            let e = InputRound::from_params(&s, b.clone(), &params(bad))
                .err()
                .unwrap();
            assert_eq!(e.code, codes::INVALID_PARAMS);
        }
        let round =
            InputRound::from_params(&s, b, &params(json!({"inputResponses": {"a": 12345}})))
                .unwrap();
        assert!(round.ask("a", "elicitation/create", json!({})).is_err());
        let e = round.finish(&s, Ok(json!({}))).unwrap_err();
        assert_eq!(e.code, codes::INVALID_PARAMS);
    }
}
