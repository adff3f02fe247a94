//! The SQL of the coordinator store: the start-up load (state, not history), the one write
//! path, and the reads of history by id, sequence, issue order and action.

use sqlx::{Any, AnyPool, Row, any::AnyRow};

use super::{
    CHANGE_CHANNEL, CommandAction, CommandQuery, CommandRow, CommandState, CoordinatorState, DeliveryRow,
    DeliveryState, LegacyRows, Record, Upgrade, Write,
};
use crate::{Backend, StoreError, common, signed, unsigned};

/// The columns [`command_row`] reads, for `concat!` into static SQL.
macro_rules! command_columns {
    () => {
        "id, sequence, state, created_at, feature, action, effective, body"
    };
}

/// The columns [`delivery_row`] reads, for `concat!` into static SQL.
macro_rules! delivery_columns {
    () => {
        "sequence, supplier, state, body"
    };
}

/// SQL assembled here from fixed fragments and numbered placeholders only (every value is
/// bound), so nothing a caller passes reaches its text.
fn assembled(sql: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(sql)
}

fn records(rows: Vec<AnyRow>) -> Result<Vec<Record>, StoreError> {
    rows.iter()
        .map(|r| {
            Ok(Record {
                key: r.try_get(0)?,
                body: r.try_get(1)?,
            })
        })
        .collect()
}

fn sequence_of(r: &AnyRow) -> Result<Option<u64>, StoreError> {
    r.try_get::<Option<i64>, _>("sequence")?
        .map(|s| unsigned(s, "sequence"))
        .transpose()
}

/// A command row; `legacy` rows (before migration 3) get placeholders for what they lack.
fn command_row(r: &AnyRow, legacy: bool) -> Result<CommandRow, StoreError> {
    let id: String = r.try_get("id")?;
    let feature: Option<String> = r.try_get("feature")?;
    let action: Option<String> = r.try_get("action")?;
    let (feature, action) = match (feature, action) {
        (Some(f), Some(a)) => (f, CommandAction::parse(&a)?),
        _ if legacy => (String::new(), CommandAction::Halt),
        _ => {
            return Err(StoreError::Corrupt(format!(
                "command {id} has no feature or action: the store was not upgraded"
            )));
        }
    };
    Ok(CommandRow {
        sequence: sequence_of(r)?,
        state: CommandState::parse(&r.try_get::<String, _>("state")?)?,
        created_at: r.try_get("created_at")?,
        feature,
        action,
        effective: r.try_get::<i64, _>("effective")? != 0,
        body: r.try_get("body")?,
        id,
    })
}

fn command_rows(rows: &[AnyRow]) -> Result<Vec<CommandRow>, StoreError> {
    rows.iter().map(|r| command_row(r, false)).collect()
}

fn delivery_row(r: &AnyRow, legacy: bool) -> Result<DeliveryRow, StoreError> {
    let state: Option<String> = r.try_get("state")?;
    let state = match state {
        Some(s) => DeliveryState::parse(&s)?,
        None if legacy => DeliveryState::Pending,
        None => {
            return Err(StoreError::Corrupt(
                "a delivery has no state: the store was not upgraded".into(),
            ));
        }
    };
    Ok(DeliveryRow {
        sequence: unsigned(r.try_get("sequence")?, "sequence")?,
        supplier: r.try_get("supplier")?,
        state,
        body: r.try_get("body")?,
    })
}

pub(super) async fn load(pool: &AnyPool, backend: Backend) -> Result<CoordinatorState, StoreError> {
    let mut tx = pool.begin().await?;
    common::consistent_reads(&mut tx, backend).await?;
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
    let pending = command_rows(
        &sqlx::query(concat!(
            "SELECT ",
            command_columns!(),
            " FROM commands WHERE state = 'pending' ORDER BY created_at, id"
        ))
        .fetch_all(&mut *tx)
        .await?,
    )?;
    let effective = command_rows(
        &sqlx::query(concat!(
            "SELECT ",
            command_columns!(),
            " FROM commands WHERE effective = 1 ORDER BY sequence"
        ))
        .fetch_all(&mut *tx)
        .await?,
    )?;
    let log = sqlx::query("SELECT sequence, id FROM commands WHERE sequence IS NOT NULL ORDER BY sequence")
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| Ok((unsigned(r.try_get("sequence")?, "sequence")?, r.try_get("id")?)))
        .collect::<Result<Vec<_>, StoreError>>()?;
    let deliveries = sqlx::query(concat!(
        "SELECT ",
        delivery_columns!(),
        " FROM deliveries
         WHERE sequence >= (SELECT MIN(sequence) FROM deliveries WHERE state = 'pending')
         ORDER BY sequence, supplier"
    ))
    .fetch_all(&mut *tx)
    .await?
    .iter()
    .map(|r| delivery_row(r, false))
    .collect::<Result<Vec<_>, StoreError>>()?;
    let rejected = sqlx::query(
        "SELECT sequence, supplier FROM deliveries WHERE state = 'rejected' ORDER BY sequence, supplier",
    )
    .fetch_all(&mut *tx)
    .await?
    .iter()
    .map(|r| {
        Ok((
            unsigned(r.try_get("sequence")?, "sequence")?,
            r.try_get("supplier")?,
        ))
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
        pending,
        effective,
        log,
        deliveries,
        rejected,
        suppliers,
        version: unsigned(get("version"), "version")?,
        changes: unsigned(get("changes"), "changes")?,
    })
}

