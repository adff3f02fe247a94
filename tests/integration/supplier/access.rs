//! Who may call what: each role enforced and every refusal audited, and one process per
//! database.

use rollout_proto::v1::{self as pb, control_service_client::ControlServiceClient};
use rollout_store::supplier::{SqlSupplierStore, SupplierStore};
use tonic::Code;

use super::opt_out_request;
use crate::support::{
    assert_refused, channel_as, define, practice_feature,
    supplier::{EMIS_A, emis, get, settings, toggle},
};

/// A call refused for want of a role, or of a listed identity.
struct Row {
    what: &'static str,
    /// The ErrorInfo reason expected.
    reason: &'static str,
    status: tonic::Status,
}

#[tokio::test]
async fn each_role_is_enforced_and_refusals_are_audited() {
    let (_tmp, files, server) = emis().await;
    let rows = vec![
        Row {
            what: "backend cannot apply commands",
            reason: "ROLE_REQUIRED",
            status: ControlServiceClient::new(channel_as(&files.pki, "backend-emis", server.addr))
                .apply_command(pb::ApplyCommandRequest {
                    command: Some(define(1, None)),
                    ..Default::default()
                })
                .await
                .expect_err("refused"),
        },
        Row {
            what: "backend cannot watch the sync state",
            reason: "ROLE_REQUIRED",
            status: ControlServiceClient::new(channel_as(&files.pki, "backend-emis", server.addr))
                .watch_sync_state(pb::WatchSyncStateRequest {})
                .await
                .expect_err("refused"),
        },
        Row {
            what: "a practice admin cannot read toggles",
            reason: "ROLE_REQUIRED",
            status: toggle(&files, "practice-admin-emis", &server)
                .get_practice_feature(pb::GetPracticeFeatureRequest {
                    name: practice_feature(EMIS_A),
                    explain: true,
                })
                .await
                .expect_err("refused"),
        },
        Row {
            what: "a backend cannot record opt-outs",
            reason: "ROLE_REQUIRED",
            status: settings(&files, "backend-emis", &server)
                .set_practice_opt_out(opt_out_request(EMIS_A, ""))
                .await
                .expect_err("refused"),
        },
        Row {
            what: "the viewer is listed but holds no supplier role",
            reason: "ROLE_REQUIRED",
            status: settings(&files, "viewer", &server)
                .list_practice_opt_outs(pb::ListPracticeOptOutsRequest::default())
                .await
                .expect_err("refused"),
        },
        Row {
            what: "another supplier's backend is not listed",
            reason: "IDENTITY_NOT_ALLOWED",
            status: toggle(&files, "backend-tpp", &server)
                .get_practice_feature(pb::GetPracticeFeatureRequest {
                    name: practice_feature(EMIS_A),
                    explain: true,
                })
                .await
                .expect_err("refused"),
        },
        Row {
            what: "an operator is not listed",
            reason: "IDENTITY_NOT_ALLOWED",
            status: ControlServiceClient::new(channel_as(&files.pki, "alice", server.addr))
                .get_sync_state(pb::GetSyncStateRequest::default())
                .await
                .expect_err("refused"),
        },
    ];
    for row in &rows {
        assert_refused(&row.status, Code::PermissionDenied, row.reason, row.what);
    }
    // The coordinator may read toggles (GetPracticeStatus and verification need it).
    get(&mut toggle(&files, "coordinator", &server), EMIS_A).await;
    server.stop().await;

    // Every refusal is in the audit log, with the identity, and the chain verifies.
    let store = SqlSupplierStore::open(&format!("sqlite://{}", files.database.display()))
        .await
        .expect("open");
    let events = store.list_audit(0, 1_000).await.expect("audit");
    rollout_core::audit::verify_chain(&events).expect("chain verifies");
    let refused: Vec<_> = events
        .iter()
        .filter(|e| e.draft.outcome == rollout_core::audit::AuditOutcome::Refused)
        .map(|e| e.draft.identity.as_str())
        .collect();
    assert_eq!(refused.len(), rows.len(), "{refused:?}");
    assert!(refused.contains(&"spiffe://gprollout.test/operator/alice"));
    store.close().await;
}

#[tokio::test]
async fn a_second_process_cannot_open_the_same_database() {
    let (_tmp, files, server) = emis().await;
    // The first server holds the file once it answers.
    get(&mut toggle(&files, "backend-emis", &server), EMIS_A).await;
    let config = files.config(None);
    let out = files
        .command("127.0.0.1:0")
        .output()
        .await
        .expect("run rollout-supplier");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the second process must not start");
    assert!(stderr.contains("is in use by another process"), "{stderr}");
    server.stop().await;
    SqlSupplierStore::open(&config.database_url)
        .await
        .expect("free once the server stopped")
        .close()
        .await;
}
