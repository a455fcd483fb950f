//! What an entry records, before it has a place in the chain.

use cellgate_kernel::{Decision, Principal};
use cellgate_store::{
    AUDIT_DECISIONS_MAX_BYTES, AUDIT_MESSAGE_MAX_BYTES, AUDIT_TEXT_MAX_BYTES, AuditRecord,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::canonical::{to_hex, write_str};

/// What kind of event an entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A call through the pipeline (including refused ones).
    Call,
    /// An administrative event recorded explicitly (`create_audit_log`).
    Admin,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Call => "call",
            EntryKind::Admin => "admin",
        }
    }
}

/// How a call ended: the same labels as the metering layer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A result.
    Ok,
    /// A `CallToolResult` with `isError: true`: the tool ran and failed.
    ToolError,
    /// A protocol error (refused, invalid, failed); see the error code.
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::ToolError => "tool_error",
            Outcome::Error => "error",
        }
    }

    /// The outcome of a pipeline result.
    pub fn of(result: &Result<Value, cellgate_kernel::McpError>) -> Outcome {
        match result {
            Ok(v) if v.get("isError").and_then(Value::as_bool) == Some(true) => Outcome::ToolError,
            Ok(_) => Outcome::Ok,
            Err(_) => Outcome::Error,
        }
    }
}

/// One layer's decision about a call, as recorded in an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionRecord {
    pub layer: String,
    /// `allow`, `deny`, `flag` or `modify` (the kernel's `Verdict`).
    pub verdict: String,
    pub detail: Option<String>,
}

impl From<&Decision> for DecisionRecord {
    fn from(d: &Decision) -> Self {
        // Through serde, so a verdict added to the kernel later is recorded
        // by its own name rather than failing to compile here.
        let verdict = match serde_json::to_value(d.verdict) {
            Ok(Value::String(s)) => s,
            _ => format!("{:?}", d.verdict).to_lowercase(),
        };
        DecisionRecord {
            layer: d.layer.to_owned(),
            verdict,
            detail: d.detail.clone(),
        }
    }
}

/// An event to append: everything an entry records except its place in the
/// chain (`seq`, `prev_hash`, `hash`), which the writer assigns.
///
/// Arguments are never recorded, only their digest. Text longer than the
/// store accepts is cut (and marked with `…`) and NUL characters become
/// U+FFFD before the entry is hashed, so what is hashed is what is stored
/// and no event can be refused for its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
    pub tenant: String,
    pub kind: EntryKind,
    pub principal_id: String,
    /// `user`, `agent`, `service` or `anonymous` (the kernel's `PrincipalKind`).
    pub principal_kind: String,
    /// The JSON-RPC method of a call; `admin` for administrative entries.
    pub method: String,
    /// The tool, prompt or resource a call was about.
    pub target: Option<String>,
    /// SHA-256 of the canonical JSON of the call's arguments.
    pub args_digest: Option<[u8; 32]>,
    pub outcome: Outcome,
    /// The JSON-RPC error code when `outcome` is `error`.
    pub error_code: Option<i64>,
    pub latency_us: u64,
    /// Every layer's decision, in the order they were made.
    pub decisions: Vec<DecisionRecord>,
    /// The category of an administrative entry.
    pub category: Option<String>,
    /// The free text of an administrative entry.
    pub message: Option<String>,
}

/// Longest recorded `detail` of one decision, in bytes.
const DECISION_DETAIL_MAX_BYTES: usize = 1024;
/// Longest recorded layer name or verdict, in bytes.
const DECISION_NAME_MAX_BYTES: usize = 128;
/// Room kept for the marker that replaces decisions which do not fit.
const DECISIONS_MARKER_ROOM: usize = 160;

impl AuditEvent {
    /// An administrative entry: a free-text event with a category, recorded
    /// by `principal` under `tenant` (the admin tool `create_audit_log`).
    pub fn admin(
        tenant: &str,
        principal: &Principal,
        category: impl Into<String>,
        message: impl Into<String>,
    ) -> AuditEvent {
        AuditEvent {
            at_ms: now_ms(),
            tenant: tenant.to_owned(),
            kind: EntryKind::Admin,
            principal_id: principal.id.to_string(),
            principal_kind: principal.kind.as_str().to_owned(),
            method: "admin".to_owned(),
            target: None,
            args_digest: None,
            outcome: Outcome::Ok,
            error_code: None,
            latency_us: 0,
            decisions: Vec::new(),
            category: Some(category.into()),
            message: Some(message.into()),
        }
    }

