//! System benchmarks with real servers and real mutual TLS, in one run:
//! 1. read throughput of GetPracticeFeature on a `rollout-supplier` process against a bare
//!    tonic unary echo server process behind the same TLS acceptor and HTTP/2 settings, with
//!    the same requests from the same load generator, in alternating rounds;
//! 2. propagation of a halt through the coordinator to four suppliers (SQLite, durable);
//! 3. a halt listing every active practice;
//! 4. watch fan-out: many WatchPracticeFeatures streams on one supplier process, one halt.
//!
//! On two or more cores the server under test runs on core 1 and the load generator on core 0
//! (parts 1 and 4). Run: `cargo build --release --bins && cargo bench -p rollout-tests --bench
//! system` (`-- --smoke` for a short run, `-- --only read|propagation|watch` for one part).
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
    rounds: usize,
    round: Duration,
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
            .apply_command(pb::ApplyCommandRequest {
                command: Some(c),
                ..Default::default()
            })
            .await
            .expect("apply");
    }
}

/// One side of the read comparison, summed over its rounds.
#[derive(Default)]
struct Side {
    calls: u64,
    seconds: f64,
    latencies: Vec<Duration>,
    server_cpu: f64,
}

impl Side {
    fn rps(&self) -> f64 {
        self.calls as f64 / self.seconds
    }
}

/// Runs `workers` closed-loop workers (each awaiting one call at a time) for `length`; returns
/// the calls made, the seconds taken and every latency.
async fn load<F, Fut>(
    workers: usize,
    length: Duration,
    make: impl Fn(usize) -> F,
) -> (u64, f64, Vec<Duration>)
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let start = Instant::now();
    let end = start + length;
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let mut call = make(w);
            tokio::spawn(async move {
                let mut lat = Vec::new();
                while Instant::now() < end {
                    let t = Instant::now();
                    assert!(call().await, "a call failed under load");
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("worker"));
    }
    (all.len() as u64, start.elapsed().as_secs_f64(), all)
}

/// CPU seconds (user + system, every thread) a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let ticks = *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    });
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses: utime and stime are the 14th
    // and 15th of the line.
    let after = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / ticks
}

/// Where the processes run. On two or more cores the server under test gets core 1 and this
/// process (the load generator) core 0 while it measures, so that the two never compete for a
/// core and the server's capacity, not the scheduler, sets the figure.
struct Pinning {
    cores: usize,
}

impl Pinning {
    fn detect() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let taskset = std::process::Command::new("taskset")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        Pinning {
            cores: if taskset { cores } else { 1 },
        }
    }

    fn describe(&self) -> &'static str {
        if self.cores >= 2 {
            "server on core 1, load generator on core 0"
        } else {
            "unpinned (one core, or no taskset)"
        }
    }

    /// A command for a server under test, on its own core when there is one.
    fn server(&self, program: &Path) -> tokio::process::Command {
        if self.cores >= 2 {
            let mut c = tokio::process::Command::new("taskset");
            c.args(["-c", "1"]).arg(program);
            c
        } else {
            tokio::process::Command::new(program)
        }
    }

    fn set_self(&self, cores: &str) {
        if self.cores >= 2 {
            let _ = std::process::Command::new("taskset")
                .args(["-a", "-p", "-c", cores, &std::process::id().to_string()])
                .stdout(std::process::Stdio::null())
                .status();
        }
    }

    /// Moves every thread of this process to core 0.
    fn load_generator(&self) {
        self.set_self("0");
    }

    /// Lets this process use every core again.
    fn release(&self) {
        self.set_self(&format!("0-{}", self.cores.saturating_sub(1)));
    }
}

/// The path of a binary built next to this benchmark.
fn binary(name: &str) -> PathBuf {
    let bin = std::env::current_exe()
        .expect("exe")
        .parent()
        .and_then(Path::parent)
        .expect("dir")
        .join(name);
    assert!(
        bin.is_file(),
        "build the binaries first: cargo build --release --bins"
    );
    bin
}

