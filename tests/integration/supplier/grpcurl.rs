//! The supplier through the real grpcurl: reflection lists the services, and an answer comes
//! back explained; the plaintext health port answers a probe's grpcurl, with no certificate.

use rollout_core::Scope;

use crate::support::{
    define, go_live,
    grpcurl::{grpcurl, grpcurl_output, refused, run_grpcurl},
    practice_feature,
    supplier::{EMIS_A, apply, control, emis},
};

#[tokio::test]
async fn grpcurl_lists_the_services_and_gets_an_explained_answer() {
    let (_tmp, files, server) = emis().await;
    let mut control = control(&files, &server);
    apply(&mut control, define(1, None)).await;
    apply(&mut control, go_live(2, "golive-1", Scope::National, None)).await;
    let (pki, addr) = (files.pki.clone(), server.addr);
    let (list, answer, refusal) = tokio::task::spawn_blocking(move || {
        let list = run_grpcurl(&pki, "backend-emis", addr, &[], &["list"]);
        let request = format!(
            "{{\"name\": \"{}\", \"explain\": true}}",
            practice_feature(EMIS_A)
        );
        let answer = run_grpcurl(
            &pki,
            "backend-emis",
            addr,
            &["-d", &request],
            &["nhs.gprollout.v1.ToggleService/GetPracticeFeature"],
        );
        // A refusal's details are printed by name: reflection serves google.rpc's types.
        let refusal = refused(grpcurl_output(
            &pki,
            "backend-emis",
            addr,
            &["-d", "{\"name\": \"practices/A81001/features/no-such-feature\"}"],
            &["nhs.gprollout.v1.ToggleService/GetPracticeFeature"],
        ));
        (list, answer, refusal)
    })
    .await
    .expect("grpcurl");
    for service in [
        "nhs.gprollout.v1.ToggleService",
        "nhs.gprollout.v1.PracticeSettingsService",
        "nhs.gprollout.v1.ControlService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            list.lines().any(|l| l.trim() == service),
            "{service} missing from:\n{list}"
        );
    }
    for expected in [
        "\"state\": \"STATE_ENABLED\"",
        "\"reason\": \"REASON_LIVE\"",
        "\"deciding\": true",
        "\"command\": \"commands/golive-1\"",
        "enabled: live by command golive-1",
    ] {
        assert!(answer.contains(expected), "{expected} missing from:\n{answer}");
    }
    for expected in [
        "\"@type\":\"type.googleapis.com/google.rpc.ErrorInfo\"",
        "\"domain\":\"gprollout.nhs.uk\"",
        "\"reason\":\"PRACTICE_NOT_FOUND\"",
    ] {
        assert!(refusal.contains(expected), "{expected} missing from:\n{refusal}");
    }
    assert!(!refusal.contains("is not recognized"), "{refusal}");
    server.stop().await;
}

#[tokio::test]
async fn the_plaintext_health_port_lists_health_alone_and_answers_a_check() {
    let (_tmp, _files, server) = emis().await;
    let at = format!("localhost:{}", server.health.port());
    let (list, check, error_info) = tokio::task::spawn_blocking(move || {
        let plaintext = |args: &[&str]| {
            let out = std::process::Command::new(grpcurl())
                .arg("-plaintext")
                .arg(&at)
                .args(args)
                .output()
                .expect("run grpcurl");
            let printed = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                out.status.success(),
                "grpcurl -plaintext {at} {args:?}: {}{printed}",
                String::from_utf8_lossy(&out.stderr)
            );
            printed
        };
        (
            plaintext(&["list"]),
            plaintext(&["grpc.health.v1.Health/Check"]),
            plaintext(&["describe", "google.rpc.ErrorInfo"]),
        )
    })
    .await
    .expect("grpcurl");
    assert_eq!(list.trim(), "grpc.health.v1.Health", "health alone is listed");
    assert!(check.contains("\"status\": \"SERVING\""), "{check}");
    assert!(
        error_info.contains("google.rpc.ErrorInfo is a message"),
        "the error details resolve, so grpcurl prints an ErrorInfo by name: {error_info}"
    );
    server.stop().await;
}
