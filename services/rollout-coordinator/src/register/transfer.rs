//! The transfer of opt-outs with practices that joined a supplier from another: the register's
//! opt-outs in force for the practices the supplier holds, sent in bounded calls that release
//! each practice with (or after) its last record.

use std::collections::BTreeMap;

use prost::Message;
use rollout_core::SupplierId;
use rollout_net::{PAGE_BUDGET_BYTES, limits::element_len};
use rollout_proto::v1::{self as pb, control_service_client::ControlServiceClient};
use rollout_store::coordinator::RegisterEntry;
use tonic::transport::Channel;
use tracing::{info, warn};

use super::{MAX_RECORDS, MAX_RELEASED, Step, audit, step, store_failed};
use crate::{coordinator::Core, delivery::call};

/// One ImportOptOuts of a transfer: the records sent (with the register rows they came from)
/// and the held practices it releases.
#[derive(Debug, Default, PartialEq)]
struct Batch {
    records: Vec<(RegisterEntry, pb::PracticeOptOut)>,
    released: Vec<String>,
}

/// Plans a transfer into ImportOptOuts calls of at most [`MAX_RECORDS`] records,
/// [`PAGE_BUDGET_BYTES`] of records and [`MAX_RELEASED`] released practices. Every held
/// practice is released exactly once, in the call that carries its last record or a later
/// one (never before its records are installed); one with no record is simply released.
fn plan(held: &[String], records: Vec<(RegisterEntry, pb::PracticeOptOut)>) -> Vec<Batch> {
    let mut by_practice: BTreeMap<String, Vec<(RegisterEntry, pb::PracticeOptOut)>> = BTreeMap::new();
    for r in records {
        by_practice.entry(r.0.practice.clone()).or_default().push(r);
    }
    let mut held = held.to_vec();
    held.sort();
    held.dedup();
    let mut batches = Vec::new();
    let mut current = Batch::default();
    let mut bytes = 0;
    for practice in held {
        for r in by_practice.remove(&practice).unwrap_or_default() {
            let len = element_len(&r.1);
            if !current.records.is_empty()
                && (current.records.len() >= MAX_RECORDS || bytes + len > PAGE_BUDGET_BYTES)
            {
                batches.push(std::mem::take(&mut current));
                bytes = 0;
            }
            bytes += len;
            current.records.push(r);
        }
        if current.released.len() >= MAX_RELEASED {
            batches.push(std::mem::take(&mut current));
            bytes = 0;
        }
        current.released.push(practice);
    }
    if !current.records.is_empty() || !current.released.is_empty() {
        batches.push(current);
    }
    batches
}

