//! The scope index of one feature's rules in force ([`FeatureRules`]): each rule filed under
//! the keys of its scope, so that evaluating a practice looks up six buckets, never every rule.

use std::{
    collections::{BTreeMap, HashMap, hash_map::Entry},
    sync::Arc,
};

use super::{FeatureDef, Rule};
use crate::{
    id::{CommandId, IcbCode, OdsCode, RegionCode, SubIcbCode, SupplierId},
    scope::{Practice, Scope},
};

/// Where a scope's rules are filed in the index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ScopeKey {
    National,
    Supplier(SupplierId),
    Region(RegionCode),
    Icb(IcbCode),
    SubIcb(SubIcbCode),
    Practice(OdsCode),
}

impl ScopeKey {
    /// The index keys a scope is filed under: one, or one per listed practice.
    fn of(scope: &Scope) -> Vec<ScopeKey> {
        match scope {
            Scope::National => vec![ScopeKey::National],
            Scope::Supplier(s) => vec![ScopeKey::Supplier(s.clone())],
            Scope::Region(r) => vec![ScopeKey::Region(*r)],
            Scope::Icb(i) => vec![ScopeKey::Icb(*i)],
            Scope::SubIcb(s) => vec![ScopeKey::SubIcb(*s)],
            Scope::Practices(set) => set.iter().map(|p| ScopeKey::Practice(*p)).collect(),
        }
    }
}

/// One feature's definition and its rules in force, indexed by scope.
#[derive(Debug, Clone)]
pub struct FeatureRules {
    /// The definition.
    pub def: FeatureDef,
    /// The CreateFeature command that defined it: (sequence, command id).
    pub defined_by: (u64, CommandId),
    /// Every go-live and active halt, by sequence. Shared with the index, and between the
    /// copies of the book a write makes, so neither copies a rule's scope.
    rules: BTreeMap<u64, Arc<Rule>>,
    /// The rules in `rules` by the scope key that files them, each list in sequence order: a
    /// read follows them without a lookup by sequence.
    index: FastMap<ScopeKey, Vec<Arc<Rule>>>,
}

/// A hash map for the lookups on the read path (keys come from the rule book and the estate):
/// foldhash, several times faster than the default SipHash on these short keys.
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

impl FeatureRules {
    pub(super) fn new(def: FeatureDef, defined_by: (u64, CommandId)) -> Self {
        FeatureRules {
            def,
            defined_by,
            rules: BTreeMap::new(),
            index: FastMap::default(),
        }
    }

    /// The rule in force at `sequence`, if any.
    pub(super) fn rule_at(&self, sequence: u64) -> Option<&Rule> {
        self.rules.get(&sequence).map(|r| &**r)
    }

    /// Every rule in force (go-lives and active halts), in sequence order.
    pub fn rules(&self) -> impl ExactSizeIterator<Item = &Rule> {
        self.rules.values().map(|r| &**r)
    }

    pub(super) fn push(&mut self, rule: Rule) {
        let rule = Arc::new(rule);
        for key in ScopeKey::of(rule.scope()) {
            self.index.entry(key).or_default().push(Arc::clone(&rule));
        }
        self.rules.insert(rule.sequence, rule);
    }

    /// Retires the rules at `sequences`: they leave the book and the index, scope and all. Each
    /// index bucket they were filed under is filtered once, however many of them it held (a
    /// resume lifting a hundred practice-list halts touches each practice's bucket once).
    pub(super) fn retire(&mut self, sequences: &[u64]) -> Vec<Arc<Rule>> {
        let retired: Vec<Arc<Rule>> = sequences.iter().filter_map(|s| self.rules.remove(s)).collect();
        let gone: std::collections::HashSet<u64> = retired.iter().map(|r| r.sequence).collect();
        let keys: std::collections::HashSet<ScopeKey> =
            retired.iter().flat_map(|r| ScopeKey::of(r.scope())).collect();
        for key in keys {
            if let Entry::Occupied(mut bucket) = self.index.entry(key) {
                bucket.get_mut().retain(|r| !gone.contains(&r.sequence));
                if bucket.get().is_empty() {
                    bucket.remove();
                }
            }
        }
        retired
    }

    /// Calls `f` with every rule in force whose scope covers the practice. Looks at six index
    /// buckets, never at every rule; order is by bucket, not by sequence.
    pub fn for_each_covering<'a>(&'a self, p: &Practice, mut f: impl FnMut(&'a Rule)) {
        let keys = [
            ScopeKey::National,
            ScopeKey::Supplier(p.supplier.clone()),
            ScopeKey::Region(p.region),
            ScopeKey::Icb(p.icb),
            ScopeKey::SubIcb(p.sub_icb),
            ScopeKey::Practice(p.ods),
        ];
        for key in &keys {
            if let Some(list) = self.index.get(key) {
                for rule in list {
                    f(rule);
                }
            }
        }
    }
}
