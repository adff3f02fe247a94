//! System benchmarks with real servers and real mutual TLS, in one run:
//! 1. read throughput of GetPracticeFeature on a `rollout-supplier` process against a bare
//!    tonic unary echo server process behind the same TLS acceptor and HTTP/2 settings, with
//!    the same requests from the same load generator, in alternating rounds;
//! 2. propagation of a halt through the coordinator to four suppliers (SQLite, durable);
//! 3. a halt listing every active practice;
//! 4. watch fan-out: many WatchPracticeFeatures streams on one supplier process, one halt;
//! 5. a long history (about 2,000 commands, 200 of them halts listing 5,000 practices) beside a
//!    young one: read throughput against the echo, answer size, supplier start time and memory,
//!    and the resynchronisation of a supplier whose store was wiped.
//!
//! On two or more cores the server under test runs on core 1 and the load generator on core 0
//! (parts 1, 4 and 5's reads). Run: `cargo build --release --bins && cargo bench -p
//! rollout-tests --bench system` (`-- --smoke` for a short run, `-- --only
//! read|propagation|watch|history` for one part). It prints figures; it asserts nothing about
//! time.

use std::{
    collections::{BTreeSet, VecDeque},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use rollout_core::{Estate, OdsCode, Practice, PracticeStatus, Scope};
use rollout_net::tls::{self, TlsFiles};
use rollout_proto::v1::{
    self as pb, control_service_client::ControlServiceClient,
    coordinator_service_client::CoordinatorServiceClient, toggle_service_client::ToggleServiceClient,
};
use tokio::{net::TcpListener, sync::oneshot};
use tonic::transport::Channel;

const FEATURE: &str = "prospective-record-access";
const SUPPLIERS: [&str; 4] = ["emis", "tpp", "cegedim", "microtest"];
const ALICE: &str = "spiffe://gprollout.test/operator/alice";
const BOB: &str = "spiffe://gprollout.test/operator/bob";
/// The coordinator's heartbeat in the benchmark's stacks (its default).
const HEARTBEAT: Duration = Duration::from_secs(2);

struct Sizes {
    rounds: usize,
    round: Duration,
    warm_up: Duration,
    connections: usize,
    concurrency: usize,
    halts: usize,
    watchers: usize,
    history: Shape,
    /// Timed starts and wiped-supplier resynchronisations per state.
    restarts: usize,
}

/// The long history's size: commands in all (the feature's definition and first go-live
/// included), the halts listing practices among them, and the codes each of those lists.
#[derive(Debug, Clone, Copy)]
struct Shape {
    commands: usize,
    list_halts: usize,
    list_size: usize,
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

/// A supplier running in this process, on SQLite in `dir`.
struct InProcess {
    id: String,
    dir: PathBuf,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), rollout_supplier::Error>>>,
}

impl InProcess {
    /// Starts a supplier on a free port.
    async fn start(dir: &Path, pki: &Path, id: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut s = InProcess {
            id: id.to_owned(),
            dir: dir.to_owned(),
            addr: listener.local_addr().expect("addr"),
            stop: None,
            task: None,
        };
        s.serve(pki, listener);
        s
    }

    fn database(&self) -> PathBuf {
        self.dir.join(format!("{}.db", self.id))
    }

    fn serve(&mut self, pki: &Path, listener: TcpListener) {
        let id = &self.id;
        let backend = format!("spiffe://gprollout.test/supplier/{id}/backend");
        let config = rollout_supplier::Config {
            supplier: id.parse().expect("id"),
            tls: TlsFiles::from_pki_dir(pki, &format!("supplier-{id}")),
            policy: policy(
                &self.dir,
                &format!("policy-{id}.toml"),
                &[
                    (&backend, "backend"),
                    ("spiffe://gprollout.test/coordinator", "coordinator"),
                ],
            ),
            database_url: format!("sqlite://{}", self.database().display()),
            estate: Some(data()),
            freeze_reason: None,
        };
        let (stop, stopped) = oneshot::channel();
        self.stop = Some(stop);
        self.task = Some(tokio::spawn(rollout_supplier::serve(
            config,
            listener,
            None,
            async {
                let _ = stopped.await;
            },
        )));
    }

    /// Stops it and waits until its store is closed.
    async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("the supplier stops within 30 s")
                .expect("supplier task")
                .expect("supplier");
        }
    }

    /// Starts it again on its port.
    async fn restart(&mut self, pki: &Path) {
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) if tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("cannot listen on {} again: {e}", self.addr),
            }
        };
        self.serve(pki, listener);
    }
}

/// A sequenced command as the coordinator sends it: issued by alice, approved by bob when it
/// turns access on.
fn domain_command(
    sequence: u64,
    id: &str,
    action: rollout_core::Action,
    reason: &str,
) -> rollout_core::Command {
    rollout_core::Command {
        id: id.parse().expect("id"),
        sequence,
        feature: FEATURE.parse().expect("key"),
        approved_by: if action.turns_on() {
            vec![BOB.into()]
        } else {
            vec![]
        },
        action,
        reason: reason.into(),
        requester: ALICE.into(),
        issued_at: std::time::SystemTime::now(),
    }
}

/// A command as parts 1 and 4 have always sent it (requester "bench", no approvals), so that
/// their figures stay comparable from run to run.
fn command(sequence: u64, id: &str, action: rollout_core::Action) -> pb::Command {
    rollout_net::wire::command_pb(&rollout_core::Command {
        requester: "bench".into(),
        approved_by: vec![],
        ..domain_command(sequence, id, action, "benchmark")
    })
}

