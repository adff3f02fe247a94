//! SetPracticeOptOut cut off at every moment, each time for a practice of its own, then
//! retried with the same request id. After each: the store (read back through
//! ListOptOutChanges) holds exactly one change since the last, the retry's record; the
//! supplier serves exactly that (its opt-out list, its latest opt-out change, the practice's
//! answer). At the end the whole list served is the whole list stored, and still is after a
//! restart rebuilds the state from the store.

use std::time::{Instant, SystemTime};

use rollout_core::{PracticeStatus, Scope};
use rollout_proto::v1::{
    self as pb,
    control_service_client::ControlServiceClient,
    practice_feature::{Reason as R, State as S},
    practice_settings_service_client::PracticeSettingsServiceClient,
    toggle_service_client::ToggleServiceClient,
};
use tonic::transport::Channel;

use super::{Ended, Figures, MOMENTS, before, cut_off, request, request_id};
use crate::support::{
    define, go_live, practice_feature, reference_estate,
    supplier::{apply, control, emis, get, settings, toggle},
};

/// `MOMENTS` active EMIS practices.
fn emis_practices() -> Vec<String> {
    reference_estate()
        .practices()
        .filter(|p| p.supplier.as_str() == "emis" && p.status == PracticeStatus::Active)
        .take(MOMENTS as usize)
        .map(|p| p.ods.to_string())
        .collect()
}

fn opt_out(ods: &str, i: u32) -> pb::SetPracticeOptOutRequest {
    pb::SetPracticeOptOutRequest {
        opt_out: Some(pb::PracticeOptOut {
            name: format!("{}/optOut", practice_feature(ods)),
            reason: format!("the partners want to review their records first ({i})"),
            source: "letter from the practice manager".into(),
            ..Default::default()
        }),
        request_id: request_id(1, i),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opt_outs_cut_off_at_any_moment_are_served_as_stored() {
    let (_tmp, files, server) = emis().await;
    let mut coordinator = control(&files, &server);
    apply(&mut coordinator, define(1, None)).await;
    apply(&mut coordinator, go_live(2, "golive-1", Scope::National, None)).await;
    let mut admin = settings(&files, "practice-admin-emis", &server);
    let mut backend = toggle(&files, "backend-emis", &server);
    let practices = emis_practices();
    let mut figures = Figures::default();
    let started = Instant::now();
    let mut latest = 0;
    for (i, ods) in (0..MOMENTS).zip(&practices) {
        let req = opt_out(ods, i);
        let first = cut_off(i, |deadline| {
            admin.set_practice_opt_out(request(req.clone(), deadline))
        })
        .await;
        let sent = SystemTime::now();
        let retry = admin
            .set_practice_opt_out(req)
            .await
            .unwrap_or_else(|s| panic!("moment {i}: the retry failed: {s:?}"))
            .into_inner();
        figures.count(&first, before(retry.update_time, sent));
        if let Ended::Answered(answer) = &first {
            assert_eq!(
                answer, &retry,
                "moment {i}: the retry answers as the first call did"
            );
        }
        assert_eq!(
            retry.change,
            latest + 1,
            "moment {i}: one opt-out change per request id"
        );
        served_as_stored(&mut coordinator, &mut admin, &mut backend, ods, &retry, latest, i).await;
        latest = retry.change;
    }
    figures.report("SetPracticeOptOut", started.elapsed());
    let served = all_served(&mut admin).await;
    let stored = coordinator
        .list_opt_out_changes(pb::ListOptOutChangesRequest {
            after_change: 0,
            page_size: 1_000,
        })
        .await
        .expect("list opt-out changes")
        .into_inner();
    assert_eq!(served.len(), MOMENTS as usize);
    assert_eq!(sorted(stored.opt_outs), served, "everything stored is served");
    server.stop().await;
    let server = files.start(None).await;
    let mut admin = settings(&files, "practice-admin-emis", &server);
    assert_eq!(
        all_served(&mut admin).await,
        served,
        "the state rebuilt from the store is what was served"
    );
    server.stop().await;
}

/// Checks that after moment `i` the store holds one change since `latest`, `retry`, and the
/// supplier serves exactly it.
async fn served_as_stored(
    coordinator: &mut ControlServiceClient<Channel>,
    admin: &mut PracticeSettingsServiceClient<Channel>,
    backend: &mut ToggleServiceClient<Channel>,
    ods: &str,
    retry: &pb::PracticeOptOut,
    latest: i64,
    i: u32,
) {
    let stored = coordinator
        .list_opt_out_changes(pb::ListOptOutChangesRequest {
            after_change: latest,
            page_size: 10,
        })
        .await
        .expect("list opt-out changes")
        .into_inner();
    assert_eq!(
        stored.opt_outs,
        vec![retry.clone()],
        "moment {i}: the store holds one change since {latest}, the retry's record"
    );
    let listed = admin
        .list_practice_opt_outs(pb::ListPracticeOptOutsRequest {
            practice: ods.into(),
            ..Default::default()
        })
        .await
        .expect("list opt-outs")
        .into_inner();
    assert_eq!(
        listed.opt_outs,
        vec![retry.clone()],
        "moment {i}: the opt-out stored is the one served"
    );
    let sync = coordinator
        .get_sync_state(pb::GetSyncStateRequest::default())
        .await
        .expect("sync state")
        .into_inner();
    assert_eq!(
        sync.opt_out_change, retry.change,
        "moment {i}: the latest opt-out change served is the one stored"
    );
    let answer = get(backend, ods).await;
    assert_eq!(
        (answer.state(), answer.reason()),
        (S::Disabled, R::OptedOut),
        "moment {i}: {ods} is answered opted out"
    );
}

/// Every opt-out the supplier serves, by name.
async fn all_served(admin: &mut PracticeSettingsServiceClient<Channel>) -> Vec<pb::PracticeOptOut> {
    let listed = admin
        .list_practice_opt_outs(pb::ListPracticeOptOutsRequest {
            page_size: 1_000,
            show_withdrawn: true,
            ..Default::default()
        })
        .await
        .expect("list opt-outs")
        .into_inner();
    assert!(listed.next_page_token.is_empty(), "one page");
    sorted(listed.opt_outs)
}

fn sorted(mut opt_outs: Vec<pb::PracticeOptOut>) -> Vec<pb::PracticeOptOut> {
    opt_outs.sort_by(|a, b| a.name.cmp(&b.name));
    opt_outs
}
