//! `rolloutctl dev up`: the local stack. A coordinator and four suppliers as separate processes
//! on loopback, each on its own SQLite file, with the development PKI, the synthetic national
//! estate, and a national go-live then halt run through the coordinator, until Ctrl-C.
//!
//! Ports (README.md, "What runs"): coordinator on N, suppliers emis, tpp, cegedim,
//! microtest on N+1..N+4, plaintext health on N+10 (coordinator) and N+11..N+14, Prometheus
//! metrics on N+20 (coordinator) and N+21..N+24, the coordinator's status page (HTTPS) on N+30.

use std::{
    fmt,
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use rollout_proto::v1 as pb;

use crate::{
    client::{CliError, Connection},
    cmd::{Exit, Outcome},
    pki,
};

/// A line on standard output, as `println!` would write it, but never a panic: see [`say`].
macro_rules! say {
    ($($arg:tt)*) => { $crate::dev::say(format_args!($($arg)*)) };
}

/// A line on standard error, as `eprintln!` would write it, but never a panic.
macro_rules! complain {
    ($($arg:tt)*) => { $crate::dev::complain(format_args!($($arg)*)) };
}

mod children;

use children::{Proc, ready, spawn, stop_all};

/// Writes a line to standard output. `dev up` runs until Ctrl-C whatever becomes of its
/// output: a reader that went away (`rolloutctl dev up | head`) or a closed terminal must not
/// stop it from stopping its children, so a line that cannot be written is dropped.
pub(crate) fn say(line: fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// Writes a line to standard error; as [`say`], a line that cannot be written is dropped.
pub(crate) fn complain(line: fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// The feature the demo defines.
pub const FEATURE: &str = "prospective-record-access";

const EPRACCUR: &[u8] = include_bytes!("../../../../data/epraccur.csv");
const SUPPLIER_MAP: &[u8] = include_bytes!("../../../../data/gp-system-suppliers.csv");

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

    /// The plaintext metrics ports: coordinator first, then the suppliers.
    pub fn metrics(&self, i: usize) -> u16 {
        self.base + 20 + i as u16
    }

    /// The coordinator's status page (HTTPS with client certificates).
    pub fn web(&self) -> u16 {
        self.base + 30
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
        .chain((0..5).map(|i| layout.health(i)))
        .chain((0..5).map(|i| layout.metrics(i)))
        .chain([layout.web()]);
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
    // A PKI made before the status page has no browser identity yet.
    if !layout
        .pki()
        .join(format!("{}.p12", pki::BROWSER_IDENTITY))
        .is_file()
    {
        pki::write_pkcs12(&layout.pki(), pki::BROWSER_IDENTITY, pki::DEV_PKCS12_PASSWORD)
            .map_err(|e| fail(e.to_string()))?;
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

/// The TLS flags of a server whose files are `name` in the development PKI.
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
    say!("  defined features/{FEATURE}");
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
    say!(
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
    say!("  bob approved it; all four suppliers applied it");
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
    say!(
        "  alice halted it nationally ({}, sequence {})",
        halt.name,
        halt.sequence
    );
    let done = delivered(layout, &halt.name).await?;
    for d in &done.deliveries {
        say!("    {:<26} {}", d.supplier, d.state().as_str_name());
    }
    let verify = alice
        .verify_command(pb::VerifyCommandRequest {
            name: halt.name.clone(),
            ..Default::default()
        })
        .await
        .map_err(call)?
        .into_inner();
    say!(
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
    say!(
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
         # the status page, in a browser: https://localhost:{w}/\n\
         # It asks for a client certificate. Import the viewer's, {p}/{b}.p12 (password {pw}):\n\
         #   Chromium or Chrome: Settings > Privacy and security > Security > Manage certificates > Your certificates > Import\n\
         #   Firefox: Settings > Privacy & Security > Certificates > View Certificates > Your Certificates > Import\n\
         # Its server certificate is from the development CA: import {p}/ca.pem as an authority, or accept the warning.\n\n\
         Each process logs to {}/logs/NAME.log (coordinator, supplier-emis, ...). Press Ctrl-C to stop everything.",
        layout.dir.display(),
        w = layout.web(),
        b = pki::BROWSER_IDENTITY,
        pw = pki::DEV_PKCS12_PASSWORD,
    );
}

/// A supplier's command line: the `i`th of the stack, `s`.
fn supplier_args(layout: &Layout, i: usize, s: &str, grace: Duration) -> Vec<String> {
    let data = layout.dir.join("data");
    let mut args = vec![
        "--supplier-id".into(),
        s.to_owned(),
        "--listen".into(),
        format!("127.0.0.1:{}", layout.supplier(i)),
        "--health-listen".into(),
        format!("127.0.0.1:{}", layout.health(i + 1)),
        "--metrics-listen".into(),
        format!("127.0.0.1:{}", layout.metrics(i + 1)),
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
        "--shutdown-grace".into(),
        humantime::format_duration(grace).to_string(),
    ];
    args.extend(tls_args(&layout.pki(), &format!("supplier-{s}")));
    args
}

/// The coordinator's command line.
fn coordinator_args(layout: &Layout, grace: Duration) -> Vec<String> {
    let data = layout.dir.join("data");
    let mut args = vec![
        "--listen".into(),
        format!("127.0.0.1:{}", layout.coordinator()),
        "--health-listen".into(),
        format!("127.0.0.1:{}", layout.health(0)),
        "--metrics-listen".into(),
        format!("127.0.0.1:{}", layout.metrics(0)),
        "--web-listen".into(),
        format!("127.0.0.1:{}", layout.web()),
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
        "--shutdown-grace".into(),
        humantime::format_duration(grace).to_string(),
    ];
    args.extend(tls_args(&layout.pki(), "coordinator"));
    args
}

/// Starts the four suppliers and the coordinator (into `procs`, so that they are stopped
/// whatever happens next), waits until each is ready, runs the demo unless the state already
/// has it, and prints the tour.
async fn start(layout: &Layout, grace: Duration, procs: &mut Vec<Proc>) -> Result<(), CliError> {
    let supplier_bin = sibling("rollout-supplier")?;
    let coordinator_bin = sibling("rollout-coordinator")?;
    for (i, s) in pki::SUPPLIERS.iter().enumerate() {
        let args = supplier_args(layout, i, s, grace);
        procs.push(spawn(layout, &format!("supplier-{s}"), &supplier_bin, args)?);
        say!(
            "starting supplier {s} on localhost:{} (health localhost:{}, metrics http://localhost:{}/metrics)",
            layout.supplier(i),
            layout.health(i + 1),
            layout.metrics(i + 1)
        );
    }
    let args = coordinator_args(layout, grace);
    procs.push(spawn(layout, "coordinator", &coordinator_bin, args)?);
    say!(
        "starting coordinator on localhost:{} (health localhost:{}, metrics http://localhost:{}/metrics, status page https://localhost:{}/)",
        layout.coordinator(),
        layout.health(0),
        layout.metrics(0),
        layout.web()
    );

    let deadline = Instant::now() + Duration::from_secs(60);
    for (i, s) in pki::SUPPLIERS.iter().enumerate() {
        ready(&format!("supplier {s}"), layout.health(i + 1), deadline, procs).await?;
        say!("  supplier {s} ready");
    }
    ready("coordinator", layout.health(0), deadline, procs).await?;
    say!("  coordinator ready");

    let defined = connection(layout, "viewer")
        .client()?
        .get_feature(pb::GetFeatureRequest {
            name: format!("features/{FEATURE}"),
        })
        .await
        .is_ok();
    if defined {
        say!("features/{FEATURE} is already defined here: the earlier state is kept as it was");
    } else {
        say!("running the national go-live and halt:");
        demo(layout).await?;
    }
    tour(layout);
    Ok(())
}

/// Runs the stack until Ctrl-C (SIGINT) or SIGTERM, then stops every process within `grace`
/// (each server's own `--shutdown-grace`) and [`children::EXIT_MARGIN`].
pub async fn up(layout: Layout, grace: Duration) -> Outcome {
    // Take SIGINT and SIGTERM before starting anything: a Ctrl-C during start-up must stop the
    // children too, not kill this process and leave them running.
    use tokio::signal::unix::{SignalKind, signal};
    let signals = |kind| signal(kind).map_err(|e| fail(format!("cannot listen for signals: {e}")));
    let (mut interrupt, mut term) = (
        signals(SignalKind::interrupt())?,
        signals(SignalKind::terminate())?,
    );
    check_ports(&layout)?;
    let reused = prepare(&layout)?;
    say!(
        "{} state in {}",
        if reused { "reusing" } else { "created" },
        layout.dir.display()
    );
    let mut procs = Vec::new();
    let result = tokio::select! {
        r = start(&layout, grace, &mut procs) => r,
        _ = interrupt.recv() => Err(fail("interrupted while starting")),
        _ = term.recv() => Err(fail("terminated while starting")),
    };
    if let Err(e) = result {
        complain!("error: {e}");
        say!("stopping:");
        stop_all(&mut procs, grace).await;
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
        _ = interrupt.recv() => { say!("\ninterrupted: stopping"); Exit::Success }
        _ = term.recv() => { say!("terminated: stopping"); Exit::Success }
        why = died => { complain!("error: {why}: see its log in {}/logs", layout.dir.display()); Exit::Error }
    };
    stop_all(&mut procs, grace).await;
    say!(
        "stopped; the state in {} is kept for the next `dev up`",
        layout.dir.display()
    );
    Ok(code)
}
