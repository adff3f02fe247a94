//! The OpenFeature flagd evaluation protocol on the supplier: it agrees with GetPracticeFeature
//! ([`agreement`]), and real OpenFeature providers evaluate through it: Python directly over
//! mutual TLS ([`python`]), Node through a TLS-originating sidecar ([`node`]).

mod agreement;
mod events;
mod grpcurl;
mod node;
mod python;

use rollout_core::{PracticeStatus, Scope, SupplierId};
use rollout_proto::v1::control_service_client::ControlServiceClient;
use tonic::transport::Channel;

use crate::support::{
    Running, define, go_live, halt, reference_estate,
    supplier::{EMIS_B, SupplierFiles, apply, control, settings},
};

/// An active practice of another supplier (TPP): answered fail-closed, `PRACTICE_NOT_HELD`.
fn tpp_practice() -> String {
    reference_estate()
        .for_supplier(&SupplierId::parse("tpp").expect("tpp"))
        .practices()
        .find(|p| p.status == PracticeStatus::Active)
        .map(|p| p.ods.to_string())
        .expect("a TPP practice")
}

/// Opts EMIS_B out of the feature, as its practice admin.
async fn opt_out_emis_b(files: &SupplierFiles, server: &Running<rollout_supplier::Error>) {
    settings(files, "practice-admin-emis", server)
        .set_practice_opt_out(crate::supplier::opt_out_request(
            EMIS_B,
            "5f0c7a52-2d1e-4b8a-9c3f-7e6d5a4b3c21",
        ))
        .await
        .expect("opt out");
}

/// The feature defined (fail-static) and live nationally, ICB `icb` halted (`halt-{icb}`, in
/// lower case) and EMIS_B opted out: sequences 1 to 3. The coordinator's client, to go on.
async fn live_with_a_halt_and_an_opt_out(
    files: &SupplierFiles,
    server: &Running<rollout_supplier::Error>,
    icb: &str,
) -> ControlServiceClient<Channel> {
    let mut control = control(files, server);
    apply(&mut control, define(1, None)).await;
    apply(&mut control, go_live(2, "golive-1", Scope::National, None)).await;
    let id = format!("halt-{}", icb.to_lowercase());
    apply(&mut control, halt(3, &id, Scope::Icb(icb.parse().expect("icb")))).await;
    opt_out_emis_b(files, server).await;
    control
}
