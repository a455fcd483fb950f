//! Rows of the tamper-evident audit chain.
//!
//! This module stores and reads; it does not hash, sign or verify: the chain
//! rules (canonical encoding, genesis, signatures) belong to `cellgate-audit`.
//! What it guarantees is the shape of an append: [`AuditLog::append`] locks
//! the chain head row, reads the head inside that transaction, lets the
//! caller build the batch from it, checks that the batch continues the head
//! (consecutive sequence numbers, each `prev_hash` the hash before it) and
//! writes entries, head and optional checkpoint in one transaction. With
//! several appenders on one PostgreSQL database (replicas), the row lock
//! serialises them, so the chain stays linear.
//!
//! [`AuditLog`] (from [`crate::Store::audit`]) is the instance-wide view for
//! administrators: append, verify, export. [`TenantAuditLog`] (from
//! [`crate::TenantScope::audit`]) lists one tenant's entries only.

use serde::{Deserialize, Serialize};
use sqlx::{ColumnIndex, Decode, Row, Type};

use crate::backend::{Backend, on_backend};
use crate::documents::clamp_limit;
use crate::{StoreError, TenantId};

/// Longest accepted short text field of an [`AuditRecord`] (tenant,
/// principal, method, target, …), in bytes.
pub const AUDIT_TEXT_MAX_BYTES: usize = 4096;

/// Longest accepted free-text `message` of an administrative entry, in bytes.
pub const AUDIT_MESSAGE_MAX_BYTES: usize = 16 * 1024;

/// Longest accepted `decisions` JSON text, in bytes.
pub const AUDIT_DECISIONS_MAX_BYTES: usize = 64 * 1024;

/// Largest page [`AuditLog::entries`] and [`AuditLog::checkpoints`] return.
pub const AUDIT_PAGE_MAX: u32 = 10_000;

/// Rows per INSERT statement: 256 rows × 17 parameters stays well under the
/// bind-parameter limits of both backends (SQLite 32766, PostgreSQL 65535).
const ROWS_PER_STATEMENT: usize = 256;

/// One stored entry of the chain, every column as text or integer.
///
/// The store does not interpret `kind`, `outcome`, `decisions` or the
/// hashes beyond their shape; `cellgate-audit` gives them meaning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the chain: 1, 2, 3, … without gaps.
    pub seq: i64,
    /// When the event happened, in milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// The tenant the event belongs to (not necessarily a registered one:
    /// refused calls are recorded under whatever tenant they claimed).
    pub tenant: String,
    /// `call` or `admin`.
    pub kind: String,
    pub principal: String,
    pub principal_kind: String,
    pub method: String,
    pub target: Option<String>,
    /// Lowercase hex SHA-256 of the canonical arguments.
    pub args_digest: Option<String>,
    pub outcome: String,
    pub error_code: Option<i64>,
    pub latency_us: i64,
    /// JSON array text of the layers' decisions.
    pub decisions: String,
    pub category: Option<String>,
    pub message: Option<String>,
    /// Lowercase hex SHA-256 of the previous entry (the genesis value for
    /// the first).
    pub prev_hash: String,
    /// Lowercase hex SHA-256 of this entry.
    pub hash: String,
}

/// The newest entry of the chain as the head row records it: `seq` 0 and no
/// hash for an empty chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHead {
    pub seq: i64,
    pub hash: Option<String>,
}

impl ChainHead {
    /// The head of a chain without entries.
    pub fn empty() -> ChainHead {
        ChainHead { seq: 0, hash: None }
    }
}

/// A signed statement that the chain had `hash` at `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditCheckpoint {
    pub seq: i64,
    /// Lowercase hex hash of the entry at `seq`.
    pub hash: String,
    /// When the checkpoint was made, in milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// The signer's public key, lowercase hex (64 characters for Ed25519).
    pub key: String,
    /// The signature, lowercase hex (128 characters for Ed25519).
    pub signature: String,
}

/// A checkpoint as stored, with the id that orders checkpoints by creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCheckpoint {
    pub id: i64,
    pub checkpoint: AuditCheckpoint,
}

