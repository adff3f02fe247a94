//! A long history: two hundred 10,000-practice halts with national halts, resumes and go-lives
//! mixed in. Answers stay small, every list works with default client limits, and a supplier
//! whose store is wiped converges to the same answers through a chunked snapshot.

use std::time::Duration;

use prost::Message;
use rollout_proto::v1::{self as pb, coordinator_service_client::CoordinatorServiceClient};
use tonic::transport::Channel;

use crate::{
    cli::ctl,
    stack::{SUPPLIERS, Stack, feature_live, national, suppliers_until},
    support::{FEATURE, practice_feature},
};

/// The bound an explained answer keeps, whatever the history (stated in the proto comments).
const ANSWER_BOUND_BYTES: usize = 8 * 1024;
/// The default most a gRPC client decodes in one message.
const CLIENT_DEFAULT_BYTES: usize = 4 * 1024 * 1024;
const LIST_HALTS: usize = 200;
const LIST_SIZE: usize = 10_000;

fn feature() -> String {
    format!("features/{FEATURE}")
}

/// 10,000 codes: every practice of the estate, topped up with codes no supplier holds (each
/// halt's own), so that every list is a different 10,000-code scope.
fn practice_list(stack: &Stack, n: usize) -> pb::Scope {
    let mut codes: Vec<String> = stack.estate.practices().map(|p| p.ods.to_string()).collect();
    let extra = LIST_SIZE - codes.len();
    codes.extend((0..extra).map(|i| format!("Z{:05}", (n * 331 + i) % 100_000)));
    codes.sort();
    codes.dedup();
    pb::Scope {
        target: Some(pb::scope::Target::Practices(pb::scope::PracticeList {
            practices: codes,
        })),
    }
}

async fn approved(bob: &mut CoordinatorServiceClient<Channel>, pending: pb::Command) {
    bob.approve_command(pb::ApproveCommandRequest {
        name: pending.name,
        comment: "second person".into(),
        request_id: String::new(),
    })
    .await
    .expect("approve");
}

/// Issues the history; returns the last sequence and a list halt still in force.
async fn long_history(stack: &Stack) -> (i64, String) {
    let mut alice = stack.client("alice");
    let mut bob = stack.client("bob");
    let mut active_list_halts = Vec::new();
    let mut last = 0;
    for n in 0..LIST_HALTS {
        let h = alice
            .halt_feature(pb::HaltFeatureRequest {
                name: feature(),
                scope: Some(practice_list(stack, n)),
                reason: format!("letter {n}: practices asked not to go ahead"),
                allow_unknown_practices: true,
                ..Default::default()
            })
            .await
            .expect("list halt")
            .into_inner();
        last = h.sequence;
        active_list_halts.push(h.name);
        if n % 10 == 9 {
            last = alice
                .halt_feature(pb::HaltFeatureRequest {
                    name: feature(),
                    scope: Some(national()),
                    reason: format!("national pause {n}"),
                    ..Default::default()
                })
                .await
                .expect("national halt")
                .into_inner()
                .sequence;
        }
        if n % 25 == 24 {
            let lift: Vec<String> = active_list_halts.drain(..5).collect();
            let pending = alice
                .resume_feature(pb::ResumeFeatureRequest {
                    name: feature(),
                    halts: lift,
                    reason: format!("practices withdrew their letters ({n})"),
                    ..Default::default()
                })
                .await
                .expect("resume")
                .into_inner();
            approved(&mut bob, pending).await;
        }
        if n % 50 == 49 {
            let pending = alice
                .schedule_go_live(pb::ScheduleGoLiveRequest {
                    name: feature(),
                    scope: Some(pb::Scope {
                        target: Some(pb::scope::Target::Region("Y60".into())),
                    }),
                    reason: format!("regional go-live {n}"),
                    ..Default::default()
                })
                .await
                .expect("go-live")
                .into_inner();
            approved(&mut bob, pending).await;
        }
    }
    let suppliers = stack
        .client("viewer")
        .list_suppliers(pb::ListSuppliersRequest::default())
        .await
        .expect("suppliers")
        .into_inner();
    let in_force = active_list_halts.pop().expect("list halts in force");
    (suppliers.suppliers[0].target_sequence.max(last), in_force)
}

/// Polls until every supplier has applied `target`, as the coordinator sees it.
async fn converged(stack: &Stack, target: i64, within: Duration) {
    suppliers_until(stack, within, &format!("converged on {target}"), |list| {
        list.iter().all(|s| s.applied_sequence == target)
    })
    .await;
}

