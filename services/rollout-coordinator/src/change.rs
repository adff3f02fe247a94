//! A change to the coordinator's state: what a write commits to the store (with its audit
//! event and idempotency record) and then applies to the model.

use prost::Message;
use rollout_core::{FeatureDef, SupplierId, audit::AuditDraft};
use rollout_proto::v1 as pb;
use rollout_store::{
    RequestRecord,
    coordinator::{CommandRow, DeliveryRow, Record, Write, created_at},
};

use crate::model::{Cmd, SupplierStatus};

/// A change to commit then apply.
#[derive(Debug, Default)]
pub struct Change {
    pub features: Vec<(FeatureDef, pb::Feature)>,
    pub commands: Vec<Cmd>,
    pub deliveries: Vec<((u64, SupplierId), pb::Delivery)>,
    pub suppliers: Vec<(SupplierId, SupplierStatus)>,
}

impl Change {
    /// The store write of the change.
    pub fn write(&self, request: Option<RequestRecord>, audit: Option<AuditDraft>) -> Write {
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
                    body: c.pb.encode_to_vec(),
                })
                .collect(),
            deliveries: self
                .deliveries
                .iter()
                .map(|((seq, sup), d)| DeliveryRow {
                    sequence: *seq,
                    supplier: sup.to_string(),
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
            request,
            audit,
            expected_version: None,
        }
    }
}

/// An idempotency key with the request's fingerprint.
#[derive(Debug, Clone)]
pub struct Idempotency {
    /// The request id.
    pub request_id: String,
    /// The request's fingerprint.
    pub fingerprint: Vec<u8>,
}

impl Idempotency {
    /// The record that answers a retry of this request with `response`.
    pub fn record(self, response: &impl Message) -> RequestRecord {
        RequestRecord {
            request_id: self.request_id,
            fingerprint: self.fingerprint,
            response: response.encode_to_vec(),
        }
    }
}
