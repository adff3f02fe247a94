//! Bad input: every malformed, unknown or oversize request is refused with its canonical code
//! and reason, changes nothing, and (for mutating calls) is audited.

use rollout_core::{HistoryHash, Scope};
use rollout_proto::v1 as pb;
use rollout_store::supplier::{SqlSupplierStore, SupplierStore};
use tonic::Code;

use super::opt_out_request;
use crate::support::{
    assert_refused, define, feature_name, go_live, halt, practice_feature, resume, snapshot,
    supplier::{EMIS_A, EMIS_B, apply, control, emis, get, settings, toggle},
};

/// One row of the bad-input table: a refused call and what its refusal must say.
struct Row {
    what: &'static str,
    /// The status the call was refused with.
    status: tonic::Status,
    code: Code,
    /// The ErrorInfo reason expected.
    reason: &'static str,
    /// The call would change state, so its refusal is audited.
    mutating: bool,
}

/// Checks each row's code and reason, and that an INVALID_ARGUMENT names the field; returns
/// how many rows were mutating calls (each must be in the audit log).
#[track_caller]
fn check(rows: &[Row]) -> usize {
    let mut mutating = 0;
    for row in rows {
        assert_refused(&row.status, row.code, row.reason, row.what);
        assert!(
            row.status.message().len() < 1_000,
            "{}: a refusal quotes a bounded piece of the input ({} bytes)",
            row.what,
            row.status.message().len()
        );
        if row.code == Code::InvalidArgument {
            let details = tonic_types::StatusExt::get_error_details(&row.status);
            assert!(
                details
                    .bad_request()
                    .is_some_and(|b| !b.field_violations.is_empty()),
                "{}: names the field",
                row.what
            );
        }
        mutating += usize::from(row.mutating);
    }
    mutating
}

