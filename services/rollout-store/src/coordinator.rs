//! The coordinator service's store.
//!
//! Features, commands, deliveries and supplier status are stored as the service's encoded
//! records beside the columns that identify and order them; every write is one transaction
//! with its audit event and idempotency record. A command's global sequence is unique in the
//! table, so two writers can never give one sequence to two commands. The national opt-out
//! register (`register.rs`) is kept beside the rest: it is not part of the state the
//! coordinator starts from, and is read when asked.

use async_trait::async_trait;
use rollout_core::audit::{AuditDraft, AuditEvent, micros};
use sqlx::AnyPool;

use crate::{Backend, MigrationSql, RequestRecord, StoreError, common, open, signed, unsigned};

mod register;
mod sql;

pub use register::{OptOutCursor, RegisterCount, RegisterEntry, RegisterQuery};

/// Where a command stands, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandState {
    /// Waiting for approval.
    Pending,
    /// Given a sequence and being delivered.
    Dispatched,
    /// Withdrawn before approval.
    Cancelled,
}

impl CommandState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CommandState::Pending => "pending",
            CommandState::Dispatched => "dispatched",
            CommandState::Cancelled => "cancelled",
        }
    }

    pub(crate) fn parse(s: &str) -> Result<Self, StoreError> {
        Ok(match s {
            "pending" => CommandState::Pending,
            "dispatched" => CommandState::Dispatched,
            "cancelled" => CommandState::Cancelled,
            other => return Err(StoreError::Corrupt(format!("unknown command state {other:?}"))),
        })
    }
}

/// What a command does, as stored (so that the log can be searched without decoding bodies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandAction {
    /// Defines a feature.
    CreateFeature,
    /// Halts a feature in a scope.
    Halt,
    /// Turns a feature on in a scope.
    GoLive,
    /// Lifts named halts.
    Resume,
}

impl CommandAction {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CommandAction::CreateFeature => "create_feature",
            CommandAction::Halt => "halt",
            CommandAction::GoLive => "go_live",
            CommandAction::Resume => "resume",
        }
    }

    pub(crate) fn parse(s: &str) -> Result<Self, StoreError> {
        Ok(match s {
            "create_feature" => CommandAction::CreateFeature,
            "halt" => CommandAction::Halt,
            "go_live" => CommandAction::GoLive,
            "resume" => CommandAction::Resume,
            other => return Err(StoreError::Corrupt(format!("unknown command action {other:?}"))),
        })
    }
}

/// Where one delivery stands, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryState {
    /// Not yet acknowledged by the supplier.
    Pending,
    /// Applied by the supplier.
    Applied,
    /// Rejected by the supplier (its change freeze).
    Rejected,
}

impl DeliveryState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Applied => "applied",
            DeliveryState::Rejected => "rejected",
        }
    }

    pub(crate) fn parse(s: &str) -> Result<Self, StoreError> {
        Ok(match s {
            "pending" => DeliveryState::Pending,
            "applied" => DeliveryState::Applied,
            "rejected" => DeliveryState::Rejected,
            other => return Err(StoreError::Corrupt(format!("unknown delivery state {other:?}"))),
        })
    }
}

/// A stored command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRow {
    /// Command id.
    pub id: String,
    /// Its global sequence, once dispatched.
    pub sequence: Option<u64>,
    /// Where it stands.
    pub state: CommandState,
    /// When it was issued (microseconds since the epoch), for ordering.
    pub created_at: i64,
    /// The feature it acts on (the one it defines, for a definition).
    pub feature: String,
    /// What it does.
    pub action: CommandAction,
    /// Whether it is in force in the log: a dispatched definition, go-live, or halt no
    /// dispatched resume has lifted ([`Write::retired`] clears it).
    pub effective: bool,
    /// The encoded record.
    pub body: Vec<u8>,
}

/// A stored delivery of one command to one supplier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRow {
    /// The command's sequence.
    pub sequence: u64,
    /// The supplier.
    pub supplier: String,
    /// Where it stands.
    pub state: DeliveryState,
    /// The encoded record.
    pub body: Vec<u8>,
}

/// A keyed encoded record (a feature or a supplier's status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The key.
    pub key: String,
    /// The encoded record.
    pub body: Vec<u8>,
}