/// What [`AuditLog::append`]'s builder returns: entries continuing the head
/// it was given, and optionally a checkpoint of the new head.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditBatch {
    pub entries: Vec<AuditRecord>,
    pub checkpoint: Option<AuditCheckpoint>,
}

/// The result of a committed append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The head before the batch (as read under the lock).
    pub previous: ChainHead,
    /// The head after it.
    pub head: ChainHead,
    /// Whether a checkpoint was stored with the batch.
    pub checkpointed: bool,
}

/// A filter over the instance-wide chain, for verification and export.
/// Results always come in ascending `seq` order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only entries with a larger `seq` (keyset pagination; 0 for all).
    pub after_seq: i64,
    /// Only entries up to and including this `seq`.
    pub through_seq: Option<i64>,
    /// Only entries at or after this time (milliseconds since the epoch).
    pub since_ms: Option<i64>,
    /// Only this tenant's entries.
    pub tenant: Option<TenantId>,
}

/// The whole chain, across tenants: the administrators' view. Obtainable
/// through [`crate::Store::audit`].
#[derive(Clone)]
pub struct AuditLog {
    pub(crate) backend: Backend,
}

/// One tenant's entries, read-only. Obtainable only through
/// [`crate::TenantScope::audit`]; every query binds the scope's tenant.
#[derive(Clone)]
pub struct TenantAuditLog {
    pub(crate) backend: Backend,
    pub(crate) tenant: TenantId,
}

const COLUMNS: &str = "seq, at_ms, tenant, kind, principal, principal_kind, method, target, \
     args_digest, outcome, error_code, latency_us, decisions, category, message, prev_hash, hash";

/// The first statement of every append: takes the write lock on the head row
/// before anything is read, then returns the head. SQLite has no `FOR
/// UPDATE`; a write as the first statement makes the transaction a writer
/// at once, so it waits for (rather than fails against) other writers.
const LOCK_HEAD_SQLITE: &str = "UPDATE audit_head SET seq = seq WHERE id = 1 RETURNING seq, hash";
const LOCK_HEAD_POSTGRES: &str = "SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE";

const SET_HEAD: &str = "UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1";

const SELECT_HEAD: &str = "SELECT seq, hash FROM audit_head WHERE id = 1";

const INSERT_CHECKPOINT: &str = "INSERT INTO audit_checkpoints (seq, hash, at_ms, key, signature) \
     VALUES ($1, $2, $3, $4, $5)";

const CHECKPOINT_COLUMNS: &str = "id, seq, hash, at_ms, key, signature";

impl AuditLog {
    /// The head as the head row records it, or `None` if the row is gone
    /// (which only happens when someone deleted it by hand).
    pub async fn head(&self) -> Result<Option<ChainHead>, StoreError> {
        let backend = self.backend.name();
        let head = on_backend!(&self.backend, |pool| {
            sqlx::query(SELECT_HEAD)
                .fetch_optional(pool)
                .await
                .and_then(|row| row.as_ref().map(head_from_row).transpose())
        });
        head.map_err(|error| StoreError::Database {
            backend,
            operation: "reading the audit chain head",
            error,
        })
    }