/// An opt-out request for an EMIS practice, changed by `f`.
fn opt_out_with(f: fn(&mut pb::PracticeOptOut)) -> pb::SetPracticeOptOutRequest {
    let mut r = opt_out_request(EMIS_A, "");
    if let Some(o) = r.opt_out.as_mut() {
        f(o);
    }
    r
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

    let get_req = |name: &str| pb::GetPracticeFeatureRequest {
        name: name.into(),
        explain: true,
    };
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
    let rows = vec![
        Row {
            what: "malformed ODS code",
            status: refused(
                t.get_practice_feature(get_req("practices/XYZ/features/prospective-record-access")),
            )
            .await,
            code: IA,
            reason: "INVALID_FIELD",
            mutating: false,
        },
        Row {
            what: "name without its collection",
            status: refused(t.get_practice_feature(get_req("L56296"))).await,
            code: IA,
            reason: "INVALID_FIELD",
            mutating: false,
        },
        Row {
            what: "malformed feature key",
            status: refused(t.get_practice_feature(get_req("practices/L56296/features/Record_Access"))).await,
            code: IA,
            reason: "INVALID_FIELD",
            mutating: false,
        },
        Row {
            what: "practice of another supplier",
            status: refused(t.get_practice_feature(get_req(&practice_feature("X07268")))).await,
            code: NF,
            reason: "PRACTICE_NOT_FOUND",
            mutating: false,
        },
        Row {
            what: "unknown feature",
            status: refused(t.get_practice_feature(get_req("practices/L56296/features/other-feature"))).await,
            code: NF,
            reason: "FEATURE_NOT_FOUND",
            mutating: false,
        },
        Row {
            what: "empty batch",
            status: refused(t.batch_get_practice_features(pb::BatchGetPracticeFeaturesRequest::default()))
                .await,
            code: IA,
            reason: "INVALID_FIELD",
            mutating: false,
        },
        Row {
            what: "oversize batch",
            status: refused(
                t.batch_get_practice_features(pb::BatchGetPracticeFeaturesRequest {
                    names: too_many,
                    explain: false,
                }),
            )
            .await,
            code: IA,
            reason: "INVALID_FIELD",
            mutating: false,
        },
        Row {
            what: "one bad name in a batch",
            status: refused(
                t.batch_get_practice_features(pb::BatchGetPracticeFeaturesRequest {
                    names: vec![practice_feature(EMIS_A), "practices/1/features/x".into()],
                    explain: false,
                }),
            )
            .await,
            code: IA,
            reason: "INVALID_FIELD",
            mutating: false,
        },
        Row {
            what: "negative page size",
            status: refused(t.list_practice_features(list(|r| r.page_size = -1))).await,
            code: IA,
            reason: "INVALID_FIELD",
            mutating: false,
        },
        Row {
            what: "oversize page",
            status: refused(t.list_practice_features(list(|r| r.page_size = 5_001))).await,
            code: IA,
            reason: "INVALID_FIELD",
            mutating: false,
        },
        Row {
            what: "forged page token",
            status: refused(t.list_practice_features(list(|r| r.page_token = "7a7a".into()))).await,
            code: IA,
            reason: "INVALID_FIELD",
            mutating: false,
        },
        Row {
            what: "not a hex page token",
            status: refused(t.list_practice_features(list(|r| r.page_token = "zz".into()))).await,
            code: IA,
            reason: "INVALID_FIELD",
            mutating: false,
        },
        Row {
            what: "unknown region",
            status: refused(t.list_practice_features(list(|r| r.region = "Y99".into()))).await,
            code: IA,
            reason: "INVALID_FIELD",
            mutating: false,
        },
        Row {
            what: "malformed ICB",
            status: refused(t.list_practice_features(list(|r| r.icb = "RXX".into()))).await,
            code: IA,
            reason: "INVALID_FIELD",
            mutating: false,
        },
        Row {
            what: "unknown state",
            status: refused(t.list_practice_features(list(|r| r.state = 99))).await,
            code: IA,
            reason: "INVALID_FIELD",
            mutating: false,
        },
        Row {
            what: "watch without a feature",
            status: refused(t.watch_practice_features(watch(|r| r.feature = String::new()))).await,
            code: IA,
            reason: "INVALID_FIELD",
            mutating: false,
        },
        Row {
            what: "negative start version",
            status: refused(t.watch_practice_features(watch(|r| r.start_version = -5))).await,
            code: IA,
            reason: "INVALID_FIELD",
            mutating: false,
        },
        Row {
            what: "watch a malformed practice",
            status: refused(t.watch_practice_features(watch(|r| r.practices = vec!["123".into()]))).await,
            code: IA,
            reason: "INVALID_FIELD",
            mutating: false,
        },
        Row {
            what: "opt-out missing",
            status: refused(admin.set_practice_opt_out(pb::SetPracticeOptOutRequest::default())).await,
            code: IA,
            reason: "INVALID_FIELD",
            mutating: true,
        },
        Row {
            what: "opt-out without a reason",
            status: refused(admin.set_practice_opt_out(opt(|o| o.reason = "  ".into()))).await,
            code: IA,
            reason: "INVALID_FIELD",
            mutating: true,
        },
        Row {
            what: "opt-out without a source",
            status: refused(admin.set_practice_opt_out(opt(|o| o.source = String::new()))).await,
            code: IA,
            reason: "INVALID_FIELD",
            mutating: true,
        },
        Row {
            what: "opt-out reason too long",
            status: refused(admin.set_practice_opt_out(opt(|o| o.reason = "x".repeat(1_001)))).await,
            code: IA,
            reason: "INVALID_FIELD",
            mutating: true,
        },
        Row {
            what: "opt-out for an unknown practice",
            status: refused(admin.set_practice_opt_out(opt(|o| {
                o.name = "practices/Z99999/features/prospective-record-access/optOut".into()
            })))
            .await,
            code: NF,
            reason: "PRACTICE_NOT_FOUND",
            mutating: true,
        },
        Row {
            what: "opt-out name without /optOut",
            status: refused(admin.set_practice_opt_out(opt(|o| o.name = practice_feature(EMIS_A)))).await,
            code: IA,
            reason: "INVALID_FIELD",
            mutating: true,
        },
        Row {
            what: "a reason holding a NUL (PostgreSQL text cannot hold it)",
            status: refused(admin.set_practice_opt_out(opt_out_with(|o| o.reason = "no\0thanks".into())))
                .await,
            code: IA,
            reason: "INVALID_FIELD",
            mutating: true,
        },
        Row {
            what: "a source holding a control character",
            status: refused(admin.set_practice_opt_out(opt_out_with(|o| {
                o.source = "letter\u{1b}[2J".into();
            })))
            .await,
            code: IA,
            reason: "INVALID_FIELD",
            mutating: true,
        },
        Row {
            what: "a request id of 100 KB",
            status: refused(admin.set_practice_opt_out(opt_out_request(EMIS_A, &"x".repeat(100_000)))).await,
            code: IA,
            reason: "INVALID_FIELD",
            mutating: true,
        },
        Row {
            what: "request id not a UUID",
            status: refused(admin.set_practice_opt_out(pb::SetPracticeOptOutRequest {
                request_id: "retry-1".into(),
                ..opt_out_request(EMIS_A, "")
            }))
            .await,
            code: IA,
            reason: "INVALID_FIELD",
            mutating: true,
        },
        Row {
            what: "withdraw an opt-out never made",
            status: refused(
                admin.withdraw_practice_opt_out(pb::WithdrawPracticeOptOutRequest {
                    name: format!("{}/optOut", practice_feature(EMIS_B)),
                    reason: "x".into(),
                    request_id: String::new(),
                }),
            )
            .await,
            code: NF,
            reason: "OPT_OUT_NOT_FOUND",
            mutating: true,
        },
        Row {
            what: "withdraw for a practice this supplier does not serve (one that moved away)",
            status: refused(
                admin.withdraw_practice_opt_out(pb::WithdrawPracticeOptOutRequest {
                    name: format!("{}/optOut", practice_feature("Z99999")),
                    reason: "x".into(),
                    request_id: String::new(),
                }),
            )
            .await,
            code: NF,
            reason: "PRACTICE_NOT_FOUND",
            mutating: true,
        },
        Row {
            what: "withdraw without a reason",
            status: refused(
                admin.withdraw_practice_opt_out(pb::WithdrawPracticeOptOutRequest {
                    name: format!("{}/optOut", practice_feature(EMIS_B)),
                    reason: String::new(),
                    request_id: String::new(),
                }),
            )
            .await,
            code: IA,
            reason: "INVALID_FIELD",
            mutating: true,
        },
        Row {
            what: "apply without a command",
            status: refused(control.apply_command(pb::ApplyCommandRequest::default())).await,
            code: IA,
            reason: "INVALID_FIELD",
            mutating: true,
        },
        Row {
            what: "apply sequence 0",
            status: refused(control.apply_command(cmd(|c| c.sequence = 0))).await,
            code: IA,
            reason: "INVALID_FIELD",
            mutating: true,
        },
        Row {
            what: "apply with no action",
            status: refused(control.apply_command(cmd(|c| c.action = None))).await,
            code: IA,
            reason: "INVALID_FIELD",
            mutating: true,
        },
        Row {
            what: "halt with an empty scope",
            status: refused(control.apply_command(cmd(|c| {
                c.action = Some(pb::command::Action::Halt(pb::command::Halt {
                    scope: Some(pb::Scope::default()),
                }))
            })))
            .await,
            code: IA,
            reason: "INVALID_FIELD",
            mutating: true,
        },
        Row {
            what: "halt without a reason",
            status: refused(control.apply_command(cmd(|c| c.reason = String::new()))).await,
            code: IA,
            reason: "INVALID_FIELD",
            mutating: true,
        },
        Row {
            what: "resume naming no halt",
            status: refused(control.apply_command(pb::ApplyCommandRequest {
                command: Some(resume(3, "resume-x", &[])),
                ..Default::default()
            }))
            .await,
            code: IA,
            reason: "INVALID_FIELD",
            mutating: true,
        },
        Row {
            what: "halt of an undefined feature",
            status: refused(control.apply_command(cmd(|c| c.feature = "features/other-feature".into())))
                .await,
            code: FP,
            reason: "FEATURE_NOT_FOUND",
            mutating: true,
        },
        Row {
            what: "snapshot holding a command past its sequence",
            status: refused(control.replace_rules(tokio_stream::iter(snapshot(
                2,
                HistoryHash::EMPTY,
                (0, HistoryHash::EMPTY),
                vec![define(1, None), go_live(3, "g", Scope::National, None)],
            ))))
            .await,
            code: IA,
            reason: "INVALID_FIELD",
            mutating: true,
        },
        Row {
            what: "snapshot without a header",
            status: refused(
                control.replace_rules(tokio_stream::iter(vec![pb::ReplaceRulesRequest {
                    commands: vec![define(1, None)],
                    last: true,
                    ..Default::default()
                }])),
            )
            .await,
            code: IA,
            reason: "INVALID_FIELD",
            mutating: true,
        },
        Row {
            what: "snapshot chunk over 1 MiB",
            status: refused(
                control.replace_rules(tokio_stream::iter(vec![pb::ReplaceRulesRequest {
                    header: snapshot(2, HistoryHash::EMPTY, (0, HistoryHash::EMPTY), vec![])[0]
                        .header
                        .clone(),
                    commands: (0..16)
                        .map(|i| {
                            let codes: Vec<String> = (0..10_000).map(|n| format!("B{n:05}")).collect();
                            let codes: Vec<&str> = codes.iter().map(String::as_str).collect();
                            halt(2 + i, &format!("big-{i}"), crate::support::practices(&codes))
                        })
                        .collect(),
                    last: true,
                }])),
            )
            .await,
            code: Code::ResourceExhausted,
            reason: "SNAPSHOT_CHUNK_TOO_LARGE",
            mutating: true,
        },
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

    assert!(rows.len() >= 20, "at least 20 bad-input cases");
    let audited = 1 + check(&rows); // 1: the oversize scope above

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
    // A caller's refusals beyond the first few of a window are counted in one summary event.
    let refused: u64 = events
        .iter()
        .filter(|e| e.draft.outcome == rollout_core::audit::AuditOutcome::Refused)
        .map(|e| e.draft.calls)
        .sum();
    assert_eq!(refused, audited as u64);
    store.close().await;
}
