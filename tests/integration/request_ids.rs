//! A request id is its caller's own. Another identity reusing it gets an outcome of its own
//! (its own write, judged on its own, audited like any other), whether it sends the same body
//! or another; the same identity reusing it for another body is still refused
//! REQUEST_ID_REUSED, and each caller's retry answers that caller's first result. At the
//! coordinator with two operators, and at a supplier with two practice-admin identities.

use rollout_proto::v1::{
    self as pb, audit_service_client::AuditServiceClient,
    coordinator_service_client::CoordinatorServiceClient,
};
use tonic::{Code, transport::Channel};

use crate::{
    stack::{Stack, feature_live},
    support::{
        assert_refused, channel_as, feature_name, practice_feature,
        supplier::{EMIS_A, EMIS_B, settings, supplier_files},
    },
};

/// Sent by both callers with the same body.
const SAME_BODY: &str = "3d0c4b52-8f1e-4a7b-9c2d-5e6f7a8b9c0d";
/// Sent by both callers with different bodies.
const OTHER_BODY: &str = "a4e1f2b3-c5d6-4e7f-8a9b-0c1d2e3f4a5b";

const ALICE: &str = "spiffe://gprollout.test/operator/alice";
const BOB: &str = "spiffe://gprollout.test/operator/bob";

fn halt_of(ods: &str, request_id: &str) -> pb::HaltFeatureRequest {
    pb::HaltFeatureRequest {
        name: feature_name(),
        scope: Some(pb::Scope {
            target: Some(pb::scope::Target::Practices(pb::scope::PracticeList {
                practices: vec![ods.into()],
            })),
        }),
        reason: "clinical safety incident at the practice".into(),
        request_id: request_id.into(),
        ..Default::default()
    }
}

async fn halt(client: &mut CoordinatorServiceClient<Channel>, req: pb::HaltFeatureRequest) -> pb::Command {
    client.halt_feature(req).await.expect("halt").into_inner()
}

#[tokio::test]
async fn two_operators_reusing_a_request_id_each_get_their_own_halt_audited() {
    let stack = Stack::start(None).await;
    feature_live(&stack).await;
    let (mut alice, mut bob) = (stack.client("alice"), stack.client("bob"));
    let (emis, tpp) = (stack.practice_of("emis"), stack.practice_of("tpp"));

    // The same id and body: bob's is a halt of his own, not alice's handed back.
    let alices = halt(&mut alice, halt_of(&emis, SAME_BODY)).await;
    let bobs = halt(&mut bob, halt_of(&emis, SAME_BODY)).await;
    assert_ne!(alices.name, bobs.name, "two halts");
    assert_eq!((alices.requester.as_str(), bobs.requester.as_str()), (ALICE, BOB));
    assert!(bobs.sequence > alices.sequence, "each dispatched");

    // The same id, other bodies: bob's is judged on its own, not refused as a reuse.
    let alices_other = halt(&mut alice, halt_of(&emis, OTHER_BODY)).await;
    let bobs_other = halt(&mut bob, halt_of(&tpp, OTHER_BODY)).await;
    assert_eq!(bobs_other.requester, BOB);

    // Each caller's retry answers its own first result; a reuse for another body by the same
    // caller is still refused.
    assert_eq!(
        halt(&mut alice, halt_of(&emis, SAME_BODY)).await.name,
        alices.name
    );
    assert_eq!(halt(&mut bob, halt_of(&emis, SAME_BODY)).await.name, bobs.name);
    assert_eq!(
        halt(&mut bob, halt_of(&tpp, OTHER_BODY)).await.name,
        bobs_other.name
    );
    let reused = bob
        .halt_feature(halt_of(&emis, OTHER_BODY))
        .await
        .expect_err("bob reuses his own id for another halt");
    assert_refused(&reused, Code::InvalidArgument, "REQUEST_ID_REUSED", "bob's reuse");

    // Four halts exist, each its requester's.
    for (command, requester) in [
        (&alices, ALICE),
        (&bobs, BOB),
        (&alices_other, ALICE),
        (&bobs_other, BOB),
    ] {
        let stored = stack
            .client("viewer")
            .get_command(pb::GetCommandRequest {
                name: command.name.clone(),
            })
            .await
            .expect("get command")
            .into_inner();
        assert_eq!(stored.requester, requester, "{}", command.name);
    }

    // Each accepted halt audited once, naming its requester and its command.
    let events = stack
        .client("auditor")
        .list_audit_events(pb::ListAuditEventsRequest {
            page_size: 1_000,
            ..Default::default()
        })
        .await
        .expect("audit")
        .into_inner()
        .events;
    let mut accepted: Vec<(&str, &str, &str)> = events
        .iter()
        .filter(|e| e.action.ends_with("/HaltFeature") && e.outcome() == pb::audit_event::Outcome::Accepted)
        .map(|e| (e.request_id.as_str(), e.identity.as_str(), e.command.as_str()))
        .collect();
    accepted.sort_unstable();
    let mut expected = vec![
        (SAME_BODY, ALICE, alices.name.as_str()),
        (SAME_BODY, BOB, bobs.name.as_str()),
        (OTHER_BODY, ALICE, alices_other.name.as_str()),
        (OTHER_BODY, BOB, bobs_other.name.as_str()),
    ];
    expected.sort_unstable();
    assert_eq!(accepted, expected);
    stack.stop().await;
}

