//! The hash chain: genesis, the canonical bytes of an entry, and linking.
//!
//! ```text
//! hash(1) = SHA-256(GENESIS      || canonical_entry(1))
//! hash(n) = SHA-256(hash(n - 1)  || canonical_entry(n))
//! ```
//!
//! `||` is plain concatenation of the 32 raw hash bytes and the entry bytes.
//! `canonical_entry` is the canonical JSON (see [`crate::canonical`]) of one
//! object with exactly these members, in this (byte-sorted) order:
//!
//! | key              | value                                                 |
//! |------------------|-------------------------------------------------------|
//! | `args_digest`    | 64 lowercase hex digits, or `null`                    |
//! | `at_ms`          | integer, milliseconds since the Unix epoch            |
//! | `category`       | string or `null` (administrative entries)             |
//! | `decisions`      | array of `{"detail":…,"layer":…,"verdict":…}`         |
//! | `error_code`     | integer or `null`                                     |
//! | `kind`           | `"call"` or `"admin"`                                 |
//! | `latency_us`     | integer                                               |
//! | `message`        | string or `null` (administrative entries)             |
//! | `method`         | string                                                |
//! | `outcome`        | `"ok"`, `"tool_error"` or `"error"`                   |
//! | `principal_id`   | string                                                |
//! | `principal_kind` | string                                                |
//! | `seq`            | integer, the entry's position (1, 2, …)               |
//! | `target`         | string or `null`                                      |
//! | `tenant`         | string                                                |
//! | `v`              | `1`, the version of this encoding                     |
//!
//! Absent values are written as `null`, never left out, so every entry has
//! the same members. `seq` is inside the hashed bytes, so moving an entry
//! changes its hash even where its neighbours would not notice.

use cellgate_store::{AuditRecord, ChainHead};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::AuditEvent;
use crate::canonical::{from_hex, to_canonical, to_hex, write_str};

/// The version written as `v` in every entry.
pub const ENCODING_VERSION: u32 = 1;

/// The `prev_hash` of entry 1: SHA-256 of the ASCII text
/// `cellgate-audit/v1/genesis`.
pub const GENESIS: [u8; 32] = [
    0x27, 0x45, 0x4d, 0xd8, 0xd1, 0x1c, 0x3c, 0xf0, 0x6e, 0x40, 0xf6, 0xd8, 0x71, 0x08, 0x1b, 0x9d,
    0xf0, 0xb6, 0x10, 0x6a, 0xe1, 0xb3, 0x09, 0xaf, 0x61, 0xfe, 0x32, 0xfa, 0xd6, 0xb6, 0xed, 0xf3,
];

/// The text [`GENESIS`] is the SHA-256 of.
pub const GENESIS_LABEL: &str = "cellgate-audit/v1/genesis";

/// The hash the next entry after `head` links to: the head's hash, or
/// [`GENESIS`] for an empty chain. `None` if the head's hash is not valid
/// hex (a hand-edited head row).
pub fn head_hash(head: &ChainHead) -> Option<[u8; 32]> {
    match &head.hash {
        None if head.seq == 0 => Some(GENESIS),
        None => None,
        Some(h) => from_hex(h),
    }
}

