//! Tamper tests: fill a chain through the real writer, change the database
//! behind its back with raw SQL, and check that verification reports the
//! exact place and kind of each change. Every test runs on SQLite and, when
//! configured, on PostgreSQL.

mod common;

use std::time::Duration;

use cellgate_audit::{
    AuditEvent, AuditMetrics, AuditSink, AuditWriter, Backpressure, Problem, ProblemKind,
    SigningKey, VerifyingKey, WriterConfig, entry_hash, from_hex, link, sign_checkpoint,
    spawn_writer, to_hex, verify, verify_paged,
};
use cellgate_store::{AuditQuery, AuditRecord, Store, StoreConfig, StoredCheckpoint};
use common::{call_event, signing_key, sql};
use sqlx::Connection as _;

both_backends!(
    untouched_chain_verifies_clean,
    edited_fields_are_reported_at_their_seq,
    deleted_rows_are_reported_as_gaps,
    swapped_rows_are_reported_as_reordered,
    forged_checkpoints_are_reported,
    truncated_tails_are_reported,
    a_rehashed_chain_is_caught_by_its_checkpoints,
    entries_around_the_head_are_reported,
    concurrent_writers_keep_one_chain,
);

/// Entries in the chain each test starts from.
const N: i64 = 95;

async fn filled(store: &Store) -> (SigningKey, Vec<VerifyingKey>) {
    let key = signing_key();
    fill(store, &key, N, 10).await;
    let trusted = vec![key.verifying_key()];
    (key, trusted)
}

async fn problem(store: &Store, trusted: &[VerifyingKey]) -> Problem {
    let report = verify(&store.audit(), trusted).await.expect("verify");
    match report.first_problem {
        Some(problem) => problem,
        None => panic!("the change went unnoticed: {report:?}"),
    }
}

async fn assert_intact(store: &Store, trusted: &[VerifyingKey], entries: u64) {
    let report = verify(&store.audit(), trusted).await.expect("verify");
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.entries, entries, "{report:?}");
}

async fn entry(store: &Store, seq: i64) -> AuditRecord {
    let query = AuditQuery {
        after_seq: seq - 1,
        through_seq: Some(seq),
        ..AuditQuery::default()
    };
    store
        .audit()
        .entries(&query, 1)
        .await
        .expect("entry")
        .pop()
        .unwrap_or_else(|| panic!("no entry {seq}"))
}

async fn all_checkpoints(store: &Store) -> Vec<StoredCheckpoint> {
    store
        .audit()
        .checkpoints(None, i64::MAX, 10_000)
        .await
        .expect("checkpoints")
}

fn record_args(r: &AuditRecord) -> Vec<Arg> {
    vec![
        Arg::Int(Some(r.at_ms)),
        Arg::Text(Some(r.tenant.clone())),
        Arg::Text(Some(r.kind.clone())),
        Arg::Text(Some(r.principal.clone())),
        Arg::Text(Some(r.principal_kind.clone())),
        Arg::Text(Some(r.method.clone())),
        Arg::Text(r.target.clone()),
        Arg::Text(r.args_digest.clone()),
        Arg::Text(Some(r.outcome.clone())),
        Arg::Int(r.error_code),
        Arg::Int(Some(r.latency_us)),
        Arg::Text(Some(r.decisions.clone())),
        Arg::Text(r.category.clone()),
        Arg::Text(r.message.clone()),
        Arg::Text(Some(r.prev_hash.clone())),
        Arg::Text(Some(r.hash.clone())),
        Arg::Int(Some(r.seq)),
    ]
}

/// Overwrites every column of the row at `r.seq` with `r`.
async fn put_row(config: &StoreConfig, r: &AuditRecord) {
    let n = exec(
        config,
        "UPDATE audit_entries SET at_ms = $1, tenant = $2, kind = $3, principal = $4, \
         principal_kind = $5, method = $6, target = $7, args_digest = $8, outcome = $9, \
         error_code = $10, latency_us = $11, decisions = $12, category = $13, message = $14, \
         prev_hash = $15, hash = $16 WHERE seq = $17",
        &record_args(r),
    )
    .await;
    assert_eq!(n, 1, "seq {}", r.seq);
}

