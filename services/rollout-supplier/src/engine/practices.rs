//! The practices' writes: opt-outs set and withdrawn here, opt-outs installed from the
//! coordinator's national register, and estate imports, which hold the practices that joined
//! from another supplier until the register has answered for them.
//!
//! Every opt-out write gives its record the next opt-out change number (the serving state's
//! `opt_out_change` plus one) in the same transaction, so the coordinator can read every
//! change after the last it holds (ListOptOutChanges). The number is as safe as the stored
//! version it travels with: a replica that computed it from an older state fails the version's
//! compare-and-set and writes nothing.

use std::{collections::BTreeSet, sync::Arc};

use rollout_core::{FeatureKey, OdsCode, Practice, audit::AuditDraft, register::supersedes};
use rollout_net::ApiError;
use rollout_store::supplier::{EstateChange, OptOutRecord, Origin, RequestRecord, Withdrawal};
use tracing::info;

use super::{Engine, Serving};

/// Most practices a release audit event names (the rest are counted).
const NAMED_IN_AUDIT: usize = 20;

/// What [`Engine::import_opt_outs`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Imported {
    /// Records installed.
    pub installed: usize,
    /// Records passed over: this supplier holds one as new or newer.
    pub kept: usize,
    /// Held practices let go.
    pub released: usize,
    /// The latest opt-out change number afterwards.
    pub latest_change: u64,
}

impl Engine {
    /// Stores an opt-out change (new, updated or withdrawn) made here on the practice's
    /// instruction, at the next opt-out change number. `make` builds the record from the
    /// existing one (or refuses) under the write lock; `respond` encodes the answer for the
    /// idempotency record `request` (its caller, id and fingerprint; the response is filled in
    /// here).
    pub async fn put_opt_out(
        self: &Arc<Self>,
        key: (OdsCode, FeatureKey),
        make: impl FnOnce(Option<&OptOutRecord>) -> Result<OptOutRecord, ApiError>,
        request: Option<RequestRecord>,
        respond: impl FnOnce(&OptOutRecord) -> Vec<u8>,
        audit: AuditDraft,
    ) -> Result<OptOutRecord, ApiError> {
        let w = self.begin().await?;
        let current = &w.current;
        let record = OptOutRecord {
            change: current.opt_out_change + 1,
            origin: Origin::Recorded,
            ..make(current.opt_outs.get(&key))?
        };
        let request = request.map(|r| RequestRecord {
            response: respond(&record),
            ..r
        });
        let mut opt_outs = (*current.opt_outs).clone();
        opt_outs.insert(key.clone(), record.clone());
        let next = Serving {
            opt_outs: Arc::new(opt_outs),
            opt_out_change: record.change,
            ..(**current).clone()
        };
        let what = if record.withdrawal.is_some() {
            "withdrawn"
        } else {
            "recorded"
        };
        let version = current.store_version + 1;
        let store = Arc::clone(&self.store);
        let stored = record.clone();
        let write = async move {
            store.put_opt_out(&stored, version, request, audit).await?;
            info!(practice = %key.0, feature = %key.1, change = stored.change, "opt-out {what}");
            Ok(())
        };
        self.commit(w, write, next, format!("opt-out {what}"), "storing an opt-out")
            .await?;
        Ok(record)
    }

    /// Installs records from the coordinator's national register (each `origin` restored or
    /// transferred, the rest unchanged) and lets go of the held practices `released`, in one
    /// transaction with one audit event per record installed (and one for the release). A
    /// record is installed only for a practice of this supplier's estate, and only where it
    /// holds none for its practice and feature, or an older one (by update time): nothing the
    /// practice said here since is undone; the others are passed over (`kept`).
    /// `audit` gives the caller, method and request of the events. Writes nothing when
    /// nothing changes.
    pub async fn import_opt_outs(
        self: &Arc<Self>,
        records: Vec<OptOutRecord>,
        released: Vec<OdsCode>,
        audit: AuditDraft,
    ) -> Result<Imported, ApiError> {
        let w = self.begin().await?;
        let current = &w.current;
        let offered = records.len();
        let mut opt_outs = (*current.opt_outs).clone();
        let mut change = current.opt_out_change;
        let mut installed = Vec::new();
        let mut events = Vec::new();
        for record in records {
            let key = (record.opt_out.practice, record.opt_out.feature.clone());
            // Only this supplier's practices (a practice that moved away is the other
            // supplier's to hold), and only where the copy is the practice's newer word.
            if current.estate.get(&key.0).is_none()
                || !supersedes(record.updated_at, opt_outs.get(&key).map(|r| r.updated_at))
            {
                continue;
            }
            change += 1;
            let record = OptOutRecord { change, ..record };
            events.push(install_event(&audit, &record));
            opt_outs.insert(key, record.clone());
            installed.push(record);
        }
        let mut held = (*current.held).clone();
        let released: Vec<OdsCode> = released.into_iter().filter(|o| held.remove(o)).collect();
        let imported = |latest_change| Imported {
            installed: installed.len(),
            kept: offered - installed.len(),
            released: released.len(),
            latest_change,
        };
        if installed.is_empty() && released.is_empty() {
            return Ok(imported(current.opt_out_change));
        }
        if !released.is_empty() {
            events.push(release_event(&audit, &self.supplier, &released));
        }
        let next = Serving {
            opt_outs: Arc::new(opt_outs),
            opt_out_change: change,
            held: Arc::new(held),
            ..(**current).clone()
        };
        let done = imported(change);
        let version = current.store_version + 1;
        let store = Arc::clone(&self.store);
        let write = async move {
            store
                .import_opt_outs(&installed, &released, version, events)
                .await?;
            info!(
                installed = installed.len(),
                released = released.len(),
                latest_change = change,
                "opt-outs imported from the national register"
            );
            Ok(())
        };
        self.commit(
            w,
            write,
            next,
            "opt-outs from the national register".into(),
            "installing opt-outs from the national register",
        )
        .await?;
        Ok(done)
    }

