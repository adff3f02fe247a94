//! The coordinator with four real suppliers: halts, resumes and scopes (here), restarts and
//! old stores (`restart.rs`), retries and refusals (`requests.rs`), bad input
//! (`bad_input.rs`).

mod bad_input;
mod requests;
mod restart;
mod verify_requests;

use std::time::Duration;

use rollout_core::{IcbCode, Scope};

use rollout_proto::v1::{self as pb, practice_feature::Reason as R, practice_feature::State as S};
use tonic::Code;

use crate::{
    stack::{SUPPLIERS, Stack, delivered, feature_live, halt, national, verify},
    support::{assert_refused, feature_name, practice_feature},
};

async fn answer(stack: &Stack, supplier: &str, ods: &str) -> (S, R) {
    let p = stack
        .backend(supplier)
        .get_practice_feature(pb::GetPracticeFeatureRequest {
            name: practice_feature(ods),
            explain: true,
        })
        .await
        .expect("answer")
        .into_inner();
    (p.state(), p.reason())
}

/// How many practices a supplier answers with this state and reason.
async fn count(stack: &Stack, supplier: &str, state: S, reason: R) -> usize {
    let page = stack
        .backend(supplier)
        .list_practice_features(pb::ListPracticeFeaturesRequest {
            feature: feature_name(),
            state: state.into(),
            page_size: 5_000,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    page.practice_features
        .iter()
        .filter(|p| p.reason() == reason)
        .count()
}

#[tokio::test]
async fn a_national_halt_is_applied_by_every_supplier_and_verified() {
    let stack = Stack::start(None).await;
    feature_live(&stack).await;
    for s in SUPPLIERS {
        assert_eq!(
            answer(&stack, s, &stack.practice_of(s)).await,
            (S::Enabled, R::Live),
            "{s} is live"
        );
    }
    let h = halt(&stack, national()).await;
    assert!(h.sequence > 0, "a halt is sequenced before the call returns");
    let done = delivered(&stack, &h.name).await;
    assert_eq!(done.deliveries.len(), 4);
    for d in &done.deliveries {
        assert_eq!(d.state(), pb::delivery::State::Applied, "{d:?}");
        assert!(d.first_attempt_time.is_some() && d.apply_time.is_some() && d.acknowledge_time.is_some());
    }
    for s in SUPPLIERS {
        assert_eq!(
            answer(&stack, s, &stack.practice_of(s)).await,
            (S::Disabled, R::Halted),
            "{s} is halted"
        );
    }
    let verified = verify(&stack, &h.name).await;
    assert!(verified.verified, "{verified:?}");
    assert_eq!(verified.enabled_count, 0);
    assert_eq!(
        verified.suppliers.iter().map(|s| s.checked_count).sum::<i32>(),
        6_300,
        "every active practice in scope"
    );

    let suppliers = stack
        .client("viewer")
        .list_suppliers(pb::ListSuppliersRequest::default())
        .await
        .expect("list")
        .into_inner();
    for s in &suppliers.suppliers {
        assert_eq!(s.state(), pb::supplier::State::Synced, "{s:?}");
        assert_eq!(s.applied_sequence, h.sequence);
        assert_eq!(s.target_sequence, h.sequence);
    }
    // GetPracticeStatus asks the practice's own supplier.
    let tpp = stack.practice_of("tpp");
    let status = stack
        .client("viewer")
        .get_practice_status(pb::GetPracticeStatusRequest {
            name: practice_feature(&tpp),
        })
        .await
        .expect("practice status")
        .into_inner();
    assert_eq!((status.state(), status.reason()), (S::Disabled, R::Halted));
    assert_eq!(status.practice.map(|p| p.supplier), Some("tpp".into()));
    stack.stop().await;
}

#[tokio::test]
async fn a_resume_waits_for_a_different_approver() {
    let stack = Stack::start(None).await;
    feature_live(&stack).await;
    let h = halt(&stack, national()).await;
    delivered(&stack, &h.name).await;
    let mut alice = stack.client("alice");
    let resume = alice
        .resume_feature(pb::ResumeFeatureRequest {
            name: feature_name(),
            halts: vec![h.name.clone()],
            reason: "the practices have been consulted".into(),
            request_id: String::new(),
            dry_run: false,
        })
        .await
        .expect("resume")
        .into_inner();
    assert_eq!(
        (resume.state(), resume.sequence),
        (pb::command::State::PendingApproval, 0)
    );
    assert_eq!(resume.impact.as_ref().map(|i| i.practices), Some(6_300));
    let emis = stack.practice_of("emis");
    assert_eq!(
        answer(&stack, "emis", &emis).await,
        (S::Disabled, R::Halted),
        "nothing happens before approval"
    );

    let own = alice
        .approve_command(pb::ApproveCommandRequest {
            name: resume.name.clone(),
            comment: String::new(),
            request_id: String::new(),
        })
        .await
        .expect_err("self-approval");
    assert_refused(&own, Code::PermissionDenied, "SELF_APPROVAL", "self-approval");
    let viewer = stack
        .client("viewer")
        .approve_command(pb::ApproveCommandRequest {
            name: resume.name.clone(),
            comment: String::new(),
            request_id: String::new(),
        })
        .await
        .expect_err("viewer");
    assert_refused(
        &viewer,
        Code::PermissionDenied,
        "ROLE_REQUIRED",
        "a viewer cannot approve",
    );
    let still = stack
        .client("viewer")
        .get_command(pb::GetCommandRequest {
            name: resume.name.clone(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(still.state(), pb::command::State::PendingApproval);

    let approved = stack
        .client("bob")
        .approve_command(pb::ApproveCommandRequest {
            name: resume.name.clone(),
            comment: "agreed".into(),
            request_id: String::new(),
        })
        .await
        .expect("bob approves")
        .into_inner();
    assert_eq!(approved.state(), pb::command::State::Dispatched);
    assert_eq!(
        approved
            .approvals
            .iter()
            .map(|a| a.approver.as_str())
            .collect::<Vec<_>>(),
        ["spiffe://gprollout.test/operator/bob"]
    );
    delivered(&stack, &approved.name).await;
    assert_eq!(answer(&stack, "emis", &emis).await, (S::Enabled, R::Live));

    // The halt is lifted: naming it again is refused; a dispatched command cannot be cancelled.
    let again = alice
        .resume_feature(pb::ResumeFeatureRequest {
            name: feature_name(),
            halts: vec![h.name.clone()],
            reason: "again".into(),
            request_id: String::new(),
            dry_run: false,
        })
        .await
        .expect_err("already lifted");
    assert_refused(
        &again,
        Code::FailedPrecondition,
        "HALT_ALREADY_LIFTED",
        "already lifted",
    );
    let cancel = alice
        .cancel_command(pb::CancelCommandRequest {
            name: h.name.clone(),
            reason: "too late".into(),
            request_id: String::new(),
        })
        .await
        .expect_err("dispatched");
    assert_refused(
        &cancel,
        Code::FailedPrecondition,
        "NOT_PENDING",
        "cancel a dispatched halt",
    );

    // A pending go-live can be cancelled, and then never reaches a supplier.
    let go = alice
        .schedule_go_live(pb::ScheduleGoLiveRequest {
            name: feature_name(),
            scope: Some(national()),
            effective_time: None,
            reason: "again".into(),
            request_id: String::new(),
            dry_run: false,
            ..Default::default()
        })
        .await
        .expect("go-live")
        .into_inner();
    let cancelled = alice
        .cancel_command(pb::CancelCommandRequest {
            name: go.name.clone(),
            reason: "not now".into(),
            request_id: String::new(),
        })
        .await
        .expect("cancel")
        .into_inner();
    assert_eq!(
        (cancelled.state(), cancelled.sequence),
        (pb::command::State::Cancelled, 0)
    );
    stack.stop().await;
}

#[tokio::test]
async fn scoped_halts_cover_exactly_their_practices() {
    let stack = Stack::start(None).await;
    feature_live(&stack).await;
    let icb = "QN7";
    let h = halt(
        &stack,
        pb::Scope {
            target: Some(pb::scope::Target::Icb(icb.into())),
        },
    )
    .await;
    let expected_total: usize = SUPPLIERS
        .iter()
        .map(|s| stack.expected(s, &Scope::Icb(IcbCode::parse(icb).expect("icb"))))
        .sum();
    assert_eq!(
        h.impact.as_ref().map(|i| i.practices as usize),
        Some(expected_total),
        "the impact is counted from the estate"
    );
    delivered(&stack, &h.name).await;
    for s in SUPPLIERS {
        let want = stack.expected(s, &Scope::Icb(IcbCode::parse(icb).expect("icb")));
        assert_eq!(
            count(&stack, s, S::Disabled, R::Halted).await,
            want,
            "{s}: halted practices are exactly those in {icb}"
        );
    }

    let (emis, tpp) = (stack.practice_of("emis"), stack.practice_of("tpp"));
    let list = pb::Scope {
        target: Some(pb::scope::Target::Practices(pb::scope::PracticeList {
            practices: vec![emis.to_lowercase(), tpp.clone()],
        })),
    };
    let dry = stack
        .client("alice")
        .halt_feature(pb::HaltFeatureRequest {
            name: feature_name(),
            scope: Some(list.clone()),
            reason: "two practices asked".into(),
            request_id: String::new(),
            dry_run: true,
            ..Default::default()
        })
        .await
        .expect("dry run")
        .into_inner();
    assert_eq!((dry.state(), dry.name.as_str()), (pb::command::State::DryRun, ""));
    assert_eq!(dry.impact.as_ref().map(|i| i.suppliers.len()), Some(2));
    let h2 = halt(&stack, list).await;
    assert_eq!(h2.sequence, h.sequence + 1, "the dry run took no sequence");
    delivered(&stack, &h2.name).await;
    let in_qn7 = |ods: &str| {
        stack
            .estate
            .get(&ods.parse().expect("ods"))
            .is_some_and(|p| p.icb.as_str() == icb)
    };
    for (s, ods) in [("emis", &emis), ("tpp", &tpp)] {
        let want =
            stack.expected(s, &Scope::Icb(IcbCode::parse(icb).expect("icb"))) + usize::from(!in_qn7(ods));
        assert_eq!(
            count(&stack, s, S::Disabled, R::Halted).await,
            want,
            "{s}: one more practice halted"
        );
        assert_eq!(answer(&stack, s, ods).await, (S::Disabled, R::Halted));
    }
    for s in ["cegedim", "microtest"] {
        let want = stack.expected(s, &Scope::Icb(IcbCode::parse(icb).expect("icb")));
        assert_eq!(
            count(&stack, s, S::Disabled, R::Halted).await,
            want,
            "{s}: unchanged by the list halt"
        );
    }
    stack.stop().await;
}

#[tokio::test]
async fn a_supplier_that_was_down_receives_the_halt_in_order() {
    let mut stack = Stack::start(None).await;
    feature_live(&stack).await;
    stack.stop_supplier("tpp").await;
    let h = halt(&stack, national()).await;
    let h2 = halt(
        &stack,
        pb::Scope {
            target: Some(pb::scope::Target::Region("Y60".into())),
        },
    )
    .await;
    // The others apply it while tpp is down; tpp's delivery stays pending.
    let viewer = stack.client("viewer");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let c = viewer
            .clone()
            .get_command(pb::GetCommandRequest {
                name: h2.name.clone(),
            })
            .await
            .expect("get")
            .into_inner();
        let states: Vec<_> = c
            .deliveries
            .iter()
            .map(|d| (d.supplier.clone(), d.state()))
            .collect();
        if states
            .iter()
            .filter(|(_, s)| *s == pb::delivery::State::Applied)
            .count()
            == 3
        {
            assert!(
                states.contains(&("suppliers/tpp".into(), pb::delivery::State::Pending)),
                "{states:?}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "three suppliers apply within 20 s: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tpp_status = viewer
        .clone()
        .get_supplier(pb::GetSupplierRequest {
            name: "suppliers/tpp".into(),
        })
        .await
        .expect("get")
        .into_inner();
    assert!(
        tpp_status.applied_sequence < tpp_status.target_sequence,
        "{tpp_status:?}"
    );
    assert!(
        !tpp_status.last_error.is_empty(),
        "the delivery error is shown: {tpp_status:?}"
    );

    stack.start_supplier("tpp").await;
    let done = delivered(&stack, &h2.name).await;
    assert!(
        done.deliveries
            .iter()
            .all(|d| d.state() == pb::delivery::State::Applied)
    );
    let first = viewer
        .clone()
        .get_command(pb::GetCommandRequest { name: h.name.clone() })
        .await
        .expect("get")
        .into_inner();
    let applied_at = |c: &pb::Command| {
        c.deliveries
            .iter()
            .find(|d| d.supplier == "suppliers/tpp")
            .and_then(|d| d.apply_time)
            .map(|t| (t.seconds, t.nanos))
    };
    assert!(
        applied_at(&first) <= applied_at(&done),
        "tpp applied the halts in sequence order"
    );
    assert_eq!(
        answer(&stack, "tpp", &stack.practice_of("tpp")).await,
        (S::Disabled, R::Halted)
    );
    stack.stop().await;
}

#[tokio::test]
async fn a_supplier_that_lost_its_state_is_resynchronised_with_replace_rules() {
    let mut stack = Stack::start(None).await;
    feature_live(&stack).await;
    let h = halt(
        &stack,
        pb::Scope {
            target: Some(pb::scope::Target::Supplier("emis".into())),
        },
    )
    .await;
    delivered(&stack, &h.name).await;
    stack.stop_supplier("emis").await;
    let db = stack.suppliers["emis"].0.database.clone();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    stack.start_supplier("emis").await;
    // The coordinator sees emis behind what it acknowledged and resends the whole rule set.
    let emis = stack.practice_of("emis");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while answer(&stack, "emis", &emis).await != (S::Disabled, R::Halted) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "emis is resynchronised within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stack.stop_supplier("emis").await;
    let store = rollout_store::supplier::SqlSupplierStore::open(&format!("sqlite://{}", db.display()))
        .await
        .expect("open");
    let events = rollout_store::supplier::SupplierStore::list_audit(&store, 0, 100)
        .await
        .expect("audit");
    assert!(
        events.iter().any(|e| e.draft.action.ends_with("/ReplaceRules")),
        "the resync went through ReplaceRules"
    );
    store.close().await;
    stack.stop().await;
}

#[tokio::test]
async fn a_freeze_rejection_is_shown_as_a_conflict() {
    let stack = Stack::start(Some("year-end change freeze")).await;
    feature_live(&stack).await;
    let live = {
        let list = stack
            .client("viewer")
            .list_commands(pb::ListCommandsRequest {
                feature: feature_name(),
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        list.commands
            .into_iter()
            .find(|c| matches!(c.action, Some(pb::command::Action::GoLive(_))))
            .expect("the go-live")
    };
    let cegedim = live
        .deliveries
        .iter()
        .find(|d| d.supplier == "suppliers/cegedim")
        .expect("delivery");
    assert_eq!(cegedim.state(), pb::delivery::State::Rejected);
    assert!(cegedim.rejection_reason.contains("year-end change freeze"));
    let status = stack
        .client("viewer")
        .get_supplier(pb::GetSupplierRequest {
            name: "suppliers/cegedim".into(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(status.state(), pb::supplier::State::Rejected);
    assert_eq!(status.conflicts, std::slice::from_ref(&live.name));
    assert!(status.frozen);
    assert_eq!(
        answer(&stack, "cegedim", &stack.practice_of("cegedim")).await,
        (S::Disabled, R::NotLive)
    );
    // A halt is never rejected.
    let h = halt(&stack, national()).await;
    let done = delivered(&stack, &h.name).await;
    assert!(
        done.deliveries
            .iter()
            .all(|d| d.state() == pb::delivery::State::Applied)
    );
    stack.stop().await;
}
