//! The national opt-out register: the coordinator's copy of every practice's opt-outs, kept so
//! that a supplier that lost its store gets them back and a practice that moves to another
//! supplier takes them along. The coordinator never makes or ends an opt-out; only a practice,
//! through its supplier, does.
//!
//! Each supplier's delivery task calls [`RegisterLink::sync`] right after a heartbeat and
//! before any snapshot or command is sent, so a supplier restarted on an empty store (applied
//! sequence 0: every practice UNKNOWN, treated as off) has its opt-outs back before it holds
//! any rule again. In order:
//! 1. **restore**: a supplier reporting another store id than the register read, or a latest
//!    opt-out change below it (a store gone back to a backup), is sent every register record
//!    held by it, set and withdrawn, as ORIGIN_RESTORED (ImportOptOuts), and its cursor starts
//!    again from 0 on the new store, with one audit event;
//! 2. **pull**: the changes after the cursor (ListOptOutChanges), a page at a time, each page
//!    merged (a later update time wins) with its cursor move and one audit event per record
//!    that changed the register, in one transaction; at most [`MAX_PAGES`] pages a sync;
//! 3. **transfer**: for the practices the supplier holds (joined from another supplier), the
//!    register's opt-outs in force held by other suppliers go to it as ORIGIN_TRANSFERRED, and
//!    the practices are released; the register then holds those records as the new
//!    supplier's, with one audit event per moved practice.
//!
//! A supplier that does not fill `store_id`, or answers UNIMPLEMENTED (a version before the
//! register), is left alone until it is next unreachable.

mod transfer;

use prost::Message;
use rollout_core::{SupplierId, audit::AuditDraft};
use rollout_net::{PAGE_BUDGET_BYTES, limits::element_len, wire};
use rollout_proto::v1::{self as pb, control_service_client::ControlServiceClient};
use rollout_store::coordinator::{OptOutCursor, RegisterEntry, RegisterQuery};
use tonic::{Code, transport::Channel};
use tracing::{info, warn};

use crate::{answers::Fault, coordinator::Core, delivery::call, failure::describe};

/// Records asked for in one ListOptOutChanges (the most a supplier gives).
const CHANGES_PAGE: i32 = 1_000;
/// Most ListOptOutChanges pages read in one sync; the rest wait for the next heartbeat, so a
/// supplier with many changes never holds back command delivery for long.
const MAX_PAGES: usize = 10;
/// Most records in one ImportOptOuts (the supplier refuses more).
const MAX_RECORDS: usize = 1_000;
/// Most released practices in one ImportOptOuts (the supplier refuses more).
const MAX_RELEASED: usize = 10_000;
/// Most characters of a reason or source in a record the register keeps (what a supplier
/// accepts from a practice).
const MAX_REASON_CHARS: usize = 1_000;
/// Most characters of an identity or supplier name in a record the register keeps.
const MAX_NAME_CHARS: usize = 200;
/// The identity the coordinator's own register events are audited under.
const IDENTITY: &str = "coordinator";

/// Why the register could not be brought together with a supplier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RegisterError {
    /// The supplier's records were owed back (a lost store) and not all were sent.
    pub(crate) restore_owed: bool,
    message: String,
}

impl std::fmt::Display for RegisterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// What one delivery task knows of its supplier's opt-outs.
#[derive(Debug, Default)]
pub(crate) struct RegisterLink {
    /// The supplier answered UNIMPLEMENTED (older than the register).
    unsupported: bool,
    /// The store id and change the register had read after the last sync.
    read: Option<(String, u64)>,
}

impl RegisterLink {
    /// The supplier could not be reached: ask again whether it offers the register (it may
    /// come back as another version).
    pub(crate) fn supplier_lost(&mut self) {
        self.unsupported = false;
    }

    /// Why `state` (from the supplier's state watch) needs the register's attention, if it
    /// does: practices held, or opt-out changes the register has not read.
    pub(crate) fn news(&self, state: &pb::SyncState) -> Option<String> {
        if self.unsupported || state.store_id.is_empty() {
            return None;
        }
        if !state.held_practices.is_empty() {
            return Some(format!(
                "it holds {} practices awaiting the opt-out check",
                state.held_practices.len()
            ));
        }
        let change = u64::try_from(state.opt_out_change).unwrap_or(0);
        match &self.read {
            Some((store, read)) if *store == state.store_id && *read == change => None,
            Some((_, read)) => Some(format!(
                "its latest opt-out change is {change}, the register read {read}"
            )),
            None => Some("its opt-outs have not been read yet".to_owned()),
        }
    }

