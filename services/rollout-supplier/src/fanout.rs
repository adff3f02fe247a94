//! Watch fan-out: which answers a write changed, a ring of recent change batches for watchers
//! that resume from a version, and a broadcast for live ones.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use rollout_core::{FeatureKey, OdsCode, Reason, State};
use tokio::sync::broadcast;

use crate::snapshot::{Answer, Serving};

/// How many change batches are kept for watchers resuming from a version.
const RETAINED_BATCHES: usize = 4096;

/// Answers that changed for one feature at one version.
#[derive(Debug, Clone)]
pub struct ChangeBatch {
    /// The version the answers are as of.
    pub version: u64,
    /// The feature.
    pub feature: FeatureKey,
    /// The new answers.
    pub changes: Vec<Answer>,
    /// Where each practice's answer is in `changes`, so that a watcher of a few practices
    /// looks them up instead of scanning the batch (10,000 such watchers on a national halt
    /// would otherwise scan it 10,000 times).
    pub index: HashMap<OdsCode, usize>,
    /// What caused the change.
    pub cause: String,
}

/// The answers in `new` that differ from `old` (both sorted by ODS code). A practice missing
/// from `old` counts as changed from `missing`.
fn diff(old: Option<&Vec<Answer>>, new: &[Answer], missing: (State, Reason)) -> Vec<Answer> {
    let old: HashMap<OdsCode, (State, Reason)> = old
        .map(|v| v.iter().map(|(o, s, r)| (*o, (*s, *r))).collect())
        .unwrap_or_default();
    new.iter()
        .filter(|(ods, s, r)| old.get(ods).copied().unwrap_or(missing) != (*s, *r))
        .copied()
        .collect()
}

/// The change batches from `previous` to `next` (whose answers are computed), one per feature
/// whose answers changed.
pub fn batches(previous: &Serving, next: &Serving, cause: &str) -> Vec<Arc<ChangeBatch>> {
    let missing = if previous.book.synchronised() {
        (State::Disabled, Reason::NotLive)
    } else {
        (State::Unknown, Reason::NeverSynchronised)
    };
    next.answers
        .iter()
        .filter_map(|(feature, answers)| {
            let changes = diff(previous.answers.get(feature), answers, missing);
            (!changes.is_empty()).then(|| {
                Arc::new(ChangeBatch {
                    version: next.version,
                    feature: feature.clone(),
                    index: changes
                        .iter()
                        .enumerate()
                        .map(|(i, (ods, ..))| (*ods, i))
                        .collect(),
                    changes,
                    cause: cause.to_owned(),
                })
            })
        })
        .collect()
}

/// Watch fan-out: a ring of recent batches for resuming, and a broadcast for live ones.
#[derive(Debug)]
pub struct Hub {
    ring: VecDeque<Arc<ChangeBatch>>,
    /// Every batch with a version at or above this is in the ring.
    retained_from: u64,
    tx: broadcast::Sender<Arc<ChangeBatch>>,
}

/// What a new watcher starts from.
#[derive(Debug)]
pub enum WatchStart {
    /// The changes after the requested version, then live ones.
    Resume(Vec<Arc<ChangeBatch>>),
    /// A snapshot of this state, then live changes after its version.
    Snapshot(Arc<Serving>),
}

impl Hub {
    /// A hub whose first batch will be after `version`.
    pub fn new(version: u64) -> Hub {
        Hub {
            ring: VecDeque::new(),
            retained_from: version + 1,
            tx: broadcast::channel(1024).0,
        }
    }

    /// Keeps `batch` for resuming watchers and sends it to the live ones.
    pub fn send(&mut self, batch: Arc<ChangeBatch>) {
        self.ring.push_back(batch.clone());
        while self.ring.len() > RETAINED_BATCHES {
            if let Some(old) = self.ring.pop_front() {
                self.retained_from = self.retained_from.max(old.version + 1);
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(batch);
    }

    /// Live watchers now (watch streams and flagd event streams, each one receiver).
    pub fn watchers(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Subscribes a watcher: resumes after `start_version` if the changes since are held,
    /// else starts from a snapshot of `state` (the state current under the hub's lock).
    pub fn subscribe(
        &self,
        start_version: u64,
        state: Arc<Serving>,
    ) -> (broadcast::Receiver<Arc<ChangeBatch>>, WatchStart) {
        let rx = self.tx.subscribe();
        let start =
            if start_version > 0 && start_version + 1 >= self.retained_from && start_version <= state.version
            {
                WatchStart::Resume(
                    self.ring
                        .iter()
                        .filter(|b| b.version > start_version)
                        .cloned()
                        .collect(),
                )
            } else {
                WatchStart::Snapshot(state)
            };
        (rx, start)
    }
}
