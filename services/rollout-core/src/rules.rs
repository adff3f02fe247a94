//! Feature definitions, commands, and the rule book that applies them in sequence order.
//!
//! The rule book is what a supplier serves from: the *effective* rule set (every feature
//! definition, every go-live and every halt in force), indexed by scope so that evaluating one
//! practice looks only at the rules that could cover it (see [`crate::eval`]). The command log
//! is history and stays in the stores; the book is compacted as commands apply (a resume
//! retires the halts it lifts and is not kept), so it grows with the rules in force, not with
//! the log.

use std::{
    collections::{HashMap, hash_map::Entry},
    time::{Duration, SystemTime},
};

pub(crate) use self::index::FastMap;
pub use self::index::FeatureRules;
use crate::{
    id::{CommandId, FeatureKey, OdsCode, SupplierId},
    scope::Scope,
};

mod index;

/// Shortest control TTL a FAIL_CLOSED feature may declare.
pub const MIN_CONTROL_TTL: Duration = Duration::from_secs(10);
/// Longest control TTL a FAIL_CLOSED feature may declare.
pub const MAX_CONTROL_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// How far ahead of a supplier's clock a coordinator contact time is still believed (clocks
/// that NTP keeps in step differ by milliseconds). A contact time further ahead (the clock was
/// stepped back, or another replica's clock is ahead) is taken as now, so that it cannot keep a
/// FAIL_CLOSED feature fresh for longer than its TTL plus this.
pub const MAX_CONTACT_SKEW: Duration = Duration::from_secs(2);
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
    /// For a redelivery: the command whose action it repeats (one its supplier rejected).
    pub redelivery_of: Option<CommandId>,
    /// The one supplier that acts on the command (a redelivery); `None`, the usual case, for
    /// every supplier. Every other supplier takes its sequence and changes nothing, so that
    /// the order and the history stay one for all.
    pub supplier: Option<SupplierId>,
}

impl Command {
    /// Whether `supplier` acts on the command: every supplier acts on one addressed to none,
    /// only the addressee on one addressed to a supplier.
    pub fn addressed_to(&self, supplier: &SupplierId) -> bool {
        self.supplier.as_ref().is_none_or(|s| s == supplier)
    }
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
    /// Off in scope. A halt is held only while in force: a resume that lifts it retires it.
    Halt {
        /// Covered practices.
        scope: Scope,
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
    /// A command id already used by a command the book holds.
    #[error("command id {0} is already used")]
    DuplicateCommand(CommandId),
    /// A resume offered as part of an effective state, which never holds one.
    #[error("command {0} is a resume, which is never part of an effective state")]
    NotEffective(CommandId),
    /// A command addressed to another supplier offered as part of this book's effective
    /// state: it never takes effect here.
    #[error(
        "command {0} is addressed to another supplier, so it is never part of this supplier's effective state"
    )]
    AddressedElsewhere(CommandId),
}

/// The effective rule set a supplier serves from: every feature definition, every go-live and
/// every halt still in force, and the applied sequence. It is compacted as it goes (see
/// [`RuleBook::apply`]), so its size follows the rules in force, never the length of the
/// command log.
///
/// A book belongs to one supplier ([`RuleBook::for_supplier`]) or to none ([`RuleBook::new`]):
/// a command addressed to one supplier (`Command::supplier`, a redelivery) acts only in that
/// supplier's book; in any other it is a no-op that still takes its sequence.
#[derive(Debug, Clone, Default)]
pub struct RuleBook {
    /// The supplier whose book this is; `None` acts on no addressed command.
    supplier: Option<SupplierId>,
    features: FastMap<FeatureKey, FeatureRules>,
    /// Every command the book holds (definitions and rules in force), by id: its feature and
    /// sequence. Resumes find their halts here.
    held: HashMap<CommandId, (FeatureKey, u64)>,
    applied_sequence: u64,
    synchronised: bool,
}

impl RuleBook {
    /// An empty rule book that has never synchronised, of no supplier: it acts on every
    /// command addressed to all and on none addressed to one supplier.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty rule book of `supplier`, which also acts on the commands addressed to it.
    pub fn for_supplier(supplier: SupplierId) -> Self {
        RuleBook {
            supplier: Some(supplier),
            ..Self::default()
        }
    }

    /// The supplier whose book this is.
    pub fn supplier(&self) -> Option<&SupplierId> {
        self.supplier.as_ref()
    }

    /// Whether this book acts on `cmd`: it is addressed to every supplier, or to this book's.
    pub fn acts_on(&self, cmd: &Command) -> bool {
        cmd.supplier.is_none() || cmd.supplier == self.supplier
    }

    /// The last sequence applied or rejected.
    pub fn applied_sequence(&self) -> u64 {
        self.applied_sequence
    }

    /// Whether any command (or a snapshot) has ever been applied.
    pub fn synchronised(&self) -> bool {
        self.synchronised
    }

    /// Marks the book synchronised at `sequence` (a snapshot's sequence, which may be past the
    /// last command the book holds).
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

    /// How many rules are in force across every feature (definitions not counted).
    pub fn rule_count(&self) -> usize {
        self.features.values().map(|f| f.rules().len()).sum()
    }

    /// The commands the book holds, as (sequence, id), in sequence order: each feature's
    /// definition, every go-live and every halt in force. This is the effective state a
    /// snapshot carries; replaying these commands alone (with [`RuleBook::restore`]) rebuilds
    /// a book that answers exactly as this one.
    pub fn effective_commands(&self) -> Vec<(u64, CommandId)> {
        let mut out: Vec<(u64, CommandId)> = self.held.iter().map(|(id, (_, s))| (*s, id.clone())).collect();
        out.sort_unstable_by_key(|(s, _)| *s);
        out
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
        self.check_body(cmd)
    }

