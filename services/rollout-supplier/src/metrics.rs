//! The supplier's own Prometheus metrics. Read from the serving snapshot at each scrape (never
//! on a call's path): the applied sequence, each feature's practices by answer, the age of the
//! coordinator's last contact that counted, and whether each fail-closed feature is off for
//! want of it. Recorded as things happen ([`Recorded`]): answers served by state, watchers
//! that fell behind, store commit times. The `feature` label is a feature key: features are
//! defined by commands, a handful at most, never a practice.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::SystemTime,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge, histogram::Histogram},
};
use rollout_core::{Reason, State, rules::FailMode};

use crate::engine::Engine;

/// The answers a practice's state and reason are counted under.
pub(crate) const ANSWERS: [&str; 6] = [
    "enabled",
    "halted",
    "opted_out",
    "not_live",
    "other_disabled",
    "unknown",
];

/// The index in [`ANSWERS`] of an answer.
pub(crate) fn answer(state: State, reason: Reason) -> usize {
    match (state, reason) {
        (State::Enabled, _) => 0,
        (State::Unknown, _) => 5,
        (_, Reason::Halted) => 1,
        (_, Reason::OptedOut) => 2,
        (_, Reason::NotLive | Reason::Scheduled) => 3,
        _ => 4,
    }
}

/// Answers served to backends since start, by state: each GetPracticeFeature, each answer of a
/// BatchGetPracticeFeatures or a ListPracticeFeatures page, each flagd ResolveBoolean and each
/// flag of a ResolveAll. One
/// relaxed atomic increment an answer.
#[derive(Debug, Default)]
pub struct Evaluations([AtomicU64; 3]);

impl Evaluations {
    const STATES: [(State, &'static str); 3] = [
        (State::Enabled, "enabled"),
        (State::Disabled, "disabled"),
        (State::Unknown, "unknown"),
    ];

    /// Counts one answer in `state`.
    pub(crate) fn served(&self, state: State) {
        let i = match state {
            State::Enabled => 0,
            State::Disabled => 1,
            State::Unknown => 2,
        };
        self.0[i].fetch_add(1, Relaxed);
    }
}

/// Upper bounds, in seconds, of the store commit histogram: from half a millisecond (SQLite on
/// a local disk) to 10 s (a PostgreSQL server in trouble).
const COMMIT_BUCKETS: [f64; 14] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The figures the supplier records as things happen, each one atomic update or a few.
#[derive(Debug)]
pub struct Recorded {
    /// Answers served to backends, by state.
    pub(crate) evaluations: Evaluations,
    lagged_watchers: AtomicU64,
    commits: Histogram,
}

impl Default for Recorded {
    fn default() -> Self {
        Recorded {
            evaluations: Evaluations::default(),
            lagged_watchers: AtomicU64::new(0),
            commits: Histogram::new(COMMIT_BUCKETS),
        }
    }
}

impl Recorded {
    /// Counts a watcher (WatchPracticeFeatures or a flagd EventStream) that fell behind the
    /// change fan-out and was sent a fresh snapshot (or told to refetch) instead.
    pub(crate) fn watcher_lagged(&self) {
        self.lagged_watchers.fetch_add(1, Relaxed);
    }

    /// Observes one store write of a change, `seconds` long, whether it committed or failed.
    pub(crate) fn commit_took(&self, seconds: f64) {
        self.commits.observe(seconds);
    }
}

/// Reports the engine's state at each scrape.
#[derive(Debug)]
pub(crate) struct SupplierCollector(pub(crate) Arc<Engine>);

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: f64) -> fmt::Result {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for SupplierCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let s = self.0.current();
        gauge(
            &mut encoder,
            "supplier_applied_sequence",
            "The last command sequence this supplier has applied (or rejected)",
            s.book.applied_sequence() as f64,
        )?;
        if let Some(contact) = self.0.last_contact() {
            let age = SystemTime::now()
                .duration_since(contact)
                .unwrap_or_default()
                .as_secs_f64();
            gauge(
                &mut encoder,
                "supplier_contact_age_seconds",
                "Seconds since the coordinator's last contact that counted (absent until the \
                 first)",
                age,
            )?;
        }
        let mut features: Vec<_> = s.answers.iter().collect();
        features.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        {
            let mut family = encoder.encode_descriptor(
                "supplier_practices",
                "Practices this supplier holds, by feature and answer (enabled, halted, \
                 opted_out, not_live, other_disabled: not active, held or control stale; \
                 unknown: never synchronised)",
                None,
                MetricType::Gauge,
            )?;
            for (feature, answers) in &features {
                let mut counts = [0i64; ANSWERS.len()];
                for (_, state, reason) in answers.iter() {
                    counts[answer(*state, *reason)] += 1;
                }
                for (name, n) in ANSWERS.iter().zip(counts) {
                    ConstGauge::new(n)
                        .encode(family.encode_family(&[("feature", feature.as_str()), ("answer", name)])?)?;
                }
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "supplier_evaluations",
                "Answers served to backends (GetPracticeFeature, each answer of a batch or a list \
                 page, flagd ResolveBoolean and ResolveAll), by state",
                None,
                MetricType::Counter,
            )?;
            for ((_, name), n) in Evaluations::STATES.iter().zip(&self.0.recorded.evaluations.0) {
                ConstCounter::new(n.load(Relaxed)).encode(family.encode_family(&[("state", *name)])?)?;
            }
        }
        let recorded = &self.0.recorded;
        let lagged = ConstCounter::new(recorded.lagged_watchers.load(Relaxed));
        lagged.encode(encoder.encode_descriptor(
            "supplier_watchers_lagged",
            "Watchers (WatchPracticeFeatures, flagd EventStream) that fell behind the change \
             fan-out and were sent a fresh snapshot, or told to refetch, instead of the changes \
             they missed",
            None,
            lagged.metric_type(),
        )?)?;
        recorded.commits.encode(encoder.encode_descriptor(
            "supplier_store_commit",
            "Seconds each store write of a change took (an applied command, a snapshot, an \
             opt-out, an estate import), committed or failed",
            Some(&prometheus_client::registry::Unit::Seconds),
            recorded.commits.metric_type(),
        )?)?;
        let mut family = encoder.encode_descriptor(
            "supplier_control_stale",
            "1 while a fail-closed feature is off everywhere for want of the coordinator's \
             contact (its control TTL passed), else 0",
            None,
            MetricType::Gauge,
        )?;
        for f in s.book.features() {
            if !matches!(f.def.fail_mode, FailMode::Closed { .. }) {
                continue;
            }
            let stale = s.answers.get(&f.def.key).is_some_and(|answers| {
                answers
                    .iter()
                    .any(|(_, _, reason)| *reason == Reason::ControlStale)
            });
            ConstGauge::new(i64::from(stale))
                .encode(family.encode_family(&[("feature", f.def.key.as_str())])?)?;
        }
        Ok(())
    }
}
