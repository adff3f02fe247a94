//! CRLs on the coordinator's side: a supplier whose server certificate is revoked in
//! `--supplier-crl` is refused by the coordinator, and a CRL past its next update is still
//! enforced and shown in status.

use std::time::Duration;

use rollout_proto::v1 as pb;

use crate::{
    cli::{ctl, text},
    stack::{Stack, suppliers_until},
    support::{Running, pki::TestPki},
};

#[tokio::test]
async fn a_revoked_supplier_is_refused_and_a_stale_crl_is_enforced_and_shown_in_status() {
    let mut held = None;
    let mut stack = Stack::suppliers_with(None, |dir| held = Some(TestPki::write(dir))).await;
    let pki = held.expect("the test PKI");
    // One CRL, past its next update, revoking tpp's server certificate: enforced on the
    // operators' side (nobody in it) and on the suppliers' side (tpp).
    let crl = stack.pki.join("crl.pem");
    let tpp = pki.serials["supplier-tpp"];
    std::fs::write(
        &crl,
        pki.ca.crl_until(&[tpp], time::Duration::days(-1)).expect("crl"),
    )
    .expect("write");
    let mut config = stack.coordinator_config();
    config.tls.crls = vec![crl.clone()];
    config.supplier_crls = vec![crl];
    let running = Running::start(|listener, health, stop| async move {
        rollout_coordinator::serve(
            config,
            rollout_net::server::Listeners::new(listener, Some(health)),
            async {
                let _ = stop.await;
            },
        )
        .await
    })
    .await;
    stack.coordinator_addr = running.addr;
    stack.coordinator = Some(running);

    let list = suppliers_until(
        &stack,
        Duration::from_secs(30),
        "tpp refused for its revoked certificate",
        |l| {
            l.iter()
                .any(|s| s.name == "suppliers/tpp" && s.last_error.to_lowercase().contains("revoked"))
                && l.iter()
                    .filter(|s| s.name != "suppliers/tpp")
                    .all(|s| s.state() == pb::supplier::State::Synced)
        },
    )
    .await;
    assert_eq!(list.len(), 4);
    let answer = stack
        .client("viewer")
        .list_suppliers(pb::ListSuppliersRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(
        answer.coordinator_tls_warnings.len(),
        2,
        "{:?}",
        answer.coordinator_tls_warnings
    );
    assert!(
        answer
            .coordinator_tls_warnings
            .iter()
            .all(|w| w.contains("still enforced") && w.contains("crl.pem")),
        "{:?}",
        answer.coordinator_tls_warnings
    );
    let out = ctl(&stack, "viewer", &["status"]).await;
    let shown = text(&out);
    assert!(shown.contains("TLS warnings"), "{shown}");
    assert!(shown.contains("  coordinator: the CRL of"), "{shown}");
    stack.stop().await;
}
