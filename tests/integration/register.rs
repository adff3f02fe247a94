//! The national opt-out register: a supplier that loses its store gets its practices' opt-outs
//! back from the coordinator before it holds any rule again (on SQLite and PostgreSQL), and a
//! practice that moves to another supplier takes its opt-out along, held off at the new
//! supplier until the coordinator has answered; a moved practice with no opt-out is released
//! and answers by the rules.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use rollout_proto::v1::{
    self as pb,
    control_service_client::ControlServiceClient,
    practice_feature::{Reason as R, State as S},
    practice_settings_service_client::PracticeSettingsServiceClient,
};
use rollout_store::supplier::{SqlSupplierStore, SupplierStore};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::{
    stack::{Stack, audit_events, feature_live, suppliers_until},
    support::{
        FEATURE, PgDb, Running, assert_refused, channel_as, feature_name, pg_database, practice_feature,
        reference_files,
        supplier::{EMIS_A, EMIS_B, EMIS_QRP},
    },
};

/// How long anything here may take to converge.
const WITHIN: Duration = Duration::from_secs(30);

fn settings(stack: &Stack, supplier: &str) -> PracticeSettingsServiceClient<Channel> {
    PracticeSettingsServiceClient::new(channel_as(
        &stack.pki,
        &format!("practice-admin-{supplier}"),
        stack.suppliers[supplier].2,
    ))
}

fn control(stack: &Stack, supplier: &str) -> ControlServiceClient<Channel> {
    ControlServiceClient::new(channel_as(&stack.pki, "coordinator", stack.suppliers[supplier].2))
}