/// Inserts `r` as a new row.
async fn insert_row(config: &StoreConfig, r: &AuditRecord) {
    exec(
        config,
        "INSERT INTO audit_entries (at_ms, tenant, kind, principal, principal_kind, method, \
         target, args_digest, outcome, error_code, latency_us, decisions, category, message, \
         prev_hash, hash, seq) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
        &record_args(r),
    )
    .await;
}

async fn set_head(config: &StoreConfig, seq: i64, hash: &str) {
    exec(
        config,
        "UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1",
        &[Arg::Int(Some(seq)), Arg::Text(Some(hash.to_owned()))],
    )
    .await;
}

// ---- writing and raw access ---------------------------------------------------

/// Writer settings for tests: checkpoints every `every` entries, no timer.
fn writer_config(every: u64) -> WriterConfig {
    WriterConfig {
        batch_size: 64,
        channel_capacity: 256,
        checkpoint_every_entries: every,
        checkpoint_every: None,
        backpressure: Backpressure::Wait(Duration::from_secs(5)),
    }
}

/// Starts a writer on `store` with fresh metrics.
fn writer(store: &Store, key: &SigningKey, config: WriterConfig) -> (AuditSink, AuditWriter) {
    spawn_writer(store.audit(), key.clone(), config, AuditMetrics::new())
}

/// Appends `n` entries through a real writer (calls through reserved slots,
/// every tenth an admin entry), with a checkpoint every `every` entries and
/// a final one at shutdown.
async fn fill(store: &Store, key: &SigningKey, n: i64, every: u64) {
    let (sink, writer) = writer(store, key, writer_config(every));
    let principal = cellgate_kernel::Principal::local_operator();
    for i in 1..=n {
        if i % 10 == 0 {
            sink.append(AuditEvent::admin(
                "acme",
                &principal,
                "security",
                format!("admin note {i}"),
            ))
            .await
            .expect("admin entry");
        } else {
            let slot = sink.reserve().await.expect("slot");
            slot.send(call_event(i, if i % 3 == 0 { "beta" } else { "acme" }));
        }
    }
    sink.flush().await.expect("flush");
    assert!(
        writer.shutdown(Duration::from_secs(10)).await,
        "writer shutdown"
    );
}

/// A bind value for [`exec`].
enum Arg {
    Int(Option<i64>),
    Text(Option<String>),
}

/// Runs one statement with `args` on its own connection, beside the store:
/// what someone with database access can do. Returns the rows affected.
async fn exec(config: &StoreConfig, sql: &str, args: &[Arg]) -> u64 {
    match config {
        StoreConfig::Sqlite { path } => {
            let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
                .await
                .expect("raw sqlite connection");
            let mut q = sqlx::query(sql);
            for a in args {
                q = match a {
                    Arg::Int(v) => q.bind(*v),
                    Arg::Text(v) => q.bind(v.clone()),
                };
            }
            let done = q
                .execute(&mut c)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            let _ = c.close().await;
            done.rows_affected()
        }
        StoreConfig::Postgres { url, .. } => {
            let mut c = sqlx::PgConnection::connect(url)
                .await
                .expect("raw postgres connection");
            let mut q = sqlx::query(sql);
            for a in args {
                q = match a {
                    Arg::Int(v) => q.bind(*v),
                    Arg::Text(v) => q.bind(v.clone()),
                };
            }
            let done = q
                .execute(&mut c)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            let _ = c.close().await;
            done.rows_affected()
        }
    }
}

// ---- tests -------------------------------------------------------------------