const ADMIN: &str = "spiffe://gprollout.test/supplier/emis/practice-admin";
/// A second practice-admin identity at emis (the certificate is tpp's admin's; the test's role
/// policy gives it the role at emis too).
const SECOND_ADMIN: &str = "spiffe://gprollout.test/supplier/tpp/practice-admin";

fn opt_out_of(ods: &str, request_id: &str) -> pb::SetPracticeOptOutRequest {
    pb::SetPracticeOptOutRequest {
        opt_out: Some(pb::PracticeOptOut {
            name: format!("{}/optOut", practice_feature(ods)),
            reason: "the partners want to review their records first".into(),
            source: "letter from the practice manager".into(),
            ..Default::default()
        }),
        request_id: request_id.into(),
    }
}

#[tokio::test]
async fn two_practice_admins_reusing_a_request_id_each_get_their_own_opt_out_audited() {
    rollout_net::tls::install_crypto_provider();
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = tmp.path().join("pki");
    rolloutctl::pki::init(&pki, false).expect("pki");
    let files = supplier_files(tmp.path(), &pki, "emis");
    std::fs::write(
        &files.policy,
        format!(
            "[identities]\n\"{ADMIN}\" = [\"practice-admin\"]\n\"{SECOND_ADMIN}\" = [\"practice-admin\"]\n\
             \"spiffe://gprollout.test/coordinator\" = [\"coordinator\"]\n"
        ),
    )
    .expect("policy with two practice admins");
    let server = files.start(None).await;
    let mut first = settings(&files, "practice-admin-emis", &server);
    let mut second = settings(&files, "practice-admin-tpp", &server);

    // The same id and body: the second admin's is a write of its own (the opt-out set again,
    // at a later change), not the first's answer handed back.
    let firsts = first
        .set_practice_opt_out(opt_out_of(EMIS_A, SAME_BODY))
        .await
        .expect("set")
        .into_inner();
    let seconds = second
        .set_practice_opt_out(opt_out_of(EMIS_A, SAME_BODY))
        .await
        .expect("set")
        .into_inner();
    assert!(
        seconds.change > firsts.change,
        "its own write: {} then {}",
        firsts.change,
        seconds.change
    );

    // The same id, other bodies: judged on its own, not refused as a reuse.
    let seconds_other = second
        .set_practice_opt_out(opt_out_of(EMIS_B, OTHER_BODY))
        .await
        .expect("set")
        .into_inner();
    let firsts_other = first
        .set_practice_opt_out(opt_out_of(EMIS_A, OTHER_BODY))
        .await
        .expect("set")
        .into_inner();
    assert_eq!(seconds_other.recorded_by, SECOND_ADMIN);

    // Each caller's retry answers its own first result; a reuse for another body by the same
    // caller is still refused.
    let retried = first
        .set_practice_opt_out(opt_out_of(EMIS_A, SAME_BODY))
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(retried, firsts);
    let retried = second
        .set_practice_opt_out(opt_out_of(EMIS_A, SAME_BODY))
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(retried, seconds);
    let reused = first
        .set_practice_opt_out(opt_out_of(EMIS_B, SAME_BODY))
        .await
        .expect_err("the first admin reuses its own id for another practice");
    assert_refused(&reused, Code::InvalidArgument, "REQUEST_ID_REUSED", "reuse");

    // Each write audited once, naming its caller.
    let mut audit = AuditServiceClient::new(channel_as(&files.pki, "coordinator", server.addr));
    let events = audit
        .list_audit_events(pb::ListAuditEventsRequest {
            page_size: 1_000,
            ..Default::default()
        })
        .await
        .expect("audit")
        .into_inner()
        .events;
    let mut accepted: Vec<(&str, &str, &str)> = events
        .iter()
        .filter(|e| {
            e.action.ends_with("/SetPracticeOptOut") && e.outcome() == pb::audit_event::Outcome::Accepted
        })
        .map(|e| (e.request_id.as_str(), e.identity.as_str(), e.target.as_str()))
        .collect();
    accepted.sort_unstable();
    let (a, b) = (firsts.name.as_str(), seconds_other.name.as_str());
    let mut expected = vec![
        (SAME_BODY, ADMIN, a),
        (SAME_BODY, SECOND_ADMIN, a),
        (OTHER_BODY, SECOND_ADMIN, b),
        (OTHER_BODY, ADMIN, firsts_other.name.as_str()),
    ];
    expected.sort_unstable();
    assert_eq!(accepted, expected);
    server.stop().await;
}
