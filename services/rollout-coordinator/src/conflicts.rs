//! Conflicts: the go-lives and resumes a supplier rejected (under a declared change freeze),
//! and whether each has since been resolved at that supplier. Pure: what it judges from is
//! read from the store by `rejections.rs`, and the model keeps it (`model.rs`).
//!
//! - A rejected **resume** is resolved once every halt it named is lifted at its supplier:
//!   another resume naming the halt, addressed to that supplier or to all, applied there (its
//!   redelivery, or a later resume).
//! - A rejected **go-live** is resolved once a later go-live of the same feature that covers
//!   its scope there (the same scope, a national one, one of that supplier's whole estate, or a
//!   practice list naming all it listed), addressed to that supplier or to all, is applied
//!   there (its redelivery, or a later go-live that superseded it).
//!
//! "Applied there" is: at or below the sequence the supplier acknowledged, and not rejected by
//! it. The command that completes the resolution is its `resolved_by`. A resolution is for
//! good: nothing after it can undo what the resolving command did there except a new halt,
//! which is not a conflict.
//!
//! Memory follows the rejections, which are few (a freeze's worth): per rejection, its command
//! id and what resolved it; while open, also the halts still to lift or the scope wanted, and
//! the dispatched commands that would resolve it once applied there (offered as they are
//! dispatched, and only those that qualify, so at most the feature's resumes naming those
//! halts, or its go-lives of that scope, since the rejection).

use std::collections::{BTreeMap, BTreeSet};

use rollout_core::{Action, Command, CommandId, FeatureKey, Scope, SupplierId};

/// One supplier's rejection of one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The rejected command.
    pub command: CommandId,
    /// The command that resolved it, once resolved.
    pub resolved_by: Option<CommandId>,
    /// While unresolved: what would resolve it.
    open: Option<Open>,
}

