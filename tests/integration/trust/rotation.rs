//! The coordinator's certificate rotated to one from a second CA while it runs.

use std::time::{Duration, SystemTime};

use rolloutctl::pki::{DevCa, IdentitySpec, Validity};

use crate::{
    stack::{Stack, delivered, feature_live, halt, national},
    support::pki::{TestPki, install, issue},
};

/// How long the coordinator's first certificate is valid: long enough to start the stack and
/// switch the feature on.
const FIRST_CERTIFICATE: Duration = Duration::from_secs(12);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_coordinator_rotated_to_a_second_ca_keeps_delivering_after_its_old_certificate_expires() {
    let coordinator = IdentitySpec::new("coordinator", "coordinator", true);
    let mut first = None;
    let mut stack = Stack::suppliers_with(None, |dir| {
        let pki = TestPki::write(dir);
        // The coordinator's first certificate expires soon.
        let short = Validity {
            from: time::Duration::hours(-1),
            until: time::Duration::seconds(FIRST_CERTIFICATE.as_secs() as i64),
        };
        install(dir, "coordinator", &issue(&pki.ca, &coordinator, short));
        first = Some(pki);
    })
    .await;
    let pki = first.expect("the test PKI");
    let expires = SystemTime::now() + FIRST_CERTIFICATE;
    stack.start_coordinator().await;
    feature_live(&stack).await;

    // A CA rollover: every bundle (suppliers', coordinator's) trusts both CAs; then the
    // coordinator's certificate and key are replaced by ones from the new CA.
    let next_ca = DevCa::new("GP Rollout Control test CA 2").expect("ca");
    let bundle = format!("{}{}", pki.ca.cert_pem(), next_ca.cert_pem());
    std::fs::write(stack.pki.join("ca.pem"), bundle).expect("bundle");
    install(
        &stack.pki,
        "coordinator",
        &issue(&next_ca, &coordinator, Validity::default()),
    );

    // The old certificate expires. Two suppliers restart, so their connections are new; the
    // other two keep running, and would refuse a connection still made with the old
    // certificate (CERTIFICATE_EXPIRED) had the coordinator not replaced it.
    if let Ok(left) = expires.duration_since(SystemTime::now()) {
        tokio::time::sleep(left + Duration::from_secs(1)).await;
    }
    for s in ["emis", "tpp"] {
        stack.stop_supplier(s).await;
        stack.start_supplier(s).await;
    }
    let h = halt(&stack, national()).await;
    let done = delivered(&stack, &h.name).await;
    for d in &done.deliveries {
        assert_eq!(
            d.state(),
            rollout_proto::v1::delivery::State::Applied,
            "{}: {}",
            d.supplier,
            d.last_error
        );
    }
    stack.stop().await;
}
