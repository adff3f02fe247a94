//! The coordinator with four real suppliers.

use std::time::Duration;

use rollout_core::{IcbCode, Scope};
use rollout_proto::v1::{self as pb, practice_feature::Reason as R, practice_feature::State as S};
use tonic::Code;

use crate::{
    stack::{SUPPLIERS, Stack, delivered, feature_live, halt, national},
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
    let verified = stack
        .client("viewer")
        .verify_command(pb::VerifyCommandRequest { name: h.name.clone() })
        .await
        .expect("verify")
        .into_inner();
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

/// What a viewer sees of the coordinator: every command (page by page), each read again
/// with GetCommand, and the suppliers (without what depends on contact since the start).
async fn everything(stack: &Stack) -> (Vec<pb::Command>, Vec<pb::Command>, Vec<pb::Supplier>) {
    let mut viewer = stack.client("viewer");
    let mut commands = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = viewer
            .list_commands(pb::ListCommandsRequest {
                page_size: 7,
                page_token,
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        commands.extend(page.commands);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    // GetCommand's own annotations for approvers (lifted halts, a pending command's preview,
    // judged at the time asked) are not in the list: compared without them.
    let mut got = Vec::new();
    for c in &commands {
        let shown = viewer
            .get_command(pb::GetCommandRequest { name: c.name.clone() })
            .await
            .expect("get")
            .into_inner();
        got.push(pb::Command {
            lifted_halts: Vec::new(),
            preview: None,
            ..shown
        });
    }
    let suppliers = viewer
        .list_suppliers(pb::ListSuppliersRequest::default())
        .await
        .expect("suppliers")
        .into_inner()
        .suppliers
        .into_iter()
        .map(|s| pb::Supplier {
            state: 0,
            last_contact_time: None,
            last_error: String::new(),
            feature_counts: Vec::new(),
            counts_time: None,
            counts_sequence: 0,
            ..s
        })
        .collect();
    (commands, got, suppliers)
}

async fn approved(stack: &Stack, name: &str) -> pb::Command {
    stack
        .client("bob")
        .approve_command(pb::ApproveCommandRequest {
            name: name.to_owned(),
            comment: String::new(),
            request_id: String::new(),
        })
        .await
        .expect("approve")
        .into_inner()
}

async fn resume(stack: &Stack, halt: &str) -> pb::Command {
    stack
        .client("alice")
        .resume_feature(pb::ResumeFeatureRequest {
            name: feature_name(),
            halts: vec![halt.to_owned()],
            reason: "later".into(),
            request_id: String::new(),
            dry_run: false,
        })
        .await
        .expect("resume")
        .into_inner()
}

#[tokio::test]
async fn a_coordinator_restart_loses_nothing() {
    let mut stack = Stack::start(None).await;
    feature_live(&stack).await;
    // A history of halts, most of them lifted: retired commands are read from the store.
    let mut lifted = Vec::new();
    for _ in 0..6 {
        let h = halt(&stack, national()).await;
        delivered(&stack, &h.name).await;
        let r = resume(&stack, &h.name).await;
        delivered(&stack, &approved(&stack, &r.name).await.name).await;
        lifted.push(h);
    }
    let h = halt(&stack, national()).await;
    delivered(&stack, &h.name).await;
    let pending = resume(&stack, &h.name).await;
    let before = everything(&stack).await;
    assert_eq!(
        before.0.len(),
        1 + 1 + 6 * 2 + 2,
        "definition, go-live, 6 halts lifted, the last"
    );
    assert_eq!(before.0, before.1, "GetCommand answers as the list does");
    assert!(
        before
            .1
            .iter()
            .any(|c| c.name == lifted[0].name && c.deliveries.len() == SUPPLIERS.len()),
        "a lifted halt answers with its deliveries"
    );
    stack.stop_coordinator().await;
    stack.start_coordinator().await;
    let after = everything(&stack).await;
    assert_eq!(after, before, "the restarted coordinator answers as before");
    // The pending resume can still be approved, and takes the next sequence.
    let approved = approved(&stack, &pending.name).await;
    assert_eq!(approved.sequence, h.sequence + 1);
    delivered(&stack, &approved.name).await;
    assert_eq!(
        answer(&stack, "microtest", &stack.practice_of("microtest")).await,
        (S::Enabled, R::Live)
    );
    stack.stop().await;
}

/// Makes the coordinator's SQLite store one written before migration 3: its columns and
/// indexes gone, the migration not yet applied.
async fn before_migration_3(db: &std::path::Path) {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .expect("connect");
    for sql in [
        "DROP INDEX commands_issue_order",
        "DROP INDEX commands_feature_order",
        "DROP INDEX commands_state_order",
        "DROP INDEX commands_in_force",
        "DROP INDEX commands_action",
        "DROP INDEX deliveries_state",
        "ALTER TABLE commands DROP COLUMN feature",
        "ALTER TABLE commands DROP COLUMN action",
        "ALTER TABLE commands DROP COLUMN effective",
        "ALTER TABLE deliveries DROP COLUMN state",
        "DELETE FROM _sqlx_migrations WHERE version = 3",
    ] {
        sqlx::query(sql).execute(&mut conn).await.expect(sql);
    }
    conn.close().await.ok();
}

#[tokio::test]
async fn a_coordinator_store_from_before_migration_3_is_filled_in_at_start_and_answers_as_before() {
    let mut stack = Stack::start(None).await;
    feature_live(&stack).await;
    let lifted = halt(&stack, national()).await;
    let kept = halt(&stack, national()).await;
    delivered(&stack, &kept.name).await;
    let r = resume(&stack, &lifted.name).await;
    delivered(&stack, &approved(&stack, &r.name).await.name).await;
    let before = everything(&stack).await;
    stack.stop_coordinator().await;
    before_migration_3(&stack.coordinator_db).await;
    stack.start_coordinator().await;
    let after = everything(&stack).await;
    assert_eq!(after, before, "the upgraded store answers as before");
    // What is in force was worked out again: the lifted halt cannot be lifted twice, the other
    // can be lifted.
    let again = stack
        .client("alice")
        .resume_feature(pb::ResumeFeatureRequest {
            name: feature_name(),
            halts: vec![lifted.name.clone()],
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
        "lifted twice",
    );
    assert!(again.message().contains(&r.name), "{}", again.message());
    let r = resume(&stack, &kept.name).await;
    delivered(&stack, &approved(&stack, &r.name).await.name).await;
    assert_eq!(
        answer(&stack, "microtest", &stack.practice_of("microtest")).await,
        (S::Enabled, R::Live)
    );
    stack.stop().await;
}

#[tokio::test]
async fn idempotent_retries_and_refused_calls() {
    let stack = Stack::start(None).await;
    feature_live(&stack).await;
    let mut alice = stack.client("alice");
    let req = pb::HaltFeatureRequest {
        name: feature_name(),
        scope: Some(national()),
        reason: "retry me".into(),
        request_id: "2f1d9c8e-4b3a-4f6e-8d7c-1a2b3c4d5e6f".into(),
        dry_run: false,
        ..Default::default()
    };
    let first = alice.halt_feature(req.clone()).await.expect("halt").into_inner();
    let retry = alice.halt_feature(req.clone()).await.expect("retry").into_inner();
    assert_eq!(
        (retry.name.as_str(), retry.sequence),
        (first.name.as_str(), first.sequence),
        "a retry returns the first result"
    );
    let reused = alice
        .halt_feature(pb::HaltFeatureRequest {
            reason: "another".into(),
            ..req
        })
        .await
        .expect_err("reused id");
    assert_refused(
        &reused,
        Code::InvalidArgument,
        "REQUEST_ID_REUSED",
        "reused request id",
    );
    let viewer = stack
        .client("viewer")
        .halt_feature(pb::HaltFeatureRequest {
            name: feature_name(),
            scope: Some(national()),
            reason: "x".into(),
            request_id: String::new(),
            dry_run: false,
            ..Default::default()
        })
        .await
        .expect_err("viewer");
    assert_refused(
        &viewer,
        Code::PermissionDenied,
        "ROLE_REQUIRED",
        "a viewer cannot halt",
    );
    let unknown = alice
        .halt_feature(pb::HaltFeatureRequest {
            name: "features/unknown".into(),
            scope: Some(national()),
            reason: "x".into(),
            request_id: String::new(),
            dry_run: false,
            ..Default::default()
        })
        .await
        .expect_err("unknown feature");
    assert_refused(&unknown, Code::NotFound, "FEATURE_NOT_FOUND", "unknown feature");
    let empty = alice
        .halt_feature(pb::HaltFeatureRequest {
            name: feature_name(),
            scope: Some(pb::Scope::default()),
            reason: "x".into(),
            request_id: String::new(),
            dry_run: false,
            ..Default::default()
        })
        .await
        .expect_err("empty scope");
    assert_refused(
        &empty,
        Code::InvalidArgument,
        "INVALID_FIELD",
        "a scope with nothing set",
    );
    let audit = stack
        .client("viewer")
        .list_audit_events(pb::ListAuditEventsRequest::default())
        .await
        .expect_err("viewer");
    assert_refused(
        &audit,
        Code::PermissionDenied,
        "ROLE_REQUIRED",
        "only an auditor reads the audit log",
    );
    let events = stack
        .client("auditor")
        .list_audit_events(pb::ListAuditEventsRequest {
            page_size: 1_000,
            ..Default::default()
        })
        .await
        .expect("audit")
        .into_inner();
    let refused = events
        .events
        .iter()
        .filter(|e| e.outcome() == pb::audit_event::Outcome::Refused)
        .count();
    assert!(refused >= 5, "refusals are audited: {refused}");
    let chain: Vec<_> = events
        .events
        .iter()
        .map(rollout_net::wire::audit_from_pb)
        .collect();
    rollout_core::audit::verify_chain(&chain).expect("the chain read over the API verifies");
    stack.stop().await;
}

#[tokio::test]
async fn bad_input_to_the_coordinator_is_refused_and_changes_nothing() {
    use Code::{AlreadyExists as AE, FailedPrecondition as FP, InvalidArgument as IA, NotFound as NF};
    let stack = Stack::start(None).await;
    feature_live(&stack).await;
    let mut alice = stack.client("alice");
    let mut bob = stack.client("bob");
    let mut viewer = stack.client("viewer");
    let mut auditor = stack.client("auditor");
    let before = viewer
        .list_commands(pb::ListCommandsRequest::default())
        .await
        .expect("list")
        .into_inner();
    let go_live = before
        .commands
        .iter()
        .find(|c| matches!(c.action, Some(pb::command::Action::GoLive(_))))
        .expect("go-live")
        .name
        .clone();

    let feature = |f: fn(&mut pb::Feature)| {
        let mut feature = pb::Feature {
            fail_mode: pb::FailMode::Static.into(),
            ..Default::default()
        };
        f(&mut feature);
        pb::CreateFeatureRequest {
            feature_id: "another-feature".into(),
            feature: Some(feature),
            reason: "r".into(),
            request_id: String::new(),
        }
    };
    let halt = |f: fn(&mut pb::HaltFeatureRequest)| {
        let mut r = pb::HaltFeatureRequest {
            name: feature_name(),
            scope: Some(national()),
            reason: "r".into(),
            request_id: String::new(),
            dry_run: false,
            ..Default::default()
        };
        f(&mut r);
        r
    };
    let scope = |t: pb::scope::Target| Some(pb::Scope { target: Some(t) });
    let many: Vec<String> = (0..10_001).map(|i| format!("A{i:05}")).collect();
    let refused = |r: Result<tonic::Response<pb::Command>, tonic::Status>| r.expect_err("refused");
    let cases: Vec<(&str, tonic::Status, Code, &str)> = vec![
        (
            "a feature key with upper case",
            alice
                .create_feature(pb::CreateFeatureRequest {
                    feature_id: "Bad Key".into(),
                    ..feature(|_| {})
                })
                .await
                .expect_err("x"),
            IA,
            "INVALID_FIELD",
        ),
        (
            "a feature with no definition",
            alice
                .create_feature(pb::CreateFeatureRequest {
                    feature: None,
                    ..feature(|_| {})
                })
                .await
                .expect_err("x"),
            IA,
            "INVALID_FIELD",
        ),
        (
            "no fail mode",
            alice
                .create_feature(feature(|f| f.fail_mode = 0))
                .await
                .expect_err("x"),
            IA,
            "INVALID_FIELD",
        ),
        (
            "fail-closed without a TTL",
            alice
                .create_feature(feature(|f| f.fail_mode = pb::FailMode::Closed.into()))
                .await
                .expect_err("x"),
            IA,
            "INVALID_FIELD",
        ),
        (
            "a TTL under 10 s",
            alice
                .create_feature(feature(|f| {
                    f.fail_mode = pb::FailMode::Closed.into();
                    f.control_ttl = Some(prost_types::Duration { seconds: 1, nanos: 0 })
                }))
                .await
                .expect_err("x"),
            IA,
            "INVALID_FIELD",
        ),
        (
            "nine approvals",
            alice
                .create_feature(feature(|f| f.approvals_required = 9))
                .await
                .expect_err("x"),
            IA,
            "INVALID_FIELD",
        ),
        (
            "a feature without a reason",
            alice
                .create_feature(pb::CreateFeatureRequest {
                    reason: " ".into(),
                    ..feature(|_| {})
                })
                .await
                .expect_err("x"),
            IA,
            "INVALID_FIELD",
        ),
        (
            "a feature that exists",
            alice
                .create_feature(pb::CreateFeatureRequest {
                    feature_id: crate::support::FEATURE.into(),
                    ..feature(|_| {})
                })
                .await
                .expect_err("x"),
            AE,
            "FEATURE_EXISTS",
        ),
        (
            "a halt of features/",
            refused(alice.halt_feature(halt(|r| r.name = "features/".into())).await),
            IA,
            "INVALID_FIELD",
        ),
        (
            "a halt of an unknown feature",
            refused(
                alice
                    .halt_feature(halt(|r| r.name = "features/unknown-feature".into()))
                    .await,
            ),
            NF,
            "FEATURE_NOT_FOUND",
        ),
        (
            "a region that does not exist",
            refused(
                alice
                    .halt_feature(halt(|r| {
                        r.scope = Some(pb::Scope {
                            target: Some(pb::scope::Target::Region("Y99".into())),
                        })
                    }))
                    .await,
            ),
            IA,
            "INVALID_FIELD",
        ),
        (
            "a malformed ICB",
            refused(
                alice
                    .halt_feature(halt(|r| {
                        r.scope = Some(pb::Scope {
                            target: Some(pb::scope::Target::Icb("bad".into())),
                        })
                    }))
                    .await,
            ),
            IA,
            "INVALID_FIELD",
        ),
        (
            "an empty practice list",
            refused(
                alice
                    .halt_feature(halt(|r| {
                        r.scope = Some(pb::Scope {
                            target: Some(pb::scope::Target::Practices(pb::scope::PracticeList::default())),
                        })
                    }))
                    .await,
            ),
            IA,
            "INVALID_FIELD",
        ),
        (
            "10,001 practices",
            refused(
                alice
                    .halt_feature(pb::HaltFeatureRequest {
                        scope: scope(pb::scope::Target::Practices(pb::scope::PracticeList {
                            practices: many,
                        })),
                        ..halt(|_| {})
                    })
                    .await,
            ),
            IA,
            "INVALID_FIELD",
        ),
        (
            "a reason of 1,001 characters",
            refused(
                alice
                    .halt_feature(pb::HaltFeatureRequest {
                        reason: "x".repeat(1_001),
                        ..halt(|_| {})
                    })
                    .await,
            ),
            IA,
            "INVALID_FIELD",
        ),
        (
            "a request id that is not a UUID",
            refused(
                alice
                    .halt_feature(halt(|r| r.request_id = "retry-1".into()))
                    .await,
            ),
            IA,
            "INVALID_FIELD",
        ),
        (
            // The refusal quotes 64 characters of it, not 100 KB (a client's header limit).
            "a request id of 100 KB",
            refused(
                alice
                    .halt_feature(halt(|r| r.request_id = "x".repeat(100_000)))
                    .await,
            ),
            IA,
            "INVALID_FIELD",
        ),
        (
            // PostgreSQL text cannot hold a NUL: a supplier could not store the command.
            "a reason holding a NUL",
            refused(alice.halt_feature(halt(|r| r.reason = "stop\0now".into())).await),
            IA,
            "INVALID_FIELD",
        ),
        (
            "a reason holding a control character",
            refused(
                alice
                    .halt_feature(halt(|r| r.reason = "stop \u{1b}[2J now".into()))
                    .await,
            ),
            IA,
            "INVALID_FIELD",
        ),
        (
            "a feature description holding a NUL",
            alice
                .create_feature(feature(|f| f.description = "record\0access".into()))
                .await
                .expect_err("x"),
            IA,
            "INVALID_FIELD",
        ),
        (
            "an approval comment holding a control character",
            bob.approve_command(pb::ApproveCommandRequest {
                name: go_live.clone(),
                comment: "agreed\u{7}".into(),
                request_id: String::new(),
            })
            .await
            .expect_err("x"),
            IA,
            "INVALID_FIELD",
        ),
        (
            "a resume naming no halt",
            refused(
                alice
                    .resume_feature(pb::ResumeFeatureRequest {
                        name: feature_name(),
                        halts: vec![],
                        reason: "r".into(),
                        request_id: String::new(),
                        dry_run: false,
                    })
                    .await,
            ),
            IA,
            "INVALID_FIELD",
        ),
        (
            "a resume naming an unknown halt",
            refused(
                alice
                    .resume_feature(pb::ResumeFeatureRequest {
                        name: feature_name(),
                        halts: vec!["commands/no-such-halt".into()],
                        reason: "r".into(),
                        request_id: String::new(),
                        dry_run: false,
                    })
                    .await,
            ),
            NF,
            "HALT_NOT_FOUND",
        ),
        (
            "a resume naming a go-live",
            refused(
                alice
                    .resume_feature(pb::ResumeFeatureRequest {
                        name: feature_name(),
                        halts: vec![go_live.clone()],
                        reason: "r".into(),
                        request_id: String::new(),
                        dry_run: false,
                    })
                    .await,
            ),
            IA,
            "INVALID_FIELD",
        ),
        (
            "an impossible effective time",
            refused(
                alice
                    .schedule_go_live(pb::ScheduleGoLiveRequest {
                        name: feature_name(),
                        scope: Some(national()),
                        effective_time: Some(prost_types::Timestamp {
                            seconds: 0,
                            nanos: 2_000_000_000,
                        }),
                        reason: "r".into(),
                        request_id: String::new(),
                        dry_run: false,
                        ..Default::default()
                    })
                    .await,
            ),
            IA,
            "INVALID_FIELD",
        ),
        (
            "approving an unknown command",
            refused(
                bob.approve_command(pb::ApproveCommandRequest {
                    name: "commands/no-such-command".into(),
                    ..Default::default()
                })
                .await,
            ),
            NF,
            "COMMAND_NOT_FOUND",
        ),
        (
            "approving a malformed name",
            refused(
                bob.approve_command(pb::ApproveCommandRequest {
                    name: "halt-1".into(),
                    ..Default::default()
                })
                .await,
            ),
            IA,
            "INVALID_FIELD",
        ),
        (
            "approving a dispatched command",
            refused(
                bob.approve_command(pb::ApproveCommandRequest {
                    name: go_live.clone(),
                    ..Default::default()
                })
                .await,
            ),
            FP,
            "NOT_PENDING",
        ),
        (
            "cancelling without a reason",
            refused(
                alice
                    .cancel_command(pb::CancelCommandRequest {
                        name: go_live.clone(),
                        reason: String::new(),
                        request_id: String::new(),
                    })
                    .await,
            ),
            IA,
            "INVALID_FIELD",
        ),
        (
            "an unknown command",
            refused(
                viewer
                    .get_command(pb::GetCommandRequest {
                        name: "commands/nope".into(),
                    })
                    .await,
            ),
            NF,
            "COMMAND_NOT_FOUND",
        ),
        (
            "a forged page token",
            viewer
                .list_commands(pb::ListCommandsRequest {
                    page_token: "00".into(),
                    ..Default::default()
                })
                .await
                .expect_err("x"),
            IA,
            "INVALID_FIELD",
        ),
        (
            "an unknown command state",
            viewer
                .list_commands(pb::ListCommandsRequest {
                    state: 99,
                    ..Default::default()
                })
                .await
                .expect_err("x"),
            IA,
            "INVALID_FIELD",
        ),
        (
            "an unknown supplier",
            viewer
                .get_supplier(pb::GetSupplierRequest {
                    name: "suppliers/acme".into(),
                })
                .await
                .expect_err("x"),
            NF,
            "SUPPLIER_NOT_FOUND",
        ),
        (
            "verifying a go-live",
            viewer
                .verify_command(pb::VerifyCommandRequest {
                    name: go_live.clone(),
                })
                .await
                .expect_err("x"),
            FP,
            "NOT_A_HALT",
        ),
        (
            "the status of an unknown practice",
            viewer
                .get_practice_status(pb::GetPracticeStatusRequest {
                    name: practice_feature("Z99999"),
                })
                .await
                .expect_err("x"),
            NF,
            "PRACTICE_NOT_FOUND",
        ),
        (
            "audit events after a negative sequence",
            auditor
                .list_audit_events(pb::ListAuditEventsRequest {
                    after_sequence: -1,
                    ..Default::default()
                })
                .await
                .expect_err("x"),
            IA,
            "INVALID_FIELD",
        ),
    ];
    assert!(cases.len() >= 30);
    for (what, status, code, reason) in &cases {
        assert_refused(status, *code, reason, what);
        assert!(
            status.message().len() < 1_000,
            "{what}: a refusal quotes a bounded piece of the input ({} bytes)",
            status.message().len()
        );
    }
    // A message over the 4 MiB limit is refused before any handler, and the server keeps
    // serving.
    let huge = alice
        .halt_feature(pb::HaltFeatureRequest {
            reason: "x".repeat(5 << 20),
            ..halt(|_| {})
        })
        .await
        .expect_err("huge");
    assert_refused(
        &huge,
        Code::ResourceExhausted,
        "MESSAGE_TOO_LARGE",
        "a huge request",
    );

    let after = viewer
        .list_commands(pb::ListCommandsRequest::default())
        .await
        .expect("still serving")
        .into_inner();
    assert_eq!(
        after.commands.len(),
        before.commands.len(),
        "no command was created"
    );
    let features = viewer
        .list_features(pb::ListFeaturesRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(features.features.len(), 1, "no feature was created");
    stack.stop().await;
}
