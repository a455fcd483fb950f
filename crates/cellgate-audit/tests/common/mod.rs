//! Shared harness of the audit integration tests: a fresh SQLite file or a
//! fresh PostgreSQL database per test, raw SQL beside the store (the
//! tamperer's access), and a writer to fill the chain.
//!
//! PostgreSQL runs when `CELLGATE_TEST_POSTGRES_URL` points at a server
//! whose user may create databases (`scripts/with-postgres` provides one);
//! otherwise that half is skipped with a notice, or fails when
//! `CELLGATE_REQUIRE_POSTGRES=1`.

use std::future::Future;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Once;

use cellgate_audit::{AuditEvent, EntryKind, Outcome, SigningKey};
use cellgate_store::{Store, StoreConfig};
use sqlx::Connection as _;

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "cellgate-audit-test-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&path).expect("creating a temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Opens the store and runs the body in its own task, so a panicking body
/// still lets the caller clean up before the panic is passed on.
async fn run_isolated<F, Fut>(config: StoreConfig, body: F)
where
    F: FnOnce(Store, StoreConfig) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let outcome = tokio::spawn(async move {
        let store = Store::open(&config)
            .await
            .unwrap_or_else(|e| panic!("opening {config:?}: {e}"));
        body(store.clone(), config).await;
        store.close().await;
    })
    .await;
    if let Err(e) = outcome {
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("test task failed: {e}"),
        }
    }
}

pub async fn on_sqlite<F, Fut>(body: F)
where
    F: FnOnce(Store, StoreConfig) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let dir = TempDir::new();
    let config = StoreConfig::Sqlite {
        path: dir.0.join("audit.db"),
    };
    run_isolated(config, body).await;
    drop(dir);
}

fn postgres_admin_url() -> Option<String> {
    match std::env::var("CELLGATE_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("CELLGATE_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "CELLGATE_REQUIRE_POSTGRES=1 but CELLGATE_TEST_POSTGRES_URL is not set; \
                 run under scripts/with-postgres"
            );
            static NOTICE: Once = Once::new();
            NOTICE.call_once(|| {
                let _ = writeln!(
                    std::io::stderr(),
                    "note: CELLGATE_TEST_POSTGRES_URL is not set; skipping the PostgreSQL half of the audit tests"
                );
            });
            None
        }
    }
}

/// `url` with its database name replaced by `db`.
fn with_database(url: &str, db: &str) -> String {
    let (main, query) = match url.split_once('?') {
        Some((main, query)) => (main, format!("?{query}")),
        None => (url, String::new()),
    };
    let authority_start = main.find("://").map_or(0, |i| i + 3);
    let path_start = main[authority_start..]
        .find('/')
        .map_or(main.len(), |i| i + authority_start);
    format!("{}/{db}{query}", &main[..path_start])
}

pub async fn on_postgres<F, Fut>(body: F)
where
    F: FnOnce(Store, StoreConfig) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(admin_url) = postgres_admin_url() else {
        return;
    };
    let db = format!("a_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .expect("connecting with CELLGATE_TEST_POSTGRES_URL");
    sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(&mut admin)
        .await
        .expect("creating a test database");
    let config = StoreConfig::Postgres {
        url: with_database(&admin_url, &db),
        max_connections: 4,
    };
    let outcome = tokio::spawn(run_isolated(config, body)).await;
    let dropped = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .execute(&mut admin)
        .await;
    let _ = admin.close().await;
    if let Err(e) = outcome {
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("test task failed: {e}"),
        }
    }
    dropped.expect("dropping the test database");
}

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
