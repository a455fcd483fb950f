//! JSON-lines export for a SIEM: `cellgate audit export`.

use cellgate_store::{AuditLog, AuditQuery, AuditRecord, TenantId};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncWrite, AsyncWriteExt as _};

use crate::AuditError;
use crate::time::{format_rfc3339, parse_rfc3339};

/// Entries read per query while exporting.
pub const EXPORT_PAGE: u32 = 1000;

/// Which entries to export. The default exports everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportFilter {
    /// Only entries at or after this time (milliseconds since the epoch;
    /// see [`ExportFilter::since_rfc3339`]).
    pub since_ms: Option<i64>,
    /// Only entries with a larger seq: resume after the last seq exported.
    pub after_seq: Option<i64>,
    /// Only this tenant's entries.
    pub tenant: Option<TenantId>,
}

impl ExportFilter {
    /// Sets `since_ms` from an RFC 3339 time (or a bare date, midnight UTC).
    pub fn since_rfc3339(mut self, since: &str) -> Result<Self, AuditError> {
        let ms = parse_rfc3339(since).map_err(|reason| AuditError::InvalidTime {
            input: since.to_owned(),
            reason,
        })?;
        self.since_ms = Some(ms);
        Ok(self)
    }
}

/// What an export wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExportSummary {
    pub entries: u64,
    /// The seq of the last entry written: pass it as `after_seq` to export
    /// only what is new next time.
    pub last_seq: Option<i64>,
}

/// One entry as an export line's JSON object (also the shape to show a
/// tenant its own entries in):
///
/// `seq`, `time` (RFC 3339, UTC, milliseconds), `at_ms`, `tenant`, `kind`,
/// `principal` (`{id, kind}`), `method`, `target`, `args_digest`, `outcome`,
/// `error_code`, `latency_us`, `decisions` (array of `{layer, verdict,
/// detail}`), `category`, `message`, `prev_hash`, `hash`. Absent optional
/// values are left out. Everything that goes into the hash is here, so a
/// consumer can recompute the chain (see the crate README).
pub fn entry_json(r: &AuditRecord) -> Value {
    let mut o = Map::new();
    o.insert("seq".into(), json!(r.seq));
    o.insert("time".into(), json!(format_rfc3339(r.at_ms)));
    o.insert("at_ms".into(), json!(r.at_ms));
    o.insert("tenant".into(), json!(r.tenant));
    o.insert("kind".into(), json!(r.kind));
    o.insert(
        "principal".into(),
        json!({ "id": r.principal, "kind": r.principal_kind }),
    );
    o.insert("method".into(), json!(r.method));
    if let Some(t) = &r.target {
        o.insert("target".into(), json!(t));
    }
    if let Some(d) = &r.args_digest {
        o.insert("args_digest".into(), json!(d));
    }
    o.insert("outcome".into(), json!(r.outcome));
    if let Some(code) = r.error_code {
        o.insert("error_code".into(), json!(code));
    }
    o.insert("latency_us".into(), json!(r.latency_us));
    // Stored as JSON text; shown as JSON, or as the text if someone broke it.
    let decisions = serde_json::from_str::<Value>(&r.decisions)
        .unwrap_or_else(|_| Value::String(r.decisions.clone()));
    o.insert("decisions".into(), decisions);
    if let Some(c) = &r.category {
        o.insert("category".into(), json!(c));
    }
    if let Some(m) = &r.message {
        o.insert("message".into(), json!(m));
    }
    o.insert("prev_hash".into(), json!(r.prev_hash));
    o.insert("hash".into(), json!(r.hash));
    Value::Object(o)
}

/// Pages through the entries a filter selects.
struct Pages<'a> {
    log: &'a AuditLog,
    query: AuditQuery,
    done: bool,
}

impl<'a> Pages<'a> {
    async fn new(log: &'a AuditLog, filter: &ExportFilter) -> Result<Pages<'a>, AuditError> {
        let mut after = filter.after_seq.unwrap_or(0).max(0);
        let mut done = false;
        if let Some(since) = filter.since_ms {
            // Start at the first entry of that time (through the time
            // index) rather than filtering from the beginning.
            match log.first_seq_since(since).await? {
                Some(first) => after = after.max(first - 1),
                None => done = true,
            }
        }
        Ok(Pages {
            log,
            query: AuditQuery {
                after_seq: after,
                through_seq: None,
                since_ms: filter.since_ms,
                tenant: filter.tenant.clone(),
            },
            done,
        })
    }

    async fn next(&mut self) -> Result<Vec<AuditRecord>, AuditError> {
        if self.done {
            return Ok(Vec::new());
        }
        let rows = self.log.entries(&self.query, EXPORT_PAGE).await?;
        match rows.last() {
            Some(last) => self.query.after_seq = last.seq,
            None => self.done = true,
        }
        Ok(rows)
    }
}

/// Writes the selected entries as JSON lines (one [`entry_json`] object per
/// line, in seq order) to a blocking writer such as stdout or a file.
/// Streams page by page; memory stays bounded by one page.
pub async fn export_jsonl<W: std::io::Write>(
    log: &AuditLog,
    filter: &ExportFilter,
    out: &mut W,
) -> Result<ExportSummary, AuditError> {
    let mut pages = Pages::new(log, filter).await?;
    let mut summary = ExportSummary::default();
    let mut line = Vec::with_capacity(1024);
    loop {
        let rows = pages.next().await?;
        if rows.is_empty() {
            break;
        }
        for r in &rows {
            line.clear();
            serde_json::to_writer(&mut line, &entry_json(r)).map_err(std::io::Error::from)?;
            line.push(b'\n');
            out.write_all(&line)?;
            summary.entries += 1;
            summary.last_seq = Some(r.seq);
        }
    }
    out.flush()?;
    Ok(summary)
}

/// [`export_jsonl`] to an async writer (a socket, a `tokio::fs::File`).
pub async fn export_jsonl_async<W: AsyncWrite + Unpin>(
    log: &AuditLog,
    filter: &ExportFilter,
    out: &mut W,
) -> Result<ExportSummary, AuditError> {
    let mut pages = Pages::new(log, filter).await?;
    let mut summary = ExportSummary::default();
    let mut chunk = Vec::with_capacity(64 * 1024);
    loop {
        let rows = pages.next().await?;
        if rows.is_empty() {
            break;
        }
        chunk.clear();
        for r in &rows {
            serde_json::to_writer(&mut chunk, &entry_json(r)).map_err(std::io::Error::from)?;
            chunk.push(b'\n');
            summary.entries += 1;
            summary.last_seq = Some(r.seq);
        }
        out.write_all(&chunk).await?;
    }
    out.flush().await?;
    Ok(summary)
}