    /// Brings the register and the supplier together after a heartbeat that reported `state`:
    /// restore, pull, transfer (see the module docs). Errors say what failed; `restore_owed`
    /// when the supplier's own records could not all be sent back.
    pub(crate) async fn sync(
        &mut self,
        core: &Core,
        supplier: &SupplierId,
        client: &mut ControlServiceClient<Channel>,
        state: &pb::SyncState,
    ) -> Result<(), RegisterError> {
        if self.unsupported || state.store_id.is_empty() {
            return Ok(());
        }
        match self.steps(core, supplier, client, state).await {
            Ok(()) => Ok(()),
            Err(Step::Unsupported) => {
                info!(
                    "the supplier does not offer the national opt-out register (an older version): its opt-outs are not kept by the coordinator"
                );
                self.unsupported = true;
                Ok(())
            }
            Err(Step::Failed(message)) => Err(RegisterError {
                restore_owed: false,
                message,
            }),
            Err(Step::RestoreFailed(message)) => Err(RegisterError {
                restore_owed: true,
                message,
            }),
        }
    }

    async fn steps(
        &mut self,
        core: &Core,
        supplier: &SupplierId,
        client: &mut ControlServiceClient<Channel>,
        state: &pb::SyncState,
    ) -> Result<(), Step> {
        let stored = core
            .store()
            .opt_out_cursors()
            .await
            .map_err(store_failed("reading the register's cursors"))?
            .into_iter()
            .find(|(s, _)| s == supplier.as_str())
            .map(|(_, c)| c);
        let latest = u64::try_from(state.opt_out_change).unwrap_or(0);
        let mut cursor = match &stored {
            Some(c) if c.store_id != state.store_id || latest < c.change => {
                restore(core, supplier, client, state, c)
                    .await
                    .map_err(|e| match e {
                        Step::Failed(m) => Step::RestoreFailed(m),
                        other => other,
                    })?
            }
            Some(c) => c.clone(),
            None => OptOutCursor {
                store_id: state.store_id.clone(),
                change: 0,
            },
        };
        let saved = stored.as_ref() == Some(&cursor);
        pull(core, supplier, client, &mut cursor, saved).await?;
        self.read = Some((cursor.store_id.clone(), cursor.change));
        if !state.held_practices.is_empty() {
            transfer::transfer(core, supplier, client, &state.held_practices).await?;
        }
        Ok(())
    }
}

/// How a step of a sync ended badly.
enum Step {
    /// The supplier answered UNIMPLEMENTED (a version before the register).
    Unsupported,
    /// What failed.
    Failed(String),
    /// The supplier's own records, owed back after it lost its store, were not all sent.
    RestoreFailed(String),
}

fn step(context: &str) -> impl FnOnce(tonic::Status) -> Step + '_ {
    move |status| match status.code() {
        Code::Unimplemented => Step::Unsupported,
        _ => Step::Failed(format!("{context}: {}", describe(&status))),
    }
}

fn store_failed(context: &str) -> impl FnOnce(rollout_store::StoreError) -> Step + '_ {
    move |e| Step::Failed(format!("{context}: {e}"))
}

fn audit(action: &str, target: String, reason: String) -> AuditDraft {
    AuditDraft {
        identity: IDENTITY.to_owned(),
        action: action.to_owned(),
        target: target.chars().take(200).collect(),
        outcome: rollout_core::audit::AuditOutcome::Accepted,
        reason: reason.chars().take(1_000).collect(),
        request_id: String::new(),
        ..rollout_core::audit::AuditDraft::default()
    }
}

/// A record as a supplier reported it, as the register keeps it (without `supplier`, which the
/// row holds).
fn entry_of(supplier: &SupplierId, o: &pb::PracticeOptOut) -> Result<RegisterEntry, String> {
    let (practice, feature) = wire::opt_out_name("name", &o.name).map_err(|e| e.to_string())?;
    // The practice's own words are kept unchanged, so never cut: a record over the bounds its
    // supplier enforces where it is written is refused.
    let texts = [
        ("reason", &o.reason, MAX_REASON_CHARS),
        ("source", &o.source, MAX_REASON_CHARS),
        ("withdraw_reason", &o.withdraw_reason, MAX_REASON_CHARS),
        ("recorded_by", &o.recorded_by, MAX_NAME_CHARS),
        ("withdrawn_by", &o.withdrawn_by, MAX_NAME_CHARS),
        ("origin_supplier", &o.origin_supplier, MAX_NAME_CHARS),
    ];
    if let Some((field, text, max)) = texts.iter().find(|(_, t, max)| t.chars().nth(*max).is_some()) {
        return Err(format!(
            "{}: {field} of {} characters (at most {max})",
            wire::shown(&o.name),
            text.chars().count()
        ));
    }
    let update = o
        .update_time
        .as_ref()
        .ok_or_else(|| format!("{} has no update_time", o.name))
        .and_then(|t| wire::time("update_time", t).map_err(|e| e.to_string()))?;
    Ok(RegisterEntry {
        practice: practice.to_string(),
        feature: feature.to_string(),
        supplier: supplier.to_string(),
        withdrawn: o.withdrawn,
        update_time: rollout_core::audit::micros(update),
        body: pb::PracticeOptOut {
            supplier: String::new(),
            ..o.clone()
        }
        .encode_to_vec(),
    })
}

