//! The store harness every suite that needs a real database shares: run a
//! test body against a store on a fresh SQLite file in a temporary
//! directory, or on a fresh PostgreSQL database created for it (when
//! `CELLGATE_TEST_POSTGRES_URL` names a server, as `scripts/with-postgres`
//! sets; required with `CELLGATE_REQUIRE_POSTGRES=1`), and clean up after
//! it, also when it panics.
//!
//! It is a dev-dependency only: nothing here belongs in a shipped binary.

use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Once;

use cellgate_store::{Store, StoreConfig};
use sqlx::Connection as _;

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "cellgate-{prefix}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&path).expect("creating a temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Opens the store and runs the body in its own task, so a panicking body
/// still lets the caller clean up before the panic is passed on.
async fn run_isolated<F, Fut>(config: StoreConfig, body: F) -> Result<(), tokio::task::JoinError>
where
    F: FnOnce(Store, StoreConfig) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let store = Store::open(&config)
            .await
            .unwrap_or_else(|e| panic!("opening {config:?}: {e}"));
        body(store.clone(), config).await;
        store.close().await;
    })
    .await
}

fn rethrow(outcome: Result<(), tokio::task::JoinError>) {
    if let Err(e) = outcome {
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("test task failed: {e}"),
        }
    }
}

/// Runs `body` on a store in a fresh SQLite file (in a not-yet-existing
/// subdirectory, so opening also creates parent directories).
pub async fn on_sqlite<F, Fut>(body: F)
where
    F: FnOnce(Store, StoreConfig) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let dir = TempDir::new("test");
    let config = StoreConfig::Sqlite {
        path: dir.path().join("data").join("cellgate.db"),
    };
    let outcome = run_isolated(config, body).await;
    drop(dir);
    rethrow(outcome);
}

/// The server's admin URL, or `None` (after a one-time notice) when
/// PostgreSQL tests are not configured.
pub fn postgres_admin_url() -> Option<String> {
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
                // Straight to stderr: libtest captures `eprintln!` of passing tests.
                let _ = writeln!(
                    std::io::stderr(),
                    "note: CELLGATE_TEST_POSTGRES_URL is not set; skipping the PostgreSQL half of the tests"
                );
            });
            None
        }
    }
}

/// `url` with its database name replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
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

/// Runs `body` on a store in a PostgreSQL database created for it and
/// dropped afterwards; does nothing when PostgreSQL is not configured.
pub async fn on_postgres<F, Fut>(body: F)
where
    F: FnOnce(Store, StoreConfig) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(admin_url) = postgres_admin_url() else {
        return;
    };
    // A database per test keeps tests independent and parallel-safe.
    let db = format!("t_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .expect("connecting with CELLGATE_TEST_POSTGRES_URL");
    sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(&mut admin)
        .await
        .expect("creating a test database");
    let config = StoreConfig::Postgres {
        url: with_database(&admin_url, &db),
        max_connections: 8,
    };
    let outcome = run_isolated(config, body).await;
    // FORCE ends connections a panicking body may have left behind.
    let dropped = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .execute(&mut admin)
        .await;
    let _ = admin.close().await;
    rethrow(outcome);
    dropped.expect("dropping the test database");
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn database_names_are_replaced() {
        assert_eq!(
            with_database("postgres://u:p@h:5/postgres?sslmode=disable", "t1"),
            "postgres://u:p@h:5/t1?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "t1"), "postgres://h/t1");
    }
}
