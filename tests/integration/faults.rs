//! Faults with real processes and a controllable network: after each, every command is applied
//! exactly once and in order at every supplier, the answers match the rules, and both audit
//! chains verify.

use std::{collections::HashMap, time::Duration};

use rollout_proto::v1::{self as pb, practice_feature::Reason as R, practice_feature::State as S};
use rollout_store::supplier::{SqlSupplierStore, SupplierStore};

use crate::{
    proxy::{Mode, Proxy},
    replicas::CoordinatorProcess,
    stack::{SUPPLIERS, Stack, audit_events, delivered, feature_live, halt, national},
    support::practice_feature,
};

/// Waits until every supplier has applied `target`.
async fn converged(stack: &Stack, target: i64, within: Duration) {
    let viewer = stack.client("viewer");
    let end = tokio::time::Instant::now() + within;
    loop {
        let ok = match viewer
            .clone()
            .list_suppliers(pb::ListSuppliersRequest::default())
            .await
        {
            Ok(list) => {
                let list = list.into_inner();
                if list.suppliers.iter().all(|s| s.applied_sequence == target) {
                    return;
                }
                format!(
                    "{:?}",
                    list.suppliers
                        .iter()
                        .map(|s| (s.name.clone(), s.applied_sequence, s.last_error.clone()))
                        .collect::<Vec<_>>()
                )
            }
            Err(e) => format!("{e:?}"),
        };
        assert!(
            tokio::time::Instant::now() < end,
            "not every supplier applied {target} within {within:?}: {ok}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Stops the suppliers and checks each one's store: every command 1..=target once, in order,
/// no command applied twice, and an audit chain that verifies; and the coordinator's chain.
async fn everything_applied_once(stack: &mut Stack, target: i64) {
    let events = audit_events(stack).await;
    let chain: Vec<_> = events.iter().map(rollout_net::wire::audit_from_pb).collect();
    rollout_core::audit::verify_chain(&chain).expect("the coordinator's audit chain verifies");
    for id in SUPPLIERS {
        stack.stop_supplier(id).await;
        let db = stack.suppliers[id].0.database.clone();
        let store = SqlSupplierStore::open(&format!("sqlite://{}", db.display()))
            .await
            .expect("open");
        let state = store.load().await.expect("load");
        let sequences: Vec<i64> = state.commands.iter().map(|c| c.sequence as i64).collect();
        assert_eq!(
            sequences,
            (1..=target).collect::<Vec<_>>(),
            "{id}: every command, once, in order"
        );
        let events = store.list_audit(0, 100_000).await.expect("audit");
        rollout_core::audit::verify_chain(&events).expect("the supplier's audit chain verifies");
        let mut applied: HashMap<&str, usize> = HashMap::new();
        for e in events.iter().filter(|e| {
            e.draft.action.ends_with("/ApplyCommand")
                && e.draft.outcome == rollout_core::audit::AuditOutcome::Accepted
        }) {
            *applied.entry(e.draft.target.as_str()).or_default() += 1;
        }
        assert!(
            applied.values().all(|n| *n == 1),
            "{id}: a command applied twice: {applied:?}"
        );
        store.close().await;
    }
}

/// A `rollout-supplier` process for one supplier of the stack, on its port and database.
fn supplier_process(stack: &Stack, id: &str) -> tokio::process::Child {
    let (files, _, addr) = &stack.suppliers[id];
    files
        .command(&addr.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start rollout-supplier")
}

async fn kill9(child: &mut tokio::process::Child) {
    let pid = child.id().expect("pid");
    let status = tokio::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .await
        .expect("kill");
    assert!(status.success());
    child.wait().await.expect("reap");
}

fn practice_list(codes: &[String]) -> pb::Scope {
    pb::Scope {
        target: Some(pb::scope::Target::Practices(pb::scope::PracticeList {
            practices: codes.to_vec(),
        })),
    }
}

#[tokio::test]
async fn a_supplier_killed_twenty_times_in_a_burst_of_100_commands_loses_nothing() {
    let mut stack = Stack::suppliers(None).await;
    // tpp runs as a real process, killed with SIGKILL and restarted on its database.
    stack.stop_supplier("tpp").await;
    let mut tpp = supplier_process(&stack, "tpp");
    stack.start_coordinator().await;
    feature_live(&stack).await;
    let codes: Vec<String> = stack
        .estate
        .practices()
        .filter(|p| p.supplier.as_str() == "tpp" && p.status == rollout_core::PracticeStatus::Active)
        .take(100)
        .map(|p| p.ods.to_string())
        .collect();
    let mut alice = stack.client("alice");
    let mut target = 2;
    for round in 0..20 {
        for k in 0..5 {
            // The moment of the kill moves through the burst: after 0 to 4 commands.
            if k == round % 5 {
                kill9(&mut tpp).await;
            }
            let ods = &codes[round * 5 + k];
            let h = alice
                .halt_feature(pb::HaltFeatureRequest {
                    name: crate::support::feature_name(),
                    scope: Some(practice_list(std::slice::from_ref(ods))),
                    reason: format!("burst {round}.{k}"),
                    request_id: String::new(),
                    dry_run: false,
                    ..Default::default()
                })
                .await
                .expect("halt")
                .into_inner();
            target = h.sequence;
        }
        tpp = supplier_process(&stack, "tpp");
    }
    assert_eq!(target, 102);
    converged(&stack, target, Duration::from_secs(120)).await;
    // The answers match the rules: every practice of the burst is halted at tpp.
    let mut backend = stack.backend("tpp");
    for ods in codes.iter().step_by(7) {
        let p = backend
            .get_practice_feature(pb::GetPracticeFeatureRequest {
                name: practice_feature(ods),
                explain: true,
            })
            .await
            .expect("answer")
            .into_inner();
        assert_eq!((p.state(), p.reason()), (S::Disabled, R::Halted), "{ods}");
    }
    kill9(&mut tpp).await;
    everything_applied_once(&mut stack, target).await;
    stack.stop().await;
}

#[tokio::test]
async fn a_cut_a_black_hole_and_a_slow_link_delay_only_their_own_supplier() {
    let mut stack = Stack::suppliers(None).await;
    let mut proxies = HashMap::new();
    for id in SUPPLIERS {
        let proxy = Proxy::start(stack.suppliers[id].2).await;
        stack.via.insert(id, proxy.addr);
        proxies.insert(id, proxy);
    }
    stack.start_coordinator().await;
    feature_live(&stack).await;
    let viewer = stack.client("viewer");
    let applied_by = |c: &pb::Command| -> Vec<String> {
        c.deliveries
            .iter()
            .filter(|d| d.state() == pb::delivery::State::Applied)
            .map(|d| d.supplier.clone())
            .collect()
    };
    for (id, mode) in [
        ("emis", Mode::Cut),
        ("tpp", Mode::BlackHole),
        ("cegedim", Mode::Slow(Duration::from_millis(300))),
    ] {
        proxies[id].set(mode);
        let h = halt(&stack, national()).await;
        // The three healthy links deliver at once, whatever happens on the fourth.
        let end = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let c = viewer
                .clone()
                .get_command(pb::GetCommandRequest { name: h.name.clone() })
                .await
                .expect("get")
                .into_inner();
            let applied = applied_by(&c);
            if applied.len() >= 3
                && SUPPLIERS
                    .iter()
                    .filter(|s| **s != id)
                    .all(|s| applied.contains(&format!("suppliers/{s}")))
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < end,
                "{mode:?} on {id} held up the others: {applied:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        proxies[id].set(Mode::Pass);
        let done = delivered(&stack, &h.name).await;
        assert!(
            done.deliveries
                .iter()
                .all(|d| d.state() == pb::delivery::State::Applied),
            "{id} recovered: {done:?}"
        );
    }
    converged(&stack, 5, Duration::from_secs(60)).await;
    everything_applied_once(&mut stack, 5).await;
    stack.stop().await;
}

#[tokio::test]
async fn a_coordinator_killed_between_accepting_and_delivering_loses_nothing() {
    let mut stack = Stack::suppliers(None).await;
    let mut proxies = HashMap::new();
    for id in SUPPLIERS {
        let proxy = Proxy::start(stack.suppliers[id].2).await;
        proxy.set(Mode::Cut);
        stack.via.insert(id, proxy.addr);
        proxies.insert(id, proxy);
    }
    let url = format!("sqlite://{}", stack.coordinator_db.display());
    let mut first = CoordinatorProcess::start(&stack, &url);
    stack.coordinator_addr = first.addr().await;
    // Accepted and sequenced, but no supplier can be reached.
    let mut alice = stack.client("alice");
    alice
        .create_feature(pb::CreateFeatureRequest {
            feature_id: crate::support::FEATURE.into(),
            feature: Some(pb::Feature {
                fail_mode: pb::FailMode::Static.into(),
                ..Default::default()
            }),
            reason: "defined while the suppliers are unreachable".into(),
            request_id: String::new(),
        })
        .await
        .expect("create");
    let h = halt(&stack, national()).await;
    assert_eq!(h.sequence, 2);
    kill9(&mut first.child).await;

    for p in proxies.values() {
        p.set(Mode::Pass);
    }
    let second = CoordinatorProcess::start(&stack, &url);
    stack.coordinator_addr = second.addr().await;
    converged(&stack, 2, Duration::from_secs(60)).await;
    for id in SUPPLIERS {
        let p = stack
            .backend(id)
            .get_practice_feature(pb::GetPracticeFeatureRequest {
                name: practice_feature(&stack.practice_of(id)),
                explain: true,
            })
            .await
            .expect("answer")
            .into_inner();
        assert_eq!((p.state(), p.reason()), (S::Disabled, R::Halted), "{id}");
    }
    everything_applied_once(&mut stack, 2).await;
    drop(second);
    stack.stop().await;
}

#[tokio::test]
async fn reads_under_load_while_commands_are_applied_see_no_errors() {
    let (_tmp, files, server) = crate::support::supplier::emis().await;
    let mut control = crate::support::supplier::control(&files, &server);
    crate::support::supplier::apply(&mut control, crate::support::define(1, None)).await;
    crate::support::supplier::apply(
        &mut control,
        crate::support::go_live(2, "golive-1", rollout_core::Scope::National, None),
    )
    .await;
    // Four readers on their own connections, 1,500 reads each, while 60 commands are applied.
    let readers: Vec<_> = (0..4)
        .map(|r| {
            let mut client = crate::support::supplier::toggle(&files, "backend-emis", &server);
            tokio::spawn(async move {
                let (mut ok, mut errors) = (0u32, Vec::new());
                for i in 0..1_500 {
                    let ods = if (i + r) % 2 == 0 {
                        crate::support::supplier::EMIS_A
                    } else {
                        crate::support::supplier::EMIS_B
                    };
                    match client
                        .get_practice_feature(pb::GetPracticeFeatureRequest {
                            name: practice_feature(ods),
                            explain: true,
                        })
                        .await
                    {
                        Ok(_) => ok += 1,
                        Err(e) => errors.push(e),
                    }
                }
                (ok, errors)
            })
        })
        .collect();
    for seq in 3..63 {
        let scope = crate::support::practices(&[if seq % 2 == 0 {
            crate::support::supplier::EMIS_A
        } else {
            crate::support::supplier::EMIS_B
        }]);
        let command = if seq % 3 == 0 {
            crate::support::go_live(seq, &format!("g{seq}"), scope, None)
        } else {
            crate::support::halt(seq, &format!("h{seq}"), scope)
        };
        crate::support::supplier::apply(&mut control, command).await;
    }
    let mut total = 0;
    for r in readers {
        let (ok, errors) = r.await.expect("reader");
        assert!(
            errors.is_empty(),
            "reads failed while commands were applied: {errors:?}"
        );
        total += ok;
    }
    assert_eq!(total, 6_000);
    server.stop().await;
}

#[tokio::test]
async fn a_supplier_whose_store_was_wiped_gets_everything_back() {
    let mut stack = Stack::suppliers(None).await;
    stack.stop_supplier("cegedim").await;
    let mut cegedim = supplier_process(&stack, "cegedim");
    stack.start_coordinator().await;
    feature_live(&stack).await;
    let first = halt(&stack, national()).await;
    delivered(&stack, &first.name).await;
    kill9(&mut cegedim).await;
    let db = stack.suppliers["cegedim"].0.database.clone();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let second = halt(
        &stack,
        pb::Scope {
            target: Some(pb::scope::Target::Region("Y61".into())),
        },
    )
    .await;
    cegedim = supplier_process(&stack, "cegedim");
    converged(&stack, second.sequence, Duration::from_secs(60)).await;
    let p = stack
        .backend("cegedim")
        .get_practice_feature(pb::GetPracticeFeatureRequest {
            name: practice_feature(&stack.practice_of("cegedim")),
            explain: true,
        })
        .await
        .expect("answer")
        .into_inner();
    assert_eq!(
        (p.state(), p.reason(), p.applied_sequence),
        (S::Disabled, R::Halted, second.sequence)
    );
    kill9(&mut cegedim).await;
    everything_applied_once(&mut stack, second.sequence).await;
    stack.stop().await;
}
