//! The coordinator's own Prometheus metrics. Gauges read from its model before each scrape
//! (never on a call's path): per supplier, its sync state, applied sequence, lag behind the
//! latest sequence, the age of its last contact and the halts it has not applied; the latest
//! sequence; commands waiting for approval; whether this replica leads delivery. Counters and
//! histograms recorded as things happen ([`Recorded`]): delivery passes and their failures by
//! cause, how long commands took to reach each supplier, and how long halts took to be
//! verified there. The `supplier` label is a configured supplier's id (a handful, from
//! `--suppliers`), never a practice.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, atomic::AtomicU64},
    time::SystemTime,
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};
use rollout_core::SupplierId;
use rollout_proto::v1::{self as pb, supplier::State};

use crate::{coordinator::Core, failure::Cause};

/// The states a supplier's `state` gauge has a series for (named in lower case, without their
/// `STATE_` prefix).
const STATES: [State; 6] = [
    State::Synced,
    State::Pending,
    State::Stale,
    State::Rejected,
    State::Diverged,
    State::Faulty,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SupplierLabels {
    supplier: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    supplier: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    supplier: String,
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    supplier: String,
    action: &'static str,
}

/// Upper bounds, in seconds, of the propagation and verification histograms: from a few
/// milliseconds (a supplier in step on a local network) to a day (one that was down), with a
/// bound at 10 s, the alert's threshold for a halt applied everywhere.
const PROPAGATION_BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3_600.0, 86_400.0,
];

/// How many halts [`Recorded`] remembers as verified (with the suppliers where, a handful
/// each), so that each (halt, supplier) counts once in `halt_verified_seconds` however often it
/// is verified again. The oldest halts are forgotten first; a halt verified again after it was
/// forgotten counts again.
const VERIFIED_REMEMBERED: usize = 1_024;

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn propagation_histogram() -> Histogram {
    Histogram::new(PROPAGATION_BUCKETS)
}

/// The figures the coordinator records as things happen, on every replica (the delivery
/// task's only on the replica that leads delivery). Each is one atomic update, or a few.
#[derive(Debug)]
pub(crate) struct Recorded {
    attempts: Family<SupplierLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    applied: Histograms<ActionLabels>,
    acknowledged: Histograms<ActionLabels>,
    verified: Histograms<SupplierLabels>,
    /// The halts verified, by sequence: each supplier where, and the seconds it took.
    verified_seen: Mutex<BTreeMap<u64, Vec<(SupplierId, f64)>>>,
}

impl Default for Recorded {
    fn default() -> Self {
        Recorded {
            attempts: Family::default(),
            failures: Family::default(),
            applied: Family::new_with_constructor(propagation_histogram),
            acknowledged: Family::new_with_constructor(propagation_histogram),
            verified: Family::new_with_constructor(propagation_histogram),
            verified_seen: Mutex::default(),
        }
    }
}

/// A command whose propagation is timed: its action and issue time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timed {
    action: &'static str,
    issued: SystemTime,
}

impl Timed {
    /// The clock of `command` as sent to suppliers, if it is timed. Only commands dispatched
    /// when issued are (halts and feature definitions): a resume or go-live is dispatched at
    /// its last approval, which the command as sent does not carry, so its issue time would
    /// measure the wait for approvers.
    pub(crate) fn of(command: &pb::Command) -> Option<Timed> {
        use pb::command::Action as A;
        let action = match command.action {
            Some(A::Halt(_)) => "halt",
            Some(A::CreateFeature(_)) => "create_feature",
            _ => return None,
        };
        let issued = SystemTime::try_from(command.create_time?).ok()?;
        Some(Timed { action, issued })
    }
}

/// Seconds from `from` to `to`, or `None` if `to` is earlier (a supplier clock behind ours).
fn seconds_between(from: SystemTime, to: SystemTime) -> Option<f64> {
    to.duration_since(from).ok().map(|d| d.as_secs_f64())
}

impl Recorded {
    /// Counts one delivery pass at `supplier` (a heartbeat, then whatever it had still to
    /// apply), and its failure's cause if it failed.
    pub(crate) fn delivery_pass(&self, supplier: &SupplierId, failed: Option<Cause>) {
        let supplier = supplier.to_string();
        if let Some(cause) = failed {
            self.failures
                .get_or_create(&FailureLabels {
                    supplier: supplier.clone(),
                    cause: cause.as_str(),
                })
                .inc();
        }
        self.attempts.get_or_create(&SupplierLabels { supplier }).inc();
    }

