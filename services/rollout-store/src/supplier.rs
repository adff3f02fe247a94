//! The supplier service's store.
//!
//! Every mutating method takes the audit event of the call and writes it in the same
//! transaction as the change, so a change is never recorded without its audit entry, nor the
//! other way round. Every change also stores the new state version, which watch streams resume
//! from. Opt-out rows carry the change number of their last write, for the coordinator's
//! national register (`opt_outs.rs`).

mod estate;
mod opt_outs;

use std::time::SystemTime;

use async_trait::async_trait;
use opt_outs::opt_out_columns;
use rollout_core::{
    OdsCode, Practice, SupplierId,
    audit::{AuditDraft, AuditEvent, from_micros, micros},
};
use sqlx::{Any, AnyPool, Row, Transaction, any::AnyRow};

pub use crate::common::RequestRecord;
use crate::{Backend, MigrationSql, StoreError, common, common::consistent_reads, open, signed, unsigned};

/// A command as stored: its sequence, id, feature, the bytes of its body, and its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCommand {
    /// Global sequence.
    pub sequence: u64,
    /// Command id.
    pub id: String,
    /// Feature key.
    pub feature: String,
    /// The command as received (protobuf).
    pub body: Vec<u8>,
    /// `Some(reason)` if the supplier rejected it.
    pub rejection: Option<String>,
    /// When it was applied or rejected.
    pub applied_at: SystemTime,
    /// Whether it is one of the rules in force (a feature definition, a go-live, a halt not
    /// lifted). Resumes, rejected commands and lifted halts are history only.
    pub effective: bool,
}

/// Where a supplier stands in the global command sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncPoint {
    /// The last sequence applied (or rejected, or installed by a snapshot).
    pub applied_sequence: u64,
    /// The history hash at that sequence, hex.
    pub history_hash: String,
    /// When it was applied (supplier clock).
    pub applied_at: SystemTime,
}

/// A practice opt-out as stored, current or withdrawn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptOutRecord {
    /// The opt-out (practice, feature, reason, source, who recorded it and when).
    pub opt_out: rollout_core::OptOut,
    /// When it was last changed.
    pub updated_at: SystemTime,
    /// Its withdrawal, if withdrawn.
    pub withdrawal: Option<Withdrawal>,
    /// The change number of the row's last write (1, 2, ... per store; the writer gives the
    /// store's latest plus one).
    pub change: u64,
    /// How the record came to be at this supplier.
    pub origin: Origin,
}

/// How an opt-out record came to be at a supplier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Set or withdrawn here, on the practice's instruction.
    Recorded,
    /// Put back from the national register after this supplier lost its store; the supplier
    /// the register had it from.
    Restored(SupplierId),
    /// Came from the national register with a practice that joined from this supplier.
    Transferred(SupplierId),
}

/// The withdrawal of an opt-out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Withdrawal {
    /// Who withdrew it.
    pub by: String,
    /// When.
    pub at: SystemTime,
    /// Why.
    pub reason: String,
}

/// Everything the supplier serves from, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SupplierState {
    /// The effective commands (the rules in force), in sequence order; or, for a store written
    /// before compaction (`sync` is `None`), every command, to be replayed once and marked.
    pub commands: Vec<StoredCommand>,
    /// Where the supplier stands; `None` if it has never synchronised, or if the store predates
    /// compaction and holds commands not yet marked.
    pub sync: Option<SyncPoint>,
    /// The estate.
    pub practices: Vec<Practice>,
    /// Opt-outs, current and withdrawn.
    pub opt_outs: Vec<OptOutRecord>,
    /// The state version.
    pub version: u64,
    /// When the coordinator was last heard from.
    pub last_contact: Option<SystemTime>,
    /// The store's random identity (made once, when it was first opened).
    pub store_id: String,
    /// The latest opt-out change number (0 before the first).
    pub opt_out_change: u64,
    /// The practices held until the national register has answered for them.
    pub held: Vec<OdsCode>,
}

/// How an estate import changed the stored practices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EstateChange {
    /// Practices new to the store.
    pub added: usize,
    /// Practices whose attributes changed.
    pub updated: usize,
    /// Practices no longer in the estate (their opt-outs are kept).
    pub removed: usize,
}

