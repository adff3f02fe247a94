//! `rolloutctl dev up`: the local stack. A coordinator and four suppliers as separate processes
//! on loopback, each on its own SQLite file, with the development PKI, the synthetic national
//! estate, and a national go-live then halt run through the coordinator, until Ctrl-C.
//!
//! Ports (README.md, "What runs"): coordinator on N, suppliers emis, tpp, cegedim,
//! microtest on N+1..N+4, plaintext health on N+10 (coordinator) and N+11..N+14.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use rollout_proto::v1 as pb;
use tokio::process::{Child, Command};

use crate::{
    client::{CliError, Connection},
    cmd::{Exit, Outcome},
    pki,
};

/// The feature the demo defines.
pub const FEATURE: &str = "prospective-record-access";

const EPRACCUR: &[u8] = include_bytes!("../../../data/epraccur.csv");
const SUPPLIER_MAP: &[u8] = include_bytes!("../../../data/gp-system-suppliers.csv");

/// The stack's layout.
#[derive(Debug, Clone)]
pub struct Layout {
    /// State directory.
    pub dir: PathBuf,
    /// Port base N.
    pub base: u16,
}

impl Layout {
    /// The coordinator's gRPC port.
    pub fn coordinator(&self) -> u16 {
        self.base
    }

    /// A supplier's gRPC port.
    pub fn supplier(&self, i: usize) -> u16 {
        self.base + 1 + i as u16
    }

    /// The plaintext health ports: coordinator first, then the suppliers.
    pub fn health(&self, i: usize) -> u16 {
        self.base + 10 + i as u16
    }

    fn pki(&self) -> PathBuf {
        self.dir.join("pki")
    }
}

fn fail(msg: impl Into<String>) -> CliError {
    CliError::Local(msg.into())
}

fn write(path: &Path, contents: &[u8]) -> Result<(), CliError> {
    std::fs::write(path, contents).map_err(|e| fail(format!("cannot write {}: {e}", path.display())))
}

/// Refuses to start when any port of the stack is taken.
fn check_ports(layout: &Layout) -> Result<(), CliError> {
    let ports = std::iter::once(layout.coordinator())
        .chain((0..4).map(|i| layout.supplier(i)))
        .chain((0..5).map(|i| layout.health(i)));
    for port in ports {
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            return Err(fail(format!(
                "port {port} on 127.0.0.1 is in use: is another `rolloutctl dev up` running? Stop it, or choose other ports with --port-base"
            )));
        }
    }
    Ok(())
}

/// Writes what the processes read: PKI (kept if present), reference data, policies, suppliers.
fn prepare(layout: &Layout) -> Result<bool, CliError> {
    let dir = &layout.dir;
    std::fs::create_dir_all(dir.join("logs"))
        .map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
    let reused = layout.pki().join("ca.pem").is_file();
    if !reused {
        pki::init(&layout.pki(), false).map_err(|e| fail(e.to_string()))?;
    }
    std::fs::create_dir_all(dir.join("data")).map_err(|e| fail(e.to_string()))?;
    write(&dir.join("data/epraccur.csv"), EPRACCUR)?;
    write(&dir.join("data/gp-system-suppliers.csv"), SUPPLIER_MAP)?;
    for s in pki::SUPPLIERS {
        let policy = format!(
            "# Who may call supplier {s} in the local stack.\n[identities]\n\
             \"spiffe://gprollout.test/supplier/{s}/backend\" = [\"backend\"]\n\
             \"spiffe://gprollout.test/supplier/{s}/practice-admin\" = [\"practice-admin\"]\n\
             \"spiffe://gprollout.test/coordinator\" = [\"coordinator\"]\n"
        );
        write(&dir.join(format!("policy-{s}.toml")), policy.as_bytes())?;
    }
    let coordinator_policy = "# Who may call the coordinator in the local stack.\n[identities]\n\
        \"spiffe://gprollout.test/operator/alice\" = [\"operator\", \"approver\"]\n\
        \"spiffe://gprollout.test/operator/bob\" = [\"operator\", \"approver\"]\n\
        \"spiffe://gprollout.test/auditor\" = [\"auditor\"]\n\
        \"spiffe://gprollout.test/viewer\" = [\"viewer\"]\n";
    write(
        &dir.join("policy-coordinator.toml"),
        coordinator_policy.as_bytes(),
    )?;
    let suppliers: String = pki::SUPPLIERS
        .iter()
        .enumerate()
        .map(|(i, s)| {
            format!(
                "[[supplier]]\nid = \"{s}\"\nendpoint = \"localhost:{}\"\nidentity = \"spiffe://gprollout.test/supplier/{s}\"\n\n",
                layout.supplier(i)
            )
        })
        .collect();
    write(&dir.join("suppliers.toml"), suppliers.as_bytes())?;
    Ok(reused)
}