/// The young history of part 5: the feature defined (sequence 1) and live nationally (2).
fn young_history() -> Vec<rollout_core::Command> {
    vec![
        domain_command(
            1,
            "define",
            rollout_core::Action::CreateFeature(rollout_core::FeatureDef {
                key: FEATURE.parse().expect("key"),
                description: String::new(),
                fail_mode: rollout_core::FailMode::Static,
                approvals_required: 1,
            }),
            "benchmark",
        ),
        domain_command(
            2,
            "golive",
            rollout_core::Action::GoLive {
                scope: Scope::National,
                effective_at: None,
            },
            "benchmark",
        ),
    ]
}

/// Applies commands at a supplier as the coordinator does, one by one.
async fn apply_all(control: &mut ControlServiceClient<Channel>, commands: &[rollout_core::Command]) {
    for c in commands {
        control
            .apply_command(pb::ApplyCommandRequest {
                command: Some(rollout_net::wire::command_pb(c)),
                ..Default::default()
            })
            .await
            .expect("apply");
    }
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
                scope: Scope::National,
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

/// A free port on the loopback interface.
fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// Spawns a `rollout-supplier` process for EMIS on `addr`, on the SQLite store `NAME.db` in
/// `dir` (created if missing), importing the synthetic estate at start, logging to `NAME.log`.
fn spawn_supplier(
    dir: &Path,
    pki: &Path,
    pin: &Pinning,
    log: &str,
    name: &str,
    addr: SocketAddr,
) -> tokio::process::Child {
    let policy = policy(
        dir,
        "policy-process.toml",
        &[
            ("spiffe://gprollout.test/supplier/emis/backend", "backend"),
            ("spiffe://gprollout.test/coordinator", "coordinator"),
        ],
    );
    let (practices, map) = data();
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))
        .expect("log file");
    pin.server(&binary("rollout-supplier"))
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
            &format!("sqlite://{}", dir.join(format!("{name}.db")).display()),
        ])
        .arg("--practice-file")
        .arg(practices)
        .arg("--supplier-map")
        .arg(map)
        .env("ROLLOUT_LOG", log)
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .expect("start rollout-supplier")
}

