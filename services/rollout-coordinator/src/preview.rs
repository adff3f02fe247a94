//! What an approver sees before approving: the halts a resume lifts, and a preview of what a
//! resume or go-live would change at each supplier.
//!
//! The preview judges every practice in scope twice with the suppliers' own evaluation
//! (`rollout_core::evaluate`): against the rules in force at that supplier now (built as its
//! snapshot would be, so a halt it still holds because it rejected a resume counts), and
//! against the same rules with the command applied, as of the command's effective time. The
//! opt-outs are the national register's; the practice's status is the national estate's; the
//! supplier is taken to be in contact. Nothing is saved: a preview is made when asked for, so
//! it always reflects the rules in force and the register at that moment.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::SystemTime,
};

use prost::Message;
use rollout_core::{
    Action, Command, CommandId, Context, FeatureKey, OdsCode, OptOut, Practice, Reason, RuleBook, State,
    SupplierId, evaluate, quoted,
};
use rollout_net::{ApiError, wire};
use rollout_proto::v1 as pb;
use rollout_store::coordinator::RegisterQuery;

use crate::{coordinator::Core, model::cmd_of};

impl Core {
    /// Fills a command view with what an approver needs: for a resume, the halts it lifts;
    /// for a resume or go-live not yet dispatched (waiting for approval, or a dry run), the
    /// preview of its effect.
    pub(crate) async fn annotate(&self, view: &mut pb::Command, cmd: &Command) -> Result<(), ApiError> {
        if let Action::Resume { halts } = &cmd.action {
            view.lifted_halts = self.lifted_halts(halts).await?;
        }
        let undispatched = matches!(
            view.state(),
            pb::command::State::PendingApproval | pb::command::State::DryRun
        );
        if undispatched && cmd.action.turns_on() {
            view.preview = Some(self.preview(cmd).await?);
        }
        Ok(())
    }

    /// GetCommand's view: the command with its deliveries, annotated (see [`Core::annotate`]).
    /// WatchCommand and ListCommands do without the annotations: a preview costs an evaluation
    /// of every practice in scope.
    pub async fn annotated_view(&self, id: &CommandId) -> Result<pb::Command, ApiError> {
        let cmd = self.find_command(id).await?;
        let domain = cmd.domain.clone();
        let mut view = self.view_of(cmd).await?;
        self.annotate(&mut view, &domain).await?;
        Ok(view)
    }

    /// The halts a resume names, as the coordinator holds them (in force or lifted).
    async fn lifted_halts(&self, halts: &[CommandId]) -> Result<Vec<pb::command::LiftedHalt>, ApiError> {
        let mut out = Vec::with_capacity(halts.len());
        for id in halts {
            let Some(halt) = self.halt(id).await? else {
                continue;
            };
            let Action::Halt { scope } = &halt.action else {
                continue;
            };
            out.push(pb::command::LiftedHalt {
                command: format!("commands/{id}"),
                scope: Some(wire::scope_summary_pb(scope)),
                reason: quoted(&halt.reason).into_owned(),
                requester: halt.requester.clone(),
                create_time: Some(wire::timestamp(halt.issued_at)),
                sequence: i64::try_from(halt.sequence).unwrap_or(i64::MAX),
            });
        }
        Ok(out)
    }

    /// What `cmd` (a resume or go-live) would change at each supplier with practices in its
    /// scope (a redelivery: at the supplier it is addressed to). See the module docs for how
    /// it is judged.
    pub(crate) async fn preview(&self, cmd: &Command) -> Result<pb::Preview, ApiError> {
        let now = SystemTime::now();
        let at = match &cmd.action {
            Action::GoLive {
                effective_at: Some(t),
                ..
            } => (*t).max(now),
            _ => now,
        };
        let scopes = {
            let m = self.lock().await;
            self.scopes(&m, &cmd.action).await?
        };
        let mut in_scope: BTreeMap<&SupplierId, Vec<&Practice>> = BTreeMap::new();
        for p in self.estate.practices() {
            if cmd.addressed_to(&p.supplier) && scopes.iter().any(|s| s.covers(p)) {
                in_scope.entry(&p.supplier).or_default().push(p);
            }
        }
        let opted_out = self.opted_out(&cmd.feature).await?;
        let mut preview = pb::Preview {
            evaluate_time: Some(wire::timestamp(at)),
            ..Default::default()
        };
        for (supplier, practices) in in_scope {
            let freeze = self
                .read(|m| {
                    m.supplier(supplier)
                        .filter(|s| s.pb.frozen)
                        .map(|s| s.freeze_reason.clone())
                })
                .await;
            let (before, mut after) = self.books(supplier, cmd).await?;
            if freeze.is_some() {
                // A supplier declaring a change freeze rejects a go-live or resume: nothing
                // changes there.
                after = before.clone();
            }
            let mut counts = judge(&before, &after, cmd, &practices, &opted_out, now, at);
            counts.frozen = freeze.is_some();
            counts.freeze_reason = freeze.unwrap_or_default();
            preview.turn_on += counts.turn_on;
            preview.stay_off += counts.practices - counts.turn_on - counts.already_on;
            preview.suppliers.push(pb::preview::SupplierPreview {
                supplier: format!("suppliers/{supplier}"),
                ..counts
            });
        }
        Ok(preview)
    }

