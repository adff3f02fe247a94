//! Conflicts and redelivery: a resume or go-live a frozen supplier rejected stays a conflict at
//! that supplier (STATE_REJECTED, its practices as before) until a command that does there what
//! it would have is applied there: its redelivery (RedeliverCommand, approved like the
//! original, applied by that supplier alone and by the others as a no-op) or, for a resume, a
//! later resume of the same halts. Real servers, real mutual TLS, real SQLite files.

use std::time::Duration;

use rollout_core::Scope;
use rollout_proto::v1::{self as pb, practice_feature::Reason as R, practice_feature::State as S};
use tonic::{Code, Status};

use crate::{
    stack::{SUPPLIERS, Stack, audit_events, delivered, feature_live, halt, national, suppliers_until},
    support::{Running, assert_refused, feature_name, practice_feature},
};

const FREEZE: &str = "year-end change freeze";

/// Stops `id` and starts it again on its port and files, frozen with `freeze` or not; waits
/// until the coordinator reports it so.
async fn restart_supplier(stack: &mut Stack, id: &'static str, freeze: Option<&str>) {
    stack.stop_supplier(id).await;
    let entry = stack.suppliers.get_mut(id).expect("supplier");
    let config = entry.0.config(freeze);
    entry.1 = Some(
        Running::start_at(entry.2, |listener, health, stop| async move {
            rollout_supplier::serve(
                config,
                rollout_net::server::Listeners::new(listener, Some(health)),
                async {
                    let _ = stop.await;
                },
            )
            .await
        })
        .await,
    );
    let name = format!("suppliers/{id}");
    let what = format!("{name} reported frozen = {}", freeze.is_some());
    suppliers_until(stack, Duration::from_secs(20), &what, |list| {
        list.iter()
            .any(|s| s.name == name && s.frozen == freeze.is_some() && s.last_error.is_empty())
    })
    .await;
}

/// A supplier's state and its practice's answer are as `done` wants, within 20 s.
async fn supplier_until(
    stack: &Stack,
    id: &str,
    what: &str,
    done: impl Fn(&pb::Supplier) -> bool,
) -> pb::Supplier {
    let name = format!("suppliers/{id}");
    let list = suppliers_until(stack, Duration::from_secs(20), what, |list| {
        list.iter().any(|s| s.name == name && done(s))
    })
    .await;
    list.into_iter().find(|s| s.name == name).expect("supplier")
}

/// A practice's answer at its supplier.
async fn answer(stack: &Stack, supplier: &str) -> (S, R) {
    let p = stack
        .backend(supplier)
        .get_practice_feature(pb::GetPracticeFeatureRequest {
            name: practice_feature(&stack.practice_of(supplier)),
            explain: false,
        })
        .await
        .expect("answer")
        .into_inner();
    (p.state(), p.reason())
}

/// Every supplier's answer for its practice: `cegedim` as given, the others as `others`.
#[track_caller]
fn assert_answers(got: &[(&str, (S, R))], cegedim: (S, R), others: (S, R)) {
    for (s, a) in got {
        let want = if *s == "cegedim" { cegedim } else { others };
        assert_eq!(*a, want, "{s}");
    }
}

async fn answers(stack: &Stack) -> Vec<(&'static str, (S, R))> {
    let mut out = Vec::new();
    for s in SUPPLIERS {
        out.push((s, answer(stack, s).await));
    }
    out
}

