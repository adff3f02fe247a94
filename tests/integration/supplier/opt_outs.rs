//! Opt-outs: they beat any go-live, survive a halt and its resume, and only the practice
//! withdraws them.

use rollout_core::Scope;
use rollout_proto::v1 as pb;
use tonic::Code;

use super::{R, S, opt_out_request, state_of};
use crate::support::{
    assert_refused, define, go_live, halt, practice_feature, practices, resume,
    supplier::{EMIS_A, EMIS_B, apply, control, emis, get, settings, toggle},
};

#[tokio::test]
async fn opt_outs_beat_go_live_and_are_withdrawn_only_by_the_practice() {
    let (_tmp, files, server) = emis().await;
    let mut backend = toggle(&files, "backend-emis", &server);
    let mut control = control(&files, &server);
    let mut admin = settings(&files, "practice-admin-emis", &server);
    apply(&mut control, define(1, None)).await;
    apply(&mut control, go_live(2, "golive-1", Scope::National, None)).await;

    let request_id = "6b2f1c1e-7c38-4c5e-9d6a-0f6e8f1f2a3b";
    let set = admin
        .set_practice_opt_out(opt_out_request(EMIS_A, request_id))
        .await
        .expect("opt out")
        .into_inner();
    assert_eq!(
        set.recorded_by,
        "spiffe://gprollout.test/supplier/emis/practice-admin"
    );
    assert!(!set.withdrawn);
    // A retry with the same request id answers the first result; a different body is refused.
    let retry = admin
        .set_practice_opt_out(opt_out_request(EMIS_A, request_id))
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(retry, set);
    let mut different = opt_out_request(EMIS_B, request_id);
    different.request_id = request_id.into();
    let reused = admin
        .set_practice_opt_out(different)
        .await
        .expect_err("reused id");
    assert_refused(
        &reused,
        Code::InvalidArgument,
        "REQUEST_ID_REUSED",
        "reused request id",
    );

    let opted = get(&mut backend, EMIS_A).await;
    assert_eq!(state_of(&opted), (S::Disabled, R::OptedOut));
    let rule = opted.rules.iter().find(|r| r.deciding).expect("deciding rule");
    assert_eq!(rule.kind(), pb::rule::Kind::OptOut);
    assert_eq!(rule.source, "letter from the practice manager");
    assert_eq!(state_of(&get(&mut backend, EMIS_B).await), (S::Enabled, R::Live));

    // A halt and its resume do not switch the opted-out practice back on.
    apply(&mut control, halt(3, "halt-1", Scope::National)).await;
    apply(&mut control, resume(4, "resume-1", &["halt-1"])).await;
    assert_eq!(
        state_of(&get(&mut backend, EMIS_A).await),
        (S::Disabled, R::OptedOut)
    );
    apply(&mut control, go_live(5, "golive-2", practices(&[EMIS_A]), None)).await;
    assert_eq!(
        state_of(&get(&mut backend, EMIS_A).await),
        (S::Disabled, R::OptedOut)
    );

    let listed = admin
        .list_practice_opt_outs(pb::ListPracticeOptOutsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.opt_outs.len(), 1);

    let withdrawn = admin
        .withdraw_practice_opt_out(pb::WithdrawPracticeOptOutRequest {
            name: format!("{}/optOut", practice_feature(EMIS_A)),
            reason: "the practice has reviewed its records".into(),
            request_id: String::new(),
        })
        .await
        .expect("withdraw")
        .into_inner();
    assert!(withdrawn.withdrawn);
    assert_eq!(state_of(&get(&mut backend, EMIS_A).await), (S::Enabled, R::Live));
    let current = admin
        .list_practice_opt_outs(pb::ListPracticeOptOutsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(
        current.opt_outs.is_empty(),
        "withdrawn opt-outs are hidden unless asked for"
    );
    let all = admin
        .list_practice_opt_outs(pb::ListPracticeOptOutsRequest {
            show_withdrawn: true,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(all.opt_outs.len(), 1);
    server.stop().await;
}
