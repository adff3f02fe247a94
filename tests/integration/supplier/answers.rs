//! Explained answers: each follows the commands applied, names its deciding rule, and is the
//! same after a restart on the same file.

use rollout_core::Scope;
use rollout_proto::v1 as pb;

use super::{R, S, deciding, opt_out_request, state_of};
use crate::support::{
    define, feature_name, go_live, halt, practice_feature, resume,
    supplier::{
        EMIS_A, EMIS_ACTIVE, EMIS_ALL, EMIS_B, EMIS_CLOSED, EMIS_QRP, apply, control, emis, get, settings,
        toggle,
    },
};

#[tokio::test]
async fn answers_are_explained_and_follow_the_commands() {
    let (_tmp, files, server) = emis().await;
    let mut backend = toggle(&files, "backend-emis", &server);
    let mut control = control(&files, &server);

    // Before the first synchronisation: UNKNOWN, for any well-formed feature.
    let before = get(&mut backend, EMIS_A).await;
    assert_eq!(state_of(&before), (S::Unknown, R::NeverSynchronised));
    assert_eq!(before.practice.as_ref().map(|p| p.icb.as_str()), Some("QN7"));

    apply(&mut control, define(1, None)).await;
    assert_eq!(
        state_of(&get(&mut backend, EMIS_A).await),
        (S::Disabled, R::NotLive)
    );
    let live = apply(&mut control, go_live(2, "golive-1", Scope::National, None)).await;
    assert_eq!(
        (live.applied_sequence, live.outcome()),
        (2, pb::apply_command_response::Outcome::Applied)
    );

    let on = get(&mut backend, EMIS_A).await;
    assert_eq!(state_of(&on), (S::Enabled, R::Live));
    assert_eq!(deciding(&on), Some("commands/golive-1"));
    assert!(
        on.explanation.starts_with("enabled: live by command golive-1"),
        "{}",
        on.explanation
    );
    assert_eq!(on.applied_sequence, 2);
    // Lower-case ODS codes are normalised, not refused.
    let lower = get(&mut backend, &EMIS_A.to_lowercase()).await;
    assert_eq!(lower.name, practice_feature(EMIS_A));
    assert_eq!(
        state_of(&get(&mut backend, EMIS_CLOSED).await),
        (S::Disabled, R::PracticeNotActive)
    );

    apply(
        &mut control,
        halt(3, "halt-qn7", Scope::Icb("QN7".parse().expect("icb"))),
    )
    .await;
    let halted = get(&mut backend, EMIS_A).await;
    assert_eq!(state_of(&halted), (S::Disabled, R::Halted));
    assert_eq!(deciding(&halted), Some("commands/halt-qn7"));
    assert_eq!(
        halted.rules.len(),
        2,
        "the go-live and the halt both apply: {:?}",
        halted.rules
    );
    assert_eq!(
        state_of(&get(&mut backend, EMIS_B).await),
        (S::Enabled, R::Live),
        "another ICB"
    );
    // A backend's plain call: the same state, reason and sentence, without the rules.
    let plain = backend
        .get_practice_feature(pb::GetPracticeFeatureRequest {
            name: practice_feature(EMIS_A),
            explain: false,
        })
        .await
        .expect("plain get")
        .into_inner();
    assert_eq!(state_of(&plain), state_of(&halted));
    assert_eq!(plain.explanation, halted.explanation);
    assert!(
        plain.explanation.contains("halt-qn7"),
        "the sentence names the deciding command: {}",
        plain.explanation
    );
    assert!(plain.rules.is_empty(), "no rules unless asked: {:?}", plain.rules);
    assert_eq!(plain.omitted_rules, 0);

    // Batch get, in request order.
    let batch = backend
        .batch_get_practice_features(pb::BatchGetPracticeFeaturesRequest {
            names: vec![
                practice_feature(EMIS_B),
                practice_feature(EMIS_A),
                practice_feature(EMIS_CLOSED),
            ],
            explain: false,
        })
        .await
        .expect("batch get")
        .into_inner();
    let states: Vec<_> = batch
        .practice_features
        .iter()
        .map(|p| (p.name.clone(), p.state()))
        .collect();
    assert_eq!(
        states,
        [
            (practice_feature(EMIS_B), S::Enabled),
            (practice_feature(EMIS_A), S::Disabled),
            (practice_feature(EMIS_CLOSED), S::Disabled)
        ]
    );
    assert!(
        batch.practice_features.iter().all(|p| p.rules.is_empty()),
        "no rules unless asked"
    );

    // List every practice, paged, and check the pages join up into the whole estate.
    let mut names = Vec::new();
    let mut token = String::new();
    loop {
        let page = backend
            .list_practice_features(pb::ListPracticeFeaturesRequest {
                feature: feature_name(),
                page_size: 1_000,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        assert_eq!(page.total_size, EMIS_ALL);
        names.extend(page.practice_features.into_iter().map(|p| p.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(names.len(), EMIS_ALL as usize);
    assert!(
        names.windows(2).all(|w| w[0] < w[1]),
        "ordered by ODS code, no repeats"
    );

    // Filters: the halted ICB's practices are the DISABLED ones in QN7.
    let qn7_disabled = backend
        .list_practice_features(pb::ListPracticeFeaturesRequest {
            feature: feature_name(),
            state: S::Disabled.into(),
            icb: "qn7".into(),
            page_size: 5_000,
            ..Default::default()
        })
        .await
        .expect("list filtered")
        .into_inner();
    let qn7_enabled = backend
        .list_practice_features(pb::ListPracticeFeaturesRequest {
            feature: feature_name(),
            state: S::Enabled.into(),
            icb: "QN7".into(),
            ..Default::default()
        })
        .await
        .expect("list filtered")
        .into_inner();
    assert!(qn7_disabled.total_size > 0);
    assert_eq!(qn7_enabled.total_size, 0, "every QN7 practice is halted");
    assert!(
        qn7_disabled
            .practice_features
            .iter()
            .all(|p| p.practice.as_ref().is_some_and(|x| x.icb == "QN7"))
    );

    // Sync state counts the national picture at this supplier.
    let sync = control
        .get_sync_state(pb::GetSyncStateRequest::default())
        .await
        .expect("sync state")
        .into_inner();
    assert_eq!(
        (sync.supplier.as_str(), sync.applied_sequence),
        ("suppliers/emis", 3)
    );
    let counts = &sync.feature_counts[0];
    assert_eq!(counts.practices, EMIS_ALL);
    let enabled = backend
        .list_practice_features(pb::ListPracticeFeaturesRequest {
            feature: feature_name(),
            state: S::Enabled.into(),
            ..Default::default()
        })
        .await
        .expect("list enabled")
        .into_inner();
    assert_eq!(counts.enabled, enabled.total_size);
    assert!(counts.halted > 0 && counts.halted < qn7_disabled.total_size + 1);
    assert_eq!(counts.enabled + counts.halted, EMIS_ACTIVE);
    assert_eq!(
        counts.other_disabled,
        EMIS_ALL - EMIS_ACTIVE,
        "closed, dormant and proposed"
    );

    // Resume lifts the halt it names, which is retired: the answer lists the rules in force
    // only (the history is the coordinator's).
    apply(&mut control, resume(4, "resume-1", &["halt-qn7"])).await;
    let after = get(&mut backend, EMIS_A).await;
    assert_eq!(state_of(&after), (S::Enabled, R::Live));
    assert!(
        after.rules.iter().all(|r| r.command != "commands/halt-qn7"),
        "a lifted halt is not a rule in force: {:?}",
        after.rules
    );
    assert_eq!(
        after.rules.iter().map(|r| r.command.as_str()).collect::<Vec<_>>(),
        ["commands/golive-1"]
    );

    server.stop().await;
}

#[tokio::test]
async fn a_restart_on_the_same_file_gives_the_same_answers() {
    let (_tmp, files, server) = emis().await;
    let mut control = control(&files, &server);
    let mut admin = settings(&files, "practice-admin-emis", &server);
    apply(&mut control, define(1, None)).await;
    apply(&mut control, go_live(2, "golive-1", Scope::National, None)).await;
    apply(
        &mut control,
        halt(3, "halt-1", Scope::Icb("QRP".parse().expect("icb"))),
    )
    .await;
    admin
        .set_practice_opt_out(opt_out_request(EMIS_A, ""))
        .await
        .expect("opt out");
    let mut backend = toggle(&files, "backend-emis", &server);
    let mut before = Vec::new();
    for ods in [EMIS_A, EMIS_B, EMIS_QRP, EMIS_CLOSED] {
        before.push(get(&mut backend, ods).await);
    }
    assert_eq!(
        before.iter().map(state_of).collect::<Vec<_>>(),
        [
            (S::Disabled, R::OptedOut),
            (S::Enabled, R::Live),
            (S::Disabled, R::Halted),
            (S::Disabled, R::PracticeNotActive)
        ]
    );
    let sync_before = control
        .get_sync_state(pb::GetSyncStateRequest::default())
        .await
        .expect("sync")
        .into_inner();
    server.stop().await;

    let server = files.start(None).await;
    let mut backend = toggle(&files, "backend-emis", &server);
    for b in &before {
        let ods = b.name.split('/').nth(1).expect("ods");
        let a = get(&mut backend, ods).await;
        assert_eq!(
            (a.state, a.reason, &a.explanation, a.applied_sequence),
            (b.state, b.reason, &b.explanation, b.applied_sequence),
            "{ods}"
        );
        assert_eq!(a.rules, b.rules, "{ods}: the same rules, with the same times");
    }
    let mut control = self::control(&files, &server);
    let sync = control
        .get_sync_state(pb::GetSyncStateRequest::default())
        .await
        .expect("sync")
        .into_inner();
    assert_eq!(sync.applied_sequence, 3);
    assert_eq!(sync.feature_counts, sync_before.feature_counts);
    let repeat = apply(
        &mut control,
        halt(3, "halt-1", Scope::Icb("QRP".parse().expect("icb"))),
    )
    .await;
    assert_eq!(
        repeat.applied_sequence, 3,
        "a repeat after restart answers as before"
    );
    server.stop().await;
}
