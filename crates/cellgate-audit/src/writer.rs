//! The group-commit writer: one task per process takes entries from a
//! bounded channel, chains a batch of them and stores the batch in one
//! transaction.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cellgate_kernel::CancellationToken;
use cellgate_store::{AuditBatch, AuditLog, ChainHead};
use ed25519_dalek::SigningKey;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::chain::{head_hash, link};
use crate::checkpoint::sign_checkpoint;
use crate::event::now_ms;
use crate::{AuditError, AuditEvent, AuditMetrics, Refusal};

/// What the audit layer does when the writer's queue is full.
///
/// Both policies fail closed: a call whose entry cannot be queued is
/// refused *before* it runs. There is deliberately no policy that lets such
/// a call through unaudited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backpressure {
    /// Wait up to this long for room, then refuse.
    Wait(Duration),
    /// Refuse at once.
    Refuse,
}

/// How the writer batches and checkpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterConfig {
    /// Most entries per transaction. The writer takes whatever is queued, up
    /// to this many, so under light load batches are small and prompt.
    pub batch_size: usize,
    /// Entries that can be queued or reserved by calls in flight. A call
    /// holds its place from before it runs until it is recorded, so this
    /// also bounds the calls in flight through the audit layer.
    pub channel_capacity: usize,
    /// Sign a checkpoint once the chain has grown this many entries past the
    /// last checkpoint this writer made; 0 turns count-based checkpoints off.
    pub checkpoint_every_entries: u64,
    /// Sign a checkpoint of the head this often if it moved; `None` turns
    /// time-based checkpoints off.
    pub checkpoint_every: Option<Duration>,
    pub backpressure: Backpressure,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            batch_size: 512,
            channel_capacity: 8192,
            checkpoint_every_entries: 10_000,
            checkpoint_every: Some(Duration::from_secs(60)),
            backpressure: Backpressure::Wait(Duration::from_secs(2)),
        }
    }
}

/// Where an appended entry landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub seq: i64,
    /// Lowercase hex hash of the entry.
    pub hash: String,
}

/// What the writer's health looks like from outside (readiness probes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkStatus {
    /// False while the writer's last attempt to store a batch failed.
    pub healthy: bool,
    /// False once the writer has stopped.
    pub running: bool,
    /// Queued or reserved places.
    pub in_use: usize,
    pub capacity: usize,
    /// The last storage error, while unhealthy.
    pub last_error: Option<String>,
}

pub(crate) enum Submission {
    Event(AuditEvent),
    Confirmed(AuditEvent, oneshot::Sender<Result<Receipt, AuditError>>),
    Flush(oneshot::Sender<Result<(), AuditError>>),
}

struct Shared {
    healthy: AtomicBool,
    last_error: Mutex<Option<String>>,
    metrics: Arc<AuditMetrics>,
    backpressure: Backpressure,
    capacity: usize,
}

impl Shared {
    fn set_healthy(&self) {
        if !self.healthy.swap(true, Ordering::AcqRel) {
            tracing::info!("the audit log stores entries again");
        }
        self.metrics.sink_down.set(0);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn set_failing(&self, error: &AuditError) {
        self.healthy.store(false, Ordering::Release);
        self.metrics.sink_down.set(1);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error.to_string());
    }
}

/// The sending side of the audit log: cheap to clone, used by the audit
/// layer for every call and by administrative code for explicit entries.
#[derive(Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<Submission>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AuditSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditSink")
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

/// A reserved place in the writer's queue: sending into it cannot fail or
/// wait. Dropping it unused gives the place back.
pub struct Slot {
    permit: mpsc::OwnedPermit<Submission>,
}

impl Slot {
    /// Queues the event. Never blocks, never drops.
    pub fn send(self, event: AuditEvent) {
        self.permit.send(Submission::Event(event));
    }
}

impl AuditSink {
    /// Reserves a place for one entry under the back-pressure policy. Refuses
    /// at once while the writer is failing to store (fail closed) or has
    /// stopped; each refusal is counted in `calls_refused{reason}`.
    pub async fn reserve(&self) -> Result<Slot, Refusal> {
        let outcome = self.try_reserve().await;
        if let Err(refusal) = outcome {
            self.shared.metrics.refused(refusal.as_str());
        }
        outcome
    }

