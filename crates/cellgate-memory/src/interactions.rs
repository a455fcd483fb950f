//! Learning from interactions: tool calls the pipeline's meter saw
//! ([`CallRecord`]s) become observations on an entity named after the tool,
//! of type `tool`, in the caller's tenant's shared space, such as
//! `called by alice at 2025-03-01T09:30:12Z: ok (12.5 ms)`. Agents can then
//! ask the graph which tools were used, by whom, and how they fared.
//!
//! Only `tools/call` records are kept, and not those of the memory tools
//! themselves (reading the graph would otherwise keep writing to it). Each
//! tool entity keeps the newest [`MemoryConfig::interactions_kept`]
//! recorded observations; observations written by agents are never pruned.

use std::collections::BTreeMap;
use std::sync::Arc;

use cellgate_kernel::CallRecord;
use cellgate_store::{ItemKind, NewEntity, ObservationsAdded, Space, TenantId, View};
use tokio::sync::mpsc;

use crate::{MemoryError, MemoryProvider};

/// The entity type of recorded tools.
pub const TOOL_ENTITY_TYPE: &str = "tool";
/// The `source` of recorded observations.
const SOURCE: &str = "interactions";
/// How every recorded observation starts (pruning only touches these).
const PREFIX: &str = "called by ";
/// Records written per batch by the recorder task.
const BATCH: usize = 256;

/// What [`MemoryProvider::record_calls`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordedCalls {
    /// Observations added.
    pub recorded: usize,
    /// Records ignored: not a tool call, a memory tool, a bad tenant, or
    /// a tool name the store refuses.
    pub skipped: usize,
    /// Older recorded observations removed to stay within the limit.
    pub pruned: usize,
}

/// Feeds call records to [`MemoryProvider::record_calls`] from a task, so
/// the caller never waits on the store. Made by
/// [`MemoryProvider::interaction_recorder`]; dropping every clone ends the
/// task once it has written what it holds.
#[derive(Clone)]
pub struct InteractionRecorder {
    tx: mpsc::Sender<CallRecord>,
}

impl InteractionRecorder {
    /// Queues a copy of `record`; `false` (the record is dropped) when the
    /// queue is full or the task has ended.
    pub fn offer(&self, record: &CallRecord) -> bool {
        self.tx.try_send(record.clone()).is_ok()
    }
}

