//! The real OpenFeature Node SDK and flagd provider (RPC mode, `tests/openfeature/node`) through
//! the real stunnel sidecar started from the shipped `deploy/openfeature/stunnel.conf`: the
//! provider becomes ready and every answer is GetPracticeFeature's; the same provider without the
//! sidecar, behind a sidecar with a non-backend identity, or behind one expecting another server
//! name, gets no answer but the code default `false`.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use rollout_core::Scope;
use rollout_proto::v1::practice_feature::State as S;
use serde_json::Value;
use tokio::net::TcpStream;

use crate::support::{
    FEATURE, define, go_live,
    process::Process,
    supplier::{EMIS_A, EMIS_B, EMIS_CLOSED, EMIS_QRP, apply, control, emis, get, toggle},
};

/// The programs and packages the test runs.
struct Tools {
    node: PathBuf,
    /// The folder holding `node_modules` with the pinned packages.
    packages: PathBuf,
    stunnel: PathBuf,
}

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Whether `program ARG` runs and succeeds.
fn runs(program: &Path, arg: &str) -> bool {
    std::process::Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The tools, or `None` with a note saying what is missing and how to get it. In CI (`CI` set)
/// a missing tool fails the test instead: this test must run there.
fn tools() -> Option<Tools> {
    let mut missing = Vec::new();
    let node = std::env::var_os("NODE").map_or_else(|| PathBuf::from("node"), PathBuf::from);
    if !runs(&node, "--version") {
        missing.push(
            "node (Node.js 20 or later) is not installed: `apt-get install nodejs`, or set NODE".to_owned(),
        );
    }
    let packages = std::env::var_os("ROLLOUT_TEST_OPENFEATURE_NODE")
        .map_or_else(|| repository().join("target/openfeature-node"), PathBuf::from);
    if !packages.join("node_modules/@openfeature/flagd-provider").is_dir() {
        missing.push(format!(
            "the OpenFeature Node packages are not installed in {}: run scripts/test.sh (it runs `npm ci` \
             of tests/openfeature/node there), or set ROLLOUT_TEST_OPENFEATURE_NODE",
            packages.display()
        ));
    }
    let stunnel = std::env::var_os("STUNNEL")
        .map(PathBuf::from)
        .or_else(|| {
            ["stunnel", "stunnel4"]
                .into_iter()
                .map(PathBuf::from)
                .find(|p| runs(p, "-version"))
        })
        .unwrap_or_else(|| PathBuf::from("stunnel"));
    if !runs(&stunnel, "-version") {
        missing.push(
            "stunnel is not installed: `apt-get install stunnel4` (.ci/run does), or set STUNNEL".to_owned(),
        );
    }
    if missing.is_empty() {
        return Some(Tools {
            node,
            packages,
            stunnel,
        });
    }
    let missing = missing.join("\n  ");
    assert!(
        std::env::var_os("CI").is_none(),
        "the Node OpenFeature test must run in CI; missing:\n  {missing}"
    );
    eprintln!("Node OpenFeature test not run; missing:\n  {missing}");
    None
}

/// The shipped sidecar configuration with only the keys that name files, ports and the
/// supplier's host changed. Every other line (client mode, chain and host verification, TLS
/// 1.3, foreground) is the file as shipped.
fn sidecar_config(changes: &[(&str, String)]) -> String {
    let shipped = std::fs::read_to_string(repository().join("deploy/openfeature/stunnel.conf"))
        .expect("read deploy/openfeature/stunnel.conf");
    let key_of = |line: &str| -> Option<String> {
        let line = line.trim();
        if line.starts_with(';') || line.starts_with('#') {
            return None;
        }
        line.split_once('=').map(|(k, _)| k.trim().to_owned())
    };
    for setting in [
        "client = yes",
        "verifyChain = yes",
        "sslVersionMin = TLSv1.3",
        "foreground = yes",
    ] {
        assert!(
            shipped.lines().any(|l| l.trim() == setting),
            "the shipped sidecar configuration has `{setting}`"
        );
    }
    let mut out = String::new();
    for line in shipped.lines() {
        let change = key_of(line).and_then(|k| changes.iter().find(|(key, _)| *key == k));
        match change {
            Some((key, value)) => out.push_str(&format!("{key} = {value}\n")),
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    for (key, _) in changes {
        let count = shipped
            .lines()
            .filter(|l| key_of(l).as_deref() == Some(*key))
            .count();
        assert_eq!(count, 1, "`{key}` once in the shipped sidecar configuration");
    }
    out
}

/// A running stunnel sidecar (its log read as it is written), killed when dropped.
struct Sidecar {
    process: Process,
    port: u16,
}

impl Sidecar {
    /// Starts stunnel from the shipped configuration as the identity `who` of `pki`, to the
    /// supplier at `supplier`, expecting its certificate to name `server_name`; returns once its
    /// loopback port accepts connections.
    async fn start(
        tools: &Tools,
        dir: &Path,
        pki: &Path,
        who: &str,
        supplier: SocketAddr,
        server_name: &str,
    ) -> Sidecar {
        let mut last = String::new();
        // The accept port is one the system just gave out; if another process takes it before
        // stunnel binds it, stunnel exits and the next attempt takes another.
        for attempt in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let config = dir.join(format!("stunnel-{who}-{attempt}.conf"));
            std::fs::write(
                &config,
                sidecar_config(&[
                    ("accept", format!("127.0.0.1:{port}")),
                    ("connect", format!("localhost:{}", supplier.port())),
                    ("checkHost", server_name.to_owned()),
                    ("cert", pki.join(format!("{who}.pem")).display().to_string()),
                    ("key", pki.join(format!("{who}-key.pem")).display().to_string()),
                    ("CAfile", pki.join("ca.pem").display().to_string()),
                ]),
            )
            .expect("write the sidecar configuration");
            let mut command = tokio::process::Command::new(&tools.stunnel);
            command.arg(&config);
            let mut process = Process::spawn(command);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                    return Sidecar { process, port };
                }
                if let Some(status) = process.child.try_wait().expect("stunnel status") {
                    last = format!("stunnel exited ({status}):\n{}", process.log());
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "stunnel did not accept on 127.0.0.1:{port} within 20 s"
                );
                // Poll the port until it answers (stunnel says nothing once it is bound).
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        panic!("the sidecar did not start: {last}");
    }

    /// Stops stunnel and returns its log.
    async fn stop(mut self) -> String {
        self.process.child.kill().await.expect("stop stunnel");
        self.process.log()
    }
}

/// What the Node provider said: whether it became ready, and one answer per practice.
struct Evaluation {
    ready: bool,
    first: Value,
    answers: Vec<Value>,
    stderr: String,
}

/// Runs `tests/openfeature/node/evaluate.mjs` with the installed packages against
/// `127.0.0.1:port` for `practices`.
async fn evaluate(tools: &Tools, dir: &Path, port: u16, practices: &[&str]) -> Evaluation {
    // The script runs from a folder beside the installed packages, so that the current script
    // resolves them.
    let run = dir.join(format!("node-{port}"));
    std::fs::create_dir_all(&run).expect("mkdir");
    std::fs::copy(
        repository().join("tests/openfeature/node/evaluate.mjs"),
        run.join("evaluate.mjs"),
    )
    .expect("copy evaluate.mjs");
    std::os::unix::fs::symlink(tools.packages.join("node_modules"), run.join("node_modules"))
        .expect("link node_modules");
    let port = port.to_string();
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new(&tools.node)
            .arg(run.join("evaluate.mjs"))
            .args(["--host", "127.0.0.1", "--port", &port, "--feature", FEATURE])
            .args(["--ready-timeout-ms", "15000"])
            .args(practices)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the Node script finishes within 90 s")
    .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    // Shown when a test fails.
    println!("node provider via port {port}:\n{stdout}{stderr}");
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}\n{stderr}")))
        .collect();
    let (first, answers) = lines
        .split_first()
        .unwrap_or_else(|| panic!("no output from the Node script ({}):\n{stderr}", out.status));
    let ready = first["ready"] == Value::Bool(true);
    assert_eq!(
        out.status.code(),
        Some(if ready { 0 } else { 2 }),
        "exit status for ready={ready}:\n{stdout}{stderr}"
    );
    assert_eq!(
        answers.len(),
        practices.len(),
        "one answer per practice:\n{stdout}{stderr}"
    );
    for (a, ods) in answers.iter().zip(practices) {
        assert_eq!(a["targetingKey"], *ods, "{a}");
    }
    Evaluation {
        ready,
        first: first.clone(),
        answers: answers.to_vec(),
        stderr,
    }
}

#[tokio::test]
async fn node_provider_through_the_sidecar_answers_as_get_practice_feature() {
    let Some(tools) = tools() else { return };
    let (tmp, files, server) = emis().await;
    // EMIS_A's ICB halted, EMIS_B opted out, EMIS_QRP enabled, EMIS_CLOSED closed; and a
    // practice of another supplier, answered fail-closed, PRACTICE_NOT_HELD.
    super::live_with_a_halt_and_an_opt_out(&files, &server, "QN7").await;
    let tpp = super::tpp_practice();

    let sidecar = Sidecar::start(
        &tools,
        tmp.path(),
        &files.pki,
        "backend-emis",
        server.addr,
        "localhost",
    )
    .await;
    let held = [EMIS_QRP, EMIS_A, EMIS_B, EMIS_CLOSED];
    let mut asked: Vec<&str> = held.to_vec();
    asked.push(&tpp);
    // A targeting key that is not an ODS code: INVALID_ARGUMENT, which this provider reports as
    // TYPE_MISMATCH.
    asked.push("not-a-code!");
    let e = evaluate(&tools, tmp.path(), sidecar.port, &asked).await;
    assert!(
        e.ready,
        "the provider is ready through the sidecar: {}\n{}",
        e.first, e.stderr
    );

    let mut toggle = toggle(&files, "backend-emis", &server);
    let mut states = Vec::new();
    for (ods, a) in held.iter().zip(&e.answers) {
        let p = get(&mut toggle, ods).await;
        let (value, variant) = match p.state() {
            S::Enabled => (true, "enabled"),
            S::Disabled => (false, "disabled"),
            _ => (false, "unknown"),
        };
        let our_reason = p.reason().as_str_name().trim_start_matches("REASON_").to_owned();
        states.push(our_reason.clone());
        assert_eq!(a["value"], value, "{ods}: {a} vs {p:?}");
        assert_eq!(a["variant"], variant, "{ods}: {a}");
        assert_eq!(a["reason"], "TARGETING_MATCH", "{ods}: {a}");
        assert_eq!(a["errorCode"], Value::Null, "{ods}: {a}");
        // The provider passes the flat metadata through.
        let m = &a["flagMetadata"];
        assert_eq!(m["reason"], our_reason.as_str(), "{ods}: {a}");
        assert_eq!(m["supplier"], "emis", "{ods}: {a}");
        assert_eq!(
            m["appliedSequence"].as_f64(),
            Some(p.applied_sequence as f64),
            "{ods}: {a}"
        );
        let deciding = p
            .rules
            .iter()
            .find(|r| r.deciding && !r.command.is_empty())
            .map(|r| Value::from(r.command.clone()))
            .unwrap_or(Value::Null);
        assert_eq!(
            m.get("decidingCommand").cloned().unwrap_or(Value::Null),
            deciding,
            "{ods}: {a}"
        );
    }
    // The four practices are in the four states the test set up, in that order.
    assert_eq!(states, ["LIVE", "HALTED", "OPTED_OUT", "PRACTICE_NOT_ACTIVE"]);
    assert_eq!(
        e.answers[1]["flagMetadata"]["decidingCommand"],
        "commands/halt-qn7"
    );

    let not_held = &e.answers[4];
    assert_eq!(
        (&not_held["value"], &not_held["variant"], &not_held["reason"]),
        (
            &Value::from(false),
            &Value::from("unknown"),
            &Value::from("UNKNOWN")
        ),
        "{not_held}"
    );
    assert_eq!(
        not_held["flagMetadata"]["reason"], "PRACTICE_NOT_HELD",
        "{not_held}"
    );
    let bad = &e.answers[5];
    assert_eq!(
        (&bad["value"], &bad["reason"], &bad["errorCode"]),
        (
            &Value::from(false),
            &Value::from("ERROR"),
            &Value::from("TYPE_MISMATCH")
        ),
        "{bad}"
    );
    assert!(
        bad["errorMessage"]
            .as_str()
            .is_some_and(|m| m.contains("targetingKey")),
        "{bad}"
    );

    let log = sidecar.stop().await;
    assert!(!log.contains("Rejected by CERT"), "{log}");
    server.stop().await;
}

#[tokio::test]
async fn node_provider_without_a_backend_sidecar_gets_only_the_code_default() {
    let Some(tools) = tools() else { return };
    let (tmp, files, server) = emis().await;
    let mut control = control(&files, &server);
    apply(&mut control, define(1, None)).await;
    apply(&mut control, go_live(2, "golive-1", Scope::National, None)).await;
    // EMIS_QRP is enabled: any `true` below would be an answer the provider should not get.
    assert_eq!(
        get(&mut toggle(&files, "backend-emis", &server), EMIS_QRP)
            .await
            .state(),
        S::Enabled
    );

    // Plaintext straight at the mutual-TLS port: no connection, not ready, the code default.
    // The provider (0.16.1) reports the UNAVAILABLE it gets as FLAG_NOT_FOUND.
    let e = evaluate(&tools, tmp.path(), server.addr.port(), &[EMIS_QRP]).await;
    assert!(!e.ready, "{}", e.first);
    let a = &e.answers[0];
    assert_eq!(a["value"], false, "{a}");
    assert_eq!(a["variant"], Value::Null, "{a}");
    assert_eq!(
        (&a["reason"], &a["errorCode"]),
        (&Value::from("ERROR"), &Value::from("FLAG_NOT_FOUND")),
        "{a}"
    );

    // A sidecar holding an identity without the backend role: TLS succeeds, the supplier
    // refuses every call PERMISSION_DENIED; the provider is not ready and gets the code default.
    let admin = Sidecar::start(
        &tools,
        tmp.path(),
        &files.pki,
        "practice-admin-emis",
        server.addr,
        "localhost",
    )
    .await;
    let e = evaluate(&tools, tmp.path(), admin.port, &[EMIS_QRP]).await;
    assert!(!e.ready, "{}", e.first);
    let refused = e.first["error"].as_str().unwrap_or_default();
    assert!(
        refused.contains("PERMISSION_DENIED") && refused.contains("needs the role backend"),
        "{}",
        e.first
    );
    let a = &e.answers[0];
    assert_eq!(a["value"], false, "{a}");
    assert_eq!(a["variant"], Value::Null, "{a}");
    assert_eq!(
        (&a["reason"], &a["errorCode"]),
        (&Value::from("ERROR"), &Value::from("GENERAL")),
        "{a}"
    );
    assert!(
        a["errorMessage"]
            .as_str()
            .is_some_and(|m| m.contains("needs the role backend")),
        "{a}"
    );
    admin.stop().await;

    // A backend sidecar that expects another server name refuses the supplier's certificate:
    // host-name verification is on in the shipped configuration.
    let mut wrong = Sidecar::start(
        &tools,
        tmp.path(),
        &files.pki,
        "backend-emis",
        server.addr,
        "rollout-supplier.emis.example.nhs.uk",
    )
    .await;
    let e = evaluate(&tools, tmp.path(), wrong.port, &[EMIS_QRP]).await;
    assert!(!e.ready, "{}", e.first);
    assert_eq!(e.answers[0]["value"], false, "{}", e.answers[0]);
    assert_ne!(e.answers[0]["errorCode"], Value::Null, "{}", e.answers[0]);
    wrong
        .process
        .line("CERT: Subject checks failed", Duration::from_secs(10))
        .await;
    wrong.stop().await;
    server.stop().await;
}
