//! System benchmarks with real servers and real mutual TLS, in one run:
//! 1. read throughput of GetPracticeFeature against a bare tonic unary service (grpc.health
//!    Check) behind the same TLS acceptor and HTTP/2 settings, same load shape;
//! 2. propagation of a halt through the coordinator to four suppliers (SQLite, durable);
//! 3. a halt listing every active practice;
//! 4. watch fan-out: many WatchPracticeFeatures streams on one supplier process, one halt.
//!
//! Run: `cargo bench -p rollout-tests --bench system` (add `-- --smoke` for a short run).
//! It prints figures; it asserts nothing about time.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use rollout_net::tls::{self, TlsFiles};
use rollout_proto::v1::{
    self as pb, control_service_client::ControlServiceClient,
    coordinator_service_client::CoordinatorServiceClient, toggle_service_client::ToggleServiceClient,
};
use tokio::{net::TcpListener, sync::oneshot};
use tonic::transport::Channel;

const FEATURE: &str = "prospective-record-access";
const SUPPLIERS: [&str; 4] = ["emis", "tpp", "cegedim", "microtest"];

struct Sizes {
    read_seconds: u64,
    connections: usize,
    concurrency: usize,
    halts: usize,
    watchers: usize,
}

fn data() -> (PathBuf, PathBuf) {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data");
    (d.join("epraccur.csv"), d.join("gp-system-suppliers.csv"))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn channel(pki: &Path, who: &str, addr: SocketAddr) -> Channel {
    let config = tls::client_config(&TlsFiles::from_pki_dir(pki, who), None).expect("client config");
    tls::channel(&format!("localhost:{}", addr.port()), config).expect("channel")
}

fn policy(dir: &Path, name: &str, lines: &[(&str, &str)]) -> PathBuf {
    let path = dir.join(name);
    let body: String = lines
        .iter()
        .map(|(id, role)| format!("\"{id}\" = [\"{role}\"]\n"))
        .collect();
    std::fs::write(&path, format!("[identities]\n{body}")).expect("policy");
    path
}

/// Starts a supplier in-process; returns its address and a stop handle.
async fn supplier(dir: &Path, pki: &Path, id: &str) -> (SocketAddr, oneshot::Sender<()>) {
    let backend = format!("spiffe://gprollout.test/supplier/{id}/backend");
    let config = rollout_supplier::Config {
        supplier: id.parse().expect("id"),
        tls: TlsFiles::from_pki_dir(pki, &format!("supplier-{id}")),
        policy: policy(
            dir,
            &format!("policy-{id}.toml"),
            &[
                (&backend, "backend"),
                ("spiffe://gprollout.test/coordinator", "coordinator"),
            ],
        ),
        database_url: format!("sqlite://{}", dir.join(format!("{id}.db")).display()),
        estate: Some(data()),
        freeze_reason: None,
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel();
    tokio::spawn(rollout_supplier::serve(config, listener, None, async {
        let _ = stopped.await;
    }));
    (addr, stop)
}

fn command(sequence: u64, id: &str, action: rollout_core::Action) -> pb::Command {
    rollout_net::wire::command_pb(&rollout_core::Command {
        id: id.parse().expect("id"),
        sequence,
        feature: FEATURE.parse().expect("key"),
        action,
        reason: "benchmark".into(),
        requester: "bench".into(),
        issued_at: std::time::SystemTime::now(),
        approved_by: vec![],
    })
}

async fn make_live(control: &mut ControlServiceClient<Channel>) {
    for c in [
        command(
            1,
            "define",
            rollout_core::Action::CreateFeature(rollout_core::FeatureDef {
                key: FEATURE.parse().expect("key"),
                description: String::new(),
                fail_mode: rollout_core::FailMode::Static,
                approvals_required: 1,
            }),
        ),
        command(
            2,
            "golive",
            rollout_core::Action::GoLive {
                scope: rollout_core::Scope::National,
                effective_at: None,
            },
        ),
    ] {
        control
            .apply_command(pb::ApplyCommandRequest { command: Some(c) })
            .await
            .expect("apply");
    }
}

/// Runs `call` from `connections` x `concurrency` workers for `seconds`; returns (rps, sorted latencies).
async fn load<F, Fut>(
    connections: usize,
    concurrency: usize,
    seconds: u64,
    make: impl Fn() -> F,
) -> (f64, Vec<Duration>)
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..connections {
        for _ in 0..concurrency {
            let mut call = make();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                while Instant::now() < end {
                    let t = Instant::now();
                    assert!(call().await, "a call failed under load");
                    lat.push(t.elapsed());
                }
                lat
            }));
        }
    }
    let start = Instant::now();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("worker"));
    }
    let rps = all.len() as f64 / start.elapsed().as_secs_f64();
    all.sort();
    (rps, all)
}

