//! The coordinator service's store.
//!
//! Features, commands, deliveries and supplier status are stored as the service's encoded
//! records beside the columns that identify and order them; every write is one transaction
//! with its audit event and idempotency record. A command's global sequence is unique in the
//! table, so two writers can never give one sequence to two commands.

use async_trait::async_trait;
use rollout_core::audit::{AuditDraft, AuditEvent, micros};
use sqlx::{AnyPool, Row};

use crate::{Backend, MigrationSql, RequestRecord, StoreError, common, open, signed, unsigned};

/// Where a command stands, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandState {
    /// Waiting for approval.
    Pending,
    /// Given a sequence and being delivered.
    Dispatched,
    /// Withdrawn before approval.
    Cancelled,
}

impl CommandState {
    fn as_str(self) -> &'static str {
        match self {
            CommandState::Pending => "pending",
            CommandState::Dispatched => "dispatched",
            CommandState::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        Ok(match s {
            "pending" => CommandState::Pending,
            "dispatched" => CommandState::Dispatched,
            "cancelled" => CommandState::Cancelled,
            other => return Err(StoreError::Corrupt(format!("unknown command state {other:?}"))),
        })
    }
}

/// A stored command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRow {
    /// Command id.
    pub id: String,
    /// Its global sequence, once dispatched.
    pub sequence: Option<u64>,
    /// Where it stands.
    pub state: CommandState,
    /// When it was issued (microseconds since the epoch), for ordering.
    pub created_at: i64,
    /// The encoded record.
    pub body: Vec<u8>,
}

/// A stored delivery of one command to one supplier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRow {
    /// The command's sequence.
    pub sequence: u64,
    /// The supplier.
    pub supplier: String,
    /// The encoded record.
    pub body: Vec<u8>,
}

/// A keyed encoded record (a feature or a supplier's status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The key.
    pub key: String,
    /// The encoded record.
    pub body: Vec<u8>,
}

/// Everything the coordinator serves from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoordinatorState {
    /// Feature definitions.
    pub features: Vec<Record>,
    /// Commands, in issue order.
    pub commands: Vec<CommandRow>,
    /// Deliveries.
    pub deliveries: Vec<DeliveryRow>,
    /// Supplier status.
    pub suppliers: Vec<Record>,
    /// The stored version (see [`Write::expected_version`]).
    pub version: u64,
    /// How many writes of any kind the store has taken.
    pub changes: u64,
}

/// One atomic write: upserts of each kind, an idempotency record, the audit event.
#[derive(Debug, Clone, Default)]
pub struct Write {
    /// Features to insert or replace.
    pub features: Vec<Record>,
    /// Commands to insert or replace.
    pub commands: Vec<CommandRow>,
    /// Deliveries to insert or replace.
    pub deliveries: Vec<DeliveryRow>,
    /// Supplier status to insert or replace.
    pub suppliers: Vec<Record>,
    /// The request's idempotency record.
    pub request: Option<RequestRecord>,
    /// The audit event of the call, if it is an audited call.
    pub audit: Option<AuditDraft>,
    /// For a write that must not race another replica's (features, commands): the stored
    /// version it was computed from. The write moves it on by one, or fails with
    /// [`StoreError::Conflict`] if another replica moved it first.
    pub expected_version: Option<u64>,
}

/// The coordinator's store.
#[async_trait]
pub trait CoordinatorStore: Send + Sync + 'static {
    /// Reads everything.
    async fn load(&self) -> Result<CoordinatorState, StoreError>;
    /// Applies a write atomically. A sequence given to two commands is a
    /// [`StoreError::Conflict`] and nothing is written.
    async fn write(&self, write: Write) -> Result<(), StoreError>;
    /// The idempotency record of a request id.
    async fn recall_request(&self, request_id: &str) -> Result<Option<RequestRecord>, StoreError>;
    /// Appends an audit event on its own (refused calls).
    async fn append_audit(&self, audit: AuditDraft) -> Result<AuditEvent, StoreError>;
    /// Audit events after `after`, at most `limit`, in order.
    async fn list_audit(&self, after: u64, limit: u32) -> Result<Vec<AuditEvent>, StoreError>;
    /// The stored version and change count, cheaply (replicas poll it).
    async fn head(&self) -> Result<(u64, u64), StoreError>;
    /// Whether other processes may write to the same store (PostgreSQL).
    fn shared(&self) -> bool;
}

