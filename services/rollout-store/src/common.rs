//! What both services' SQLite stores share: idempotency records and the audit chain.

use std::time::SystemTime;

use rollout_core::audit::{AuditDraft, AuditEvent, AuditOutcome, micros};
use sqlx::{Any, AnyPool, Row, Transaction, any::AnyRow};

use crate::{Backend, StoreError, signed, unsigned};

/// Makes every read of `tx` see one snapshot. On PostgreSQL the default (READ COMMITTED) gives
/// each statement its own, so a state read table by table could mix two versions: a replica
/// would then believe it holds a version whose changes it never read. SQLite transactions
/// always read one snapshot. Call before the transaction's first statement.
pub(crate) async fn consistent_reads(
    tx: &mut Transaction<'_, Any>,
    backend: Backend,
) -> Result<(), StoreError> {
    if backend == Backend::Postgres {
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// An idempotency record: the request's fingerprint and the response first given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// The request id (UUID).
    pub request_id: String,
    /// A hash of the request without its id.
    pub fingerprint: Vec<u8>,
    /// The encoded response.
    pub response: Vec<u8>,
}

/// Stores an idempotency record inside `tx`.
pub(crate) async fn insert_request(
    tx: &mut Transaction<'_, Any>,
    r: &RequestRecord,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO requests (request_id, fingerprint, response, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(&r.request_id)
    .bind(&r.fingerprint)
    .bind(&r.response)
    .bind(micros(SystemTime::now()))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The idempotency record of a request id, if one is stored.
pub(crate) async fn recall_request(
    pool: &AnyPool,
    request_id: &str,
) -> Result<Option<RequestRecord>, StoreError> {
    let row = sqlx::query("SELECT fingerprint, response FROM requests WHERE request_id = $1")
        .bind(request_id)
        .fetch_optional(pool)
        .await?;
    row.map(|r| {
        Ok(RequestRecord {
            request_id: request_id.to_owned(),
            fingerprint: r.try_get("fingerprint")?,
            response: r.try_get("response")?,
        })
    })
    .transpose()
}

/// Appends `draft` after the last audit event, inside `tx`.
pub(crate) async fn audit_in(
    tx: &mut Transaction<'_, Any>,
    draft: AuditDraft,
) -> Result<AuditEvent, StoreError> {
    let last: Option<(i64, String)> =
        sqlx::query_as("SELECT sequence, hash FROM audit ORDER BY sequence DESC LIMIT 1")
            .fetch_optional(&mut **tx)
            .await?;
    let previous = match &last {
        Some((seq, hash)) => Some((unsigned(*seq, "audit sequence")?, hash.as_str())),
        None => None,
    };
    let event = AuditEvent::seal(previous, draft, SystemTime::now());
    sqlx::query(
        "INSERT INTO audit (sequence, time, identity, action, target, outcome, reason, request_id, previous_hash, hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(signed(event.sequence, "audit sequence")?)
    .bind(event.time_micros)
    .bind(&event.draft.identity)
    .bind(&event.draft.action)
    .bind(&event.draft.target)
    .bind(event.draft.outcome.as_str())
    .bind(&event.draft.reason)
    .bind(&event.draft.request_id)
    .bind(&event.previous_hash)
    .bind(&event.hash)
    .execute(&mut **tx)
    .await?;
    Ok(event)
}

fn audit_row(row: &AnyRow) -> Result<AuditEvent, StoreError> {
    let outcome: String = row.try_get("outcome")?;
    Ok(AuditEvent {
        sequence: unsigned(row.try_get("sequence")?, "audit sequence")?,
        time_micros: row.try_get("time")?,
        draft: AuditDraft {
            identity: row.try_get("identity")?,
            action: row.try_get("action")?,
            target: row.try_get("target")?,
            outcome: AuditOutcome::parse(&outcome)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown audit outcome {outcome:?}")))?,
            reason: row.try_get("reason")?,
            request_id: row.try_get("request_id")?,
        },
        previous_hash: row.try_get("previous_hash")?,
        hash: row.try_get("hash")?,
    })
}

/// Appends an audit event in its own transaction.
pub(crate) async fn append_audit(pool: &AnyPool, audit: AuditDraft) -> Result<AuditEvent, StoreError> {
    let mut tx = pool.begin().await?;
    let event = audit_in(&mut tx, audit).await?;
    tx.commit().await?;
    Ok(event)
}

/// Audit events after `after`, at most `limit`, in order.
pub(crate) async fn list_audit(
    pool: &AnyPool,
    after: u64,
    limit: u32,
) -> Result<Vec<AuditEvent>, StoreError> {
    sqlx::query("SELECT * FROM audit WHERE sequence > $1 ORDER BY sequence LIMIT $2")
        .bind(signed(after, "audit sequence")?)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?
        .iter()
        .map(audit_row)
        .collect()
}