/// Starts a `rollout-supplier` process for EMIS on SQLite with the synthetic estate, waits until
/// it answers, and makes the feature live nationally.
async fn supplier_process(
    dir: &Path,
    pki: &Path,
    pin: &Pinning,
    log: &str,
) -> (tokio::process::Child, SocketAddr) {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let policy = policy(
        dir,
        "policy-process.toml",
        &[
            ("spiffe://gprollout.test/supplier/emis/backend", "backend"),
            ("spiffe://gprollout.test/coordinator", "coordinator"),
        ],
    );
    let (practices, map) = data();
    let child = pin
        .server(&binary("rollout-supplier"))
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
            &format!("sqlite://{}", dir.join("supplier.db").display()),
        ])
        .arg("--practice-file")
        .arg(practices)
        .arg("--supplier-map")
        .arg(map)
        .env("ROLLOUT_LOG", log)
        .stderr(std::fs::File::create(dir.join("supplier.log")).expect("log file"))
        .kill_on_drop(true)
        .spawn()
        .expect("start rollout-supplier");
    let mut control = ControlServiceClient::new(channel(pki, "coordinator", addr));
    let start = Instant::now();
    while control
        .get_sync_state(pb::GetSyncStateRequest::default())
        .await
        .is_err()
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the supplier did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    make_live(&mut control).await;
    (child, addr)
}

/// The baseline of the read comparison: a bare tonic unary service that answers each request
/// with its own payload, with no layers, served by the same TLS acceptor and HTTP/2 settings as
/// the services. It runs in a child process (this benchmark started with `--echo-server`), so
/// that it is placed and measured exactly as the supplier is.
mod echo {
    use std::{
        convert::Infallible,
        future::{Ready, ready},
        task::{Context, Poll},
    };

    use tonic::{
        Request, Response, Status,
        body::Body,
        codegen::{BoxFuture, Service, http},
    };

    pub const PATH: &str = "/bench.v1.EchoService/Echo";

    /// The request and the answer. Its one field has the number and type of
    /// GetPracticeFeatureRequest's, so the same request bytes serve both sides.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Payload {
        #[prost(bytes = "vec", tag = "1")]
        pub payload: Vec<u8>,
    }

    /// What tonic's generated server does for a unary method, with an echo as the handler.
    #[derive(Clone, Debug)]
    pub struct Server;

    impl tonic::server::NamedService for Server {
        const NAME: &'static str = "bench.v1.EchoService";
    }

    struct Echo;

    impl tonic::server::UnaryService<Payload> for Echo {
        type Response = Payload;
        type Future = Ready<Result<Response<Payload>, Status>>;

        fn call(&mut self, request: Request<Payload>) -> Self::Future {
            ready(Ok(Response::new(request.into_inner())))
        }
    }

    impl Service<http::Request<Body>> for Server {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future = BoxFuture<Self::Response, Infallible>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: http::Request<Body>) -> Self::Future {
            Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.unary(Echo, request).await)
            })
        }
    }
}

/// The load generator's codec: request and answer bytes pass through as they are, so that it
/// neither builds nor parses messages and costs the same whichever server it calls.
mod raw {
    use prost::bytes::{Buf, BufMut, Bytes};
    use tonic::{
        Request, Status,
        codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
        codegen::http::uri::PathAndQuery,
        transport::Channel,
    };

    #[derive(Debug, Clone, Copy, Default)]
    pub struct Raw;

    impl Codec for Raw {
        type Encode = Bytes;
        type Decode = Bytes;
        type Encoder = Raw;
        type Decoder = Raw;

        fn encoder(&mut self) -> Raw {
            Raw
        }

        fn decoder(&mut self) -> Raw {
            Raw
        }
    }

    impl Encoder for Raw {
        type Item = Bytes;
        type Error = Status;

        fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
            dst.put(item);
            Ok(())
        }
    }

    impl Decoder for Raw {
        type Item = Bytes;
        type Error = Status;

        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
            Ok(Some(src.copy_to_bytes(src.remaining())))
        }
    }

    /// One unary call of `path` with an encoded request; the encoded answer.
    pub async fn call(
        grpc: &mut tonic::client::Grpc<Channel>,
        path: PathAndQuery,
        request: Bytes,
    ) -> Result<Bytes, Status> {
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(grpc.unary(Request::new(request), path, Raw).await?.into_inner())
    }
}

/// The body of `system --echo-server PKI_DIR`: serves the echo baseline with the EMIS supplier's
/// certificate and prints its port.
fn echo_server(pki: &Path) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let tls_config =
            tls::ReloadingServerConfig::load(TlsFiles::from_pki_dir(pki, "supplier-emis")).expect("tls");
        println!("{}", listener.local_addr().expect("addr").port());
        rollout_net::server::builder()
            .add_service(echo::Server)
            .serve_with_incoming(tls::incoming(listener, tls_config))
            .await
            .expect("echo server");
    });
}