impl MemoryProvider {
    /// A recorder writing into this provider, with a queue of `capacity`
    /// records, when [`MemoryConfig::record_interactions`] is on; `None`
    /// otherwise. Hook it to the meter's call records (e.g. offer each
    /// record the call-log writer receives). Needs a Tokio runtime.
    pub fn interaction_recorder(self: &Arc<Self>, capacity: usize) -> Option<InteractionRecorder> {
        if !self.config.record_interactions {
            return None;
        }
        let (tx, mut rx) = mpsc::channel::<CallRecord>(capacity.max(1));
        let this = self.clone();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            while rx.recv_many(&mut batch, BATCH).await > 0 {
                if let Err(e) = this.record_calls(&batch).await {
                    tracing::warn!(error = %e, records = batch.len(), "recording tool calls in memory failed");
                }
                batch.clear();
            }
        });
        Some(InteractionRecorder { tx })
    }

    /// Records each tool call of `records` as an observation on the tool's
    /// entity (created, of type `tool`, if missing) in the record's
    /// tenant's shared space, then prunes each touched entity to the newest
    /// [`MemoryConfig::interactions_kept`] recorded observations. Two
    /// records that read the same (same caller, millisecond, outcome and
    /// latency) count once, as the graph keeps an observation once.
    pub async fn record_calls(&self, records: &[CallRecord]) -> Result<RecordedCalls, MemoryError> {
        let mut done = RecordedCalls::default();
        // tenant -> tool -> observations, in record order.
        let mut by_tenant: BTreeMap<&str, BTreeMap<&str, Vec<String>>> = BTreeMap::new();
        for r in records {
            let Some(tool) = r.target.as_deref().filter(|_| r.method == "tools/call") else {
                done.skipped += 1;
                continue;
            };
            if tool.is_empty()
                || tool.len() > cellgate_store::MEMORY_NAME_MAX_BYTES
                || tool.contains('\0')
                || self.tools.iter().any(|t| t.name == tool)
            {
                done.skipped += 1;
                continue;
            }
            by_tenant
                .entry(&r.tenant)
                .or_default()
                .entry(tool)
                .or_default()
                .push(observation(r));
        }
        for (tenant, tools) in by_tenant {
            let Ok(tenant) = TenantId::parse(tenant) else {
                done.skipped += tools.values().map(Vec::len).sum::<usize>();
                continue;
            };
            let recorded = self.record_tenant(&tenant, tools, &mut done).await?;
            done.recorded += recorded;
        }
        Ok(done)
    }

    async fn record_tenant(
        &self,
        tenant: &TenantId,
        tools: BTreeMap<&str, Vec<String>>,
        done: &mut RecordedCalls,
    ) -> Result<usize, MemoryError> {
        let memory = self.memory(tenant);
        let space = Space::Shared;
        let names: Vec<String> = tools.keys().map(|t| (*t).to_owned()).collect();
        let mut recorded = 0;
        for chunk in names.chunks(cellgate_store::MEMORY_BATCH_MAX) {
            let new: Vec<NewEntity> = chunk
                .iter()
                .map(|n| {
                    let mut e = NewEntity::new(n, TOOL_ENTITY_TYPE, Vec::new());
                    e.source = Some(SOURCE.into());
                    e
                })
                .collect();
            let created = memory.create_entities(&space, &new).await?;
            self.after_entities_created(tenant, &space, &created)
                .await?;
            let additions: Vec<(String, Vec<String>)> = chunk
                .iter()
                .map(|n| {
                    // Within a batch, the same text once (a repeat would be
                    // stored twice: the store only skips existing contents).
                    let mut contents = tools[n.as_str()].clone();
                    let mut seen = std::collections::HashSet::new();
                    contents.retain(|c| seen.insert(c.clone()));
                    (n.clone(), contents)
                })
                .collect();
            match memory
                .add_observations(&space, &additions, Some(SOURCE))
                .await?
            {
                ObservationsAdded::Added(results) => {
                    recorded += results.iter().map(|r| r.1.len()).sum::<usize>();
                }
                // Deleted between creation and now: nothing was written.
                ObservationsAdded::MissingEntity(name) => {
                    tracing::debug!(tool = %name, "tool entity vanished while recording calls");
                    done.skipped += additions.iter().map(|a| a.1.len()).sum::<usize>();
                    continue;
                }
            }
            // Keep the newest recorded observations of each touched tool.
            let entities = memory.entities_by_names(&View::only(&space), chunk).await?;
            let keep = self.config.interactions_kept;
            let mut deletions = Vec::new();
            for e in &entities {
                let ours: Vec<&String> = e
                    .observations
                    .iter()
                    .filter(|o| o.starts_with(PREFIX))
                    .collect();
                if ours.len() > keep {
                    let old: Vec<String> = ours[..ours.len() - keep]
                        .iter()
                        .map(|o| (*o).clone())
                        .collect();
                    done.pruned += old.len();
                    deletions.push((e.name.clone(), old));
                }
            }
            let entities = if deletions.is_empty() {
                entities
            } else {
                memory.delete_observations(&space, &deletions).await?;
                memory.entities_by_names(&View::only(&space), chunk).await?
            };
            let rows: Vec<(i64, Space, String)> = entities
                .into_iter()
                .map(|e| (e.id, e.space, e.search_text))
                .collect();
            self.embed_rows(tenant, ItemKind::Entity, &rows).await?;
        }
        Ok(recorded)
    }
}

/// `called by <principal> at <UTC time>: <outcome> (<ms> ms)`.
fn observation(r: &CallRecord) -> String {
    let outcome = match r.error_code {
        Some(code) => format!("{} {code}", r.outcome),
        None => r.outcome.to_owned(),
    };
    format!(
        "{PREFIX}{} at {}: {outcome} ({:.1} ms)",
        r.principal,
        utc(r.at_ms),
        r.latency_us as f64 / 1000.0
    )
}

/// `YYYY-MM-DDTHH:MM:SSZ` of milliseconds since the Unix epoch (the
/// civil-from-days conversion of the proleptic Gregorian calendar).
fn utc(at_ms: i64) -> String {
    let secs = at_ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_740_821_412_999), "2025-03-01T09:30:12Z");
        assert_eq!(utc(-1000), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn observation_names_caller_outcome_and_latency() {
        let r = CallRecord {
            tenant: "acme".into(),
            principal: "alice".into(),
            method: "tools/call",
            target: Some("search".into()),
            outcome: "error",
            error_code: Some(-32602),
            latency_us: 12_345,
            at_ms: 1_740_821_412_000,
        };
        assert_eq!(
            observation(&r),
            "called by alice at 2025-03-01T09:30:12Z: error -32602 (12.3 ms)"
        );
    }
}