async fn read_throughput(dir: &Path, pki: &Path, s: &Sizes) {
    let (addr, _stop) = supplier(dir, pki, "emis").await;
    make_live(&mut ControlServiceClient::new(channel(pki, "coordinator", addr))).await;
    // The baseline: a bare tonic server with the same TLS acceptor and HTTP/2 settings, serving
    // only grpc.health (a trivial unary handler), with no role layer.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let bare = listener.local_addr().expect("addr");
    let tls_config =
        tls::ReloadingServerConfig::load(TlsFiles::from_pki_dir(pki, "supplier-emis")).expect("tls");
    let (_reporter, health) = rollout_net::server::health();
    tokio::spawn(
        rollout_net::server::builder()
            .add_service(health)
            .serve_with_incoming(tls::incoming(listener, tls_config)),
    );

    let channels: Vec<Channel> = (0..s.connections)
        .map(|_| channel(pki, "backend-emis", addr))
        .collect();
    let bare_channels: Vec<Channel> = (0..s.connections)
        .map(|_| channel(pki, "backend-emis", bare))
        .collect();
    let name = format!("practices/L56296/features/{FEATURE}");
    let next = std::sync::atomic::AtomicUsize::new(0);
    let next = Arc::new(next);
    let (rps, lat) = load(s.connections, s.concurrency, s.read_seconds, || {
        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let c = ToggleServiceClient::new(channels[i / s.concurrency % channels.len()].clone());
        let name = name.clone();
        move || {
            let req = pb::GetPracticeFeatureRequest { name: name.clone() };
            let mut c = c.clone();
            async move { c.get_practice_feature(req).await.is_ok() }
        }
    })
    .await;
    next.store(0, std::sync::atomic::Ordering::Relaxed);
    let (bare_rps, bare_lat) = load(s.connections, s.concurrency, s.read_seconds, || {
        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let c = tonic_health::pb::health_client::HealthClient::new(
            bare_channels[i / s.concurrency % bare_channels.len()].clone(),
        );
        move || {
            let mut c = c.clone();
            async move {
                c.check(tonic_health::pb::HealthCheckRequest::default())
                    .await
                    .is_ok()
            }
        }
    })
    .await;
    println!(
        "1. read throughput ({} connections x {} in flight, {} s each, mutual TLS)",
        s.connections, s.concurrency, s.read_seconds
    );
    println!(
        "   GetPracticeFeature  {rps:>9.0} rps   p50 {}   p99 {}",
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99))
    );
    println!(
        "   bare tonic unary    {bare_rps:>9.0} rps   p50 {}   p99 {}",
        ms(percentile(&bare_lat, 0.5)),
        ms(percentile(&bare_lat, 0.99))
    );
    println!("   ratio {:.2} (target >= 0.85)", rps / bare_rps);
}

