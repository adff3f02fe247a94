//! The flagd services through the real grpcurl, with no proto files: reflection lists both
//! versions and describes them, and ResolveBoolean answers in flagd's terms.

use rollout_core::Scope;

use crate::support::{
    FEATURE, define, go_live,
    grpcurl::{grpcurl_output, refused, run_grpcurl},
    supplier::{EMIS_A, apply, control, emis},
};

#[tokio::test]
async fn grpcurl_lists_and_calls_the_flagd_services() {
    let (_tmp, files, server) = emis().await;
    let mut control = control(&files, &server);
    apply(&mut control, define(1, None)).await;
    apply(&mut control, go_live(2, "golive-1", Scope::National, None)).await;
    let (pki, addr) = (files.pki.clone(), server.addr);
    let (list, describe, answer, missing) = tokio::task::spawn_blocking(move || {
        let list = run_grpcurl(&pki, "backend-emis", addr, &[], &["list"]);
        let describe = run_grpcurl(
            &pki,
            "backend-emis",
            addr,
            &[],
            &["describe", "flagd.evaluation.v2.Service"],
        );
        let request =
            format!("{{\"flagKey\": \"{FEATURE}\", \"context\": {{\"targetingKey\": \"{EMIS_A}\"}}}}");
        let answer = run_grpcurl(
            &pki,
            "backend-emis",
            addr,
            &["-d", &request],
            &["flagd.evaluation.v2.Service/ResolveBoolean"],
        );
        let missing = refused(grpcurl_output(
            &pki,
            "backend-emis",
            addr,
            &[
                "-d",
                &format!("{{\"flagKey\": \"{FEATURE}\", \"context\": {{}}}}"),
            ],
            &["flagd.evaluation.v2.Service/ResolveBoolean"],
        ));
        (list, describe, answer, missing)
    })
    .await
    .expect("grpcurl");
    for service in ["flagd.evaluation.v1.Service", "flagd.evaluation.v2.Service"] {
        assert!(
            list.lines().any(|l| l.trim() == service),
            "{service} missing from:\n{list}"
        );
    }
    assert!(describe.contains("rpc ResolveBoolean"), "{describe}");
    assert!(
        !describe.contains("rpc ResolveAll"),
        "v2 has no ResolveAll:\n{describe}"
    );
    for expected in [
        "\"value\": true",
        "\"reason\": \"TARGETING_MATCH\"",
        "\"variant\": \"enabled\"",
        "\"decidingCommand\": \"commands/golive-1\"",
        "\"supplier\": \"emis\"",
    ] {
        assert!(answer.contains(expected), "{expected} missing from:\n{answer}");
    }
    assert!(
        missing.contains("InvalidArgument") && missing.contains("targetingKey"),
        "{missing}"
    );
    server.stop().await;
}
