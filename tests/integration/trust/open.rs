//! Revocation and policy changes reach connections already open.

use std::time::Duration;

use rollout_proto::v1::{self as pb, coordinator_service_client::CoordinatorServiceClient};
use tonic::{Code, transport::Channel};

use crate::support::{
    assert_refused, channel_as, coordinator_command, pki::TestPki, process::Process, reason,
};

const POLICY: &str = "[identities]\n\
     \"spiffe://gprollout.test/operator/alice\" = [\"operator\", \"approver\"]\n\
     \"spiffe://gprollout.test/operator/bob\" = [\"viewer\"]\n\
     \"spiffe://gprollout.test/auditor\" = [\"auditor\"]\n";

/// A reload takes effect at the next check, within 5 s; this allows for a busy machine.
const RELOADED_WITHIN: Duration = Duration::from_secs(20);

async fn list(client: &CoordinatorServiceClient<Channel>) -> Result<(), tonic::Status> {
    client
        .clone()
        .list_suppliers(pb::ListSuppliersRequest::default())
        .await
        .map(drop)
}

/// Every audit event, as the auditor reads them.
async fn audit(auditor: &CoordinatorServiceClient<Channel>) -> Vec<pb::AuditEvent> {
    auditor
        .clone()
        .list_audit_events(pb::ListAuditEventsRequest {
            page_size: 1_000,
            ..Default::default()
        })
        .await
        .expect("audit")
        .into_inner()
        .events
}

#[tokio::test]
async fn an_open_connection_is_refused_once_its_certificate_is_revoked_or_its_identity_leaves_the_policy() {
    rollout_net::tls::install_crypto_provider();
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki_dir = tmp.path().join("pki");
    let pki = TestPki::write(&pki_dir);
    let (policy, suppliers, crl) = (
        tmp.path().join("policy.toml"),
        tmp.path().join("suppliers.toml"),
        pki_dir.join("crl.pem"),
    );
    std::fs::write(&policy, POLICY).expect("policy");
    // A supplier nobody runs: this test is about the operators' side.
    std::fs::write(
        &suppliers,
        "[[supplier]]\nid = \"emis\"\nendpoint = \"localhost:1\"\nidentity = \"spiffe://gprollout.test/supplier/emis\"\n",
    )
    .expect("suppliers");
    std::fs::write(&crl, pki.crl(&[])).expect("crl");
    let database = format!("sqlite://{}", tmp.path().join("coordinator.db").display());
    let mut command = coordinator_command(&pki_dir, &policy, &suppliers, &database);
    command
        .args(["--health-listen", "127.0.0.1:0"])
        .arg("--tls-crl")
        .arg(&crl);
    let mut process = Process::spawn(command);
    let (addr, _) = process.addrs("coordinator listening").await;
    let client = |who| CoordinatorServiceClient::new(channel_as(&pki_dir, who, addr));
    let (alice, bob, auditor) = (client("alice"), client("bob"), client("auditor"));
    list(&alice).await.expect("alice, before");
    list(&bob).await.expect("bob, before");

    // alice's certificate revoked: her open connection is refused at its next call, audited.
    std::fs::write(&crl, pki.crl(&["alice"])).expect("crl");
    process.line("tls certificates reloaded", RELOADED_WITHIN).await;
    let refused = list(&alice).await.expect_err("alice revoked");
    assert_refused(
        &refused,
        Code::Unauthenticated,
        "CERTIFICATE_REVOKED",
        "alice's open connection",
    );
    let again = list(&alice).await.expect_err("still revoked");
    assert_refused(
        &again,
        Code::Unauthenticated,
        "CERTIFICATE_REVOKED",
        "her next call",
    );
    list(&bob)
        .await
        .expect("bob's connection was checked again and passed");
    let fresh = list(&client("alice"))
        .await
        .expect_err("a new connection as alice");
    // Refused at the handshake: no call is answered, so no ErrorInfo (tonic reports the
    // closed connection as UNAVAILABLE, CANCELLED or UNKNOWN, by when the alert arrives).
    assert!(reason(&fresh).is_empty(), "refused at the handshake: {fresh:?}");

    // A policy file that does not parse: the policy in force stays.
    std::fs::write(&policy, "[identities\nnot toml").expect("policy");
    process.line("role policy reload refused", RELOADED_WITHIN).await;
    list(&bob)
        .await
        .expect("bob keeps his role under the policy in force");

    // bob removed from the policy: his open connection is refused at its next call.
    std::fs::write(
        &policy,
        POLICY.replace("\"spiffe://gprollout.test/operator/bob\" = [\"viewer\"]\n", ""),
    )
    .expect("policy");
    process.line("role policy reloaded", RELOADED_WITHIN).await;
    let refused = list(&bob).await.expect_err("bob no longer listed");
    assert_refused(
        &refused,
        Code::PermissionDenied,
        "IDENTITY_NOT_ALLOWED",
        "bob's open connection",
    );

    // Both refusals are in the audit log, with their reasons.
    let refusal = |events: &[pb::AuditEvent], who: &str, reason: &str| {
        events.iter().any(|e| {
            e.outcome() == pb::audit_event::Outcome::Refused
                && e.identity == format!("spiffe://gprollout.test/operator/{who}")
                && e.reason.contains(reason)
        })
    };
    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let events = audit(&auditor).await;
        if refusal(&events, "alice", "CERTIFICATE_REVOKED") && refusal(&events, "bob", "IDENTITY_NOT_ALLOWED")
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "the refusals were not audited: {:?}",
            events
                .iter()
                .map(|e| (&e.identity, &e.action, &e.reason))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, _) = process.stop("TERM", Duration::from_secs(15)).await;
    assert!(status.success(), "{}", process.log());
}