async fn untouched_chain_verifies_clean(store: Store, _: StoreConfig) {
    let key = signing_key();
    // An empty chain is intact.
    let empty = verify(&store.audit(), &[key.verifying_key()])
        .await
        .expect("verify");
    assert!(empty.is_intact(), "{empty:?}");
    assert_eq!(
        (empty.entries, empty.checkpoints, empty.head_seq),
        (0, 0, 0)
    );

    fill(&store, &key, N, 10).await;
    let trusted = [key.verifying_key()];
    let checkpoints = all_checkpoints(&store).await;
    assert!(checkpoints.len() >= 5, "{checkpoints:?}");
    let report = verify(&store.audit(), &trusted).await.expect("verify");
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.entries, N as u64);
    assert_eq!(report.checkpoints, checkpoints.len() as u64);
    assert_eq!(report.head_seq, N);
    // The writer's last checkpoint, at shutdown, covers the whole chain.
    assert_eq!(report.last_checkpoint_seq, Some(N));

    // Small pages cross page boundaries of entries and checkpoints alike.
    for page in [1, 3, 7] {
        assert_eq!(
            verify_paged(&store.audit(), &trusted, page)
                .await
                .expect("verify"),
            report
        );
    }

    // Checkpoints only count with the right key.
    let stranger = signing_key().verifying_key();
    let p = problem(&store, &[stranger]).await;
    assert_eq!(p.kind, ProblemKind::ForgedCheckpoint, "{p}");
    assert_eq!(p.seq, checkpoints[0].checkpoint.seq);
    assert!(p.detail.contains("not a trusted key"), "{p}");
}

async fn edited_fields_are_reported_at_their_seq(store: Store, config: StoreConfig) {
    let (_, trusted) = filled(&store).await;
    let edits: [(i64, &str); 7] = [
        (
            37,
            "UPDATE audit_entries SET target = 'tool-9' WHERE seq = 37",
        ),
        (
            12,
            "UPDATE audit_entries SET at_ms = at_ms + 1 WHERE seq = 12",
        ),
        (
            6,
            "UPDATE audit_entries SET outcome = 'ok', error_code = NULL WHERE seq = 6",
        ),
        (
            18,
            "UPDATE audit_entries SET decisions = replace(decisions, 'deny', 'allow') WHERE seq = 18",
        ),
        (
            40,
            "UPDATE audit_entries SET message = 'nothing happened' WHERE seq = 40",
        ),
        // Entry 61 belongs to acme; now it claims to be beta's.
        (
            61,
            "UPDATE audit_entries SET tenant = 'beta' WHERE seq = 61",
        ),
        // Same meaning, different bytes: decisions must stay canonical.
        (
            77,
            "UPDATE audit_entries SET decisions = '[ ]' WHERE seq = 77",
        ),
    ];
    for (seq, statement) in edits {
        let original = entry(&store, seq).await;
        assert_eq!(sql(&config, statement).await, 1, "{statement}");
        let p = problem(&store, &trusted).await;
        assert_eq!(
            (p.kind, p.seq),
            (ProblemKind::Edited, seq),
            "{statement}: {p}"
        );
        assert_ne!(p.expected, p.found);
        // Put it back: the chain is whole again.
        put_row(&config, &original).await;
        assert_intact(&store, &trusted, N as u64).await;
    }

    // Editing the stored hash is an edit of that entry too.
    let original = entry(&store, 55).await;
    let mut forged = original.clone();
    forged.hash = "ab".repeat(32);
    put_row(&config, &forged).await;
    let p = problem(&store, &trusted).await;
    assert_eq!((p.kind, p.seq), (ProblemKind::Edited, 55), "{p}");
    assert_eq!(p.found, forged.hash);
    assert_eq!(p.expected, original.hash);
}

async fn deleted_rows_are_reported_as_gaps(store: Store, config: StoreConfig) {
    let (_, trusted) = filled(&store).await;
    sql(&config, "DELETE FROM audit_entries WHERE seq = 50").await;
    let p = problem(&store, &trusted).await;
    assert_eq!((p.kind, p.seq), (ProblemKind::Missing, 50), "{p}");
    assert_eq!(
        (p.expected.as_str(), p.found.as_str()),
        ("seq 50", "seq 51")
    );
    assert!(p.detail.contains("entry 50 was deleted"), "{p}");

    sql(&config, "DELETE FROM audit_entries WHERE seq IN (51, 52)").await;
    let p = problem(&store, &trusted).await;
    assert_eq!((p.kind, p.seq), (ProblemKind::Missing, 50), "{p}");
    assert!(p.detail.contains("entries 50 to 52"), "{p}");

    // Deleting the very first entry is a gap at 1, before all else.
    sql(&config, "DELETE FROM audit_entries WHERE seq = 1").await;
    let p = problem(&store, &trusted).await;
    assert_eq!((p.kind, p.seq), (ProblemKind::Missing, 1), "{p}");
}

