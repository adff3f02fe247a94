//! [`SqlSupplierStore`], the supplier store on SQLite or PostgreSQL: every write one
//! transaction with its audit event, retried when PostgreSQL aborted it for a reason another
//! try may not meet (see `common::retrying`).

use std::time::SystemTime;

use async_trait::async_trait;
use rollout_core::{
    OdsCode, Practice,
    audit::{AuditDraft, AuditEvent, from_micros, micros},
};
use sqlx::{Any, AnyPool, Row, Transaction, any::AnyRow};

use super::{
    CHANGE_CHANNEL, ChangeFeed, EstateChange, MIGRATIONS, OptOutRecord, RequestRecord, StoredCommand,
    SupplierState, SupplierStore, SyncPoint, estate, opt_outs, opt_outs::opt_out_columns,
};
use crate::{Backend, StoreError, common, common::consistent_reads, open, signed, unsigned};

/// The columns [`command_row`] reads, for `concat!` into static SQL.
macro_rules! command_columns {
    () => {
        "sequence, id, feature, body, rejection_reason, applied_at, effective"
    };
}

/// The supplier store on SQLite or PostgreSQL.
#[derive(Debug, Clone)]
pub struct SqlSupplierStore {
    pub(super) pool: AnyPool,
    pub(super) backend: Backend,
    url: String,
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
    pub(super) async fn bump_version(
        &self,
        tx: &mut Transaction<'_, Any>,
        version: u64,
    ) -> Result<(), StoreError> {
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
pub(super) async fn upsert_command(
    tx: &mut Transaction<'_, Any>,
    c: &StoredCommand,
) -> Result<(), StoreError> {
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

pub(super) async fn read_sync(tx: &mut Transaction<'_, Any>) -> Result<Option<SyncPoint>, StoreError> {
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

pub(super) async fn write_sync(tx: &mut Transaction<'_, Any>, sync: &SyncPoint) -> Result<(), StoreError> {
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
        common::retrying("applying a command", || {
            self.append_command_once(command, retire, history_hash, version, audit.clone())
        })
        .await
    }

    async fn install_snapshot(
        &self,
        commands: &[StoredCommand],
        sync: &SyncPoint,
        version: u64,
        audit: AuditDraft,
    ) -> Result<(), StoreError> {
        common::retrying("installing a snapshot", || {
            self.install_snapshot_once(commands, sync, version, audit.clone())
        })
        .await
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
        common::retrying("writing an opt-out", || {
            self.put_opt_out_once(record, version, request.clone(), audit.clone())
        })
        .await
    }

    async fn import_opt_outs(
        &self,
        records: &[OptOutRecord],
        released: &[OdsCode],
        version: u64,
        audit: Vec<AuditDraft>,
    ) -> Result<(), StoreError> {
        common::retrying("importing opt-outs", || {
            self.import_opt_outs_once(records, released, version, audit.clone())
        })
        .await
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
        common::retrying("importing the estate", || {
            self.import_estate_once(practices, hold, version, audit.clone())
        })
        .await
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
             ON CONFLICT (key) DO UPDATE SET value = excluded.value
             WHERE meta.value < excluded.value OR meta.value > $2",
        )
        .bind(micros(at))
        .bind(micros(at + rollout_core::rules::MAX_CONTACT_SKEW))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn recall_request(
        &self,
        identity: &str,
        request_id: &str,
    ) -> Result<Option<RequestRecord>, StoreError> {
        common::recall_request(&self.pool, identity, request_id).await
    }

    async fn append_audit(&self, audit: AuditDraft) -> Result<AuditEvent, StoreError> {
        common::append_audit(&self.pool, audit).await
    }

    async fn list_audit(&self, after: u64, limit: u32) -> Result<Vec<AuditEvent>, StoreError> {
        common::list_audit(&self.pool, after, limit).await
    }

    async fn audit_head(&self) -> Result<u64, StoreError> {
        common::audit_head(&self.pool).await
    }
}