async fn coordinator_stack(
    dir: &Path,
    pki: &Path,
) -> (
    CoordinatorServiceClient<Channel>,
    CoordinatorServiceClient<Channel>,
    Vec<(String, SocketAddr)>,
) {
    let mut suppliers = Vec::new();
    for id in SUPPLIERS {
        let (addr, stop) = supplier(dir, pki, id).await;
        std::mem::forget(stop);
        suppliers.push((id.to_owned(), addr));
    }
    let config = rollout_coordinator::Config {
        tls: TlsFiles::from_pki_dir(pki, "coordinator"),
        supplier_ca: pki.join("ca.pem"),
        policy: policy(
            dir,
            "policy-coordinator.toml",
            &[
                ("spiffe://gprollout.test/operator/alice", "operator"),
                ("spiffe://gprollout.test/operator/bob", "approver"),
            ],
        ),
        suppliers: suppliers
            .iter()
            .map(|(id, addr)| rollout_coordinator::SupplierEndpoint {
                id: id.parse().expect("id"),
                endpoint: format!("localhost:{}", addr.port()),
                identity: format!("spiffe://gprollout.test/supplier/{id}"),
            })
            .collect(),
        database_url: format!("sqlite://{}", dir.join("coordinator.db").display()),
        estate: data(),
        heartbeat: Duration::from_secs(2),
        stale_after: Duration::from_secs(30),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(rollout_coordinator::serve(
        config,
        listener,
        None,
        std::future::pending(),
    ));
    let mut alice = CoordinatorServiceClient::new(channel(pki, "alice", addr));
    let bob = CoordinatorServiceClient::new(channel(pki, "bob", addr));
    alice
        .create_feature(pb::CreateFeatureRequest {
            feature_id: FEATURE.into(),
            feature: Some(pb::Feature {
                fail_mode: pb::FailMode::Static.into(),
                ..Default::default()
            }),
            reason: "benchmark".into(),
            request_id: String::new(),
        })
        .await
        .expect("create");
    let go = alice
        .schedule_go_live(pb::ScheduleGoLiveRequest {
            name: format!("features/{FEATURE}"),
            scope: Some(pb::Scope {
                target: Some(pb::scope::Target::National(pb::scope::National {})),
            }),
            reason: "benchmark".into(),
            ..Default::default()
        })
        .await
        .expect("go-live")
        .into_inner();
    bob.clone()
        .approve_command(pb::ApproveCommandRequest {
            name: go.name.clone(),
            ..Default::default()
        })
        .await
        .expect("approve");
    wait_delivered(&mut alice.clone(), &go.name).await;
    (alice, bob, suppliers)
}

async fn wait_delivered(c: &mut CoordinatorServiceClient<Channel>, name: &str) {
    let mut stream = c
        .watch_command(pb::WatchCommandRequest { name: name.into() })
        .await
        .expect("watch")
        .into_inner();
    while let Some(u) = stream.message().await.expect("stream") {
        if u.complete {
            return;
        }
    }
}

fn practice_list(codes: Vec<String>) -> Option<pb::Scope> {
    Some(pb::Scope {
        target: Some(pb::scope::Target::Practices(pb::scope::PracticeList {
            practices: codes,
        })),
    })
}

async fn propagation_and_large_scope(dir: &Path, pki: &Path, s: &Sizes) {
    let (mut alice, _bob, suppliers) = coordinator_stack(dir, pki).await;
    let estate = rollout_store::reference::read_estate(&data().0, &data().1).expect("estate");
    let active: Vec<_> = estate
        .practices()
        .filter(|p| p.status == rollout_core::PracticeStatus::Active)
        .collect();
    let mut backends: Vec<(String, ToggleServiceClient<Channel>)> = suppliers
        .iter()
        .map(|(id, addr)| {
            (
                id.clone(),
                ToggleServiceClient::new(channel(pki, "coordinator", *addr)),
            )
        })
        .collect();
    let mut times = Vec::new();
    for i in 0..s.halts {
        // One practice of each supplier (the smaller suppliers' come round again after 178).
        let codes: Vec<String> = SUPPLIERS
            .iter()
            .map(|sup| {
                let theirs: Vec<_> = active.iter().filter(|p| p.supplier.as_str() == *sup).collect();
                theirs[i % theirs.len()].ods.to_string()
            })
            .collect();
        let t = Instant::now();
        let sequence = alice
            .halt_feature(pb::HaltFeatureRequest {
                name: format!("features/{FEATURE}"),
                scope: practice_list(codes.clone()),
                reason: "benchmark".into(),
                ..Default::default()
            })
            .await
            .expect("halt")
            .into_inner()
            .sequence;
        // Until every supplier answers DISABLED under this halt for its practice (polled from the
        // start, so the figure is the time to the suppliers' answers, not to the coordinator's
        // bookkeeping).
        for ((_, b), code) in backends.iter_mut().zip(&codes) {
            loop {
                let p = b
                    .get_practice_feature(pb::GetPracticeFeatureRequest {
                        name: format!("practices/{code}/features/{FEATURE}"),
                    })
                    .await
                    .expect("answer")
                    .into_inner();
                if p.applied_sequence >= sequence && p.state() == pb::practice_feature::State::Disabled {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        times.push(t.elapsed());
    }
    times.sort();
    println!(
        "2. propagation: a halt through the coordinator until four suppliers (SQLite, synchronous=FULL) answer DISABLED, {} halts",
        s.halts
    );
    println!(
        "   p50 {}   p99 {}   max {}   (targets p50 <= 10 ms, p99 <= 50 ms)",
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.99)),
        ms(percentile(&times, 1.0))
    );

    let all: Vec<String> = active.iter().map(|p| p.ods.to_string()).collect();
    let t = Instant::now();
    let h = alice
        .halt_feature(pb::HaltFeatureRequest {
            name: format!("features/{FEATURE}"),
            scope: practice_list(all.clone()),
            reason: "benchmark".into(),
            ..Default::default()
        })
        .await
        .expect("halt")
        .into_inner();
    wait_delivered(&mut alice, &h.name).await;
    println!(
        "3. large scope: a halt listing all {} active practices, applied by every supplier: {} (target <= 500 ms)",
        all.len(),
        ms(t.elapsed())
    );
}

fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

async fn watch_fan_out(dir: &Path, pki: &Path, s: &Sizes) {
    let bin = std::env::current_exe()
        .expect("exe")
        .parent()
        .and_then(Path::parent)
        .expect("dir")
        .join("rollout-supplier");
    assert!(
        bin.is_file(),
        "build the binaries first: cargo build --release --bins"
    );
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let policy = policy(
        dir,
        "policy-watch.toml",
        &[
            ("spiffe://gprollout.test/supplier/emis/backend", "backend"),
            ("spiffe://gprollout.test/coordinator", "coordinator"),
        ],
    );
    let (practices, map) = data();
    let mut child = tokio::process::Command::new(bin)
        .args([
            "--supplier-id",
            "emis",
            "--listen",
            &addr.to_string(),
            "--health-listen",
            "off",
        ])
        .arg("--tls-ca")
        .arg(pki.join("ca.pem"))
        .arg("--tls-cert")
        .arg(pki.join("supplier-emis.pem"))
        .arg("--tls-key")
        .arg(pki.join("supplier-emis-key.pem"))
        .arg("--policy")
        .arg(policy)
        .args([
            "--database-url",
            &format!("sqlite://{}", dir.join("watch.db").display()),
        ])
        .arg("--practice-file")
        .arg(practices)
        .arg("--supplier-map")
        .arg(map)
        .env("ROLLOUT_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("start rollout-supplier");
    let mut control = ControlServiceClient::new(channel(pki, "coordinator", addr));
    let start = Instant::now();
    loop {
        if control
            .get_sync_state(pb::GetSyncStateRequest::default())
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the supplier did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    make_live(&mut control).await;
    let estate = rollout_store::reference::read_estate(&data().0, &data().1).expect("estate");
    let codes: Vec<String> = estate
        .practices()
        .filter(|p| p.supplier.as_str() == "emis" && p.status == rollout_core::PracticeStatus::Active)
        .map(|p| p.ods.to_string())
        .collect();
    let connections: Vec<Channel> = (0..100).map(|_| channel(pki, "backend-emis", addr)).collect();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(s.watchers);
    let (go_tx, go_rx) = tokio::sync::watch::channel::<Option<Instant>>(None);
    let mut tasks = Vec::new();
    for i in 0..s.watchers {
        let mut client = ToggleServiceClient::new(connections[i % connections.len()].clone());
        let code = codes[i % codes.len()].clone();
        let (ready, go) = (ready_tx.clone(), go_rx.clone());
        tasks.push(tokio::spawn(async move {
            let mut stream = client
                .watch_practice_features(pb::WatchPracticeFeaturesRequest {
                    feature: format!("features/{FEATURE}"),
                    practices: vec![code],
                    start_version: 0,
                })
                .await
                .expect("watch")
                .into_inner();
            loop {
                let m = stream.message().await.expect("stream").expect("message");
                if m.event_type() == pb::watch_practice_features_response::EventType::SnapshotComplete {
                    break;
                }
            }
            let _ = ready.send(()).await;
            loop {
                let m = stream.message().await.expect("stream").expect("message");
                if m.practice_features
                    .iter()
                    .any(|p| p.state() == pb::practice_feature::State::Disabled)
                {
                    let t0 = go.borrow().expect("the halt was sent");
                    return t0.elapsed();
                }
            }
        }));
    }
    for _ in 0..s.watchers {
        ready_rx.recv().await.expect("ready");
    }
    let t0 = Instant::now();
    go_tx.send_replace(Some(t0));
    control
        .apply_command(pb::ApplyCommandRequest {
            command: Some(command(
                3,
                "halt",
                rollout_core::Action::Halt {
                    scope: rollout_core::Scope::National,
                },
            )),
        })
        .await
        .expect("halt");
    let mut times = Vec::new();
    for t in tasks {
        times.push(t.await.expect("watcher"));
    }
    times.sort();
    let rss = peak_rss_mib(child.id().expect("pid"));
    println!(
        "4. watch fan-out: {} streams over 100 connections on one supplier process, one national halt",
        s.watchers
    );
    println!(
        "   received p50 {}   p99 {}   all {}   (target p99 <= 150 ms)",
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.99)),
        ms(percentile(&times, 1.0))
    );
    println!("   supplier peak RSS {rss:.0} MiB (target <= 200 MiB)");
    let _ = child.kill().await;
}

fn main() {
    let smoke = std::env::args().any(|a| a == "--smoke");
    let sizes = if smoke {
        Sizes {
            read_seconds: 1,
            connections: 2,
            concurrency: 8,
            halts: 10,
            watchers: 200,
        }
    } else {
        Sizes {
            read_seconds: 10,
            connections: 4,
            concurrency: 64,
            halts: 200,
            watchers: 10_000,
        }
    };
    rollout_net::tls::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = dir.path().join("pki");
        rolloutctl::pki::init(&pki, false).expect("pki");
        println!(
            "GP Rollout Control system benchmarks{} ({} cores)",
            if smoke { " (smoke run)" } else { "" },
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        let sub = |name: &str| {
            let d = dir.path().join(name);
            std::fs::create_dir_all(&d).expect("dir");
            d
        };
        read_throughput(&sub("read"), &pki, &sizes).await;
        propagation_and_large_scope(&sub("propagation"), &pki, &sizes).await;
        watch_fan_out(&sub("watch"), &pki, &sizes).await;
    });
}
