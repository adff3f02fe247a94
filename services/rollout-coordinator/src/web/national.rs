//! The national picture's table by region and ICB: for each feature, each ICB's active
//! practices, how many of them the halts in force cover, and which halts. Worked out from the
//! national estate and the coordinator's commands in force (what the suppliers are told, not
//! what each answers: that is in the supplier table), once for each state of the command log
//! (which decides the commands in force) and kept until the log moves on.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
};

use rollout_core::{Action, Command, Estate, FeatureKey, HistoryHash, IcbCode, PracticeStatus, RegionCode};
use serde::Serialize;

/// The most halts named in one ICB's row (the count covers them all).
pub const HALTS_NAMED: usize = 10;

/// One ICB's row for one feature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IcbRow {
    /// The NHS England region's code (for example `Y56`).
    pub region: String,
    /// The ICB's ODS code (for example `QMJ`).
    pub icb: String,
    /// Active practices in the ICB, by the national estate.
    pub practices: usize,
    /// Those a halt in force for the feature covers.
    pub halted: usize,
    /// The halts in force covering any of them, `commands/{command}`, oldest first: at most
    /// [`HALTS_NAMED`].
    pub halts: Vec<String>,
    /// How many halts in force cover any of them.
    pub halt_count: usize,
}

/// A feature's rows, by region then ICB.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FeatureTable {
    /// `features/{feature}`.
    pub feature: String,
    /// Every ICB with an active practice, by region then ICB code.
    pub rows: Vec<IcbRow>,
}

/// The tables of every feature with a halt in force or not, for the estate and the commands in
/// force given. Costs the estate's practices times the halts in force.
pub fn tables<'a>(
    estate: &Estate,
    features: impl IntoIterator<Item = &'a FeatureKey>,
    in_force: impl IntoIterator<Item = &'a Arc<Command>>,
) -> Vec<FeatureTable> {
    let mut halts: BTreeMap<&FeatureKey, Vec<&Command>> = BTreeMap::new();
    for c in in_force {
        if matches!(c.action, Action::Halt { .. }) {
            halts.entry(&c.feature).or_default().push(c);
        }
    }
    features
        .into_iter()
        .map(|feature| {
            let halts = halts.get(feature).map(Vec::as_slice).unwrap_or_default();
            FeatureTable {
                feature: format!("features/{feature}"),
                rows: rows(estate, halts),
            }
        })
        .collect()
}

fn rows(estate: &Estate, halts: &[&Command]) -> Vec<IcbRow> {
    #[derive(Default)]
    struct Tally {
        practices: usize,
        halted: usize,
        halts: BTreeSet<u64>,
    }
    let mut by_icb: BTreeMap<(&RegionCode, &IcbCode), Tally> = BTreeMap::new();
    for p in estate.practices().filter(|p| p.status == PracticeStatus::Active) {
        let tally = by_icb.entry((&p.region, &p.icb)).or_default();
        tally.practices += 1;
        let mut covered = false;
        for h in halts {
            if let Action::Halt { scope } = &h.action
                && scope.covers(p)
            {
                covered = true;
                tally.halts.insert(h.sequence);
            }
        }
        tally.halted += usize::from(covered);
    }
    let names: BTreeMap<u64, String> = halts
        .iter()
        .map(|h| (h.sequence, format!("commands/{}", h.id)))
        .collect();
    by_icb
        .into_iter()
        .map(|((region, icb), t)| IcbRow {
            region: region.to_string(),
            icb: icb.to_string(),
            practices: t.practices,
            halted: t.halted,
            halt_count: t.halts.len(),
            halts: t
                .halts
                .iter()
                .take(HALTS_NAMED)
                .filter_map(|s| names.get(s).cloned())
                .collect(),
        })
        .collect()
}

/// The log a table is of: its last sequence and the history hash there.
pub type Log = (u64, Option<HistoryHash>);

/// The tables as last worked out, and the log they are of.
#[derive(Debug, Default)]
pub struct Cache(Mutex<Option<(Log, Arc<Vec<FeatureTable>>)>>);

impl Cache {
    /// The tables of `log`: the kept ones if they are of it, else `work()`'s, kept.
    /// The lock is held while `work` runs, so requests that arrive meanwhile wait for its
    /// tables rather than work them out again: call it off the async runtime.
    pub fn get_or(&self, log: Log, work: impl FnOnce() -> Vec<FeatureTable>) -> Arc<Vec<FeatureTable>> {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((v, tables)) = &*kept
            && *v == log
        {
            return tables.clone();
        }
        let tables = Arc::new(work());
        *kept = Some((log, tables.clone()));
        tables
    }
}