    /// A request refused before it had an identity (a bad or missing
    /// credential at the HTTP layer): anonymous, method `http`, the path as
    /// target, the HTTP status as error code, and `authenticate` denying
    /// with `reason`. Recorded under `tenant`, normally the operator's.
    pub fn refused_request(tenant: &str, path: &str, status: u16, reason: &str) -> AuditEvent {
        AuditEvent {
            at_ms: now_ms(),
            tenant: tenant.to_owned(),
            kind: EntryKind::Call,
            principal_id: "anonymous".to_owned(),
            principal_kind: cellgate_kernel::PrincipalKind::Anonymous
                .as_str()
                .to_owned(),
            method: "http".to_owned(),
            target: Some(path.to_owned()),
            args_digest: None,
            outcome: Outcome::Error,
            error_code: Some(i64::from(status)),
            latency_us: 0,
            decisions: vec![DecisionRecord {
                layer: "authenticate".to_owned(),
                verdict: "deny".to_owned(),
                detail: Some(reason.to_owned()),
            }],
            category: None,
            message: None,
        }
    }

    /// The stored form at `seq` after `prev_hash`, with an empty `hash`
    /// (the chain fills it in). Cuts over-long text as described on the type.
    pub(crate) fn to_record(&self, seq: i64, prev_hash: String) -> AuditRecord {
        AuditRecord {
            seq,
            at_ms: self.at_ms,
            tenant: clean(&self.tenant, AUDIT_TEXT_MAX_BYTES),
            kind: self.kind.as_str().to_owned(),
            principal: clean(&self.principal_id, AUDIT_TEXT_MAX_BYTES),
            principal_kind: clean(&self.principal_kind, AUDIT_TEXT_MAX_BYTES),
            method: clean(&self.method, AUDIT_TEXT_MAX_BYTES),
            target: self
                .target
                .as_deref()
                .map(|t| clean(t, AUDIT_TEXT_MAX_BYTES)),
            args_digest: self.args_digest.map(|d| to_hex(&d)),
            outcome: self.outcome.as_str().to_owned(),
            error_code: self.error_code,
            latency_us: i64::try_from(self.latency_us).unwrap_or(i64::MAX),
            decisions: decisions_json(&self.decisions),
            category: self
                .category
                .as_deref()
                .map(|c| clean(c, AUDIT_TEXT_MAX_BYTES)),
            message: self
                .message
                .as_deref()
                .map(|m| clean(m, AUDIT_MESSAGE_MAX_BYTES)),
            prev_hash,
            hash: String::new(),
        }
    }
}

/// Milliseconds since the Unix epoch; a clock before 1970 reads as 0.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `s` without NUL (PostgreSQL text cannot hold it) and at most `max` bytes,
/// cut at a character boundary and ending in `…` when cut.
pub(crate) fn clean(s: &str, max: usize) -> String {
    const MARK: &str = "…";
    let mut out = if s.contains('\0') {
        s.replace('\0', "\u{fffd}")
    } else {
        s.to_owned()
    };
    if out.len() > max {
        let keep = out.floor_char_boundary(max.saturating_sub(MARK.len()));
        out.truncate(keep);
        out.push_str(MARK);
    }
    out
}

