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

/// An idempotency record: the request's fingerprint and the response first given. A request
/// id is its caller's own: the record is kept under the identity that sent it and its id, so
/// another identity reusing the id is a request of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// The identity that sent the request (the certificate's, without the person the policy
    /// names behind it).
    pub identity: String,
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
        "INSERT INTO requests (identity, request_id, fingerprint, response, created_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&r.identity)
    .bind(&r.request_id)
    .bind(&r.fingerprint)
    .bind(&r.response)
    .bind(micros(SystemTime::now()))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The idempotency record of `identity`'s request id, if one is stored.
pub(crate) async fn recall_request(
    pool: &AnyPool,
    identity: &str,
    request_id: &str,
) -> Result<Option<RequestRecord>, StoreError> {
    let row =
        sqlx::query("SELECT fingerprint, response FROM requests WHERE identity = $1 AND request_id = $2")
            .bind(identity)
            .bind(request_id)
            .fetch_optional(pool)
            .await?;
    row.map(|r| {
        Ok(RequestRecord {
            identity: identity.to_owned(),
            request_id: request_id.to_owned(),
            fingerprint: r.try_get("fingerprint")?,
            response: r.try_get("response")?,
        })
    })
    .transpose()
}

/// The key of the PostgreSQL advisory lock that serialises appends to the audit chain (the
/// delivery leader's lock is another key).
const AUDIT_CHAIN_LOCK: i64 = 0x6770_6175_6474; // "gpaudt"

/// On PostgreSQL, takes the audit chain's transaction lock (held until `tx` ends), so that no
/// other transaction reads the chain's head until this one has committed or rolled back.
/// Refuses a transaction above READ COMMITTED: there the head would be read from a snapshot
/// taken before the lock was granted, so it could miss the event a concurrent appender just
/// committed. On SQLite the one connection serialises every write already.
async fn lock_chain(tx: &mut Transaction<'_, Any>) -> Result<(), StoreError> {
    if tx.backend_name() != "PostgreSQL" {
        return Ok(());
    }
    let row = sqlx::query(
        "SELECT pg_advisory_xact_lock($1)::text AS locked, \
         current_setting('transaction_isolation') AS isolation",
    )
    .bind(AUDIT_CHAIN_LOCK)
    .fetch_one(&mut **tx)
    .await?;
    let isolation: String = row.try_get("isolation")?;
    if isolation != "read committed" {
        return Err(StoreError::Corrupt(format!(
            "an audit event may only be appended in a READ COMMITTED transaction, not {isolation}: \
             the chain's head would be read from a snapshot older than its lock"
        )));
    }
    Ok(())
}

/// Whether a failed write may succeed if tried again unchanged: PostgreSQL aborted it
/// (serialisation failure 40001, deadlock 40P01), or the audit sequence it took was taken
/// first by an appender that does not lock the chain (a replica of an older version, during
/// a rolling upgrade).
pub(crate) fn retryable(e: &StoreError) -> bool {
    let StoreError::Database(sqlx::Error::Database(d)) = e else {
        return false;
    };
    let code = d.code();
    matches!(code.as_deref(), Some("40001" | "40P01"))
        || (d.is_unique_violation()
            && (d.constraint() == Some("audit_pkey") || d.message().contains("audit.sequence")))
}

/// Most tries of one write, in [`retrying`].
const WRITE_TRIES: u32 = 5;

/// Runs `write` (one whole transaction) and tries it again, up to [`WRITE_TRIES`] times in all
/// with a short randomised pause, while it fails in a way another try may not
/// ([`retryable`]). Any other failure, a conflict with the stored version included, is
/// returned at once.
pub(crate) async fn retrying<T, F, Fut>(what: &str, mut write: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        match write().await {
            Err(e) if tries < WRITE_TRIES && retryable(&e) => {
                tracing::warn!(error = %e, tries, "{what}: the database aborted the write; trying again");
                let pause = 2_u64 << tries;
                tokio::time::sleep(std::time::Duration::from_millis(pause + fastrand::u64(..=pause))).await;
            }
            result => return result,
        }
    }
}

/// Appends `draft` after the last audit event, inside `tx` (on PostgreSQL a READ COMMITTED
/// one: see [`lock_chain`]). The chain's head is read after its lock is taken, so concurrent
/// appends (a refused call recorded while a change commits, two replicas) never take the same
/// sequence.
pub(crate) async fn audit_in(
    tx: &mut Transaction<'_, Any>,
    draft: AuditDraft,
) -> Result<AuditEvent, StoreError> {
    lock_chain(tx).await?;
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
        "INSERT INTO audit (sequence, time, identity, action, target, outcome, reason, request_id, previous_hash, hash,
                            peer, calls, command, scope)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
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
    .bind(&event.draft.peer)
    .bind(signed(event.draft.calls, "audit calls")?)
    .bind(&event.draft.command)
    .bind(&event.draft.scope)
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
            peer: row.try_get("peer")?,
            calls: unsigned(row.try_get("calls")?, "audit calls")?,
            command: row.try_get("command")?,
            scope: row.try_get("scope")?,
        },
        previous_hash: row.try_get("previous_hash")?,
        hash: row.try_get("hash")?,
    })
}

/// Appends an audit event in its own transaction, tried again while [`retryable`].
pub(crate) async fn append_audit(pool: &AnyPool, audit: AuditDraft) -> Result<AuditEvent, StoreError> {
    retrying("appending an audit event", || async {
        let mut tx = pool.begin().await?;
        let event = audit_in(&mut tx, audit.clone()).await?;
        tx.commit().await?;
        Ok(event)
    })
    .await
}

/// The last audit event's sequence, 0 for none (one step down the primary key's index).
pub(crate) async fn audit_head(pool: &AnyPool) -> Result<u64, StoreError> {
    let last: Option<(i64,)> = sqlx::query_as("SELECT sequence FROM audit ORDER BY sequence DESC LIMIT 1")
        .fetch_optional(pool)
        .await?;
    last.map_or(Ok(0), |(s,)| unsigned(s, "audit sequence"))
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
