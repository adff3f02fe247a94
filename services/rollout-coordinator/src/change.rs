//! A change to the coordinator's state: what a write commits to the store (with its audit
//! event and idempotency record) and then applies to the model.

use prost::Message;
use rollout_core::{Action, CommandId, FeatureDef, SupplierId, audit::AuditDraft};
use rollout_proto::v1 as pb;
use rollout_store::{
    RequestRecord,
    coordinator::{
        CommandAction, CommandRow, CommandState, DeliveryRow, DeliveryState, Record, Write, created_at,
    },
};

use crate::{
    model::{Cmd, SupplierStatus},
    rejections::Filed,
};

/// A change to commit then apply.
#[derive(Debug, Default)]
pub struct Change {
    pub features: Vec<(FeatureDef, pb::Feature)>,
    pub commands: Vec<Cmd>,
    pub deliveries: Vec<((u64, SupplierId), pb::Delivery)>,
    pub suppliers: Vec<(SupplierId, SupplierStatus)>,
    /// Rejections to file in the model (not stored: the REJECTED deliveries are, and the
    /// model files them again from those at start).
    pub rejections: Vec<Filed>,
}

impl Change {
    /// The store write of the change; `retired` are the halts its resumes lift
    /// ([`crate::model::Model::retirements`]).
    pub fn write(
        &self,
        retired: &[CommandId],
        request: Option<RequestRecord>,
        audit: Option<AuditDraft>,
    ) -> Write {
        Write {
            features: self
                .features
                .iter()
                .map(|(d, f)| Record {
                    key: d.key.to_string(),
                    body: f.encode_to_vec(),
                })
                .collect(),
            commands: self
                .commands
                .iter()
                .map(|c| CommandRow {
                    id: c.domain.id.to_string(),
                    sequence: (c.domain.sequence > 0).then_some(c.domain.sequence),
                    state: c.state,
                    created_at: created_at(c.domain.issued_at),
                    feature: c.domain.feature.to_string(),
                    action: action_of(&c.domain.action),
                    effective: c.state == CommandState::Dispatched
                        && c.domain.sequence > 0
                        && !matches!(c.domain.action, Action::Resume { .. }),
                    body: c.pb.encode_to_vec(),
                })
                .collect(),
            deliveries: self
                .deliveries
                .iter()
                .map(|((seq, sup), d)| DeliveryRow {
                    sequence: *seq,
                    supplier: sup.to_string(),
                    state: delivery_state(d),
                    body: d.encode_to_vec(),
                })
                .collect(),
            suppliers: self
                .suppliers
                .iter()
                .map(|(id, s)| Record {
                    key: id.to_string(),
                    body: s.pb.encode_to_vec(),
                })
                .collect(),
            retired: retired.iter().map(ToString::to_string).collect(),
            request,
            audit,
            expected_version: None,
        }
    }
}

/// What a command does, as the store files it.
pub fn action_of(action: &Action) -> CommandAction {
    match action {
        Action::CreateFeature(_) => CommandAction::CreateFeature,
        Action::Halt { .. } => CommandAction::Halt,
        Action::GoLive { .. } => CommandAction::GoLive,
        Action::Resume { .. } => CommandAction::Resume,
    }
}

/// Where a delivery stands, as the store files it (an unspecified state is pending).
pub fn delivery_state(d: &pb::Delivery) -> DeliveryState {
    match d.state() {
        pb::delivery::State::Applied => DeliveryState::Applied,
        pb::delivery::State::Rejected => DeliveryState::Rejected,
        pb::delivery::State::Pending | pb::delivery::State::Unspecified => DeliveryState::Pending,
    }
}

/// An idempotency key with the request's fingerprint. A request id is its caller's own: the
/// key is the identity that sent the request and its request id.
#[derive(Debug, Clone)]
pub struct Idempotency {
    /// The identity that sent the request.
    pub identity: String,
    /// The request id.
    pub request_id: String,
    /// The request's fingerprint.
    pub fingerprint: Vec<u8>,
}

impl Idempotency {
    /// The record that answers a retry of this request with `response`.
    pub fn record(self, response: &impl Message) -> RequestRecord {
        RequestRecord {
            identity: self.identity,
            request_id: self.request_id,
            fingerprint: self.fingerprint,
            response: response.encode_to_vec(),
        }
    }
}
