//! The audit trail under attack and under questioning: refusal floods against a coordinator and
//! a supplier on PostgreSQL, summarised in chains that verify while every operator halt and
//! every command still commits (`flood.rs`); accepted events naming their command and scope,
//! paging that says more events exist, a supplier's chain read and verified through the
//! coordinator (`trail.rs`).

mod flood;
mod trail;

use rollout_core::audit::{AuditEvent, AuditOutcome};

/// Refused calls of `identity` among `events`: every event's call count, summaries included.
pub fn refused_calls_of(events: &[AuditEvent], identity: &str) -> u64 {
    events
        .iter()
        .filter(|e| e.draft.outcome == AuditOutcome::Refused && e.draft.identity == identity)
        .map(|e| e.draft.calls)
        .sum()
}

/// Every event of a store's log, page by page.
pub async fn whole_log<F, Fut>(list: F) -> Vec<AuditEvent>
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = Vec<AuditEvent>>,
{
    let mut all: Vec<AuditEvent> = Vec::new();
    loop {
        let page = list(all.last().map_or(0, |e| e.sequence)).await;
        if page.is_empty() {
            return all;
        }
        all.extend(page);
    }
}
