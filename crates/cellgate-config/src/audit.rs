//! `[audit]`: the tamper-evident log. Owned by cellgate-audit.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::diagnostic::Problem;

/// The hash-chained audit log every call is appended to.
///
/// Entries are queued by the audit layer and stored by one writer task in
/// batches (one transaction each); the chain is signed in checkpoints with
/// the instance's key. A call whose entry cannot be queued is refused before
/// it runs: auditing fails closed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Append every call to the audit chain. Off removes the audit layer:
    /// calls are then not recorded at all.
    pub enabled: bool,
    /// Most entries stored in one transaction (group commit). The writer
    /// takes whatever is queued, up to this many, so batches are small and
    /// prompt under light load and large under heavy load.
    pub batch_size: u32,
    /// Entries that can wait in the audit queue. A call holds its place from
    /// before it runs until its entry is queued, so this also bounds the
    /// calls in flight through the audit layer.
    pub channel_capacity: u32,
    /// Sign a checkpoint once the chain has grown by this many entries since
    /// the last one. 0 turns count-based checkpoints off.
    pub checkpoint_every_entries: u64,
    /// Sign a checkpoint of the chain head this often, in seconds, if it
    /// moved since the last one (and once more at shutdown). 0 turns
    /// time-based checkpoints off.
    pub checkpoint_every_secs: u64,
    /// What a call does when the audit queue is full: `wait` (up to
    /// `backpressure_wait_ms`, then it is refused) or `refuse` (refused at
    /// once). Either way a call that cannot be audited is refused before it
    /// runs; no setting lets it through unaudited.
    pub backpressure: AuditBackpressure,
    /// With `backpressure = "wait"`: how long a call waits for room in the
    /// audit queue, in milliseconds.
    pub backpressure_wait_ms: u64,
}

/// What a call does when the audit queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AuditBackpressure {
    /// Wait up to `backpressure_wait_ms` for room, then refuse the call.
    #[default]
    Wait,
    /// Refuse the call at once.
    Refuse,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            batch_size: 512,
            channel_capacity: 8192,
            checkpoint_every_entries: 10_000,
            checkpoint_every_secs: 60,
            backpressure: AuditBackpressure::Wait,
            backpressure_wait_ms: 2000,
        }
    }
}

/// Largest accepted `batch_size`.
const MAX_BATCH_SIZE: u64 = 10_000;
/// Largest accepted `channel_capacity`.
const MAX_CHANNEL_CAPACITY: u64 = 1_000_000;
/// Largest accepted `checkpoint_every_entries`.
const MAX_CHECKPOINT_ENTRIES: u64 = 100_000_000;
/// Largest accepted `checkpoint_every_secs`: a day.
const MAX_CHECKPOINT_SECS: u64 = 86_400;
/// Largest accepted `backpressure_wait_ms`: a minute.
const MAX_WAIT_MS: u64 = 60_000;

impl AuditConfig {
    pub(crate) fn validate(&self, p: &mut Vec<Problem>) {
        let mut range = |key: &str, value: u64, min: u64, max: u64| {
            if !(min..=max).contains(&value) {
                p.push(Problem::new(
                    format!("audit.{key}"),
                    format!("must be between {min} and {max}, got {value}"),
                ));
            }
        };
        range("batch_size", u64::from(self.batch_size), 1, MAX_BATCH_SIZE);
        range(
            "channel_capacity",
            u64::from(self.channel_capacity),
            1,
            MAX_CHANNEL_CAPACITY,
        );
        range(
            "checkpoint_every_entries",
            self.checkpoint_every_entries,
            0,
            MAX_CHECKPOINT_ENTRIES,
        );
        range(
            "checkpoint_every_secs",
            self.checkpoint_every_secs,
            0,
            MAX_CHECKPOINT_SECS,
        );
        match self.backpressure {
            AuditBackpressure::Wait => range(
                "backpressure_wait_ms",
                self.backpressure_wait_ms,
                1,
                MAX_WAIT_MS,
            ),
            AuditBackpressure::Refuse => range(
                "backpressure_wait_ms",
                self.backpressure_wait_ms,
                0,
                MAX_WAIT_MS,
            ),
        }
        if self.checkpoint_every_entries == 0 && self.checkpoint_every_secs == 0 {
            p.push(Problem::new(
                "audit.checkpoint_every_entries",
                "checkpoint_every_entries and checkpoint_every_secs are both 0: without signed \
                 checkpoints a rewritten or truncated chain cannot be detected; set at least one",
            ));
        }
    }