/// A workspace binary next to this one.
fn sibling(name: &str) -> Result<PathBuf, CliError> {
    let exe = std::env::current_exe().map_err(|e| fail(format!("cannot find this program: {e}")))?;
    let dir = exe
        .parent()
        .ok_or_else(|| fail("cannot find this program's directory"))?;
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(fail(format!(
            "{name} not found in {}: build every binary first (cargo build --workspace --bins)",
            dir.display()
        )))
    }
}

/// A running child process with its name.
struct Proc {
    name: String,
    child: Child,
}

fn spawn(layout: &Layout, name: &str, program: &Path, args: Vec<String>) -> Result<Proc, CliError> {
    let log_path = layout.dir.join("logs").join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path)
        .map_err(|e| fail(format!("cannot create {}: {e}", log_path.display())))?;
    let err = log.try_clone().map_err(|e| fail(e.to_string()))?;
    let child = Command::new(program)
        .args(&args)
        .env("ROLLOUT_LOG_FORMAT", "plain")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("cannot start {}: {e}", program.display())))?;
    Ok(Proc {
        name: name.to_owned(),
        child,
    })
}

fn tls_args(pki: &Path, name: &str) -> Vec<String> {
    vec![
        "--tls-ca".into(),
        pki.join("ca.pem").display().to_string(),
        "--tls-cert".into(),
        pki.join(format!("{name}.pem")).display().to_string(),
        "--tls-key".into(),
        pki.join(format!("{name}-key.pem")).display().to_string(),
    ]
}

