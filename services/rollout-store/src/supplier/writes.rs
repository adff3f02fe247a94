//! The supplier store's writes, one try each: every one a transaction holding its audit
//! event; [`super::SqlSupplierStore`]'s trait methods run them through `common::retrying`.

use rollout_core::{OdsCode, Practice, audit::AuditDraft};

use super::{
    EstateChange, OptOutRecord, RequestRecord, SqlSupplierStore, StoredCommand, SyncPoint, estate, opt_outs,
    sql::{read_sync, upsert_command, write_sync},
};
use crate::{StoreError, common, signed};

impl SqlSupplierStore {
    pub(super) async fn append_command_once(
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

    pub(super) async fn install_snapshot_once(
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

    pub(super) async fn put_opt_out_once(
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

    pub(super) async fn import_opt_outs_once(
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

    pub(super) async fn import_estate_once(
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
}
