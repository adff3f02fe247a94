//! The coordinator service's store.
//!
//! Features, commands, deliveries and supplier status are stored as the service's encoded
//! records beside the columns that identify and order them; every write is one transaction
//! with its audit event and idempotency record. A command's global sequence is unique in the
//! table, so two writers can never give one sequence to two commands.

use async_trait::async_trait;
use rollout_core::audit::{AuditDraft, AuditEvent, micros};
use sqlx::{AnyPool, Row};

use crate::{MigrationSql, RequestRecord, StoreError, common, open, signed, unsigned};

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
}

const MIGRATIONS: &[MigrationSql] = &[(
    1,
    "coordinator initial schema",
    include_str!("../migrations/sqlite/coordinator_0001_init.sql"),
    include_str!("../migrations/postgres/coordinator_0001_init.sql"),
)];

/// The coordinator store on SQLite or PostgreSQL.
#[derive(Debug, Clone)]
pub struct SqlCoordinatorStore {
    pool: AnyPool,
}

impl SqlCoordinatorStore {
    /// Opens the database at `url` (`sqlite://PATH`, created if missing, or `postgres://...`)
    /// and brings its schema up to date.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        Ok(SqlCoordinatorStore {
            pool: open(url, MIGRATIONS).await?.0,
        })
    }

    /// Closes the database, releasing its lock.
    pub async fn close(&self) {
        self.pool.close().await;
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
        tx.commit().await?;
        Ok(CoordinatorState {
            features,
            commands,
            deliveries,
            suppliers,
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
        tx.commit().await?;
        Ok(())
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
