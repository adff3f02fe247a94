//! HaltFeature cut off at every moment, each time halting two practices of its own (one at
//! emis, one at tpp), then retried with the same request id. After each: the retry answers
//! the command the store holds (read back through ListCommands and GetCommand), the next
//! sequence and the only command since the last; the coordinator reports that sequence as
//! every supplier's target, delivers it to both, and both answer the practices halted by it.
//! At the end the log stored is, sequence by sequence, what each supplier applied.

use std::time::{Duration, Instant, SystemTime};

use rollout_core::PracticeStatus;
use rollout_proto::v1::{
    self as pb,
    control_service_client::ControlServiceClient,
    coordinator_service_client::CoordinatorServiceClient,
    practice_feature::{Reason as R, State as S},
};
use tonic::transport::Channel;

use super::{Ended, Figures, MOMENTS, before, cut_off, request, request_id};
use crate::{
    stack::{Stack, delivered_via, feature_live},
    support::{channel_as, feature_name, practice_feature},
};

/// The suppliers the coordinator delivers to in this test (the other two are left out).
const DELIVERED: [&str; 2] = ["emis", "tpp"];

/// `MOMENTS` active practices of `supplier`.
fn practices_of(stack: &Stack, supplier: &str) -> Vec<String> {
    stack
        .estate
        .practices()
        .filter(|p| p.supplier.as_str() == supplier && p.status == PracticeStatus::Active)
        .take(MOMENTS as usize)
        .map(|p| p.ods.to_string())
        .collect()
}