    /// Observes how long a command, `timed` ([`Timed::of`]), took to reach `supplier`, which
    /// has just applied it for the first time: from its issue to the supplier's apply time (the
    /// supplier's clock, as reported) and to now (its acknowledgement here).
    pub(crate) fn propagated(&self, supplier: &SupplierId, timed: Timed, apply_time: Option<SystemTime>) {
        let (action, issued) = (timed.action, timed.issued);
        let labels = ActionLabels {
            supplier: supplier.to_string(),
            action,
        };
        if let Some(s) = apply_time.and_then(|t| seconds_between(issued, t)) {
            self.applied.get_or_create(&labels).observe(s);
        }
        if let Some(s) = seconds_between(issued, SystemTime::now()) {
            self.acknowledged.get_or_create(&labels).observe(s);
        }
    }

    /// Observes how long the halt at `sequence`, issued at `issued`, took to be verified at
    /// `supplier` (its read-back showed no practice in scope ENABLED), the first time this
    /// replica finds it so.
    pub(crate) fn halt_verified(&self, sequence: u64, supplier: &SupplierId, issued: SystemTime) {
        let Some(s) = seconds_between(issued, SystemTime::now()) else {
            return;
        };
        {
            let mut seen = self.verified_seen.lock().unwrap_or_else(|e| e.into_inner());
            let at = seen.entry(sequence).or_default();
            if at.iter().any(|(s, _)| s == supplier) {
                return;
            }
            at.push((supplier.clone(), s));
            while seen.len() > VERIFIED_REMEMBERED {
                seen.pop_first();
            }
        }
        self.verified
            .get_or_create(&SupplierLabels {
                supplier: supplier.to_string(),
            })
            .observe(s);
    }

    /// The suppliers at which this replica has found the halt at `sequence` verified, with
    /// the seconds from its issue that took (while remembered: see [`VERIFIED_REMEMBERED`]).
    pub(crate) fn verified_times(&self, sequence: u64) -> Vec<(SupplierId, f64)> {
        let seen = self.verified_seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.get(&sequence).cloned().unwrap_or_default()
    }

    /// Registers the figures in `registry` (prefixed `gprollout_`).
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "coordinator_delivery_attempts",
            "Delivery passes at each supplier: a heartbeat (GetSyncState), then the commands \
             or snapshot it had still to apply; on the replica that leads delivery",
            self.attempts.clone(),
        );
        registry.register(
            "coordinator_delivery_failures",
            "Delivery passes that failed, by supplier and cause (unreachable, timeout, \
             out_of_step, refused, error, supplier_fault, coordinator_store, register); each \
             is retried with backoff",
            self.failures.clone(),
        );
        registry.register_with_unit(
            "coordinator_propagation_applied",
            "Seconds from a halt's (or feature definition's) issue to its apply time at each \
             supplier, by the supplier's clock, observed when the supplier first reports it \
             applied",
            Unit::Seconds,
            self.applied.clone(),
        );
        registry.register_with_unit(
            "coordinator_propagation_acknowledged",
            "Seconds from a halt's (or feature definition's) issue to this coordinator \
             recording each supplier's acknowledgement that it applied it",
            Unit::Seconds,
            self.acknowledged.clone(),
        );
        registry.register_with_unit(
            "coordinator_halt_verified",
            "Seconds from a halt's issue to the first VerifyCommand on this replica that found \
             it verified at each supplier (no practice in scope still enabled there)",
            Unit::Seconds,
            self.verified.clone(),
        );
    }
}

/// The gauges, set from the model before each scrape.
#[derive(Debug, Default)]
pub(crate) struct CoordinatorMetrics {
    state: Family<StateLabels, Gauge>,
    applied: Family<SupplierLabels, Gauge>,
    lag: Family<SupplierLabels, Gauge>,
    contact_age: Family<SupplierLabels, Gauge<f64, AtomicU64>>,
    unapplied_halts: Family<SupplierLabels, Gauge>,
    target: Gauge,
    pending_approval: Gauge,
    leader: Gauge,
}

