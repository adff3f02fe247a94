//! The supplier service's store.
//!
//! Every mutating method takes the audit event of the call and writes it in the same
//! transaction as the change, so a change is never recorded without its audit entry, nor the
//! other way round. Every change also stores the new state version, which watch streams resume
//! from.

use std::time::SystemTime;

use async_trait::async_trait;
use rollout_core::{
    IcbCode, OdsCode, Practice, PracticeStatus, RegionCode, SubIcbCode, SupplierId,
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
    /// Commands in sequence order.
    pub commands: Vec<StoredCommand>,
    /// The estate.
    pub practices: Vec<Practice>,
    /// Opt-outs, current and withdrawn.
    pub opt_outs: Vec<OptOutRecord>,
    /// The state version.
    pub version: u64,
    /// When the coordinator was last heard from.
    pub last_contact: Option<SystemTime>,
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

    /// Stores the next command. Fails with [`StoreError::Conflict`] unless its sequence follows
    /// the last stored one.
    async fn append_command(
        &self,
        command: &StoredCommand,
        version: u64,
        audit: AuditDraft,
    ) -> Result<(), StoreError>;

    /// Replaces every stored command (a full resync). Opt-outs and the estate stay.
    async fn replace_commands(
        &self,
        commands: &[StoredCommand],
        version: u64,
        audit: AuditDraft,
    ) -> Result<(), StoreError>;

    /// Stores an opt-out (new, updated or withdrawn), with the call's idempotency record.
    async fn put_opt_out(
        &self,
        record: &OptOutRecord,
        version: u64,
        request: Option<RequestRecord>,
        audit: AuditDraft,
    ) -> Result<(), StoreError>;

    /// Makes the stored estate exactly `practices`: adds, updates, removes.
    async fn import_estate(
        &self,
        practices: &[Practice],
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

const MIGRATIONS: &[MigrationSql] = &[(
    1,
    "supplier initial schema",
    include_str!("../migrations/sqlite/supplier_0001_init.sql"),
    include_str!("../migrations/postgres/supplier_0001_init.sql"),
)];

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

async fn insert_command(tx: &mut Transaction<'_, Any>, c: &StoredCommand) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO commands (sequence, id, feature, body, rejection_reason, applied_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(signed(c.sequence, "sequence")?)
    .bind(&c.id)
    .bind(&c.feature)
    .bind(&c.body)
    .bind(c.rejection.as_deref())
    .bind(micros(c.applied_at))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn status_code(s: PracticeStatus) -> &'static str {
    match s {
        PracticeStatus::Active => "A",
        PracticeStatus::Closed => "C",
        PracticeStatus::Dormant => "D",
        PracticeStatus::Proposed => "P",
    }
}

fn practice_row(row: &AnyRow) -> Result<Practice, StoreError> {
    let text = |c: &str| row.try_get::<String, _>(c);
    let bad = |e: rollout_core::IdError| StoreError::Corrupt(e.to_string());
    Ok(Practice {
        ods: OdsCode::parse(&text("ods")?).map_err(bad)?,
        name: text("name")?,
        region: RegionCode::parse_region(&text("region")?).map_err(bad)?,
        icb: IcbCode::parse(&text("icb")?).map_err(bad)?,
        sub_icb: SubIcbCode::parse(&text("sub_icb")?).map_err(bad)?,
        supplier: SupplierId::parse(&text("supplier")?).map_err(bad)?,
        status: PracticeStatus::from_code(&text("status")?)
            .ok_or_else(|| StoreError::Corrupt("unknown practice status".into()))?,
    })
}

fn opt_out_row(row: &AnyRow) -> Result<OptOutRecord, StoreError> {
    let bad = |e: rollout_core::IdError| StoreError::Corrupt(e.to_string());
    let withdrawn_by: Option<String> = row.try_get("withdrawn_by")?;
    let withdrawal = match withdrawn_by {
        Some(by) => Some(Withdrawal {
            by,
            at: from_micros(row.try_get::<Option<i64>, _>("withdrawn_at")?.unwrap_or_default()),
            reason: row
                .try_get::<Option<String>, _>("withdraw_reason")?
                .unwrap_or_default(),
        }),
        None => None,
    };
    Ok(OptOutRecord {
        opt_out: rollout_core::OptOut {
            practice: OdsCode::parse(&row.try_get::<String, _>("ods")?).map_err(bad)?,
            feature: rollout_core::FeatureKey::parse(&row.try_get::<String, _>("feature")?).map_err(bad)?,
            reason: row.try_get("reason")?,
            source: row.try_get("source")?,
            recorded_by: row.try_get("recorded_by")?,
            recorded_at: from_micros(row.try_get("created_at")?),
        },
        updated_at: from_micros(row.try_get("updated_at")?),
        withdrawal,
    })
}

#[async_trait]
impl SupplierStore for SqlSupplierStore {
    async fn load(&self) -> Result<SupplierState, StoreError> {
        let mut tx = self.pool.begin().await?;
        consistent_reads(&mut tx, self.backend).await?;
        let commands = sqlx::query(
            "SELECT sequence, id, feature, body, rejection_reason, applied_at FROM commands ORDER BY sequence",
        )
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|row| {
            Ok(StoredCommand {
                sequence: unsigned(row.try_get("sequence")?, "sequence")?,
                id: row.try_get("id")?,
                feature: row.try_get("feature")?,
                body: row.try_get("body")?,
                rejection: row.try_get("rejection_reason")?,
                applied_at: from_micros(row.try_get("applied_at")?),
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
        let practices = sqlx::query(
            "SELECT ods, name, region, icb, sub_icb, supplier, status FROM practices ORDER BY ods",
        )
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(practice_row)
        .collect::<Result<Vec<_>, _>>()?;
        let opt_outs = sqlx::query("SELECT * FROM opt_outs ORDER BY ods, feature")
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(opt_out_row)
            .collect::<Result<Vec<_>, _>>()?;
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
            practices,
            opt_outs,
            version: unsigned(version, "version")?,
            last_contact,
        })
    }

    async fn append_command(
        &self,
        command: &StoredCommand,
        version: u64,
        audit: AuditDraft,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let last: Option<i64> = sqlx::query_scalar("SELECT MAX(sequence) FROM commands")
            .fetch_one(&mut *tx)
            .await?;
        let last = unsigned(last.unwrap_or(0), "sequence")?;
        if command.sequence != last + 1 {
            return Err(StoreError::Conflict(format!(
                "command sequence {} does not follow the stored sequence {last}",
                command.sequence
            )));
        }
        insert_command(&mut tx, command).await?;
        self.bump_version(&mut tx, version).await?;
        common::audit_in(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn replace_commands(
        &self,
        commands: &[StoredCommand],
        version: u64,
        audit: AuditDraft,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM commands").execute(&mut *tx).await?;
        for c in commands {
            insert_command(&mut tx, c).await?;
        }
        self.bump_version(&mut tx, version).await?;
        common::audit_in(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn put_opt_out(
        &self,
        record: &OptOutRecord,
        version: u64,
        request: Option<RequestRecord>,
        audit: AuditDraft,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let o = &record.opt_out;
        let w = record.withdrawal.as_ref();
        sqlx::query(
            "INSERT INTO opt_outs (ods, feature, reason, source, recorded_by, created_at, updated_at,
                                   withdrawn_by, withdrawn_at, withdraw_reason)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (ods, feature) DO UPDATE SET
                reason = excluded.reason, source = excluded.source, recorded_by = excluded.recorded_by,
                created_at = excluded.created_at, updated_at = excluded.updated_at,
                withdrawn_by = excluded.withdrawn_by, withdrawn_at = excluded.withdrawn_at,
                withdraw_reason = excluded.withdraw_reason",
        )
        .bind(o.practice.as_str())
        .bind(o.feature.as_str())
        .bind(&o.reason)
        .bind(&o.source)
        .bind(&o.recorded_by)
        .bind(micros(o.recorded_at))
        .bind(micros(record.updated_at))
        .bind(w.map(|w| w.by.as_str()))
        .bind(w.map(|w| micros(w.at)))
        .bind(w.map(|w| w.reason.as_str()))
        .execute(&mut *tx)
        .await?;
        if let Some(r) = request {
            common::insert_request(&mut tx, &r).await?;
        }
        self.bump_version(&mut tx, version).await?;
        common::audit_in(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn import_estate(
        &self,
        practices: &[Practice],
        version: u64,
        audit: AuditDraft,
    ) -> Result<EstateChange, StoreError> {
        let mut tx = self.pool.begin().await?;
        let existing = sqlx::query("SELECT ods, name, region, icb, sub_icb, supplier, status FROM practices")
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| practice_row(r).map(|p| (p.ods, p)))
            .collect::<Result<std::collections::HashMap<_, _>, _>>()?;
        let mut change = EstateChange::default();
        let now = micros(SystemTime::now());
        for p in practices {
            match existing.get(&p.ods) {
                Some(old) if old == p => continue,
                Some(_) => change.updated += 1,
                None => change.added += 1,
            }
            sqlx::query(
                "INSERT INTO practices (ods, name, region, icb, sub_icb, supplier, status, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (ods) DO UPDATE SET name = excluded.name, region = excluded.region,
                    icb = excluded.icb, sub_icb = excluded.sub_icb, supplier = excluded.supplier,
                    status = excluded.status, updated_at = excluded.updated_at",
            )
            .bind(p.ods.as_str())
            .bind(&p.name)
            .bind(p.region.as_str())
            .bind(p.icb.as_str())
            .bind(p.sub_icb.as_str())
            .bind(p.supplier.as_str())
            .bind(status_code(p.status))
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        let keep: std::collections::HashSet<OdsCode> = practices.iter().map(|p| p.ods).collect();
        for ods in existing.keys().filter(|k| !keep.contains(k)) {
            sqlx::query("DELETE FROM practices WHERE ods = $1")
                .bind(ods.as_str())
                .execute(&mut *tx)
                .await?;
            change.removed += 1;
        }
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