/// The supplier's store. See the module docs for the transaction rules.
#[async_trait]
pub trait SupplierStore: Send + Sync + 'static {
    /// Reads everything needed to rebuild the serving state.
    async fn load(&self) -> Result<SupplierState, StoreError>;

    /// Stores the next command, marks the rows at `retire` (the halts it lifts) no longer
    /// effective, and moves the sync point to the command's sequence and `history_hash`.
    /// Fails with [`StoreError::Conflict`] unless its sequence follows the stored sync point.
    async fn append_command(
        &self,
        command: &StoredCommand,
        retire: &[u64],
        history_hash: &str,
        version: u64,
        audit: AuditDraft,
    ) -> Result<(), StoreError>;

    /// Installs a snapshot: exactly `commands` are effective afterwards (rows already held
    /// are kept and marked, new ones inserted; the log is never shortened), and the sync point
    /// becomes `sync`. All or nothing. Opt-outs and the estate stay. Fails with
    /// [`StoreError::Conflict`] if the stored sync point is past `sync`.
    async fn install_snapshot(
        &self,
        commands: &[StoredCommand],
        sync: &SyncPoint,
        version: u64,
        audit: AuditDraft,
    ) -> Result<(), StoreError>;

    /// Marks a store written before compaction: exactly the rows at `effective` stay
    /// effective, and the sync point is set. Run once, at the first start after the upgrade.
    async fn mark_compacted(&self, effective: &[u64], sync: &SyncPoint) -> Result<(), StoreError>;

    /// The stored command at `sequence`, if the log holds it.
    async fn command_at(&self, sequence: u64) -> Result<Option<StoredCommand>, StoreError>;

    /// Stored commands with a sequence above `after`, in order, at most `limit`.
    async fn list_commands(&self, after: u64, limit: u32) -> Result<Vec<StoredCommand>, StoreError>;

    /// Stores an opt-out (new, updated or withdrawn) at its change number (which becomes the
    /// store's latest), with the call's idempotency record.
    async fn put_opt_out(
        &self,
        record: &OptOutRecord,
        version: u64,
        request: Option<RequestRecord>,
        audit: AuditDraft,
    ) -> Result<(), StoreError>;

    /// Installs records from the national register, each at its change number (the last
    /// becomes the store's latest), with `audit` (one event per record installed, and any for
    /// the releases), and lets go of the held practices `released`. All or nothing.
    async fn import_opt_outs(
        &self,
        records: &[OptOutRecord],
        released: &[OdsCode],
        version: u64,
        audit: Vec<AuditDraft>,
    ) -> Result<(), StoreError>;

    /// Opt-out rows (withdrawn ones too) whose change number is above `after`, in change
    /// order, at most `limit`.
    async fn opt_out_changes(&self, after: u64, limit: u32) -> Result<Vec<OptOutRecord>, StoreError>;

    /// Makes the stored estate exactly `practices` (adds, updates, removes), holds the
    /// practices in `hold` (new to the supplier), and lets go of held practices no longer in
    /// the estate.
    async fn import_estate(
        &self,
        practices: &[Practice],
        hold: &[OdsCode],
        version: u64,
        audit: AuditDraft,
    ) -> Result<EstateChange, StoreError>;

    /// Records when the coordinator was last heard from.
    async fn record_contact(&self, at: SystemTime) -> Result<(), StoreError>;

    /// The stored version and last contact, cheaply (replicas poll it).
    async fn head(&self) -> Result<(u64, Option<SystemTime>), StoreError>;

    /// Whether other processes may write to the same store (PostgreSQL), so a replica must
    /// follow their changes.
    fn shared(&self) -> bool;

    /// The idempotency record of a request id, if one is stored.
    async fn recall_request(&self, request_id: &str) -> Result<Option<RequestRecord>, StoreError>;

    /// Appends an audit event on its own (refused calls).
    async fn append_audit(&self, audit: AuditDraft) -> Result<AuditEvent, StoreError>;

    /// Audit events after `after`, at most `limit`, in order.
    async fn list_audit(&self, after: u64, limit: u32) -> Result<Vec<AuditEvent>, StoreError>;
}

const MIGRATIONS: &[MigrationSql] = &[
    (
        1,
        "supplier initial schema",
        include_str!("../migrations/sqlite/supplier_0001_init.sql"),
        include_str!("../migrations/postgres/supplier_0001_init.sql"),
    ),
    (
        2,
        "supplier compaction",
        include_str!("../migrations/sqlite/supplier_0002_compaction.sql"),
        include_str!("../migrations/postgres/supplier_0002_compaction.sql"),
    ),
    (
        3,
        "supplier opt-out register",
        include_str!("../migrations/sqlite/supplier_0003_opt_out_register.sql"),
        include_str!("../migrations/postgres/supplier_0003_opt_out_register.sql"),
    ),
];

