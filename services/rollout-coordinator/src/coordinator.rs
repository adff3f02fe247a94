//! The coordinator's write path and its delivery-side records, over the private [`Model`]:
//! every change is computed first, committed to the store (with its audit event and
//! idempotency record) and only then applied to the model, so a failed commit changes nothing
//! (`commit.rs`: the commit and the application run to their end whatever the caller does).
//! A command's sequence is committed before the operator's call returns. Readers borrow the
//! model in a closure ([`Core::read`]) and never hold its lock across anything else.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use rollout_core::{
    Action, Command, CommandId, Estate, FeatureDef, FeatureKey, SupplierId,
    audit::{AuditDraft, now},
};
use rollout_net::{ApiError, wire};
use rollout_proto::v1 as pb;
use rollout_store::coordinator::{CommandState, CoordinatorStore};
use tokio::sync::{Mutex, OwnedMutexGuard, watch};
use tracing::{Span, info};

use crate::traces::DispatchTraces;
pub use crate::{
    change::{Change, Idempotency},
    model::{Cmd, LoadError, Model, SupplierStatus},
};

/// A configured supplier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupplierEndpoint {
    /// Its id.
    pub id: SupplierId,
    /// `host:port` of its gRPC port.
    pub endpoint: String,
    /// The identity its server certificate must carry.
    pub identity: String,
}

/// Who makes a request: the identity of its client certificate, and the person the role policy
/// names behind it (if it names one). Four eyes are two people: approval is refused to every
/// identity of the requester's person.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Who {
    /// The certificate's identity.
    pub identity: String,
    /// The person behind it, if the policy names one.
    pub person: Option<String>,
}

impl From<&str> for Who {
    /// An identity the policy names no person behind.
    fn from(identity: &str) -> Who {
        Who {
            identity: identity.to_owned(),
            person: None,
        }
    }
}

impl Who {
    /// As the command views show it: `identity (person P)`, or the identity alone.
    pub(crate) fn shown(&self) -> String {
        match &self.person {
            Some(p) => format!("{} (person {p})", self.identity),
            None => self.identity.clone(),
        }
    }
}

/// The person behind an identity in the current role policy, if it names one.
pub type PersonOf<'a> = &'a (dyn Fn(&str) -> Option<String> + Sync);

/// The coordinator core.
pub struct Core {
    store: Arc<dyn CoordinatorStore>,
    /// The model; a write owns its lock from computing a change to applying it
    /// ([`Core::commit`]).
    model: Arc<Mutex<Model>>,
    /// The last dispatched sequence, watched by the delivery tasks.
    pub target: watch::Sender<u64>,
    /// Bumped on every change, watched by WatchCommand streams.
    pub changes: watch::Sender<u64>,
    /// The national estate (for impact, routing and verification).
    pub estate: Arc<Estate>,
    /// The configured suppliers.
    pub suppliers: Vec<SupplierEndpoint>,
    /// No contact for this long makes a supplier STALE.
    pub stale_after: Duration,
    /// This replica holds the delivery leadership now (for the metrics).
    pub leading: std::sync::atomic::AtomicBool,
    /// Metrics recorded as delivery and verification happen.
    pub(crate) recorded: crate::metrics::Recorded,
    /// The trace each recently dispatched command was dispatched in, for its delivery.
    pub(crate) traces: DispatchTraces,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("suppliers", &self.suppliers)
            .finish_non_exhaustive()
    }
}

/// An internal error for a failed store call, saying what was being done.
pub(crate) fn store_error(context: &'static str) -> impl FnOnce(rollout_store::StoreError) -> ApiError {
    move |e| ApiError::internal(context, e)
}

impl Core {
    /// Rebuilds the model from the store.
    pub async fn load(
        store: Arc<dyn CoordinatorStore>,
        estate: Arc<Estate>,
        suppliers: Vec<SupplierEndpoint>,
        stale_after: Duration,
    ) -> Result<Arc<Core>, LoadError> {
        crate::upgrade::fill_legacy_rows(store.as_ref()).await?;
        let stored = store.load().await?;
        let mut m = Model::from_store(stored)?;
        crate::rejections::file_all(store.as_ref(), &mut m).await?;
        let last = m.last_sequence();
        info!(
            in_force = m.in_force().len(),
            pending = m.pending_count(),
            unsettled_sequences = m.unsettled_count(),
            last_sequence = last,
            "coordinator state rebuilt from the store"
        );
        Ok(Arc::new(Core {
            store,
            model: Arc::new(Mutex::new(m)),
            target: watch::channel(last).0,
            changes: watch::channel(0).0,
            estate,
            suppliers,
            stale_after,
            leading: std::sync::atomic::AtomicBool::new(false),
            recorded: crate::metrics::Recorded::default(),
            traces: DispatchTraces::default(),
        }))
    }