async fn echo_process(pki: &Path, pin: &Pinning) -> (tokio::process::Child, SocketAddr) {
    use tokio::io::AsyncBufReadExt;
    let mut child = pin
        .server(&std::env::current_exe().expect("exe"))
        .arg("--echo-server")
        .arg(pki)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the echo server");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    tokio::io::BufReader::new(stdout)
        .read_line(&mut line)
        .await
        .expect("echo port");
    let port: u16 = line.trim().parse().expect("echo port");
    (child, SocketAddr::from(([127, 0, 0, 1], port)))
}

async fn read_throughput(dir: &Path, pki: &Path, s: &Sizes, pin: &Pinning) {
    let (supplier, addr) = supplier_process(dir, pki, pin, "info").await;
    let (echo_child, echo_addr) = echo_process(pki, pin).await;
    let pids = [
        supplier.id().expect("supplier pid"),
        echo_child.id().expect("echo pid"),
    ];
    let estate = rollout_store::reference::read_estate(&data().0, &data().1).expect("estate");
    let names: Vec<String> = estate
        .practices()
        .filter(|p| p.supplier.as_str() == "emis" && p.status == rollout_core::PracticeStatus::Active)
        .map(|p| format!("practices/{}/features/{FEATURE}", p.ods))
        .collect();
    let answer = ToggleServiceClient::new(channel(pki, "backend-emis", addr))
        .get_practice_feature(pb::GetPracticeFeatureRequest {
            name: names[0].clone(),
        })
        .await
        .expect("answer")
        .into_inner();
    // The same encoded requests for both sides (GetPracticeFeatureRequest and the echo's
    // payload have the same single field).
    let requests: Arc<Vec<prost::bytes::Bytes>> = Arc::new(
        names
            .iter()
            .map(|name| {
                prost::Message::encode_to_vec(&pb::GetPracticeFeatureRequest { name: name.clone() }).into()
            })
            .collect(),
    );
    let sides_of = |target: SocketAddr, path: &'static str| {
        let clients: Vec<_> = (0..s.connections)
            .map(|_| tonic::client::Grpc::new(channel(pki, "backend-emis", target)))
            .collect();
        (
            clients,
            tonic::codegen::http::uri::PathAndQuery::from_static(path),
        )
    };
    let targets = [
        sides_of(addr, "/nhs.gprollout.v1.ToggleService/GetPracticeFeature"),
        sides_of(echo_addr, echo::PATH),
    ];

    // Worker w sends the requests in turn from its own starting point, over connection w mod n.
    let workers = s.connections * s.concurrency;
    let round = |side: usize, length: Duration| {
        let (clients, path) = &targets[side];
        load(workers, length, |w| {
            let client = clients[w % clients.len()].clone();
            let (path, requests) = (path.clone(), requests.clone());
            let mut n = w * 37;
            move || {
                n += 1;
                let request = requests[n % requests.len()].clone();
                let (mut client, path) = (client.clone(), path.clone());
                async move { raw::call(&mut client, path, request).await.is_ok() }
            }
        })
    };

    pin.load_generator();
    // Warm both up (connections, allocators, caches), then alternate short rounds, swapping the
    // order each time, so that both sides meet the same machine.
    round(0, Duration::from_secs(1)).await;
    round(1, Duration::from_secs(1)).await;
    let mut sides = [Side::default(), Side::default()];
    let mut ratios = Vec::new();
    for r in 0..s.rounds {
        let mut rps = [0.0; 2];
        let order = if r % 2 == 0 { [0, 1] } else { [1, 0] };
        for side in order {
            let cpu = cpu_seconds(pids[side]);
            let (calls, seconds, lat) = round(side, s.round).await;
            let used = cpu_seconds(pids[side]) - cpu;
            let t = &mut sides[side];
            t.calls += calls;
            t.seconds += seconds;
            t.server_cpu += used;
            t.latencies.extend(lat);
            rps[side] = calls as f64 / seconds;
        }
        ratios.push(rps[0] / rps[1]);
    }
    pin.release();
    ratios.sort_by(f64::total_cmp);
    let median = (ratios[(ratios.len() - 1) / 2] + ratios[ratios.len() / 2]) / 2.0;

    println!(
        "1. read throughput: {} connections x {} calls in flight, mutual TLS, {}; {} alternating rounds of {} s per side",
        s.connections,
        s.concurrency,
        pin.describe(),
        s.rounds,
        s.round.as_secs_f64()
    );
    for side in &mut sides {
        side.latencies.sort();
    }
    for (label, side, size) in [
        (
            "GetPracticeFeature",
            &sides[0],
            prost::Message::encoded_len(&answer),
        ),
        ("bare tonic echo   ", &sides[1], requests[0].len()),
    ] {
        println!(
            "   {label}  {:>7.0} rps   p50 {}   p99 {}   server CPU {:.1} us/call ({:.0}% of its core)   answer {size} bytes",
            side.rps(),
            ms(percentile(&side.latencies, 0.5)),
            ms(percentile(&side.latencies, 0.99)),
            side.server_cpu / side.calls as f64 * 1e6,
            side.server_cpu / side.seconds * 100.0,
        );
    }
    println!(
        "   throughput ratio: median of rounds {median:.2} (rounds {:.2} to {:.2}), overall {:.2} (target >= 0.85)",
        ratios[0],
        ratios[ratios.len() - 1],
        sides[0].rps() / sides[1].rps()
    );
    println!(
        "   server CPU per call, echo / GetPracticeFeature: {:.2}",
        (sides[1].server_cpu / sides[1].calls as f64) / (sides[0].server_cpu / sides[0].calls as f64)
    );
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