async fn redeliver(
    stack: &Stack,
    who: &str,
    name: &str,
    supplier: &str,
    dry_run: bool,
    request_id: &str,
) -> Result<pb::Command, Status> {
    stack
        .client(who)
        .redeliver_command(pb::RedeliverCommandRequest {
            name: name.into(),
            supplier: format!("suppliers/{supplier}"),
            reason: "the freeze is over".into(),
            request_id: request_id.into(),
            dry_run,
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn approve(stack: &Stack, who: &str, name: &str) -> Result<pb::Command, Status> {
    stack
        .client(who)
        .approve_command(pb::ApproveCommandRequest {
            name: name.into(),
            comment: String::new(),
            request_id: String::new(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// A resume of `halts`, asked by alice, not yet approved.
async fn resume(stack: &Stack, halts: &[&str]) -> Result<pb::Command, Status> {
    stack
        .client("alice")
        .resume_feature(pb::ResumeFeatureRequest {
            name: feature_name(),
            halts: halts.iter().map(|h| h.to_string()).collect(),
            reason: "the practices have been consulted".into(),
            request_id: String::new(),
            dry_run: false,
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn get(stack: &Stack, name: &str) -> pb::Command {
    stack
        .client("viewer")
        .get_command(pb::GetCommandRequest { name: name.into() })
        .await
        .expect("get command")
        .into_inner()
}

#[track_caller]
fn delivery<'a>(c: &'a pb::Command, supplier: &str) -> &'a pb::Delivery {
    c.deliveries
        .iter()
        .find(|d| d.supplier == format!("suppliers/{supplier}"))
        .unwrap_or_else(|| panic!("{} has no delivery to {supplier}: {c:?}", c.name))
}

/// Every supplier but `rejecting` applied `c`; `rejecting` rejected it, resolved by
/// `resolved_by` (empty: unresolved).
#[track_caller]
fn assert_deliveries(c: &pb::Command, rejecting: &str, resolved_by: &str) {
    for s in SUPPLIERS {
        let d = delivery(c, s);
        if s == rejecting {
            assert_eq!(d.state(), pb::delivery::State::Rejected, "{s}: {d:?}");
            assert!(d.rejection_reason.contains(FREEZE), "{d:?}");
            assert_eq!(d.resolved_by, resolved_by, "{s}: {d:?}");
        } else {
            assert_eq!(d.state(), pb::delivery::State::Applied, "{s}: {d:?}");
            assert_eq!(d.resolved_by, "", "only a rejection is resolved: {d:?}");
        }
    }
}

/// The command as every command view shows it (GetCommand, ListCommands, WatchCommand): the
/// three agree (GetCommand alone adds the approver's annotations: lifted halts, preview), and
/// GetCommand's is returned.
async fn every_view(stack: &Stack, name: &str) -> pb::Command {
    let annotated = get(stack, name).await;
    let got = pb::Command {
        lifted_halts: Vec::new(),
        preview: None,
        ..annotated.clone()
    };
    let listed = stack
        .client("viewer")
        .list_commands(pb::ListCommandsRequest {
            feature: feature_name(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .commands
        .into_iter()
        .find(|c| c.name == name)
        .expect("listed");
    assert_eq!(listed, got, "ListCommands shows what GetCommand does");
    let mut watch = stack
        .client("viewer")
        .watch_command(pb::WatchCommandRequest { name: name.into() })
        .await
        .expect("watch")
        .into_inner();
    let first = watch
        .message()
        .await
        .expect("stream")
        .and_then(|m| m.command)
        .expect("a first update");
    assert_eq!(first, got, "WatchCommand shows what GetCommand does");
    annotated
}

/// A national go-live asked by alice and approved by bob, delivered everywhere.
async fn go_live(stack: &Stack) -> pb::Command {
    let live = stack
        .client("alice")
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
    approve(stack, "bob", &live.name).await.expect("approve");
    delivered(stack, &live.name).await
}

#[tokio::test]
async fn a_resume_a_frozen_supplier_rejected_is_redelivered_to_it_once_the_freeze_ends() {
    let mut stack = Stack::start(None).await;
    feature_live(&stack).await;
    let h = halt(&stack, national()).await;
    delivered(&stack, &h.name).await;
    restart_supplier(&mut stack, "cegedim", Some(FREEZE)).await;
    let r = resume(&stack, &[&h.name]).await.expect("resume");
    // The approver is told that cegedim, frozen, would reject it.
    supplier_until(&stack, "cegedim", "cegedim reported frozen", |s| s.frozen).await;
    let preview = get(&stack, &r.name)
        .await
        .preview
        .expect("a pending resume's preview");
    for p in &preview.suppliers {
        let frozen = p.supplier == "suppliers/cegedim";
        assert_eq!(p.frozen, frozen, "{p:?}");
        assert_eq!(
            p.turn_on == 0,
            frozen,
            "only where not frozen does anything turn on: {p:?}"
        );
    }
    assert!(
        preview
            .suppliers
            .iter()
            .any(|p| p.frozen && p.freeze_reason == FREEZE),
        "{preview:?}"
    );
    approve(&stack, "bob", &r.name).await.expect("approve");
    let rejected = delivered(&stack, &r.name).await;
    assert_deliveries(&rejected, "cegedim", "");
    let cegedim = supplier_until(&stack, "cegedim", "cegedim rejected", |s| {
        s.state() == pb::supplier::State::Rejected
    })
    .await;
    assert_eq!(cegedim.conflicts, std::slice::from_ref(&r.name));
    assert_answers(
        &answers(&stack).await,
        (S::Disabled, R::Halted),
        (S::Enabled, R::Live),
    );

    // The halt is lifted in the log: naming it again is refused, with where it is not lifted
    // and how to redeliver.
    let again = resume(&stack, &[&h.name]).await.expect_err("already lifted");
    assert_refused(
        &again,
        Code::FailedPrecondition,
        "HALT_ALREADY_LIFTED",
        "resume again",
    );
    for part in ["suppliers/cegedim", "RedeliverCommand", "rolloutctl redeliver"] {
        assert!(again.message().contains(part), "{part}: {}", again.message());
    }
    let frozen = redeliver(&stack, "alice", &r.name, "cegedim", false, "")
        .await
        .expect_err("frozen");
    assert_refused(
        &frozen,
        Code::FailedPrecondition,
        "SUPPLIER_FROZEN",
        "while frozen",
    );
    assert!(frozen.message().contains(FREEZE), "{}", frozen.message());

    restart_supplier(&mut stack, "cegedim", None).await;
    let dry = redeliver(&stack, "alice", &r.name, "cegedim", true, "")
        .await
        .expect("dry run");
    assert_eq!((dry.state(), dry.name.as_str()), (pb::command::State::DryRun, ""));
    let impact = dry.impact.clone().expect("impact");
    let expected = stack.expected("cegedim", &Scope::National);
    // What it lifts, and what it would turn on: cegedim's practices, nothing elsewhere.
    assert_eq!(dry.lifted_halts.len(), 1, "{dry:?}");
    assert_eq!(dry.lifted_halts[0].command, h.name);
    let preview = dry.preview.clone().expect("a dry run's preview");
    assert_eq!(preview.suppliers.len(), 1, "{preview:?}");
    assert_eq!(preview.suppliers[0].supplier, "suppliers/cegedim");
    assert_eq!(
        preview.turn_on,
        i32::try_from(expected).expect("count"),
        "every active cegedim practice turns on: {preview:?}"
    );
    assert_eq!(
        (impact.practices, impact.suppliers.len()),
        (i32::try_from(expected).expect("count"), 1),
        "only cegedim's practices: {impact:?}"
    );
    let redelivery = redeliver(&stack, "alice", &r.name, "cegedim", false, "")
        .await
        .expect("redeliver");
    assert_eq!(
        (redelivery.state(), redelivery.sequence),
        (pb::command::State::PendingApproval, 0)
    );
    assert_eq!(
        (redelivery.redelivery_of.as_str(), redelivery.supplier.as_str()),
        (r.name.as_str(), "suppliers/cegedim")
    );
    assert_eq!(redelivery.action, r.action, "the same halts");
    assert_eq!(redelivery.impact, dry.impact);
    assert_answers(
        &answers(&stack).await,
        (S::Disabled, R::Halted),
        (S::Enabled, R::Live),
    );

    let approved = approve(&stack, "bob", &redelivery.name).await.expect("approve");
    assert_eq!(approved.state(), pb::command::State::Dispatched);
    assert!(approved.sequence > rejected.sequence, "a new sequence");
    let done = delivered(&stack, &redelivery.name).await;
    for d in &done.deliveries {
        assert_eq!(
            d.state(),
            pb::delivery::State::Applied,
            "every supplier applied it: {d:?}"
        );
    }
    let cegedim = supplier_until(&stack, "cegedim", "cegedim synced without conflicts", |s| {
        s.state() == pb::supplier::State::Synced
    })
    .await;
    assert!(cegedim.conflicts.is_empty(), "{cegedim:?}");
    assert_answers(
        &answers(&stack).await,
        (S::Enabled, R::Live),
        (S::Enabled, R::Live),
    );
    let original = every_view(&stack, &r.name).await;
    assert_deliveries(&original, "cegedim", &redelivery.name);

    // A supplier the redelivery was not addressed to holds it as a no-op, across a restart.
    restart_supplier(&mut stack, "emis", None).await;
    assert_eq!(answer(&stack, "emis").await, (S::Enabled, R::Live));

    // A coordinator restart files the rejection again, resolved.
    let before = (original, get(&stack, &redelivery.name).await);
    stack.stop_coordinator().await;
    stack.start_coordinator().await;
    let cegedim = supplier_until(&stack, "cegedim", "cegedim synced after a restart", |s| {
        s.state() == pb::supplier::State::Synced
    })
    .await;
    assert!(cegedim.conflicts.is_empty(), "{cegedim:?}");
    let after = (
        every_view(&stack, &r.name).await,
        get(&stack, &redelivery.name).await,
    );
    assert_eq!(after, before, "the restarted coordinator answers as before");
    stack.stop().await;
}

#[tokio::test]
async fn a_later_go_live_leaves_a_rejected_resume_in_conflict_and_a_later_resume_of_its_halts_resolves_it() {
    let mut stack = Stack::start(None).await;
    feature_live(&stack).await;
    let h = halt(&stack, national()).await;
    delivered(&stack, &h.name).await;
    // Two resumes of the halt wait for approval at once; the first is rejected by cegedim.
    let first = resume(&stack, &[&h.name]).await.expect("first resume");
    let second = resume(&stack, &[&h.name]).await.expect("second resume");
    restart_supplier(&mut stack, "cegedim", Some(FREEZE)).await;
    approve(&stack, "bob", &first.name).await.expect("approve");
    assert_deliveries(&delivered(&stack, &first.name).await, "cegedim", "");
    restart_supplier(&mut stack, "cegedim", None).await;

    // A go-live applied there does not do what the resume would have.
    let live = go_live(&stack).await;
    for d in &live.deliveries {
        assert_eq!(d.state(), pb::delivery::State::Applied, "{d:?}");
    }
    let cegedim = supplier_until(&stack, "cegedim", "cegedim still in conflict", |s| {
        s.state() == pb::supplier::State::Rejected
    })
    .await;
    assert_eq!(cegedim.conflicts, std::slice::from_ref(&first.name));
    assert_answers(
        &answers(&stack).await,
        (S::Disabled, R::Halted),
        (S::Enabled, R::Live),
    );
    assert_deliveries(&every_view(&stack, &first.name).await, "cegedim", "");

    // The second resume lifts the halt there, and resolves the first's rejection.
    approve(&stack, "bob", &second.name).await.expect("approve");
    delivered(&stack, &second.name).await;
    let cegedim = supplier_until(&stack, "cegedim", "cegedim synced", |s| {
        s.state() == pb::supplier::State::Synced
    })
    .await;
    assert!(cegedim.conflicts.is_empty(), "{cegedim:?}");
    assert_answers(
        &answers(&stack).await,
        (S::Enabled, R::Live),
        (S::Enabled, R::Live),
    );
    assert_deliveries(&every_view(&stack, &first.name).await, "cegedim", &second.name);
    stack.stop().await;
}

#[tokio::test]
async fn a_redelivery_is_refused_for_what_was_not_rejected_and_never_approved_by_its_requester() {
    let mut stack = Stack::start(Some(FREEZE)).await;
    feature_live(&stack).await;
    let live = stack
        .client("viewer")
        .list_commands(pb::ListCommandsRequest {
            feature: feature_name(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .commands
        .into_iter()
        .find(|c| matches!(c.action, Some(pb::command::Action::GoLive(_))))
        .expect("the go-live");
    assert_deliveries(&live, "cegedim", "");
    let emis_only = pb::Scope {
        target: Some(pb::scope::Target::Practices(pb::scope::PracticeList {
            practices: vec![stack.practice_of("emis")],
        })),
    };
    let h = halt(&stack, emis_only).await;
    delivered(&stack, &h.name).await;

    struct Row {
        what: &'static str,
        who: &'static str,
        name: String,
        supplier: &'static str,
        code: Code,
        reason: &'static str,
    }
    let row = |what, who, name: &str, supplier, code, reason| Row {
        what,
        who,
        name: name.to_owned(),
        supplier,
        code,
        reason,
    };
    let fp = Code::FailedPrecondition;
    for r in [
        row(
            "a supplier that applied it",
            "alice",
            &live.name,
            "emis",
            fp,
            "NOT_A_CONFLICT",
        ),
        row("a halt", "alice", &h.name, "cegedim", fp, "NOT_A_CONFLICT"),
        row(
            "while frozen",
            "alice",
            &live.name,
            "cegedim",
            fp,
            "SUPPLIER_FROZEN",
        ),
        row(
            "an unknown supplier",
            "alice",
            &live.name,
            "nosuch",
            Code::NotFound,
            "SUPPLIER_NOT_FOUND",
        ),
        row(
            "an unknown command",
            "alice",
            "commands/no-such",
            "cegedim",
            Code::NotFound,
            "COMMAND_NOT_FOUND",
        ),
        row(
            "not a command name",
            "alice",
            "no-such",
            "cegedim",
            Code::InvalidArgument,
            "INVALID_FIELD",
        ),
        row(
            "a viewer",
            "viewer",
            &live.name,
            "cegedim",
            Code::PermissionDenied,
            "ROLE_REQUIRED",
        ),
    ] {
        let refused = redeliver(&stack, r.who, &r.name, r.supplier, false, "")
            .await
            .expect_err(r.what);
        assert_refused(&refused, r.code, r.reason, r.what);
    }

    restart_supplier(&mut stack, "cegedim", None).await;
    let id = "6c0f3a1e-2d4b-4e8f-9a7c-3b5d1e2f4a6c";
    let redelivery = redeliver(&stack, "alice", &live.name, "cegedim", false, id)
        .await
        .expect("redeliver");
    let retry = redeliver(&stack, "alice", &live.name, "cegedim", false, id)
        .await
        .expect("a retry");
    assert_eq!(
        retry, redelivery,
        "a retry with the same request id answers as the first"
    );
    let twice = redeliver(&stack, "alice", &live.name, "cegedim", false, "")
        .await
        .expect_err("one is waiting");
    assert_refused(&twice, Code::FailedPrecondition, "REDELIVERY_PENDING", "twice");
    let own = approve(&stack, "alice", &redelivery.name)
        .await
        .expect_err("self-approval");
    assert_refused(&own, Code::PermissionDenied, "SELF_APPROVAL", "self-approval");
    assert_eq!(
        get(&stack, &redelivery.name).await.state(),
        pb::command::State::PendingApproval
    );
    approve(&stack, "bob", &redelivery.name).await.expect("approve");
    delivered(&stack, &redelivery.name).await;
    supplier_until(&stack, "cegedim", "cegedim synced", |s| {
        s.state() == pb::supplier::State::Synced && s.conflicts.is_empty()
    })
    .await;
    assert_eq!(
        answer(&stack, "cegedim").await,
        (S::Enabled, R::Live),
        "the go-live applied there"
    );
    assert_deliveries(&every_view(&stack, &live.name).await, "cegedim", &redelivery.name);
    let resolved = redeliver(&stack, "alice", &live.name, "cegedim", false, "")
        .await
        .expect_err("resolved");
    assert_refused(
        &resolved,
        Code::FailedPrecondition,
        "NOT_A_CONFLICT",
        "once resolved",
    );
    assert!(
        resolved.message().contains(&redelivery.name),
        "{}",
        resolved.message()
    );

    // Accepted and refused calls are in the audit log.
    let events = audit_events(&stack).await;
    let redeliveries: Vec<_> = events
        .iter()
        .filter(|e| e.action.ends_with("/RedeliverCommand"))
        .map(|e| e.outcome())
        .collect();
    assert!(
        redeliveries.contains(&pb::audit_event::Outcome::Accepted)
            && redeliveries.contains(&pb::audit_event::Outcome::Refused),
        "{redeliveries:?}"
    );
    stack.stop().await;
}