    /// Appends one batch in one transaction.
    ///
    /// Locks the head row (PostgreSQL `SELECT … FOR UPDATE`; SQLite takes
    /// the database write lock), reads the head, calls `build` with it and
    /// stores what it returns: the entries, the new head and the checkpoint,
    /// or nothing at all if anything fails. `build` runs under the lock, so
    /// it should only compute (hash, sign), never wait.
    ///
    /// The batch must continue the head: entry `i` has `seq = head.seq + 1 +
    /// i`, the first `prev_hash` equals the head's hash (any value for an
    /// empty chain, whose genesis is the caller's business), each later one
    /// the hash before it; a checkpoint must be of the new head. A batch that
    /// does not is refused with [`StoreError::Invalid`]. An empty batch with
    /// a checkpoint stores just the checkpoint; an empty batch without one
    /// changes nothing.
    pub async fn append<F>(&self, build: F) -> Result<Appended, StoreError>
    where
        F: FnOnce(&ChainHead) -> AuditBatch + Send,
    {
        let backend = self.backend.name();
        let db = move |error| StoreError::Database {
            backend,
            operation: "appending to the audit chain",
            error,
        };
        let lock_head = match &self.backend {
            Backend::Sqlite(_) => LOCK_HEAD_SQLITE,
            Backend::Postgres(_) => LOCK_HEAD_POSTGRES,
        };
        on_backend!(&self.backend, |pool, Db| {
            async {
                let mut tx = pool.begin().await.map_err(db)?;
                let previous = match sqlx::query(lock_head)
                    .fetch_optional(&mut *tx)
                    .await
                    .and_then(|row| row.as_ref().map(head_from_row).transpose())
                    .map_err(db)?
                {
                    Some(head) => head,
                    None => {
                        return Err(StoreError::Conflict {
                            message: "the audit chain head row is missing; the audit tables \
                                      were edited by hand"
                                .into(),
                        });
                    }
                };
                let batch = build(&previous);
                let head = validate_batch(&previous, &batch)?;
                for chunk in
                    crate::backend::statement_sized_chunks(&batch.entries, ROWS_PER_STATEMENT)
                {
                    let mut insert = sqlx::QueryBuilder::<Db>::new(format!(
                        "INSERT INTO audit_entries ({COLUMNS}) "
                    ));
                    insert.push_values(chunk, |mut row, r| {
                        row.push_bind(r.seq)
                            .push_bind(r.at_ms)
                            .push_bind(r.tenant.as_str())
                            .push_bind(r.kind.as_str())
                            .push_bind(r.principal.as_str())
                            .push_bind(r.principal_kind.as_str())
                            .push_bind(r.method.as_str())
                            .push_bind(r.target.as_deref())
                            .push_bind(r.args_digest.as_deref())
                            .push_bind(r.outcome.as_str())
                            .push_bind(r.error_code)
                            .push_bind(r.latency_us)
                            .push_bind(r.decisions.as_str())
                            .push_bind(r.category.as_deref())
                            .push_bind(r.message.as_deref())
                            .push_bind(r.prev_hash.as_str())
                            .push_bind(r.hash.as_str());
                    });
                    insert.build().execute(&mut *tx).await.map_err(db)?;
                }
                if head != previous {
                    sqlx::query(SET_HEAD)
                        .bind(head.seq)
                        .bind(head.hash.as_deref())
                        .execute(&mut *tx)
                        .await
                        .map_err(db)?;
                }
                if let Some(c) = &batch.checkpoint {
                    sqlx::query(INSERT_CHECKPOINT)
                        .bind(c.seq)
                        .bind(c.hash.as_str())
                        .bind(c.at_ms)
                        .bind(c.key.as_str())
                        .bind(c.signature.as_str())
                        .execute(&mut *tx)
                        .await
                        .map_err(db)?;
                }
                tx.commit().await.map_err(db)?;
                Ok(Appended {
                    previous,
                    head,
                    checkpointed: batch.checkpoint.is_some(),
                })
            }
            .await
        })
    }

    /// Entries matching `query`, ascending by `seq`; `limit` is clamped to
    /// `1..=AUDIT_PAGE_MAX`. Page on with `after_seq` = the last `seq` seen.
    pub async fn entries(
        &self,
        query: &AuditQuery,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let limit = i64::from(limit.clamp(1, AUDIT_PAGE_MAX));
        let backend = self.backend.name();
        let rows = on_backend!(&self.backend, |pool, Db| {
            let mut q = sqlx::QueryBuilder::<Db>::new(format!(
                "SELECT {COLUMNS} FROM audit_entries WHERE seq > "
            ));
            q.push_bind(query.after_seq);
            if let Some(through) = query.through_seq {
                q.push(" AND seq <= ").push_bind(through);
            }
            if let Some(since) = query.since_ms {
                q.push(" AND at_ms >= ").push_bind(since);
            }
            if let Some(tenant) = &query.tenant {
                q.push(" AND tenant = ").push_bind(tenant.as_str());
            }
            q.push(" ORDER BY seq LIMIT ").push_bind(limit);
            q.build().fetch_all(pool).await.and_then(|rows| {
                rows.iter()
                    .map(audit_record_from_row)
                    .collect::<Result<Vec<_>, _>>()
            })
        });
        rows.map_err(|error| StoreError::Database {
            backend,
            operation: "reading audit entries",
            error,
        })
    }

