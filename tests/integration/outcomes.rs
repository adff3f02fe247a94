//! Every outcome recorded. A supplier's answer lost on the way back after it committed (a
//! proxy holds the answer, then drops the connection with it): the delivery still becomes
//! APPLIED, or REJECTED with the freeze's reason, without anyone acting, and WatchCommand
//! completes. A supplier with a conflict that has commands still to apply shows PENDING, not
//! REJECTED; a conflict a later go-live superseded there stops counting; and a supplier that
//! lost its store under a freeze judges again, its new rejection replacing the APPLIED it had.
//! Real servers, real mutual TLS, real SQLite files.

use std::time::Duration;

use rollout_proto::v1::{
    self as pb, control_service_client::ControlServiceClient, practice_feature::State as S,
};

use crate::{
    proxy::{Mode, Proxy},
    stack::{Stack, delivered, feature_live, halt, national, suppliers_until},
    support::{FEATURE, Running, channel_as, feature_name, practice_feature},
};

const FREEZE: &str = "year-end change freeze";

/// The stack (cegedim frozen with `freeze`) with the coordinator reaching `through` by a proxy.
/// Its heartbeat is a minute: once the proxy holds answers, a heartbeat sent before the command
/// under test would hold up delivery to `through` until that call's deadline, and every later
/// call (a new connection's handshake included) is held too, so the command would never reach
/// the supplier. Delivery itself needs no heartbeat: a command is sent when it is dispatched.
async fn via_proxy(freeze: Option<&str>, through: &'static str) -> (Stack, Proxy) {
    let mut stack = Stack::suppliers(freeze).await;
    stack.heartbeat = Duration::from_secs(60);
    let proxy = Proxy::start(stack.suppliers[through].2).await;
    stack.via.insert(through, proxy.addr);
    stack.start_coordinator().await;
    (stack, proxy)
}

/// Waits until `supplier` itself (its WatchSyncState, not through any proxy) has applied
/// `sequence`: it has committed the command, whatever became of its answer.
async fn committed_at(stack: &Stack, supplier: &str, sequence: i64) {
    let channel = channel_as(&stack.pki, "coordinator", stack.suppliers[supplier].2);
    let mut watch = ControlServiceClient::new(channel)
        .watch_sync_state(pb::WatchSyncStateRequest {})
        .await
        .expect("watch sync state")
        .into_inner();
    let reached = async {
        while let Some(state) = watch.message().await.expect("sync state") {
            if state.applied_sequence >= sequence {
                return;
            }
        }
        panic!("{supplier}'s state watch ended");
    };
    // Generous: on a loaded machine the command may wait behind a heartbeat whose answer the
    // proxy holds until that call's own deadline.
    tokio::time::timeout(Duration::from_secs(60), reached)
        .await
        .unwrap_or_else(|_| panic!("{supplier} did not apply sequence {sequence} within 60 s"));
}

async fn command(stack: &Stack, name: &str) -> pb::Command {
    stack
        .client("viewer")
        .get_command(pb::GetCommandRequest { name: name.into() })
        .await
        .expect("get command")
        .into_inner()
}

#[track_caller]
fn delivery<'a>(c: &'a pb::Command, supplier: &str) -> &'a pb::Delivery {
    let name = format!("suppliers/{supplier}");
    c.deliveries
        .iter()
        .find(|d| d.supplier == name)
        .expect("delivery")
}

/// Defines the feature and waits until every supplier applied the definition.
async fn define(stack: &Stack) {
    let f = stack
        .client("alice")
        .create_feature(pb::CreateFeatureRequest {
            feature_id: FEATURE.into(),
            feature: Some(pb::Feature {
                fail_mode: pb::FailMode::Static.into(),
                ..Default::default()
            }),
            reason: "national programme".into(),
            request_id: String::new(),
        })
        .await
        .expect("create feature")
        .into_inner();
    suppliers_until(stack, Duration::from_secs(20), "the definition applied", |l| {
        l.iter().all(|s| s.applied_sequence >= f.sequence)
    })
    .await;
}

