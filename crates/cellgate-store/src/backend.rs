//! Connection pools, opening, migrations and the small amount of code that
//! differs between SQLite and PostgreSQL.

use std::borrow::Cow;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::types::Json;
use sqlx::{ColumnIndex, Connection, Decode, Row, Type};

use crate::{CallRecord, Document, StoreError, Tenant, TenantId, TenantStatus};

/// How long SQLite waits on a locked database before giving up; long enough
/// to ride out a concurrent write batch.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// WAL allows many readers next to the one writer; a handful is plenty for
/// one process.
const SQLITE_MAX_CONNECTIONS: u32 = 8;
/// Fail a PostgreSQL acquire instead of hanging a request when the server is
/// away.
const PG_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// The pool behind a [`crate::Store`]. Pools are reference-counted, so
/// cloning is cheap and every clone shares the connections.
#[derive(Clone)]
pub(crate) enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl Backend {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }
}

/// `on_backend!(backend, |pool| body)` runs `body` with `pool` bound to the
/// concrete pool of either backend. The body is type-checked once per
/// backend, so the same SQL text and binding code serve both where the
/// dialects agree (both accept `$n` placeholders). The closure-like syntax is
/// only there so rustfmt formats the body; it is not a closure, and `?` in it
/// returns from the enclosing function. `|pool, Db|` also names the database type, for APIs such
/// as `QueryBuilder` that need it spelled out.
macro_rules! on_backend {
    ($backend:expr, |$pool:ident| $body:expr) => {
        match $backend {
            $crate::backend::Backend::Sqlite($pool) => $body,
            $crate::backend::Backend::Postgres($pool) => $body,
        }
    };
    ($backend:expr, |$pool:ident, $db:ident| $body:expr) => {
        match $backend {
            $crate::backend::Backend::Sqlite($pool) => {
                type $db = sqlx::Sqlite;
                $body
            }
            $crate::backend::Backend::Postgres($pool) => {
                type $db = sqlx::Postgres;
                $body
            }
        }
    };
}
pub(crate) use on_backend;

/// Milliseconds since the Unix epoch; a clock before 1970 reads as 0.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub(crate) fn is_foreign_key_violation(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|e| e.is_foreign_key_violation())
}

/// Splits `rows` into chunks whose lengths are powers of two, largest first,
/// none longer than `max`. A multi-row INSERT's SQL text depends on its row
/// count; with these sizes a table needs at most log2(`max`) + 1 distinct
/// statements, which the connection's statement cache keeps prepared,
/// instead of parsing a new statement for nearly every batch (measured at
/// ~2–3% of the full pipeline's CPU on SQLite).
pub(crate) fn statement_sized_chunks<T>(rows: &[T], max: usize) -> impl Iterator<Item = &[T]> {
    let max = max.max(1);
    let mut rest = rows;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let len = rest.len().min(max);
        // Largest power of two not above `len` (len ≥ 1).
        let n = 1usize << (usize::BITS - 1 - len.leading_zeros());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        Some(chunk)
    })
}

// ---- opening ---------------------------------------------------------------

pub(crate) async fn open_sqlite(path: &Path) -> Result<Backend, StoreError> {
    let location = path.display().to_string();
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|error| StoreError::Io {
                action: "creating the data directory",
                location: parent.display().to_string(),
                error,
            })?;
    }
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        // WAL lets readers proceed while the call-log writer commits;
        // NORMAL is durable across application crashes in WAL mode and
        // avoids an fsync per transaction.
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(SQLITE_BUSY_TIMEOUT)
        // Off by default in SQLite; the tenant references depend on it.
        .foreign_keys(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(SQLITE_MAX_CONNECTIONS)
        .connect_with(options)
        .await
        .map_err(|error| StoreError::Connect {
            action: "opening the SQLite database at",
            location: location.clone(),
            error,
        })?;
    migrator(SQLITE_MIGRATIONS)
        .await
        .map_err(|error| StoreError::Migrate {
            backend: "sqlite",
            location: location.clone(),
            error,
        })?
        .run(&pool)
        .await
        .map_err(|error| StoreError::Migrate {
            backend: "sqlite",
            location: location.clone(),
            error,
        })?;
    tracing::info!(backend = "sqlite", path = %location, "store opened");
    Ok(Backend::Sqlite(pool))
}