async fn watch_fan_out(dir: &Path, pki: &Path, s: &Sizes, pin: &Pinning) {
    let (mut child, addr) = supplier_process(dir, pki, pin, "warn").await;
    let mut control = ControlServiceClient::new(channel(pki, "coordinator", addr));
    let estate = rollout_store::reference::read_estate(&data().0, &data().1).expect("estate");
    let codes: Vec<String> = estate
        .practices()
        .filter(|p| p.supplier.as_str() == "emis" && p.status == rollout_core::PracticeStatus::Active)
        .map(|p| p.ods.to_string())
        .collect();
    let connections: Vec<Channel> = (0..100).map(|_| channel(pki, "backend-emis", addr)).collect();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(s.watchers);
    let (go_tx, go_rx) = tokio::sync::watch::channel::<Option<Instant>>(None);
    // Each stream reports when it received the halt and stays open until every one has, so that
    // the figure is the delivery, not the delivery and the closing of the streams that had it.
    let (received_tx, mut received_rx) = tokio::sync::mpsc::channel::<Duration>(s.watchers);
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for i in 0..s.watchers {
        let mut client = ToggleServiceClient::new(connections[i % connections.len()].clone());
        let code = codes[i % codes.len()].clone();
        let (ready, go) = (ready_tx.clone(), go_rx.clone());
        let (received, mut done) = (received_tx.clone(), done_rx.clone());
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
                    received.send(t0.elapsed()).await.expect("report");
                    let _ = done.wait_for(|d| *d).await;
                    return;
                }
            }
        }));
    }
    drop(received_tx);
    for _ in 0..s.watchers {
        ready_rx.recv().await.expect("ready");
    }
    pin.load_generator();
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
            ..Default::default()
        })
        .await
        .expect("halt");
    let mut times = Vec::with_capacity(s.watchers);
    for _ in 0..s.watchers {
        let received = tokio::time::timeout(Duration::from_secs(60), received_rx.recv()).await;
        times.push(
            received
                .expect("every stream receives the halt within 60 s")
                .expect("a watcher failed"),
        );
    }
    pin.release();
    done_tx.send_replace(true);
    for t in tasks {
        t.await.expect("watcher");
    }
    times.sort();
    let rss = peak_rss_mib(child.id().expect("pid"));
    println!(
        "4. watch fan-out: {} streams over 100 connections on one supplier process ({}), one national halt",
        s.watchers,
        pin.describe()
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
    rollout_net::tls::install_crypto_provider();
    let mut args = std::env::args().skip(1);
    // `--only read|propagation|watch` runs one part.
    let mut only = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--echo-server" => {
                echo_server(Path::new(&args.next().expect("--echo-server PKI_DIR")));
                return;
            }
            "--only" => only = args.next(),
            _ => {}
        }
    }
    let run = |part: &str| only.as_deref().is_none_or(|o| o == part);
    let smoke = std::env::args().any(|a| a == "--smoke");
    let sizes = if smoke {
        Sizes {
            rounds: 2,
            round: Duration::from_millis(500),
            connections: 2,
            concurrency: 8,
            halts: 10,
            watchers: 200,
        }
    } else {
        Sizes {
            rounds: 10,
            round: Duration::from_secs(2),
            connections: 4,
            concurrency: 64,
            halts: 200,
            watchers: 10_000,
        }
    };
    let pin = Pinning::detect();
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
        if run("read") {
            read_throughput(&sub("read"), &pki, &sizes, &pin).await;
        }
        if run("propagation") {
            propagation_and_large_scope(&sub("propagation"), &pki, &sizes).await;
        }
        if run("watch") {
            watch_fan_out(&sub("watch"), &pki, &sizes, &pin).await;
        }
    });
}
