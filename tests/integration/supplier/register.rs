//! The supplier's side of the national opt-out register: every opt-out write numbered and
//! read back in change order; records from the register installed only where they are newer,
//! unchanged but for their origin; and anything that is not a register record refused with
//! its field, changing nothing, audited.

use std::time::{Duration, SystemTime};

use rollout_core::Scope;
use rollout_proto::v1 as pb;
use rollout_store::supplier::{SqlSupplierStore, SupplierStore};
use tonic::Code;

use super::{R, S, opt_out_request, state_of};
use crate::support::{
    assert_refused, define, go_live, practice_feature,
    supplier::{EMIS_A, EMIS_B, EMIS_QRP, apply, control, emis, get, settings, toggle},
};

/// A record as the register sends it: `origin` restored or transferred, from `from`.
fn record(
    ods: &str,
    updated: SystemTime,
    origin: pb::practice_opt_out::Origin,
    from: &str,
) -> pb::PracticeOptOut {
    let t = rollout_net::wire::timestamp(updated - Duration::from_secs(3_600));
    pb::PracticeOptOut {
        name: format!("{}/optOut", practice_feature(ods)),
        reason: "recorded at the practice's old supplier".into(),
        source: "letter".into(),
        recorded_by: "spiffe://gprollout.test/supplier/tpp/practice-admin".into(),
        create_time: Some(t),
        update_time: Some(rollout_net::wire::timestamp(updated)),
        origin: origin.into(),
        origin_supplier: format!("suppliers/{from}"),
        ..Default::default()
    }
}

fn import(records: Vec<pb::PracticeOptOut>) -> pb::ImportOptOutsRequest {
    pb::ImportOptOutsRequest {
        opt_outs: records,
        released_practices: vec![],
    }
}

