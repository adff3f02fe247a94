//! A coordinator's start-up time, memory and resync snapshot time on a long history: 200 halts
//! of 6,400 practice codes each (40 of them lifted, or `COORDINATOR_MEASURE_LIFTED`), every
//! delivery settled. Ignored: run by
//! hand, one process per step, with `COORDINATOR_MEASURE_DB` naming a SQLite file:
//!
//! ```text
//! cargo test -p rollout-coordinator --lib measure::build -- --ignored --exact --nocapture
//! cargo test -p rollout-coordinator --lib measure::load -- --ignored --exact --nocapture
//! ```
//!
//! It uses only calls that the coordinator had before the model stopped holding the history,
//! so the same steps measure both versions.

use std::{sync::Arc, time::Duration};

use rollout_core::{
    Action, CommandId, Estate, FailMode, FeatureDef, FeatureKey, OdsCode, Scope, SupplierId,
    audit::{AuditDraft, AuditOutcome},
};
use rollout_net::wire;
use rollout_store::coordinator::SqlCoordinatorStore;

use crate::coordinator::{Core, SupplierEndpoint};

const HALTS: usize = 200;
const CODES: usize = 6_400;
/// How many of the halts are lifted, unless `COORDINATOR_MEASURE_LIFTED` says otherwise.
const LIFTED: usize = 40;

fn audit() -> AuditDraft {
    AuditDraft {
        identity: "measure".into(),
        action: "measure".into(),
        target: String::new(),
        outcome: AuditOutcome::Accepted,
        reason: String::new(),
        request_id: String::new(),
        ..rollout_core::audit::AuditDraft::default()
    }
}

fn suppliers() -> Vec<SupplierEndpoint> {
    ["emis", "tpp"]
        .iter()
        .map(|s| SupplierEndpoint {
            id: SupplierId::parse(s).expect("id"),
            endpoint: format!("{s}.example:443"),
            identity: s.to_string(),
        })
        .collect()
}

async fn open() -> (SqlCoordinatorStore, Arc<Core>) {
    let path = std::env::var("COORDINATOR_MEASURE_DB").expect("COORDINATOR_MEASURE_DB");
    let store = SqlCoordinatorStore::open(&format!("sqlite://{path}"))
        .await
        .expect("open");
    let core = Core::load(
        Arc::new(store.clone()),
        Arc::new(Estate::default()),
        suppliers(),
        Duration::from_secs(30),
    )
    .await
    .expect("load");
    (store, core)
}

/// A figure of `/proc/self/status` (`VmRSS:`, `VmHWM:`) in MiB.
fn status_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

#[tokio::test]
#[ignore = "a measurement, run by hand"]
async fn build() {
    let (store, core) = open().await;
    let key = FeatureKey::parse("long-history").expect("key");
    let def = FeatureDef {
        key: key.clone(),
        description: String::new(),
        fail_mode: FailMode::Static,
        approvals_required: 1,
    };
    core.create_feature(&"alice".into(), def, "define".into(), None, audit())
        .await
        .expect("define");
    let mut halts: Vec<CommandId> = Vec::new();
    for i in 0..HALTS {
        let codes = (0..CODES)
            .map(|j| OdsCode::parse(&format!("Y{:05}", (i * 37 + j) % 99_999)).expect("ods"))
            .collect();
        let scope = Scope::Practices(Arc::new(codes));
        let c = core
            .issue(
                &"alice".into(),
                key.clone(),
                Action::Halt { scope },
                "measure".into(),
                false,
                None,
                audit(),
            )
            .await
            .expect("halt");
        halts.push(wire::command_name("name", &c.name).expect("name"));
    }
    let lifted = std::env::var("COORDINATOR_MEASURE_LIFTED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(LIFTED);
    for h in halts.iter().take(lifted) {
        let c = core
            .issue(
                &"alice".into(),
                key.clone(),
                Action::Resume {
                    halts: vec![h.clone()],
                },
                "measure".into(),
                false,
                None,
                audit(),
            )
            .await
            .expect("resume");
        let id = wire::command_name("name", &c.name).expect("name");
        core.approve(&"bob".into(), &|_: &str| None, &id, String::new(), None, audit())
            .await
            .expect("approve");
    }
    let last = core.read(|m| m.last_sequence()).await;
    for s in suppliers() {
        let outcomes = (1..=last).map(|q| (q, None, None)).collect();
        core.record_applied(&s.id, outcomes, last).await.expect("record");
    }
    store.close().await;
    println!("built: {last} sequences");
}

#[tokio::test]
#[ignore = "a measurement, run by hand"]
async fn load() {
    let (rss, hwm) = (status_mib("VmRSS:"), status_mib("VmHWM:"));
    let started = std::time::Instant::now();
    let (_store, core) = open().await;
    let took = started.elapsed();
    let (rss_after, hwm_after) = (status_mib("VmRSS:"), status_mib("VmHWM:"));
    let last = core.read(|m| m.last_sequence()).await;
    let emis = SupplierId::parse("emis").expect("id");
    let mut snapshots = Vec::new();
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let s = core
            .snapshot(&emis, 0, false)
            .await
            .expect("snapshot")
            .expect("some");
        snapshots.push((started.elapsed(), s.chunks.iter().map(Vec::len).sum::<usize>()));
    }
    println!(
        "load of {last} sequences: {:.0} ms; RSS {rss:.0} -> {rss_after:.0} MiB (+{:.0}); peak {hwm:.0} -> {hwm_after:.0} MiB",
        took.as_secs_f64() * 1e3,
        rss_after - rss,
    );
    for (took, commands) in snapshots {
        println!(
            "snapshot for a wiped supplier: {commands} commands in {:.0} ms",
            took.as_secs_f64() * 1e3
        );
    }
}
