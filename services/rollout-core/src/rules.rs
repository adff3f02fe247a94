//! Feature definitions, commands, and the rule book that applies them in sequence order.
//!
//! The rule book is what a supplier serves from: every feature definition and every go-live and
//! halt, indexed by scope so that evaluating one practice looks only at the rules that could
//! cover it (see [`crate::eval`]).

use std::{
    collections::{HashMap, hash_map::Entry},
    time::{Duration, SystemTime},
};

use crate::{
    id::{CommandId, FeatureKey, IcbCode, OdsCode, RegionCode, SubIcbCode, SupplierId},
    scope::{Practice, Scope},
};

/// Shortest control TTL a FAIL_CLOSED feature may declare.
pub const MIN_CONTROL_TTL: Duration = Duration::from_secs(10);
/// Longest control TTL a FAIL_CLOSED feature may declare.
pub const MAX_CONTROL_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most approvals a feature may require.
pub const MAX_APPROVALS: u32 = 5;
/// Longest reason text, in characters.
pub const MAX_REASON_CHARS: usize = 1_000;

/// What a supplier serves when it is out of contact with the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailMode {
    /// Keep serving the last applied state.
    Static,
    /// Turn the feature off everywhere once the control TTL has passed without contact.
    Closed {
        /// How long without contact is tolerated.
        ttl: Duration,
    },
}

/// A feature definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureDef {
    /// The feature key.
    pub key: FeatureKey,
    /// Free text for operators.
    pub description: String,
    /// Behaviour when out of contact.
    pub fail_mode: FailMode,
    /// Approvals (besides the requester) a resume or go-live needs.
    pub approvals_required: u32,
}

/// Why a feature definition is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeatureDefError {
    /// The TTL is out of range.
    #[error("control TTL must be between {}s and {}s for a fail-closed feature", MIN_CONTROL_TTL.as_secs(), MAX_CONTROL_TTL.as_secs())]
    ControlTtl,
    /// The approval count is out of range.
    #[error("approvals required must be between 1 and {MAX_APPROVALS}")]
    Approvals,
}

impl FeatureDef {
    /// Checks the ranges of the definition's numbers.
    pub fn validate(&self) -> Result<(), FeatureDefError> {
        if let FailMode::Closed { ttl } = self.fail_mode
            && !(MIN_CONTROL_TTL..=MAX_CONTROL_TTL).contains(&ttl)
        {
            return Err(FeatureDefError::ControlTtl);
        }
        if !(1..=MAX_APPROVALS).contains(&self.approvals_required) {
            return Err(FeatureDefError::Approvals);
        }
        Ok(())
    }
}

/// What a command does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Define a feature at every supplier.
    CreateFeature(FeatureDef),
    /// Turn the feature off in scope until named by a resume.
    Halt {
        /// Practices halted.
        scope: Scope,
    },
    /// Lift exactly the named halts.
    Resume {
        /// The halt commands lifted.
        halts: Vec<CommandId>,
    },
    /// Turn the feature on in scope from `effective_at` (or at once).
    GoLive {
        /// Practices switched on.
        scope: Scope,
        /// When it takes effect; `None` is at once (the issue time).
        effective_at: Option<SystemTime>,
    },
}

impl Action {
    /// Whether turning access back on is what this action does (it needs approval, and a
    /// supplier change freeze may reject it).
    pub fn turns_on(&self) -> bool {
        matches!(self, Action::Resume { .. } | Action::GoLive { .. })
    }

    /// A short name: `create-feature`, `halt`, `resume`, `go-live`.
    pub fn name(&self) -> &'static str {
        match self {
            Action::CreateFeature(_) => "create-feature",
            Action::Halt { .. } => "halt",
            Action::Resume { .. } => "resume",
            Action::GoLive { .. } => "go-live",
        }
    }
}

/// A sequenced coordinator command, as a supplier receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The command id.
    pub id: CommandId,
    /// The global sequence number (from 1).
    pub sequence: u64,
    /// The feature acted on.
    pub feature: FeatureKey,
    /// What it does.
    pub action: Action,
    /// Why, in the requester's words.
    pub reason: String,
    /// Who issued it.
    pub requester: String,
    /// When it was issued.
    pub issued_at: SystemTime,
    /// Who approved it.
    pub approved_by: Vec<String>,
}

/// A go-live or halt rule held in the rule book.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The command that made the rule.
    pub command: CommandId,
    /// Its sequence number.
    pub sequence: u64,
    /// Go-live or halt, with its scope.
    pub kind: RuleKind,
    /// Who issued the command.
    pub issued_by: String,
    /// When it was issued.
    pub issued_at: SystemTime,
    /// Why.
    pub reason: String,
    /// Who approved it.
    pub approved_by: Vec<String>,
}