/// The columns [`command_row`] reads, for `concat!` into static SQL.
macro_rules! command_columns {
    () => {
        "sequence, id, feature, body, rejection_reason, applied_at, effective"
    };
}

/// The supplier store on SQLite or PostgreSQL.
#[derive(Debug, Clone)]
pub struct SqlSupplierStore {
    pool: AnyPool,
    backend: Backend,
    url: String,
}

/// The PostgreSQL channel on which a supplier store announces each new version.
pub const CHANGE_CHANNEL: &str = "gprollout_supplier";

/// Notifications of changes made through any replica (PostgreSQL only).
#[derive(Debug)]
pub struct ChangeFeed(sqlx::postgres::PgListener);

impl ChangeFeed {
    /// Listens on `channel` on PostgreSQL; `None` on SQLite.
    pub(crate) async fn listen(
        backend: Backend,
        url: &str,
        channel: &str,
    ) -> Result<Option<ChangeFeed>, StoreError> {
        if backend != Backend::Postgres {
            return Ok(None);
        }
        let mut listener = sqlx::postgres::PgListener::connect(url).await?;
        listener.listen(channel).await?;
        Ok(Some(ChangeFeed(listener)))
    }

    /// Waits for the next change notification.
    pub async fn next(&mut self) -> Result<(), StoreError> {
        self.0.recv().await?;
        Ok(())
    }

    /// Runs `follow` after every notification, and every 2 s in case one was missed, until
    /// `stop` turns true (or its sender is gone). Spawn it.
    pub async fn follow<F, Fut>(mut self, mut stop: tokio::sync::watch::Receiver<bool>, follow: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        loop {
            tokio::select! {
                received = self.next() => if let Err(error) = received {
                    tracing::warn!(%error, "change notifications interrupted; polling until they resume");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                },
                _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
                _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => return,
            }
            follow().await;
        }
    }
}

impl SqlSupplierStore {
    /// Opens the database at `url` (`sqlite://PATH`, created if missing, or `postgres://...`)
    /// and brings its schema up to date.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let (pool, backend) = open(url, MIGRATIONS).await?;
        opt_outs::ensure_store_id(&pool).await?;
        Ok(SqlSupplierStore {
            pool,
            backend,
            url: url.to_owned(),
        })
    }

    /// Closes the database, releasing its lock.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Sets the stored version to `version` if it is still `version - 1` (compare and set), so
    /// that of two replicas writing at once, one fails with [`StoreError::Conflict`] and
    /// nothing of its write is kept. On PostgreSQL, announces the change to the other replicas
    /// when the transaction commits.
    async fn bump_version(&self, tx: &mut Transaction<'_, Any>, version: u64) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO meta (key, value) VALUES ('version', 0) ON CONFLICT (key) DO NOTHING")
            .execute(&mut **tx)
            .await?;
        let expected = signed(version.saturating_sub(1), "version")?;
        let done = sqlx::query("UPDATE meta SET value = $1 WHERE key = 'version' AND value = $2")
            .bind(signed(version, "version")?)
            .bind(expected)
            .execute(&mut **tx)
            .await?;
        if done.rows_affected() != 1 {
            return Err(StoreError::Conflict(format!(
                "the stored state is no longer at version {expected}: another replica changed it"
            )));
        }
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANGE_CHANNEL)
                .bind(version.to_string())
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// A feed of changes made through any replica, on PostgreSQL; `None` on SQLite, where this
    /// process is the only writer.
    pub async fn changes(&self) -> Result<Option<ChangeFeed>, StoreError> {
        ChangeFeed::listen(self.backend, &self.url, CHANGE_CHANNEL).await
    }
}

/// Inserts a command row; a row already at its sequence is kept (same command: the caller has
/// checked the history) and only its `effective` mark is set.
async fn upsert_command(tx: &mut Transaction<'_, Any>, c: &StoredCommand) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO commands (sequence, id, feature, body, rejection_reason, applied_at, effective)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (sequence) DO UPDATE SET effective = excluded.effective",
    )
    .bind(signed(c.sequence, "sequence")?)
    .bind(&c.id)
    .bind(&c.feature)
    .bind(&c.body)
    .bind(c.rejection.as_deref())
    .bind(micros(c.applied_at))
    .bind(i64::from(c.effective))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn command_row(row: &AnyRow) -> Result<StoredCommand, StoreError> {
    Ok(StoredCommand {
        sequence: unsigned(row.try_get("sequence")?, "sequence")?,
        id: row.try_get("id")?,
        feature: row.try_get("feature")?,
        body: row.try_get("body")?,
        rejection: row.try_get("rejection_reason")?,
        applied_at: from_micros(row.try_get("applied_at")?),
        effective: row.try_get::<i64, _>("effective")? != 0,
    })
}