pub(crate) async fn open_postgres(url: &str, max_connections: u32) -> Result<Backend, StoreError> {
    let location = redact_url(url);
    if max_connections == 0 {
        return Err(StoreError::invalid("max_connections", "must be at least 1"));
    }
    let options = PgConnectOptions::from_str(url).map_err(|error| StoreError::Connect {
        action: "parsing the PostgreSQL URL",
        location: location.clone(),
        error,
    })?;
    // One direct connection first: the pool would retry until its timeout
    // and then report only "pool timed out", hiding the actual cause
    // (refused, bad password, no such database).
    let connect_error = |error| StoreError::Connect {
        action: "connecting to PostgreSQL at",
        location: location.clone(),
        error,
    };
    let probe = tokio::time::timeout(PG_ACQUIRE_TIMEOUT, PgConnection::connect_with(&options))
        .await
        .map_err(|_| {
            connect_error(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {}s", PG_ACQUIRE_TIMEOUT.as_secs()),
            )))
        })?
        .map_err(connect_error)?;
    // Closing is best effort; the probe has done its job either way.
    let _ = probe.close().await;
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(PG_ACQUIRE_TIMEOUT)
        .connect_lazy_with(options);
    // sqlx takes an advisory lock around the run, so replicas starting
    // together migrate once.
    migrator(POSTGRES_MIGRATIONS)
        .await
        .map_err(|error| StoreError::Migrate {
            backend: "postgres",
            location: location.clone(),
            error,
        })?
        .run(&pool)
        .await
        .map_err(|error| StoreError::Migrate {
            backend: "postgres",
            location: location.clone(),
            error,
        })?;
    tracing::info!(backend = "postgres", url = %location, "store opened");
    Ok(Backend::Postgres(pool))
}

// ---- migrations --------------------------------------------------------------

/// One migration compiled into the binary, so a deployed `cellgate` never
/// depends on SQL files next to it.
#[derive(Debug)]
struct Embedded {
    version: i64,
    description: &'static str,
    sql: &'static str,
}

const SQLITE_MIGRATIONS: &[Embedded] = &[
    Embedded {
        version: 1,
        description: "init",
        sql: include_str!("../migrations/sqlite/0001_init.sql"),
    },
    Embedded {
        version: 2,
        description: "audit",
        sql: include_str!("../migrations/sqlite/0002_audit.sql"),
    },
    Embedded {
        version: 3,
        description: "tenant status",
        sql: include_str!("../migrations/sqlite/0003_tenant_status.sql"),
    },
    Embedded {
        version: 4,
        description: "auth",
        sql: include_str!("../migrations/sqlite/0004_auth.sql"),
    },
    Embedded {
        version: 5,
        description: "memory",
        sql: include_str!("../migrations/sqlite/0005_memory.sql"),
    },
    Embedded {
        version: 6,
        description: "tasks",
        sql: include_str!("../migrations/sqlite/0006_tasks.sql"),
    },
    Embedded {
        version: 7,
        description: "tasks progress",
        sql: include_str!("../migrations/sqlite/0007_tasks_progress.sql"),
    },
];

const POSTGRES_MIGRATIONS: &[Embedded] = &[
    Embedded {
        version: 1,
        description: "init",
        sql: include_str!("../migrations/postgres/0001_init.sql"),
    },
    Embedded {
        version: 2,
        description: "audit",
        sql: include_str!("../migrations/postgres/0002_audit.sql"),
    },
    Embedded {
        version: 3,
        description: "tenant status",
        sql: include_str!("../migrations/postgres/0003_tenant_status.sql"),
    },
    Embedded {
        version: 4,
        description: "auth",
        sql: include_str!("../migrations/postgres/0004_auth.sql"),
    },
    Embedded {
        version: 5,
        description: "memory",
        sql: include_str!("../migrations/postgres/0005_memory.sql"),
    },
    Embedded {
        version: 6,
        description: "tasks",
        sql: include_str!("../migrations/postgres/0006_tasks.sql"),
    },
    Embedded {
        version: 7,
        description: "tasks progress",
        sql: include_str!("../migrations/postgres/0007_tasks_progress.sql"),
    },
];

/// Feeds embedded migrations to sqlx's public `MigrationSource` interface,
/// which keeps sqlx's bookkeeping (applied versions, checksums, locking)
/// without the `macros` feature.
#[derive(Debug)]
struct EmbeddedSource(&'static [Embedded]);

type MigrationFuture = Pin<Box<dyn Future<Output = Result<Vec<Migration>, BoxDynError>> + Send>>;

impl MigrationSource<'static> for EmbeddedSource {
    fn resolve(self) -> MigrationFuture {
        let migrations = self
            .0
            .iter()
            .map(|m| {
                Migration::new(
                    m.version,
                    Cow::Borrowed(m.description),
                    MigrationType::Simple,
                    Cow::Borrowed(m.sql),
                    false,
                )
            })
            .collect();
        Box::pin(std::future::ready(Ok(migrations)))
    }
}

async fn migrator(
    migrations: &'static [Embedded],
) -> Result<Migrator, sqlx::migrate::MigrateError> {
    Migrator::new(EmbeddedSource(migrations)).await
}

// ---- rows ------------------------------------------------------------------

// Generic over the row type so one decoder serves both backends.

pub(crate) fn tenant_from_row<'r, R>(row: &'r R) -> Result<Tenant, sqlx::Error>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let id: String = row.try_get("id")?;
    let status: String = row.try_get("status")?;
    Ok(Tenant {
        // Stored ids were validated on the way in; a bad one means the table
        // was edited by hand, which is worth a loud decode error.
        id: TenantId::parse(&id).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        name: row.try_get("name")?,
        created_at_ms: row.try_get("created_at_ms")?,
        status: TenantStatus::parse(&status).ok_or_else(|| {
            sqlx::Error::Decode(format!("unknown tenant status {status:?}").into())
        })?,
        plan: row.try_get("plan")?,
    })
}

