//! Storage for GP Rollout Control: one store trait per service, with backends behind it, and
//! the migrations that shape them.
//!
//! - [`supplier`]: the supplier's applied commands, estate, opt-outs, idempotency records and
//!   audit log ([`supplier::SupplierStore`]), on SQLite ([`supplier::SqliteSupplierStore`]).
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

use std::{str::FromStr, time::Duration};

use sqlx::{
    migrate::{Migration, MigrationType, Migrator},
    sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqliteLockingMode, SqlitePool, SqlitePoolOptions,
        SqliteSynchronous,
    },
};

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL is not one this build can open.
    #[error("unsupported database URL {0:?}: use sqlite://PATH (PostgreSQL support is not built yet)")]
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

/// Opens (creating if missing) the SQLite database at `url` (`sqlite://PATH` or
/// `sqlite:PATH`), durable and exclusive to this process, and runs `migrations`.
pub(crate) async fn open_sqlite(
    url: &str,
    migrations: &[(i64, &'static str, &'static str)],
) -> Result<SqlitePool, StoreError> {
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| StoreError::UnsupportedUrl(url.to_owned()))?;
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{path}"))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .locking_mode(SqliteLockingMode::Exclusive)
        .busy_timeout(Duration::from_millis(200));
    // One connection: writes are serialised by the service anyway, and the exclusive lock
    // belongs to a connection.
    let locked = |e: sqlx::Error| {
        // SQLITE_BUSY (5) or SQLITE_LOCKED (6): another process holds the file.
        let busy = e
            .as_database_error()
            .and_then(|d| d.code())
            .is_some_and(|c| c == "5" || c == "6");
        if busy {
            StoreError::Locked {
                path: path.to_owned(),
            }
        } else {
            e.into()
        }
    };
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_with(options)
        .await
        .map_err(locked)?;
    // Taking the write lock now makes a second process fail at start, not at its first write.
    sqlx::query("BEGIN IMMEDIATE; COMMIT;")
        .execute(&pool)
        .await
        .map_err(locked)?;
    let migrations = migrations
        .iter()
        .map(|(version, description, sql)| {
            Ok(Migration::new(
                *version,
                (*description).into(),
                MigrationType::Simple,
                sqlx::SqlSafeStr::into_sql_str(*sql),
                false,
            ))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Migrator::with_migrations(migrations).run(&pool).await?;
    Ok(pool)
}

/// Converts a stored integer to `u64`, refusing negatives.
pub(crate) fn unsigned(value: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("negative {what}: {value}")))
}

/// Converts to a stored integer, refusing values SQLite cannot hold.
pub(crate) fn signed(value: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Conflict(format!("{what} {value} is out of range")))
}
