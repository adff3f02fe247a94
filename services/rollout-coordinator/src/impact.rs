//! Which practices at which suppliers a command covers, from the national estate: pure.

use std::collections::BTreeMap;

use rollout_core::{Action, Estate, PracticeStatus, Scope, SupplierId};
use rollout_proto::v1 as pb;

use crate::model::Model;

/// Which practices at which suppliers the scopes cover, from the national estate.
pub fn impact(estate: &Estate, scopes: &[&Scope]) -> pb::Impact {
    let mut per: BTreeMap<&SupplierId, i32> = BTreeMap::new();
    let mut total = 0;
    for p in estate.practices() {
        if p.status == PracticeStatus::Active && scopes.iter().any(|s| s.covers(p)) {
            total += 1;
            *per.entry(&p.supplier).or_default() += 1;
        }
    }
    let mut unknown: Vec<String> = scopes
        .iter()
        .filter_map(|s| match s {
            Scope::Practices(set) => Some(
                set.iter()
                    .filter(|o| estate.get(o).is_none())
                    .map(ToString::to_string),
            ),
            _ => None,
        })
        .flatten()
        .collect();
    unknown.sort();
    unknown.dedup();
    pb::Impact {
        practices: total,
        suppliers: per
            .into_iter()
            .map(|(s, n)| pb::impact::SupplierImpact {
                supplier: format!("suppliers/{s}"),
                practices: n,
                not_delivered: false,
            })
            .collect(),
        unknown_practices: unknown,
        not_delivered_practices: 0,
    }
}

/// The impact of a command's action (a resume's from the halts it names that are in force).
pub fn impact_of(estate: &Estate, m: &Model, action: &Action) -> pb::Impact {
    match action {
        Action::Halt { scope } | Action::GoLive { scope, .. } => impact(estate, &[scope]),
        Action::Resume { halts } => {
            let scopes: Vec<&Scope> = halts
                .iter()
                .filter_map(|h| match m.in_force().get(h).map(|c| &c.action) {
                    Some(Action::Halt { scope }) => Some(scope),
                    _ => None,
                })
                .collect();
            impact(estate, &scopes)
        }
        Action::CreateFeature(_) => pb::Impact::default(),
    }
}

/// The impact of a command addressed to `supplier` alone (a redelivery): `scopes` counted over
/// that supplier's practices only. Listed codes the estate does not know are reported as for
/// any command (the estate cannot say whose they are).
pub fn impact_at(estate: &Estate, scopes: &[&Scope], supplier: &SupplierId) -> pb::Impact {
    let mut all = impact(estate, scopes);
    let name = format!("suppliers/{supplier}");
    all.suppliers.retain(|s| s.supplier == name);
    all.practices = all.suppliers.iter().map(|s| s.practices).sum();
    all
}