const MIGRATIONS: &[MigrationSql] = &[
    (
        1,
        "coordinator initial schema",
        include_str!("../migrations/sqlite/coordinator_0001_init.sql"),
        include_str!("../migrations/postgres/coordinator_0001_init.sql"),
    ),
    (
        2,
        "coordinator replica versions",
        include_str!("../migrations/sqlite/coordinator_0002_meta.sql"),
        include_str!("../migrations/postgres/coordinator_0002_meta.sql"),
    ),
];

/// The PostgreSQL channel on which a coordinator store announces each write.
pub const CHANGE_CHANNEL: &str = "gprollout_coordinator";

/// The coordinator store on SQLite or PostgreSQL.
#[derive(Debug, Clone)]
pub struct SqlCoordinatorStore {
    pool: AnyPool,
    backend: Backend,
    url: String,
}

impl SqlCoordinatorStore {
    /// Opens the database at `url` (`sqlite://PATH`, created if missing, or `postgres://...`)
    /// and brings its schema up to date.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let (pool, backend) = open(url, MIGRATIONS).await?;
        Ok(SqlCoordinatorStore {
            pool,
            backend,
            url: url.to_owned(),
        })
    }

    /// Closes the database, releasing its lock.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// A feed of writes made through any replica, on PostgreSQL; `None` on SQLite.
    pub async fn changes(&self) -> Result<Option<crate::supplier::ChangeFeed>, StoreError> {
        crate::supplier::ChangeFeed::listen(self.backend, &self.url, CHANGE_CHANNEL).await
    }

    /// Tries to become the one replica that delivers commands: takes a PostgreSQL session
    /// advisory lock on a connection of its own. `Ok(None)` if another replica holds it. On
    /// SQLite this process is the only one, and always leads.
    pub async fn try_lead(&self) -> Result<Option<Leadership>, StoreError> {
        use sqlx::Connection;
        if self.backend != Backend::Postgres {
            return Ok(Some(Leadership(None)));
        }
        let mut conn = sqlx::PgConnection::connect(&self.url).await?;
        let held: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(LEADER_LOCK)
            .fetch_one(&mut conn)
            .await?;
        if held {
            Ok(Some(Leadership(Some(conn))))
        } else {
            conn.close().await.ok();
            Ok(None)
        }
    }
}

/// The key of the advisory lock the delivery leader holds.
const LEADER_LOCK: i64 = 0x6770_726f_6c6c; // "gproll"

/// Delivery leadership: held while this value lives (the lock goes with its connection, so a
/// leader that dies releases it).
#[derive(Debug)]
pub struct Leadership(Option<sqlx::PgConnection>);

impl Leadership {
    /// Checks that the lock is still held (its connection still alive).
    pub async fn check(&mut self) -> Result<(), StoreError> {
        if let Some(conn) = &mut self.0 {
            sqlx::query("SELECT 1").execute(conn).await?;
        }
        Ok(())
    }
}

fn records(rows: Vec<sqlx::any::AnyRow>) -> Result<Vec<Record>, StoreError> {
    rows.iter()
        .map(|r| {
            Ok(Record {
                key: r.try_get(0)?,
                body: r.try_get(1)?,
            })
        })
        .collect()
}