async fn swapped_rows_are_reported_as_reordered(store: Store, config: StoreConfig) {
    let (_, trusted) = filled(&store).await;
    let (twenty, twenty_one) = (entry(&store, 20).await, entry(&store, 21).await);
    // Swap the positions of entries 20 and 21 (through a free seq, since
    // seq is the key).
    sql(
        &config,
        "UPDATE audit_entries SET seq = 1000000 WHERE seq = 20",
    )
    .await;
    sql(&config, "UPDATE audit_entries SET seq = 20 WHERE seq = 21").await;
    sql(
        &config,
        "UPDATE audit_entries SET seq = 21 WHERE seq = 1000000",
    )
    .await;
    let p = problem(&store, &trusted).await;
    assert_eq!((p.kind, p.seq), (ProblemKind::Reordered, 20), "{p}");
    // Position 20 should follow entry 19 but links to (the old) entry 20.
    assert_eq!(p.expected, twenty.prev_hash);
    assert_eq!(p.found, twenty_one.prev_hash);

    // Swapping the contents but keeping each row's seq is the same story.
    put_row(&config, &twenty).await;
    put_row(&config, &twenty_one).await;
    assert_intact(&store, &trusted, N as u64).await;
    let mut moved = entry(&store, 31).await;
    moved.seq = 30;
    let mut other = entry(&store, 30).await;
    other.seq = 31;
    put_row(&config, &moved).await;
    put_row(&config, &other).await;
    let p = problem(&store, &trusted).await;
    assert_eq!((p.kind, p.seq), (ProblemKind::Reordered, 30), "{p}");
}

async fn forged_checkpoints_are_reported(store: Store, config: StoreConfig) {
    let (_, trusted) = filled(&store).await;
    let first = all_checkpoints(&store).await[0].clone();
    let cp = first.checkpoint.clone();

    // A flipped signature bit.
    let mut bad_signature = cp.signature.clone();
    let last = bad_signature.pop().unwrap_or('0');
    bad_signature.push(if last == '0' { '1' } else { '0' });
    let set_signature = |sig: String| [Arg::Text(Some(sig)), Arg::Int(Some(first.id))];
    exec(
        &config,
        "UPDATE audit_checkpoints SET signature = $1 WHERE id = $2",
        &set_signature(bad_signature),
    )
    .await;
    let p = problem(&store, &trusted).await;
    assert_eq!(
        (p.kind, p.seq),
        (ProblemKind::ForgedCheckpoint, cp.seq),
        "{p}"
    );
    assert!(p.detail.contains("does not verify"), "{p}");
    exec(
        &config,
        "UPDATE audit_checkpoints SET signature = $1 WHERE id = $2",
        &set_signature(cp.signature.clone()),
    )
    .await;
    assert_intact(&store, &trusted, N as u64).await;

    // The checkpoint moved to another entry's hash and seq, signature kept.
    let later = entry(&store, cp.seq + 3).await;
    exec(
        &config,
        "UPDATE audit_checkpoints SET seq = $1, hash = $2 WHERE id = $3",
        &[
            Arg::Int(Some(later.seq)),
            Arg::Text(Some(later.hash.clone())),
            Arg::Int(Some(first.id)),
        ],
    )
    .await;
    let p = problem(&store, &trusted).await;
    assert_eq!(
        (p.kind, p.seq),
        (ProblemKind::ForgedCheckpoint, later.seq),
        "{p}"
    );
    exec(
        &config,
        "UPDATE audit_checkpoints SET seq = $1, hash = $2 WHERE id = $3",
        &[
            Arg::Int(Some(cp.seq)),
            Arg::Text(Some(cp.hash.clone())),
            Arg::Int(Some(first.id)),
        ],
    )
    .await;
    assert_intact(&store, &trusted, N as u64).await;

    // A well-formed checkpoint signed by someone else's key.
    let target = entry(&store, 45).await;
    let hash = from_hex::<32>(&target.hash).expect("hex");
    let intruder = sign_checkpoint(&signing_key(), 45, &hash, 1);
    exec(
        &config,
        "INSERT INTO audit_checkpoints (seq, hash, at_ms, key, signature) VALUES ($1, $2, $3, $4, $5)",
        &[
            Arg::Int(Some(intruder.seq)),
            Arg::Text(Some(intruder.hash.clone())),
            Arg::Int(Some(intruder.at_ms)),
            Arg::Text(Some(intruder.key.clone())),
            Arg::Text(Some(intruder.signature.clone())),
        ],
    )
    .await;
    let p = problem(&store, &trusted).await;
    assert_eq!((p.kind, p.seq), (ProblemKind::ForgedCheckpoint, 45), "{p}");
    assert!(p.detail.contains(&intruder.key), "{p}");
}

