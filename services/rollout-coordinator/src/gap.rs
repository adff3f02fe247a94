//! The outcomes of a gap: sequences a supplier applied after the last one it acknowledged (its
//! answer was lost on the way back, a snapshot's answer too, or commands were recovered into the
//! log from another supplier). Its history has been checked first, so these are the log's own
//! commands; their outcomes are read from the supplier's own records (ListAppliedCommands,
//! which gives each command's recorded outcome, as a repeated ApplyCommand would), so every such
//! delivery becomes APPLIED or REJECTED instead of waiting for ever. A sequence the supplier
//! does not list arrived inside a snapshot (which holds only the commands in force): applied
//! there, unless it is one of the supplier's rejections, which a snapshot skips.

use std::collections::BTreeSet;

use rollout_core::{CommandId, SupplierId};
use rollout_proto::v1::{self as pb, control_service_client::ControlServiceClient};
use tonic::transport::Channel;
use tracing::info;

use crate::{
    answers::{self, Fault, Outcome},
    coordinator::Core,
    delivery::{call, faulty},
    failure::Failure,
};

/// Commands asked for in one ListAppliedCommands (the most a supplier gives).
const PAGE: i32 = 500;

/// Records the outcomes of the supplier's sequences after `acked` up to `applied`, page by
/// page (each page's outcomes, and the sequences it passed over, recorded as it comes).
pub(crate) async fn settle(
    core: &Core,
    supplier: &SupplierId,
    client: &mut ControlServiceClient<Channel>,
    acked: u64,
    applied: u64,
) -> Result<(), Failure> {
    let rejected = core.read(|m| m.rejected_by(supplier)).await;
    let mut reached = acked;
    let mut page_token = String::new();
    while reached < applied {
        let page = client
            .list_applied_commands(call(pb::ListAppliedCommandsRequest {
                after_sequence: i64::try_from(acked).unwrap_or(i64::MAX),
                page_size: PAGE,
                page_token: std::mem::take(&mut page_token),
            }))
            .await
            .map_err(|s| Failure::call(&s))?
            .into_inner();
        let (listed, beyond) = match checked(core, &page, reached, applied).await {
            Ok(listed) => listed,
            Err(fault) => return Err(faulty(core, supplier, fault).await),
        };
        let last_page = beyond || page.next_page_token.is_empty();
        let upto = if last_page {
            applied
        } else {
            match listed.last() {
                Some((s, ..)) => *s,
                None => {
                    let fault = Fault::new(format!(
                        "ListAppliedCommands after sequence {acked} gave a page that listed nothing up to its applied sequence {applied}, and another page to read"
                    ));
                    return Err(faulty(core, supplier, fault).await);
                }
            }
        };
        let outcomes = outcomes(reached, upto, listed, &rejected);
        core.record_applied(supplier, outcomes, upto)
            .await
            .map_err(Failure::store)?;
        reached = upto;
        page_token = page.next_page_token;
    }
    info!(
        from = acked,
        to = applied,
        "recorded the outcomes of what the supplier applied but had not acknowledged"
    );
    Ok(())
}

/// The page's commands after `reached` up to `applied`, each checked to be the log's own, in
/// increasing sequence order (the supplier lists them so; anything else is a fault); and
/// whether the page went past `applied` (the supplier applied more since: nothing up to
/// `applied` is left to read).
async fn checked(
    core: &Core,
    page: &pb::ListAppliedCommandsResponse,
    reached: u64,
    applied: u64,
) -> Result<(Vec<Outcome>, bool), Fault> {
    let mut listed: Vec<Outcome> = Vec::new();
    for c in &page.commands {
        let sequence = c.command.as_ref().map_or(0, |c| c.sequence);
        if u64::try_from(sequence).is_ok_and(|s| s > applied) {
            return Ok((listed, true));
        }
        let after = listed.last().map_or(reached, |(s, ..)| *s);
        let outcome = core
            .read(|m| {
                answers::listed(c, after, |s, id| {
                    let (Some(before), Some(here), Ok(id)) =
                        (m.history_hash(s - 1), m.history_hash(s), CommandId::parse(id))
                    else {
                        return false;
                    };
                    before.next(s, &id) == here
                })
            })
            .await?;
        listed.push(outcome);
    }
    Ok((listed, false))
}

/// The outcome of every sequence after `reached` up to `upto`: as `listed`, or, for one the
/// supplier did not list (it arrived inside a snapshot), applied unless it is one of the
/// supplier's `rejected` sequences (skipped by a snapshot: its REJECTED delivery stands).
pub(crate) fn outcomes(
    reached: u64,
    upto: u64,
    listed: Vec<Outcome>,
    rejected: &BTreeSet<u64>,
) -> Vec<Outcome> {
    let mut listed = listed.into_iter().peekable();
    let mut out = Vec::new();
    for sequence in reached + 1..=upto {
        match listed.next_if(|(s, ..)| *s == sequence) {
            Some(outcome) => out.push(outcome),
            None if rejected.contains(&sequence) => {}
            None => out.push((sequence, None, None)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sequence_of_the_gap_gets_an_outcome() {
        let listed = vec![(4, None, None), (6, Some("frozen".to_owned()), None)];
        let got = outcomes(2, 7, listed, &[5].into());
        assert_eq!(
            got,
            vec![
                (3, None, None),
                (4, None, None),
                (6, Some("frozen".to_owned()), None),
                (7, None, None)
            ],
            "3 and 7 arrived in a snapshot; 5 was rejected before and a snapshot skipped it"
        );
        assert!(outcomes(7, 7, vec![], &BTreeSet::new()).is_empty());
    }
}
