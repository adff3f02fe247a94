//! `rolloutctl dev up` as a user runs it, and every command of the README's tour against it,
//! with the real grpcurl; Ctrl-C stops everything; a second run reuses the state.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, ChildStdout, Command},
};

use crate::support::{binary, grpcurl::grpcurl};

/// A port base whose 15 ports are all free now.
pub fn free_base() -> u16 {
    let all_free = |base: u16| {
        ports(base)
            .into_iter()
            .all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
    };
    (0..200)
        .map(|_| 20_000 + fastrand::u16(0..2_000) * 10)
        .find(|b| all_free(*b))
        .expect("a free port range")
}

/// The stack's 16 ports for the port base `base`: gRPC, plaintext health, metrics, and the
/// coordinator's status page.
pub fn ports(base: u16) -> Vec<u16> {
    [0, 10, 20]
        .into_iter()
        .flat_map(|offset| (offset..offset + 5).map(move |i| base + i))
        .chain([base + 30])
        .collect()
}

/// A running `rolloutctl dev up` and what it has printed so far.
pub struct DevUp {
    pub child: Child,
    pub lines: tokio::io::Lines<BufReader<ChildStdout>>,
    pub seen: String,
}

impl DevUp {
    fn start(state: &Path, base: u16) -> DevUp {
        DevUp::start_with(state, base, &[], Stdio::inherit())
    }

    /// `rolloutctl dev up` on `state` and `base`, with further arguments, its standard error
    /// to `stderr`.
    pub fn start_with(state: &Path, base: u16, args: &[&str], stderr: Stdio) -> DevUp {
        let mut child = Command::new(binary("rolloutctl"))
            .args(["dev", "up", "--state-dir"])
            .arg(state)
            .args(["--port-base", &base.to_string()])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("start rolloutctl dev up");
        let stdout = child.stdout.take().expect("stdout");
        DevUp {
            child,
            lines: BufReader::new(stdout).lines(),
            seen: String::new(),
        }
    }

    /// Reads output until a line contains `marker`.
    pub async fn until(&mut self, marker: &str) {
        let read = async {
            while let Some(line) = self.lines.next_line().await.expect("read output") {
                self.seen.push_str(&line);
                self.seen.push('\n');
                if line.contains(marker) {
                    return;
                }
            }
            panic!("dev up ended before printing {marker:?}:\n{}", self.seen);
        };
        if tokio::time::timeout(Duration::from_secs(180), read)
            .await
            .is_err()
        {
            panic!("no {marker:?} within 180 s:\n{}", self.seen);
        }
    }

    /// Ctrl-C, then waits for a clean exit.
    async fn interrupt(mut self) -> String {
        let pid = self.child.id().expect("pid");
        let sent = Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .await
            .expect("kill");
        assert!(sent.success());
        self.until("stopped; the state").await;
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("dev up exits after Ctrl-C")
            .expect("wait");
        assert!(status.success(), "dev up exit status {status}:\n{}", self.seen);
        self.seen
    }
}

/// The README's tour, made to run against this stack: its state directory and ports.
fn tour(state: &Path, base: u16, bin_dir: &Path) -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).expect("README");
    let block = readme
        .split("<!-- tour:start -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- tour:end -->").next())
        .expect("the README has a tour");
    let script = block.trim().trim_start_matches("```sh").trim_end_matches("```");
    let mut script = script
        .replace("$PWD/target/debug", &bin_dir.display().to_string())
        .replace(".gprollout-dev", &state.display().to_string());
    for (default, actual) in ports(50050).into_iter().zip(ports(base)) {
        script = script.replace(&format!("localhost:{default}"), &format!("localhost:{actual}"));
    }
    script
}

