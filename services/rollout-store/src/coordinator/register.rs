//! The national opt-out register in the coordinator's store (migration 4): one row per
//! practice and feature as a supplier last reported it, and a cursor per supplier saying how
//! far its opt-out changes have been read. Rows are replaced only by a later copy (by update
//! time), so a copy coming back, or an older one, changes nothing.

use rollout_core::audit::AuditDraft;
use sqlx::{AnyPool, Row, any::AnyRow};

use crate::{StoreError, common, signed, unsigned};

/// One row of the register: a practice's opt-out from a feature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterEntry {
    /// The practice's ODS code.
    pub practice: String,
    /// The feature key.
    pub feature: String,
    /// The supplier the record is held by: the one that reported it, or the one it was
    /// transferred to with the practice.
    pub supplier: String,
    /// Whether the opt-out is withdrawn.
    pub withdrawn: bool,
    /// When the record was last changed at its supplier, in microseconds since the epoch:
    /// the later of two copies stands.
    pub update_time: i64,
    /// The record (the service's encoded PracticeOptOut).
    pub body: Vec<u8>,
}

/// How far the register has read one supplier's opt-out changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptOutCursor {
    /// The identity of the supplier's store that was read.
    pub store_id: String,
    /// The last change number read from it.
    pub change: u64,
}

/// Which rows [`crate::coordinator::CoordinatorStore::list_register`] reads, in (practice,
/// feature) order, and which [`crate::coordinator::CoordinatorStore::count_register`] counts
/// (`show_withdrawn`, `after` and `limit` apart).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegisterQuery {
    /// Only this feature's rows.
    pub feature: Option<String>,
    /// Only rows held by this supplier.
    pub supplier: Option<String>,
    /// Only this practice's rows.
    pub practice: Option<String>,
    /// Withdrawn rows too.
    pub show_withdrawn: bool,
    /// Only rows after this (practice, feature).
    pub after: Option<(String, String)>,
    /// At most this many rows.
    pub limit: u32,
}

/// How many rows one supplier holds for one feature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterCount {
    /// The supplier.
    pub supplier: String,
    /// The feature.
    pub feature: String,
    /// Opt-outs in force.
    pub opted_out: u64,
    /// Opt-outs withdrawn.
    pub withdrawn: u64,
}

/// Most placeholders in one `IN (...)` list.
const IN_CHUNK: usize = 500;

/// SQL assembled from fixed fragments and numbered placeholders only (every value is bound).
fn assembled(sql: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(sql)
}

fn entry(r: &AnyRow) -> Result<RegisterEntry, StoreError> {
    Ok(RegisterEntry {
        practice: r.try_get("practice")?,
        feature: r.try_get("feature")?,
        supplier: r.try_get("supplier")?,
        withdrawn: r.try_get::<i64, _>("withdrawn")? != 0,
        update_time: r.try_get("update_time")?,
        body: r.try_get("body")?,
    })
}

const COLUMNS: &str = "practice, feature, supplier, withdrawn, update_time, body";

pub(super) async fn cursors(pool: &AnyPool) -> Result<Vec<(String, OptOutCursor)>, StoreError> {
    sqlx::query("SELECT supplier, store_id, change FROM opt_out_cursors ORDER BY supplier")
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| {
            Ok((
                r.try_get("supplier")?,
                OptOutCursor {
                    store_id: r.try_get("store_id")?,
                    change: unsigned(r.try_get("change")?, "opt-out change")?,
                },
            ))
        })
        .collect()
}

async fn put_cursor(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    supplier: &str,
    cursor: &OptOutCursor,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO opt_out_cursors (supplier, store_id, change) VALUES ($1, $2, $3)
         ON CONFLICT (supplier) DO UPDATE SET store_id = excluded.store_id, change = excluded.change",
    )
    .bind(supplier)
    .bind(&cursor.store_id)
    .bind(signed(cursor.change, "opt-out change")?)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub(super) async fn merge(
    pool: &AnyPool,
    supplier: &str,
    cursor: &OptOutCursor,
    entries: Vec<(RegisterEntry, AuditDraft)>,
) -> Result<usize, StoreError> {
    let mut tx = pool.begin().await?;
    let mut merged = 0;
    for (e, audit) in entries {
        let done = sqlx::query(
            "INSERT INTO opt_out_register (practice, feature, supplier, withdrawn, update_time, body)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (practice, feature) DO UPDATE SET supplier = excluded.supplier,
                withdrawn = excluded.withdrawn, update_time = excluded.update_time, body = excluded.body
             WHERE opt_out_register.update_time < excluded.update_time",
        )
        .bind(&e.practice)
        .bind(&e.feature)
        .bind(&e.supplier)
        .bind(i64::from(e.withdrawn))
        .bind(e.update_time)
        .bind(&e.body)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() > 0 {
            merged += 1;
            common::audit_in(&mut tx, audit).await?;
        }
    }
    put_cursor(&mut tx, supplier, cursor).await?;
    tx.commit().await?;
    Ok(merged)
}