/// The audit event of a record the register took from a supplier.
fn pulled_event(supplier: &SupplierId, o: &pb::PracticeOptOut) -> AuditDraft {
    let reason = if o.withdrawn {
        format!(
            "withdrawn at suppliers/{supplier} by {}: {:?} (opted out: {:?})",
            o.withdrawn_by,
            rollout_core::quoted(&o.withdraw_reason),
            rollout_core::quoted(&o.reason)
        )
    } else {
        format!(
            "set at suppliers/{supplier} by {}: {:?}",
            o.recorded_by,
            rollout_core::quoted(&o.reason)
        )
    };
    audit("record-opt-out", o.name.clone(), reason)
}

/// Reads the supplier's opt-out changes after `cursor` into the register, page by page (each
/// page and its cursor move one transaction), until its latest change or [`MAX_PAGES`] pages.
/// A cursor not yet `saved` in the store is saved even when there is nothing to read.
async fn pull(
    core: &Core,
    supplier: &SupplierId,
    client: &mut ControlServiceClient<Channel>,
    cursor: &mut OptOutCursor,
    mut saved: bool,
) -> Result<(), Step> {
    for _ in 0..MAX_PAGES {
        let page = client
            .list_opt_out_changes(call(pb::ListOptOutChangesRequest {
                after_change: i64::try_from(cursor.change).unwrap_or(i64::MAX),
                page_size: CHANGES_PAGE,
            }))
            .await
            .map_err(step("reading the supplier's opt-out changes"))?
            .into_inner();
        if page.store_id != cursor.store_id {
            return Err(Step::Failed(format!(
                "the supplier's store changed while its opt-outs were read (store {}, then {})",
                cursor.store_id, page.store_id
            )));
        }
        let last = page.opt_outs.last().map(|o| u64::try_from(o.change).unwrap_or(0));
        let next = OptOutCursor {
            change: last.unwrap_or(cursor.change).max(cursor.change),
            ..cursor.clone()
        };
        if page.opt_outs.is_empty() && saved {
            return Ok(());
        }
        let entries = match page
            .opt_outs
            .iter()
            .map(|o| entry_of(supplier, o).map(|e| (e, pulled_event(supplier, o))))
            .collect::<Result<Vec<_>, String>>()
        {
            Ok(entries) => entries,
            Err(e) => {
                let fault = Fault::new(format!(
                    "ListOptOutChanges reported an opt-out the register cannot keep: {e}"
                ));
                core.record_fault(supplier, &fault).await;
                return Err(Step::Failed(fault.to_string()));
            }
        };
        let count = entries.len();
        let merged = core
            .store()
            .merge_opt_outs(supplier.as_str(), &next, entries)
            .await
            .map_err(store_failed("storing the supplier's opt-outs in the register"))?;
        saved = true;
        *cursor = next;
        if count > 0 {
            info!(
                read = count,
                changed = merged,
                change = cursor.change,
                "opt-out changes read into the national register"
            );
        }
        if last.is_none() || cursor.change >= u64::try_from(page.latest_change).unwrap_or(0) {
            return Ok(());
        }
    }
    Ok(())
}