/// Sends the practices the supplier holds the register's opt-outs in force for them held by
/// other suppliers (ORIGIN_TRANSFERRED, the supplier they came from as `origin_supplier`),
/// releasing each; then the register holds those records as this supplier's, with one audit
/// event per moved practice, one transaction per call.
pub(super) async fn transfer(
    core: &Core,
    supplier: &SupplierId,
    client: &mut ControlServiceClient<Channel>,
    held: &[String],
) -> Result<(), Step> {
    let codes: Vec<String> = held
        .iter()
        .filter_map(|h| match rollout_core::OdsCode::parse(h) {
            Ok(ods) => Some(ods.to_string()),
            Err(error) => {
                warn!(%error, "the supplier reported a held practice that is not an ODS code; left held");
                None
            }
        })
        .collect();
    let entries = core
        .store()
        .opt_outs_of_practices(&codes, supplier.as_str())
        .await
        .map_err(store_failed("reading the register"))?;
    let records = entries
        .into_iter()
        .map(|e| {
            let o = pb::PracticeOptOut::decode(e.body.as_slice())
                .map_err(|err| Step::Failed(format!("decoding a register record: {err}")))?;
            let o = pb::PracticeOptOut {
                origin: pb::practice_opt_out::Origin::Transferred.into(),
                origin_supplier: format!("suppliers/{}", e.supplier),
                change: 0,
                supplier: String::new(),
                ..o
            };
            Ok((e, o))
        })
        .collect::<Result<Vec<_>, Step>>()?;
    for batch in plan(&codes, records) {
        let done = client
            .import_opt_outs(call(pb::ImportOptOutsRequest {
                opt_outs: batch.records.iter().map(|(_, o)| o.clone()).collect(),
                released_practices: batch.released.clone(),
            }))
            .await
            .map_err(step(
                "sending opt-outs with the practices that joined the supplier",
            ))?
            .into_inner();
        let mut moved: BTreeMap<&str, (&str, Vec<&str>)> = BTreeMap::new();
        for (e, _) in &batch.records {
            let (_, features) = moved
                .entry(e.practice.as_str())
                .or_insert((e.supplier.as_str(), Vec::new()));
            features.push(e.feature.as_str());
        }
        let events = moved
            .iter()
            .map(|(practice, (from, features))| {
                let features: Vec<String> = features.iter().map(|f| format!("features/{f}")).collect();
                audit(
                    "transfer-opt-outs",
                    format!("practices/{practice}"),
                    format!(
                        "practices/{practice} joined suppliers/{supplier} from suppliers/{from}; opt-out transferred ({})",
                        features.join(", ")
                    ),
                )
            })
            .collect();
        let entries = batch
            .records
            .iter()
            .map(|(e, o)| RegisterEntry {
                supplier: supplier.to_string(),
                body: o.encode_to_vec(),
                ..e.clone()
            })
            .collect();
        core.store()
            .transfer_opt_outs(entries, events)
            .await
            .map_err(store_failed("recording the transfer in the register"))?;
        info!(
            records = batch.records.len(),
            installed = done.installed,
            practices_moved = moved.len(),
            released = batch.released.len(),
            "held practices answered from the national register"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(practice: &str, feature: &str, reason_bytes: usize) -> (RegisterEntry, pb::PracticeOptOut) {
        super::super::tests::record(practice, feature, reason_bytes)
    }

    fn codes(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("A{i:05}")).collect()
    }

    /// Every held practice released once, after (or with) its last record.
    fn check(held: &[String], batches: &[Batch]) {
        let mut released = Vec::new();
        let mut sent: Vec<&str> = Vec::new();
        for b in batches {
            assert!(b.records.len() <= MAX_RECORDS && b.released.len() <= MAX_RELEASED);
            let bytes: usize = b.records.iter().map(|(_, o)| element_len(o)).sum();
            assert!(
                b.records.len() == 1 || bytes <= PAGE_BUDGET_BYTES,
                "{bytes} bytes"
            );
            sent.extend(b.records.iter().map(|(e, _)| e.practice.as_str()));
            for p in &b.released {
                assert!(
                    !batches
                        .iter()
                        .skip_while(|x| !std::ptr::eq(*x, b))
                        .skip(1)
                        .any(|later| later.records.iter().any(|(e, _)| &e.practice == p)),
                    "{p} released before its last record"
                );
                released.push(p.clone());
            }
        }
        let mut want = held.to_vec();
        want.sort();
        assert_eq!(released, want);
    }

    #[test]
    fn a_transfer_is_cut_by_records_bytes_and_practices_and_releases_after_the_records() {
        // A practice with no record is simply released.
        let held = codes(3);
        let plan1 = plan(&held, vec![record("A00001", "f", 10)]);
        assert_eq!(plan1.len(), 1);
        check(&held, &plan1);
        // 2,500 records of 1,250 practices: three calls by count.
        let held = codes(1_250);
        let records: Vec<_> = held
            .iter()
            .flat_map(|p| [record(p, "f1", 10), record(p, "f2", 10)])
            .collect();
        let batches = plan(&held, records);
        assert_eq!(batches.len(), 3);
        check(&held, &batches);
        // Large records: cut by bytes.
        let held = codes(10);
        let records: Vec<_> = held.iter().map(|p| record(p, "f", 400_000)).collect();
        let batches = plan(&held, records);
        assert_eq!(batches.len(), 2, "five of 400 KB fit in 2 MiB");
        check(&held, &batches);
        // 25,000 held practices without records: three calls by released practices.
        let held = codes(25_000);
        let batches = plan(&held, vec![]);
        assert_eq!(batches.len(), 3);
        check(&held, &batches);
    }
}