async fn write_commands(
    tx: &mut sqlx::Transaction<'_, Any>,
    commands: &[CommandRow],
    retired: &[String],
) -> Result<(), StoreError> {
    for c in commands {
        let sequence = c.sequence.map(|s| signed(s, "sequence")).transpose()?;
        let result = sqlx::query(
            "INSERT INTO commands (id, sequence, state, created_at, feature, action, effective, body)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (id) DO UPDATE SET sequence = excluded.sequence, state = excluded.state,
                 effective = excluded.effective, body = excluded.body",
        )
        .bind(&c.id)
        .bind(sequence)
        .bind(c.state.as_str())
        .bind(c.created_at)
        .bind(&c.feature)
        .bind(c.action.as_str())
        .bind(i64::from(c.effective))
        .bind(&c.body)
        .execute(&mut **tx)
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
    for id in retired {
        sqlx::query("UPDATE commands SET effective = 0 WHERE id = $1")
            .bind(id)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

pub(super) async fn write(pool: &AnyPool, backend: Backend, w: Write) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    for f in &w.features {
        sqlx::query("INSERT INTO features (key, body) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET body = excluded.body")
            .bind(&f.key)
            .bind(&f.body)
            .execute(&mut *tx)
            .await?;
    }
    write_commands(&mut tx, &w.commands, &w.retired).await?;
    for d in &w.deliveries {
        sqlx::query(
            "INSERT INTO deliveries (sequence, supplier, state, body) VALUES ($1, $2, $3, $4)
             ON CONFLICT (sequence, supplier) DO UPDATE SET state = excluded.state, body = excluded.body",
        )
        .bind(signed(d.sequence, "sequence")?)
        .bind(&d.supplier)
        .bind(d.state.as_str())
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
    changed(&mut tx, backend).await?;
    tx.commit().await?;
    Ok(())
}

/// Counts a write and, on PostgreSQL, tells the other replicas.
async fn changed(tx: &mut sqlx::Transaction<'_, Any>, backend: Backend) -> Result<(), StoreError> {
    sqlx::query("UPDATE meta SET value = value + 1 WHERE key = 'changes'")
        .execute(&mut **tx)
        .await?;
    if backend == Backend::Postgres {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(CHANGE_CHANNEL)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

pub(super) async fn command<T>(
    pool: &AnyPool,
    condition: &str,
    key: T,
) -> Result<Option<CommandRow>, StoreError>
where
    T: for<'q> sqlx::Encode<'q, Any> + sqlx::Type<Any> + Send,
{
    sqlx::query(assembled(format!(
        concat!("SELECT ", command_columns!(), " FROM commands WHERE {}"),
        condition
    )))
    .bind(key)
    .fetch_optional(pool)
    .await?
    .map(|r| command_row(&r, false))
    .transpose()
}

pub(super) async fn list_commands(pool: &AnyPool, q: &CommandQuery) -> Result<Vec<CommandRow>, StoreError> {
    let mut clauses = vec!["1 = 1".to_owned()];
    let mut n = 0;
    let mut next = || {
        n += 1;
        n
    };
    if q.feature.is_some() {
        clauses.push(format!("feature = ${}", next()));
    }
    if q.state.is_some() {
        clauses.push(format!("state = ${}", next()));
    }
    if q.before.is_some() {
        let (a, b, c) = (next(), next(), next());
        clauses.push(format!(
            "(created_at < ${a} OR (created_at = ${b} AND id < ${c}))"
        ));
    }
    let limit = next();
    let sql = format!(
        concat!(
            "SELECT ",
            command_columns!(),
            " FROM commands WHERE {} ORDER BY created_at DESC, id DESC LIMIT ${}"
        ),
        clauses.join(" AND "),
        limit
    );
    let mut query = sqlx::query(assembled(sql));
    if let Some(f) = &q.feature {
        query = query.bind(f);
    }
    if let Some(s) = q.state {
        query = query.bind(s.as_str());
    }
    if let Some((created_at, id)) = &q.before {
        query = query.bind(*created_at).bind(*created_at).bind(id);
    }
    command_rows(&query.bind(i64::from(q.limit)).fetch_all(pool).await?)
}

pub(super) async fn commands_between(
    pool: &AnyPool,
    from: u64,
    to: u64,
    action: Option<CommandAction>,
    feature: Option<&str>,
) -> Result<Vec<CommandRow>, StoreError> {
    let mut sql = concat!(
        "SELECT ",
        command_columns!(),
        " FROM commands WHERE sequence >= $1 AND sequence <= $2"
    )
    .to_owned();
    let mut n = 2;
    if action.is_some() {
        n += 1;
        sql.push_str(&format!(" AND action = ${n}"));
    }
    if feature.is_some() {
        n += 1;
        sql.push_str(&format!(" AND feature = ${n}"));
    }
    sql.push_str(" ORDER BY sequence");
    let mut query = sqlx::query(assembled(sql))
        .bind(signed(from, "sequence")?)
        .bind(signed(to, "sequence")?);
    if let Some(a) = action {
        query = query.bind(a.as_str());
    }
    if let Some(f) = feature {
        query = query.bind(f);
    }
    command_rows(&query.fetch_all(pool).await?)
}

pub(super) async fn deliveries(
    pool: &AnyPool,
    from: u64,
    to: u64,
    supplier: Option<&str>,
) -> Result<Vec<DeliveryRow>, StoreError> {
    let mut sql = concat!(
        "SELECT ",
        delivery_columns!(),
        " FROM deliveries WHERE sequence >= $1 AND sequence <= $2"
    )
    .to_owned();
    if supplier.is_some() {
        sql.push_str(" AND supplier = $3");
    }
    sql.push_str(" ORDER BY sequence, supplier");
    let mut query = sqlx::query(assembled(sql))
        .bind(signed(from, "sequence")?)
        .bind(signed(to, "sequence")?);
    if let Some(s) = supplier {
        query = query.bind(s);
    }
    query
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| delivery_row(r, false))
        .collect()
}

pub(super) async fn legacy_rows(pool: &AnyPool) -> Result<LegacyRows, StoreError> {
    let commands: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM commands WHERE action IS NULL OR feature IS NULL")
            .fetch_one(pool)
            .await?;
    let deliveries: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deliveries WHERE state IS NULL")
        .fetch_one(pool)
        .await?;
    let mut rows = LegacyRows::default();
    if commands > 0 {
        rows.commands = sqlx::query(concat!(
            "SELECT ",
            command_columns!(),
            " FROM commands
             ORDER BY CASE WHEN sequence IS NULL THEN 1 ELSE 0 END, sequence, created_at, id"
        ))
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| command_row(r, true))
        .collect::<Result<_, _>>()?;
    }
    if deliveries > 0 {
        rows.deliveries = sqlx::query(concat!(
            "SELECT ",
            delivery_columns!(),
            " FROM deliveries WHERE state IS NULL ORDER BY sequence, supplier"
        ))
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| delivery_row(r, true))
        .collect::<Result<_, _>>()?;
    }
    Ok(rows)
}

pub(super) async fn upgrade(pool: &AnyPool, upgrade: Upgrade) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    for (id, feature, action, effective) in &upgrade.commands {
        sqlx::query("UPDATE commands SET feature = $1, action = $2, effective = $3 WHERE id = $4")
            .bind(feature)
            .bind(action.as_str())
            .bind(i64::from(*effective))
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    for (sequence, supplier, state) in &upgrade.deliveries {
        sqlx::query("UPDATE deliveries SET state = $1 WHERE sequence = $2 AND supplier = $3")
            .bind(state.as_str())
            .bind(signed(*sequence, "sequence")?)
            .bind(supplier)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query("UPDATE meta SET value = value + 1 WHERE key = 'changes'")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}