/// Sends the supplier, whose store was replaced (or went back to a backup), every register
/// record held by it, set and withdrawn, as ORIGIN_RESTORED; then starts its cursor again
/// from 0 on the new store, with one audit event. Returns the new cursor.
async fn restore(
    core: &Core,
    supplier: &SupplierId,
    client: &mut ControlServiceClient<Channel>,
    state: &pb::SyncState,
    was: &OptOutCursor,
) -> Result<OptOutCursor, Step> {
    let why = if was.store_id != state.store_id {
        format!(
            "its store was replaced (store {} where the register read {})",
            state.store_id, was.store_id
        )
    } else {
        format!(
            "its store went back (latest opt-out change {} where the register read {})",
            state.opt_out_change, was.change
        )
    };
    warn!(reason = %why, "supplier lost opt-outs: restoring them from the national register");
    let (mut sent, mut installed) = (0, 0);
    let mut after = None;
    loop {
        let rows = core
            .store()
            .list_register(&RegisterQuery {
                supplier: Some(supplier.to_string()),
                show_withdrawn: true,
                after: after.clone(),
                limit: u32::try_from(MAX_RECORDS).unwrap_or(u32::MAX),
                ..RegisterQuery::default()
            })
            .await
            .map_err(store_failed("reading the register"))?;
        let Some(last) = rows.last() else { break };
        after = Some((last.practice.clone(), last.feature.clone()));
        let full = rows.len() == MAX_RECORDS;
        let records = rows
            .iter()
            .map(|r| {
                let o = pb::PracticeOptOut::decode(r.body.as_slice())
                    .map_err(|e| Step::Failed(format!("decoding a register record: {e}")))?;
                Ok(pb::PracticeOptOut {
                    origin: pb::practice_opt_out::Origin::Restored.into(),
                    origin_supplier: format!("suppliers/{supplier}"),
                    change: 0,
                    supplier: String::new(),
                    ..o
                })
            })
            .collect::<Result<Vec<_>, Step>>()?;
        for batch in by_bytes(records) {
            sent += batch.len();
            let done = client
                .import_opt_outs(call(pb::ImportOptOutsRequest {
                    opt_outs: batch,
                    released_practices: vec![],
                }))
                .await
                .map_err(step("sending the supplier its opt-outs back"))?
                .into_inner();
            installed += usize::try_from(done.installed).unwrap_or(0);
        }
        if !full {
            break;
        }
    }
    let cursor = OptOutCursor {
        store_id: state.store_id.clone(),
        change: 0,
    };
    let event = audit(
        "restore-opt-outs",
        format!("suppliers/{supplier}"),
        format!(
            "{why}: {sent} opt-outs (set and withdrawn) restored from the national register, {installed} installed"
        ),
    );
    core.store()
        .reset_opt_out_cursor(supplier.as_str(), &cursor, event)
        .await
        .map_err(store_failed("recording the restore"))?;
    info!(
        sent,
        installed, "opt-outs restored to the supplier from the national register"
    );
    Ok(cursor)
}

/// Cuts records into ImportOptOuts calls of at most [`MAX_RECORDS`] records and
/// [`PAGE_BUDGET_BYTES`] (never fewer than one record a call).
fn by_bytes(records: Vec<pb::PracticeOptOut>) -> Vec<Vec<pb::PracticeOptOut>> {
    let mut batches = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for r in records {
        let len = element_len(&r);
        if !current.is_empty() && (current.len() >= MAX_RECORDS || bytes + len > PAGE_BUDGET_BYTES) {
            batches.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += len;
        current.push(r);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn record(
        practice: &str,
        feature: &str,
        reason_bytes: usize,
    ) -> (RegisterEntry, pb::PracticeOptOut) {
        let o = pb::PracticeOptOut {
            name: format!("practices/{practice}/features/{feature}/optOut"),
            reason: "x".repeat(reason_bytes),
            ..Default::default()
        };
        let e = RegisterEntry {
            practice: practice.into(),
            feature: feature.into(),
            supplier: "emis".into(),
            withdrawn: false,
            update_time: 1,
            body: o.encode_to_vec(),
        };
        (e, o)
    }

    #[test]
    fn a_restore_is_cut_by_records_and_bytes() {
        let small: Vec<_> = (0..2_500)
            .map(|i| record(&format!("A{i:05}"), "f", 10).1)
            .collect();
        let sizes: Vec<usize> = by_bytes(small).iter().map(Vec::len).collect();
        assert_eq!(sizes, [1_000, 1_000, 500]);
        let large: Vec<_> = (0..3)
            .map(|i| record(&format!("A{i:05}"), "f", 3_000_000).1)
            .collect();
        assert_eq!(
            by_bytes(large).len(),
            3,
            "one record a call when each is over the budget"
        );
        assert!(by_bytes(vec![]).is_empty());
    }

    #[test]
    fn news_is_held_practices_or_changes_the_register_has_not_read() {
        let state = |store: &str, change: i64, held: &[&str]| pb::SyncState {
            store_id: store.into(),
            opt_out_change: change,
            held_practices: held.iter().map(|h| (*h).to_owned()).collect(),
            ..Default::default()
        };
        let mut link = RegisterLink::default();
        assert!(link.news(&state("", 0, &[])).is_none(), "an older supplier");
        assert!(link.news(&state("s1", 0, &[])).is_some(), "never read");
        link.read = Some(("s1".into(), 4));
        assert!(link.news(&state("s1", 4, &[])).is_none());
        assert!(link.news(&state("s1", 5, &[])).is_some(), "a new change");
        assert!(link.news(&state("s2", 4, &[])).is_some(), "another store");
        assert!(
            link.news(&state("s1", 4, &["A81001"])).is_some(),
            "a held practice"
        );
        link.unsupported = true;
        assert!(link.news(&state("s1", 9, &["A81001"])).is_none());
    }
}