#[async_trait]
impl CoordinatorStore for SqlCoordinatorStore {
    async fn load(&self) -> Result<CoordinatorState, StoreError> {
        let mut tx = self.pool.begin().await?;
        crate::common::consistent_reads(&mut tx, self.backend).await?;
        let features = records(
            sqlx::query("SELECT key, body FROM features ORDER BY key")
                .fetch_all(&mut *tx)
                .await?,
        )?;
        let suppliers = records(
            sqlx::query("SELECT id, body FROM suppliers ORDER BY id")
                .fetch_all(&mut *tx)
                .await?,
        )?;
        let commands =
            sqlx::query("SELECT id, sequence, state, created_at, body FROM commands ORDER BY created_at, id")
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| {
                    Ok(CommandRow {
                        id: r.try_get("id")?,
                        sequence: r
                            .try_get::<Option<i64>, _>("sequence")?
                            .map(|s| unsigned(s, "sequence"))
                            .transpose()?,
                        state: CommandState::parse(&r.try_get::<String, _>("state")?)?,
                        created_at: r.try_get("created_at")?,
                        body: r.try_get("body")?,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
        let deliveries =
            sqlx::query("SELECT sequence, supplier, body FROM deliveries ORDER BY sequence, supplier")
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| {
                    Ok(DeliveryRow {
                        sequence: unsigned(r.try_get("sequence")?, "sequence")?,
                        supplier: r.try_get("supplier")?,
                        body: r.try_get("body")?,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT key, value FROM meta WHERE key IN ('version', 'changes')")
                .fetch_all(&mut *tx)
                .await?;
        tx.commit().await?;
        let get = |k: &str| rows.iter().find(|(key, _)| key == k).map_or(0, |(_, v)| *v);
        Ok(CoordinatorState {
            features,
            commands,
            deliveries,
            suppliers,
            version: unsigned(get("version"), "version")?,
            changes: unsigned(get("changes"), "changes")?,
        })
    }

    async fn write(&self, w: Write) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for f in &w.features {
            sqlx::query("INSERT INTO features (key, body) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET body = excluded.body")
                .bind(&f.key)
                .bind(&f.body)
                .execute(&mut *tx)
                .await?;
        }
        for c in &w.commands {
            let sequence = c.sequence.map(|s| signed(s, "sequence")).transpose()?;
            let result = sqlx::query(
                "INSERT INTO commands (id, sequence, state, created_at, body) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (id) DO UPDATE SET sequence = excluded.sequence, state = excluded.state, body = excluded.body",
            )
            .bind(&c.id)
            .bind(sequence)
            .bind(c.state.as_str())
            .bind(c.created_at)
            .bind(&c.body)
            .execute(&mut *tx)
            .await;
            if let Err(e) = result {
                let unique = e.as_database_error().is_some_and(|d| d.is_unique_violation());
                return Err(if unique {
                    StoreError::Conflict(format!(
                        "sequence {sequence:?} is already given to another command"
                    ))
                } else {
                    e.into()
                });
            }
        }
        for d in &w.deliveries {
            sqlx::query(
                "INSERT INTO deliveries (sequence, supplier, body) VALUES ($1, $2, $3)
                 ON CONFLICT (sequence, supplier) DO UPDATE SET body = excluded.body",
            )
            .bind(signed(d.sequence, "sequence")?)
            .bind(&d.supplier)
            .bind(&d.body)
            .execute(&mut *tx)
            .await?;
        }
        for s in &w.suppliers {
            sqlx::query("INSERT INTO suppliers (id, body) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET body = excluded.body")
                .bind(&s.key)
                .bind(&s.body)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(r) = &w.request {
            common::insert_request(&mut tx, r).await?;
        }
        if let Some(audit) = w.audit {
            common::audit_in(&mut tx, audit).await?;
        }
        if let Some(expected) = w.expected_version {
            let moved = sqlx::query("UPDATE meta SET value = value + 1 WHERE key = 'version' AND value = $1")
                .bind(signed(expected, "version")?)
                .execute(&mut *tx)
                .await?;
            if moved.rows_affected() != 1 {
                return Err(StoreError::Conflict(format!(
                    "the stored state is no longer at version {expected}: another replica changed it"
                )));
            }
        }
        sqlx::query("UPDATE meta SET value = value + 1 WHERE key = 'changes'")
            .execute(&mut *tx)
            .await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(CHANGE_CHANNEL)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn head(&self) -> Result<(u64, u64), StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT key, value FROM meta WHERE key IN ('version', 'changes')")
                .fetch_all(&self.pool)
                .await?;
        let get = |k: &str| rows.iter().find(|(key, _)| key == k).map_or(0, |(_, v)| *v);
        Ok((
            unsigned(get("version"), "version")?,
            unsigned(get("changes"), "changes")?,
        ))
    }

    fn shared(&self) -> bool {
        self.backend == Backend::Postgres
    }

    async fn recall_request(&self, request_id: &str) -> Result<Option<RequestRecord>, StoreError> {
        common::recall_request(&self.pool, request_id).await
    }

    async fn append_audit(&self, audit: AuditDraft) -> Result<AuditEvent, StoreError> {
        common::append_audit(&self.pool, audit).await
    }

    async fn list_audit(&self, after: u64, limit: u32) -> Result<Vec<AuditEvent>, StoreError> {
        common::list_audit(&self.pool, after, limit).await
    }
}

/// Microseconds since the epoch of a time, for `CommandRow::created_at`.
pub fn created_at(t: std::time::SystemTime) -> i64 {
    micros(t)
}
