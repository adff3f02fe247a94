//! Storage for GP Rollout Control: one store trait per service, with backends behind it, and
//! the migrations that shape them.
//!
//! - [`supplier`]: the supplier's applied commands, estate, opt-outs, idempotency records and
//!   audit log ([`supplier::SupplierStore`]), on SQLite ([`supplier::SqlSupplierStore`]).
//!
//! **Architecture invariant:** this crate knows nothing of tonic. Command bodies are stored as
//! the bytes the service hands over and handed back the same; the service decodes and
//! re-validates them. The serving state lives in memory in each service and is rebuilt from
//! the store at start.
//!
//! SQLite is opened for durability: write-ahead log with `synchronous = FULL` (a commit is on
//! disk before it returns, so it survives power loss), and an exclusive lock so that exactly
//! one process serves from a file. The PostgreSQL backend (for several replicas) comes later.

mod common;
pub mod coordinator;
pub mod reference;
pub mod supplier;

pub use common::RequestRecord;

use std::{sync::Once, time::Duration};

use sqlx::{
    AnyPool, Executor,
    any::AnyPoolOptions,
    migrate::{Migration, MigrationType, Migrator},
};

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL is not one this build can open.
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://USER@HOST/DATABASE")]
    UnsupportedUrl(String),
    /// Another process holds the SQLite file.
    #[error(
        "database {path} is in use by another process; SQLite serves exactly one replica (use PostgreSQL for more)"
    )]
    Locked {
        /// The file.
        path: String,
    },
    /// A write conflicted with the stored state (for example a sequence already stored).
    #[error("conflict: {0}")]
    Conflict(String),
    /// Stored data that does not read back (a value this version does not understand).
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Which database a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// An SQLite file: one process.
    Sqlite,
    /// PostgreSQL: several replicas may share it.
    Postgres,
}

impl Backend {
    /// The backend a database URL names: `sqlite://PATH` or `postgres://...`.
    pub fn of(url: &str) -> Result<Backend, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            Err(StoreError::UnsupportedUrl(url.to_owned()))
        }
    }
}

/// One migration: version, description, SQLite SQL, PostgreSQL SQL.
pub(crate) type MigrationSql = (i64, &'static str, &'static str, &'static str);

/// Opens the database at `url` and runs `migrations`. SQLite is opened durable and exclusive to
/// this process (created if missing); PostgreSQL with a small pool.
pub(crate) async fn open(url: &str, migrations: &[MigrationSql]) -> Result<(AnyPool, Backend), StoreError> {
    static DRIVERS: Once = Once::new();
    DRIVERS.call_once(sqlx::any::install_default_drivers);
    let backend = Backend::of(url)?;
    let pool = match backend {
        Backend::Sqlite => {
            let path = url
                .trim_start_matches("sqlite://")
                .trim_start_matches("sqlite:")
                .to_owned();
            let locked = |e: sqlx::Error| {
                // SQLITE_BUSY (5) or SQLITE_LOCKED (6): another process holds the file.
                // A pool that times out connecting here is one whose connections kept finding the
                // file locked.
                let busy = matches!(e, sqlx::Error::PoolTimedOut)
                    || e.as_database_error()
                        .and_then(|d| d.code())
                        .is_some_and(|c| c == "5" || c == "6");
                if busy {
                    StoreError::Locked { path: path.clone() }
                } else {
                    e.into()
                }
            };
            let url = if url.contains('?') {
                url.to_owned()
            } else {
                format!("sqlite://{path}?mode=rwc")
            };
            const PRAGMAS: &str = "PRAGMA busy_timeout = 200; PRAGMA locking_mode = EXCLUSIVE; \
                                   PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;";
            // Check the lock with one connection first: the pool would retry a locked file
            // until its acquire timeout and then report only the timeout.
            {
                use sqlx::Connection;
                let mut probe = sqlx::AnyConnection::connect(&url).await.map_err(locked)?;
                probe.execute(PRAGMAS).await.map_err(locked)?;
                probe.execute("BEGIN IMMEDIATE; COMMIT;").await.map_err(locked)?;
                probe.close().await?;
            }
            // One connection: writes are serialised by the service anyway, and the exclusive
            // lock belongs to a connection. The locking mode must be set before WAL.
            let pool = AnyPoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .acquire_timeout(Duration::from_secs(5))
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        conn.execute(PRAGMAS).await?;
                        Ok(())
                    })
                })
                .connect(&url)
                .await
                .map_err(locked)?;
            // Taking the write lock now makes a second process fail at start, not at its first
            // write.
            sqlx::query("BEGIN IMMEDIATE; COMMIT;")
                .execute(&pool)
                .await
                .map_err(locked)?;
            pool
        }
        Backend::Postgres => {
            AnyPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(10))
                .connect(url)
                .await?
        }
    };
    let migrations = migrations
        .iter()
        .map(|(version, description, sqlite, postgres)| {
            let sql = if backend == Backend::Sqlite {
                *sqlite
            } else {
                *postgres
            };
            Migration::new(
                *version,
                (*description).into(),
                MigrationType::Simple,
                sqlx::SqlSafeStr::into_sql_str(sql),
                false,
            )
        })
        .collect();
    Migrator::with_migrations(migrations).run(&pool).await?;
    Ok((pool, backend))
}

/// Converts a stored integer to `u64`, refusing negatives.
pub(crate) fn unsigned(value: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("negative {what}: {value}")))
}

/// Converts to a stored integer, refusing values SQLite cannot hold.
pub(crate) fn signed(value: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Conflict(format!("{what} {value} is out of range")))
}