async fn opt_out(stack: &Stack, supplier: &str, ods: &str, reason: &str, source: &str) -> pb::PracticeOptOut {
    settings(stack, supplier)
        .set_practice_opt_out(pb::SetPracticeOptOutRequest {
            opt_out: Some(pb::PracticeOptOut {
                name: format!("{}/optOut", practice_feature(ods)),
                reason: reason.into(),
                source: source.into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("opt out")
        .into_inner()
}

/// The supplier's opt-out records, withdrawn ones included, by name.
async fn opt_outs_at(stack: &Stack, supplier: &str) -> Vec<pb::PracticeOptOut> {
    settings(stack, supplier)
        .list_practice_opt_outs(pb::ListPracticeOptOutsRequest {
            show_withdrawn: true,
            ..Default::default()
        })
        .await
        .expect("list opt-outs")
        .into_inner()
        .opt_outs
}

/// What a record says, without how it came to be at its supplier.
fn said(o: &pb::PracticeOptOut) -> pb::PracticeOptOut {
    pb::PracticeOptOut {
        origin: 0,
        origin_supplier: String::new(),
        change: 0,
        supplier: String::new(),
        ..o.clone()
    }
}

/// Every answer of a supplier, plain, by practice: (name, state, reason, sentence).
async fn answers(stack: &Stack, supplier: &str) -> Vec<(String, S, R, String)> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = stack
            .backend(supplier)
            .list_practice_features(pb::ListPracticeFeaturesRequest {
                feature: feature_name(),
                page_size: 5_000,
                page_token,
                ..Default::default()
            })
            .await
            .expect("list answers")
            .into_inner();
        out.extend(
            page.practice_features
                .iter()
                .map(|p| (p.name.clone(), p.state(), p.reason(), p.explanation.clone())),
        );
        if page.next_page_token.is_empty() {
            return out;
        }
        page_token = page.next_page_token;
    }
}

async fn answer(stack: &Stack, supplier: &str, ods: &str) -> pb::PracticeFeature {
    stack
        .backend(supplier)
        .get_practice_feature(pb::GetPracticeFeatureRequest {
            name: practice_feature(ods),
            explain: false,
        })
        .await
        .expect("answer")
        .into_inner()
}

/// The national register as a viewer reads it, every page.
async fn register(
    stack: &Stack,
    request: pb::ListOptOutsRequest,
) -> (Vec<pb::PracticeOptOut>, Vec<pb::list_opt_outs_response::Count>) {
    let mut viewer = stack.client("viewer");
    let mut all = Vec::new();
    let mut request = pb::ListOptOutsRequest {
        page_size: 1,
        ..request
    };
    loop {
        let page = viewer
            .list_opt_outs(request.clone())
            .await
            .expect("list the register")
            .into_inner();
        all.extend(page.opt_outs);
        if page.next_page_token.is_empty() {
            return (all, page.counts);
        }
        request.page_token = page.next_page_token;
    }
}

/// Polls the register until `done` holds for what `request` reads.
async fn register_until(
    stack: &Stack,
    request: pb::ListOptOutsRequest,
    what: &str,
    done: impl Fn(&[pb::PracticeOptOut]) -> bool,
) -> (Vec<pb::PracticeOptOut>, Vec<pb::list_opt_outs_response::Count>) {
    let end = Instant::now() + WITHIN;
    loop {
        let got = register(stack, request.clone()).await;
        if done(&got.0) {
            return got;
        }
        assert!(
            Instant::now() < end,
            "the register does not show {what} within {WITHIN:?}: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn count(supplier: &str, opted_out: i32, withdrawn: i32) -> pb::list_opt_outs_response::Count {
    pb::list_opt_outs_response::Count {
        supplier: format!("suppliers/{supplier}"),
        feature: feature_name(),
        opted_out,
        withdrawn,
    }
}

/// Where a test keeps emis's store (and, on PostgreSQL, the coordinator's).
enum Stores {
    Sqlite,
    Postgres { emis: PgDb, coordinator: PgDb },
}

async fn a_supplier_that_lost_its_store_answers_as_before(postgres: Option<(PgDb, PgDb)>) {
    let mut stack = Stack::suppliers(None).await;
    let mut stores = match postgres {
        None => Stores::Sqlite,
        Some((emis, coordinator)) => {
            stack.stop_supplier("emis").await;
            stack.suppliers.get_mut("emis").expect("emis").0.database_url = Some(emis.url.clone());
            stack.start_supplier("emis").await;
            stack.coordinator_url = Some(coordinator.url.clone());
            Stores::Postgres { emis, coordinator }
        }
    };
    stack.start_coordinator().await;
    feature_live(&stack).await;

    // Two opt-outs in force and one withdrawn, read into the register.
    let a = opt_out(
        &stack,
        "emis",
        EMIS_A,
        "we are piloting paper access first",
        "letter of 2026-11-02",
    )
    .await;
    opt_out(
        &stack,
        "emis",
        EMIS_B,
        "our patients asked for time",
        "email from the practice manager",
    )
    .await;
    let c = format!("{}/optOut", practice_feature(EMIS_QRP));
    opt_out(&stack, "emis", EMIS_QRP, "short of staff", "phone call").await;
    settings(&stack, "emis")
        .withdraw_practice_opt_out(pb::WithdrawPracticeOptOutRequest {
            name: c.clone(),
            reason: "staff back".into(),
            request_id: String::new(),
        })
        .await
        .expect("withdraw");
    let all = pb::ListOptOutsRequest {
        show_withdrawn: true,
        ..Default::default()
    };
    register_until(&stack, all.clone(), "emis's three records", |r| {
        r.len() == 3 && r.iter().any(|o| o.name == c && o.withdrawn)
    })
    .await;
    let before = answers(&stack, "emis").await;
    let records = opt_outs_at(&stack, "emis").await;
    assert_eq!(
        before
            .iter()
            .filter(|(_, s, r, _)| (*s, *r) == (S::Disabled, R::OptedOut))
            .count(),
        2
    );
    assert_eq!(answer(&stack, "emis", EMIS_A).await.state(), S::Disabled);

    // emis loses its store and starts on an empty one.
    stack.stop_supplier("emis").await;
    match &mut stores {
        Stores::Sqlite => {
            let db = stack.suppliers["emis"].0.database.clone();
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
            }
        }
        Stores::Postgres { emis, .. } => {
            let fresh = pg_database().await.expect("a second database");
            stack.suppliers.get_mut("emis").expect("emis").0.database_url = Some(fresh.url.clone());
            std::mem::replace(emis, fresh).drop().await;
        }
    }
    stack.start_supplier("emis").await;

    // From its restart to the end of the resync, the opted-out practice is never on.
    let target = stack
        .client("viewer")
        .get_supplier(pb::GetSupplierRequest {
            name: "suppliers/emis".into(),
        })
        .await
        .expect("emis")
        .into_inner()
        .target_sequence;
    let end = Instant::now() + WITHIN;
    loop {
        let p = answer(&stack, "emis", EMIS_A).await;
        assert_ne!(
            p.state(),
            S::Enabled,
            "the opted-out practice answered ENABLED during the resync: {p:?}"
        );
        if (p.state(), p.reason(), p.applied_sequence) == (S::Disabled, R::OptedOut, target) {
            break;
        }
        assert!(Instant::now() < end, "emis not back within {WITHIN:?}: {p:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Every answer as before, and every record as the practice left it, restored.
    assert_eq!(answers(&stack, "emis").await, before);
    let restored = opt_outs_at(&stack, "emis").await;
    assert_eq!(
        restored.iter().map(said).collect::<Vec<_>>(),
        records.iter().map(said).collect::<Vec<_>>()
    );
    assert!(
        restored
            .iter()
            .all(|o| o.origin() == pb::practice_opt_out::Origin::Restored
                && o.origin_supplier == "suppliers/emis"),
        "{restored:?}"
    );
    assert_eq!(
        said(&restored[0]),
        said(&a),
        "reason, source, recorder and times unchanged"
    );

    // The register: emis's records, counted; the restore in the coordinator's audit log; the
    // supplier view shows how far the register read.
    let (register, counts) = register(&stack, all).await;
    assert_eq!(register.len(), 3);
    assert!(
        register
            .iter()
            .all(|o| o.supplier == "suppliers/emis" && o.change == 0)
    );
    assert_eq!(counts, [count("emis", 2, 1)]);
    // A filter naming a supplier or feature that does not exist is refused, not answered empty.
    let mut viewer = stack.client("viewer");
    for (request, reason) in [
        (
            pb::ListOptOutsRequest {
                supplier: "suppliers/emiss".into(),
                ..Default::default()
            },
            "SUPPLIER_NOT_FOUND",
        ),
        (
            pb::ListOptOutsRequest {
                feature: "features/no-such-feature".into(),
                ..Default::default()
            },
            "FEATURE_NOT_FOUND",
        ),
    ] {
        let refused = viewer.list_opt_outs(request).await.expect_err("unknown name");
        assert_refused(&refused, tonic::Code::NotFound, reason, "an unknown filter");
    }
    let restore = audit_events(&stack)
        .await
        .into_iter()
        .find(|e| e.action == "restore-opt-outs")
        .expect("the restore is audited");
    assert_eq!(restore.target, "suppliers/emis");
    assert!(restore.reason.contains("3 opt-outs"), "{}", restore.reason);
    suppliers_until(&stack, WITHIN, "emis's changes read", |list| {
        list.iter()
            .any(|s| s.name == "suppliers/emis" && s.opt_out_change == 3 && s.held_practices == 0)
    })
    .await;

    // emis's own audit log has one event per restored record (read with emis stopped: a
    // SQLite store is one process's).
    let url = stack.suppliers["emis"].0.config(None).database_url;
    stack.stop_supplier("emis").await;
    let store = SqlSupplierStore::open(&url).await.expect("open emis's store");
    let events = store.list_audit(0, 1_000).await.expect("audit");
    let restored_events: Vec<_> = events
        .iter()
        .filter(|e| e.draft.reason.starts_with("restored from the national register"))
        .collect();
    assert_eq!(restored_events.len(), 3, "{events:?}");
    assert!(restored_events.iter().any(|e| e.draft.target == c));
    assert_eq!(
        rollout_core::audit::verify_chain(&events),
        Ok(events.len() as u64)
    );
    store.close().await;
    stack.stop().await;
    if let Stores::Postgres { emis, coordinator } = stores {
        emis.drop().await;
        coordinator.drop().await;
    }
}

#[tokio::test]
async fn a_supplier_that_lost_its_sqlite_store_gets_its_opt_outs_back_and_answers_as_before() {
    a_supplier_that_lost_its_store_answers_as_before(None).await;
}

#[tokio::test]
async fn a_supplier_that_lost_its_postgres_store_gets_its_opt_outs_back_and_answers_as_before() {
    let Some(emis) = pg_database().await else { return };
    let Some(coordinator) = pg_database().await else {
        return;
    };
    a_supplier_that_lost_its_store_answers_as_before(Some((emis, coordinator))).await;
}

/// A supplier map that places `moved` practices at `to`, written in the test's directory.
fn moved_map(stack: &Stack, moved: &[&str], to: &str) -> PathBuf {
    let (_, map) = reference_files();
    let text = std::fs::read_to_string(map).expect("read the supplier map");
    let lines: Vec<String> = text
        .lines()
        .map(|line| match line.split_once(',') {
            Some((ods, _)) if moved.contains(&ods) => format!("{ods},{to}"),
            _ => line.to_owned(),
        })
        .collect();
    let path = stack.dir.path().join("moved-suppliers.csv");
    std::fs::write(&path, lines.join("\n") + "\n").expect("write the moved map");
    path
}

/// Restarts a supplier on its store and port with the supplier map `map`.
async fn restart_with_map(stack: &mut Stack, id: &str, map: &Path) {
    stack.stop_supplier(id).await;
    let entry = stack.suppliers.get_mut(id).expect("supplier");
    let mut config = entry.0.config(None);
    config.estate = Some((reference_files().0, map.to_owned()));
    let running = Running::start_at(entry.2, |listener, health, stop| async move {
        rollout_supplier::serve(
            config,
            rollout_net::server::Listeners::new(listener, Some(health)),
            async {
                let _ = stop.await;
            },
        )
        .await
    })
    .await;
    entry.1 = Some(running);
}

/// Starts the coordinator (on its port) with the supplier map `map`.
async fn start_coordinator_with_map(stack: &mut Stack, map: &Path) {
    let mut config = stack.coordinator_config();
    config.estate.1 = map.to_owned();
    let running = Running::start_at(stack.coordinator_addr, |listener, health, stop| async move {
        rollout_coordinator::serve(
            config,
            rollout_net::server::Listeners::new(listener, Some(health)),
            async {
                let _ = stop.await;
            },
        )
        .await
    })
    .await;
    stack.coordinator = Some(running);
}

/// A live national feature; `opted_out` opts out at emis (read into the register); then the
/// practices `moved` move from emis to tpp in the estate: both suppliers restart on the new
/// map while the coordinator is stopped, so tpp holds them until the coordinator is back.
async fn practices_move_to_tpp(
    moved: &[&str],
    opted_out: Option<&str>,
) -> (Stack, PathBuf, Option<pb::PracticeOptOut>) {
    let mut stack = Stack::start(None).await;
    feature_live(&stack).await;
    let record = match opted_out {
        Some(ods) => {
            let record = opt_out(
                &stack,
                "emis",
                ods,
                "not until the new year",
                "letter from the partners",
            )
            .await;
            register_until(&stack, pb::ListOptOutsRequest::default(), "the opt-out", |r| {
                r.len() == 1
            })
            .await;
            Some(record)
        }
        None => None,
    };
    stack.stop_coordinator().await;
    let map = moved_map(&stack, moved, "tpp");
    restart_with_map(&mut stack, "emis", &map).await;
    restart_with_map(&mut stack, "tpp", &map).await;
    (stack, map, record)
}

/// Polls tpp until `ods` answers `want`.
async fn tpp_answers(stack: &Stack, ods: &str, want: (S, R)) -> pb::PracticeFeature {
    let end = Instant::now() + WITHIN;
    loop {
        let p = answer(stack, "tpp", ods).await;
        if (p.state(), p.reason()) == want {
            return p;
        }
        assert!(
            Instant::now() < end,
            "tpp does not answer {want:?} for {ods} within {WITHIN:?}: {p:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_practice_that_moves_supplier_takes_its_opt_out_and_is_held_until_the_coordinator_answers() {
    let (mut stack, map, record) = practices_move_to_tpp(&[EMIS_A], Some(EMIS_A)).await;
    let record = record.expect("the opt-out");

    // With no coordinator, tpp holds the practice that joined it: off, whatever the rules.
    let held = answer(&stack, "tpp", EMIS_A).await;
    assert_eq!(
        (held.state(), held.reason()),
        (S::Disabled, R::AwaitingOptOutCheck)
    );
    assert!(
        held.explanation.contains("national register"),
        "{}",
        held.explanation
    );
    let state = control(&stack, "tpp")
        .get_sync_state(pb::GetSyncStateRequest::default())
        .await
        .expect("sync state")
        .into_inner();
    assert_eq!(state.held_practices, [EMIS_A]);
    // Its other practices answer by the rules.
    let other = answer(&stack, "tpp", &stack.practice_of("tpp")).await;
    assert_eq!((other.state(), other.reason()), (S::Enabled, R::Live));

    // The coordinator sends the register's record with the practice: opted out at tpp, the
    // record as the practice left it, marked transferred from emis.
    start_coordinator_with_map(&mut stack, &map).await;
    tpp_answers(&stack, EMIS_A, (S::Disabled, R::OptedOut)).await;
    let at_tpp = opt_outs_at(&stack, "tpp").await;
    assert_eq!(at_tpp.len(), 1);
    assert_eq!(said(&at_tpp[0]), said(&record));
    assert_eq!(at_tpp[0].origin(), pb::practice_opt_out::Origin::Transferred);
    assert_eq!(at_tpp[0].origin_supplier, "suppliers/emis");

    // The register holds it as tpp's, and the coordinator's audit log shows the move.
    register_until(
        &stack,
        pb::ListOptOutsRequest::default(),
        "the record at tpp",
        |r| r.len() == 1 && r[0].supplier == "suppliers/tpp",
    )
    .await;
    let (_, counts) = register(
        &stack,
        pb::ListOptOutsRequest {
            practice: EMIS_A.to_lowercase(),
            feature: feature_name(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(counts, [count("tpp", 1, 0)]);
    let moved = audit_events(&stack)
        .await
        .into_iter()
        .find(|e| e.action == "transfer-opt-outs")
        .expect("the move is audited");
    assert_eq!(moved.target, format!("practices/{EMIS_A}"));
    assert_eq!(
        moved.reason,
        format!(
            "practices/{EMIS_A} joined suppliers/tpp from suppliers/emis; opt-out transferred (features/{FEATURE})"
        )
    );
    suppliers_until(&stack, WITHIN, "tpp holding nobody", |list| {
        list.iter()
            .any(|s| s.name == "suppliers/tpp" && s.held_practices == 0)
    })
    .await;
    stack.stop().await;
}

#[tokio::test]
async fn a_moved_practice_with_no_opt_out_is_released_and_answers_by_the_rules() {
    let (mut stack, map, _) = practices_move_to_tpp(&[EMIS_B], None).await;
    let held = answer(&stack, "tpp", EMIS_B).await;
    assert_eq!(
        (held.state(), held.reason()),
        (S::Disabled, R::AwaitingOptOutCheck)
    );
    start_coordinator_with_map(&mut stack, &map).await;
    tpp_answers(&stack, EMIS_B, (S::Enabled, R::Live)).await;
    assert!(opt_outs_at(&stack, "tpp").await.is_empty());
    assert!(
        !audit_events(&stack)
            .await
            .iter()
            .any(|e| e.action == "transfer-opt-outs"),
        "nothing to transfer, nothing audited as moved"
    );
    stack.stop().await;
}
