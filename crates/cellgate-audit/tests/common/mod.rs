//! Shared harness of the audit integration tests: a fresh SQLite file or a
//! fresh PostgreSQL database per test, raw SQL beside the store (the
//! tamperer's access), and a writer to fill the chain.
//!
//! PostgreSQL runs when `CELLGATE_TEST_POSTGRES_URL` points at a server
//! whose user may create databases (`scripts/with-postgres` provides one);
//! otherwise that half is skipped with a notice, or fails when
//! `CELLGATE_REQUIRE_POSTGRES=1`.

use cellgate_audit::{AuditEvent, EntryKind, Outcome, SigningKey};
use cellgate_store::StoreConfig;
use sqlx::Connection as _;

pub use cellgate_testkit::{on_postgres, on_sqlite};

/// Declares `mod <name> { sqlite, postgres }` running `<name>` on each backend.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                $crate::common::on_sqlite(super::$name).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                $crate::common::on_postgres(super::$name).await
            }
        }
    )*};
}

/// Runs one statement on its own connection, beside the store: what
/// someone with database access can do. Returns the rows affected.
pub async fn sql(config: &StoreConfig, sql: &str) -> u64 {
    match config {
        StoreConfig::Sqlite { path } => {
            let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
                .await
                .expect("raw sqlite connection");
            let done = sqlx::query(sql)
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
            let done = sqlx::query(sql)
                .execute(&mut c)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            let _ = c.close().await;
            done.rows_affected()
        }
    }
}

/// A fresh random signing key.
pub fn signing_key() -> SigningKey {
    SigningKey::from_bytes(&rand::random::<[u8; 32]>())
}

/// A call event as the audit stage would make it, varied by `n`.
pub fn call_event(n: i64, tenant: &str) -> AuditEvent {
    AuditEvent {
        at_ms: 1_700_000_000_000 + n * 1000,
        tenant: tenant.into(),
        kind: EntryKind::Call,
        principal_id: format!("user-{}", n % 7),
        principal_kind: "user".into(),
        method: "tools/call".into(),
        target: Some(format!("tool-{}", n % 5)),
        args_digest: Some(cellgate_audit::args_digest(&serde_json::json!({ "n": n }))),
        outcome: if n % 6 == 0 {
            Outcome::Error
        } else {
            Outcome::Ok
        },
        error_code: (n % 6 == 0).then_some(-32003),
        latency_us: 100 + n as u64,
        decisions: vec![cellgate_audit::DecisionRecord {
            layer: "authorize".into(),
            verdict: if n % 6 == 0 { "deny" } else { "allow" }.into(),
            detail: (n % 6 == 0).then(|| "no permission".into()),
        }],
        category: None,
        message: None,
    }
}