    /// The smallest `seq` of an entry at or after `at_ms`, through the time
    /// index: where an export `since` a time starts.
    pub async fn first_seq_since(&self, at_ms: i64) -> Result<Option<i64>, StoreError> {
        self.scalar(
            "SELECT MIN(seq) FROM audit_entries WHERE at_ms >= $1",
            Some(at_ms),
            "finding the first audit entry since a time",
        )
        .await
    }

    /// The largest `seq` stored, whatever the head row says.
    pub async fn max_seq(&self) -> Result<Option<i64>, StoreError> {
        self.scalar(
            "SELECT MAX(seq) FROM audit_entries",
            None,
            "reading the last audit entry",
        )
        .await
    }

    /// Number of entries stored.
    pub async fn count(&self) -> Result<i64, StoreError> {
        let n = self
            .scalar(
                "SELECT COUNT(*) FROM audit_entries",
                None,
                "counting audit entries",
            )
            .await?;
        Ok(n.unwrap_or(0))
    }

    /// The id of the newest checkpoint, if any.
    pub async fn max_checkpoint_id(&self) -> Result<Option<i64>, StoreError> {
        self.scalar(
            "SELECT MAX(id) FROM audit_checkpoints",
            None,
            "reading the last audit checkpoint",
        )
        .await
    }

    /// The newest checkpoint (by creation), if any.
    pub async fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>, StoreError> {
        let backend = self.backend.name();
        let sql =
            format!("SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints ORDER BY id DESC LIMIT 1");
        let found = on_backend!(&self.backend, |pool| {
            sqlx::query(&sql)
                .fetch_optional(pool)
                .await
                .and_then(|row| row.as_ref().map(checkpoint_from_row).transpose())
        });
        found.map_err(|error| StoreError::Database {
            backend,
            operation: "reading the last audit checkpoint",
            error,
        })
    }

    /// Checkpoints ordered by `(seq, id)`, after the position `after`
    /// (`(seq, id)` of the last one seen, `None` to start) and with an id of
    /// at most `max_id` (to pin the set a verification looks at). `limit` is
    /// clamped to `1..=AUDIT_PAGE_MAX`.
    pub async fn checkpoints(
        &self,
        after: Option<(i64, i64)>,
        max_id: i64,
        limit: u32,
    ) -> Result<Vec<StoredCheckpoint>, StoreError> {
        let limit = i64::from(limit.clamp(1, AUDIT_PAGE_MAX));
        let (after_seq, after_id) = after.unwrap_or((i64::MIN, i64::MIN));
        let sql = format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints \
             WHERE (seq > $1 OR (seq = $1 AND id > $2)) AND id <= $3 \
             ORDER BY seq, id LIMIT $4"
        );
        let backend = self.backend.name();
        let rows = on_backend!(&self.backend, |pool| {
            sqlx::query(&sql)
                .bind(after_seq)
                .bind(after_id)
                .bind(max_id)
                .bind(limit)
                .fetch_all(pool)
                .await
                .and_then(|rows| {
                    rows.iter()
                        .map(checkpoint_from_row)
                        .collect::<Result<Vec<_>, _>>()
                })
        });
        rows.map_err(|error| StoreError::Database {
            backend,
            operation: "reading audit checkpoints",
            error,
        })
    }

    async fn scalar(
        &self,
        sql: &'static str,
        bind: Option<i64>,
        operation: &'static str,
    ) -> Result<Option<i64>, StoreError> {
        let backend = self.backend.name();
        let value = on_backend!(&self.backend, |pool| {
            let mut q = sqlx::query_scalar::<_, Option<i64>>(sql);
            if let Some(v) = bind {
                q = q.bind(v);
            }
            q.fetch_one(pool).await
        });
        value.map_err(|error| StoreError::Database {
            backend,
            operation,
            error,
        })
    }
}