    /// Lends the model to `read` under its lock. The closure cannot await, so no reader holds
    /// the lock across a call to anything else.
    pub async fn read<T>(&self, read: impl FnOnce(&Model) -> T) -> T {
        read(&*self.model.lock().await)
    }

    /// The model, locked, for a write: the caller computes a change, then [`Core::commit`]s it,
    /// handing the lock over to the commit.
    pub(crate) async fn lock(&self) -> OwnedMutexGuard<Model> {
        Arc::clone(&self.model).lock_owned().await
    }

    /// The ids of the configured suppliers, in the order configured.
    pub fn supplier_ids(&self) -> Vec<SupplierId> {
        self.suppliers.iter().map(|s| s.id.clone()).collect()
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn CoordinatorStore> {
        &self.store
    }

    /// Replaces the model with what the store holds (see [`crate::commit::Writer::reload`]).
    async fn reload(&self, m: &mut Model) -> Result<(), ApiError> {
        self.writer().reload(m).await
    }

    /// Before an API write on a shared store: catch up if another replica wrote.
    pub(crate) async fn catch_up(&self, m: &mut Model) -> Result<(), ApiError> {
        if !self.store.shared() {
            return Ok(());
        }
        let (version, _) = self
            .store
            .head()
            .await
            .map_err(store_error("reading the store version"))?;
        if version != m.store_version() {
            self.reload(m).await?;
        }
        Ok(())
    }

    /// Follows writes made through other replicas (and by this one's delivery leader): reloads
    /// when the store's change count moved.
    pub async fn follow_store(&self) {
        match self.store.head().await {
            Ok((_, changes)) => {
                let mut m = self.lock().await;
                if changes != m.store_changes()
                    && let Err(e) = self.reload(&mut m).await
                {
                    tracing::warn!(error = %e, "could not reload the state");
                }
            }
            Err(error) => tracing::warn!(%error, "cannot read the store version"),
        }
    }

    /// Returns the stored response of a retried request, or refuses an id its caller reused for
    /// another request. Another identity's request with the same id is a request of its own.
    /// Waits for the write in progress, if any: it may be this request's first try, whose caller
    /// went away while it committed.
    pub async fn recall(&self, idem: Option<&Idempotency>) -> Result<Option<Vec<u8>>, ApiError> {
        let Some(idem) = idem else { return Ok(None) };
        let _after_writes = self.model.lock().await;
        let stored = self.store.recall_request(&idem.identity, &idem.request_id);
        match stored.await.map_err(store_error("reading a request id"))? {
            Some(r) if r.fingerprint == idem.fingerprint => Ok(Some(r.response)),
            Some(_) => Err(ApiError::new(
                tonic::Code::InvalidArgument,
                "REQUEST_ID_REUSED",
                format!(
                    "request_id {} was already used for a different request; use a new UUID for a new request",
                    idem.request_id
                ),
            )
            .with_violation("request_id", "already used for a different request")
            .with_metadata("request_id", idem.request_id.clone())),
            None => Ok(None),
        }
    }

    /// Gives `cmd` the next sequence and pending deliveries to every configured supplier, and
    /// notes the trace of the call dispatching it (if it is traced) for its delivery.
    /// Refused while a supplier holds commands the log does not (the sequence would clash).
    fn dispatch(
        &self,
        m: &Model,
        cmd: &mut Cmd,
        change: &mut Change,
        at: SystemTime,
    ) -> Result<(), ApiError> {
        m.refuse_if_diverged()?;
        let sequence = m.last_sequence() + 1;
        cmd.domain.sequence = sequence;
        cmd.state = CommandState::Dispatched;
        cmd.pb.sequence = i64::try_from(sequence).unwrap_or(i64::MAX);
        cmd.pb.state = pb::command::State::Dispatched.into();
        cmd.pb.sequence_time = Some(wire::timestamp(at));
        for s in &self.suppliers {
            change.deliveries.push((
                (sequence, s.id.clone()),
                pb::Delivery {
                    supplier: format!("suppliers/{}", s.id),
                    state: pb::delivery::State::Pending.into(),
                    ..Default::default()
                },
            ));
        }
        let parent = rollout_net::trace::Parent::of(&Span::current());
        self.traces.dispatched(
            sequence,
            &cmd.domain.id,
            parent,
            self.suppliers.iter().map(|s| &s.id),
        );
        info!(sequence, command = %cmd.domain.id, action = cmd.domain.action.name(), feature = %cmd.domain.feature, "command dispatched");
        Ok(())
    }

    /// Defines a feature: a sequenced CreateFeature command, dispatched at once.
    pub async fn create_feature(
        &self,
        requester: &Who,
        def: FeatureDef,
        reason: String,
        idem: Option<Idempotency>,
        audit: AuditDraft,
    ) -> Result<pb::Feature, ApiError> {
        let mut m = self.lock().await;
        self.catch_up(&mut m).await?;
        if m.feature(&def.key).is_some() {
            return Err(ApiError::new(
                tonic::Code::AlreadyExists,
                "FEATURE_EXISTS",
                format!("features/{} already exists", def.key),
            )
            .with_metadata("name", format!("features/{}", def.key)));
        }
        let at = now();
        let mut cmd = self.new_command(
            requester,
            def.key.clone(),
            Action::CreateFeature(def.clone()),
            reason,
            at,
            0,
        );
        let mut change = Change::default();
        self.dispatch(&m, &mut cmd, &mut change, at)?;
        let mut feature = wire::feature_pb(&def);
        feature.creator = requester.identity.clone();
        feature.create_time = Some(wire::timestamp(at));
        feature.sequence = cmd.pb.sequence;
        let audit = audit.naming(&cmd.domain);
        change.commands.push(cmd);
        change.features.push((def, feature.clone()));
        let request = idem.map(|i| i.record(&feature));
        self.commit(m, change, request, Some(audit)).await?;
        Ok(feature)
    }

    /// A new command waiting for approval (`approvals_required` of 0: to be dispatched at
    /// once), with a fresh id, issued at `at`.
    pub(crate) fn new_command(
        &self,
        requester: &Who,
        feature: FeatureKey,
        action: Action,
        reason: String,
        at: SystemTime,
        approvals_required: u32,
    ) -> Cmd {
        let id = CommandId::parse(&uuid::Uuid::new_v4().hyphenated().to_string())
            .expect("a hyphenated UUID is a valid command id");
        let domain = Command {
            id,
            sequence: 0,
            feature,
            action,
            reason,
            requester: requester.identity.clone(),
            issued_at: at,
            approved_by: vec![],
            redelivery_of: None,
            supplier: None,
        };
        let mut pb = wire::command_pb(&domain);
        pb.sequence = 0;
        pb.state = pb::command::State::PendingApproval.into();
        pb.approvals_required = i32::try_from(approvals_required).unwrap_or(i32::MAX);
        pb.create_time = Some(wire::timestamp(at));
        pb.requester_person = requester.person.clone().unwrap_or_default();
        Cmd {
            pb,
            domain,
            state: CommandState::Pending,
        }
    }

    /// Issues a halt (dispatched at once), or a resume or go-live (pending approval). With
    /// `dry_run`, only the impact is worked out and nothing is saved.
    #[allow(clippy::too_many_arguments)]
    pub async fn issue(
        &self,
        requester: &Who,
        feature: FeatureKey,
        action: Action,
        reason: String,
        dry_run: bool,
        idem: Option<Idempotency>,
        audit: AuditDraft,
    ) -> Result<pb::Command, ApiError> {
        let mut m = self.lock().await;
        self.catch_up(&mut m).await?;
        let (def, _) = m
            .feature(&feature)
            .ok_or_else(|| ApiError::not_found("FEATURE_NOT_FOUND", format!("features/{feature}")))?;
        let approvals = if action.turns_on() {
            def.approvals_required
        } else {
            0
        };
        if let Action::Resume { halts } = &action {
            for (i, h) in halts.iter().enumerate() {
                self.check_liftable(&m, &feature, i, h).await?;
            }
        }
        let at = now();
        let mut cmd = self.new_command(requester, feature, action, reason, at, approvals);
        let configured = self.supplier_ids();
        cmd.pb.impact = Some(crate::impact::impact_of(
            &self.estate,
            &configured,
            &m,
            &cmd.domain.action,
        ));
        if dry_run {
            // A dry run shows the approver's view (lifted halts, preview); a saved command's
            // answer is what a retry gets back, so it carries only what is stored (GetCommand
            // adds the rest).
            cmd.pb.name = String::new();
            cmd.pb.state = pb::command::State::DryRun.into();
            drop(m);
            let mut view = cmd.pb;
            self.annotate(&mut view, &cmd.domain).await?;
            return Ok(view);
        }
        let mut change = Change::default();
        if approvals == 0 {
            self.dispatch(&m, &mut cmd, &mut change, at)?;
        }
        self.commit_command(m, cmd, change, idem, audit).await
    }

    /// Approves a pending command; the last approval needed dispatches it. Refused to the
    /// requester, and to every identity of the requester's person (as recorded when the command
    /// was issued, or as `person_of`, the current policy, names it), and likewise to whoever
    /// (identity or person) has already approved it: four eyes are two people.
    pub async fn approve(
        &self,
        approver: &Who,
        person_of: PersonOf<'_>,
        id: &CommandId,
        comment: String,
        idem: Option<Idempotency>,
        audit: AuditDraft,
    ) -> Result<pb::Command, ApiError> {
        let mut m = self.lock().await;
        self.catch_up(&mut m).await?;
        let Some(mut cmd) = m.pending(id).cloned() else {
            let state = self.stored_state(id).await?;
            return Err(ApiError::failed_precondition(
                "NOT_PENDING",
                format!("commands/{id} is not waiting for approval ({state:?})"),
            ));
        };
        crate::four_eyes::check(&cmd.pb, approver, person_of)?;
        let at = now();
        cmd.pb.approvals.push(pb::command::Approval {
            approver: approver.identity.clone(),
            approve_time: Some(wire::timestamp(at)),
            comment,
            person: approver.person.clone().unwrap_or_default(),
        });
        cmd.domain.approved_by.push(approver.identity.clone());
        let mut change = Change::default();
        if cmd.pb.approvals.len() >= usize::try_from(cmd.pb.approvals_required).unwrap_or(1) {
            cmd.pb.approve_time = Some(wire::timestamp(at));
            self.dispatch(&m, &mut cmd, &mut change, at)?;
        }
        self.commit_command(m, cmd, change, idem, audit).await
    }

    /// Commits `cmd` with `change` (its deliveries, if it was dispatched), its idempotency
    /// record and audit event; answers the command's view with those deliveries.
    pub(crate) async fn commit_command(
        &self,
        m: OwnedMutexGuard<Model>,
        cmd: Cmd,
        mut change: Change,
        idem: Option<Idempotency>,
        audit: AuditDraft,
    ) -> Result<pb::Command, ApiError> {
        let mut view = cmd.pb.clone();
        view.deliveries = change.deliveries.iter().map(|(_, d)| d.clone()).collect();
        let audit = audit.naming(&cmd.domain);
        change.commands.push(cmd);
        let request = idem.map(|i| i.record(&view));
        self.commit(m, change, request, Some(audit)).await?;
        Ok(view)
    }

    /// Withdraws a command still waiting for approval.
    pub async fn cancel(
        &self,
        who: &str,
        id: &CommandId,
        idem: Option<Idempotency>,
        audit: AuditDraft,
    ) -> Result<pb::Command, ApiError> {
        let mut m = self.lock().await;
        self.catch_up(&mut m).await?;
        let Some(mut cmd) = m.pending(id).cloned() else {
            self.stored_state(id).await?;
            return Err(ApiError::failed_precondition(
                "NOT_PENDING",
                format!(
                    "commands/{id} is not waiting for approval, so it cannot be cancelled; issue a halt instead"
                ),
            ));
        };
        cmd.state = CommandState::Cancelled;
        cmd.pb.state = pb::command::State::Cancelled.into();
        cmd.pb.cancelled_by = who.to_owned();
        cmd.pb.cancel_time = Some(wire::timestamp(now()));
        let view = cmd.pb.clone();
        let audit = audit.naming(&cmd.domain);
        let change = Change {
            commands: vec![cmd],
            ..Change::default()
        };
        let request = idem.map(|i| i.record(&view));
        self.commit(m, change, request, Some(audit)).await?;
        Ok(view)
    }
}