    async fn try_reserve(&self) -> Result<Slot, Refusal> {
        if self.tx.is_closed() {
            return Err(Refusal::Closed);
        }
        if !self.shared.healthy.load(Ordering::Acquire) {
            return Err(Refusal::Unavailable);
        }
        let permit = match self.shared.backpressure {
            Backpressure::Refuse => self.tx.clone().try_reserve_owned().map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => Refusal::Full,
                mpsc::error::TrySendError::Closed(_) => Refusal::Closed,
            })?,
            Backpressure::Wait(limit) => {
                match tokio::time::timeout(limit, self.tx.clone().reserve_owned()).await {
                    Ok(Ok(permit)) => permit,
                    Ok(Err(_)) => return Err(Refusal::Closed),
                    Err(_) => return Err(Refusal::Full),
                }
            }
        };
        Ok(Slot { permit })
    }

    /// Appends an entry and waits until it is committed: for administrative
    /// entries, whose caller reports where the entry landed. Subject to the
    /// same back-pressure and fail-closed rules as calls.
    pub async fn append(&self, event: AuditEvent) -> Result<Receipt, AuditError> {
        let slot = self.reserve().await.map_err(AuditError::Refused)?;
        let (reply, receipt) = oneshot::channel();
        slot.permit.send(Submission::Confirmed(event, reply));
        receipt.await.map_err(|_| AuditError::WriterStopped)?
    }

    /// Waits until every entry queued before this call is committed.
    pub async fn flush(&self) -> Result<(), AuditError> {
        let (reply, done) = oneshot::channel();
        self.tx
            .send(Submission::Flush(reply))
            .await
            .map_err(|_| AuditError::WriterStopped)?;
        done.await.map_err(|_| AuditError::WriterStopped)?
    }

    pub fn status(&self) -> SinkStatus {
        SinkStatus {
            healthy: self.shared.healthy.load(Ordering::Acquire),
            running: !self.tx.is_closed(),
            in_use: self.shared.capacity - self.tx.capacity(),
            capacity: self.shared.capacity,
            last_error: self
                .shared
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    pub fn metrics(&self) -> &Arc<AuditMetrics> {
        &self.shared.metrics
    }
}

/// The running writer task. Stop it with [`AuditWriter::shutdown`] so that
/// queued entries are stored and a final checkpoint is signed.
pub struct AuditWriter {
    task: JoinHandle<()>,
    stop: CancellationToken,
    abort: CancellationToken,
}

impl AuditWriter {
    /// Stops taking new entries, stores everything already accepted
    /// (including entries of calls still in flight), signs a checkpoint of
    /// the final head and ends the task. If that takes longer than `grace`
    /// (the store is down), gives up: the entries still queued are counted
    /// in `entries_lost` and logged, and `false` is returned.
    pub async fn shutdown(mut self, grace: Duration) -> bool {
        self.stop.cancel();
        if tokio::time::timeout(grace, &mut self.task).await.is_ok() {
            return true;
        }
        self.abort.cancel();
        let _ = (&mut self.task).await;
        false
    }

    /// Whether the task has ended (it only ends after a shutdown, or if it
    /// panicked).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// Starts the writer on the current tokio runtime.
///
/// `key` signs the checkpoints; `metrics` is shared with the stage (register
/// it once with [`AuditMetrics::register`]).
pub fn spawn_writer(
    log: AuditLog,
    key: SigningKey,
    config: WriterConfig,
    metrics: Arc<AuditMetrics>,
) -> (AuditSink, AuditWriter) {
    let capacity = config.channel_capacity.max(1);
    let (tx, rx) = mpsc::channel(capacity);
    let shared = Arc::new(Shared {
        healthy: AtomicBool::new(true),
        last_error: Mutex::new(None),
        metrics,
        backpressure: config.backpressure,
        capacity,
    });
    let stop = CancellationToken::new();
    let abort = CancellationToken::new();
    let task = Writer {
        log,
        key,
        config,
        rx,
        shared: shared.clone(),
        last_checkpoint_seq: None,
        abort: abort.clone(),
    };
    let task = tokio::spawn(task.run(stop.clone()));
    (AuditSink { tx, shared }, AuditWriter { task, stop, abort })
}

struct Writer {
    log: AuditLog,
    key: SigningKey,
    config: WriterConfig,
    rx: mpsc::Receiver<Submission>,
    shared: Arc<Shared>,
    /// The seq of the last checkpoint this writer knows of; `None` until read.
    last_checkpoint_seq: Option<i64>,
    abort: CancellationToken,
}

/// First and longest pause between attempts to store a failing batch.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(5);

impl Writer {
    async fn run(mut self, stop: CancellationToken) {
        let batch_size = self.config.batch_size.max(1);
        let mut batch = Vec::with_capacity(batch_size);
        let mut ticker = self.config.checkpoint_every.map(|every| {
            let mut t = tokio::time::interval_at(Instant::now() + every, every);
            t.set_missed_tick_behavior(MissedTickBehavior::Delay);
            t
        });
        let mut stopping = false;
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled(), if !stopping => {
                    // No new reservations; queued entries and places already
                    // reserved by calls in flight are still delivered.
                    self.rx.close();
                    stopping = true;
                }
                n = self.rx.recv_many(&mut batch, batch_size) => {
                    if n == 0 {
                        break;
                    }
                    if !self.store(&mut batch).await {
                        return;
                    }
                }
                _ = tick(&mut ticker) => {
                    self.timed_checkpoint().await;
                }
            }
        }
        // A last checkpoint covers the tail written since the previous one.
        self.timed_checkpoint().await;
    }

    /// Stores one batch, retrying until it succeeds. Returns false if the
    /// writer was aborted while retrying (the batch and the queue are lost,
    /// loudly).
    async fn store(&mut self, batch: &mut Vec<Submission>) -> bool {
        let mut events = Vec::with_capacity(batch.len());
        let mut confirm = Vec::new();
        let mut flushes = Vec::new();
        for submission in batch.drain(..) {
            match submission {
                Submission::Event(e) => events.push(e),
                Submission::Confirmed(e, reply) => {
                    confirm.push((events.len(), reply));
                    events.push(e);
                }
                Submission::Flush(reply) => flushes.push(reply),
            }
        }
        if events.is_empty() {
            for reply in flushes {
                let _ = reply.send(Ok(()));
            }
            return true;
        }
        if self.last_checkpoint_seq.is_none() {
            self.load_last_checkpoint().await;
        }

        let mut pause = RETRY_FIRST;
        loop {
            match self.append(&events).await {
                Ok((head, checkpointed, hashes)) => {
                    self.shared.set_healthy();
                    let m = &self.shared.metrics;
                    m.entries_written.inc_by(events.len() as u64);
                    m.batches_written.inc();
                    if checkpointed {
                        m.checkpoints_written.inc();
                        self.last_checkpoint_seq = Some(head.seq);
                    }
                    let first = head.seq - events.len() as i64 + 1;
                    for (index, reply) in confirm {
                        let receipt = Receipt {
                            seq: first + index as i64,
                            hash: hashes.get(index).cloned().unwrap_or_default(),
                        };
                        let _ = reply.send(Ok(receipt));
                    }
                    for reply in flushes {
                        let _ = reply.send(Ok(()));
                    }
                    return true;
                }
                Err(error) => {
                    self.shared.set_failing(&error);
                    self.shared.metrics.write_failures.inc();
                    tracing::error!(
                        error = %error,
                        entries = events.len(),
                        retry_in_ms = pause.as_millis() as u64,
                        "storing audit entries failed; calls are refused until it succeeds"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = self.abort.cancelled() => {
                            self.give_up(events.len(), confirm, flushes);
                            return false;
                        }
                    }
                    pause = (pause * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// One transaction: chain `events` onto the head read under the lock,
    /// with a checkpoint when enough entries have passed since the last.
    /// Returns the new head, whether it was checkpointed, and the hashes.
    async fn append(
        &self,
        events: &[AuditEvent],
    ) -> Result<(ChainHead, bool, Vec<String>), AuditError> {
        let every = self.config.checkpoint_every_entries;
        let last_checkpoint = self.last_checkpoint_seq.unwrap_or(0);
        let key = &self.key;
        let mut bad_head = None;
        let mut hashes = Vec::new();
        let appended = self
            .log
            .append(|head| {
                let Some(entries) = link(head, events) else {
                    bad_head = Some(head.clone());
                    return AuditBatch::default();
                };
                let checkpoint = match entries.last() {
                    Some(last) if every > 0 && last.seq - last_checkpoint >= every as i64 => {
                        head_hash(&ChainHead {
                            seq: last.seq,
                            hash: Some(last.hash.clone()),
                        })
                        .map(|hash| sign_checkpoint(key, last.seq as u64, &hash, now_ms()))
                    }
                    _ => None,
                };
                hashes = entries.iter().map(|e| e.hash.clone()).collect();
                AuditBatch {
                    entries,
                    checkpoint,
                }
            })
            .await?;
        if let Some(head) = bad_head {
            return Err(AuditError::BadHead(format!(
                "seq {} with hash {:?}",
                head.seq, head.hash
            )));
        }
        Ok((appended.head, appended.checkpointed, hashes))
    }

    /// Signs a checkpoint of the current head if it moved past the last
    /// checkpoint. Failures are logged; the next tick tries again.
    async fn timed_checkpoint(&mut self) {
        if self.last_checkpoint_seq.is_none() {
            self.load_last_checkpoint().await;
        }
        let last = self.last_checkpoint_seq.unwrap_or(0);
        let key = &self.key;
        let result = self
            .log
            .append(|head| {
                let checkpoint = match head_hash(head) {
                    Some(hash) if head.seq > last => {
                        Some(sign_checkpoint(key, head.seq as u64, &hash, now_ms()))
                    }
                    _ => None,
                };
                AuditBatch {
                    entries: Vec::new(),
                    checkpoint,
                }
            })
            .await;
        match result {
            Ok(appended) if appended.checkpointed => {
                self.shared.metrics.checkpoints_written.inc();
                self.last_checkpoint_seq = Some(appended.head.seq);
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(error = %error, "signing an audit checkpoint failed");
            }
        }
    }

    async fn load_last_checkpoint(&mut self) {
        match self.log.latest_checkpoint().await {
            Ok(found) => {
                self.last_checkpoint_seq = Some(found.map_or(0, |c| c.checkpoint.seq));
            }
            Err(error) => {
                // Without it the next checkpoint may come early; harmless.
                tracing::warn!(error = %error, "reading the last audit checkpoint failed");
            }
        }
    }

    /// Reports everything not stored when the writer is aborted.
    fn give_up(
        &mut self,
        in_batch: usize,
        confirm: Vec<(usize, oneshot::Sender<Result<Receipt, AuditError>>)>,
        flushes: Vec<oneshot::Sender<Result<(), AuditError>>>,
    ) {
        for (_, reply) in confirm {
            let _ = reply.send(Err(AuditError::WriterStopped));
        }
        for reply in flushes {
            let _ = reply.send(Err(AuditError::WriterStopped));
        }
        self.rx.close();
        let mut queued = 0;
        while let Ok(submission) = self.rx.try_recv() {
            match submission {
                Submission::Event(_) => queued += 1,
                Submission::Confirmed(_, reply) => {
                    queued += 1;
                    let _ = reply.send(Err(AuditError::WriterStopped));
                }
                Submission::Flush(reply) => {
                    let _ = reply.send(Err(AuditError::WriterStopped));
                }
            }
        }
        let lost = (in_batch + queued) as u64;
        self.shared.metrics.entries_lost.inc_by(lost);
        tracing::error!(
            lost,
            "the audit writer was stopped while the store was failing; these entries were accepted but not stored"
        );
    }
}

async fn tick(ticker: &mut Option<tokio::time::Interval>) {
    match ticker {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}