/// Waits until the plaintext health port answers SERVING.
async fn ready(name: &str, port: u16, deadline: Instant, procs: &mut [Proc]) -> Result<(), CliError> {
    use rollout_net::MessageLimits;
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    loop {
        for p in procs.iter_mut() {
            if let Ok(Some(status)) = p.child.try_wait() {
                return Err(fail(format!(
                    "{} exited ({status}) while starting: see its log",
                    p.name
                )));
            }
        }
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .map_err(|e| fail(e.to_string()))?;
        if let Ok(channel) = endpoint.connect().await
            && let Ok(r) = HealthClient::new(channel)
                .with_message_limits()
                .check(HealthCheckRequest::default())
                .await
            && r.get_ref().status() == ServingStatus::Serving
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(fail(format!(
                "{name} did not become ready on health port {port} within 60 s: see its log"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Stops every process: SIGINT, then waits up to 15 s each, then kills.
async fn stop_all(procs: &mut Vec<Proc>) {
    for p in procs.iter() {
        if let Some(pid) = p.child.id() {
            let _ = Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .status()
                .await;
        }
    }
    for p in procs.iter_mut() {
        match tokio::time::timeout(Duration::from_secs(15), p.child.wait()).await {
            Ok(_) => println!("  stopped {}", p.name),
            Err(_) => {
                let _ = p.child.kill().await;
                println!("  killed {} (it did not stop within 15 s)", p.name);
            }
        }
    }
    procs.clear();
}

fn connection(layout: &Layout, who: &str) -> Connection {
    Connection {
        coordinator: format!("localhost:{}", layout.coordinator()),
        pki_dir: layout.pki(),
        identity: Some(who.to_owned()),
        ca: None,
        cert: None,
        key: None,
    }
}

/// Follows a command until every supplier has answered.
async fn delivered(layout: &Layout, name: &str) -> Result<pb::Command, CliError> {
    let mut c = connection(layout, "viewer").client()?;
    let mut stream = c
        .watch_command(pb::WatchCommandRequest { name: name.into() })
        .await
        .map_err(|s| fail(s.message().to_owned()))?
        .into_inner();
    let follow = async {
        while let Some(u) = stream.message().await.map_err(|s| fail(s.message().to_owned()))? {
            if u.complete {
                return u.command.ok_or_else(|| fail("empty update"));
            }
        }
        Err(fail("the watch ended before every supplier answered"))
    };
    tokio::time::timeout(Duration::from_secs(60), follow)
        .await
        .map_err(|_| fail(format!("{name} was not delivered within 60 s")))?
}

/// The demo: define the feature, go live nationally (alice asks, bob approves), halt nationally,
/// and verify the halt.
async fn demo(layout: &Layout) -> Result<(), CliError> {
    let mut alice = connection(layout, "alice").client()?;
    let mut bob = connection(layout, "bob").client()?;
    let call = |s: tonic::Status| fail(format!("{:?}: {}", s.code(), s.message()));
    alice
        .create_feature(pb::CreateFeatureRequest {
            feature_id: FEATURE.into(),
            feature: Some(pb::Feature {
                description: "automatic prospective online record access for patients".into(),
                fail_mode: pb::FailMode::Static.into(),
                ..Default::default()
            }),
            reason: "local stack".into(),
            request_id: String::new(),
        })
        .await
        .map_err(call)?;
    println!("  defined features/{FEATURE}");
    let national = || pb::Scope {
        target: Some(pb::scope::Target::National(pb::scope::National {})),
    };
    let go = alice
        .schedule_go_live(pb::ScheduleGoLiveRequest {
            name: format!("features/{FEATURE}"),
            scope: Some(national()),
            effective_time: None,
            reason: "national go-live".into(),
            request_id: String::new(),
            dry_run: false,
            ..Default::default()
        })
        .await
        .map_err(call)?
        .into_inner();
    println!(
        "  alice asked for a national go-live ({}): pending approval",
        go.name
    );
    bob.approve_command(pb::ApproveCommandRequest {
        name: go.name.clone(),
        comment: "approved for the local stack".into(),
        request_id: String::new(),
    })
    .await
    .map_err(call)?;
    delivered(layout, &go.name).await?;
    println!("  bob approved it; all four suppliers applied it");
    let issued = Instant::now();
    let halt = alice
        .halt_feature(pb::HaltFeatureRequest {
            name: format!("features/{FEATURE}"),
            scope: Some(national()),
            reason: "halted until further notice".into(),
            request_id: String::new(),
            dry_run: false,
            ..Default::default()
        })
        .await
        .map_err(call)?
        .into_inner();
    println!(
        "  alice halted it nationally ({}, sequence {})",
        halt.name, halt.sequence
    );
    let done = delivered(layout, &halt.name).await?;
    for d in &done.deliveries {
        println!("    {:<26} {}", d.supplier, d.state().as_str_name());
    }
    let verify = alice
        .verify_command(pb::VerifyCommandRequest {
            name: halt.name.clone(),
        })
        .await
        .map_err(call)?
        .into_inner();
    println!(
        "  halt {}: {} practices still enabled; time to a verified halt {} ms",
        if verify.verified {
            "VERIFIED"
        } else {
            "NOT VERIFIED"
        },
        verify.enabled_count,
        issued.elapsed().as_millis()
    );
    Ok(())
}

fn tour(layout: &Layout) {
    let pki = layout.pki();
    let p = pki.display();
    let c = layout.coordinator();
    let e = layout.supplier(0);
    let h = layout.health(0);
    println!(
        "\nThe stack is up. Try, in another terminal:\n\n\
         # reflection and an explained answer at EMIS, as its backend\n\
         grpcurl -cacert {p}/ca.pem -cert {p}/backend-emis.pem -key {p}/backend-emis-key.pem localhost:{e} list\n\
         grpcurl -cacert {p}/ca.pem -cert {p}/backend-emis.pem -key {p}/backend-emis-key.pem \\\n  \
         -d '{{\"name\": \"practices/L56296/features/{FEATURE}\", \"explain\": true}}' localhost:{e} nhs.gprollout.v1.ToggleService/GetPracticeFeature\n\n\
         # the operator's view\n\
         rolloutctl --coordinator localhost:{c} --pki-dir {p} --as viewer status\n\
         rolloutctl --coordinator localhost:{c} --pki-dir {p} --as viewer commands list\n\
         rolloutctl --coordinator localhost:{c} --pki-dir {p} --as viewer practice show L56296 --feature {FEATURE}\n\n\
         # the plaintext health port, as probes call it (no certificate)\n\
         grpcurl -plaintext localhost:{h} grpc.health.v1.Health/Check\n\n\
         Each process logs to {}/logs/NAME.log (coordinator, supplier-emis, ...). Press Ctrl-C to stop everything.",
        layout.dir.display()
    );
}

/// Runs the stack until Ctrl-C (SIGINT) or SIGTERM.
pub async fn up(layout: Layout) -> Outcome {
    // Take SIGINT and SIGTERM before starting anything: a Ctrl-C during start-up must stop the
    // children too, not kill this process and leave them running.
    use tokio::signal::unix::{SignalKind, signal};
    let signals = |kind| signal(kind).map_err(|e| fail(format!("cannot listen for signals: {e}")));
    let (mut interrupt, mut term) = (
        signals(SignalKind::interrupt())?,
        signals(SignalKind::terminate())?,
    );
    check_ports(&layout)?;
    let supplier_bin = sibling("rollout-supplier")?;
    let coordinator_bin = sibling("rollout-coordinator")?;
    let reused = prepare(&layout)?;
    println!(
        "{} state in {}",
        if reused { "reusing" } else { "created" },
        layout.dir.display()
    );
    let pki = layout.pki();
    let data = layout.dir.join("data");
    let mut procs = Vec::new();
    let startup = async {
        for (i, s) in pki::SUPPLIERS.iter().enumerate() {
            let mut args = vec![
                "--supplier-id".into(),
                (*s).to_owned(),
                "--listen".into(),
                format!("127.0.0.1:{}", layout.supplier(i)),
                "--health-listen".into(),
                format!("127.0.0.1:{}", layout.health(i + 1)),
                "--policy".into(),
                layout.dir.join(format!("policy-{s}.toml")).display().to_string(),
                "--database-url".into(),
                format!(
                    "sqlite://{}",
                    layout.dir.join(format!("supplier-{s}.db")).display()
                ),
                "--practice-file".into(),
                data.join("epraccur.csv").display().to_string(),
                "--supplier-map".into(),
                data.join("gp-system-suppliers.csv").display().to_string(),
            ];
            args.extend(tls_args(&pki, &format!("supplier-{s}")));
            procs.push(spawn(&layout, &format!("supplier-{s}"), &supplier_bin, args)?);
            println!(
                "starting supplier {s} on localhost:{} (health localhost:{})",
                layout.supplier(i),
                layout.health(i + 1)
            );
        }
        let mut args = vec![
            "--listen".into(),
            format!("127.0.0.1:{}", layout.coordinator()),
            "--health-listen".into(),
            format!("127.0.0.1:{}", layout.health(0)),
            "--policy".into(),
            layout.dir.join("policy-coordinator.toml").display().to_string(),
            "--suppliers".into(),
            layout.dir.join("suppliers.toml").display().to_string(),
            "--database-url".into(),
            format!("sqlite://{}", layout.dir.join("coordinator.db").display()),
            "--practice-file".into(),
            data.join("epraccur.csv").display().to_string(),
            "--supplier-map".into(),
            data.join("gp-system-suppliers.csv").display().to_string(),
        ];
        args.extend(tls_args(&pki, "coordinator"));
        procs.push(spawn(&layout, "coordinator", &coordinator_bin, args)?);
        println!(
            "starting coordinator on localhost:{} (health localhost:{})",
            layout.coordinator(),
            layout.health(0)
        );

        let deadline = Instant::now() + Duration::from_secs(60);
        for (i, s) in pki::SUPPLIERS.iter().enumerate() {
            ready(
                &format!("supplier {s}"),
                layout.health(i + 1),
                deadline,
                &mut procs,
            )
            .await?;
            println!("  supplier {s} ready");
        }
        ready("coordinator", layout.health(0), deadline, &mut procs).await?;
        println!("  coordinator ready");

        let defined = connection(&layout, "viewer")
            .client()?
            .get_feature(pb::GetFeatureRequest {
                name: format!("features/{FEATURE}"),
            })
            .await
            .is_ok();
        if defined {
            println!("features/{FEATURE} is already defined here: the earlier state is kept as it was");
        } else {
            println!("running the national go-live and halt:");
            demo(&layout).await?;
        }
        tour(&layout);
        Ok::<_, CliError>(())
    };
    let result = tokio::select! {
        r = startup => r,
        _ = interrupt.recv() => Err(fail("interrupted while starting")),
        _ = term.recv() => Err(fail("terminated while starting")),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        println!("stopping:");
        stop_all(&mut procs).await;
        return Ok(Exit::Error);
    }

    // Run until interrupted, or until a process dies.
    let died = async {
        loop {
            for p in procs.iter_mut() {
                if let Ok(Some(status)) = p.child.try_wait() {
                    return format!("{} exited unexpectedly ({status})", p.name);
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    let code = tokio::select! {
        _ = interrupt.recv() => { println!("\ninterrupted: stopping"); Exit::Success }
        _ = term.recv() => { println!("terminated: stopping"); Exit::Success }
        why = died => { eprintln!("error: {why}: see its log in {}/logs", layout.dir.display()); Exit::Error }
    };
    stop_all(&mut procs).await;
    println!(
        "stopped; the state in {} is kept for the next `dev up`",
        layout.dir.display()
    );
    Ok(code)
}