/// What an unresolved rejection waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Open {
    feature: FeatureKey,
    /// The rejected command's sequence.
    sequence: u64,
    need: Need,
    /// Dispatched commands that would resolve it (or, for a resume, lift some of its halts)
    /// once applied at the supplier, by sequence; for a resume, with the halts each names.
    candidates: BTreeMap<u64, (CommandId, Vec<CommandId>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Need {
    /// The halts the rejected resume named that are not yet lifted at the supplier.
    Lift(BTreeSet<CommandId>),
    /// A go-live of this scope (or national).
    GoLive(Scope),
}

impl Rejection {
    /// The rejection of `cmd` (a dispatched resume or go-live). `liftable` are, for a resume,
    /// the halts it names that it could lift: dispatched halts of its feature issued before
    /// it. A resume that could lift none changed nothing where it was rejected, so it is
    /// resolved at once, by itself. `None` for any other action: a supplier never rejects a
    /// halt or a definition.
    pub fn of(cmd: &Command, liftable: BTreeSet<CommandId>) -> Option<Rejection> {
        let need = match &cmd.action {
            Action::Resume { .. } if liftable.is_empty() => {
                return Some(Rejection {
                    command: cmd.id.clone(),
                    resolved_by: Some(cmd.id.clone()),
                    open: None,
                });
            }
            Action::Resume { .. } => Need::Lift(liftable),
            Action::GoLive { scope, .. } => Need::GoLive(scope.clone()),
            Action::Halt { .. } | Action::CreateFeature(_) => return None,
        };
        Some(Rejection {
            command: cmd.id.clone(),
            resolved_by: None,
            open: Some(Open {
                feature: cmd.feature.clone(),
                sequence: cmd.sequence,
                need,
                candidates: BTreeMap::new(),
            }),
        })
    }

    /// Whether it is still unresolved (a conflict).
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Takes `c`, a dispatched command, as a candidate if it would resolve this rejection at
    /// `supplier` (or lift some of its halts) once applied there.
    pub fn offer(&mut self, supplier: &SupplierId, c: &Command) {
        let Some(open) = &mut self.open else { return };
        if c.sequence == 0 || c.id == self.command || c.feature != open.feature || !c.addressed_to(supplier) {
            return;
        }
        match (&open.need, &c.action) {
            (Need::Lift(wanted), Action::Resume { halts }) => {
                let names: Vec<CommandId> = halts.iter().filter(|h| wanted.contains(*h)).cloned().collect();
                if !names.is_empty() {
                    open.candidates.insert(c.sequence, (c.id.clone(), names));
                }
            }
            (Need::GoLive(wanted), Action::GoLive { scope, .. })
                if c.sequence > open.sequence && covers_at(supplier, scope, wanted) =>
            {
                open.candidates.insert(c.sequence, (c.id.clone(), Vec::new()));
            }
            _ => {}
        }
    }

    /// Judges the candidates the supplier has answered: `acked` is the highest sequence it
    /// acknowledged, `rejected` the sequences it rejected. Returns whether this resolved it.
    pub fn judge(&mut self, acked: u64, rejected: &BTreeSet<u64>) -> bool {
        let Some(open) = &mut self.open else {
            return false;
        };
        while let Some(entry) = open.candidates.first_entry() {
            if *entry.key() > acked {
                break;
            }
            let (sequence, (id, names)) = entry.remove_entry();
            if rejected.contains(&sequence) {
                continue;
            }
            let done = match &mut open.need {
                Need::Lift(wanted) => {
                    for h in &names {
                        wanted.remove(h);
                    }
                    wanted.is_empty()
                }
                Need::GoLive(_) => true,
            };
            if done {
                self.resolved_by = Some(id);
                self.open = None;
                return true;
            }
        }
        false
    }
}

/// Whether a go-live of `scope` turns on, at `supplier`, every practice a go-live of `wanted`
/// would: the same scope, a national one, one of that supplier's whole estate, or a practice
/// list naming every practice `wanted` lists. (Which practices an area holds is the estate's
/// to say and changes; an area is covered only by itself or by a wider scope above.)
fn covers_at(supplier: &SupplierId, scope: &Scope, wanted: &Scope) -> bool {
    match (scope, wanted) {
        (Scope::National, _) => true,
        (Scope::Supplier(s), _) if s == supplier => true,
        (Scope::Practices(have), Scope::Practices(want)) => want.is_subset(have),
        _ => scope == wanted,
    }
}

/// Every supplier's rejections, by supplier and sequence.
#[derive(Debug, Clone, Default)]
pub struct Conflicts {
    by_supplier: BTreeMap<SupplierId, BTreeMap<u64, Rejection>>,
}

impl Conflicts {
    /// Files `supplier`'s rejection at `sequence`, unless it is already filed (then what is
    /// known of it stands).
    pub fn insert(&mut self, supplier: SupplierId, sequence: u64, rejection: Rejection) {
        self.by_supplier
            .entry(supplier)
            .or_default()
            .entry(sequence)
            .or_insert(rejection);
    }

    /// Forgets `supplier`'s rejection at `sequence` (it applied the command after all).
    pub fn remove(&mut self, supplier: &SupplierId, sequence: u64) {
        if let Some(r) = self.by_supplier.get_mut(supplier) {
            r.remove(&sequence);
        }
    }

    /// Offers a dispatched command to every unresolved rejection it could resolve.
    pub fn offer(&mut self, c: &Command) {
        for (supplier, rejections) in &mut self.by_supplier {
            for r in rejections.values_mut() {
                r.offer(supplier, c);
            }
        }
    }

    /// Judges `supplier`'s unresolved rejections against what it has answered (see
    /// [`Rejection::judge`]). Returns the rejected sequences this resolved.
    pub fn judge(&mut self, supplier: &SupplierId, acked: u64, rejected: &BTreeSet<u64>) -> Vec<u64> {
        let Some(rejections) = self.by_supplier.get_mut(supplier) else {
            return Vec::new();
        };
        rejections
            .iter_mut()
            .filter_map(|(sequence, r)| r.judge(acked, rejected).then_some(*sequence))
            .collect()
    }

    /// The suppliers with rejections filed.
    pub fn suppliers(&self) -> impl Iterator<Item = &SupplierId> {
        self.by_supplier.keys()
    }

    /// `supplier`'s rejection at `sequence`, if it rejected it.
    pub fn get(&self, supplier: &SupplierId, sequence: u64) -> Option<&Rejection> {
        self.by_supplier.get(supplier)?.get(&sequence)
    }

    /// `supplier`'s unresolved rejections, in sequence order: (sequence, command).
    pub fn open_at(&self, supplier: &SupplierId) -> impl Iterator<Item = (u64, &CommandId)> {
        self.by_supplier
            .get(supplier)
            .into_iter()
            .flatten()
            .filter(|(_, r)| r.is_open())
            .map(|(s, r)| (*s, &r.command))
    }

    /// The suppliers whose rejection of the command at `sequence` is unresolved.
    pub fn unresolved(&self, sequence: u64) -> Vec<&SupplierId> {
        self.by_supplier
            .iter()
            .filter(|(_, r)| r.get(&sequence).is_some_and(Rejection::is_open))
            .map(|(s, _)| s)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::SystemTime};

    use rollout_core::OdsCode;

    use super::*;

    fn id(s: &str) -> CommandId {
        CommandId::parse(s).expect("id")
    }

    fn cmd(sequence: u64, name: &str, action: Action, to: Option<&str>) -> Command {
        Command {
            id: id(name),
            sequence,
            feature: FeatureKey::parse("f").expect("key"),
            action,
            reason: "r".into(),
            requester: "alice".into(),
            issued_at: SystemTime::UNIX_EPOCH,
            approved_by: vec![],
            redelivery_of: None,
            supplier: to.map(|s| SupplierId::parse(s).expect("supplier")),
        }
    }

    fn resume(sequence: u64, name: &str, halts: &[&str], to: Option<&str>) -> Command {
        let halts = halts.iter().map(|h| id(h)).collect();
        cmd(sequence, name, Action::Resume { halts }, to)
    }

    fn go_live(sequence: u64, name: &str, scope: Scope, to: Option<&str>) -> Command {
        let action = Action::GoLive {
            scope,
            effective_at: None,
        };
        cmd(sequence, name, action, to)
    }

    fn emis() -> SupplierId {
        SupplierId::parse("emis").expect("supplier")
    }

    fn region() -> rollout_core::RegionCode {
        rollout_core::RegionCode::parse_region("Y60").expect("region")
    }

    fn practices(codes: &[&str]) -> Scope {
        Scope::Practices(Arc::new(
            codes.iter().map(|c| OdsCode::parse(c).expect("ods")).collect(),
        ))
    }

    #[test]
    fn a_rejected_resume_is_resolved_once_every_halt_it_named_is_lifted_there() {
        let tpp = SupplierId::parse("tpp").expect("supplier");
        let r = resume(5, "r", &["h1", "h2"], None);
        let mut rejection = Rejection::of(&r, [id("h1"), id("h2")].into()).expect("resume");
        // Addressed elsewhere, or naming other halts: not candidates.
        rejection.offer(&tpp, &resume(6, "to-emis", &["h1", "h2"], Some("emis")));
        rejection.offer(&tpp, &resume(7, "other", &["h9"], None));
        rejection.offer(&tpp, &go_live(8, "g", Scope::National, None));
        rejection.offer(&tpp, &resume(9, "lifts-h1", &["h1"], None));
        rejection.offer(&tpp, &resume(10, "rejected-too", &["h2"], None));
        rejection.offer(&tpp, &resume(11, "redelivery", &["h1", "h2"], Some("tpp")));
        assert!(!rejection.judge(8, &BTreeSet::new()), "nothing answered yet");
        assert!(!rejection.judge(10, &[10].into()), "h1 lifted, h2 rejected again");
        assert!(rejection.is_open());
        assert!(rejection.judge(11, &[10].into()));
        assert_eq!(rejection.resolved_by, Some(id("redelivery")));
        assert!(!rejection.judge(100, &BTreeSet::new()), "resolved for good");
    }

    #[test]
    fn a_rejected_go_live_is_resolved_by_a_later_go_live_that_covers_its_scope_there() {
        let tpp = SupplierId::parse("tpp").expect("supplier");
        let g = go_live(3, "g", practices(&["A81001"]), None);
        let mut rejection = Rejection::of(&g, BTreeSet::new()).expect("go-live");
        rejection.offer(&tpp, &go_live(4, "other-scope", practices(&["B82001"]), None));
        rejection.offer(&tpp, &resume(5, "resume", &["h"], None));
        rejection.offer(&tpp, &go_live(6, "national-emis", Scope::National, Some("emis")));
        assert!(!rejection.judge(6, &BTreeSet::new()));
        rejection.offer(&tpp, &go_live(7, "same-scope", practices(&["A81001"]), None));
        assert!(rejection.judge(7, &BTreeSet::new()));
        assert_eq!(rejection.resolved_by, Some(id("same-scope")));

        let mut wider = Rejection::of(&g, BTreeSet::new()).expect("go-live");
        wider.offer(&tpp, &go_live(9, "emis-estate", Scope::Supplier(emis()), None));
        wider.offer(&tpp, &go_live(10, "fewer", practices(&["A81002"]), None));
        assert!(!wider.judge(10, &BTreeSet::new()), "another estate, another list");
        wider.offer(&tpp, &go_live(11, "more", practices(&["A81001", "A81002"]), None));
        assert!(
            wider.judge(11, &BTreeSet::new()),
            "a list naming every practice it listed"
        );
        assert_eq!(wider.resolved_by, Some(id("more")));
        let mut estate =
            Rejection::of(&go_live(3, "g", Scope::Region(region()), None), BTreeSet::new()).expect("go-live");
        estate.offer(
            &tpp,
            &go_live(12, "tpp-estate", Scope::Supplier(tpp.clone()), None),
        );
        assert!(
            estate.judge(12, &BTreeSet::new()),
            "the supplier's whole estate supersedes it"
        );

        let mut national = Rejection::of(&g, BTreeSet::new()).expect("go-live");
        national.offer(&tpp, &go_live(8, "national", Scope::National, Some("tpp")));
        assert!(national.judge(8, &BTreeSet::new()));
        assert_eq!(national.resolved_by, Some(id("national")));
    }

    #[test]
    fn conflicts_list_only_the_unresolved_per_supplier() {
        let (tpp, emis) = (
            SupplierId::parse("tpp").expect("supplier"),
            SupplierId::parse("emis").expect("supplier"),
        );
        let r = resume(4, "r", &["h"], None);
        let mut c = Conflicts::default();
        c.insert(
            tpp.clone(),
            4,
            Rejection::of(&r, [id("h")].into()).expect("resume"),
        );
        c.insert(
            emis.clone(),
            4,
            Rejection::of(&r, [id("h")].into()).expect("resume"),
        );
        c.offer(&resume(6, "redelivery", &["h"], Some("tpp")));
        assert_eq!(c.judge(&tpp, 6, &[4].into()), vec![4]);
        assert_eq!(c.judge(&emis, 6, &[4].into()), Vec::<u64>::new());
        assert_eq!(c.open_at(&tpp).count(), 0);
        assert_eq!(c.open_at(&emis).map(|(s, _)| s).collect::<Vec<_>>(), vec![4]);
        assert_eq!(c.unresolved(4), vec![&emis]);
        assert_eq!(
            c.get(&tpp, 4).and_then(|r| r.resolved_by.clone()),
            Some(id("redelivery"))
        );
        let nothing = Rejection::of(&resume(9, "empty", &["gone"], None), BTreeSet::new()).expect("resume");
        assert_eq!(
            nothing.resolved_by,
            Some(id("empty")),
            "lifted nothing: resolved by itself"
        );
    }
}