fn halt(practices: [&str; 2], i: u32) -> pb::HaltFeatureRequest {
    pb::HaltFeatureRequest {
        name: feature_name(),
        scope: Some(pb::Scope {
            target: Some(pb::scope::Target::Practices(pb::scope::PracticeList {
                practices: practices.iter().map(|p| (*p).to_owned()).collect(),
            })),
        }),
        reason: format!("halted at moment {i}"),
        request_id: request_id(2, i),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn halts_cut_off_at_any_moment_are_reported_and_delivered_as_stored() {
    let mut stack = Stack::suppliers(None).await;
    stack.unconfigured = vec!["cegedim", "microtest"];
    for s in stack.unconfigured.clone() {
        stack.stop_supplier(s).await;
    }
    stack.start_coordinator().await;
    feature_live(&stack).await;
    let practices: Vec<Vec<String>> = DELIVERED.iter().map(|s| practices_of(&stack, s)).collect();
    let mut alice = stack.client("alice");
    let mut viewer = stack.client("viewer");
    let newest = newest_stored(&mut viewer).await;
    let (mut last, mut previous) = (newest[0].sequence, newest[0].name.clone());
    let mut figures = Figures::default();
    let started = Instant::now();
    for i in 0..MOMENTS {
        let at = [
            practices[0][i as usize].as_str(),
            practices[1][i as usize].as_str(),
        ];
        let req = halt(at, i);
        let first = cut_off(i, |deadline| alice.halt_feature(request(req.clone(), deadline))).await;
        let sent = SystemTime::now();
        let retry = alice
            .halt_feature(req)
            .await
            .unwrap_or_else(|s| panic!("moment {i}: the retry failed: {s:?}"))
            .into_inner();
        figures.count(&first, before(retry.create_time, sent));
        if let Ended::Answered(answer) = &first {
            assert_eq!(
                answer, &retry,
                "moment {i}: the retry answers as the first call did"
            );
        }
        assert_eq!(
            (retry.sequence, retry.state()),
            (last + 1, pb::command::State::Dispatched),
            "moment {i}: one halt per request id, dispatched at the next sequence"
        );
        stored_is_reported(&mut viewer, &retry, &previous, i).await;
        delivered_and_served(&stack, &viewer, &retry, at, i).await;
        (last, previous) = (retry.sequence, retry.name);
    }
    figures.report("HaltFeature", started.elapsed());
    the_log_is_what_suppliers_applied(&stack, &mut viewer, last).await;
    stack.stop().await;
}

/// The two newest commands in the coordinator's store, newest first.
async fn newest_stored(viewer: &mut CoordinatorServiceClient<Channel>) -> Vec<pb::Command> {
    viewer
        .list_commands(pb::ListCommandsRequest {
            page_size: 2,
            ..Default::default()
        })
        .await
        .expect("list commands")
        .into_inner()
        .commands
}

/// Checks that after moment `i` the store holds `retry` as the newest command, right after
/// `previous`, and the coordinator reports its sequence as every supplier's target.
async fn stored_is_reported(
    viewer: &mut CoordinatorServiceClient<Channel>,
    retry: &pb::Command,
    previous: &str,
    i: u32,
) {
    let newest = newest_stored(viewer).await;
    let names: Vec<&str> = newest.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [retry.name.as_str(), previous],
        "moment {i}: the store holds the retry's halt, and nothing else since the last"
    );
    let got = viewer
        .get_command(pb::GetCommandRequest {
            name: retry.name.clone(),
        })
        .await
        .expect("get command")
        .into_inner();
    assert_eq!(
        (got.sequence, got.state()),
        (retry.sequence, pb::command::State::Dispatched),
        "moment {i}: stored as answered"
    );
    let suppliers = viewer
        .list_suppliers(pb::ListSuppliersRequest::default())
        .await
        .expect("list suppliers")
        .into_inner()
        .suppliers;
    assert_eq!(suppliers.len(), DELIVERED.len());
    for s in &suppliers {
        assert_eq!(
            s.target_sequence, retry.sequence,
            "moment {i}: {} is to be sent the halt the store holds",
            s.name
        );
    }
}

/// Checks that the halt of moment `i` reaches both suppliers, and that each answers its
/// practice halted by it.
async fn delivered_and_served(
    stack: &Stack,
    viewer: &CoordinatorServiceClient<Channel>,
    retry: &pb::Command,
    at: [&str; 2],
    i: u32,
) {
    let done = tokio::time::timeout(
        Duration::from_secs(20),
        delivered_via(viewer.clone(), &retry.name),
    )
    .await
    .unwrap_or_else(|_| panic!("moment {i}: {} is not delivered within 20 s", retry.name));
    for d in &done.deliveries {
        assert_eq!(
            d.state(),
            pb::delivery::State::Applied,
            "moment {i}: {}",
            d.supplier
        );
    }
    for (supplier, ods) in DELIVERED.into_iter().zip(at) {
        let answer = stack
            .backend(supplier)
            .get_practice_feature(pb::GetPracticeFeatureRequest {
                name: practice_feature(ods),
                explain: true,
            })
            .await
            .expect("get practice feature")
            .into_inner();
        let deciding = answer
            .rules
            .iter()
            .find(|r| r.deciding)
            .map(|r| r.command.as_str());
        assert_eq!(
            (answer.state(), answer.reason(), deciding),
            (S::Disabled, R::Halted, Some(retry.name.as_str())),
            "moment {i}: {supplier} answers {ods} halted by the stored halt"
        );
    }
}

/// Checks that every command the coordinator stores is, at its sequence, one each supplier
/// applied, and that each applied up to `last` and no further.
async fn the_log_is_what_suppliers_applied(
    stack: &Stack,
    viewer: &mut CoordinatorServiceClient<Channel>,
    last: i64,
) {
    let mut stored = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = viewer
            .list_commands(pb::ListCommandsRequest {
                page_size: 500,
                page_token,
                ..Default::default()
            })
            .await
            .expect("list commands")
            .into_inner();
        stored.extend(page.commands.into_iter().map(|c| (c.sequence, c.name)));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    stored.sort();
    assert_eq!(stored.len(), usize::try_from(last).expect("sequence"));
    for supplier in DELIVERED {
        let mut control =
            ControlServiceClient::new(channel_as(&stack.pki, "coordinator", stack.suppliers[supplier].2));
        let mut applied = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = control
                .list_applied_commands(pb::ListAppliedCommandsRequest {
                    after_sequence: 0,
                    page_size: 500,
                    page_token,
                })
                .await
                .expect("list applied commands")
                .into_inner();
            assert_eq!(
                page.applied_sequence, last,
                "{supplier} applied up to the log's end"
            );
            applied.extend(
                page.commands
                    .into_iter()
                    .filter_map(|a| a.command)
                    .map(|c| (c.sequence, c.name)),
            );
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        assert_eq!(applied, stored, "{supplier} applied exactly the log stored");
    }
}