/// Polls a supplier's own answer until it has applied `target`.
async fn applied_at(stack: &Stack, supplier: &str, target: i64, within: Duration) {
    let end = tokio::time::Instant::now() + within;
    let ods = stack.practice_of(supplier);
    loop {
        let answer = stack
            .backend(supplier)
            .get_practice_feature(pb::GetPracticeFeatureRequest {
                name: practice_feature(&ods),
                explain: true,
            })
            .await
            .map(|a| a.into_inner().applied_sequence);
        if answer.as_ref().is_ok_and(|a| *a == target) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "{supplier} has not applied {target} within {within:?}: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every practice's (name, state, reason) at a supplier, through paged ListPracticeFeatures.
async fn all_answers(stack: &Stack, supplier: &str) -> Vec<(String, i32, i32)> {
    let mut backend = stack.backend(supplier);
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = backend
            .list_practice_features(pb::ListPracticeFeaturesRequest {
                feature: feature(),
                page_size: 1_000,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .expect("list practice features")
            .into_inner();
        out.extend(
            page.practice_features
                .iter()
                .map(|p| (p.name.clone(), p.state, p.reason)),
        );
        if page.next_page_token.is_empty() {
            return out;
        }
        page_token = page.next_page_token;
    }
}

/// Explained answers for a sample of a supplier's practices: each under the bound.
async fn explained(stack: &Stack, supplier: &str) -> Vec<pb::PracticeFeature> {
    let mut backend = stack.backend(supplier);
    let mut out = Vec::new();
    for p in stack
        .estate
        .practices()
        .filter(|p| p.supplier.as_str() == supplier)
        .step_by(97)
    {
        let mut answer = backend
            .get_practice_feature(pb::GetPracticeFeatureRequest {
                name: practice_feature(p.ods.as_str()),
                explain: true,
            })
            .await
            .expect("answer")
            .into_inner();
        assert!(
            answer.encoded_len() <= ANSWER_BOUND_BYTES,
            "{} answered {} bytes",
            answer.name,
            answer.encoded_len()
        );
        answer.evaluate_time = None;
        answer.version = 0;
        out.push(answer);
    }
    out
}

#[tokio::test]
async fn a_long_history_keeps_answers_small_and_a_wiped_supplier_converges() {
    let mut stack = Stack::start(None).await;
    feature_live(&stack).await;
    let (target, in_force) = long_history(&stack).await;
    converged(&stack, target, Duration::from_secs(600)).await;

    // Answers stay small, and count what they do not list.
    let mut largest = 0;
    for s in SUPPLIERS {
        for a in explained(&stack, s).await {
            largest = largest.max(a.encoded_len());
            assert!(a.rules.len() <= 16, "{} lists {} rules", a.name, a.rules.len());
            if a.rules.iter().any(|r| r.deciding) {
                assert!(a.rules[0].deciding, "{}: the deciding rule comes first", a.name);
            }
            assert!(
                a.omitted_rules > 100,
                "{} lists {} and omits {}",
                a.name,
                a.rules.len(),
                a.omitted_rules
            );
        }
    }
    eprintln!("largest explained answer: {largest} bytes");

    // Wipe emis's store; it comes back with a snapshot and answers exactly as before.
    let before = all_answers(&stack, "emis").await;
    let sample = explained(&stack, "emis").await;
    stack.stop_supplier("emis").await;
    let db = stack.suppliers["emis"].0.database.clone();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    stack.start_supplier("emis").await;
    let resynced = std::time::Instant::now();
    applied_at(&stack, "emis", target, Duration::from_secs(120)).await;
    eprintln!(
        "wiped supplier answered at sequence {target} after {:?}",
        resynced.elapsed()
    );
    let after = all_answers(&stack, "emis").await;
    let differ: Vec<_> = after
        .iter()
        .zip(&before)
        .filter(|(a, b)| a != b)
        .take(5)
        .collect();
    assert!(
        after.len() == before.len() && differ.is_empty(),
        "{} answers before the wipe, {} after; first differences (after, before): {differ:?}",
        before.len(),
        after.len()
    );
    let again = explained(&stack, "emis").await;
    assert_eq!(again.len(), sample.len());
    for (a, b) in again.iter().zip(&sample) {
        assert_eq!(
            (a.state, a.reason, &a.rules, a.omitted_rules, a.applied_sequence),
            (b.state, b.reason, &b.rules, b.omitted_rules, b.applied_sequence),
            "{} answers as before the wipe",
            a.name
        );
    }

    // Lists work with the default client limit, page by page.
    let mut viewer = stack.client("viewer");
    let mut names = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = viewer
            .list_commands(pb::ListCommandsRequest {
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .expect("a ListCommands page decodes under the default client limit")
            .into_inner();
        assert!(page.encoded_len() < CLIENT_DEFAULT_BYTES);
        names.extend(page.commands.into_iter().map(|c| c.name));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let total = names.len();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), total, "no command twice");
    assert!(
        total as i64 >= target,
        "{total} commands listed for {target} sequences"
    );

    let verify = viewer
        .verify_command(pb::VerifyCommandRequest {
            name: in_force,
            ..Default::default()
        })
        .await
        .expect("verify a 10,000-practice halt on a long history")
        .into_inner();
    assert!(verify.verified, "{verify:?}");
    assert!(verify.encoded_len() < CLIENT_DEFAULT_BYTES);

    let out = ctl(&stack, "viewer", &["commands", "list"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.lines().count() > LIST_HALTS,
        "rolloutctl commands list shows the whole history: {} lines",
        listed.lines().count()
    );
    stack.stop().await;
}