/// What the coordinator starts from: the state, not the history. Its size follows the
/// features, the commands pending or in force and the deliveries not yet settled; the log
/// itself contributes only its (sequence, id) pairs, for the history hashes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoordinatorState {
    /// Feature definitions, by key.
    pub features: Vec<Record>,
    /// Commands waiting for approval, in issue order.
    pub pending: Vec<CommandRow>,
    /// Commands in force (`effective`), in sequence order.
    pub effective: Vec<CommandRow>,
    /// Every dispatched sequence with its command id, in sequence order.
    pub log: Vec<(u64, String)>,
    /// Deliveries not yet settled: every delivery of every sequence from the lowest that still
    /// has a pending delivery (none if nothing is pending), by sequence then supplier.
    pub deliveries: Vec<DeliveryRow>,
    /// Every rejected delivery, as (sequence, supplier), by sequence.
    pub rejected: Vec<(u64, String)>,
    /// Supplier status.
    pub suppliers: Vec<Record>,
    /// The stored version (see [`Write::expected_version`]).
    pub version: u64,
    /// How many writes of any kind the store has taken.
    pub changes: u64,
}

/// Which commands [`CoordinatorStore::list_commands`] reads, newest first (issue order:
/// creation time, then id, both descending).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandQuery {
    /// Only commands of this feature.
    pub feature: Option<String>,
    /// Only commands in this state.
    pub state: Option<CommandState>,
    /// Only commands issued before this one: its (created_at, id).
    pub before: Option<(i64, String)>,
    /// At most this many rows.
    pub limit: u32,
}

/// Rows written before migration 3 (their feature, action, effective mark or delivery state
/// unknown), for the coordinator to fill once at its first start after the upgrade.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LegacyRows {
    /// Every command (not only the unmarked ones: whether a halt is in force depends on the
    /// whole log), in sequence order with the undispatched last. Their feature, action and
    /// effective fields are placeholders until filled.
    pub commands: Vec<CommandRow>,
    /// The deliveries without a state (their state field is a placeholder), with bodies.
    pub deliveries: Vec<DeliveryRow>,
}

/// What [`CoordinatorStore::upgrade`] fills in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Upgrade {
    /// Per command id: feature, action, effective.
    pub commands: Vec<(String, String, CommandAction, bool)>,
    /// Per delivery (sequence, supplier): state.
    pub deliveries: Vec<(u64, String, DeliveryState)>,
}

/// One atomic write: upserts of each kind, an idempotency record, the audit event.
#[derive(Debug, Clone, Default)]
pub struct Write {
    /// Features to insert or replace.
    pub features: Vec<Record>,
    /// Commands to insert or replace.
    pub commands: Vec<CommandRow>,
    /// Deliveries to insert or replace.
    pub deliveries: Vec<DeliveryRow>,
    /// Supplier status to insert or replace.
    pub suppliers: Vec<Record>,
    /// The request's idempotency record.
    pub request: Option<RequestRecord>,
    /// Command ids whose rules a resume in this write lifts: no longer effective.
    pub retired: Vec<String>,
    /// The audit event of the call, if it is an audited call.
    pub audit: Option<AuditDraft>,
    /// For a write that must not race another replica's (features, commands): the stored
    /// version it was computed from. The write moves it on by one, or fails with
    /// [`StoreError::Conflict`] if another replica moved it first.
    pub expected_version: Option<u64>,
}