/// The two kinds of scoped rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleKind {
    /// On in scope from `effective_at`.
    GoLive {
        /// Covered practices.
        scope: Scope,
        /// When it takes effect.
        effective_at: SystemTime,
    },
    /// Off in scope while not lifted.
    Halt {
        /// Covered practices.
        scope: Scope,
        /// The resume that lifted it, if one has.
        lifted_by: Option<CommandId>,
    },
}

impl Rule {
    /// The scope the rule covers.
    pub fn scope(&self) -> &Scope {
        match &self.kind {
            RuleKind::GoLive { scope, .. } | RuleKind::Halt { scope, .. } => scope,
        }
    }
}

/// A practice's opt-out from a feature, recorded at its supplier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptOut {
    /// The practice.
    pub practice: OdsCode,
    /// The feature.
    pub feature: FeatureKey,
    /// The practice's reason.
    pub reason: String,
    /// Where the instruction came from.
    pub source: String,
    /// The identity that recorded it.
    pub recorded_by: String,
    /// When it was recorded.
    pub recorded_at: SystemTime,
}

/// The outcome of applying a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied.
    Applied,
    /// Refused with a reason (a change freeze); the sequence still advanced.
    Rejected(String),
}

/// Why a command cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The sequence is not the next one.
    #[error("command sequence {got} does not follow the applied sequence {applied}")]
    Gap {
        /// The rule book's applied sequence.
        applied: u64,
        /// The command's sequence.
        got: u64,
    },
    /// The sequence has already been applied; the caller answers with the recorded outcome.
    #[error("command sequence {got} is already applied (applied sequence {applied})")]
    AlreadyApplied {
        /// The rule book's applied sequence.
        applied: u64,
        /// The command's sequence.
        got: u64,
    },
    /// The command acts on a feature that was never defined.
    #[error("feature {0} is not defined")]
    UnknownFeature(FeatureKey),
    /// A feature definition for a key that already exists.
    #[error("feature {0} is already defined")]
    FeatureExists(FeatureKey),
    /// A command id already used by an earlier command.
    #[error("command id {0} is already used")]
    DuplicateCommand(CommandId),
}

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

/// One feature's definition and rules, indexed by scope.
#[derive(Debug, Clone)]
pub struct FeatureRules {
    /// The definition.
    pub def: FeatureDef,
    /// Every go-live and halt, in sequence order.
    rules: Vec<Rule>,
    /// Positions in `rules` by the scope key that files them, each list in sequence order.
    index: FastMap<ScopeKey, Vec<u32>>,
}

/// A hash map for the lookups on the read path (keys come from the rule book and the estate):
/// foldhash, several times faster than the default SipHash on these short keys.
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

impl FeatureRules {
    fn new(def: FeatureDef) -> Self {
        FeatureRules {
            def,
            rules: Vec::new(),
            index: FastMap::default(),
        }
    }

    /// Every rule, in sequence order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    fn push(&mut self, rule: Rule) {
        let pos = self.rules.len() as u32;
        let keys: Vec<ScopeKey> = match rule.scope() {
            Scope::National => vec![ScopeKey::National],
            Scope::Supplier(s) => vec![ScopeKey::Supplier(s.clone())],
            Scope::Region(r) => vec![ScopeKey::Region(*r)],
            Scope::Icb(i) => vec![ScopeKey::Icb(*i)],
            Scope::SubIcb(s) => vec![ScopeKey::SubIcb(*s)],
            Scope::Practices(set) => set.iter().map(|p| ScopeKey::Practice(*p)).collect(),
        };
        for key in keys {
            self.index.entry(key).or_default().push(pos);
        }
        self.rules.push(rule);
    }

    /// Calls `f` with every rule (lifted or not) whose scope covers the practice. Looks at six
    /// index buckets, never at every rule; order is by bucket, not by sequence.
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
                for &pos in list {
                    f(&self.rules[pos as usize]);
                }
            }
        }
    }
}

/// Every feature and rule a supplier has applied, and its applied sequence.
#[derive(Debug, Clone, Default)]
pub struct RuleBook {
    features: FastMap<FeatureKey, FeatureRules>,
    /// Which feature and position each halt lives at, for resumes.
    halts: HashMap<CommandId, (FeatureKey, usize)>,
    /// Every command id seen, go-live, halt, resume and create alike.
    seen: HashMap<CommandId, u64>,
    applied_sequence: u64,
    synchronised: bool,
}

impl RuleBook {
    /// An empty rule book that has never synchronised.
    pub fn new() -> Self {
        Self::default()
    }

    /// The last sequence applied or rejected.
    pub fn applied_sequence(&self) -> u64 {
        self.applied_sequence
    }

    /// Whether any command (or a full replacement) has ever been applied.
    pub fn synchronised(&self) -> bool {
        self.synchronised
    }

