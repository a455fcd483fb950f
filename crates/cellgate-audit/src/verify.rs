//! Verification of the whole chain: `cellgate audit verify`.

use std::collections::VecDeque;

use cellgate_store::{AUDIT_PAGE_MAX, AuditLog, AuditQuery, AuditRecord, StoredCheckpoint};
use ed25519_dalek::VerifyingKey;
use serde::Serialize;

use crate::AuditError;
use crate::canonical::{from_hex, to_hex};
use crate::chain::{GENESIS, decisions_are_canonical, entry_hash};
use crate::checkpoint::check_signature;
use crate::time::format_rfc3339;

/// Entries (and checkpoints) read per query by [`verify`].
pub const VERIFY_PAGE: u32 = 2000;

/// What is wrong at the first broken place of the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// An entry's content no longer hashes to its stored hash: a field was
    /// edited.
    Edited,
    /// Sequence numbers jump: entries were deleted.
    Missing,
    /// An entry does not link to the one before it (its `prev_hash` is not
    /// that entry's hash): entries were reordered, moved or replaced.
    Reordered,
    /// The chain ends before a point it provably reached (a signed
    /// checkpoint, or the head row): entries were cut off the end.
    Truncated,
    /// A checkpoint's signature does not verify, or its key is not trusted.
    ForgedCheckpoint,
    /// A validly signed checkpoint disagrees with the chain at its sequence
    /// number: the chain was rewritten (and rehashed) after it was signed.
    CheckpointMismatch,
    /// The head row disagrees with the entries, or entries exist past it:
    /// the tables were written around the writer.
    HeadMismatch,
}

impl ProblemKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemKind::Edited => "edited",
            ProblemKind::Missing => "missing",
            ProblemKind::Reordered => "reordered",
            ProblemKind::Truncated => "truncated",
            ProblemKind::ForgedCheckpoint => "forged_checkpoint",
            ProblemKind::CheckpointMismatch => "checkpoint_mismatch",
            ProblemKind::HeadMismatch => "head_mismatch",
        }
    }
}

/// The first broken link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The sequence number where the chain breaks (for a checkpoint
    /// problem, the seq the checkpoint is about; for a truncation, the first
    /// missing seq).
    pub seq: i64,
    pub kind: ProblemKind,
    /// What an intact chain has there.
    pub expected: String,
    /// What is there.
    pub found: String,
    /// One sentence for a human.
    pub detail: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seq {}: {}: {} (expected {}, found {})",
            self.seq,
            self.kind.as_str(),
            self.detail,
            self.expected,
            self.found
        )
    }
}

/// The result of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Entries checked and found intact (up to the first problem).
    pub entries: u64,
    /// Checkpoints whose signature verified and that match the chain.
    pub checkpoints: u64,
    /// The head seq the verification covered (read when it started).
    pub head_seq: i64,
    /// The seq of the newest checkpoint that verified, if any: entries up
    /// to it are covered by a signature, later ones only by the chain.
    pub last_checkpoint_seq: Option<i64>,
    pub first_problem: Option<Problem>,
}

impl VerifyReport {
    pub fn is_intact(&self) -> bool {
        self.first_problem.is_none()
    }
}

/// Verifies the whole chain with [`VERIFY_PAGE`]-sized pages.
///
/// Recomputes every hash from [`GENESIS`], checks that sequence numbers run
/// without gaps and that each entry links to the one before, verifies every
/// checkpoint's signature against `trusted_keys` and that it matches the
/// chain, and that the head row matches the last entry. Stops at the first
/// problem. Memory stays bounded by one page of entries and one of
/// checkpoints, however long the chain.
///
/// Safe to run while writers append: it pins the checkpoints and the head
/// as they are when it starts and checks the chain up to that head.
pub async fn verify(
    log: &AuditLog,
    trusted_keys: &[VerifyingKey],
) -> Result<VerifyReport, AuditError> {
    verify_paged(log, trusted_keys, VERIFY_PAGE).await
}