pub(crate) fn document_from_row<'r, R>(row: &'r R) -> Result<Document, sqlx::Error>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    Json<Value>: Decode<'r, R::Database> + Type<R::Database>,
{
    let Json(value) = row.try_get::<Json<Value>, _>("value")?;
    Ok(Document {
        collection: row.try_get("collection")?,
        key: row.try_get("key")?,
        value,
        version: row.try_get("version")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
    })
}

pub(crate) fn call_record_from_row<'r, R>(row: &'r R) -> Result<CallRecord, sqlx::Error>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(CallRecord {
        principal: row.try_get("principal")?,
        method: row.try_get("method")?,
        target: row.try_get("target")?,
        outcome: row.try_get("outcome")?,
        error_code: row.try_get("error_code")?,
        latency_us: row.try_get("latency_us")?,
        at_ms: row.try_get("at_ms")?,
    })
}

// ---- redaction ---------------------------------------------------------------

/// A connection URL safe to print: the password in the user-info part and
/// any `password=` query parameter become `***`. Input that is not a URL is
/// not shown at all, since it may be a key-value string with a password.
pub(crate) fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return "<not a URL; hidden>".to_owned();
    };
    let (scheme, rest) = url.split_at(scheme_end + 3);

    // The last `@` ends the user info. Searching the whole remainder, not
    // just up to the first `/`, `?` or `#`, means a password containing
    // those characters unescaped is still hidden rather than half printed.
    let (userinfo, host_and_tail) = match rest.rfind('@') {
        Some(at) => {
            let user = match rest[..at].split_once(':') {
                Some((user, _password)) => format!("{user}:***"),
                None => rest[..at].to_owned(),
            };
            (format!("{user}@"), &rest[at + 1..])
        }
        None => (String::new(), rest),
    };

    let (before_fragment, fragment) = match host_and_tail.find('#') {
        Some(i) => host_and_tail.split_at(i),
        None => (host_and_tail, ""),
    };
    let tail = match before_fragment.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => before_fragment.to_owned(),
    };
    format!("{scheme}{userinfo}{tail}{fragment}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn statement_sized_chunks_are_powers_of_two_covering_every_row() {
        let rows: Vec<u32> = (0..300).collect();
        let sizes: Vec<usize> = super::statement_sized_chunks(&rows, 256)
            .map(<[u32]>::len)
            .collect();
        assert_eq!(sizes, [256, 32, 8, 4]);
        let joined: Vec<u32> = super::statement_sized_chunks(&rows, 256)
            .flatten()
            .copied()
            .collect();
        assert_eq!(joined, rows);
        assert_eq!(super::statement_sized_chunks(&rows[..1], 256).count(), 1);
        assert_eq!(super::statement_sized_chunks::<u32>(&[], 256).count(), 0);
        let sizes: Vec<usize> = super::statement_sized_chunks(&rows, 100)
            .map(<[u32]>::len)
            .collect();
        assert_eq!(sizes, [64, 64, 64, 64, 32, 8, 4]);
    }

    use super::*;

    #[test]
    fn redacts_password_in_userinfo() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/cellgate"),
            "postgres://app:***@db:5432/cellgate"
        );
        // An `@` inside the password must not leak the rest of it.
        assert_eq!(
            redact_url("postgres://app:p@ss@db/x"),
            "postgres://app:***@db/x"
        );
        assert_eq!(
            redact_url("postgres://app:a/b?c#d@db/x"),
            "postgres://app:***@db/x"
        );
    }

    #[test]
    fn keeps_urls_without_password() {
        for url in [
            "postgres://app@127.0.0.1:5432/postgres",
            "postgres://localhost/db",
            "postgresql://h",
        ] {
            assert_eq!(redact_url(url), url);
        }
    }

    #[test]
    fn redacts_password_query_parameter() {
        assert_eq!(
            redact_url("postgres://h/db?sslmode=require&PASSWORD=x&user=u#frag"),
            "postgres://h/db?sslmode=require&PASSWORD=***&user=u#frag"
        );
    }

    #[test]
    fn hides_non_urls() {
        assert_eq!(redact_url("host=h password=x"), "<not a URL; hidden>");
    }

    #[test]
    fn now_is_after_2020() {
        assert!(now_ms() > 1_577_836_800_000);
    }

    #[test]
    fn embedded_migrations_are_numbered_in_order() {
        let versions = |set: &[Embedded]| set.iter().map(|m| m.version).collect::<Vec<i64>>();
        for set in [SQLITE_MIGRATIONS, POSTGRES_MIGRATIONS] {
            // Gaps are fine (sqlx applies in version order); going back is not.
            assert!(
                versions(set).windows(2).all(|w| w[0] < w[1]),
                "{:?}",
                versions(set)
            );
            assert_eq!(versions(set)[0], 1);
        }
        // Both backends must evolve in step.
        assert_eq!(versions(SQLITE_MIGRATIONS), versions(POSTGRES_MIGRATIONS));
    }
}
