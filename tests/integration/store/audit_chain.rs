//! Audit appends that never collide: on PostgreSQL, many appenders at once (refused calls
//! recorded on their own while changes commit with their events, as a flood of refusals does
//! to a server) each take the next place in one chain.

use rollout_core::audit::{AuditDraft, AuditOutcome, verify_chain};
use rollout_store::{
    coordinator::{CoordinatorStore, SqlCoordinatorStore, Write},
    supplier::{SqlSupplierStore, SupplierStore},
};

use super::{audit, command, sync};
use crate::support::pg_database;

/// Appenders of refusals at once, each this many.
const APPENDERS: usize = 8;
const REFUSALS_EACH: usize = 40;
/// Changes committed with their audit events while the refusals are appended.
const CHANGES: u64 = 40;

fn refusal(n: usize) -> AuditDraft {
    AuditDraft {
        outcome: AuditOutcome::Refused,
        identity: "spiffe://gprollout.test/viewer".into(),
        reason: format!("ROLE_REQUIRED {n}"),
        ..audit("/nhs.gprollout.v1.CoordinatorService/HaltFeature")
    }
}

/// Appends `APPENDERS × REFUSALS_EACH` refusals from as many tasks at once, while `changes`
/// runs; every append must succeed.
async fn flood<S, F>(store: &std::sync::Arc<S>, changes: F)
where
    S: ?Sized + Send + Sync + 'static,
    S: AppendAudit,
    F: Future<Output = ()>,
{
    let appenders: Vec<_> = (0..APPENDERS)
        .map(|a| {
            let store = store.clone();
            tokio::spawn(async move {
                for n in 0..REFUSALS_EACH {
                    store.append(refusal(a * REFUSALS_EACH + n)).await;
                }
            })
        })
        .collect();
    changes.await;
    for a in appenders {
        a.await.expect("appender");
    }
}

/// A store's own append of a refused call.
trait AppendAudit {
    fn append(&self, draft: AuditDraft) -> impl Future<Output = ()> + Send;
}

impl AppendAudit for SqlCoordinatorStore {
    async fn append(&self, draft: AuditDraft) {
        self.append_audit(draft).await.expect("a refusal is appended");
    }
}

impl AppendAudit for SqlSupplierStore {
    async fn append(&self, draft: AuditDraft) {
        self.append_audit(draft).await.expect("a refusal is appended");
    }
}

#[tokio::test]
async fn coordinator_audit_appends_never_collide_on_postgres() {
    let Some(db) = pg_database().await else { return };
    let store = std::sync::Arc::new(SqlCoordinatorStore::open(&db.url).await.expect("open"));
    flood(&store, async {
        for version in 0..CHANGES {
            store
                .write(Write {
                    audit: Some(audit("/nhs.gprollout.v1.CoordinatorService/HaltFeature")),
                    expected_version: Some(version),
                    ..Write::default()
                })
                .await
                .expect("an accepted change commits while refusals are recorded");
        }
    })
    .await;
    let events = store.list_audit(0, 10_000).await.expect("audit");
    let total = APPENDERS * REFUSALS_EACH + CHANGES as usize;
    assert_eq!(verify_chain(&events), Ok(total as u64));
    store.close().await;
    db.drop().await;
}

#[tokio::test]
async fn supplier_audit_appends_never_collide_on_postgres() {
    let Some(db) = pg_database().await else { return };
    let store = std::sync::Arc::new(SqlSupplierStore::open(&db.url).await.expect("open"));
    flood(&store, async {
        for sequence in 1..=CHANGES {
            store
                .append_command(
                    &command(sequence, false),
                    &[],
                    &sync(sequence).history_hash,
                    sequence,
                    audit("/nhs.gprollout.v1.ControlService/ApplyCommand"),
                )
                .await
                .expect("a command is applied while refusals are recorded");
        }
    })
    .await;
    let events = store.list_audit(0, 10_000).await.expect("audit");
    let total = APPENDERS * REFUSALS_EACH + CHANGES as usize;
    assert_eq!(verify_chain(&events), Ok(total as u64));
    store.close().await;
    db.drop().await;
}