/// The canonical bytes of a stored entry (everything except `prev_hash`
/// and `hash`), as described in the module documentation.
///
/// `decisions` is copied as stored: the writer stores canonical JSON there,
/// and [`decisions_are_canonical`] lets a verifier check that it still is.
pub fn canonical_entry(r: &AuditRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(320 + r.decisions.len());
    let opt_str = |out: &mut Vec<u8>, v: Option<&str>| match v {
        Some(s) => write_str(s, out),
        None => out.extend_from_slice(b"null"),
    };
    let int = |out: &mut Vec<u8>, n: i64| out.extend_from_slice(n.to_string().as_bytes());

    out.extend_from_slice(b"{\"args_digest\":");
    opt_str(&mut out, r.args_digest.as_deref());
    out.extend_from_slice(b",\"at_ms\":");
    int(&mut out, r.at_ms);
    out.extend_from_slice(b",\"category\":");
    opt_str(&mut out, r.category.as_deref());
    out.extend_from_slice(b",\"decisions\":");
    out.extend_from_slice(r.decisions.as_bytes());
    out.extend_from_slice(b",\"error_code\":");
    match r.error_code {
        Some(code) => int(&mut out, code),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"kind\":");
    write_str(&r.kind, &mut out);
    out.extend_from_slice(b",\"latency_us\":");
    int(&mut out, r.latency_us);
    out.extend_from_slice(b",\"message\":");
    opt_str(&mut out, r.message.as_deref());
    out.extend_from_slice(b",\"method\":");
    write_str(&r.method, &mut out);
    out.extend_from_slice(b",\"outcome\":");
    write_str(&r.outcome, &mut out);
    out.extend_from_slice(b",\"principal_id\":");
    write_str(&r.principal, &mut out);
    out.extend_from_slice(b",\"principal_kind\":");
    write_str(&r.principal_kind, &mut out);
    out.extend_from_slice(b",\"seq\":");
    int(&mut out, r.seq);
    out.extend_from_slice(b",\"target\":");
    opt_str(&mut out, r.target.as_deref());
    out.extend_from_slice(b",\"tenant\":");
    write_str(&r.tenant, &mut out);
    out.extend_from_slice(b",\"v\":");
    out.extend_from_slice(ENCODING_VERSION.to_string().as_bytes());
    out.push(b'}');
    out
}

/// `SHA-256(prev || canonical_entry(record))`.
pub fn entry_hash(prev: &[u8; 32], record: &AuditRecord) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(canonical_entry(record));
    h.finalize().into()
}

/// Whether a stored `decisions` text is a JSON array in canonical form (what
/// the writer stores). Anything else was written by someone else.
pub fn decisions_are_canonical(text: &str) -> bool {
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Array(_)) => to_canonical(&v) == text.as_bytes(),
        _ => false,
    }
}

