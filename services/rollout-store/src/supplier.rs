//! The supplier service's store.
//!
//! Every mutating method takes the audit event of the call and writes it in the same
//! transaction as the change, so a change is never recorded without its audit entry, nor the
//! other way round. Every change also stores the new state version, which watch streams resume
//! from. Opt-out rows carry the change number of their last write, for the coordinator's
//! national register (`opt_outs.rs`).

mod estate;
mod feed;
mod opt_outs;
mod sql;
mod writes;

use std::time::SystemTime;

use async_trait::async_trait;
pub use feed::{CHANGE_CHANNEL, ChangeFeed};
use rollout_core::{
    OdsCode, Practice, SupplierId,
    audit::{AuditDraft, AuditEvent},
};
pub use sql::SqlSupplierStore;

pub use crate::common::RequestRecord;
use crate::{MigrationSql, StoreError};

/// A command as stored: its sequence, id, feature, the bytes of its body, and its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCommand {
    /// Global sequence.
    pub sequence: u64,
    /// Command id.
    pub id: String,
    /// Feature key.
    pub feature: String,
    /// The command as received (protobuf).
    pub body: Vec<u8>,
    /// `Some(reason)` if the supplier rejected it.
    pub rejection: Option<String>,
    /// When it was applied or rejected.
    pub applied_at: SystemTime,
    /// Whether it is one of the rules in force (a feature definition, a go-live, a halt not
    /// lifted). Resumes, rejected commands and lifted halts are history only.
    pub effective: bool,
}

/// Where a supplier stands in the global command sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncPoint {
    /// The last sequence applied (or rejected, or installed by a snapshot).
    pub applied_sequence: u64,
    /// The history hash at that sequence, hex.
    pub history_hash: String,
    /// When it was applied (supplier clock).
    pub applied_at: SystemTime,
}

/// A practice opt-out as stored, current or withdrawn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptOutRecord {
    /// The opt-out (practice, feature, reason, source, who recorded it and when).
    pub opt_out: rollout_core::OptOut,
    /// When it was last changed.
    pub updated_at: SystemTime,
    /// Its withdrawal, if withdrawn.
    pub withdrawal: Option<Withdrawal>,
    /// The change number of the row's last write (1, 2, ... per store; the writer gives the
    /// store's latest plus one).
    pub change: u64,
    /// How the record came to be at this supplier.
    pub origin: Origin,
}

/// How an opt-out record came to be at a supplier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Set or withdrawn here, on the practice's instruction.
    Recorded,
    /// Put back from the national register after this supplier lost its store; the supplier
    /// the register had it from.
    Restored(SupplierId),
    /// Came from the national register with a practice that joined from this supplier.
    Transferred(SupplierId),
}

/// The withdrawal of an opt-out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Withdrawal {
    /// Who withdrew it.
    pub by: String,
    /// When.
    pub at: SystemTime,
    /// Why.
    pub reason: String,
}

/// Everything the supplier serves from, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SupplierState {
    /// The effective commands (the rules in force), in sequence order; or, for a store written
    /// before compaction (`sync` is `None`), every command, to be replayed once and marked.
    pub commands: Vec<StoredCommand>,
    /// Where the supplier stands; `None` if it has never synchronised, or if the store predates
    /// compaction and holds commands not yet marked.
    pub sync: Option<SyncPoint>,
    /// The estate.
    pub practices: Vec<Practice>,
    /// Opt-outs, current and withdrawn.
    pub opt_outs: Vec<OptOutRecord>,
    /// The state version.
    pub version: u64,
    /// When the coordinator was last heard from.
    pub last_contact: Option<SystemTime>,
    /// The store's random identity (made once, when it was first opened).
    pub store_id: String,
    /// The latest opt-out change number (0 before the first).
    pub opt_out_change: u64,
    /// The practices held until the national register has answered for them.
    pub held: Vec<OdsCode>,
}

/// How an estate import changed the stored practices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EstateChange {
    /// Practices new to the store.
    pub added: usize,
    /// Practices whose attributes changed.
    pub updated: usize,
    /// Practices no longer in the estate (their opt-outs are kept).
    pub removed: usize,
}