impl TenantAuditLog {
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// This tenant's entries with a `seq` above `after_seq`, oldest first;
    /// `limit` is clamped to `1..=1000`. Page on with the last `seq` seen.
    pub async fn list(&self, after_seq: i64, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM audit_entries WHERE tenant = $1 AND seq > $2 \
             ORDER BY seq LIMIT $3"
        );
        self.fetch(&sql, Some(after_seq), limit).await
    }

    /// This tenant's latest entries, newest first; `limit` is clamped to
    /// `1..=1000`.
    pub async fn recent(&self, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM audit_entries WHERE tenant = $1 \
             ORDER BY seq DESC LIMIT $2"
        );
        self.fetch(&sql, None, limit).await
    }

    /// Number of this tenant's entries.
    pub async fn count(&self) -> Result<i64, StoreError> {
        let backend = self.backend.name();
        let n = on_backend!(&self.backend, |pool| {
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM audit_entries WHERE tenant = $1")
                .bind(self.tenant.as_str())
                .fetch_one(pool)
                .await
        });
        n.map_err(|error| StoreError::Database {
            backend,
            operation: "counting a tenant's audit entries",
            error,
        })
    }

    async fn fetch(
        &self,
        sql: &str,
        after_seq: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let limit = i64::from(clamp_limit(limit));
        let backend = self.backend.name();
        let rows = on_backend!(&self.backend, |pool| {
            let mut q = sqlx::query(sql).bind(self.tenant.as_str());
            if let Some(after) = after_seq {
                q = q.bind(after);
            }
            q.bind(limit).fetch_all(pool).await.and_then(|rows| {
                rows.iter()
                    .map(audit_record_from_row)
                    .collect::<Result<Vec<_>, _>>()
            })
        });
        rows.map_err(|error| StoreError::Database {
            backend,
            operation: "reading a tenant's audit entries",
            error,
        })
    }
}

// ---- validation ------------------------------------------------------------

/// Checks that `batch` continues `head` and that every field fits; returns
/// the head after the batch.
fn validate_batch(head: &ChainHead, batch: &AuditBatch) -> Result<ChainHead, StoreError> {
    let mut seq = head.seq;
    let mut hash = head.hash.clone();
    for (i, r) in batch.entries.iter().enumerate() {
        validate_record(i, r)?;
        let expected = seq + 1;
        if r.seq != expected {
            return Err(StoreError::invalid(
                "audit entry seq",
                format!(
                    "entry {i}: expected seq {expected} to continue the chain head, got {}",
                    r.seq
                ),
            ));
        }
        if let Some(prev) = &hash
            && *prev != r.prev_hash
        {
            return Err(StoreError::invalid(
                "audit entry prev_hash",
                format!(
                    "entry {i} (seq {}): prev_hash {} does not continue the chain at {prev}",
                    r.seq, r.prev_hash
                ),
            ));
        }
        seq = r.seq;
        hash = Some(r.hash.clone());
    }
    let new_head = ChainHead { seq, hash };
    if let Some(c) = &batch.checkpoint {
        validate_checkpoint(c)?;
        if c.seq != new_head.seq || new_head.hash.as_deref() != Some(c.hash.as_str()) {
            return Err(StoreError::invalid(
                "audit checkpoint",
                format!(
                    "a checkpoint must be of the new head (seq {}), got seq {}",
                    new_head.seq, c.seq
                ),
            ));
        }
    }
    Ok(new_head)
}