/// Places `events` after `head`: assigns consecutive sequence numbers and
/// links each entry to the one before. `None` if the head's hash is not
/// valid hex.
pub fn link(head: &ChainHead, events: &[AuditEvent]) -> Option<Vec<AuditRecord>> {
    let mut prev = head_hash(head)?;
    let mut seq = head.seq;
    let mut out = Vec::with_capacity(events.len());
    for event in events {
        seq += 1;
        let mut record = event.to_record(seq, to_hex(&prev));
        let hash = entry_hash(&prev, &record);
        record.hash = to_hex(&hash);
        prev = hash;
        out.push(record);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DecisionRecord, EntryKind, Outcome};
    use serde_json::json;

    fn event(n: i64) -> AuditEvent {
        AuditEvent {
            at_ms: 1_700_000_000_000 + n,
            tenant: "acme".into(),
            kind: EntryKind::Call,
            principal_id: "alice".into(),
            principal_kind: "user".into(),
            method: "tools/call".into(),
            target: Some("echo".into()),
            args_digest: Some(crate::args_digest(&json!({ "n": n }))),
            outcome: Outcome::Ok,
            error_code: None,
            latency_us: 42,
            decisions: vec![DecisionRecord {
                layer: "auth".into(),
                verdict: "allow".into(),
                detail: None,
            }],
            category: None,
            message: None,
        }
    }

    #[test]
    fn genesis_is_the_hash_of_its_label() {
        let computed: [u8; 32] = Sha256::digest(GENESIS_LABEL.as_bytes()).into();
        assert_eq!(computed, GENESIS);
        assert_eq!(
            to_hex(&GENESIS),
            "27454dd8d11c3cf06e40f6d871081b9df0b6106ae1b309af61fe32fad6b6edf3"
        );
        assert_eq!(head_hash(&ChainHead::empty()), Some(GENESIS));
    }

    #[test]
    fn the_entry_encoding_is_canonical_json_and_stable() {
        let records = link(&ChainHead::empty(), &[event(1)]).unwrap_or_default();
        let r = &records[0];
        let bytes = canonical_entry(r);
        // It is the canonical JSON of itself: sorted keys, no whitespace.
        let parsed: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        assert_eq!(to_canonical(&parsed), bytes);
        // Golden bytes and hash, computed independently of this code (with
        // Python's hashlib from the documented encoding): changing either
        // breaks every stored chain.
        let text = String::from_utf8(bytes.clone()).unwrap_or_default();
        let digest = to_hex(&crate::args_digest(&json!({ "n": 1 })));
        assert_eq!(
            digest,
            "2bfd14f43d17fc7cea24e0917a8879b4b2f880b8baeec1b9d90fbaad655e71bd"
        );
        assert_eq!(
            text,
            format!(
                concat!(
                    r#"{{"args_digest":"{}","at_ms":1700000000001,"category":null,"#,
                    r#""decisions":[{{"detail":null,"layer":"auth","verdict":"allow"}}],"#,
                    r#""error_code":null,"kind":"call","latency_us":42,"message":null,"#,
                    r#""method":"tools/call","outcome":"ok","principal_id":"alice","#,
                    r#""principal_kind":"user","seq":1,"target":"echo","tenant":"acme","v":1}}"#
                ),
                digest
            )
        );
        assert_eq!(r.prev_hash, to_hex(&GENESIS));
        let mut again = Sha256::new();
        again.update(GENESIS);
        again.update(&bytes);
        let again: [u8; 32] = again.finalize().into();
        assert_eq!(r.hash, to_hex(&again));
        assert_eq!(
            r.hash,
            "6d68819888984f5ea4d90a54d2957f821950384a4d252409719c70eb73c6d709"
        );
    }

    #[test]
    fn entries_link_to_their_predecessors() {
        let events: Vec<AuditEvent> = (1..=5).map(event).collect();
        let first = link(&ChainHead::empty(), &events[..2]).unwrap_or_default();
        let head = ChainHead {
            seq: 2,
            hash: Some(first[1].hash.clone()),
        };
        let rest = link(&head, &events[2..]).unwrap_or_default();
        let all = link(&ChainHead::empty(), &events).unwrap_or_default();
        // Chaining in two batches gives the same chain as in one.
        assert_eq!([first, rest].concat(), all);
        let mut prev = GENESIS;
        for (i, r) in all.iter().enumerate() {
            assert_eq!(r.seq, i as i64 + 1);
            assert_eq!(r.prev_hash, to_hex(&prev));
            prev = entry_hash(&prev, r);
            assert_eq!(r.hash, to_hex(&prev));
        }
    }

    #[test]
    fn every_field_is_covered_by_the_hash() {
        let r = link(&ChainHead::empty(), &[event(1)]).unwrap_or_default()[0].clone();
        let base = entry_hash(&GENESIS, &r);
        let edits: Vec<fn(&mut AuditRecord)> = vec![
            |r| r.seq += 1,
            |r| r.at_ms += 1,
            |r| r.tenant.push('x'),
            |r| r.kind = "admin".into(),
            |r| r.principal.push('x'),
            |r| r.principal_kind = "agent".into(),
            |r| r.method.push('x'),
            |r| r.target = None,
            |r| r.args_digest = None,
            |r| r.outcome = "error".into(),
            |r| r.error_code = Some(-1),
            |r| r.latency_us += 1,
            |r| r.decisions = "[]".into(),
            |r| r.category = Some(String::new()),
            |r| r.message = Some(String::new()),
        ];
        for (i, edit) in edits.iter().enumerate() {
            let mut changed = r.clone();
            edit(&mut changed);
            assert_ne!(entry_hash(&GENESIS, &changed), base, "edit {i} not covered");
        }
        // And the predecessor.
        assert_ne!(entry_hash(&[0; 32], &r), base);
    }

    #[test]
    fn decisions_must_be_canonical() {
        assert!(decisions_are_canonical("[]"));
        assert!(decisions_are_canonical(
            r#"[{"detail":null,"layer":"a","verdict":"allow"}]"#
        ));
        assert!(!decisions_are_canonical("[ ]"));
        assert!(!decisions_are_canonical(
            r#"[{"layer":"a","detail":null,"verdict":"allow"}]"#
        ));
        assert!(!decisions_are_canonical("{}"));
        assert!(!decisions_are_canonical("not json"));
    }

    #[test]
    fn a_bad_head_hash_cannot_be_linked_to() {
        let head = ChainHead {
            seq: 3,
            hash: Some("zz".into()),
        };
        assert!(link(&head, &[event(1)]).is_none());
        let headless = ChainHead { seq: 3, hash: None };
        assert!(head_hash(&headless).is_none());
    }
}
