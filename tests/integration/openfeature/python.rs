//! The real OpenFeature Python SDK and flagd provider (RPC mode, direct mutual TLS with the dev
//! PKI) against a real supplier: `tests/openfeature/python/` is a pytest suite, run here as a
//! child process with the supplier described in `ROLLOUT_OPENFEATURE_TEST`. When the suite
//! prints `READY-FOR-HALT` (its configuration-change handler registered) this driver halts one
//! practice; the suite then waits for the event and checks the practice's new answer.
//!
//! The interpreter is `$ROLLOUT_TEST_PYTHON` with `tests/openfeature/python/requirements.txt`
//! installed (scripts/test.sh sets up both in `target/test-venv`).

use std::{process::Stdio, time::Duration};

use rollout_core::{PracticeStatus, SupplierId};
use rollout_proto::v1::practice_feature::Reason as R;
use tokio::process::Command;

use crate::support::{
    FEATURE, halt, practices, reference_estate,
    supplier::{EMIS_A, EMIS_B, EMIS_CLOSED, EMIS_QRP, apply, emis, get, toggle},
};

/// The line the suite prints once it listens for configuration changes.
const READY_FOR_HALT: &str = "READY-FOR-HALT";

/// How long the whole suite may take.
const SUITE_TIMEOUT: Duration = Duration::from_secs(120);

/// The suite's directory, relative to the workspace root.
const SUITE: &str = "tests/openfeature/python";

fn python() -> Result<std::path::PathBuf, String> {
    crate::support::python::python(&format!("{SUITE}/requirements.txt"))
}

/// An active EMIS practice other than the named ones, outside ICB QRP (halted here).
fn another_emis_practice() -> String {
    reference_estate()
        .for_supplier(&SupplierId::parse("emis").expect("emis"))
        .practices()
        .find(|p| {
            p.status == PracticeStatus::Active
                && p.icb.as_str() != "QRP"
                && ![EMIS_A, EMIS_B, EMIS_QRP].contains(&p.ods.as_str())
        })
        .map(|p| p.ods.to_string())
        .expect("another active EMIS practice")
}

#[tokio::test]
async fn the_python_sdk_and_flagd_provider_evaluate_over_mutual_tls() {
    let python = match python() {
        Ok(p) => p,
        Err(missing) => {
            let say = format!(
                "OpenFeature Python test not run: {missing}. scripts/test.sh installs \
                 {SUITE}/requirements.txt into target/test-venv and sets ROLLOUT_TEST_PYTHON"
            );
            assert!(std::env::var_os("CI").is_none(), "{say}");
            eprintln!("{say}");
            return;
        }
    };
    let (_tmp, files, server) = emis().await;
    let (live_halt, not_held) = (another_emis_practice(), super::tpp_practice());
    // Live everywhere; ICB QRP halted; EMIS_B opted out by its practice admin; EMIS_CLOSED is
    // a closed practice.
    let mut control = super::live_with_a_halt_and_an_opt_out(&files, &server, "QRP").await;
    let mut toggle = toggle(&files, "backend-emis", &server);
    for (ods, reason) in [
        (EMIS_A, R::Live),
        (live_halt.as_str(), R::Live),
        (EMIS_QRP, R::Halted),
        (EMIS_B, R::OptedOut),
        (EMIS_CLOSED, R::PracticeNotActive),
    ] {
        assert_eq!(get(&mut toggle, ods).await.reason(), reason, "{ods}");
    }

    let pem = |name: &str| files.pki.join(name).display().to_string();
    let identity = |name: &str| {
        serde_json::json!({
            "cert": pem(&format!("{name}.pem")),
            "key": pem(&format!("{name}-key.pem")),
        })
    };
    let env = serde_json::json!({
        "host": "localhost",
        "port": server.addr.port(),
        "ca": pem("ca.pem"),
        "backend": identity("backend-emis"),
        "others": {
            "practice-admin-emis": identity("practice-admin-emis"),
            "viewer": identity("viewer"),
        },
        "practices": {
            "enabled": EMIS_A,
            "halted": EMIS_QRP,
            "opted_out": EMIS_B,
            "closed": EMIS_CLOSED,
            "not_held": not_held,
            "halted_during_test": live_halt,
        },
        "feature": FEATURE,
    });

    let child = Command::new(&python)
        .args(["-m", "pytest", "-q", SUITE])
        .current_dir(crate::support::python::workspace())
        .env("ROLLOUT_OPENFEATURE_TEST", env.to_string())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start pytest");
    let mut halted = false;
    let run = crate::support::python::drive(child, SUITE_TIMEOUT, async |line: &str| {
        if line.contains(READY_FOR_HALT) && !halted {
            apply(&mut control, halt(4, "halt-one", practices(&[&live_halt]))).await;
            halted = true;
        }
    })
    .await;
    let (printed, output) = (run.printed(), run.output.clone());
    let status = run
        .status
        .unwrap_or_else(|| panic!("pytest did not finish within {SUITE_TIMEOUT:?}; {printed}"));
    assert!(status.success(), "pytest failed ({status}); {printed}");
    assert!(halted, "the suite never printed {READY_FOR_HALT}; {printed}");
    // Every test ran and passed: the summary is "N passed in ...", nothing skipped.
    assert!(
        output.lines().any(|l| l
            .split_once(" passed in ")
            .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))),
        "{printed}"
    );
    println!("{printed}");
    server.stop().await;
}
