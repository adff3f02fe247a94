//! The supplier store's opt-out rows for the national opt-out register: each write numbered
//! (the row's `change`, the latest in meta as `opt_out_change`), read back in change order,
//! installed from the register, and the practices held until the register has answered.

use std::time::SystemTime;

use rollout_core::{
    FeatureKey, OdsCode, OptOut, SupplierId,
    audit::{from_micros, micros},
};
use sqlx::{Any, Row, Transaction, any::AnyRow};

use super::{OptOutRecord, Origin, Withdrawal};
use crate::{StoreError, signed, unsigned};

/// The columns [`opt_out_row`] reads, for `concat!` into static SQL.
macro_rules! opt_out_columns {
    () => {
        "ods, feature, reason, source, recorded_by, created_at, updated_at, withdrawn_by, \
         withdrawn_at, withdraw_reason, change, origin, origin_supplier"
    };
}
pub(super) use opt_out_columns;

fn corrupt(e: rollout_core::IdError) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// An opt-out row.
pub(super) fn opt_out_row(row: &AnyRow) -> Result<OptOutRecord, StoreError> {
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
    let origin_supplier = || -> Result<SupplierId, StoreError> {
        let id: Option<String> = row.try_get("origin_supplier")?;
        let id = id.ok_or_else(|| StoreError::Corrupt("an opt-out's origin names no supplier".into()))?;
        SupplierId::parse(&id).map_err(corrupt)
    };
    let origin = match row.try_get::<String, _>("origin")?.as_str() {
        "recorded" => Origin::Recorded,
        "restored" => Origin::Restored(origin_supplier()?),
        "transferred" => Origin::Transferred(origin_supplier()?),
        other => return Err(StoreError::Corrupt(format!("unknown opt-out origin {other:?}"))),
    };
    Ok(OptOutRecord {
        opt_out: OptOut {
            practice: OdsCode::parse(&row.try_get::<String, _>("ods")?).map_err(corrupt)?,
            feature: FeatureKey::parse(&row.try_get::<String, _>("feature")?).map_err(corrupt)?,
            reason: row.try_get("reason")?,
            source: row.try_get("source")?,
            recorded_by: row.try_get("recorded_by")?,
            recorded_at: from_micros(row.try_get("created_at")?),
        },
        updated_at: from_micros(row.try_get("updated_at")?),
        withdrawal,
        change: unsigned(row.try_get("change")?, "opt-out change")?,
        origin,
    })
}

/// Stores `record` (new or replacing the row of its practice and feature) at its change
/// number, and makes that number the store's latest.
pub(super) async fn write_opt_out(
    tx: &mut Transaction<'_, Any>,
    record: &OptOutRecord,
) -> Result<(), StoreError> {
    let o = &record.opt_out;
    let w = record.withdrawal.as_ref();
    let (origin, origin_supplier) = match &record.origin {
        Origin::Recorded => ("recorded", None),
        Origin::Restored(s) => ("restored", Some(s.as_str())),
        Origin::Transferred(s) => ("transferred", Some(s.as_str())),
    };
    let change = signed(record.change, "opt-out change")?;
    sqlx::query(
        "INSERT INTO opt_outs (ods, feature, reason, source, recorded_by, created_at, updated_at,
                               withdrawn_by, withdrawn_at, withdraw_reason, change, origin, origin_supplier)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
         ON CONFLICT (ods, feature) DO UPDATE SET
            reason = excluded.reason, source = excluded.source, recorded_by = excluded.recorded_by,
            created_at = excluded.created_at, updated_at = excluded.updated_at,
            withdrawn_by = excluded.withdrawn_by, withdrawn_at = excluded.withdrawn_at,
            withdraw_reason = excluded.withdraw_reason, change = excluded.change,
            origin = excluded.origin, origin_supplier = excluded.origin_supplier",
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
    .bind(change)
    .bind(origin)
    .bind(origin_supplier)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO meta (key, value) VALUES ('opt_out_change', $1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .bind(change)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The store's latest opt-out change number (0 before the first).
pub(super) async fn latest_change(tx: &mut Transaction<'_, Any>) -> Result<u64, StoreError> {
    let latest: Option<i64> = sqlx::query_scalar("SELECT value FROM meta WHERE key = 'opt_out_change'")
        .fetch_optional(&mut **tx)
        .await?;
    unsigned(latest.unwrap_or(0), "opt-out change")
}

/// The store's identity; made (insert if absent) by [`ensure_store_id`] at open.
pub(super) async fn store_id(tx: &mut Transaction<'_, Any>) -> Result<String, StoreError> {
    let id: Option<String> = sqlx::query_scalar("SELECT store_id FROM store_identity WHERE id = 1")
        .fetch_optional(&mut **tx)
        .await?;
    id.ok_or_else(|| StoreError::Corrupt("the store has no identity".into()))
}

/// Gives the store its random identity if it has none yet. Replicas opening one store at once
/// race to insert; the first wins and every one reads it.
pub(super) async fn ensure_store_id(pool: &sqlx::AnyPool) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO store_identity (id, store_id) VALUES (1, $1) ON CONFLICT (id) DO NOTHING")
        .bind(uuid::Uuid::new_v4().hyphenated().to_string())
        .execute(pool)
        .await?;
    Ok(())
}

/// The held practices, in code order.
pub(super) async fn held(tx: &mut Transaction<'_, Any>) -> Result<Vec<OdsCode>, StoreError> {
    sqlx::query_scalar::<_, String>("SELECT ods FROM held_practices ORDER BY ods")
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(|o| OdsCode::parse(o).map_err(corrupt))
        .collect()
}

/// Holds `practices` (new to the estate) and lets go of every held practice not in `estate`.
pub(super) async fn hold(
    tx: &mut Transaction<'_, Any>,
    practices: &[OdsCode],
    estate: &std::collections::HashSet<OdsCode>,
) -> Result<(), StoreError> {
    let now = micros(SystemTime::now());
    for ods in practices {
        sqlx::query("INSERT INTO held_practices (ods, held_at) VALUES ($1, $2) ON CONFLICT (ods) DO NOTHING")
            .bind(ods.as_str())
            .bind(now)
            .execute(&mut **tx)
            .await?;
    }
    for ods in held(tx).await?.iter().filter(|o| !estate.contains(o)) {
        release(tx, ods).await?;
    }
    Ok(())
}

/// Lets go of a held practice.
pub(super) async fn release(tx: &mut Transaction<'_, Any>, ods: &OdsCode) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM held_practices WHERE ods = $1")
        .bind(ods.as_str())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Opt-out rows whose change number is above `after`, in change order, at most `limit`.
pub(super) async fn changes_after(
    pool: &sqlx::AnyPool,
    after: u64,
    limit: u32,
) -> Result<Vec<OptOutRecord>, StoreError> {
    sqlx::query(concat!(
        "SELECT ",
        opt_out_columns!(),
        " FROM opt_outs WHERE change > $1 ORDER BY change LIMIT $2"
    ))
    .bind(signed(after, "opt-out change")?)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?
    .iter()
    .map(opt_out_row)
    .collect()
}