fn validate_record(index: usize, r: &AuditRecord) -> Result<(), StoreError> {
    let texts = [
        (
            "audit entry tenant",
            Some(r.tenant.as_str()),
            AUDIT_TEXT_MAX_BYTES,
        ),
        (
            "audit entry kind",
            Some(r.kind.as_str()),
            AUDIT_TEXT_MAX_BYTES,
        ),
        (
            "audit entry principal",
            Some(r.principal.as_str()),
            AUDIT_TEXT_MAX_BYTES,
        ),
        (
            "audit entry principal_kind",
            Some(r.principal_kind.as_str()),
            AUDIT_TEXT_MAX_BYTES,
        ),
        (
            "audit entry method",
            Some(r.method.as_str()),
            AUDIT_TEXT_MAX_BYTES,
        ),
        (
            "audit entry target",
            r.target.as_deref(),
            AUDIT_TEXT_MAX_BYTES,
        ),
        (
            "audit entry outcome",
            Some(r.outcome.as_str()),
            AUDIT_TEXT_MAX_BYTES,
        ),
        (
            "audit entry category",
            r.category.as_deref(),
            AUDIT_TEXT_MAX_BYTES,
        ),
        (
            "audit entry message",
            r.message.as_deref(),
            AUDIT_MESSAGE_MAX_BYTES,
        ),
        (
            "audit entry decisions",
            Some(r.decisions.as_str()),
            AUDIT_DECISIONS_MAX_BYTES,
        ),
    ];
    for (field, value, max) in texts {
        let Some(value) = value else { continue };
        if value.len() > max {
            return Err(StoreError::invalid(
                field,
                format!(
                    "entry {index}: must be at most {max} bytes, got {}",
                    value.len()
                ),
            ));
        }
        if value.contains('\0') {
            return Err(StoreError::invalid(
                field,
                format!("entry {index}: must not contain NUL"),
            ));
        }
    }
    let hashes = [
        ("audit entry prev_hash", Some(r.prev_hash.as_str())),
        ("audit entry hash", Some(r.hash.as_str())),
        ("audit entry args_digest", r.args_digest.as_deref()),
    ];
    for (field, value) in hashes {
        if let Some(value) = value
            && !is_lower_hex(value, 64)
        {
            return Err(StoreError::invalid(
                field,
                format!("entry {index}: must be 64 lowercase hex digits, got {value:?}"),
            ));
        }
    }
    if r.latency_us < 0 {
        return Err(StoreError::invalid(
            "audit entry latency_us",
            format!("entry {index}: must not be negative"),
        ));
    }
    Ok(())
}

fn validate_checkpoint(c: &AuditCheckpoint) -> Result<(), StoreError> {
    if c.seq < 1 {
        return Err(StoreError::invalid(
            "audit checkpoint seq",
            "must be at least 1",
        ));
    }
    for (field, value, len) in [
        ("audit checkpoint hash", &c.hash, 64),
        ("audit checkpoint key", &c.key, 64),
        ("audit checkpoint signature", &c.signature, 128),
    ] {
        if !is_lower_hex(value, len) {
            return Err(StoreError::invalid(
                field,
                format!("must be {len} lowercase hex digits"),
            ));
        }
    }
    Ok(())
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

// ---- rows ------------------------------------------------------------------

fn head_from_row<'r, R>(row: &'r R) -> Result<ChainHead, sqlx::Error>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(ChainHead {
        seq: row.try_get("seq")?,
        hash: row.try_get("hash")?,
    })
}

fn audit_record_from_row<'r, R>(row: &'r R) -> Result<AuditRecord, sqlx::Error>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(AuditRecord {
        seq: row.try_get("seq")?,
        at_ms: row.try_get("at_ms")?,
        tenant: row.try_get("tenant")?,
        kind: row.try_get("kind")?,
        principal: row.try_get("principal")?,
        principal_kind: row.try_get("principal_kind")?,
        method: row.try_get("method")?,
        target: row.try_get("target")?,
        args_digest: row.try_get("args_digest")?,
        outcome: row.try_get("outcome")?,
        error_code: row.try_get("error_code")?,
        latency_us: row.try_get("latency_us")?,
        decisions: row.try_get("decisions")?,
        category: row.try_get("category")?,
        message: row.try_get("message")?,
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
    })
}