    /// The checks of [`RuleBook::check`] that do not depend on the sequence.
    fn check_body(&self, cmd: &Command) -> Result<(), ApplyError> {
        if self.held.contains_key(&cmd.id) {
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
    /// feature definition never is. A command addressed to another supplier (see
    /// [`RuleBook::acts_on`]) is applied as a no-op, frozen or not: only the sequence advances.
    ///
    /// Compaction happens here: a resume **retires** the named halts of its own feature that
    /// are in force (they leave the book, scope and all), and is not kept itself; names it
    /// cannot find (unknown, already lifted, another feature's) are passed over. A rejected
    /// command changes nothing but the sequence. Nothing else is ever retired: go-lives and
    /// unlifted halts stay until a resume names them. So the book answers exactly as a replay
    /// of the whole log would (the property tests hold it to that).
    pub fn apply(&mut self, cmd: &Command, freeze: Option<&str>) -> Result<Outcome, ApplyError> {
        self.check(cmd)?;
        let outcome = match (freeze, cmd.action.turns_on()) {
            _ if !self.acts_on(cmd) => Outcome::Applied,
            (Some(reason), true) => Outcome::Rejected(format!("supplier change freeze: {reason}")),
            _ => {
                self.apply_action(cmd);
                Outcome::Applied
            }
        };
        self.applied_sequence = cmd.sequence;
        self.synchronised = true;
        Ok(outcome)
    }

    /// Records a command as rejected without judging it again.
    pub fn skip(&mut self, cmd: &Command) -> Result<(), ApplyError> {
        self.check(cmd)?;
        self.applied_sequence = cmd.sequence;
        self.synchronised = true;
        Ok(())
    }

    /// Puts back one command of an effective state (a snapshot, or the rules in force a store
    /// holds): a feature definition, a go-live or a halt, in increasing sequence order but not
    /// necessarily contiguous. A resume is never part of an effective state and is refused, and
    /// so is a command addressed to another supplier.
    pub fn restore(&mut self, cmd: &Command) -> Result<(), ApplyError> {
        if cmd.sequence <= self.applied_sequence {
            return Err(ApplyError::AlreadyApplied {
                applied: self.applied_sequence,
                got: cmd.sequence,
            });
        }
        if matches!(cmd.action, Action::Resume { .. }) {
            return Err(ApplyError::NotEffective(cmd.id.clone()));
        }
        if !self.acts_on(cmd) {
            return Err(ApplyError::AddressedElsewhere(cmd.id.clone()));
        }
        self.check_body(cmd)?;
        self.apply_action(cmd);
        self.applied_sequence = cmd.sequence;
        self.synchronised = true;
        Ok(())
    }

    /// The sequences of the halts in force that a resume would retire (none for any other
    /// command, nor for a resume addressed to another supplier): the named halts of its own
    /// feature.
    pub fn lifts(&self, cmd: &Command) -> Vec<u64> {
        let Action::Resume { halts } = &cmd.action else {
            return Vec::new();
        };
        if !self.acts_on(cmd) {
            return Vec::new();
        }
        halts
            .iter()
            .filter_map(|h| self.held.get(h))
            .filter(|(feature, sequence)| {
                *feature == cmd.feature
                    && self
                        .features
                        .get(feature)
                        .and_then(|f| f.rule_at(*sequence))
                        .is_some_and(|r| matches!(r.kind, RuleKind::Halt { .. }))
            })
            .map(|(_, sequence)| *sequence)
            .collect()
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
        let held = (cmd.feature.clone(), cmd.sequence);
        match &cmd.action {
            Action::CreateFeature(def) => {
                if let Entry::Vacant(v) = self.features.entry(def.key.clone()) {
                    v.insert(FeatureRules::new(def.clone(), (cmd.sequence, cmd.id.clone())));
                    self.held.insert(cmd.id.clone(), (def.key.clone(), cmd.sequence));
                }
            }
            Action::Halt { scope } => {
                if let Some(f) = self.features.get_mut(&cmd.feature) {
                    f.push(rule(RuleKind::Halt { scope: scope.clone() }));
                    self.held.insert(cmd.id.clone(), held);
                }
            }
            Action::GoLive { scope, effective_at } => {
                if let Some(f) = self.features.get_mut(&cmd.feature) {
                    f.push(rule(RuleKind::GoLive {
                        scope: scope.clone(),
                        effective_at: effective_at.unwrap_or(cmd.issued_at),
                    }));
                    self.held.insert(cmd.id.clone(), held);
                }
            }
            Action::Resume { .. } => {
                let lifted = self.lifts(cmd);
                if let Some(f) = self.features.get_mut(&cmd.feature) {
                    for retired in f.retire(&lifted) {
                        self.held.remove(&retired.command);
                    }
                }
            }
        }
    }

    /// The sequence at which the book holds the command `id` (a definition or a rule in force).
    pub fn held_at(&self, id: &CommandId) -> Option<u64> {
        self.held.get(id).map(|(_, sequence)| *sequence)
    }

    /// The halt with this command id, if the book holds one.
    pub fn halt(&self, id: &CommandId) -> Option<&Rule> {
        let (feature, sequence) = self.held.get(id)?;
        self.features
            .get(feature)?
            .rule_at(*sequence)
            .filter(|r| matches!(r.kind, RuleKind::Halt { .. }))
    }
}