async fn truncated_tails_are_reported(store: Store, config: StoreConfig) {
    let (_, trusted) = filled(&store).await;
    let head_before = entry(&store, N).await;
    let eighty = entry(&store, 80).await;
    let beyond: Vec<i64> = all_checkpoints(&store)
        .await
        .iter()
        .map(|c| c.checkpoint.seq)
        .filter(|&s| s > 80)
        .collect();
    assert!(!beyond.is_empty());

    // Cut the tail after a checkpoint; even a careful cut that also moves
    // the head row back is caught by the signed checkpoints past the end.
    sql(&config, "DELETE FROM audit_entries WHERE seq > 80").await;
    for fix_head in [false, true] {
        if fix_head {
            set_head(&config, 80, &eighty.hash).await;
        }
        let p = problem(&store, &trusted).await;
        assert_eq!((p.kind, p.seq), (ProblemKind::Truncated, 81), "{p}");
        assert_eq!(p.expected, format!("entries through seq {}", beyond[0]));
        assert_eq!(p.found, "the chain ends at seq 80");
        assert!(p.detail.contains("checkpoint"), "{p}");
    }

    // Without the checkpoints, the head row still remembers.
    sql(&config, "DELETE FROM audit_checkpoints WHERE seq > 80").await;
    set_head(&config, N, &head_before.hash).await;
    let p = problem(&store, &trusted).await;
    assert_eq!((p.kind, p.seq), (ProblemKind::Truncated, 81), "{p}");
    assert_eq!(
        p.expected,
        format!("entries through seq {N} (the chain head)")
    );

    // The documented limit: a cut that also removes every later checkpoint
    // and rewinds the head looks like a shorter chain. The report shows how
    // far signatures cover, which is what an operator compares with the
    // last checkpoint they saw (or exported).
    set_head(&config, 80, &eighty.hash).await;
    let report = verify(&store.audit(), &trusted).await.expect("verify");
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.head_seq, 80);
    assert!(report.last_checkpoint_seq.is_some_and(|s| s <= 80));
}

async fn a_rehashed_chain_is_caught_by_its_checkpoints(store: Store, config: StoreConfig) {
    let (_, trusted) = filled(&store).await;
    // Someone who knows the algorithm edits entry 33 and recomputes every
    // hash after it, head row included: the chain itself is consistent...
    let all = store
        .audit()
        .entries(&AuditQuery::default(), 10_000)
        .await
        .expect("entries");
    let mut prev = from_hex::<32>(&all[31].hash).expect("hex");
    let mut rewritten = Vec::new();
    for r in &all[32..] {
        let mut r = r.clone();
        if r.seq == 33 {
            r.target = Some("nothing-to-see".into());
        }
        r.prev_hash = to_hex(&prev);
        prev = entry_hash(&prev, &r);
        r.hash = to_hex(&prev);
        rewritten.push(r);
    }
    for r in &rewritten {
        put_row(&config, r).await;
    }
    set_head(&config, N, &to_hex(&prev)).await;

    // ...but not with what was signed before the rewrite.
    let first_signed_after = all_checkpoints(&store)
        .await
        .into_iter()
        .find(|c| c.checkpoint.seq >= 33)
        .expect("a checkpoint after 33");
    let p = problem(&store, &trusted).await;
    assert_eq!(
        (p.kind, p.seq),
        (
            ProblemKind::CheckpointMismatch,
            first_signed_after.checkpoint.seq
        ),
        "{p}"
    );
    assert_eq!(p.expected, first_signed_after.checkpoint.hash);
    assert_eq!(
        p.found,
        rewritten[(first_signed_after.checkpoint.seq - 33) as usize].hash
    );
}