/// [`verify`] with a chosen page size (tests use small pages to cross page
/// boundaries).
pub async fn verify_paged(
    log: &AuditLog,
    trusted_keys: &[VerifyingKey],
    page: u32,
) -> Result<VerifyReport, AuditError> {
    // The store never returns more than its maximum; the checkpoint cursor
    // takes a short page for the last one.
    let page = page.clamp(1, AUDIT_PAGE_MAX);
    // Checkpoints first, then the head: every checkpoint committed by then
    // is of a seq at or below the head read after it.
    let max_checkpoint_id = log.max_checkpoint_id().await?.unwrap_or(0);
    let head = log.head().await?;
    let through = match &head {
        Some(h) => h.seq,
        None => log.max_seq().await?.unwrap_or(0),
    };
    let mut report = VerifyReport {
        entries: 0,
        checkpoints: 0,
        head_seq: through,
        last_checkpoint_seq: None,
        first_problem: None,
    };
    let mut checkpoints = Checkpoints::new(log, max_checkpoint_id, page);
    let mut prev = GENESIS;
    let mut expected_seq = 1;

    let mut after = 0;
    loop {
        let query = AuditQuery {
            after_seq: after,
            through_seq: Some(through),
            ..AuditQuery::default()
        };
        let rows = log.entries(&query, page).await?;
        let Some(last) = rows.last() else { break };
        after = last.seq;
        for r in &rows {
            if let Err(problem) = check_entry(r, expected_seq, &prev) {
                report.first_problem = Some(problem);
                return Ok(report);
            }
            prev = from_hex(&r.hash).unwrap_or_default();
            report.entries += 1;
            expected_seq = r.seq + 1;
            while let Some(c) = checkpoints.next_at_or_below(r.seq).await? {
                if let Err(problem) = check_checkpoint(&c, Some(r), trusted_keys) {
                    report.first_problem = Some(problem);
                    return Ok(report);
                }
                report.checkpoints += 1;
                report.last_checkpoint_seq = Some(c.checkpoint.seq);
            }
        }
    }
    let last_seq = expected_seq - 1;

    // A checkpoint past the end is signed evidence that entries were cut off.
    if let Some(c) = checkpoints.next_at_or_below(i64::MAX).await? {
        report.first_problem = Some(match check_checkpoint(&c, None, trusted_keys) {
            Err(problem) => problem,
            Ok(()) => Problem {
                seq: last_seq + 1,
                kind: ProblemKind::Truncated,
                expected: format!("entries through seq {}", c.checkpoint.seq),
                found: format!("the chain ends at seq {last_seq}"),
                detail: format!(
                    "checkpoint #{} signed at {} references entry {}, which does not exist: \
                     entries after seq {last_seq} were removed",
                    c.id,
                    format_rfc3339(c.checkpoint.at_ms),
                    c.checkpoint.seq
                ),
            },
        });
        return Ok(report);
    }

    let last_hash = (last_seq > 0).then(|| to_hex(&prev));
    match &head {
        None => {
            report.first_problem = Some(Problem {
                seq: last_seq + 1,
                kind: ProblemKind::HeadMismatch,
                expected: "the chain head row".into(),
                found: "no head row".into(),
                detail: "the audit_head row was deleted".into(),
            });
            return Ok(report);
        }
        Some(h) if h.seq > last_seq => {
            report.first_problem = Some(Problem {
                seq: last_seq + 1,
                kind: ProblemKind::Truncated,
                expected: format!("entries through seq {} (the chain head)", h.seq),
                found: format!("the chain ends at seq {last_seq}"),
                detail: format!(
                    "entries {} to {} are missing from the end",
                    last_seq + 1,
                    h.seq
                ),
            });
            return Ok(report);
        }
        Some(h) if h.hash != last_hash => {
            report.first_problem = Some(Problem {
                seq: h.seq,
                kind: ProblemKind::HeadMismatch,
                expected: last_hash.unwrap_or_else(|| "no hash (empty chain)".into()),
                found: h.hash.clone().unwrap_or_else(|| "no hash".into()),
                detail: "the head row's hash is not the hash of the last entry".into(),
            });
            return Ok(report);
        }
        Some(_) => {}
    }

    // Entries past the head were not written by a writer (which moves the
    // head in the same transaction). Read the maximum first, then the head,
    // so appends in between cannot look like that.
    let max_seq = log.max_seq().await?.unwrap_or(0);
    let now_head = log.head().await?.map_or(0, |h| h.seq);
    if max_seq > now_head {
        report.first_problem = Some(Problem {
            seq: now_head + 1,
            kind: ProblemKind::HeadMismatch,
            expected: format!("no entries after the head (seq {now_head})"),
            found: format!("entries up to seq {max_seq}"),
            detail: "entries were added past the chain head, outside the audit writer".into(),
        });
    }
    Ok(report)
}