    /// Marks the book synchronised at `sequence` without commands (a full replacement at a
    /// sequence with nothing in it).
    pub fn mark_synchronised(&mut self, sequence: u64) {
        self.synchronised = true;
        self.applied_sequence = self.applied_sequence.max(sequence);
    }

    /// One feature's rules.
    pub fn feature(&self, key: &FeatureKey) -> Option<&FeatureRules> {
        self.features.get(key)
    }

    /// Every feature, in no particular order.
    pub fn features(&self) -> impl Iterator<Item = &FeatureRules> {
        self.features.values()
    }

    /// Checks that `cmd` can be applied next, without changing anything.
    pub fn check(&self, cmd: &Command) -> Result<(), ApplyError> {
        let applied = self.applied_sequence;
        if cmd.sequence <= applied {
            return Err(ApplyError::AlreadyApplied {
                applied,
                got: cmd.sequence,
            });
        }
        if cmd.sequence != applied + 1 {
            return Err(ApplyError::Gap {
                applied,
                got: cmd.sequence,
            });
        }
        if self.seen.contains_key(&cmd.id) {
            return Err(ApplyError::DuplicateCommand(cmd.id.clone()));
        }
        match &cmd.action {
            Action::CreateFeature(def) if self.features.contains_key(&def.key) => {
                Err(ApplyError::FeatureExists(def.key.clone()))
            }
            Action::CreateFeature(_) => Ok(()),
            _ if !self.features.contains_key(&cmd.feature) => {
                Err(ApplyError::UnknownFeature(cmd.feature.clone()))
            }
            _ => Ok(()),
        }
    }

    /// Applies the next command. `freeze` is the supplier's declared change-freeze reason, if
    /// any: a go-live or resume is then rejected (the sequence still advances); a halt or a
    /// feature definition never is. A resume lifts only the named halts of its own feature
    /// that are still active; names it cannot find are passed over.
    pub fn apply(&mut self, cmd: &Command, freeze: Option<&str>) -> Result<Outcome, ApplyError> {
        self.check(cmd)?;
        let outcome = match (freeze, cmd.action.turns_on()) {
            (Some(reason), true) => Outcome::Rejected(format!("supplier change freeze: {reason}")),
            _ => {
                self.apply_action(cmd);
                Outcome::Applied
            }
        };
        self.seen.insert(cmd.id.clone(), cmd.sequence);
        self.applied_sequence = cmd.sequence;
        self.synchronised = true;
        Ok(outcome)
    }

    /// Records a command as rejected without judging it again (a full replacement that keeps
    /// an earlier rejection).
    pub fn skip(&mut self, cmd: &Command) -> Result<(), ApplyError> {
        self.check(cmd)?;
        self.seen.insert(cmd.id.clone(), cmd.sequence);
        self.applied_sequence = cmd.sequence;
        self.synchronised = true;
        Ok(())
    }

    fn apply_action(&mut self, cmd: &Command) {
        let rule = |kind| Rule {
            command: cmd.id.clone(),
            sequence: cmd.sequence,
            kind,
            issued_by: cmd.requester.clone(),
            issued_at: cmd.issued_at,
            reason: cmd.reason.clone(),
            approved_by: cmd.approved_by.clone(),
        };
        match &cmd.action {
            Action::CreateFeature(def) => {
                if let Entry::Vacant(v) = self.features.entry(def.key.clone()) {
                    v.insert(FeatureRules::new(def.clone()));
                }
            }
            Action::Halt { scope } => {
                if let Some(f) = self.features.get_mut(&cmd.feature) {
                    self.halts
                        .insert(cmd.id.clone(), (cmd.feature.clone(), f.rules.len()));
                    f.push(rule(RuleKind::Halt {
                        scope: scope.clone(),
                        lifted_by: None,
                    }));
                }
            }
            Action::GoLive { scope, effective_at } => {
                if let Some(f) = self.features.get_mut(&cmd.feature) {
                    f.push(rule(RuleKind::GoLive {
                        scope: scope.clone(),
                        effective_at: effective_at.unwrap_or(cmd.issued_at),
                    }));
                }
            }
            Action::Resume { halts } => {
                for halt in halts {
                    let Some((feature, pos)) = self.halts.get(halt) else {
                        continue;
                    };
                    if *feature != cmd.feature {
                        continue;
                    }
                    if let Some(RuleKind::Halt { lifted_by, .. }) = self
                        .features
                        .get_mut(feature)
                        .and_then(|f| f.rules.get_mut(*pos))
                        .map(|r| &mut r.kind)
                        && lifted_by.is_none()
                    {
                        *lifted_by = Some(cmd.id.clone());
                    }
                }
            }
        }
    }

    /// The halt with this command id, if the book holds one.
    pub fn halt(&self, id: &CommandId) -> Option<&Rule> {
        let (feature, pos) = self.halts.get(id)?;
        self.features.get(feature)?.rules.get(*pos)
    }
}