/// The name of the command at `sequence`.
async fn command_at(stack: &Stack, sequence: i64) -> String {
    let list = stack
        .client("viewer")
        .list_commands(pb::ListCommandsRequest::default())
        .await
        .expect("list")
        .into_inner();
    list.commands
        .into_iter()
        .find(|c| c.sequence == sequence)
        .map(|c| c.name)
        .expect("a command there")
}

/// A go-live of `scope`, asked by alice and approved by bob (so dispatched).
async fn go_live(stack: &Stack, scope: pb::Scope) -> pb::Command {
    let asked = stack
        .client("alice")
        .schedule_go_live(pb::ScheduleGoLiveRequest {
            name: feature_name(),
            scope: Some(scope),
            reason: "go live".into(),
            ..Default::default()
        })
        .await
        .expect("go-live")
        .into_inner();
    stack
        .client("bob")
        .approve_command(pb::ApproveCommandRequest {
            name: asked.name.clone(),
            ..Default::default()
        })
        .await
        .expect("approve")
        .into_inner()
}

/// cegedim as ListSuppliers shows it once `done` holds (within 20 s).
async fn cegedim_until(stack: &Stack, what: &str, done: impl Fn(&pb::Supplier) -> bool) -> pb::Supplier {
    suppliers_until(stack, Duration::from_secs(20), what, |l| {
        l.iter().any(|s| s.name == "suppliers/cegedim" && done(s))
    })
    .await
    .into_iter()
    .find(|s| s.name == "suppliers/cegedim")
    .expect("cegedim")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_answer_lost_after_the_supplier_applied_still_completes_the_delivery() {
    let (stack, proxy) = via_proxy(None, "tpp").await;
    feature_live(&stack).await;
    proxy.set(Mode::HoldAnswers);
    let h = halt(&stack, national()).await;
    committed_at(&stack, "tpp", h.sequence).await;
    assert_eq!(
        delivery(&command(&stack, &h.name).await, "tpp").state(),
        pb::delivery::State::Pending,
        "its answer has not come back"
    );
    // The link breaks with the answer in it.
    proxy.drop_connections();
    proxy.set(Mode::Pass);
    let done = delivered(&stack, &h.name).await;
    let tpp = delivery(&done, "tpp");
    assert_eq!(tpp.state(), pb::delivery::State::Applied, "{tpp:?}");
    assert!(tpp.apply_time.is_some() && tpp.acknowledge_time.is_some());
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_freeze_rejection_whose_answer_was_lost_is_recorded_as_a_conflict() {
    let (stack, proxy) = via_proxy(Some(FREEZE), "cegedim").await;
    define(&stack).await;
    proxy.set(Mode::HoldAnswers);
    let live = go_live(&stack, national()).await;
    committed_at(&stack, "cegedim", live.sequence).await;
    assert_eq!(
        delivery(&command(&stack, &live.name).await, "cegedim").state(),
        pb::delivery::State::Pending
    );
    proxy.drop_connections();
    proxy.set(Mode::Pass);
    let done = delivered(&stack, &live.name).await;
    let cegedim = delivery(&done, "cegedim");
    assert_eq!(cegedim.state(), pb::delivery::State::Rejected, "{cegedim:?}");
    assert!(
        cegedim.rejection_reason.contains(FREEZE),
        "{}",
        cegedim.rejection_reason
    );
    let s = cegedim_until(&stack, "REJECTED with the go-live's conflict", |s| {
        s.state() == pb::supplier::State::Rejected
    })
    .await;
    assert_eq!(s.conflicts, std::slice::from_ref(&live.name));
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_supplier_with_a_conflict_and_commands_to_apply_shows_pending_then_rejected() {
    let (stack, proxy) = via_proxy(Some(FREEZE), "cegedim").await;
    define(&stack).await;
    let live = go_live(&stack, national()).await;
    delivered(&stack, &live.name).await;
    cegedim_until(&stack, "REJECTED", |s| s.state() == pb::supplier::State::Rejected).await;
    // A halt it has not applied yet (its answers held): PENDING, its conflict listed all the same.
    proxy.set(Mode::HoldAnswers);
    let h = halt(&stack, national()).await;
    let s = cegedim_until(&stack, "a state", |_| true).await;
    assert_eq!(
        (s.state(), s.conflicts.clone()),
        (pb::supplier::State::Pending, vec![live.name.clone()]),
        "behind, with a conflict"
    );
    proxy.drop_connections();
    proxy.set(Mode::Pass);
    delivered(&stack, &h.name).await;
    let s = cegedim_until(&stack, "REJECTED once caught up", |s| {
        s.state() == pb::supplier::State::Rejected && s.applied_sequence == h.sequence
    })
    .await;
    assert_eq!(s.conflicts, std::slice::from_ref(&live.name));
    stack.stop().await;
}

/// Restarts cegedim on its files (and port), frozen or not; an empty store if `wiped`.
async fn restart_cegedim(stack: &mut Stack, freeze: Option<&str>, wiped: bool) {
    stack.stop_supplier("cegedim").await;
    let entry = stack.suppliers.get_mut("cegedim").expect("cegedim");
    if wiped {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", entry.0.database.display()));
        }
    }
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_go_live_superseded_there_by_one_of_the_suppliers_whole_estate_stops_counting() {
    let mut stack = Stack::start(Some(FREEZE)).await;
    define(&stack).await;
    let ods = stack.practice_of("cegedim");
    let icb = stack
        .estate
        .practices()
        .find(|p| p.ods.as_str() == ods)
        .map(|p| p.icb.to_string())
        .expect("its ICB");
    let first = go_live(
        &stack,
        pb::Scope {
            target: Some(pb::scope::Target::Icb(icb)),
        },
    )
    .await;
    assert_eq!(
        delivery(&delivered(&stack, &first.name).await, "cegedim").state(),
        pb::delivery::State::Rejected
    );
    restart_cegedim(&mut stack, None, false).await;
    cegedim_until(&stack, "no longer frozen", |s| {
        !s.frozen && s.last_error.is_empty()
    })
    .await;
    let estate = go_live(
        &stack,
        pb::Scope {
            target: Some(pb::scope::Target::Supplier("cegedim".into())),
        },
    )
    .await;
    delivered(&stack, &estate.name).await;
    let s = cegedim_until(&stack, "SYNCED", |s| s.state() == pb::supplier::State::Synced).await;
    assert!(s.conflicts.is_empty(), "{:?}", s.conflicts);
    let rejected = command(&stack, &first.name).await;
    assert_eq!(delivery(&rejected, "cegedim").resolved_by, estate.name);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_supplier_that_lost_its_store_under_a_freeze_judges_again_and_its_rejection_replaces_applied() {
    let mut stack = Stack::start(None).await;
    feature_live(&stack).await;
    let live = command_at(&stack, 2).await;
    assert_eq!(
        delivery(&command(&stack, &live).await, "cegedim").state(),
        pb::delivery::State::Applied
    );
    restart_cegedim(&mut stack, Some(FREEZE), true).await;
    let s = cegedim_until(&stack, "REJECTED after judging the go-live again", |s| {
        s.state() == pb::supplier::State::Rejected
    })
    .await;
    assert_eq!(s.conflicts, std::slice::from_ref(&live));
    let d = delivery(&command(&stack, &live).await, "cegedim").clone();
    assert_eq!(d.state(), pb::delivery::State::Rejected, "{d:?}");
    assert!(d.rejection_reason.contains(FREEZE), "{}", d.rejection_reason);
    let answer = stack
        .backend("cegedim")
        .get_practice_feature(pb::GetPracticeFeatureRequest {
            name: practice_feature(&stack.practice_of("cegedim")),
            explain: false,
        })
        .await
        .expect("answer")
        .into_inner();
    assert_ne!(
        answer.state(),
        S::Enabled,
        "off there, as the coordinator now shows"
    );
    stack.stop().await;
}
