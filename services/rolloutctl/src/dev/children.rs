//! The stack's processes: started with their logs in the state directory, waited for until
//! their plaintext health answers SERVING, and stopped together within their grace period.

use std::{
    path::Path,
    process::{ExitStatus, Stdio},
    time::{Duration, Instant},
};

use tokio::process::{Child, Command};

use super::{Layout, fail, say};
use crate::client::CliError;

/// How long past the children's grace period `dev up` waits for them to exit before it kills
/// them: their own shutdown ends within the grace period; this is for the exit itself.
pub const EXIT_MARGIN: Duration = Duration::from_secs(1);

/// A running child process with its name.
pub struct Proc {
    pub name: String,
    pub child: Child,
}

/// Starts `program` as `name`, its standard output and error in `logs/NAME.log`.
pub fn spawn(layout: &Layout, name: &str, program: &Path, args: Vec<String>) -> Result<Proc, CliError> {
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

/// Waits until the plaintext health port answers SERVING.
pub async fn ready(name: &str, port: u16, deadline: Instant, procs: &mut [Proc]) -> Result<(), CliError> {
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

/// How one child ended.
enum Ended {
    Exited(ExitStatus, Duration),
    Killed,
}

/// Stops every process: SIGINT to each at once (each then drains within its `grace`), then
/// waits for them together until the grace period and [`EXIT_MARGIN`] have passed, and kills
/// whatever is left. Says how each one ended.
pub async fn stop_all(procs: &mut Vec<Proc>, grace: Duration) {
    let started = tokio::time::Instant::now();
    let deadline = started + grace + EXIT_MARGIN;
    for p in procs.iter() {
        if let Some(pid) = p.child.id() {
            let _ = Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await;
        }
    }
    let waits: Vec<_> = procs
        .drain(..)
        .map(|mut p| {
            tokio::spawn(async move {
                let ended = match tokio::time::timeout_at(deadline, p.child.wait()).await {
                    Ok(Ok(status)) => Ended::Exited(status, started.elapsed()),
                    Ok(Err(_)) | Err(_) => {
                        let _ = p.child.kill().await;
                        Ended::Killed
                    }
                };
                (p.name, ended)
            })
        })
        .collect();
    let grace = humantime::format_duration(grace);
    for wait in waits {
        let Ok((name, ended)) = wait.await else {
            continue;
        };
        match ended {
            Ended::Exited(status, after) if status.success() => {
                say(format_args!("  stopped {name} in {} ms", after.as_millis()));
            }
            Ended::Exited(status, _) => say(format_args!(
                "  {name} exited with {status} while stopping: see its log"
            )),
            Ended::Killed => say(format_args!(
                "  killed {name}: it did not stop within its {grace} grace period; see its log"
            )),
        }
    }
}
