//! The tamper-evident audit log of cellgate.
//!
//! Every call through the pipeline, and every administrative event recorded
//! explicitly, becomes one entry of a single hash chain:
//! `hash = SHA-256(prev_hash || canonical_entry)`, starting from a fixed
//! [`GENESIS`], with gap-free sequence numbers. An entry holds the time,
//! tenant, principal, method, target, the SHA-256 of the canonical
//! arguments (never the arguments), the outcome and error code, the latency
//! and every pipeline layer's decision. Instances periodically sign
//! checkpoints `(seq, hash, time)` with their Ed25519 key. Anyone holding the
//! public keys can [`verify`] the chain and learn the first place where it
//! was edited, cut, reordered or forged.
//!
//! The pieces:
//! - [`spawn_writer`] starts the one writer task per process (group commit:
//!   a batch per transaction, chained under the head-row lock, so several
//!   replicas on one PostgreSQL keep one linear chain) and returns the
//!   [`AuditSink`] that feeds it and the [`AuditWriter`] to shut it down;
//! - [`AuditStage`] / [`AuditLayer`] record calls; it goes outside the
//!   security layers and fails closed (a call whose entry cannot be queued
//!   is refused before it runs);
//! - [`AuditSink::append`] records an administrative entry
//!   ([`AuditEvent::admin`]) and returns its [`Receipt`];
//! - [`verify`] and [`export_jsonl`] / [`export_jsonl_async`] serve
//!   `cellgate audit verify|export`; tenants read their own entries through
//!   `cellgate_store::TenantScope::audit` (shown with [`entry_json`]).
//!
//! It is *not* the metering call log (`cellgate_store::CallLog`: counts and
//! latency without integrity), not a general event bus or log shipper (export
//! is pull-based JSON lines), and not key management: the caller passes the
//! instance's [`ed25519_dalek::SigningKey`] in and the verifier's trusted
//! [`ed25519_dalek::VerifyingKey`]s. Tamper *evidence* is what it gives, not
//! tamper *prevention*: someone with write access to the database can
//! change rows; verification shows that, and where. The encoding, genesis,
//! locking, back-pressure and checkpoint decisions are recorded in the
//! crate's README.

mod canonical;
mod chain;
mod checkpoint;
mod error;
mod event;
mod export;
mod metrics;
mod stage;
mod time;
mod verify;
mod writer;

pub use canonical::{args_digest, from_hex, to_canonical, to_hex, write_canonical};
pub use chain::{
    ENCODING_VERSION, GENESIS, GENESIS_LABEL, canonical_entry, decisions_are_canonical, entry_hash,
    head_hash, link,
};
pub use checkpoint::{
    CHECKPOINT_DOMAIN, SignatureProblem, check_signature, checkpoint_message, sign_checkpoint,
};
pub use error::{AuditError, Refusal};
pub use event::{AuditEvent, DecisionRecord, EntryKind, Outcome};
pub use export::{
    EXPORT_PAGE, ExportFilter, ExportSummary, entry_json, export_jsonl, export_jsonl_async,
};
pub use metrics::{AuditMetrics, RefusalLabel};
pub use stage::{AuditLayer, AuditStage, PendingEntry};
pub use time::{format_rfc3339, parse_rfc3339};
pub use verify::{Problem, ProblemKind, VERIFY_PAGE, VerifyReport, verify, verify_paged};
pub use writer::{
    AuditSink, AuditWriter, Backpressure, Receipt, SinkStatus, Slot, WriterConfig, spawn_writer,
};

/// The signing and verifying key types, re-exported so callers need not
/// depend on `ed25519-dalek` themselves.
pub use ed25519_dalek::{SigningKey, VerifyingKey};