/// The coordinator's store.
#[async_trait]
pub trait CoordinatorStore: Send + Sync + 'static {
    /// Reads what the coordinator starts from (one consistent snapshot): the state, never
    /// every command body.
    async fn load(&self) -> Result<CoordinatorState, StoreError>;
    /// Applies a write atomically. A sequence given to two commands is a
    /// [`StoreError::Conflict`] and nothing is written.
    async fn write(&self, write: Write) -> Result<(), StoreError>;
    /// The command with this id.
    async fn command(&self, id: &str) -> Result<Option<CommandRow>, StoreError>;
    /// The dispatched command at `sequence`.
    async fn command_at(&self, sequence: u64) -> Result<Option<CommandRow>, StoreError>;
    /// Commands newest first (issue order), filtered and bounded by `query`.
    async fn list_commands(&self, query: &CommandQuery) -> Result<Vec<CommandRow>, StoreError>;
    /// Dispatched commands with sequences in `from..=to`, of `action` and `feature` when given,
    /// in sequence order.
    async fn commands_between(
        &self,
        from: u64,
        to: u64,
        action: Option<CommandAction>,
        feature: Option<&str>,
    ) -> Result<Vec<CommandRow>, StoreError>;
    /// The lowest sequence after `after` whose command is a go-live or a resume.
    async fn first_turning_on(&self, after: u64) -> Result<Option<u64>, StoreError>;
    /// Deliveries of sequences in `from..=to` (to one supplier, when given), by sequence then
    /// supplier.
    async fn deliveries(
        &self,
        from: u64,
        to: u64,
        supplier: Option<&str>,
    ) -> Result<Vec<DeliveryRow>, StoreError>;
    /// The rows written before migration 3, if there are any (empty otherwise): read once.
    async fn legacy_rows(&self) -> Result<LegacyRows, StoreError>;
    /// Fills in what [`CoordinatorStore::legacy_rows`] lacked, in one transaction.
    async fn upgrade(&self, upgrade: Upgrade) -> Result<(), StoreError>;
    /// The idempotency record of a request id sent by `identity` (a request id is its
    /// caller's own).
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
    /// The stored version and change count, cheaply (replicas poll it).
    async fn head(&self) -> Result<(u64, u64), StoreError>;
    /// Whether other processes may write to the same store (PostgreSQL).
    fn shared(&self) -> bool;

    /// How far the opt-out register has read each supplier, by supplier.
    async fn opt_out_cursors(&self) -> Result<Vec<(String, OptOutCursor)>, StoreError>;
    /// Merges a page of a supplier's opt-out changes into the register and moves its cursor to
    /// `cursor`, in one transaction: each entry replaces the row of its practice and feature
    /// only if there is none or an older one (by update time), and its audit event is appended
    /// only if it did. Returns how many entries changed the register.
    async fn merge_opt_outs(
        &self,
        supplier: &str,
        cursor: &OptOutCursor,
        entries: Vec<(RegisterEntry, AuditDraft)>,
    ) -> Result<usize, StoreError>;
    /// Sets a supplier's cursor (after its records were sent back to a new store), with the
    /// audit event of the restore.
    async fn reset_opt_out_cursor(
        &self,
        supplier: &str,
        cursor: &OptOutCursor,
        audit: AuditDraft,
    ) -> Result<(), StoreError>;
    /// The opt-outs in force (not withdrawn) of `practices` held by any supplier but `except`,
    /// by practice then feature: what follows a practice that joined `except`.
    async fn opt_outs_of_practices(
        &self,
        practices: &[String],
        except: &str,
    ) -> Result<Vec<RegisterEntry>, StoreError>;
    /// Records opt-outs transferred with their practices: each row still at the entry's update
    /// time takes the entry's supplier and body (a row replaced since by a later copy is left),
    /// with `audit`, in one transaction.
    async fn transfer_opt_outs(
        &self,
        entries: Vec<RegisterEntry>,
        audit: Vec<AuditDraft>,
    ) -> Result<(), StoreError>;
    /// Register rows matching `query`, in (practice, feature) order.
    async fn list_register(&self, query: &RegisterQuery) -> Result<Vec<RegisterEntry>, StoreError>;
    /// Opt-outs in force and withdrawn per supplier and feature over every row matching the
    /// query's feature, supplier and practice, by supplier then feature.
    async fn count_register(&self, query: &RegisterQuery) -> Result<Vec<RegisterCount>, StoreError>;
}