    /// How long a call may wait for room in the queue: `None` means
    /// refuse at once (`backpressure = "refuse"`).
    pub fn backpressure_wait(&self) -> Option<Duration> {
        match self.backpressure {
            AuditBackpressure::Wait => Some(Duration::from_millis(self.backpressure_wait_ms)),
            AuditBackpressure::Refuse => None,
        }
    }

    /// The interval of time-based checkpoints, `None` when off.
    pub fn checkpoint_every(&self) -> Option<Duration> {
        (self.checkpoint_every_secs > 0).then(|| Duration::from_secs(self.checkpoint_every_secs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(config: &AuditConfig) -> Vec<(String, String)> {
        let mut p = Vec::new();
        config.validate(&mut p);
        p.into_iter().map(|p| (p.key, p.message)).collect()
    }

    #[test]
    fn defaults_are_valid_and_sane() {
        let d = AuditConfig::default();
        assert!(problems(&d).is_empty(), "{:?}", problems(&d));
        assert!(d.enabled);
        assert_eq!(d.backpressure_wait(), Some(Duration::from_secs(2)));
        assert_eq!(d.checkpoint_every(), Some(Duration::from_secs(60)));
    }

    #[test]
    fn out_of_range_values_name_their_key() {
        let bad = AuditConfig {
            batch_size: 0,
            channel_capacity: 2_000_000,
            checkpoint_every_secs: 100_000,
            backpressure_wait_ms: 0,
            ..AuditConfig::default()
        };
        let keys: Vec<String> = problems(&bad).into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "audit.batch_size",
                "audit.channel_capacity",
                "audit.checkpoint_every_secs",
                "audit.backpressure_wait_ms"
            ]
        );
        // Refusing at once needs no wait.
        let refuse = AuditConfig {
            backpressure: AuditBackpressure::Refuse,
            backpressure_wait_ms: 0,
            ..AuditConfig::default()
        };
        assert!(problems(&refuse).is_empty());
        assert_eq!(refuse.backpressure_wait(), None);
    }

    #[test]
    fn some_checkpoints_are_required() {
        let none = AuditConfig {
            checkpoint_every_entries: 0,
            checkpoint_every_secs: 0,
            ..AuditConfig::default()
        };
        let found = problems(&none);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, "audit.checkpoint_every_entries");
        assert!(found[0].1.contains("cannot be detected"), "{}", found[0].1);
        let timer_only = AuditConfig {
            checkpoint_every_entries: 0,
            ..AuditConfig::default()
        };
        assert!(problems(&timer_only).is_empty());
        let count_only = AuditConfig {
            checkpoint_every_secs: 0,
            ..AuditConfig::default()
        };
        assert!(problems(&count_only).is_empty());
        assert_eq!(count_only.checkpoint_every(), None);
    }

    #[test]
    fn a_file_is_checked_with_lines() {
        let text = "[audit]\nbackpressure = \"refuse\"\nbatch_size = 0\n";
        let diagnostics = crate::check_text(text).expect_err("invalid");
        assert_eq!(diagnostics.len(), 1);
        assert_eq!(diagnostics[0].key.as_deref(), Some("audit.batch_size"));
        assert_eq!(diagnostics[0].line, Some(3));
        let ok = crate::check_text("[audit]\nbackpressure = \"refuse\"\n").expect("valid");
        assert_eq!(ok.audit.backpressure, AuditBackpressure::Refuse);
        assert!(crate::check_text("[audit]\nbackpressure = \"drop\"\n").is_err());
    }

    #[test]
    fn every_key_can_come_from_the_environment() {
        let config = crate::Config::load(
            None,
            [
                ("CELLGATE_AUDIT_BATCH_SIZE", "64"),
                ("CELLGATE_AUDIT_BACKPRESSURE", "refuse"),
                ("CELLGATE_AUDIT_CHECKPOINT_EVERY_SECS", "5"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
        )
        .expect("load");
        assert_eq!(config.audit.batch_size, 64);
        assert_eq!(config.audit.backpressure, AuditBackpressure::Refuse);
        assert_eq!(
            config.audit.checkpoint_every(),
            Some(Duration::from_secs(5))
        );
    }
}
