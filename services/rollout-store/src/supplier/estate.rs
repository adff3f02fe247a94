//! The supplier store's estate: the practices imported from the national files.

use std::{
    collections::{HashMap, HashSet},
    time::SystemTime,
};

use rollout_core::{
    IcbCode, OdsCode, Practice, PracticeStatus, RegionCode, SubIcbCode, SupplierId, audit::micros,
};
use sqlx::{Any, Row, Transaction, any::AnyRow};

use super::EstateChange;
use crate::StoreError;

/// A practice status as stored: the national file's one-letter code.
fn status_code(s: PracticeStatus) -> &'static str {
    match s {
        PracticeStatus::Active => "A",
        PracticeStatus::Closed => "C",
        PracticeStatus::Dormant => "D",
        PracticeStatus::Proposed => "P",
    }
}

/// A practice row.
pub(super) fn practice_row(row: &AnyRow) -> Result<Practice, StoreError> {
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

/// Makes the stored practices exactly `practices` (adds, updates, removes) inside `tx`.
pub(super) async fn import(
    tx: &mut Transaction<'_, Any>,
    practices: &[Practice],
) -> Result<EstateChange, StoreError> {
    let existing = sqlx::query("SELECT ods, name, region, icb, sub_icb, supplier, status FROM practices")
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(|r| practice_row(r).map(|p| (p.ods, p)))
        .collect::<Result<HashMap<_, _>, _>>()?;
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
        .execute(&mut **tx)
        .await?;
    }
    let keep: HashSet<OdsCode> = practices.iter().map(|p| p.ods).collect();
    for ods in existing.keys().filter(|k| !keep.contains(k)) {
        sqlx::query("DELETE FROM practices WHERE ods = $1")
            .bind(ods.as_str())
            .execute(&mut **tx)
            .await?;
        change.removed += 1;
    }
    Ok(change)
}
