//! Traces (docs/OBSERVABILITY.md, "Traces"): a real coordinator and two real suppliers, each a
//! process with `--otlp-endpoint` set to a collector in the test (`collector.rs`), mutual TLS
//! with certificates made at test time. An operator's HaltFeature, sent with a W3C
//! `traceparent` of its own, is one trace: the HaltFeature span (the operator's span its
//! parent) with its commit, a `dispatch` to each supplier, and at each supplier an ApplyCommand
//! whose parent is that dispatch, with its store commit and publication to watchers. The
//! coordinator batches its spans for ten minutes, so they reach the collector only because its
//! graceful exit sends what is queued. A bad endpoint is refused at start, and a collector that
//! is down costs no call anything and is told in the log once.

mod collector;

use std::{path::Path, time::Duration};

use rollout_core::Scope;
use rollout_proto::v1::{
    self as pb, control_service_client::ControlServiceClient,
    coordinator_service_client::CoordinatorServiceClient,
};
use tonic::transport::Channel;

use self::collector::{CLIENT, Collector, Got, SERVER, children, descends, of_command};
use crate::{
    stack::national,
    support::{
        FEATURE, channel_as, coordinator_command, define, feature_name, go_live, halt,
        process::Process,
        supplier::{SupplierFiles, supplier_files},
    },
};

const SUPPLIERS: [&str; 2] = ["emis", "tpp"];

/// How long the whole trace may take to arrive, at most.
const WITHIN: Duration = Duration::from_secs(60);

/// A supplier process exporting to `endpoint` every 100 ms; its mutual-TLS address.
async fn supplier(files: &SupplierFiles, endpoint: &str) -> (Process, std::net::SocketAddr) {
    let mut command = files.command_at("127.0.0.1:0", "127.0.0.1:0");
    command
        .args(["--otlp-endpoint", endpoint])
        .env("OTEL_BSP_SCHEDULE_DELAY", "100");
    let mut process = Process::spawn(command);
    let (addr, _) = process.addrs("supplier service listening").await;
    (process, addr)
}

/// A coordinator process delivering to `suppliers` (name, address), exporting to `endpoint`
/// only when a batch is full or at its exit (a ten-minute schedule).
async fn coordinator(
    dir: &Path,
    pki: &Path,
    suppliers: &[(&str, std::net::SocketAddr)],
    endpoint: &str,
) -> Process {
    let policy = dir.join("policy.toml");
    std::fs::write(
        &policy,
        "[identities]\n\"spiffe://gprollout.test/operator/alice\" = [\"operator\", \"approver\"]\n",
    )
    .expect("write policy");
    let file = dir.join("suppliers.toml");
    let entries: String = suppliers
        .iter()
        .map(|(name, addr)| {
            format!(
                "[[supplier]]\nid = \"{name}\"\nendpoint = \"localhost:{}\"\nidentity = \"spiffe://gprollout.test/supplier/{name}\"\n",
                addr.port()
            )
        })
        .collect();
    std::fs::write(&file, entries).expect("write suppliers");
    let database_url = format!("sqlite://{}", dir.join("coordinator.db").display());
    let mut command = coordinator_command(pki, &policy, &file, &database_url);
    command
        .args(["--health-listen", "127.0.0.1:0", "--shutdown-grace", "2s"])
        .args(["--otlp-endpoint", endpoint])
        .env("OTEL_BSP_SCHEDULE_DELAY", "600000");
    Process::spawn(command)
}