#[tokio::test]
async fn register_records_are_installed_only_where_newer_and_every_write_is_numbered() {
    let (_tmp, files, server) = emis().await;
    let mut control = control(&files, &server);
    let mut backend = toggle(&files, "backend-emis", &server);
    let mut admin = settings(&files, "practice-admin-emis", &server);
    apply(&mut control, define(1, None)).await;
    apply(&mut control, go_live(2, "golive-1", Scope::National, None)).await;
    let set = admin
        .set_practice_opt_out(opt_out_request(EMIS_A, ""))
        .await
        .expect("opt out")
        .into_inner();
    assert_eq!(
        (set.change, set.origin()),
        (1, pb::practice_opt_out::Origin::Recorded)
    );
    let state = control
        .get_sync_state(pb::GetSyncStateRequest::default())
        .await
        .expect("sync state")
        .into_inner();
    assert_eq!(state.opt_out_change, 1);
    assert!(!state.store_id.is_empty() && state.held_practices.is_empty());

    // An older copy of the practice's record is passed over; a record new here is installed.
    let update = SystemTime::now();
    let older = record(
        EMIS_A,
        update - Duration::from_secs(86_400),
        pb::practice_opt_out::Origin::Restored,
        "emis",
    );
    let moved = record(EMIS_B, update, pb::practice_opt_out::Origin::Transferred, "tpp");
    let request = import(vec![older, moved.clone()]);
    let done = control
        .import_opt_outs(request.clone())
        .await
        .expect("import")
        .into_inner();
    assert_eq!((done.installed, done.kept, done.latest_change), (1, 1, 2));
    let again = control
        .import_opt_outs(request)
        .await
        .expect("import again")
        .into_inner();
    assert_eq!(
        (again.installed, again.kept, again.latest_change),
        (0, 2, 2),
        "a copy of a record held changes nothing"
    );
    assert_eq!(
        state_of(&get(&mut backend, EMIS_A).await),
        (S::Disabled, R::OptedOut)
    );
    assert_eq!(
        state_of(&get(&mut backend, EMIS_B).await),
        (S::Disabled, R::OptedOut)
    );
    let listed = admin
        .list_practice_opt_outs(pb::ListPracticeOptOutsRequest {
            practice: EMIS_B.into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .opt_outs;
    assert_eq!(
        listed,
        [pb::PracticeOptOut {
            change: 2,
            ..moved.clone()
        }],
        "installed as it was sent, numbered here"
    );

    // The changes in change order, a page at a time.
    let changes = |after_change, page_size| pb::ListOptOutChangesRequest {
        after_change,
        page_size,
    };
    let page = control
        .list_opt_out_changes(changes(0, 1))
        .await
        .expect("changes")
        .into_inner();
    assert_eq!(
        (
            page.opt_outs.len(),
            page.opt_outs[0].change,
            page.latest_change,
            page.store_id.as_str()
        ),
        (1, 1, 2, state.store_id.as_str())
    );
    let rest = control
        .list_opt_out_changes(changes(1, 0))
        .await
        .expect("changes")
        .into_inner();
    assert_eq!(rest.opt_outs.iter().map(|o| o.change).collect::<Vec<_>>(), [2]);

    // Not a register record, or too much at once: refused with the field, nothing changed.
    let bad = |f: fn(&mut pb::PracticeOptOut)| {
        let mut r = record(EMIS_QRP, update, pb::practice_opt_out::Origin::Restored, "emis");
        f(&mut r);
        import(vec![r])
    };
    let fields: Vec<(&str, pb::ImportOptOutsRequest, &str)> = vec![
        (
            "a record made here",
            bad(|r| r.origin = pb::practice_opt_out::Origin::Recorded.into()),
            "opt_outs[0].origin",
        ),
        ("no origin", bad(|r| r.origin = 0), "opt_outs[0].origin"),
        (
            "no origin supplier",
            bad(|r| r.origin_supplier.clear()),
            "opt_outs[0].origin_supplier",
        ),
        (
            "no update time",
            bad(|r| r.update_time = None),
            "opt_outs[0].update_time",
        ),
        (
            "no recorder",
            bad(|r| r.recorded_by.clear()),
            "opt_outs[0].recorded_by",
        ),
        ("no reason", bad(|r| r.reason.clear()), "opt_outs[0].reason"),
        (
            "dated a year ahead (it would outrank the practice's later words)",
            bad(|r| {
                r.update_time = Some(rollout_net::wire::timestamp(
                    SystemTime::now() + Duration::from_secs(365 * 86_400),
                ));
            }),
            "opt_outs[0].update_time",
        ),
        (
            "a malformed name",
            bad(|r| r.name = "practices/XYZ".into()),
            "opt_outs[0].name",
        ),
        (
            "withdrawn without its withdrawal",
            bad(|r| r.withdrawn = true),
            "opt_outs[0].withdrawn_by",
        ),
        (
            "the same record twice",
            import(vec![moved.clone(), moved.clone()]),
            "opt_outs[1].name",
        ),
        (
            "over 1,000 records",
            import(vec![moved.clone(); 1_001]),
            "opt_outs",
        ),
        (
            "over 10,000 released practices",
            pb::ImportOptOutsRequest {
                released_practices: vec![EMIS_A.into(); 10_001],
                ..Default::default()
            },
            "released_practices",
        ),
        (
            "a released practice that is not an ODS code",
            pb::ImportOptOutsRequest {
                released_practices: vec!["not-a-code".into()],
                ..Default::default()
            },
            "released_practices[0]",
        ),
    ];
    let refusals = fields.len();
    for (what, request, field) in fields {
        let status = control.import_opt_outs(request).await.expect_err(what);
        assert_refused(&status, Code::InvalidArgument, "INVALID_FIELD", what);
        let violations = tonic_types::StatusExt::get_error_details(&status)
            .bad_request()
            .map(|b| b.field_violations.clone())
            .unwrap_or_default();
        assert_eq!(
            violations.first().map(|v| v.field.as_str()),
            Some(field),
            "{what}"
        );
    }
    for (what, request) in [
        ("a negative change", changes(-1, 0)),
        ("a page over 1,000", changes(0, 1_001)),
    ] {
        let status = control.list_opt_out_changes(request).await.expect_err(what);
        assert_refused(&status, Code::InvalidArgument, "INVALID_FIELD", what);
    }
    let mut as_backend = pb::control_service_client::ControlServiceClient::new(crate::support::channel_as(
        &files.pki,
        "backend-emis",
        server.addr,
    ));
    let status = as_backend
        .import_opt_outs(import(vec![moved]))
        .await
        .expect_err("only the coordinator imports");
    assert_refused(
        &status,
        Code::PermissionDenied,
        "ROLE_REQUIRED",
        "a backend importing",
    );
    let after = control
        .get_sync_state(pb::GetSyncStateRequest::default())
        .await
        .expect("sync state")
        .into_inner();
    assert_eq!(after.opt_out_change, 2, "nothing refused changed anything");
    // A practice this supplier does not serve (it moved away, or never was here) is passed
    // over: its record is the other supplier's to hold.
    let elsewhere = control
        .import_opt_outs(import(vec![record(
            "Z99999",
            update,
            pb::practice_opt_out::Origin::Transferred,
            "tpp",
        )]))
        .await
        .expect("import")
        .into_inner();
    assert_eq!(
        (elsewhere.installed, elsewhere.kept, elsewhere.latest_change),
        (0, 1, 2)
    );
    // The practice's next word supersedes a record dated ahead of this supplier's clock (a
    // register copy from a supplier whose clock ran fast): the withdrawal is newer.
    let ahead = record(
        EMIS_QRP,
        SystemTime::now() + Duration::from_secs(120),
        pb::practice_opt_out::Origin::Transferred,
        "tpp",
    );
    let installed = control
        .import_opt_outs(import(vec![ahead.clone()]))
        .await
        .expect("import a record dated 2 minutes ahead")
        .into_inner();
    assert_eq!(installed.installed, 1);
    let withdrawn = admin
        .withdraw_practice_opt_out(pb::WithdrawPracticeOptOutRequest {
            name: ahead.name.clone(),
            reason: "the practice changed its mind".into(),
            request_id: String::new(),
        })
        .await
        .expect("withdraw")
        .into_inner();
    let time =
        |t: &Option<prost_types::Timestamp>| SystemTime::try_from(t.expect("update time")).expect("a time");
    assert!(
        time(&withdrawn.update_time) > time(&ahead.update_time),
        "{:?} after {:?}",
        withdrawn.update_time,
        ahead.update_time
    );
    let latest = installed.latest_change + 1;
    assert_eq!(withdrawn.change, latest);

    server.stop().await;

    // One audit event for the record installed, and one for each refusal (the backend's
    // refused by the auth layer).
    let store = SqlSupplierStore::open(&format!("sqlite://{}", files.database.display()))
        .await
        .expect("open");
    let events = store.list_audit(0, 1_000).await.expect("audit");
    let import_events: Vec<_> = events
        .iter()
        .filter(|e| e.draft.action.ends_with("/ImportOptOuts"))
        .collect();
    let accepted: Vec<_> = import_events
        .iter()
        .filter(|e| e.draft.outcome == rollout_core::audit::AuditOutcome::Accepted)
        .collect();
    assert_eq!(accepted.len(), 2, "the moved record, and the one dated ahead");
    assert_eq!(
        accepted[0].draft.target,
        format!("{}/optOut", practice_feature(EMIS_B))
    );
    assert!(
        accepted[0]
            .draft
            .reason
            .starts_with("transferred with the practice from suppliers/tpp"),
        "{}",
        accepted[0].draft.reason
    );
    // Refused calls beyond a caller's first few of a window are counted in a summary.
    let refused: u64 = import_events
        .iter()
        .filter(|e| e.draft.outcome == rollout_core::audit::AuditOutcome::Refused)
        .map(|e| e.draft.calls)
        .sum();
    assert_eq!(refused, refusals as u64 + 1);
    store.close().await;
}
