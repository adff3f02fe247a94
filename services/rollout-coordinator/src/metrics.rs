//! The coordinator's own Prometheus metrics, read from its model before each scrape (never on
//! a call's path): per supplier, its sync state, applied sequence, lag behind the latest
//! sequence, the age of its last contact and the halts it has not applied; the latest
//! sequence; commands waiting for approval; whether this replica leads delivery. The `supplier` label is a configured supplier's id (a handful, from
//! `--suppliers`), never a practice.

use std::{sync::Arc, sync::atomic::AtomicU64, time::SystemTime};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, gauge::Gauge},
    registry::{Registry, Unit},
};
use rollout_proto::v1::supplier::State;

use crate::coordinator::Core;

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