const MIGRATIONS: &[MigrationSql] = &[
    (
        1,
        "coordinator initial schema",
        include_str!("../migrations/sqlite/coordinator_0001_init.sql"),
        include_str!("../migrations/postgres/coordinator_0001_init.sql"),
    ),
    (
        2,
        "coordinator replica versions",
        include_str!("../migrations/sqlite/coordinator_0002_meta.sql"),
        include_str!("../migrations/postgres/coordinator_0002_meta.sql"),
    ),
    (
        3,
        "coordinator state that does not grow with history",
        include_str!("../migrations/sqlite/coordinator_0003_effective.sql"),
        include_str!("../migrations/postgres/coordinator_0003_effective.sql"),
    ),
    (
        4,
        "coordinator national opt-out register",
        include_str!("../migrations/sqlite/coordinator_0004_opt_out_register.sql"),
        include_str!("../migrations/postgres/coordinator_0004_opt_out_register.sql"),
    ),
    (
        5,
        "coordinator audit detail",
        include_str!("../migrations/sqlite/coordinator_0005_audit_detail.sql"),
        include_str!("../migrations/postgres/coordinator_0005_audit_detail.sql"),
    ),
    (
        6,
        "coordinator request ids per caller",
        include_str!("../migrations/sqlite/coordinator_0006_request_caller.sql"),
        include_str!("../migrations/postgres/coordinator_0006_request_caller.sql"),
    ),
];

/// The PostgreSQL channel on which a coordinator store announces each write.
pub const CHANGE_CHANNEL: &str = "gprollout_coordinator";

/// The coordinator store on SQLite or PostgreSQL.
#[derive(Debug, Clone)]
pub struct SqlCoordinatorStore {
    pool: AnyPool,
    backend: Backend,
    url: String,
}

impl SqlCoordinatorStore {
    /// Opens the database at `url` (`sqlite://PATH`, created if missing, or `postgres://...`)
    /// and brings its schema up to date.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let (pool, backend) = open(url, MIGRATIONS).await?;
        Ok(SqlCoordinatorStore {
            pool,
            backend,
            url: url.to_owned(),
        })
    }

    /// Closes the database, releasing its lock.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// A feed of writes made through any replica, on PostgreSQL; `None` on SQLite.
    pub async fn changes(&self) -> Result<Option<crate::supplier::ChangeFeed>, StoreError> {
        crate::supplier::ChangeFeed::listen(self.backend, &self.url, CHANGE_CHANNEL).await
    }

    /// Tries to become the one replica that delivers commands: takes a PostgreSQL session
    /// advisory lock on a connection of its own. `Ok(None)` if another replica holds it. On
    /// SQLite this process is the only one, and always leads.
    pub async fn try_lead(&self) -> Result<Option<Leadership>, StoreError> {
        use sqlx::Connection;
        if self.backend != Backend::Postgres {
            return Ok(Some(Leadership(None)));
        }
        let mut conn = sqlx::PgConnection::connect(&self.url).await?;
        let held: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(LEADER_LOCK)
            .fetch_one(&mut conn)
            .await?;
        if held {
            Ok(Some(Leadership(Some(conn))))
        } else {
            conn.close().await.ok();
            Ok(None)
        }
    }
}

/// The key of the advisory lock the delivery leader holds.
const LEADER_LOCK: i64 = 0x6770_726f_6c6c; // "gproll"

/// Delivery leadership: held while this value lives (the lock goes with its connection, so a
/// leader that dies releases it).
#[derive(Debug)]
pub struct Leadership(Option<sqlx::PgConnection>);

