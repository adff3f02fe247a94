//! What every part uses: clients, the in-process stack's pieces, the commands it sends, the
//! closed-loop load, CPU and core pinning, and the `rollout-supplier` processes.

use super::*;

pub(crate) fn channel(pki: &Path, who: &str, addr: SocketAddr) -> Channel {
    let config = tls::client_config(&TlsFiles::from_pki_dir(pki, who), None).expect("client config");
    tls::channel(&format!("localhost:{}", addr.port()), config).expect("channel")
}

pub(crate) fn policy(dir: &Path, name: &str, lines: &[(&str, &str)]) -> PathBuf {
    let path = dir.join(name);
    let body: String = lines
        .iter()
        .map(|(id, role)| format!("\"{id}\" = [\"{role}\"]\n"))
        .collect();
    std::fs::write(&path, format!("[identities]\n{body}")).expect("policy");
    path
}

/// A supplier running in this process, on SQLite in `dir`.
pub(crate) struct InProcess {
    pub(crate) id: String,
    pub(crate) dir: PathBuf,
    pub(crate) addr: SocketAddr,
    pub(crate) stop: Option<oneshot::Sender<()>>,
    pub(crate) task: Option<tokio::task::JoinHandle<Result<(), rollout_supplier::Error>>>,
}

impl InProcess {
    /// Starts a supplier on a free port.
    pub(crate) async fn start(dir: &Path, pki: &Path, id: &str) -> Self {
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

    pub(crate) fn database(&self) -> PathBuf {
        self.dir.join(format!("{}.db", self.id))
    }

    pub(crate) fn serve(&mut self, pki: &Path, listener: TcpListener) {
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
            shutdown_grace: Duration::from_secs(10),
            budgets: Default::default(),
        };
        let (stop, stopped) = oneshot::channel();
        self.stop = Some(stop);
        self.task = Some(tokio::spawn(rollout_supplier::serve(
            config,
            rollout_net::server::Listeners::new(listener, None),
            async {
                let _ = stopped.await;
            },
        )));
    }

    /// Stops it and waits until its store is closed.
    pub(crate) async fn stop(&mut self) {
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
    pub(crate) async fn restart(&mut self, pki: &Path) {
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
pub(crate) fn domain_command(
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
        redelivery_of: None,
        supplier: None,
    }
}

/// A command as parts 1 and 4 have always sent it (requester "bench", no approvals), so that
/// their figures stay comparable from run to run.
pub(crate) fn command(sequence: u64, id: &str, action: rollout_core::Action) -> pb::Command {
    rollout_net::wire::command_pb(&rollout_core::Command {
        requester: "bench".into(),
        approved_by: vec![],
        ..domain_command(sequence, id, action, "benchmark")
    })
}

/// The young history of part 5: the feature defined (sequence 1) and live nationally (2).
pub(crate) fn young_history() -> Vec<rollout_core::Command> {
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
pub(crate) async fn apply_all(
    control: &mut ControlServiceClient<Channel>,
    commands: &[rollout_core::Command],
) {
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

pub(crate) async fn make_live(control: &mut ControlServiceClient<Channel>) {
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
pub(crate) struct Side {
    pub(crate) calls: u64,
    pub(crate) seconds: f64,
    pub(crate) latencies: Vec<Duration>,
    pub(crate) server_cpu: f64,
}

impl Side {
    pub(crate) fn rps(&self) -> f64 {
        self.calls as f64 / self.seconds
    }
}

/// Runs `workers` closed-loop workers (each awaiting one call at a time) for `length`; returns
/// the calls made, the seconds taken and every latency.
pub(crate) async fn load<F, Fut>(
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
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
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
pub(crate) struct Pinning {
    pub(crate) cores: usize,
}

impl Pinning {
    pub(crate) fn detect() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let taskset = std::process::Command::new("taskset")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        Pinning {
            cores: if taskset { cores } else { 1 },
        }
    }

    pub(crate) fn describe(&self) -> &'static str {
        if self.cores >= 2 {
            "server on core 1, load generator on core 0"
        } else {
            "unpinned (one core, or no taskset)"
        }
    }

    /// A command for a server under test, on its own core when there is one.
    pub(crate) fn server(&self, program: &Path) -> tokio::process::Command {
        if self.cores >= 2 {
            let mut c = tokio::process::Command::new("taskset");
            c.args(["-c", "1"]).arg(program);
            c
        } else {
            tokio::process::Command::new(program)
        }
    }

    pub(crate) fn set_self(&self, cores: &str) {
        if self.cores >= 2 {
            let _ = std::process::Command::new("taskset")
                .args(["-a", "-p", "-c", cores, &std::process::id().to_string()])
                .stdout(std::process::Stdio::null())
                .status();
        }
    }

    /// Moves every thread of this process to core 0.
    pub(crate) fn load_generator(&self) {
        self.set_self("0");
    }

    /// Lets this process use every core again.
    pub(crate) fn release(&self) {
        self.set_self(&format!("0-{}", self.cores.saturating_sub(1)));
    }
}

/// The path of a binary built next to this benchmark.
pub(crate) fn binary(name: &str) -> PathBuf {
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
pub(crate) fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// Spawns a `rollout-supplier` process for EMIS on `addr`, on the SQLite store `NAME.db` in
/// `dir` (created if missing), importing the synthetic estate at start, logging to `NAME.log`;
/// `args` are added to its command line (metrics are off unless they turn them on).
pub(crate) fn spawn_supplier(
    dir: &Path,
    pki: &Path,
    pin: &Pinning,
    log: &str,
    (name, addr): (&str, SocketAddr),
    args: &[&str],
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
        // Metrics off unless a part asks (`--metrics-listen` overrides it).
        .env("ROLLOUT_METRICS_LISTEN", "off")
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
        .args(args)
        .env("ROLLOUT_LOG", log)
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .expect("start rollout-supplier")
}

/// Starts a `rollout-supplier` process for EMIS on SQLite with the synthetic estate, waits until
/// it answers, and makes the feature live nationally; its store and log are named `name`, and
/// `args` are added to its command line.
pub(crate) async fn supplier_process(
    dir: &Path,
    pki: &Path,
    pin: &Pinning,
    (log, name): (&str, &str),
    args: &[&str],
) -> (tokio::process::Child, SocketAddr) {
    let addr = free_addr();
    let child = spawn_supplier(dir, pki, pin, log, (name, addr), args);
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
pub(crate) async fn answer_at(
    pki: &Path,
    addr: SocketAddr,
    practice: &str,
    sequence: i64,
) -> pb::PracticeFeature {
    let start = Instant::now();
    let name = format!("practices/{practice}/features/{FEATURE}");
    let mut client = None;
    loop {
        let c = client.get_or_insert_with(|| ToggleServiceClient::new(channel(pki, "backend-emis", addr)));
        match c
            .get_practice_feature(pb::GetPracticeFeatureRequest {
                name: name.clone(),
                explain: false,
            })
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
pub(crate) async fn stop_process(child: &mut tokio::process::Child) {
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