/// The supplier's store. See the module docs for the transaction rules.
#[async_trait]
pub trait SupplierStore: Send + Sync + 'static {
    /// Reads everything needed to rebuild the serving state.
    async fn load(&self) -> Result<SupplierState, StoreError>;

    /// Stores the next command, marks the rows at `retire` (the halts it lifts) no longer
    /// effective, and moves the sync point to the command's sequence and `history_hash`.
    /// Fails with [`StoreError::Conflict`] unless its sequence follows the stored sync point.
    async fn append_command(
        &self,
        command: &StoredCommand,
        retire: &[u64],
        history_hash: &str,
        version: u64,
        audit: AuditDraft,
    ) -> Result<(), StoreError>;

    /// Installs a snapshot: exactly `commands` are effective afterwards (rows already held
    /// are kept and marked, new ones inserted; the log is never shortened), and the sync point
    /// becomes `sync`. All or nothing. Opt-outs and the estate stay. Fails with
    /// [`StoreError::Conflict`] if the stored sync point is past `sync`.
    async fn install_snapshot(
        &self,
        commands: &[StoredCommand],
        sync: &SyncPoint,
        version: u64,
        audit: AuditDraft,
    ) -> Result<(), StoreError>;

    /// Marks a store written before compaction: exactly the rows at `effective` stay
    /// effective, and the sync point is set. Run once, at the first start after the upgrade.
    async fn mark_compacted(&self, effective: &[u64], sync: &SyncPoint) -> Result<(), StoreError>;

    /// The stored command at `sequence`, if the log holds it.
    async fn command_at(&self, sequence: u64) -> Result<Option<StoredCommand>, StoreError>;

    /// Stored commands with a sequence above `after`, in order, at most `limit`.
    async fn list_commands(&self, after: u64, limit: u32) -> Result<Vec<StoredCommand>, StoreError>;

    /// Stores an opt-out (new, updated or withdrawn) at its change number (which becomes the
    /// store's latest), with the call's idempotency record.
    async fn put_opt_out(
        &self,
        record: &OptOutRecord,
        version: u64,
        request: Option<RequestRecord>,
        audit: AuditDraft,
    ) -> Result<(), StoreError>;

    /// Installs records from the national register, each at its change number (the last
    /// becomes the store's latest), with `audit` (one event per record installed, and any for
    /// the releases), and lets go of the held practices `released`. All or nothing.
    async fn import_opt_outs(
        &self,
        records: &[OptOutRecord],
        released: &[OdsCode],
        version: u64,
        audit: Vec<AuditDraft>,
    ) -> Result<(), StoreError>;

    /// Opt-out rows (withdrawn ones too) whose change number is above `after`, in change
    /// order, at most `limit`.
    async fn opt_out_changes(&self, after: u64, limit: u32) -> Result<Vec<OptOutRecord>, StoreError>;

    /// Makes the stored estate exactly `practices` (adds, updates, removes), holds the
    /// practices in `hold` (new to the supplier), and lets go of held practices no longer in
    /// the estate.
    async fn import_estate(
        &self,
        practices: &[Practice],
        hold: &[OdsCode],
        version: u64,
        audit: AuditDraft,
    ) -> Result<EstateChange, StoreError>;

    /// Records when the coordinator was last heard from: kept if later than the stored time
    /// (replicas write in any order), or if the stored time is more than
    /// [`rollout_core::rules::MAX_CONTACT_SKEW`] later than `at` (written before this clock was
    /// stepped back: not to be believed).
    async fn record_contact(&self, at: SystemTime) -> Result<(), StoreError>;

    /// The stored version and last contact, cheaply (replicas poll it).
    async fn head(&self) -> Result<(u64, Option<SystemTime>), StoreError>;

    /// Whether other processes may write to the same store (PostgreSQL), so a replica must
    /// follow their changes.
    fn shared(&self) -> bool;

    /// The idempotency record of a request id sent by `identity`, if one is stored (a request
    /// id is its caller's own).
    async fn recall_request(
        &self,
        identity: &str,
        request_id: &str,
    ) -> Result<Option<RequestRecord>, StoreError>;

    /// Appends an audit event on its own (refused calls).
    async fn append_audit(&self, audit: AuditDraft) -> Result<AuditEvent, StoreError>;

    /// Audit events after `after`, at most `limit`, in order.
    async fn list_audit(&self, after: u64, limit: u32) -> Result<Vec<AuditEvent>, StoreError>;
    /// The sequence of the last audit event (0 for none): how many events the chain holds.
    async fn audit_head(&self) -> Result<u64, StoreError>;
}

const MIGRATIONS: &[MigrationSql] = &[
    (
        1,
        "supplier initial schema",
        include_str!("../migrations/sqlite/supplier_0001_init.sql"),
        include_str!("../migrations/postgres/supplier_0001_init.sql"),
    ),
    (
        2,
        "supplier compaction",
        include_str!("../migrations/sqlite/supplier_0002_compaction.sql"),
        include_str!("../migrations/postgres/supplier_0002_compaction.sql"),
    ),
    (
        3,
        "supplier opt-out register",
        include_str!("../migrations/sqlite/supplier_0003_opt_out_register.sql"),
        include_str!("../migrations/postgres/supplier_0003_opt_out_register.sql"),
    ),
    (
        4,
        "supplier audit detail",
        include_str!("../migrations/sqlite/supplier_0004_audit_detail.sql"),
        include_str!("../migrations/postgres/supplier_0004_audit_detail.sql"),
    ),
    (
        5,
        "supplier request ids per caller",
        include_str!("../migrations/sqlite/supplier_0005_request_caller.sql"),
        include_str!("../migrations/postgres/supplier_0005_request_caller.sql"),
    ),
];
