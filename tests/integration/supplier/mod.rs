//! The supplier service end to end: a real server on loopback, real mutual TLS, a real SQLite
//! file, the synthetic national estate. One file per behaviour; the harness (files, server,
//! clients, the named practices) is `support::supplier`, shared with the other modules.

mod access;
mod answers;
mod bad_input;
mod control;
mod grpcurl;
mod opt_outs;
mod register;
mod watch;

use rollout_proto::v1::{self as pb, practice_feature::Reason as R, practice_feature::State as S};

use crate::support::practice_feature;

/// An answer's state and reason.
fn state_of(p: &pb::PracticeFeature) -> (S, R) {
    (p.state(), p.reason())
}

/// The command of an answer's deciding rule, if any.
fn deciding(p: &pb::PracticeFeature) -> Option<&str> {
    p.rules.iter().find(|r| r.deciding).map(|r| r.command.as_str())
}

/// A request to record an opt-out for `ods`.
pub(crate) fn opt_out_request(ods: &str, request_id: &str) -> pb::SetPracticeOptOutRequest {
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