async fn entries_around_the_head_are_reported(store: Store, config: StoreConfig) {
    let (_, trusted) = filled(&store).await;
    // A correctly linked entry added behind the writer's back.
    let head = store.audit().head().await.expect("head").expect("head row");
    let extra = link(&head, &[call_event(999, "acme")]).expect("link");
    insert_row(&config, &extra[0]).await;
    let p = problem(&store, &trusted).await;
    assert_eq!((p.kind, p.seq), (ProblemKind::HeadMismatch, N + 1), "{p}");
    sql(&config, "DELETE FROM audit_entries WHERE seq = 96").await;
    assert_intact(&store, &trusted, N as u64).await;

    // A head row whose hash is not the last entry's.
    set_head(&config, N, &"cd".repeat(32)).await;
    let p = problem(&store, &trusted).await;
    assert_eq!((p.kind, p.seq), (ProblemKind::HeadMismatch, N), "{p}");
    set_head(&config, N, &head.hash.clone().unwrap_or_default()).await;

    // No head row at all.
    sql(&config, "DELETE FROM audit_head").await;
    let p = problem(&store, &trusted).await;
    assert_eq!(p.kind, ProblemKind::HeadMismatch, "{p}");
    assert_eq!(p.found, "no head row");
}

async fn concurrent_writers_keep_one_chain(store: Store, config: StoreConfig) {
    // Three replicas, each with its own pool, writer and key, appending to
    // one chain at the same time.
    const REPLICAS: usize = 3;
    const PER_REPLICA: i64 = 150;
    let keys: Vec<SigningKey> = (0..REPLICAS).map(|_| signing_key()).collect();
    let mut tasks = Vec::new();
    for (r, key) in keys.iter().enumerate() {
        let config = config.clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let replica = Store::open(&config).await.expect("replica store");
            let (sink, writer) = writer(&replica, &key, writer_config(25));
            for i in 0..PER_REPLICA {
                if i % 50 == 49 {
                    let principal = cellgate_kernel::Principal::local_operator();
                    sink.append(AuditEvent::admin(
                        "acme",
                        &principal,
                        "replica",
                        format!("replica {r} note {i}"),
                    ))
                    .await
                    .expect("admin");
                } else {
                    sink.reserve()
                        .await
                        .expect("slot")
                        .send(call_event(i, &format!("tenant-{r}")));
                }
            }
            sink.flush().await.expect("flush");
            assert!(writer.shutdown(Duration::from_secs(20)).await);
            replica.close().await;
        }));
    }
    for task in tasks {
        task.await.expect("replica task");
    }
    let trusted: Vec<VerifyingKey> = keys.iter().map(SigningKey::verifying_key).collect();
    let total = REPLICAS as u64 * PER_REPLICA as u64;
    let report = verify(&store.audit(), &trusted).await.expect("verify");
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.entries, total);
    // Every replica signed checkpoints of the shared chain.
    let signers: std::collections::BTreeSet<String> = all_checkpoints(&store)
        .await
        .into_iter()
        .map(|c| c.checkpoint.key)
        .collect();
    assert_eq!(signers.len(), REPLICAS, "{signers:?}");
    // Each replica's entries are all there.
    for r in 0..REPLICAS {
        let tenant = cellgate_store::TenantId::parse(&format!("tenant-{r}")).expect("id");
        let calls = store.scope(&tenant).audit().count().await.expect("count");
        assert_eq!(calls, PER_REPLICA - PER_REPLICA / 50);
    }
    // Trusting only one replica's key flags the others' checkpoints.
    let p = problem(&store, &trusted[..1]).await;
    assert_eq!(p.kind, ProblemKind::ForgedCheckpoint, "{p}");
}