async fn read_sync(tx: &mut Transaction<'_, Any>) -> Result<Option<SyncPoint>, StoreError> {
    let row: Option<(i64, String, i64)> =
        sqlx::query_as("SELECT applied_sequence, history_hash, applied_at FROM sync WHERE id = 1")
            .fetch_optional(&mut **tx)
            .await?;
    row.map(|(s, h, at)| {
        Ok(SyncPoint {
            applied_sequence: unsigned(s, "applied_sequence")?,
            history_hash: h,
            applied_at: from_micros(at),
        })
    })
    .transpose()
}

async fn write_sync(tx: &mut Transaction<'_, Any>, sync: &SyncPoint) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO sync (id, applied_sequence, history_hash, applied_at) VALUES (1, $1, $2, $3)
         ON CONFLICT (id) DO UPDATE SET applied_sequence = excluded.applied_sequence,
            history_hash = excluded.history_hash, applied_at = excluded.applied_at",
    )
    .bind(signed(sync.applied_sequence, "applied_sequence")?)
    .bind(&sync.history_hash)
    .bind(micros(sync.applied_at))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[async_trait]
impl SupplierStore for SqlSupplierStore {
    async fn load(&self) -> Result<SupplierState, StoreError> {
        let mut tx = self.pool.begin().await?;
        consistent_reads(&mut tx, self.backend).await?;
        let sync = read_sync(&mut tx).await?;
        // Only the rules in force, once the store is compacted: start-up reads the effective
        // state, not the history.
        let query = if sync.is_some() {
            concat!(
                "SELECT ",
                command_columns!(),
                " FROM commands WHERE effective = 1 ORDER BY sequence"
            )
        } else {
            concat!("SELECT ", command_columns!(), " FROM commands ORDER BY sequence")
        };
        let commands = sqlx::query(query)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(command_row)
            .collect::<Result<Vec<_>, StoreError>>()?;
        let practices = sqlx::query(
            "SELECT ods, name, region, icb, sub_icb, supplier, status FROM practices ORDER BY ods",
        )
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(estate::practice_row)
        .collect::<Result<Vec<_>, _>>()?;
        let opt_outs = sqlx::query(concat!(
            "SELECT ",
            opt_out_columns!(),
            " FROM opt_outs ORDER BY ods, feature"
        ))
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(opt_outs::opt_out_row)
        .collect::<Result<Vec<_>, _>>()?;
        let store_id = opt_outs::store_id(&mut tx).await?;
        let opt_out_change = opt_outs::latest_change(&mut tx).await?;
        let held = opt_outs::held(&mut tx).await?;
        let meta = |key: &'static str| {
            sqlx::query_scalar::<_, i64>("SELECT value FROM meta WHERE key = $1").bind(key)
        };
        let version = meta("version").fetch_optional(&mut *tx).await?.unwrap_or(0);
        let last_contact = meta("last_contact")
            .fetch_optional(&mut *tx)
            .await?
            .map(from_micros);
        tx.commit().await?;
        Ok(SupplierState {
            commands,
            sync,
            practices,
            opt_outs,
            version: unsigned(version, "version")?,
            last_contact,
            store_id,
            opt_out_change,
            held,
        })
    }

    async fn append_command(
        &self,
        command: &StoredCommand,
        retire: &[u64],
        history_hash: &str,
        version: u64,
        audit: AuditDraft,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let applied = read_sync(&mut tx).await?.map_or(0, |s| s.applied_sequence);
        if command.sequence != applied + 1 {
            return Err(StoreError::Conflict(format!(
                "command sequence {} does not follow the stored applied sequence {applied}",
                command.sequence
            )));
        }
        upsert_command(&mut tx, command).await?;
        for sequence in retire {
            sqlx::query("UPDATE commands SET effective = 0 WHERE sequence = $1")
                .bind(signed(*sequence, "sequence")?)
                .execute(&mut *tx)
                .await?;
        }
        write_sync(
            &mut tx,
            &SyncPoint {
                applied_sequence: command.sequence,
                history_hash: history_hash.to_owned(),
                applied_at: command.applied_at,
            },
        )
        .await?;
        self.bump_version(&mut tx, version).await?;
        common::audit_in(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn install_snapshot(
        &self,
        commands: &[StoredCommand],
        sync: &SyncPoint,
        version: u64,
        audit: AuditDraft,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let applied = read_sync(&mut tx).await?.map_or(0, |s| s.applied_sequence);
        if applied > sync.applied_sequence {
            return Err(StoreError::Conflict(format!(
                "the stored applied sequence {applied} is past the snapshot's {}",
                sync.applied_sequence
            )));
        }
        sqlx::query("UPDATE commands SET effective = 0 WHERE effective <> 0")
            .execute(&mut *tx)
            .await?;
        for c in commands {
            upsert_command(&mut tx, c).await?;
        }
        write_sync(&mut tx, sync).await?;
        self.bump_version(&mut tx, version).await?;
        common::audit_in(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn mark_compacted(&self, effective: &[u64], sync: &SyncPoint) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        if read_sync(&mut tx).await?.is_some() {
            // Another replica marked it first.
            return Ok(());
        }
        sqlx::query("UPDATE commands SET effective = 0")
            .execute(&mut *tx)
            .await?;
        for sequence in effective {
            sqlx::query("UPDATE commands SET effective = 1 WHERE sequence = $1")
                .bind(signed(*sequence, "sequence")?)
                .execute(&mut *tx)
                .await?;
        }
        write_sync(&mut tx, sync).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn command_at(&self, sequence: u64) -> Result<Option<StoredCommand>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            command_columns!(),
            " FROM commands WHERE sequence = $1"
        ))
        .bind(signed(sequence, "sequence")?)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(command_row)
        .transpose()
    }

    async fn list_commands(&self, after: u64, limit: u32) -> Result<Vec<StoredCommand>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            command_columns!(),
            " FROM commands WHERE sequence > $1 ORDER BY sequence LIMIT $2"
        ))
        .bind(signed(after, "sequence")?)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(command_row)
        .collect()
    }

    async fn put_opt_out(
        &self,
        record: &OptOutRecord,
        version: u64,
        request: Option<RequestRecord>,
        audit: AuditDraft,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        // The version first: of two replicas numbering the same change, the second fails
        // here as a conflict (and reloads), not on the change number's unique index.
        self.bump_version(&mut tx, version).await?;
        opt_outs::write_opt_out(&mut tx, record).await?;
        if let Some(r) = request {
            common::insert_request(&mut tx, &r).await?;
        }
        common::audit_in(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn import_opt_outs(
        &self,
        records: &[OptOutRecord],
        released: &[OdsCode],
        version: u64,
        audit: Vec<AuditDraft>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        // The version first, as in `put_opt_out`.
        self.bump_version(&mut tx, version).await?;
        for record in records {
            opt_outs::write_opt_out(&mut tx, record).await?;
        }
        for ods in released {
            opt_outs::release(&mut tx, ods).await?;
        }
        for draft in audit {
            common::audit_in(&mut tx, draft).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn opt_out_changes(&self, after: u64, limit: u32) -> Result<Vec<OptOutRecord>, StoreError> {
        opt_outs::changes_after(&self.pool, after, limit).await
    }

    async fn import_estate(
        &self,
        practices: &[Practice],
        hold: &[OdsCode],
        version: u64,
        audit: AuditDraft,
    ) -> Result<EstateChange, StoreError> {
        let mut tx = self.pool.begin().await?;
        let change = estate::import(&mut tx, practices).await?;
        let keep: std::collections::HashSet<OdsCode> = practices.iter().map(|p| p.ods).collect();
        opt_outs::hold(&mut tx, hold, &keep).await?;
        self.bump_version(&mut tx, version).await?;
        common::audit_in(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(change)
    }

    fn shared(&self) -> bool {
        self.backend == Backend::Postgres
    }

    async fn head(&self) -> Result<(u64, Option<SystemTime>), StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT key, value FROM meta WHERE key IN ('version', 'last_contact')")
                .fetch_all(&self.pool)
                .await?;
        let get = |k: &str| rows.iter().find(|(key, _)| key == k).map(|(_, v)| *v);
        Ok((
            unsigned(get("version").unwrap_or(0), "version")?,
            get("last_contact").map(from_micros),
        ))
    }

    async fn record_contact(&self, at: SystemTime) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO meta (key, value) VALUES ('last_contact', $1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value WHERE meta.value < excluded.value",
        )
        .bind(micros(at))
        .execute(&mut *tx)
        .await?;
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