fn checkpoint_from_row<'r, R>(row: &'r R) -> Result<StoredCheckpoint, sqlx::Error>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(StoredCheckpoint {
        id: row.try_get("id")?,
        checkpoint: AuditCheckpoint {
            seq: row.try_get("seq")?,
            hash: row.try_get("hash")?,
            at_ms: row.try_get("at_ms")?,
            key: row.try_get("key")?,
            signature: row.try_get("signature")?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u8) -> String {
        format!("{n:02x}").repeat(32)
    }

    fn record(seq: i64, prev: String, hash: String) -> AuditRecord {
        AuditRecord {
            seq,
            at_ms: 1,
            tenant: "acme".into(),
            kind: "call".into(),
            principal: "alice".into(),
            principal_kind: "user".into(),
            method: "tools/call".into(),
            target: Some("echo".into()),
            args_digest: Some(h(9)),
            outcome: "ok".into(),
            error_code: None,
            latency_us: 5,
            decisions: "[]".into(),
            category: None,
            message: None,
            prev_hash: prev,
            hash,
        }
    }

    fn checkpoint(seq: i64, hash: String) -> AuditCheckpoint {
        AuditCheckpoint {
            seq,
            hash,
            at_ms: 1,
            key: "ab".repeat(32),
            signature: "cd".repeat(64),
        }
    }

    #[test]
    fn a_batch_must_continue_the_head() {
        let head = ChainHead {
            seq: 4,
            hash: Some(h(4)),
        };
        let good = AuditBatch {
            entries: vec![record(5, h(4), h(5)), record(6, h(5), h(6))],
            checkpoint: Some(checkpoint(6, h(6))),
        };
        assert_eq!(
            validate_batch(&head, &good).ok(),
            Some(ChainHead {
                seq: 6,
                hash: Some(h(6))
            })
        );

        let gap = AuditBatch {
            entries: vec![record(6, h(4), h(6))],
            checkpoint: None,
        };
        assert!(matches!(
            validate_batch(&head, &gap),
            Err(StoreError::Invalid {
                field: "audit entry seq",
                ..
            })
        ));
        let unlinked = AuditBatch {
            entries: vec![record(5, h(4), h(5)), record(6, h(4), h(6))],
            checkpoint: None,
        };
        assert!(matches!(
            validate_batch(&head, &unlinked),
            Err(StoreError::Invalid {
                field: "audit entry prev_hash",
                ..
            })
        ));
        let stale_checkpoint = AuditBatch {
            entries: vec![record(5, h(4), h(5))],
            checkpoint: Some(checkpoint(4, h(4))),
        };
        assert!(matches!(
            validate_batch(&head, &stale_checkpoint),
            Err(StoreError::Invalid {
                field: "audit checkpoint",
                ..
            })
        ));
        // Any prev_hash may start an empty chain: genesis is the caller's.
        let first = AuditBatch {
            entries: vec![record(1, h(0), h(1))],
            checkpoint: None,
        };
        assert!(validate_batch(&ChainHead::empty(), &first).is_ok());
    }

    #[test]
    fn fields_are_checked() {
        let mut r = record(1, h(0), h(1));
        r.hash = "ABC".into();
        assert!(matches!(
            validate_record(0, &r),
            Err(StoreError::Invalid {
                field: "audit entry hash",
                ..
            })
        ));
        let mut r = record(1, h(0), h(1));
        r.message = Some("x".repeat(AUDIT_MESSAGE_MAX_BYTES + 1));
        assert!(validate_record(0, &r).is_err());
        let mut r = record(1, h(0), h(1));
        r.message = Some("x".repeat(AUDIT_MESSAGE_MAX_BYTES));
        assert!(validate_record(0, &r).is_ok());
        let mut r = record(1, h(0), h(1));
        r.target = Some("a\0b".into());
        assert!(matches!(
            validate_record(0, &r),
            Err(StoreError::Invalid {
                field: "audit entry target",
                ..
            })
        ));
        let mut c = checkpoint(1, h(1));
        c.signature.pop();
        assert!(validate_checkpoint(&c).is_err());
        assert!(validate_checkpoint(&checkpoint(0, h(1))).is_err());
    }
}
