//! Which practices at which suppliers a command covers, from the national estate, and which of
//! those suppliers the coordinator does not deliver to: pure.

use std::collections::BTreeMap;

use rollout_core::{Action, Estate, PracticeStatus, Scope, SupplierId};
use rollout_proto::v1 as pb;

use crate::model::Model;

/// Which practices at which suppliers the scopes cover, from the national estate: active
/// practices in scope in all and per supplier (in supplier order), and the listed codes the
/// estate does not know (sorted, each once); each supplier of the estate that is not among
/// `configured` (the coordinator has no endpoint for it, so a command never reaches it) marked
/// `not_delivered`, and its practices summed in `not_delivered_practices`.
pub fn impact_delivered(estate: &Estate, configured: &[SupplierId], scopes: &[&Scope]) -> pb::Impact {
    counted(estate, scopes, |s| configured.contains(s))
}

fn counted(estate: &Estate, scopes: &[&Scope], delivered: impl Fn(&SupplierId) -> bool) -> pb::Impact {
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
    let suppliers: Vec<pb::impact::SupplierImpact> = per
        .into_iter()
        .map(|(s, n)| pb::impact::SupplierImpact {
            supplier: format!("suppliers/{s}"),
            practices: n,
            not_delivered: !delivered(s),
        })
        .collect();
    pb::Impact {
        practices: total,
        not_delivered_practices: not_delivered(&suppliers),
        suppliers,
        unknown_practices: unknown,
    }
}

/// The practices of the suppliers marked `not_delivered`.
fn not_delivered(suppliers: &[pb::impact::SupplierImpact]) -> i32 {
    suppliers
        .iter()
        .filter(|s| s.not_delivered)
        .map(|s| s.practices)
        .sum()
}

/// The impact of a command's action (a resume's from the halts it names that are in force),
/// with the suppliers not among `configured` marked (see [`impact_delivered`]).
pub fn impact_of(estate: &Estate, configured: &[SupplierId], m: &Model, action: &Action) -> pb::Impact {
    match action {
        Action::Halt { scope } | Action::GoLive { scope, .. } => {
            impact_delivered(estate, configured, &[scope])
        }
        Action::Resume { halts } => {
            let scopes: Vec<&Scope> = halts
                .iter()
                .filter_map(|h| match m.in_force().get(h).map(|c| &c.action) {
                    Some(Action::Halt { scope }) => Some(scope),
                    _ => None,
                })
                .collect();
            impact_delivered(estate, configured, &scopes)
        }
        Action::CreateFeature(_) => pb::Impact::default(),
    }
}

/// The impact of a command addressed to `supplier` alone (a redelivery): `scopes` counted over
/// that supplier's practices only, marked as [`impact_delivered`] marks them. Listed codes the
/// estate does not know are reported as for any command (the estate cannot say whose they
/// are).
pub fn impact_at(
    estate: &Estate,
    configured: &[SupplierId],
    scopes: &[&Scope],
    supplier: &SupplierId,
) -> pb::Impact {
    let mut all = impact_delivered(estate, configured, scopes);
    let name = format!("suppliers/{supplier}");
    all.suppliers.retain(|s| s.supplier == name);
    all.practices = all.suppliers.iter().map(|s| s.practices).sum();
    all.not_delivered_practices = not_delivered(&all.suppliers);
    all
}

#[cfg(test)]
pub(crate) mod tests {
    use rollout_core::{IcbCode, OdsCode, Practice, RegionCode, SubIcbCode};

    use super::*;

    /// An estate practice in region Y56 and sub-ICB 07K (for the pure modules' tests).
    pub(crate) fn practice(ods: &str, supplier: &str, icb: &str, status: PracticeStatus) -> Practice {
        Practice {
            ods: OdsCode::parse(ods).expect("valid"),
            name: ods.into(),
            region: RegionCode::parse_region("Y56").expect("valid"),
            icb: IcbCode::parse(icb).expect("valid"),
            sub_icb: SubIcbCode::parse("07K").expect("valid"),
            supplier: SupplierId::parse(supplier).expect("valid"),
            status,
        }
    }

    /// emis 2 active, tpp 1 active, microtest 3 active and 1 closed; QWE holds one of each.
    fn estate() -> Estate {
        [
            practice("A81001", "emis", "QWE", PracticeStatus::Active),
            practice("A81002", "emis", "QMJ", PracticeStatus::Active),
            practice("A81003", "tpp", "QMJ", PracticeStatus::Active),
            practice("A81004", "microtest", "QWE", PracticeStatus::Active),
            practice("A81005", "microtest", "QMJ", PracticeStatus::Active),
            practice("A81006", "microtest", "QMJ", PracticeStatus::Active),
            practice("A81007", "microtest", "QMJ", PracticeStatus::Closed),
        ]
        .into_iter()
        .collect()
    }

    fn ids(names: &[&str]) -> Vec<SupplierId> {
        names
            .iter()
            .map(|s| SupplierId::parse(s).expect("valid"))
            .collect()
    }

    fn per(i: &pb::Impact) -> Vec<(&str, i32, bool)> {
        i.suppliers
            .iter()
            .map(|s| (s.supplier.as_str(), s.practices, s.not_delivered))
            .collect()
    }

    #[test]
    fn a_supplier_of_the_estate_without_an_endpoint_is_marked_not_delivered() {
        let configured = ids(&["emis", "tpp", "cegedim"]);
        let national = impact_delivered(&estate(), &configured, &[&Scope::National]);
        assert_eq!(national.practices, 6);
        assert_eq!(
            per(&national),
            [
                ("suppliers/emis", 2, false),
                ("suppliers/microtest", 3, true),
                ("suppliers/tpp", 1, false),
            ]
        );
        assert_eq!(
            national.not_delivered_practices, 3,
            "the closed one is not counted"
        );

        let qwe = Scope::Icb(IcbCode::parse("QWE").expect("valid"));
        let icb = impact_delivered(&estate(), &configured, &[&qwe]);
        assert_eq!((icb.practices, icb.not_delivered_practices), (2, 1));

        let everyone = impact_delivered(
            &estate(),
            &ids(&["emis", "tpp", "microtest"]),
            &[&Scope::National],
        );
        assert_eq!(everyone.not_delivered_practices, 0);
        assert!(everyone.suppliers.iter().all(|s| !s.not_delivered));
    }

    #[test]
    fn a_command_for_one_supplier_counts_and_marks_that_supplier_only() {
        let configured = ids(&["emis", "tpp"]);
        let microtest = SupplierId::parse("microtest").expect("valid");
        let at = impact_at(&estate(), &configured, &[&Scope::National], &microtest);
        assert_eq!(per(&at), [("suppliers/microtest", 3, true)]);
        assert_eq!((at.practices, at.not_delivered_practices), (3, 3));
        let emis = SupplierId::parse("emis").expect("valid");
        let at = impact_at(&estate(), &configured, &[&Scope::National], &emis);
        assert_eq!((at.practices, at.not_delivered_practices), (2, 0));
    }
}
