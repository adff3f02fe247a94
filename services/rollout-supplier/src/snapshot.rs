//! The supplier's immutable serving state and the queries answered from it.
//!
//! A [`Serving`] value is never changed: a write builds the next one beside it and swaps it in
//! (see [`crate::engine`]), so a read holds one consistent state for as long as it needs,
//! without waiting for a write. It holds the *effective* state only (the rule book, the estate,
//! the opt-outs and every practice's answer), never the command log: its size follows the
//! rules in force, not the history.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
    time::SystemTime,
};

use rollout_core::{
    Context, Estate, Evaluation, FeatureKey, HistoryHash, OdsCode, OptOut, Practice, Reason, RuleBook, State,
    evaluate_held,
};
use rollout_store::supplier::OptOutRecord;

/// One answer in the answers cache.
pub type Answer = (OdsCode, State, Reason);

/// An immutable snapshot of everything the supplier answers from.
#[derive(Debug, Clone)]
pub struct Serving {
    /// The effective rule set (features and the rules in force).
    pub book: Arc<RuleBook>,
    /// The history hash at the book's applied sequence.
    pub head: HistoryHash,
    /// When the last command (or snapshot) was applied.
    pub last_apply_time: Option<SystemTime>,
    /// The supplier's practices.
    pub estate: Arc<Estate>,
    /// Opt-outs, current and withdrawn.
    pub opt_outs: Arc<BTreeMap<(OdsCode, FeatureKey), OptOutRecord>>,
    /// The latest opt-out change number (0 before the first): every opt-out write takes the
    /// next one.
    pub opt_out_change: u64,
    /// Practices that joined from another supplier, held off (every feature DISABLED,
    /// awaiting the opt-out check) until the coordinator has sent the register's records.
    pub held: Arc<BTreeSet<OdsCode>>,
    /// The watch version: this process's position in its stream of changes. Its high 32 bits
    /// are a random epoch per process, so a watcher that resumes on another replica (or after
    /// a restart) starts with a snapshot instead of trusting another process's numbering.
    pub version: u64,
    /// The stored version this snapshot reflects (compare-and-set on every write).
    pub store_version: u64,
    /// Every practice's answer per defined feature, by ODS code, as of `version`.
    pub answers: Arc<HashMap<FeatureKey, Vec<Answer>>>,
}

/// What WatchSyncState reports a change of: where the supplier stands in the command sequence
/// and in its opt-out changes, and whom it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncMark {
    /// The applied sequence.
    pub applied: u64,
    /// The history hash there.
    pub head: HistoryHash,
    /// The latest opt-out change number.
    pub opt_out_change: u64,
    /// The held practices.
    pub held: Arc<BTreeSet<OdsCode>>,
}

impl Serving {
    /// Where this state stands, for WatchSyncState.
    pub fn sync_mark(&self) -> SyncMark {
        SyncMark {
            applied: self.book.applied_sequence(),
            head: self.head,
            opt_out_change: self.opt_out_change,
            held: self.held.clone(),
        }
    }

    /// The practice's current opt-out from the feature, if any.
    pub fn opt_out(&self, ods: OdsCode, feature: &FeatureKey) -> Option<&OptOut> {
        self.opt_outs
            .get(&(ods, feature.clone()))
            .filter(|r| r.withdrawal.is_none())
            .map(|r| &r.opt_out)
    }

    /// Evaluates a feature for a practice. `None` if the feature is not defined here and the
    /// supplier has synchronised (so it really does not exist); an undefined feature before the
    /// first synchronisation is UNKNOWN.
    pub fn evaluate<'a>(
        &'a self,
        p: &Practice,
        feature: &FeatureKey,
        ctx: &Context,
        explain: bool,
    ) -> Option<Evaluation<'a>> {
        let opt = self.opt_out(p.ods, feature);
        match self.book.feature(feature) {
            Some(f) => Some(evaluate_held(f, p, self.held.contains(&p.ods), opt, ctx, explain)),
            None if !ctx.synchronised => Some(Evaluation {
                state: State::Unknown,
                reason: Reason::NeverSynchronised,
                deciding: None,
                rules: opt
                    .filter(|_| explain)
                    .map(rollout_core::Applicable::OptOut)
                    .into_iter()
                    .collect(),
                omitted: 0,
            }),
            None => None,
        }
    }

    /// Every practice's answer for every feature, at the context's time.
    pub fn compute_answers(&self, ctx: &Context) -> HashMap<FeatureKey, Vec<Answer>> {
        self.book
            .features()
            .map(|f| {
                let key = &f.def.key;
                let answers = self
                    .estate
                    .practices()
                    .map(|p| {
                        let held = self.held.contains(&p.ods);
                        let e = evaluate_held(f, p, held, self.opt_out(p.ods, key), ctx, false);
                        (p.ods, e.state, e.reason)
                    })
                    .collect();
                (key.clone(), answers)
            })
            .collect()
    }
}