    /// The command `id` as the coordinator holds it: in force (the model), else the store.
    async fn halt(&self, id: &CommandId) -> Result<Option<Arc<Command>>, ApiError> {
        if let Some(c) = self.read(|m| m.in_force().get(id).cloned()).await {
            return Ok(Some(c));
        }
        let read = |e: String| ApiError::internal("reading a halt a resume names", e);
        match self.store().command(id.as_str()).await {
            Ok(Some(row)) => Ok(Some(Arc::new(
                cmd_of(&row).map_err(|e| read(e.to_string()))?.domain,
            ))),
            Ok(None) => Ok(None),
            Err(e) => Err(read(e.to_string())),
        }
    }

    /// The rule book of `cmd`'s feature at `supplier` now, and the same with `cmd` applied.
    async fn books(&self, supplier: &SupplierId, cmd: &Command) -> Result<(RuleBook, RuleBook), ApiError> {
        let (last, rejected) = self.read(|m| (m.last_sequence(), m.rejected_by(supplier))).await;
        let effective = self
            .effective_at(supplier, last, &rejected)
            .await
            .map_err(|e| ApiError::internal("building a preview", e))?;
        let mut book = RuleBook::for_supplier(supplier.clone());
        for c in effective.values().filter(|c| of_feature(c, &cmd.feature)) {
            book.restore(c)
                .map_err(|e| ApiError::internal("building a preview", e))?;
        }
        let mut after = book.clone();
        let next = Command {
            sequence: after.applied_sequence() + 1,
            ..cmd.clone()
        };
        after
            .apply(&next, None)
            .map_err(|e| ApiError::internal("building a preview", e))?;
        Ok((book, after))
    }

    /// The register's opt-outs in force for `feature`, by practice (at most one per practice
    /// and feature: the register's size, read in pages).
    async fn opted_out(&self, feature: &FeatureKey) -> Result<HashMap<OdsCode, OptOut>, ApiError> {
        const PAGE: u32 = 5_000;
        let read = |e| ApiError::internal("reading the opt-out register for a preview", e);
        let mut out = HashMap::new();
        let mut query = RegisterQuery {
            feature: Some(feature.to_string()),
            supplier: None,
            practice: None,
            show_withdrawn: false,
            after: None,
            limit: PAGE,
        };
        loop {
            let rows = self.store().list_register(&query).await.map_err(read)?;
            let full = rows.len() == PAGE as usize;
            query.after = rows.last().map(|r| (r.practice.clone(), r.feature.clone()));
            for row in rows {
                let record = pb::PracticeOptOut::decode(row.body.as_slice())
                    .map_err(|e| ApiError::internal("decoding an opt-out of the register", e))?;
                let Ok(practice) = OdsCode::parse(&row.practice) else {
                    continue;
                };
                out.insert(
                    practice,
                    OptOut {
                        practice,
                        feature: feature.clone(),
                        reason: record.reason,
                        source: record.source,
                        recorded_by: record.recorded_by,
                        recorded_at: record
                            .create_time
                            .and_then(|t| SystemTime::try_from(t).ok())
                            .unwrap_or(SystemTime::UNIX_EPOCH),
                    },
                );
            }
            if !full {
                return Ok(out);
            }
        }
    }
}

/// Whether `c` belongs to `feature`'s rule book (its definition, a go-live or a halt of it).
fn of_feature(c: &Command, feature: &FeatureKey) -> bool {
    match &c.action {
        Action::CreateFeature(def) => def.key == *feature,
        _ => c.feature == *feature,
    }
}

/// One supplier's counts: every practice judged before (now) and after (at `at`).
fn judge(
    before: &RuleBook,
    after: &RuleBook,
    cmd: &Command,
    practices: &[&Practice],
    opted_out: &HashMap<OdsCode, OptOut>,
    now: SystemTime,
    at: SystemTime,
) -> pb::preview::SupplierPreview {
    let mut counts = pb::preview::SupplierPreview {
        practices: i32::try_from(practices.len()).unwrap_or(i32::MAX),
        ..Default::default()
    };
    let (Some(before), Some(after)) = (before.feature(&cmd.feature), after.feature(&cmd.feature)) else {
        return counts;
    };
    let context = |t| Context {
        now: t,
        synchronised: true,
        last_contact: Some(t),
    };
    for p in practices {
        let opt_out = opted_out.get(&p.ods);
        let was = evaluate(before, p, opt_out, &context(now), false).state;
        let will = evaluate(after, p, opt_out, &context(at), false);
        let slot = match (will.state, will.reason) {
            (State::Enabled, _) if was == State::Enabled => &mut counts.already_on,
            (State::Enabled, _) => &mut counts.turn_on,
            (_, Reason::Halted) => &mut counts.stay_off_halted,
            (_, Reason::OptedOut) => &mut counts.stay_off_opted_out,
            (_, Reason::PracticeNotActive) => &mut counts.stay_off_not_active,
            (_, Reason::Scheduled) => &mut counts.stay_off_scheduled,
            // Not live; never synchronised and control stale cannot arise in a preview, which
            // takes every supplier to be in contact.
            _ => &mut counts.stay_off_not_live,
        };
        *slot += 1;
    }
    counts
}