#[tokio::test]
async fn dev_up_runs_the_readme_tour_and_stops_cleanly_on_ctrl_c() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state: PathBuf = tmp.path().join("state");
    let base = free_base();
    let mut up = DevUp::start(&state, base);
    up.until("The stack is up").await;
    assert!(up.seen.contains("created state"), "{}", up.seen);
    assert!(
        up.seen.contains("halt VERIFIED"),
        "the national halt converged and was verified:\n{}",
        up.seen
    );

    // The addresses it prints pass the TLS name check: rolloutctl reaches the coordinator at
    // the one printed, with nothing else said.
    let printed = up
        .seen
        .lines()
        .find_map(|l| l.strip_prefix("starting coordinator on "))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the coordinator's address is printed")
        .to_owned();
    let status = Command::new(binary("rolloutctl"))
        .args(["--coordinator", &printed, "--pki-dir"])
        .arg(state.join("pki"))
        .args(["--as", "viewer", "status"])
        .output()
        .await
        .expect("run");
    assert!(
        status.status.success(),
        "rolloutctl at the printed {printed}: {}",
        String::from_utf8_lossy(&status.stderr)
    );

    // The status page it prints answers the viewer's certificate, and the viewer's PKCS#12
    // export for a browser is there.
    let page = up
        .seen
        .lines()
        .find_map(|l| l.split("status page https://").nth(1))
        .and_then(|rest| rest.split('/').next())
        .expect("the status page's address is printed")
        .to_owned();
    let addr = format!("127.0.0.1:{}", page.rsplit(':').next().expect("a port"))
        .parse()
        .expect("an address");
    let (code, body) = crate::web::https::get(&state.join("pki"), "viewer", addr, "/api/national").await;
    assert_eq!(code, 200, "{body}");
    assert!(state.join("pki/viewer.p12").is_file(), "{}", up.seen);
    up.until("viewer.p12 (password gprollout-dev)").await;

    // A second stack on the same ports is refused with a clear error.
    let second = Command::new(binary("rolloutctl"))
        .args(["dev", "up", "--state-dir"])
        .arg(tmp.path().join("other"))
        .args(["--port-base", &base.to_string()])
        .output()
        .await
        .expect("run");
    assert!(!second.status.success());
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("is in use"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );

    // Every command of the README's tour, as printed (ports and state directory substituted).
    let bin_dir = binary("rolloutctl").parent().expect("dir").to_owned();
    let grpcurl_dir = grpcurl().parent().map(Path::to_owned).unwrap_or_default();
    let path = format!(
        "{}:{}:{}",
        bin_dir.display(),
        grpcurl_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let script = tour(&state, base, &bin_dir);
    let out = Command::new("bash")
        .args(["-e", "-c", &script])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .env("PATH", path)
        // What rolloutctl's defaults (localhost:50050, .gprollout-dev/pki) mean for this stack.
        .env("ROLLOUT_COORDINATOR", format!("localhost:{base}"))
        .env("ROLLOUT_PKI_DIR", state.join("pki"))
        .env_remove("ROLLOUT_AS")
        .output()
        .await
        .expect("run the tour");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the README tour failed:\n{script}\n---\n{text}"
    );
    for expected in [
        "nhs.gprollout.v1.ToggleService",
        "rpc GetPracticeFeature",
        "\"state\": \"STATE_DISABLED\"",
        "\"reason\": \"REASON_HALTED\"",
        "EVENT_TYPE_SNAPSHOT",
        "SYNCED",
        "4/4 suppliers answered",
        "VERIFIED: no practice in scope is enabled",
        "disabled: halted by command",
        "SELF_APPROVAL",
        "refused: alice asked for it",
        "audit chain verified",
        "grpc.health.v1.Health",
        "\"status\": \"SERVING\"",
        "{\"features\":[",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} missing from the tour's output:\n{text}"
        );
    }

    let stopped = up.interrupt().await;
    for name in [
        "supplier-emis",
        "supplier-tpp",
        "supplier-cegedim",
        "supplier-microtest",
        "coordinator",
    ] {
        assert!(
            stopped.contains(&format!("stopped {name}")),
            "{name} was not stopped cleanly:\n{stopped}"
        );
    }
    for port in ports(base) {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} is still in use after Ctrl-C"
        );
    }

    // The same state directory again: reused, not re-created.
    let mut again = DevUp::start(&state, base);
    again.until("The stack is up").await;
    assert!(again.seen.contains("reusing state"), "{}", again.seen);
    assert!(again.seen.contains("already defined here"), "{}", again.seen);
    again.interrupt().await;
}
