//! The status page in a real Chromium (Debian's `chromium`, driven by Playwright for Python:
//! `tests/web/status_page.py`), with client certificates from the test PKI: each view loaded
//! and photographed (`target/status-page-screenshots/`), a national halt issued through the
//! gRPC API shown without a reload, a backend identity refused and a browser without a
//! certificate given no page.
//!
//! The interpreter is `$ROLLOUT_TEST_PYTHON` with `tests/web/requirements.txt` installed, the
//! browser `$ROLLOUT_TEST_CHROMIUM` (default `/usr/bin/chromium`); scripts/test.sh and
//! `.ci/run` install both. Without them the test says so, and fails in CI.

use std::{path::PathBuf, process::Stdio, time::Duration};

use tokio::{io::AsyncWriteExt, process::Command};

use crate::{
    stack::{Stack, feature_live, halt, national},
    support::python::{drive, python, workspace},
};

/// The script, from the workspace root.
const SCRIPT: &str = "tests/web/status_page.py";
/// How long the whole browser run may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// Chromium, or why there is none.
fn chromium() -> Result<PathBuf, String> {
    let path = std::env::var_os("ROLLOUT_TEST_CHROMIUM")
        .filter(|p| !p.is_empty())
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "no browser at {} (Debian package chromium, or set ROLLOUT_TEST_CHROMIUM)",
            path.display()
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_page_in_chromium_shows_a_halt_without_a_reload() {
    let (python, chromium) = match (python("tests/web/requirements.txt"), chromium()) {
        (Ok(p), Ok(c)) => (p, c),
        (p, c) => {
            let missing: Vec<String> = [p.err(), c.err()].into_iter().flatten().collect();
            let say = format!(
                "status page browser test not run: {}. scripts/test.sh installs tests/web/requirements.txt \
                 into target/test-venv; .ci/run installs Debian's chromium",
                missing.join("; ")
            );
            assert!(std::env::var_os("CI").is_none(), "{say}");
            eprintln!("{say}");
            return;
        }
    };
    let stack = Stack::start(None).await;
    feature_live(&stack).await;
    let web = stack.coordinator_web.expect("the status page");
    let pkcs12 = rolloutctl::pki::write_pkcs12(&stack.pki, "viewer", rolloutctl::pki::DEV_PKCS12_PASSWORD)
        .expect("the viewer's PKCS#12 export");
    let screenshots = workspace().join("target/status-page-screenshots");
    std::fs::create_dir_all(&screenshots).expect("screenshot directory");
    let pem = |file: String| stack.pki.join(file).display().to_string();
    let identity = |name: &str| serde_json::json!({"cert": pem(format!("{name}.pem")), "key": pem(format!("{name}-key.pem"))});
    let config = serde_json::json!({
        "origin": format!("https://localhost:{}", web.port()),
        "chromium": chromium,
        "identities": {
            "viewer": identity("viewer"),
            "auditor": identity("auditor"),
            "backend-emis": identity("backend-emis"),
        },
        "practice": stack.practice_of("emis"),
        "screenshots": screenshots,
        "viewer_pkcs12": pkcs12,
        "pkcs12_password": rolloutctl::pki::DEV_PKCS12_PASSWORD,
    });

    let mut child = Command::new(&python)
        .arg(SCRIPT)
        .current_dir(workspace())
        .env("ROLLOUT_WEB_TEST", config.to_string())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the browser script");
    let mut stdin = child.stdin.take().expect("stdin");
    let run = drive(child, RUN_TIMEOUT, async |line: &str| {
        if line.contains("READY-FOR-HALT") {
            halt(&stack, national()).await;
            stdin.write_all(b"halted\n").await.expect("tell the script");
            stdin.flush().await.expect("flush");
        }
    })
    .await;
    let (printed, output) = (run.printed(), &run.output);
    let status = run
        .status
        .unwrap_or_else(|| panic!("the browser run did not finish within {RUN_TIMEOUT:?}; {printed}"));
    assert!(status.success() && output.contains("STATUS-PAGE-OK"), "{printed}");
    for view in ["national", "commands", "practice", "audit"] {
        let shot = screenshots.join(format!("{view}.png"));
        assert!(
            std::fs::metadata(&shot).is_ok_and(|m| m.len() > 1_000),
            "a screenshot of {view}"
        );
    }
    eprintln!("{output}");
    stack.stop().await;
}
