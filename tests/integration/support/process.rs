//! A server process under test: started with plain logs on a pipe that the test reads as
//! they are written, its listening addresses read from its log, signalled (stopped, frozen,
//! continued) with the real `kill`.

use std::{
    net::SocketAddr,
    process::{ExitStatus, Stdio},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::watch,
};

/// A server process whose log (standard error) the test reads as it is written.
pub struct Process {
    pub child: Child,
    log: watch::Receiver<String>,
}

impl Process {
    /// Starts `command` with plain INFO logs on a pipe.
    pub fn spawn(mut command: Command) -> Process {
        let mut child = command
            .env("ROLLOUT_LOG_FORMAT", "plain")
            .env("ROLLOUT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the server process");
        let (tx, log) = watch::channel(String::new());
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                tx.send_modify(|log| {
                    log.push_str(&line);
                    log.push('\n');
                });
            }
        });
        Process { child, log }
    }

    /// Waits until a line of the log contains `marker`, and returns it.
    pub async fn line(&mut self, marker: &str, within: Duration) -> String {
        let line = match tokio::time::timeout(
            within,
            self.log.wait_for(|log| log.lines().any(|l| l.contains(marker))),
        )
        .await
        {
            Ok(Ok(log)) => log.lines().find(|l| l.contains(marker)).map(str::to_owned),
            _ => None,
        };
        line.unwrap_or_else(|| panic!("no {marker:?} in the log within {within:?}:\n{}", self.log()))
    }

    /// The mutual-TLS and plaintext health addresses from the line containing `listening`.
    pub async fn addrs(&mut self, listening: &str) -> (SocketAddr, SocketAddr) {
        let line = self.line(listening, Duration::from_secs(60)).await;
        let field = |name: &str| -> SocketAddr {
            let start = line
                .find(&format!("{name}=Some("))
                .unwrap_or_else(|| panic!("no {name} in {line:?}"))
                + name.len()
                + 6;
            let end = start + line[start..].find(')').expect("closing parenthesis");
            line[start..end].parse().expect("an address")
        };
        (field("addr"), field("health"))
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        self.log.borrow().clone()
    }

    /// Sends `signal` (`STOP` freezes it as a hung process looks, `CONT` lets it go on) and
    /// returns at once.
    pub async fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("the process is running");
        send(pid, signal).await;
    }

    /// Sends `signal` (`TERM`, `INT`) and waits for the process to exit; returns its status
    /// and the time from the signal to the exit. Fails if it is still running after `within`.
    pub async fn stop(&mut self, signal: &str, within: Duration) -> (ExitStatus, Duration) {
        let (status, took) = signal_and_wait(&mut self.child, signal, within).await;
        assert!(
            status.is_some(),
            "still running {within:?} after SIG{signal}:\n{}",
            self.log()
        );
        (status.expect("exited"), took)
    }
}

/// Sends `signal` to `child` and waits up to `within` for it to exit: its status (`None` if it
/// had not exited) and the time taken.
pub async fn signal_and_wait(
    child: &mut Child,
    signal: &str,
    within: Duration,
) -> (Option<ExitStatus>, Duration) {
    let pid = child.id().expect("the process is running");
    let sent = tokio::time::Instant::now();
    send(pid, signal).await;
    let status = tokio::time::timeout(within, child.wait())
        .await
        .ok()
        .map(|s| s.expect("wait"));
    (status, sent.elapsed())
}

/// Runs `kill -SIGNAL pid`.
async fn send(pid: u32, signal: &str) {
    let kill = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .await
        .expect("run kill");
    assert!(kill.success(), "kill -{signal} {pid}");
}