fn state_name(state: State) -> &'static str {
    match state {
        State::Synced => "synced",
        State::Pending => "pending",
        State::Stale => "stale",
        State::Rejected => "rejected",
        State::Diverged => "diverged",
        State::Faulty => "faulty",
        State::Unspecified => "unspecified",
    }
}

impl CoordinatorMetrics {
    /// The coordinator's gauges, registered in `registry` (prefixed `gprollout_`).
    pub(crate) fn register(registry: &mut Registry) -> Arc<CoordinatorMetrics> {
        let m = Arc::new(CoordinatorMetrics::default());
        registry.register(
            "coordinator_supplier_state",
            "Each configured supplier's sync state as GetSupplier shows it: 1 for its state, 0 \
             for the others (synced, pending, stale, rejected, diverged, faulty)",
            m.state.clone(),
        );
        registry.register(
            "coordinator_supplier_applied_sequence",
            "The last command sequence each supplier reported applied",
            m.applied.clone(),
        );
        registry.register(
            "coordinator_supplier_lag_commands",
            "Commands each supplier has still to apply: the latest sequence less its applied \
             sequence",
            m.lag.clone(),
        );
        registry.register_with_unit(
            "coordinator_supplier_contact_age",
            "Seconds since the coordinator last reached each supplier (absent until it has)",
            Unit::Seconds,
            m.contact_age.clone(),
        );
        registry.register(
            "coordinator_supplier_unapplied_halts",
            "Halts in force that each supplier has not applied yet (its practices they cover \
             may still be on there)",
            m.unapplied_halts.clone(),
        );
        registry.register(
            "coordinator_delivery_leader",
            "1 while this replica holds the delivery leadership (exactly one replica should)",
            m.leader.clone(),
        );
        registry.register(
            "coordinator_target_sequence",
            "The latest command sequence issued: what every supplier should have applied",
            m.target.clone(),
        );
        registry.register(
            "coordinator_commands_pending_approval",
            "Resumes and go-lives waiting for their approvals",
            m.pending_approval.clone(),
        );
        m
    }

    /// Registers the coordinator's gauges in `metrics`, set from `core` before each scrape.
    pub(crate) fn observe(metrics: &mut rollout_net::metrics::Metrics, core: &Arc<Core>) {
        let gauges = CoordinatorMetrics::register(metrics.registry());
        core.recorded.register(metrics.registry());
        let core = core.clone();
        metrics.before_scrape(move || {
            let (gauges, core) = (gauges.clone(), core.clone());
            async move { gauges.refresh(&core).await }
        });
    }

    /// Sets every gauge from `core`'s model now.
    pub(crate) async fn refresh(&self, core: &Core) {
        let views = core
            .read(|m| {
                let views: Vec<_> = core.suppliers.iter().map(|s| core.supplier_view(m, s)).collect();
                (views, m.last_sequence(), m.pending_count())
            })
            .await;
        let (views, target, pending) = views;
        let as_gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.target.set(as_gauge(target));
        self.pending_approval.set(as_gauge(pending as u64));
        self.leader
            .set(i64::from(core.leading.load(std::sync::atomic::Ordering::Relaxed)));
        for v in views {
            let supplier = v.name.trim_start_matches("suppliers/").to_owned();
            let labels = SupplierLabels {
                supplier: supplier.clone(),
            };
            for state in STATES {
                self.state
                    .get_or_create(&StateLabels {
                        supplier: supplier.clone(),
                        state: state_name(state),
                    })
                    .set(i64::from(v.state() == state));
            }
            self.applied.get_or_create(&labels).set(v.applied_sequence);
            self.unapplied_halts
                .get_or_create(&labels)
                .set(i64::from(v.unapplied_halt_count));
            self.lag
                .get_or_create(&labels)
                .set((as_gauge(target) - v.applied_sequence).max(0));
            if let Some(t) = v.last_contact_time.and_then(|t| SystemTime::try_from(t).ok()) {
                let age = SystemTime::now().duration_since(t).unwrap_or_default();
                self.contact_age.get_or_create(&labels).set(age.as_secs_f64());
            }
        }
    }
}