    /// Makes the estate exactly `practices` (this supplier's only), keeping opt-outs and
    /// history. Practices new to a supplier that already had an estate are held (every feature
    /// DISABLED, awaiting the opt-out check) until the coordinator has sent the national
    /// register's records for them; practices gone from the estate are no longer held.
    pub async fn import_estate(
        self: &Arc<Self>,
        practices: Vec<Practice>,
        audit: AuditDraft,
    ) -> Result<EstateChange, ApiError> {
        let w = self.begin().await?;
        let current = &w.current;
        if current.estate.practices().eq(practices.iter()) {
            // Nothing to change (another replica, or an earlier start, imported the same files).
            return Ok(EstateChange::default());
        }
        let joined = rollout_core::register::joined(&current.estate, &practices);
        let estate: rollout_core::Estate = practices.iter().cloned().collect();
        let held: BTreeSet<OdsCode> = current
            .held
            .iter()
            .chain(&joined)
            .filter(|o| estate.get(o).is_some())
            .copied()
            .collect();
        let hold: Vec<OdsCode> = joined.into_iter().collect();
        let version = current.store_version + 1;
        let next = Serving {
            estate: Arc::new(estate),
            held: Arc::new(held),
            ..(**current).clone()
        };
        let store = Arc::clone(&self.store);
        let write = async move {
            let change = store.import_estate(&practices, &hold, version, audit).await?;
            if !hold.is_empty() {
                info!(
                    held = hold.len(),
                    "practices joined from another supplier: held off until the coordinator has sent the national register's opt-outs for them"
                );
            }
            Ok(change)
        };
        self.commit(w, write, next, "estate imported".into(), "importing the estate")
            .await
    }
}

/// The audit event of one record installed from the register.
fn install_event(audit: &AuditDraft, record: &OptOutRecord) -> AuditDraft {
    let o = &record.opt_out;
    let how = match &record.origin {
        Origin::Restored(from) => {
            format!(
                "restored from the national register after this supplier's store was lost (reported by suppliers/{from})"
            )
        }
        Origin::Transferred(from) => format!("transferred with the practice from suppliers/{from}"),
        Origin::Recorded => "installed from the national register".to_owned(),
    };
    let state = if record.withdrawal.is_some() {
        "withdrawn opt-out"
    } else {
        "opt-out"
    };
    AuditDraft {
        target: format!(
            "{}/optOut",
            rollout_net::wire::practice_feature_resource(&o.practice, &o.feature)
        ),
        reason: format!(
            "{how}: {state} recorded by {} ({:?})",
            o.recorded_by,
            rollout_core::quoted(&o.reason)
        ),
        ..audit.clone()
    }
}

/// The audit event of held practices let go after the register's check.
fn release_event(
    audit: &AuditDraft,
    supplier: &rollout_core::SupplierId,
    released: &[OdsCode],
) -> AuditDraft {
    let mut named: Vec<String> = released
        .iter()
        .take(NAMED_IN_AUDIT)
        .map(ToString::to_string)
        .collect();
    if released.len() > NAMED_IN_AUDIT {
        named.push(format!("and {} more", released.len() - NAMED_IN_AUDIT));
    }
    AuditDraft {
        target: format!("suppliers/{supplier}"),
        reason: format!(
            "{} held practices released after the national opt-out register's check: {}",
            released.len(),
            named.join(", ")
        ),
        ..audit.clone()
    }
}

/// An opt-out record as withdrawn now.
pub fn withdrawn(existing: &OptOutRecord, by: &str, reason: String) -> OptOutRecord {
    let now = rollout_core::audit::now();
    OptOutRecord {
        updated_at: rollout_core::register::next_update(now, Some(existing.updated_at)),
        withdrawal: Some(Withdrawal {
            by: by.to_owned(),
            at: now,
            reason,
        }),
        ..existing.clone()
    }
}