pub(super) async fn reset_cursor(
    pool: &AnyPool,
    supplier: &str,
    cursor: &OptOutCursor,
    audit: AuditDraft,
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    put_cursor(&mut tx, supplier, cursor).await?;
    common::audit_in(&mut tx, audit).await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn of_practices(
    pool: &AnyPool,
    practices: &[String],
    except: &str,
) -> Result<Vec<RegisterEntry>, StoreError> {
    let mut out = Vec::new();
    for chunk in practices.chunks(IN_CHUNK) {
        let list: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
        let sql = format!(
            "SELECT {COLUMNS} FROM opt_out_register
             WHERE withdrawn = 0 AND supplier <> $1 AND practice IN ({})
             ORDER BY practice, feature",
            list.join(", ")
        );
        let mut query = sqlx::query(assembled(sql)).bind(except);
        for p in chunk {
            query = query.bind(p);
        }
        for r in query.fetch_all(pool).await? {
            out.push(entry(&r)?);
        }
    }
    out.sort_by(|a, b| (&a.practice, &a.feature).cmp(&(&b.practice, &b.feature)));
    Ok(out)
}

pub(super) async fn transfer(
    pool: &AnyPool,
    entries: Vec<RegisterEntry>,
    audit: Vec<AuditDraft>,
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    for e in entries {
        sqlx::query(
            "UPDATE opt_out_register SET supplier = $1, body = $2
             WHERE practice = $3 AND feature = $4 AND update_time = $5",
        )
        .bind(&e.supplier)
        .bind(&e.body)
        .bind(&e.practice)
        .bind(&e.feature)
        .bind(e.update_time)
        .execute(&mut *tx)
        .await?;
    }
    for a in audit {
        common::audit_in(&mut tx, a).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The WHERE clause of a query's filters (withdrawn rows per `with_withdrawn`), its
/// placeholders numbered from 1, and the values to bind in order.
fn filters(q: &RegisterQuery, with_withdrawn: bool, after: bool) -> (String, Vec<String>) {
    let mut clauses = vec!["1 = 1".to_owned()];
    let mut values = Vec::new();
    let bind = |clause: &str, value: &str, values: &mut Vec<String>| {
        values.push(value.to_owned());
        clause.replace('?', &format!("${}", values.len()))
    };
    if let Some(f) = &q.feature {
        clauses.push(bind("feature = ?", f, &mut values));
    }
    if let Some(s) = &q.supplier {
        clauses.push(bind("supplier = ?", s, &mut values));
    }
    if let Some(p) = &q.practice {
        clauses.push(bind("practice = ?", p, &mut values));
    }
    if !with_withdrawn {
        clauses.push("withdrawn = 0".to_owned());
    }
    if let (true, Some((practice, feature))) = (after, &q.after) {
        let a = bind("practice > ?", practice, &mut values);
        let b = bind("practice = ?", practice, &mut values);
        let c = bind("feature > ?", feature, &mut values);
        clauses.push(format!("({a} OR ({b} AND {c}))"));
    }
    (clauses.join(" AND "), values)
}

pub(super) async fn list(pool: &AnyPool, q: &RegisterQuery) -> Result<Vec<RegisterEntry>, StoreError> {
    let (clause, values) = filters(q, q.show_withdrawn, true);
    let sql = format!(
        "SELECT {COLUMNS} FROM opt_out_register WHERE {clause} ORDER BY practice, feature LIMIT ${}",
        values.len() + 1
    );
    let mut query = sqlx::query(assembled(sql));
    for v in &values {
        query = query.bind(v);
    }
    query
        .bind(i64::from(q.limit))
        .fetch_all(pool)
        .await?
        .iter()
        .map(entry)
        .collect()
}

pub(super) async fn count(pool: &AnyPool, q: &RegisterQuery) -> Result<Vec<RegisterCount>, StoreError> {
    let (clause, values) = filters(q, true, false);
    let sql = format!(
        "SELECT supplier, feature,
                COUNT(CASE WHEN withdrawn = 0 THEN 1 END) AS opted_out,
                COUNT(CASE WHEN withdrawn <> 0 THEN 1 END) AS withdrawn
         FROM opt_out_register WHERE {clause}
         GROUP BY supplier, feature ORDER BY supplier, feature"
    );
    let mut query = sqlx::query(assembled(sql));
    for v in &values {
        query = query.bind(v);
    }
    query
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| {
            Ok(RegisterCount {
                supplier: r.try_get("supplier")?,
                feature: r.try_get("feature")?,
                opted_out: unsigned(r.try_get("opted_out")?, "count")?,
                withdrawn: unsigned(r.try_get("withdrawn")?, "count")?,
            })
        })
        .collect()
}