impl Leadership {
    /// Checks that the lock is still held (its connection still alive).
    pub async fn check(&mut self) -> Result<(), StoreError> {
        if let Some(conn) = &mut self.0 {
            sqlx::query("SELECT 1").execute(conn).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl CoordinatorStore for SqlCoordinatorStore {
    async fn load(&self) -> Result<CoordinatorState, StoreError> {
        sql::load(&self.pool, self.backend).await
    }

    async fn write(&self, w: Write) -> Result<(), StoreError> {
        common::retrying("writing a change", || {
            sql::write(&self.pool, self.backend, w.clone())
        })
        .await
    }

    async fn command(&self, id: &str) -> Result<Option<CommandRow>, StoreError> {
        sql::command(&self.pool, "id = $1", id.to_owned()).await
    }

    async fn command_at(&self, sequence: u64) -> Result<Option<CommandRow>, StoreError> {
        sql::command(&self.pool, "sequence = $1", signed(sequence, "sequence")?).await
    }

    async fn list_commands(&self, query: &CommandQuery) -> Result<Vec<CommandRow>, StoreError> {
        sql::list_commands(&self.pool, query).await
    }

    async fn commands_between(
        &self,
        from: u64,
        to: u64,
        action: Option<CommandAction>,
        feature: Option<&str>,
    ) -> Result<Vec<CommandRow>, StoreError> {
        sql::commands_between(&self.pool, from, to, action, feature).await
    }

    async fn first_turning_on(&self, after: u64) -> Result<Option<u64>, StoreError> {
        let first: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(sequence) FROM commands WHERE sequence > $1 AND action IN ('go_live', 'resume')",
        )
        .bind(signed(after, "sequence")?)
        .fetch_one(&self.pool)
        .await?;
        first.map(|s| unsigned(s, "sequence")).transpose()
    }

    async fn deliveries(
        &self,
        from: u64,
        to: u64,
        supplier: Option<&str>,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        sql::deliveries(&self.pool, from, to, supplier).await
    }

    async fn legacy_rows(&self) -> Result<LegacyRows, StoreError> {
        sql::legacy_rows(&self.pool).await
    }

    async fn upgrade(&self, upgrade: Upgrade) -> Result<(), StoreError> {
        sql::upgrade(&self.pool, upgrade).await
    }

    async fn head(&self) -> Result<(u64, u64), StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT key, value FROM meta WHERE key IN ('version', 'changes')")
                .fetch_all(&self.pool)
                .await?;
        let get = |k: &str| rows.iter().find(|(key, _)| key == k).map_or(0, |(_, v)| *v);
        Ok((
            unsigned(get("version"), "version")?,
            unsigned(get("changes"), "changes")?,
        ))
    }

    fn shared(&self) -> bool {
        self.backend == Backend::Postgres
    }

    async fn recall_request(
        &self,
        identity: &str,
        request_id: &str,
    ) -> Result<Option<RequestRecord>, StoreError> {
        common::recall_request(&self.pool, identity, request_id).await
    }

    async fn append_audit(&self, audit: AuditDraft) -> Result<AuditEvent, StoreError> {
        common::append_audit(&self.pool, audit).await
    }

    async fn list_audit(&self, after: u64, limit: u32) -> Result<Vec<AuditEvent>, StoreError> {
        common::list_audit(&self.pool, after, limit).await
    }

    async fn audit_head(&self) -> Result<u64, StoreError> {
        common::audit_head(&self.pool).await
    }

    async fn opt_out_cursors(&self) -> Result<Vec<(String, OptOutCursor)>, StoreError> {
        register::cursors(&self.pool).await
    }

    async fn merge_opt_outs(
        &self,
        supplier: &str,
        cursor: &OptOutCursor,
        entries: Vec<(RegisterEntry, AuditDraft)>,
    ) -> Result<usize, StoreError> {
        common::retrying("merging opt-outs into the register", || {
            register::merge(&self.pool, supplier, cursor, entries.clone())
        })
        .await
    }

    async fn reset_opt_out_cursor(
        &self,
        supplier: &str,
        cursor: &OptOutCursor,
        audit: AuditDraft,
    ) -> Result<(), StoreError> {
        common::retrying("resetting an opt-out cursor", || {
            register::reset_cursor(&self.pool, supplier, cursor, audit.clone())
        })
        .await
    }

    async fn opt_outs_of_practices(
        &self,
        practices: &[String],
        except: &str,
    ) -> Result<Vec<RegisterEntry>, StoreError> {
        register::of_practices(&self.pool, practices, except).await
    }

    async fn transfer_opt_outs(
        &self,
        entries: Vec<RegisterEntry>,
        audit: Vec<AuditDraft>,
    ) -> Result<(), StoreError> {
        common::retrying("transferring opt-outs", || {
            register::transfer(&self.pool, entries.clone(), audit.clone())
        })
        .await
    }

    async fn list_register(&self, query: &RegisterQuery) -> Result<Vec<RegisterEntry>, StoreError> {
        register::list(&self.pool, query).await
    }

    async fn count_register(&self, query: &RegisterQuery) -> Result<Vec<RegisterCount>, StoreError> {
        register::count(&self.pool, query).await
    }
}

/// Microseconds since the epoch of a time, for `CommandRow::created_at`.
pub fn created_at(t: std::time::SystemTime) -> i64 {
    micros(t)
}