/// Checks one entry against its expected position and predecessor.
fn check_entry(r: &AuditRecord, expected_seq: i64, prev: &[u8; 32]) -> Result<(), Problem> {
    if r.seq != expected_seq {
        return Err(Problem {
            seq: expected_seq,
            kind: ProblemKind::Missing,
            expected: format!("seq {expected_seq}"),
            found: format!("seq {}", r.seq),
            detail: if r.seq == expected_seq + 1 {
                format!("entry {expected_seq} was deleted")
            } else {
                format!("entries {expected_seq} to {} were deleted", r.seq - 1)
            },
        });
    }
    let prev_hex = to_hex(prev);
    if r.prev_hash != prev_hex {
        return Err(Problem {
            seq: r.seq,
            kind: ProblemKind::Reordered,
            expected: prev_hex,
            found: r.prev_hash.clone(),
            detail: format!(
                "entry {} does not link to entry {}: entries were reordered, moved or replaced",
                r.seq,
                r.seq - 1
            ),
        });
    }
    if !decisions_are_canonical(&r.decisions) {
        return Err(Problem {
            seq: r.seq,
            kind: ProblemKind::Edited,
            expected: "decisions as canonical JSON".into(),
            found: r.decisions.clone(),
            detail: format!("entry {}'s decisions were rewritten", r.seq),
        });
    }
    let recomputed = to_hex(&entry_hash(prev, r));
    if r.hash != recomputed {
        return Err(Problem {
            seq: r.seq,
            kind: ProblemKind::Edited,
            expected: recomputed,
            found: r.hash.clone(),
            detail: format!(
                "entry {}'s content does not hash to its stored hash: it was edited",
                r.seq
            ),
        });
    }
    Ok(())
}

/// Checks a checkpoint's signature and, when `entry` is the entry at its
/// seq, that it signed that entry's hash.
fn check_checkpoint(
    c: &StoredCheckpoint,
    entry: Option<&AuditRecord>,
    trusted: &[VerifyingKey],
) -> Result<(), Problem> {
    let cp = &c.checkpoint;
    if let Err(why) = check_signature(cp, trusted) {
        return Err(Problem {
            seq: cp.seq,
            kind: ProblemKind::ForgedCheckpoint,
            expected: "a valid signature by a trusted key".into(),
            found: format!("signature {} by key {}", cp.signature, cp.key),
            detail: format!("checkpoint #{}: {why}", c.id),
        });
    }
    if let Some(r) = entry {
        if r.seq != cp.seq {
            return Err(Problem {
                seq: cp.seq,
                kind: ProblemKind::CheckpointMismatch,
                expected: format!("an entry at seq {}", cp.seq),
                found: "no such entry".into(),
                detail: format!(
                    "checkpoint #{} is about seq {}, which is not a position in the chain",
                    c.id, cp.seq
                ),
            });
        }
        if r.hash != cp.hash {
            return Err(Problem {
                seq: cp.seq,
                kind: ProblemKind::CheckpointMismatch,
                expected: cp.hash.clone(),
                found: r.hash.clone(),
                detail: format!(
                    "checkpoint #{} signed at {} does not match the chain: entries up to seq {} \
                     were rewritten after it was signed",
                    c.id,
                    format_rfc3339(cp.at_ms),
                    cp.seq
                ),
            });
        }
    }
    Ok(())
}

/// Checkpoints in `(seq, id)` order, a page at a time.
struct Checkpoints<'a> {
    log: &'a AuditLog,
    max_id: i64,
    page: u32,
    buffered: VecDeque<StoredCheckpoint>,
    after: Option<(i64, i64)>,
    exhausted: bool,
}

impl<'a> Checkpoints<'a> {
    fn new(log: &'a AuditLog, max_id: i64, page: u32) -> Self {
        Checkpoints {
            log,
            max_id,
            page,
            buffered: VecDeque::new(),
            after: None,
            exhausted: max_id == 0,
        }
    }

    /// The next checkpoint if its seq is at most `seq`.
    async fn next_at_or_below(&mut self, seq: i64) -> Result<Option<StoredCheckpoint>, AuditError> {
        if self.buffered.is_empty() && !self.exhausted {
            let page = self
                .log
                .checkpoints(self.after, self.max_id, self.page)
                .await?;
            if page.len() < self.page as usize {
                self.exhausted = true;
            }
            if let Some(last) = page.last() {
                self.after = Some((last.checkpoint.seq, last.id));
            }
            self.buffered.extend(page);
        }
        match self.buffered.front() {
            Some(c) if c.checkpoint.seq <= seq => Ok(self.buffered.pop_front()),
            _ => Ok(None),
        }
    }
}