/// The canonical JSON array of `decisions`: objects with the keys `detail`
/// (string or null), `layer` and `verdict`, in that (sorted) order. Kept
/// under the store's limit: details and names are cut, and decisions that
/// no longer fit are replaced by one marker decision saying how many.
pub(crate) fn decisions_json(decisions: &[DecisionRecord]) -> String {
    let budget = AUDIT_DECISIONS_MAX_BYTES - DECISIONS_MARKER_ROOM;
    let mut out = Vec::with_capacity(64 * decisions.len() + 2);
    out.push(b'[');
    let mut item = Vec::new();
    for (i, d) in decisions.iter().enumerate() {
        item.clear();
        write_decision(
            &mut item,
            d.detail
                .as_deref()
                .map(|t| clean(t, DECISION_DETAIL_MAX_BYTES))
                .as_deref(),
            &clean(&d.layer, DECISION_NAME_MAX_BYTES),
            &clean(&d.verdict, DECISION_NAME_MAX_BYTES),
        );
        if out.len() + 1 + item.len() + 1 > budget {
            let omitted = decisions.len() - i;
            if i > 0 {
                out.push(b',');
            }
            write_decision(
                &mut out,
                Some(&format!(
                    "{omitted} more decisions not recorded (too large)"
                )),
                "audit",
                "flag",
            );
            break;
        }
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&item);
    }
    out.push(b']');
    // Only string literals and ASCII punctuation were written.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn write_decision(out: &mut Vec<u8>, detail: Option<&str>, layer: &str, verdict: &str) {
    out.extend_from_slice(b"{\"detail\":");
    match detail {
        Some(d) => write_str(d, out),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"layer\":");
    write_str(layer, out);
    out.extend_from_slice(b",\"verdict\":");
    write_str(verdict, out);
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::to_canonical;

    fn decision(layer: &str, verdict: &str, detail: Option<&str>) -> DecisionRecord {
        DecisionRecord {
            layer: layer.into(),
            verdict: verdict.into(),
            detail: detail.map(str::to_owned),
        }
    }

    #[test]
    fn decisions_are_canonical_json() {
        let ds = [
            decision("auth", "allow", None),
            decision(
                "authorize",
                "deny",
                Some("role \"viewer\" lacks tools:call"),
            ),
        ];
        let text = decisions_json(&ds);
        let parsed: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert_eq!(to_canonical(&parsed), text.as_bytes());
        assert_eq!(
            text,
            r#"[{"detail":null,"layer":"auth","verdict":"allow"},{"detail":"role \"viewer\" lacks tools:call","layer":"authorize","verdict":"deny"}]"#
        );
        assert_eq!(decisions_json(&[]), "[]");
    }

    #[test]
    fn too_many_decisions_are_summarised_within_the_limit() {
        let big = "d".repeat(5000);
        let ds: Vec<DecisionRecord> = (0..200)
            .map(|i| decision(&format!("layer{i}"), "flag", Some(&big)))
            .collect();
        let text = decisions_json(&ds);
        assert!(text.len() <= AUDIT_DECISIONS_MAX_BYTES, "{}", text.len());
        let parsed: Vec<DecisionRecord> = serde_json::from_str(&text).unwrap_or_default();
        assert!(parsed.len() > 10 && parsed.len() < 200, "{}", parsed.len());
        let last = parsed.last().cloned();
        assert_eq!(last.as_ref().map(|d| d.layer.as_str()), Some("audit"));
        assert!(
            last.and_then(|d| d.detail)
                .is_some_and(|d| d.ends_with("more decisions not recorded (too large)")),
        );
        // Every detail was cut to its limit.
        assert!(
            parsed
                .iter()
                .all(|d| d.detail.as_ref().is_none_or(|t| t.len() <= 1024))
        );
    }

    #[test]
    fn text_is_cleaned_at_char_boundaries() {
        assert_eq!(clean("a\0b", 10), "a\u{fffd}b");
        assert_eq!(clean("short", 10), "short");
        let cut = clean(&"é".repeat(10), 9);
        assert!(cut.len() <= 9 && cut.ends_with('…'), "{cut}");
        // 9 bytes: three two-byte characters and the three-byte marker.
        assert_eq!(cut, "ééé…");
    }

    #[test]
    fn records_fit_the_store_limits() {
        let p = Principal::anonymous();
        let mut e = AuditEvent::admin("acme", &p, "c".repeat(9000), "m\0".repeat(20_000));
        e.target = Some("t".repeat(5000));
        let r = e.to_record(1, "00".repeat(32));
        assert!(
            r.category
                .as_ref()
                .is_some_and(|c| c.len() <= AUDIT_TEXT_MAX_BYTES)
        );
        assert!(
            r.target
                .as_ref()
                .is_some_and(|c| c.len() <= AUDIT_TEXT_MAX_BYTES)
        );
        let message = r.message.unwrap_or_default();
        assert!(message.len() <= AUDIT_MESSAGE_MAX_BYTES && !message.contains('\0'));
        assert_eq!((r.kind.as_str(), r.method.as_str()), ("admin", "admin"));
        assert_eq!(r.principal_kind, "anonymous");
    }
}