/// Starts a `rollout-supplier` process for EMIS on SQLite with the synthetic estate, waits until
/// it answers, and makes the feature live nationally.
async fn supplier_process(
    dir: &Path,
    pki: &Path,
    pin: &Pinning,
    log: &str,
) -> (tokio::process::Child, SocketAddr) {
    let addr = free_addr();
    let child = spawn_supplier(dir, pki, pin, log, "supplier", addr);
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

/// Polls a supplier (every 5 ms, a new connection until one answers) until it answers for
/// `practice` at `sequence`; returns the answer.
async fn answer_at(pki: &Path, addr: SocketAddr, practice: &str, sequence: i64) -> pb::PracticeFeature {
    let start = Instant::now();
    let name = format!("practices/{practice}/features/{FEATURE}");
    let mut client = None;
    loop {
        let c = client.get_or_insert_with(|| ToggleServiceClient::new(channel(pki, "backend-emis", addr)));
        match c
            .get_practice_feature(pb::GetPracticeFeatureRequest { name: name.clone() })
            .await
        {
            Ok(a) if a.get_ref().applied_sequence >= sequence => return a.into_inner(),
            Ok(_) => {}
            Err(_) => client = None,
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the supplier did not answer at sequence {sequence} within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Stops a server process as its service manager would (SIGINT), and waits for it.
async fn stop_process(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status();
    }
    tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the process stops within 30 s")
        .expect("wait");
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

/// A server under read load: its label, address, process and the method called.
struct ReadTarget {
    label: String,
    addr: SocketAddr,
    pid: u32,
    path: &'static str,
}

/// What a read comparison measured: each target's totals (the echo baseline last), and for
/// each other target the ratio of its throughput to the echo's in each round, sorted.
struct Reads {
    sides: Vec<Side>,
    ratios: Vec<Vec<f64>>,
}

impl Reads {
    fn median(&self, i: usize) -> f64 {
        let r = &self.ratios[i];
        (r[(r.len() - 1) / 2] + r[r.len() / 2]) / 2.0
    }

    fn range(&self, i: usize) -> (f64, f64) {
        (self.ratios[i][0], self.ratios[i][self.ratios[i].len() - 1])
    }

    fn overall(&self, i: usize) -> f64 {
        self.sides[i].rps() / self.sides[self.sides.len() - 1].rps()
    }

    fn cpu_per_call(&self, i: usize) -> f64 {
        self.sides[i].server_cpu / self.sides[i].calls as f64
    }

    fn print(&self, targets: &[ReadTarget], answers: &[String]) {
        for ((t, side), answer) in targets.iter().zip(&self.sides).zip(answers) {
            println!(
                "   {:<18}  {:>7.0} rps   p50 {}   p99 {}   server CPU {:.1} us/call ({:.0}% of its core)   answer {answer}",
                t.label,
                side.rps(),
                ms(percentile(&side.latencies, 0.5)),
                ms(percentile(&side.latencies, 0.99)),
                side.server_cpu / side.calls as f64 * 1e6,
                side.server_cpu / side.seconds * 100.0,
            );
        }
    }
}

/// The names of every active EMIS practice's answer, and the same as encoded requests
/// (GetPracticeFeatureRequest and the echo's payload have the same single field).
fn emis_requests() -> (Vec<String>, Arc<Vec<prost::bytes::Bytes>>) {
    let estate = rollout_store::reference::read_estate(&data().0, &data().1).expect("estate");
    let names: Vec<String> = estate
        .practices()
        .filter(|p| p.supplier.as_str() == "emis" && p.status == PracticeStatus::Active)
        .map(|p| format!("practices/{}/features/{FEATURE}", p.ods))
        .collect();
    let requests = names
        .iter()
        .map(|name| {
            prost::Message::encode_to_vec(&pb::GetPracticeFeatureRequest { name: name.clone() }).into()
        })
        .collect();
    (names, Arc::new(requests))
}

/// The encoded size of the (explained) answer to each name, sorted.
async fn answer_sizes(pki: &Path, addr: SocketAddr, names: &[String]) -> Vec<usize> {
    let client = ToggleServiceClient::new(channel(pki, "backend-emis", addr));
    let names = Arc::new(names.to_vec());
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let (mut client, names) = (client.clone(), names.clone());
            tokio::spawn(async move {
                let mut sizes = Vec::new();
                for name in names.iter().skip(t).step_by(8) {
                    let a = client
                        .get_practice_feature(pb::GetPracticeFeatureRequest { name: name.clone() })
                        .await
                        .expect("answer")
                        .into_inner();
                    sizes.push(prost::Message::encoded_len(&a));
                }
                sizes
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("sizes"));
    }
    all.sort_unstable();
    all
}

/// Median, mean and largest of sorted sizes, as text.
fn sizes_text(sizes: &[usize]) -> String {
    let mean = sizes.iter().sum::<usize>() as f64 / sizes.len().max(1) as f64;
    format!(
        "median {} bytes (mean {mean:.0}, largest {})",
        sizes.get(sizes.len() / 2).copied().unwrap_or(0),
        sizes.last().copied().unwrap_or(0)
    )
}

/// The read comparison: the same requests from the same load generator to every target in
/// turn (the echo baseline last), a warm-up of each, then alternating rounds with the order
/// rotated each round so that every target meets the same machine.
async fn read_rounds(
    pki: &Path,
    s: &Sizes,
    pin: &Pinning,
    targets: &[ReadTarget],
    requests: &Arc<Vec<prost::bytes::Bytes>>,
) -> Reads {
    let clients: Vec<_> = targets
        .iter()
        .map(|t| {
            let clients: Vec<_> = (0..s.connections)
                .map(|_| tonic::client::Grpc::new(channel(pki, "backend-emis", t.addr)))
                .collect();
            (
                clients,
                tonic::codegen::http::uri::PathAndQuery::from_static(t.path),
            )
        })
        .collect();

    // Worker w sends the requests in turn from its own starting point, over connection w mod n.
    let workers = s.connections * s.concurrency;
    let round = |side: usize, length: Duration| {
        let (clients, path) = &clients[side];
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
    // Warm every side up (connections, allocators, caches), then alternate short rounds.
    for side in 0..targets.len() {
        round(side, s.warm_up).await;
    }
    let n = targets.len();
    let mut sides: Vec<Side> = (0..n).map(|_| Side::default()).collect();
    let mut ratios = vec![Vec::new(); n - 1];
    for r in 0..s.rounds {
        let mut rps = vec![0.0; n];
        for k in 0..n {
            let side = (r + k) % n;
            let cpu = cpu_seconds(targets[side].pid);
            let (calls, seconds, lat) = round(side, s.round).await;
            let used = cpu_seconds(targets[side].pid) - cpu;
            let t = &mut sides[side];
            t.calls += calls;
            t.seconds += seconds;
            t.server_cpu += used;
            t.latencies.extend(lat);
            rps[side] = calls as f64 / seconds;
        }
        for (i, ratio) in ratios.iter_mut().enumerate() {
            ratio.push(rps[i] / rps[n - 1]);
        }
    }
    pin.release();
    for ratio in &mut ratios {
        ratio.sort_by(f64::total_cmp);
    }
    for side in &mut sides {
        side.latencies.sort();
    }
    Reads { sides, ratios }
}

async fn read_throughput(dir: &Path, pki: &Path, s: &Sizes, pin: &Pinning) {
    let (supplier, addr) = supplier_process(dir, pki, pin, "info").await;
    let (echo_child, echo_addr) = echo_process(pki, pin).await;
    let (names, requests) = emis_requests();
    let answer = ToggleServiceClient::new(channel(pki, "backend-emis", addr))
        .get_practice_feature(pb::GetPracticeFeatureRequest {
            name: names[0].clone(),
        })
        .await
        .expect("answer")
        .into_inner();
    let targets = [
        ReadTarget {
            label: "GetPracticeFeature".into(),
            addr,
            pid: supplier.id().expect("supplier pid"),
            path: "/nhs.gprollout.v1.ToggleService/GetPracticeFeature",
        },
        ReadTarget {
            label: "bare tonic echo".into(),
            addr: echo_addr,
            pid: echo_child.id().expect("echo pid"),
            path: echo::PATH,
        },
    ];
    let reads = read_rounds(pki, s, pin, &targets, &requests).await;
    println!(
        "1. read throughput: {} connections x {} calls in flight, mutual TLS, {}; {} alternating rounds of {} s per side",
        s.connections,
        s.concurrency,
        pin.describe(),
        s.rounds,
        s.round.as_secs_f64()
    );
    reads.print(
        &targets,
        &[
            format!("{} bytes", prost::Message::encoded_len(&answer)),
            format!("{} bytes", requests[0].len()),
        ],
    );
    let (low, high) = reads.range(0);
    println!(
        "   throughput ratio: median of rounds {:.2} (rounds {low:.2} to {high:.2}), overall {:.2} (target >= 0.85)",
        reads.median(0),
        reads.overall(0)
    );
    println!(
        "   server CPU per call, echo / GetPracticeFeature: {:.2}",
        reads.cpu_per_call(1) / reads.cpu_per_call(0)
    );
}

/// A coordinator and four suppliers in this process, the feature defined and live nationally
/// (issued by alice, approved by bob); the coordinator runs until `shutdown`.
async fn coordinator_stack(
    dir: &Path,
    pki: &Path,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> (
    CoordinatorServiceClient<Channel>,
    CoordinatorServiceClient<Channel>,
    Vec<InProcess>,
) {
    let mut suppliers = Vec::new();
    for id in SUPPLIERS {
        suppliers.push(InProcess::start(dir, pki, id).await);
    }
    let config = rollout_coordinator::Config {
        tls: TlsFiles::from_pki_dir(pki, "coordinator"),
        supplier_ca: pki.join("ca.pem"),
        policy: policy(
            dir,
            "policy-coordinator.toml",
            &[(ALICE, "operator"), (BOB, "approver")],
        ),
        suppliers: suppliers
            .iter()
            .map(|s| rollout_coordinator::SupplierEndpoint {
                id: s.id.parse().expect("id"),
                endpoint: format!("localhost:{}", s.addr.port()),
                identity: format!("spiffe://gprollout.test/supplier/{}", s.id),
            })
            .collect(),
        database_url: format!("sqlite://{}", dir.join("coordinator.db").display()),
        estate: data(),
        heartbeat: HEARTBEAT,
        stale_after: Duration::from_secs(30),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(rollout_coordinator::serve(config, listener, None, shutdown));
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
    let (mut alice, _bob, suppliers) = coordinator_stack(dir, pki, std::future::pending()).await;
    let estate = rollout_store::reference::read_estate(&data().0, &data().1).expect("estate");
    let active: Vec<_> = estate
        .practices()
        .filter(|p| p.status == rollout_core::PracticeStatus::Active)
        .collect();
    let mut backends: Vec<(String, ToggleServiceClient<Channel>)> = suppliers
        .iter()
        .map(|s| {
            (
                s.id.clone(),
                ToggleServiceClient::new(channel(pki, "coordinator", s.addr)),
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
    // The stack keeps running to the end of the benchmark, as it always has.
    std::mem::forget(suppliers);
}

fn peak_rss_mib(pid: u32) -> f64 {
    memory_mib(pid, "VmHWM:")
}

/// A memory figure of `/proc/PID/status` (`VmRSS:`, `VmHWM:`) in MiB.
fn memory_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
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

/// The events of the in-process servers that part 5 times a resynchronisation by: while
/// recording, every event at INFO or above of the coordinator's delivery tasks and of the
/// suppliers, and every new supplier span, with the time it happened.
mod events {
    use std::{
        sync::{
            Arc, Mutex,
            atomic::{AtomicBool, Ordering},
        },
        time::Instant,
    };

    use tracing::{
        Event, Level, Subscriber,
        field::{Field, Visit},
        span,
    };
    use tracing_subscriber::{Layer, filter::Targets, layer::Context, prelude::*};

    #[derive(Clone, Default)]
    pub struct Recorder {
        on: Arc<AtomicBool>,
        seen: Arc<Mutex<Vec<(Instant, String)>>>,
    }

    struct Message(String);

    impl Visit for Message {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                self.0 = format!("{value:?}");
            }
        }
    }

    impl<S: Subscriber> Layer<S> for Recorder {
        fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
            if self.on.load(Ordering::Relaxed) {
                let mut m = Message(String::new());
                event.record(&mut m);
                self.seen.lock().expect("events").push((Instant::now(), m.0));
            }
        }

        fn on_new_span(&self, attrs: &span::Attributes<'_>, _: &span::Id, _: Context<'_, S>) {
            if self.on.load(Ordering::Relaxed) {
                let name = format!("span {}", attrs.metadata().name());
                self.seen.lock().expect("events").push((Instant::now(), name));
            }
        }
    }

    impl Recorder {
        /// Installs the recorder as this process's subscriber (not recording yet).
        pub fn install() -> Self {
            let recorder = Recorder::default();
            let targets = Targets::new()
                .with_target("rollout_coordinator::delivery", Level::INFO)
                .with_target("rollout_supplier", Level::INFO);
            let _ = tracing_subscriber::registry()
                .with(recorder.clone().with_filter(targets))
                .try_init();
            recorder
        }

        /// Forgets what was seen and starts recording.
        pub fn start(&self) {
            self.seen.lock().expect("events").clear();
            self.on.store(true, Ordering::Relaxed);
        }

        pub fn stop(&self) {
            self.on.store(false, Ordering::Relaxed);
        }

        /// When the first event containing `text` was seen.
        pub fn first(&self, text: &str) -> Option<Instant> {
            self.seen
                .lock()
                .expect("events")
                .iter()
                .find(|(_, m)| m.contains(text))
                .map(|(t, _)| *t)
        }
    }
}

/// One command of a history after the feature's definition and national go-live (sequences 1
/// and 2), in a form that can be applied at a supplier or issued through the coordinator.
enum Step {
    Halt(Scope, String),
    /// Lifts the halts issued at these earlier steps.
    Resume(Vec<usize>, String),
    GoLive(Scope, String),
}

/// A long history, the same on every run. `shape.list_halts` halts listing `shape.list_size`
/// codes each are spread evenly through it: each list names a random 20 to 60 per cent of its
/// codes from three in five of the active practices (the other two in five are never listed)
/// and fills the rest with codes no supplier holds. One list halt in five is lifted again (a
/// resume after every tenth list lifts two). Between the lists come incidents: national,
/// regional, ICB and sub-ICB halts, each lifted a few commands later by a resume that may lift
/// several (one sub-ICB halt in forty is never lifted), and an ICB go-live after every fortieth
/// list. So at the end the feature is still live nationally, the listed practices and the
/// sub-ICBs still halted are off, and the rest are on.
fn long_history(shape: Shape, estate: &Estate) -> Vec<Step> {
    let active: Vec<&Practice> = estate
        .practices()
        .filter(|p| p.status == PracticeStatus::Active)
        .collect();
    let listed: Vec<OdsCode> = active
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 5 < 3)
        .map(|(_, p)| p.ods)
        .collect();
    let held: std::collections::HashSet<OdsCode> = estate.practices().map(|p| p.ods).collect();
    fn distinct<T: Ord>(practices: &[&Practice], code: impl Fn(&Practice) -> T) -> Vec<T> {
        practices
            .iter()
            .map(|p| code(p))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }
    let regions = distinct(&active, |p| p.region);
    let icbs = distinct(&active, |p| p.icb);
    let sub_icbs = distinct(&active, |p| p.sub_icb);
    let mut rng = fastrand::Rng::with_seed(2_000);
    let total = shape.commands.saturating_sub(2);
    let mut steps = Vec::with_capacity(total);
    let mut lists: Vec<usize> = Vec::new();
    let mut open: Vec<usize> = Vec::new();
    let mut queued: VecDeque<Step> = VecDeque::new();
    let mut incidents = 0usize;
    for pos in 0..total {
        let step = if lists.len() < shape.list_halts && pos * shape.list_halts >= lists.len() * total {
            let n = lists.len();
            lists.push(pos);
            if n % 10 == 9 {
                queued.push_back(Step::Resume(
                    vec![lists[n - 9], lists[n - 5]],
                    format!("the practices of letters {} and {} withdrew them", n - 9, n - 5),
                ));
            }
            if n % 40 == 20 {
                queued.push_back(Step::GoLive(
                    Scope::Icb(icbs[rng.usize(..icbs.len())]),
                    format!("ICB confirmed its go-live after letter {n}"),
                ));
            }
            let real = (shape.list_size * rng.usize(20..=60) / 100).min(listed.len());
            let mut pool = listed.clone();
            for i in 0..real {
                let j = rng.usize(i..pool.len());
                pool.swap(i, j);
            }
            let mut codes: BTreeSet<OdsCode> = pool[..real].iter().copied().collect();
            while codes.len() < shape.list_size {
                let code: OdsCode = format!("Z{:05}", rng.u32(..100_000)).parse().expect("code");
                if !held.contains(&code) {
                    codes.insert(code);
                }
            }
            Step::Halt(
                Scope::Practices(Arc::new(codes)),
                format!("letter {n}: these practices asked not to go ahead yet"),
            )
        } else if let Some(q) = queued.pop_front() {
            q
        } else if !open.is_empty() && (open.len() >= 3 || rng.bool() || pos + 4 >= total) {
            Step::Resume(
                std::mem::take(&mut open),
                format!("incident {incidents} resolved"),
            )
        } else {
            incidents += 1;
            let last = pos + 1 == total;
            let scope = match incidents % 20 {
                _ if last => Scope::SubIcb(sub_icbs[rng.usize(..sub_icbs.len())]),
                0 => Scope::National,
                5 | 15 => Scope::Region(regions[rng.usize(..regions.len())]),
                i if i % 2 == 0 => Scope::Icb(icbs[rng.usize(..icbs.len())]),
                _ => Scope::SubIcb(sub_icbs[rng.usize(..sub_icbs.len())]),
            };
            // One sub-ICB halt in forty (and one at the very end) stays in force.
            if !(last || incidents % 40 == 1) {
                open.push(pos);
            }
            Step::Halt(
                scope,
                format!("incident {incidents}: clinical safety concern reported"),
            )
        };
        steps.push(step);
    }
    steps
}

/// The sequence of step `i`.
fn step_sequence(i: usize) -> u64 {
    i as u64 + 3
}

/// The whole long history as sequenced commands, the young history first.
fn history_commands(steps: &[Step]) -> Vec<rollout_core::Command> {
    let id = |i: usize| {
        let kind = match &steps[i] {
            Step::Halt(..) => "halt",
            Step::Resume(..) => "resume",
            Step::GoLive(..) => "go-live",
        };
        format!("{kind}-{}", step_sequence(i))
    };
    let mut commands = young_history();
    commands.extend(steps.iter().enumerate().map(|(i, step)| {
        let (action, reason) = match step {
            Step::Halt(scope, reason) => (rollout_core::Action::Halt { scope: scope.clone() }, reason),
            Step::Resume(halts, reason) => (
                rollout_core::Action::Resume {
                    halts: halts.iter().map(|h| id(*h).parse().expect("id")).collect(),
                },
                reason,
            ),
            Step::GoLive(scope, reason) => (
                rollout_core::Action::GoLive {
                    scope: scope.clone(),
                    effective_at: None,
                },
                reason,
            ),
        };
        domain_command(step_sequence(i), &id(i), action, reason)
    }));
    commands
}

/// What a history leaves in force, worked out with the rule book the suppliers use.
struct InForce {
    list_halts: usize,
    area_halts: usize,
    go_lives: usize,
    national_halts: usize,
}

impl InForce {
    fn of(commands: &[rollout_core::Command]) -> Self {
        let mut book = rollout_core::RuleBook::new();
        for c in commands {
            book.apply(c, None).expect("the history applies");
        }
        let mut f = InForce {
            list_halts: 0,
            area_halts: 0,
            go_lives: 0,
            national_halts: 0,
        };
        for rule in book
            .feature(&FEATURE.parse().expect("key"))
            .expect("feature")
            .rules()
        {
            match &rule.kind {
                rollout_core::RuleKind::GoLive { .. } => f.go_lives += 1,
                rollout_core::RuleKind::Halt {
                    scope: Scope::Practices(_),
                } => f.list_halts += 1,
                rollout_core::RuleKind::Halt {
                    scope: Scope::National,
                } => f.national_halts += 1,
                rollout_core::RuleKind::Halt { .. } => f.area_halts += 1,
            }
        }
        f
    }

    fn rules(&self) -> usize {
        self.list_halts + self.area_halts + self.go_lives + self.national_halts
    }
}

/// Issues the steps through the coordinator as the operators would: alice halts, resumes and
/// schedules go-lives, bob approves. Returns the last sequence dispatched.
async fn issue_history(
    alice: &mut CoordinatorServiceClient<Channel>,
    bob: &mut CoordinatorServiceClient<Channel>,
    steps: &[Step],
) -> i64 {
    let mut names: Vec<String> = Vec::with_capacity(steps.len());
    let feature = format!("features/{FEATURE}");
    for step in steps {
        let name = match step {
            Step::Halt(scope, reason) => {
                alice
                    .halt_feature(pb::HaltFeatureRequest {
                        name: feature.clone(),
                        scope: Some(rollout_net::wire::scope_pb(scope)),
                        reason: reason.clone(),
                        ..Default::default()
                    })
                    .await
                    .expect("halt")
                    .into_inner()
                    .name
            }
            Step::Resume(halts, reason) => {
                let pending = alice
                    .resume_feature(pb::ResumeFeatureRequest {
                        name: feature.clone(),
                        halts: halts.iter().map(|h| names[*h].clone()).collect(),
                        reason: reason.clone(),
                        ..Default::default()
                    })
                    .await
                    .expect("resume")
                    .into_inner();
                approve(bob, &pending.name).await;
                pending.name
            }
            Step::GoLive(scope, reason) => {
                let pending = alice
                    .schedule_go_live(pb::ScheduleGoLiveRequest {
                        name: feature.clone(),
                        scope: Some(rollout_net::wire::scope_pb(scope)),
                        reason: reason.clone(),
                        ..Default::default()
                    })
                    .await
                    .expect("go-live")
                    .into_inner();
                approve(bob, &pending.name).await;
                pending.name
            }
        };
        names.push(name);
    }
    target_sequence(alice).await
}

async fn approve(bob: &mut CoordinatorServiceClient<Channel>, name: &str) {
    bob.approve_command(pb::ApproveCommandRequest {
        name: name.into(),
        comment: "second person".into(),
        ..Default::default()
    })
    .await
    .expect("approve");
}

/// The last sequence the coordinator dispatched.
async fn target_sequence(c: &mut CoordinatorServiceClient<Channel>) -> i64 {
    c.list_suppliers(pb::ListSuppliersRequest::default())
        .await
        .expect("suppliers")
        .into_inner()
        .suppliers
        .iter()
        .map(|s| s.target_sequence)
        .max()
        .unwrap_or(0)
}

/// Waits until every supplier has applied `target`, by the coordinator's account.
async fn converged(c: &mut CoordinatorServiceClient<Channel>, target: i64) {
    let start = Instant::now();
    loop {
        let list = c
            .list_suppliers(pb::ListSuppliersRequest::default())
            .await
            .expect("suppliers")
            .into_inner();
        if list.suppliers.iter().all(|s| s.applied_sequence == target) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(3_600),
            "the suppliers did not converge on {target}: {:?}",
            list.suppliers
                .iter()
                .map(|s| (s.name.as_str(), s.applied_sequence, s.last_error.as_str()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The phases of one resynchronisation of a wiped supplier, each from its restart.
#[derive(Default, Clone, Copy)]
struct Resync {
    /// It answers (on an empty store).
    started: Duration,
    /// The coordinator found it had lost what it acknowledged.
    noticed: Duration,
    /// Its ReplaceRules handler was called.
    transfer: Duration,
    /// It committed the snapshot.
    installed: Duration,
    /// It answers at the target sequence.
    answered: Duration,
}

/// Stops a supplier, deletes its SQLite store (with its -wal and -shm files), starts it again
/// on its port, and times the phases until it answers at `target`.
async fn wipe_and_resync(
    s: &mut InProcess,
    pki: &Path,
    practice: &str,
    target: i64,
    events: &events::Recorder,
) -> Resync {
    s.stop().await;
    let db = s.database();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    events.start();
    let t = Instant::now();
    s.restart(pki).await;
    answer_at(pki, s.addr, practice, 0).await;
    let started = t.elapsed();
    answer_at(pki, s.addr, practice, target).await;
    let answered = t.elapsed();
    events.stop();
    let since = |text: &str| events.first(text).map_or(Duration::ZERO, |e| e.duration_since(t));
    Resync {
        started,
        noticed: since("resynchronising with a snapshot"),
        transfer: since("span replace_rules"),
        installed: since("snapshot installed"),
        answered,
    }
}

/// Bytes of a SQLite store with its -wal file.
fn store_bytes(db: &Path) -> u64 {
    ["", "-wal"]
        .iter()
        .filter_map(|suffix| std::fs::metadata(format!("{}{suffix}", db.display())).ok())
        .map(|m| m.len())
        .sum()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    percentile(&v, 0.5)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// A state's figures for the side-by-side summary.
#[derive(Default)]
struct Figures {
    starts: Vec<Duration>,
    rss: Vec<f64>,
    peak: Vec<f64>,
    resyncs: Vec<Resync>,
}

async fn long_history_part(dir: &Path, pki: &Path, s: &Sizes, pin: &Pinning) {
    let estate = rollout_store::reference::read_estate(&data().0, &data().1).expect("estate");
    let steps = long_history(s.history, &estate);
    let young = young_history();
    let long = history_commands(&steps);
    let in_force = InForce::of(&long);
    let targets_at = [young.len() as i64, long.len() as i64];
    let (names, requests) = emis_requests();
    let probe = names[0]
        .strip_prefix("practices/")
        .and_then(|n| n.split('/').next())
        .expect("code")
        .to_owned();

    // Both states at supplier processes of their own, built as the coordinator would deliver
    // them: one ApplyCommand after another.
    let addrs = [free_addr(), free_addr()];
    let mut children = [
        spawn_supplier(dir, pki, pin, "info", "young", addrs[0]),
        spawn_supplier(dir, pki, pin, "info", "long", addrs[1]),
    ];
    let mut built = Duration::ZERO;
    for (addr, commands) in addrs.iter().zip([&young, &long]) {
        answer_at(pki, *addr, &probe, 0).await;
        let t = Instant::now();
        apply_all(
            &mut ControlServiceClient::new(channel(pki, "coordinator", *addr)),
            commands,
        )
        .await;
        built = t.elapsed();
    }
    let counts = ControlServiceClient::new(channel(pki, "coordinator", addrs[1]))
        .get_sync_state(pb::GetSyncStateRequest::default())
        .await
        .expect("sync state")
        .into_inner()
        .feature_counts;
    let counts = counts.first().cloned().unwrap_or_default();
    let lists: Vec<usize> = steps
        .iter()
        .filter_map(|s| match s {
            Step::Halt(Scope::Practices(codes), _) => {
                Some(codes.iter().filter(|c| estate.get(c).is_some()).count())
            }
            _ => None,
        })
        .collect();
    let (kinds, resumes) = steps
        .iter()
        .fold(([0usize; 3], 0usize), |(mut k, r), step| match step {
            Step::Halt(Scope::Practices(_), _) => {
                k[0] += 1;
                (k, r)
            }
            Step::Halt(..) => {
                k[1] += 1;
                (k, r)
            }
            Step::Resume(..) => (k, r + 1),
            Step::GoLive(..) => {
                k[2] += 1;
                (k, r)
            }
        });
    println!(
        "5. long history: the EMIS supplier with a young history ({} commands) and a long one ({} commands)",
        young.len(),
        long.len()
    );
    println!(
        "   long history: {} halts listing {} codes ({:.0} real practice codes a list on average, the rest codes no supplier holds), {} national, regional, ICB and sub-ICB halts, {resumes} resumes, {} go-lives after the first; applied at a supplier process one ApplyCommand at a time in {:.1} s",
        kinds[0],
        s.history.list_size,
        lists.iter().sum::<usize>() as f64 / lists.len().max(1) as f64,
        kinds[1],
        kinds[2],
        built.as_secs_f64()
    );
    println!(
        "   in force after compaction: {} rules ({} list halts, {} area halts, {} national halts, {} go-lives) and the feature's definition",
        in_force.rules(),
        in_force.list_halts,
        in_force.area_halts,
        in_force.national_halts,
        in_force.go_lives
    );
    println!(
        "   EMIS answers in the long state: {} practices, {} enabled, {} halted, {} other",
        counts.practices,
        counts.enabled,
        counts.halted,
        counts.practices - counts.enabled - counts.halted
    );

    // Read throughput of both against the echo, in the same rounds.
    let (mut echo_child, echo_addr) = echo_process(pki, pin).await;
    let sizes = [
        answer_sizes(pki, addrs[0], &names).await,
        answer_sizes(pki, addrs[1], &names).await,
    ];
    let targets = [
        ReadTarget {
            label: "young history".into(),
            addr: addrs[0],
            pid: children[0].id().expect("pid"),
            path: "/nhs.gprollout.v1.ToggleService/GetPracticeFeature",
        },
        ReadTarget {
            label: "long history".into(),
            addr: addrs[1],
            pid: children[1].id().expect("pid"),
            path: "/nhs.gprollout.v1.ToggleService/GetPracticeFeature",
        },
        ReadTarget {
            label: "bare tonic echo".into(),
            addr: echo_addr,
            pid: echo_child.id().expect("echo pid"),
            path: echo::PATH,
        },
    ];
    let reads = read_rounds(pki, s, pin, &targets, &requests).await;
    let _ = echo_child.kill().await;
    println!(
        "   read throughput, GetPracticeFeature of every active EMIS practice in turn: {} connections x {} calls in flight, {}; {} rounds of {} s per side, the order rotated",
        s.connections,
        s.concurrency,
        pin.describe(),
        s.rounds,
        s.round.as_secs_f64()
    );
    reads.print(
        &targets,
        &[
            sizes_text(&sizes[0]),
            sizes_text(&sizes[1]),
            format!("{} bytes", requests[0].len()),
        ],
    );
    for (i, label) in ["young", "long "].iter().enumerate() {
        let (low, high) = reads.range(i);
        println!(
            "   {label} / echo: median of rounds {:.2} (rounds {low:.2} to {high:.2}), overall {:.2}; server CPU per call, echo / this {:.2}{}",
            reads.median(i),
            reads.overall(i),
            reads.cpu_per_call(2) / reads.cpu_per_call(i),
            if i == 1 { "   (target long >= 0.8)" } else { "" }
        );
    }

    // Start on an existing store: spawn until the first answer at the state's sequence.
    for child in &mut children {
        stop_process(child).await;
    }
    let stores = [
        store_bytes(&dir.join("young.db")),
        store_bytes(&dir.join("long.db")),
    ];
    let mut figures = [Figures::default(), Figures::default()];
    for _ in 0..s.restarts {
        for (i, name) in ["young", "long"].iter().enumerate() {
            let t = Instant::now();
            let mut child = spawn_supplier(dir, pki, pin, "info", name, addrs[i]);
            answer_at(pki, addrs[i], &probe, targets_at[i]).await;
            figures[i].starts.push(t.elapsed());
            let pid = child.id().expect("pid");
            figures[i].rss.push(memory_mib(pid, "VmRSS:"));
            figures[i].peak.push(memory_mib(pid, "VmHWM:"));
            stop_process(&mut child).await;
        }
    }

    // A wiped supplier, resynchronised by the coordinator: young, then long.
    let stack = dir.join("stack");
    std::fs::create_dir_all(&stack).expect("dir");
    let (stop_coordinator, coordinator_stopped) = oneshot::channel::<()>();
    let (mut alice, mut bob, mut suppliers) = coordinator_stack(&stack, pki, async {
        let _ = coordinator_stopped.await;
    })
    .await;
    let events = events::Recorder::install();
    let young_target = target_sequence(&mut alice).await;
    converged(&mut alice, young_target).await;
    for _ in 0..s.restarts {
        let r = wipe_and_resync(&mut suppliers[0], pki, &probe, young_target, &events).await;
        figures[0].resyncs.push(r);
    }
    let t = Instant::now();
    let long_target = issue_history(&mut alice, &mut bob, &steps).await;
    let issued = t.elapsed();
    converged(&mut alice, long_target).await;
    let delivered = t.elapsed();
    for _ in 0..s.restarts {
        let r = wipe_and_resync(&mut suppliers[0], pki, &probe, long_target, &events).await;
        figures[1].resyncs.push(r);
    }
    let _ = stop_coordinator.send(());
    for s in &mut suppliers {
        s.stop().await;
    }
    println!(
        "   through the coordinator (four suppliers in this process): the long history issued by alice and bob in {:.1} s, applied by every supplier after {:.1} s",
        issued.as_secs_f64(),
        delivered.as_secs_f64()
    );
    let list = |v: &[Duration]| v.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(", ");
    for (i, (label, f)) in ["young", "long "].iter().zip(&figures).enumerate() {
        println!(
            "   {label}: store {:.2} MiB; process start to first answer {} (median of {}: {}), VmRSS {:.0} MiB, VmHWM {:.0} MiB",
            mib(stores[i]),
            ms(median(f.starts.clone())),
            f.starts.len(),
            list(&f.starts),
            f.rss.iter().sum::<f64>() / f.rss.len() as f64,
            f.peak.iter().sum::<f64>() / f.peak.len() as f64,
        );
        let phase = |p: fn(&Resync) -> Duration| f.resyncs.iter().map(p).collect::<Vec<_>>();
        println!(
            "          wiped supplier answering at sequence {} after {} (median of {}: {}){}",
            if i == 0 { young_target } else { long_target },
            ms(median(phase(|r| r.answered))),
            f.resyncs.len(),
            list(&phase(|r| r.answered)),
            if i == 1 { "   (target <= 2 s)" } else { "" }
        );
        println!(
            "          from its restart: answering on an empty store {}; the coordinator noticed (its state watch ended at the stop, so it retried at once with backoff rather than wait for its heartbeat, every {} s) {}; ReplaceRules called {}; snapshot committed {}",
            list(&phase(|r| r.started)),
            HEARTBEAT.as_secs(),
            list(&phase(|r| r.noticed)),
            list(&phase(|r| r.transfer)),
            list(&phase(|r| r.installed)),
        );
        println!(
            "          the resynchronisation itself, from the coordinator noticing to the answer at the target: {}",
            list(&phase(|r| r.answered.saturating_sub(r.noticed))),
        );
    }
}

fn main() {
    rollout_net::tls::install_crypto_provider();
    let mut args = std::env::args().skip(1);
    // `--only read|propagation|watch|history` runs one part.
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
            warm_up: Duration::from_millis(200),
            connections: 2,
            concurrency: 8,
            halts: 10,
            watchers: 200,
            history: Shape {
                commands: 50,
                list_halts: 10,
                list_size: 200,
            },
            restarts: 1,
        }
    } else {
        Sizes {
            rounds: 10,
            round: Duration::from_secs(2),
            warm_up: Duration::from_secs(1),
            connections: 4,
            concurrency: 64,
            halts: 200,
            watchers: 10_000,
            history: Shape {
                commands: 2_000,
                list_halts: 200,
                list_size: 5_000,
            },
            restarts: 3,
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
        if run("history") {
            long_history_part(&sub("history"), &pki, &sizes, &pin).await;
        }
    });
}