/// Defines the feature, then halts it nationally within the operator's trace `traceparent`;
/// returns the halt's command id.
async fn define_and_halt(alice: &mut CoordinatorServiceClient<Channel>, traceparent: &str) -> String {
    crate::stack::define_feature(alice).await;
    let mut request = tonic::Request::new(pb::HaltFeatureRequest {
        name: feature_name(),
        scope: Some(national()),
        reason: "a safety concern, traced".into(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().expect("ascii"));
    let halt = alice.halt_feature(request).await.expect("halt").into_inner();
    assert_eq!(halt.sequence, 2, "{halt:?}");
    halt.name
        .strip_prefix("commands/")
        .expect("a command name")
        .to_owned()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `supplier`'s ApplyCommand of command `id`, once its commit and publish spans are in too.
fn applied<'a>(seen: &'a [Got], supplier: &str, id: &'a str) -> Option<&'a Got> {
    of_command(seen, "ApplyCommand", id).find(|a| {
        a.supplier.as_deref() == Some(supplier)
            && children(seen, a, "commit").next().is_some()
            && children(seen, a, "publish").next().is_some()
    })
}

/// The halt `id` is one trace, continuing the operator's span `operator` in trace `trace`:
/// HaltFeature at the coordinator with its commit, and at each supplier an ApplyCommand whose
/// parent is the coordinator's `dispatch` to it, under HaltFeature.
fn assert_one_trace(seen: &[Got], id: &str, trace: &[u8], operator: &[u8]) {
    let repeated: Vec<&Got> = seen.iter().filter(|s| s.repeated > 0).collect();
    assert!(repeated.is_empty(), "each attribute once: {repeated:#?}");
    let call = of_command(seen, "HaltFeature", id).next().expect("HaltFeature");
    assert_eq!(call.service, "gprollout-coordinator", "{call:?}");
    assert_eq!(
        (call.trace_id.as_slice(), call.parent.as_slice()),
        (trace, operator)
    );
    assert_eq!(call.kind, SERVER, "{call:?}");
    assert_eq!(call.attr("gprollout.sequence"), Some("2"), "{call:?}");
    assert_eq!(call.attr("gprollout.feature"), Some(FEATURE), "{call:?}");
    assert_eq!(call.attr("rpc.grpc.status_code"), Some("0"), "{call:?}");
    assert!(
        children(seen, call, "commit").next().is_some(),
        "the coordinator's commit:\n{seen:#?}"
    );
    for supplier in SUPPLIERS {
        let apply = applied(seen, supplier, id).expect("ApplyCommand");
        assert_eq!(apply.service, "gprollout-supplier", "{apply:?}");
        assert_eq!(
            apply.trace_id, trace,
            "{supplier}'s ApplyCommand is in the operator's trace"
        );
        assert_eq!(apply.attr("gprollout.sequence"), Some("2"), "{apply:?}");
        assert_eq!(apply.attr("gprollout.supplier"), Some(supplier), "{apply:?}");
        let dispatch = collector::by_id(seen, &apply.trace_id, &apply.parent)
            .unwrap_or_else(|| panic!("{supplier}'s ApplyCommand has a parent seen:\n{seen:#?}"));
        assert_eq!(dispatch.name, "dispatch", "{supplier}: {dispatch:?}");
        assert_eq!(dispatch.kind, CLIENT, "{dispatch:?}");
        assert_eq!(dispatch.service, "gprollout-coordinator", "{dispatch:?}");
        assert_eq!(
            dispatch.attr("gprollout.supplier"),
            Some(supplier),
            "{dispatch:?}"
        );
        assert_eq!(dispatch.attr("gprollout.command_id"), Some(id), "{dispatch:?}");
        assert!(
            descends(seen, dispatch, call),
            "{supplier}'s dispatch is under HaltFeature:\n{seen:#?}"
        );
        assert!(descends(seen, apply, call));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_halt_is_one_trace_from_the_operator_through_dispatch_to_every_suppliers_apply_command() {
    rollout_net::tls::install_crypto_provider();
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = tmp.path().join("pki");
    rolloutctl::pki::init(&pki, false).expect("pki");
    let mut collector = Collector::start().await;
    let mut running = Vec::new();
    let mut addrs = Vec::new();
    for name in SUPPLIERS {
        let (process, addr) = supplier(&supplier_files(tmp.path(), &pki, name), &collector.endpoint).await;
        running.push(process);
        addrs.push((name, addr));
    }
    let mut coordinator = coordinator(tmp.path(), &pki, &addrs, &collector.endpoint).await;
    let (addr, _) = coordinator.addrs("coordinator listening").await;
    let mut alice = CoordinatorServiceClient::new(channel_as(&pki, "alice", addr));

    // The operator's own span: the HaltFeature call continues its trace.
    let trace: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
    let operator: [u8; 8] = std::array::from_fn(|_| fastrand::u8(1..));
    let id = define_and_halt(&mut alice, &format!("00-{}-{}-01", hex(&trace), hex(&operator))).await;

    collector
        .until(
            "ApplyCommand of the halt at every supplier, with its commit and publish",
            WITHIN,
            |seen| SUPPLIERS.iter().all(|s| applied(seen, s, &id).is_some()),
        )
        .await;
    let (status, _) = coordinator.stop("TERM", Duration::from_secs(10)).await;
    assert!(status.success(), "{status:?}\n{}", coordinator.log());
    collector
        .until("the coordinator's spans, sent at its exit", WITHIN, |seen| {
            of_command(seen, "HaltFeature", &id).next().is_some()
                && of_command(seen, "dispatch", &id).count() >= SUPPLIERS.len()
        })
        .await;

    assert_one_trace(&collector.seen, &id, &trace, &operator);
    drop(running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_endpoint_is_refused_at_start_and_a_collector_down_costs_no_call() {
    rollout_net::tls::install_crypto_provider();
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = tmp.path().join("pki");
    rolloutctl::pki::init(&pki, false).expect("pki");
    let files = supplier_files(tmp.path(), &pki, "emis");
    for bad in ["https://collector:4317", "collector:4317", "http://collector"] {
        let out = files
            .command_at("127.0.0.1:0", "off")
            .args(["--otlp-endpoint", bad])
            .output()
            .await
            .expect("run the supplier");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bad}: {stderr}");
        assert!(stderr.contains("invalid --otlp-endpoint"), "{bad}: {stderr}");
    }

    // A collector that is down: a port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let down = format!("http://127.0.0.1:{}", closed.local_addr().expect("addr").port());
    drop(closed);
    let mut command = files.command_at("127.0.0.1:0", "127.0.0.1:0");
    command
        .args(["--otlp-endpoint", &down])
        .env("OTEL_BSP_SCHEDULE_DELAY", "50");
    let mut process = Process::spawn(command);
    let (addr, _) = process.addrs("supplier service listening").await;
    let mut control = ControlServiceClient::new(channel_as(&pki, "coordinator", addr));
    let mut apply = async |command: pb::Command| {
        let started = std::time::Instant::now();
        control
            .apply_command(pb::ApplyCommandRequest {
                command: Some(command),
                ..Default::default()
            })
            .await
            .expect("applied whatever the collector");
        started.elapsed()
    };
    let mut slowest = apply(define(1, None)).await;
    slowest = slowest.max(apply(go_live(2, "go-live-2", Scope::National, None)).await);
    const TOLD: &str = "spans not exported";
    process.line(TOLD, WITHIN).await;
    slowest = slowest.max(apply(halt(3, "halt-3", Scope::National)).await);
    assert!(slowest < Duration::from_secs(5), "a call took {slowest:?}");
    let (status, _) = process.stop("TERM", Duration::from_secs(10)).await;
    assert!(status.success(), "{}", process.log());
    let log = process.log();
    assert_eq!(log.matches(TOLD).count(), 1, "told once, not per batch:\n{log}");
}
