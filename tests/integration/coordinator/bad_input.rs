//! Bad input to the coordinator: every case refused with its code and ErrorInfo reason, a
//! bounded message, and no state change.

use rollout_proto::v1 as pb;
use tonic::Code;

use crate::{
    stack::{Stack, feature_live, national},
    support::{assert_refused, feature_name, practice_feature},
};

fn supplier_scope(supplier: &str) -> pb::Scope {
    pb::Scope {
        target: Some(pb::scope::Target::Supplier(supplier.into())),
    }
}

#[tokio::test]
async fn bad_input_to_the_coordinator_is_refused_and_changes_nothing() {
    use Code::{AlreadyExists as AE, FailedPrecondition as FP, InvalidArgument as IA, NotFound as NF};
    let stack = Stack::start(None).await;
    feature_live(&stack).await;
    let mut alice = stack.client("alice");
    let mut bob = stack.client("bob");
    let mut viewer = stack.client("viewer");
    let mut auditor = stack.client("auditor");
    let before = viewer
        .list_commands(pb::ListCommandsRequest::default())
        .await
        .expect("list")
        .into_inner();
    let go_live = before
        .commands
        .iter()
        .find(|c| matches!(c.action, Some(pb::command::Action::GoLive(_))))
        .expect("go-live")
        .name
        .clone();

    let feature = |f: fn(&mut pb::Feature)| {
        let mut feature = pb::Feature {
            fail_mode: pb::FailMode::Static.into(),
            ..Default::default()
        };
        f(&mut feature);
        pb::CreateFeatureRequest {
            feature_id: "another-feature".into(),
            feature: Some(feature),
            reason: "r".into(),
            request_id: String::new(),
        }
    };
    let halt = |f: fn(&mut pb::HaltFeatureRequest)| {
        let mut r = pb::HaltFeatureRequest {
            name: feature_name(),
            scope: Some(national()),
            reason: "r".into(),
            request_id: String::new(),
            dry_run: false,
            ..Default::default()
        };
        f(&mut r);
        r
    };
    let scope = |t: pb::scope::Target| Some(pb::Scope { target: Some(t) });
    let closed = stack
        .estate
        .practices()
        .find(|p| p.status == rollout_core::PracticeStatus::Closed)
        .expect("a closed practice")
        .ods
        .to_string();
    let many: Vec<String> = (0..10_001).map(|i| format!("A{i:05}")).collect();
    let refused = |r: Result<tonic::Response<pb::Command>, tonic::Status>| r.expect_err("refused");
    let cases: Vec<(&str, tonic::Status, Code, &str)> = vec![
        (
            "a feature key with upper case",
            alice
                .create_feature(pb::CreateFeatureRequest {
                    feature_id: "Bad Key".into(),
                    ..feature(|_| {})
                })
                .await
                .expect_err("x"),
            IA,
            "INVALID_FIELD",
        ),
        (
            "a feature with no definition",
            alice
                .create_feature(pb::CreateFeatureRequest {
                    feature: None,
                    ..feature(|_| {})
                })
                .await
                .expect_err("x"),
            IA,
            "INVALID_FIELD",
        ),
        (
            "no fail mode",
            alice
                .create_feature(feature(|f| f.fail_mode = 0))
                .await
                .expect_err("x"),
            IA,
            "INVALID_FIELD",
        ),
        (
            "fail-closed without a TTL",
            alice
                .create_feature(feature(|f| f.fail_mode = pb::FailMode::Closed.into()))
                .await
                .expect_err("x"),
            IA,
            "INVALID_FIELD",
        ),
        (
            "a TTL under 10 s",
            alice
                .create_feature(feature(|f| {
                    f.fail_mode = pb::FailMode::Closed.into();
                    f.control_ttl = Some(prost_types::Duration { seconds: 1, nanos: 0 })
                }))
                .await
                .expect_err("x"),
            IA,
            "INVALID_FIELD",
        ),
        (
            "nine approvals",
            alice
                .create_feature(feature(|f| f.approvals_required = 9))
                .await
                .expect_err("x"),
            IA,
            "INVALID_FIELD",
        ),
        (
            "a feature without a reason",
            alice
                .create_feature(pb::CreateFeatureRequest {
                    reason: " ".into(),
                    ..feature(|_| {})
                })
                .await
                .expect_err("x"),
            IA,
            "INVALID_FIELD",
        ),
        (
            "a feature that exists",
            alice
                .create_feature(pb::CreateFeatureRequest {
                    feature_id: crate::support::FEATURE.into(),
                    ..feature(|_| {})
                })
                .await
                .expect_err("x"),
            AE,
            "FEATURE_EXISTS",
        ),
        (
            "a halt of features/",
            refused(alice.halt_feature(halt(|r| r.name = "features/".into())).await),
            IA,
            "INVALID_FIELD",
        ),
        (
            "a halt of an unknown feature",
            refused(
                alice
                    .halt_feature(halt(|r| r.name = "features/unknown-feature".into()))
                    .await,
            ),
            NF,
            "FEATURE_NOT_FOUND",
        ),
        (
            "a region that does not exist (answered with the closest known ones)",
            refused(
                alice
                    .halt_feature(halt(|r| {
                        r.scope = Some(pb::Scope {
                            target: Some(pb::scope::Target::Region("Y99".into())),
                        })
                    }))
                    .await,
            ),
            IA,
            "UNKNOWN_SCOPE_TARGET",
        ),
        (
            "a malformed ICB",
            refused(
                alice
                    .halt_feature(halt(|r| {
                        r.scope = Some(pb::Scope {
                            target: Some(pb::scope::Target::Icb("bad".into())),
                        })
                    }))
                    .await,
            ),
            IA,
            "INVALID_FIELD",
        ),
        (
            "an empty practice list",
            refused(
                alice
                    .halt_feature(halt(|r| {
                        r.scope = Some(pb::Scope {
                            target: Some(pb::scope::Target::Practices(pb::scope::PracticeList::default())),
                        })
                    }))
                    .await,
            ),
            IA,
            "INVALID_FIELD",
        ),
        (
            "10,001 practices",
            refused(
                alice
                    .halt_feature(pb::HaltFeatureRequest {
                        scope: scope(pb::scope::Target::Practices(pb::scope::PracticeList {
                            practices: many,
                        })),
                        ..halt(|_| {})
                    })
                    .await,
            ),
            IA,
            "INVALID_FIELD",
        ),
        (
            "a reason of 1,001 characters",
            refused(
                alice
                    .halt_feature(pb::HaltFeatureRequest {
                        reason: "x".repeat(1_001),
                        ..halt(|_| {})
                    })
                    .await,
            ),
            IA,
            "INVALID_FIELD",
        ),
        (
            "a request id that is not a UUID",
            refused(
                alice
                    .halt_feature(halt(|r| r.request_id = "retry-1".into()))
                    .await,
            ),
            IA,
            "INVALID_FIELD",
        ),
        (
            // The refusal quotes 64 characters of it, not 100 KB (a client's header limit).
            "a request id of 100 KB",
            refused(
                alice
                    .halt_feature(halt(|r| r.request_id = "x".repeat(100_000)))
                    .await,
            ),
            IA,
            "INVALID_FIELD",
        ),
        (
            // PostgreSQL text cannot hold a NUL: a supplier could not store the command.
            "a reason holding a NUL",
            refused(alice.halt_feature(halt(|r| r.reason = "stop\0now".into())).await),
            IA,
            "INVALID_FIELD",
        ),
        (
            "a reason holding a control character",
            refused(
                alice
                    .halt_feature(halt(|r| r.reason = "stop \u{1b}[2J now".into()))
                    .await,
            ),
            IA,
            "INVALID_FIELD",
        ),
        (
            "a feature description holding a NUL",
            alice
                .create_feature(feature(|f| f.description = "record\0access".into()))
                .await
                .expect_err("x"),
            IA,
            "INVALID_FIELD",
        ),
        (
            "an approval comment holding a control character",
            bob.approve_command(pb::ApproveCommandRequest {
                name: go_live.clone(),
                comment: "agreed\u{7}".into(),
                request_id: String::new(),
            })
            .await
            .expect_err("x"),
            IA,
            "INVALID_FIELD",
        ),
        (
            "a resume naming no halt",
            refused(
                alice
                    .resume_feature(pb::ResumeFeatureRequest {
                        name: feature_name(),
                        halts: vec![],
                        reason: "r".into(),
                        request_id: String::new(),
                        dry_run: false,
                    })
                    .await,
            ),
            IA,
            "INVALID_FIELD",
        ),
        (
            "a resume naming an unknown halt",
            refused(
                alice
                    .resume_feature(pb::ResumeFeatureRequest {
                        name: feature_name(),
                        halts: vec!["commands/no-such-halt".into()],
                        reason: "r".into(),
                        request_id: String::new(),
                        dry_run: false,
                    })
                    .await,
            ),
            NF,
            "HALT_NOT_FOUND",
        ),
        (
            "a resume naming a go-live",
            refused(
                alice
                    .resume_feature(pb::ResumeFeatureRequest {
                        name: feature_name(),
                        halts: vec![go_live.clone()],
                        reason: "r".into(),
                        request_id: String::new(),
                        dry_run: false,
                    })
                    .await,
            ),
            IA,
            "INVALID_FIELD",
        ),
        (
            "an impossible effective time",
            refused(
                alice
                    .schedule_go_live(pb::ScheduleGoLiveRequest {
                        name: feature_name(),
                        scope: Some(national()),
                        effective_time: Some(prost_types::Timestamp {
                            seconds: 0,
                            nanos: 2_000_000_000,
                        }),
                        reason: "r".into(),
                        request_id: String::new(),
                        dry_run: false,
                        ..Default::default()
                    })
                    .await,
            ),
            IA,
            "INVALID_FIELD",
        ),
        (
            "approving an unknown command",
            refused(
                bob.approve_command(pb::ApproveCommandRequest {
                    name: "commands/no-such-command".into(),
                    ..Default::default()
                })
                .await,
            ),
            NF,
            "COMMAND_NOT_FOUND",
        ),
        (
            "approving a malformed name",
            refused(
                bob.approve_command(pb::ApproveCommandRequest {
                    name: "halt-1".into(),
                    ..Default::default()
                })
                .await,
            ),
            IA,
            "INVALID_FIELD",
        ),
        (
            "approving a dispatched command",
            refused(
                bob.approve_command(pb::ApproveCommandRequest {
                    name: go_live.clone(),
                    ..Default::default()
                })
                .await,
            ),
            FP,
            "NOT_PENDING",
        ),
        (
            "cancelling without a reason",
            refused(
                alice
                    .cancel_command(pb::CancelCommandRequest {
                        name: go_live.clone(),
                        reason: String::new(),
                        request_id: String::new(),
                    })
                    .await,
            ),
            IA,
            "INVALID_FIELD",
        ),
        (
            "an unknown command",
            refused(
                viewer
                    .get_command(pb::GetCommandRequest {
                        name: "commands/nope".into(),
                    })
                    .await,
            ),
            NF,
            "COMMAND_NOT_FOUND",
        ),
        (
            "a forged page token",
            viewer
                .list_commands(pb::ListCommandsRequest {
                    page_token: "00".into(),
                    ..Default::default()
                })
                .await
                .expect_err("x"),
            IA,
            "INVALID_FIELD",
        ),
        (
            "an unknown command state",
            viewer
                .list_commands(pb::ListCommandsRequest {
                    state: 99,
                    ..Default::default()
                })
                .await
                .expect_err("x"),
            IA,
            "INVALID_FIELD",
        ),
        (
            "a halt of a supplier the estate does not know (a typo for emis)",
            refused(
                alice
                    .halt_feature(halt(|r| r.scope = Some(supplier_scope("emiss"))))
                    .await,
            ),
            IA,
            "UNKNOWN_SCOPE_TARGET",
        ),
        (
            "a halt of an ICB the estate does not know",
            refused(
                alice
                    .halt_feature(halt(|r| {
                        r.scope = Some(pb::Scope {
                            target: Some(pb::scope::Target::Icb("QZZ".into())),
                        })
                    }))
                    .await,
            ),
            IA,
            "UNKNOWN_SCOPE_TARGET",
        ),
        (
            "a halt of a sub-ICB location the estate does not know",
            refused(
                alice
                    .halt_feature(halt(|r| {
                        r.scope = Some(pb::Scope {
                            target: Some(pb::scope::Target::SubIcb("99Z".into())),
                        })
                    }))
                    .await,
            ),
            IA,
            "UNKNOWN_SCOPE_TARGET",
        ),
        (
            "a halt listing only practices the estate does not know",
            refused(
                alice
                    .halt_feature(halt(|r| {
                        r.scope = Some(pb::Scope {
                            target: Some(pb::scope::Target::Practices(pb::scope::PracticeList {
                                practices: vec!["Z12345".into()],
                            })),
                        })
                    }))
                    .await,
            ),
            IA,
            "UNKNOWN_PRACTICE",
        ),
        (
            "a go-live of a supplier the estate does not know",
            alice
                .schedule_go_live(pb::ScheduleGoLiveRequest {
                    name: feature_name(),
                    scope: Some(supplier_scope("emiss")),
                    reason: "r".into(),
                    ..Default::default()
                })
                .await
                .expect_err("x"),
            IA,
            "UNKNOWN_SCOPE_TARGET",
        ),
        (
            "a halt whose scope covers no active practice",
            alice
                .halt_feature(pb::HaltFeatureRequest {
                    name: feature_name(),
                    scope: Some(pb::Scope {
                        target: Some(pb::scope::Target::Practices(pb::scope::PracticeList {
                            practices: vec![closed.clone()],
                        })),
                    }),
                    reason: "r".into(),
                    ..Default::default()
                })
                .await
                .expect_err("x"),
            FP,
            "EMPTY_SCOPE",
        ),
        (
            "an unknown supplier",
            viewer
                .get_supplier(pb::GetSupplierRequest {
                    name: "suppliers/acme".into(),
                })
                .await
                .expect_err("x"),
            NF,
            "SUPPLIER_NOT_FOUND",
        ),
        (
            "verifying a go-live",
            viewer
                .verify_command(pb::VerifyCommandRequest {
                    name: go_live.clone(),
                    ..Default::default()
                })
                .await
                .expect_err("x"),
            FP,
            "NOT_A_HALT",
        ),
        (
            "the status of an unknown practice",
            viewer
                .get_practice_status(pb::GetPracticeStatusRequest {
                    name: practice_feature("Z99999"),
                })
                .await
                .expect_err("x"),
            NF,
            "PRACTICE_NOT_FOUND",
        ),
        (
            "audit events after a negative sequence",
            auditor
                .list_audit_events(pb::ListAuditEventsRequest {
                    after_sequence: -1,
                    ..Default::default()
                })
                .await
                .expect_err("x"),
            IA,
            "INVALID_FIELD",
        ),
    ];
    assert!(cases.len() >= 30);
    for (what, status, code, reason) in &cases {
        assert_refused(status, *code, reason, what);
        assert!(
            status.message().len() < 1_000,
            "{what}: a refusal quotes a bounded piece of the input ({} bytes)",
            status.message().len()
        );
    }
    // A message over the 4 MiB limit is refused before any handler, and the server keeps
    // serving.
    let huge = alice
        .halt_feature(pb::HaltFeatureRequest {
            reason: "x".repeat(5 << 20),
            ..halt(|_| {})
        })
        .await
        .expect_err("huge");
    assert_refused(
        &huge,
        Code::ResourceExhausted,
        "MESSAGE_TOO_LARGE",
        "a huge request",
    );

    let after = viewer
        .list_commands(pb::ListCommandsRequest::default())
        .await
        .expect("still serving")
        .into_inner();
    assert_eq!(
        after.commands.len(),
        before.commands.len(),
        "no command was created"
    );
    let features = viewer
        .list_features(pb::ListFeaturesRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(features.features.len(), 1, "no feature was created");
    stack.stop().await;
}
