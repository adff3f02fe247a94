//! Effective-state evaluation: is feature F on for practice P, and why.
//!
//! The order of precedence (the first that holds decides):
//! 1. the supplier has never synchronised: UNKNOWN;
//! 2. the practice is not active: DISABLED;
//! 3. the practice joined this supplier from another and is held until the coordinator has
//!    sent the national opt-out register's records for it: DISABLED (awaiting the check);
//! 4. the practice has opted out: DISABLED (no command overrides it);
//! 5. the feature fails closed and control is stale: DISABLED;
//! 6. an active (unlifted) halt covers the practice: DISABLED;
//! 7. a go-live covers it and has taken effect: ENABLED;
//! 8. a go-live covers it but has not taken effect: DISABLED (scheduled);
//! 9. otherwise: DISABLED (not live).
//!
//! Nothing ever fails open: every path to ENABLED passes all of 1 to 6.

use std::time::SystemTime;

use crate::{
    rules::{FailMode, FeatureRules, OptOut, Rule, RuleKind},
    scope::{Practice, PracticeStatus},
};

/// The effective state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// On.
    Enabled,
    /// Off.
    Disabled,
    /// Never synchronised: callers treat it as off.
    Unknown,
}

/// Why the state is what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The supplier has never synchronised with the coordinator.
    NeverSynchronised,
    /// The practice is closed, dormant or proposed.
    PracticeNotActive,
    /// The practice joined this supplier from another and is held off until the coordinator
    /// has sent any opt-out the national register holds for it.
    AwaitingOptOutCheck,
    /// The practice opted out.
    OptedOut,
    /// FAIL_CLOSED feature with no contact within the control TTL.
    ControlStale,
    /// An active halt covers the practice.
    Halted,
    /// A go-live has taken effect.
    Live,
    /// A go-live covers the practice but is not yet effective.
    Scheduled,
    /// No go-live covers the practice.
    NotLive,
}

/// The supplier's contact with the coordinator, as evaluation needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    /// The evaluation time.
    pub now: SystemTime,
    /// Whether the supplier has ever synchronised.
    pub synchronised: bool,
    /// When the coordinator was last heard from; `None` counts as stale.
    pub last_contact: Option<SystemTime>,
}

/// A rule as it applies at evaluation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applicable<'a> {
    /// A go-live that has taken effect.
    GoLive(&'a Rule),
    /// A go-live not yet effective.
    Scheduled(&'a Rule),
    /// An active halt.
    Halt(&'a Rule),
    /// The practice's opt-out.
    OptOut(&'a OptOut),
}

impl Applicable<'_> {
    /// Whether `self` and `other` are the same rule of the same book (not merely equal ones):
    /// a comparison of two addresses, where `==` would compare whole scopes.
    pub fn is(&self, other: &Applicable<'_>) -> bool {
        use Applicable as A;
        match (self, other) {
            (A::GoLive(a), A::GoLive(b)) | (A::Scheduled(a), A::Scheduled(b)) | (A::Halt(a), A::Halt(b)) => {
                std::ptr::eq(*a, *b)
            }
            (A::OptOut(a), A::OptOut(b)) => std::ptr::eq(*a, *b),
            _ => false,
        }
    }

    /// Sequence order for display; an opt-out sorts first.
    pub fn sequence(&self) -> u64 {
        match self {
            Applicable::GoLive(r) | Applicable::Scheduled(r) | Applicable::Halt(r) => r.sequence,
            Applicable::OptOut(_) => 0,
        }
    }
}

/// The answer with its explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation<'a> {
    /// The state.
    pub state: State,
    /// Why.
    pub reason: Reason,
    /// The rule that decided, where one did.
    pub deciding: Option<Applicable<'a>>,
    /// The applicable rules, at most [`MAX_EXPLAINED_RULES`]: the deciding one first, then
    /// the others newest first. Empty unless explanation was asked for.
    pub rules: Vec<Applicable<'a>>,
    /// How many more rules apply than `rules` lists.
    pub omitted: usize,
}

/// The most rules one explained answer lists, so that an answer's size never grows with the
/// number of rules in force (the rest are counted in [`Evaluation::omitted`]).
pub const MAX_EXPLAINED_RULES: usize = 16;

/// Evaluates `feature` for `practice`, a practice not held (see [`evaluate_held`]). With
/// `explain`, every applicable rule is listed too; without, nothing is allocated.
pub fn evaluate<'a>(
    feature: &'a FeatureRules,
    practice: &Practice,
    opt_out: Option<&'a OptOut>,
    ctx: &Context,
    explain: bool,
) -> Evaluation<'a> {
    evaluate_held(feature, practice, false, opt_out, ctx, explain)
}

/// Evaluates `feature` for `practice` at a supplier that may hold it: `held` is true while the
/// practice, having joined the supplier from another, waits for the national opt-out
/// register's records (DISABLED, [`Reason::AwaitingOptOutCheck`], whatever the rules). With
/// `explain`, every applicable rule is listed too; without, nothing is allocated.
pub fn evaluate_held<'a>(
    feature: &'a FeatureRules,
    practice: &Practice,
    held: bool,
    opt_out: Option<&'a OptOut>,
    ctx: &Context,
    explain: bool,
) -> Evaluation<'a> {
    let mut newest_halt: Option<&Rule> = None;
    let mut first_live: Option<&Rule> = None;
    let mut first_scheduled: Option<&Rule> = None;
    let mut rules = Vec::new();
    if let Some(o) = opt_out.filter(|_| explain) {
        rules.push(Applicable::OptOut(o));
    }

    feature.for_each_covering(practice, |rule| {
        let applicable = match &rule.kind {
            RuleKind::Halt { .. } => {
                if newest_halt.is_none_or(|h| h.sequence < rule.sequence) {
                    newest_halt = Some(rule);
                }
                Applicable::Halt(rule)
            }
            RuleKind::GoLive { effective_at, .. } if *effective_at <= ctx.now => {
                if first_live.is_none_or(|g| g.sequence > rule.sequence) {
                    first_live = Some(rule);
                }
                Applicable::GoLive(rule)
            }
            RuleKind::GoLive { .. } => {
                if first_scheduled.is_none_or(|g| g.sequence > rule.sequence) {
                    first_scheduled = Some(rule);
                }
                Applicable::Scheduled(rule)
            }
        };
        if explain {
            rules.push(applicable);
        }
    });

    let stale = match feature.def.fail_mode {
        FailMode::Static => false,
        FailMode::Closed { ttl } => ctx
            .last_contact
            .is_none_or(|t| ctx.now.duration_since(t).is_ok_and(|d| d > ttl)),
    };

    use {Reason as R, State as S};
    let (state, reason, deciding) = if !ctx.synchronised {
        (S::Unknown, R::NeverSynchronised, None)
    } else if practice.status != PracticeStatus::Active {
        (S::Disabled, R::PracticeNotActive, None)
    } else if held {
        (S::Disabled, R::AwaitingOptOutCheck, None)
    } else if let Some(o) = opt_out {
        (S::Disabled, R::OptedOut, Some(Applicable::OptOut(o)))
    } else if stale {
        (S::Disabled, R::ControlStale, None)
    } else if let Some(h) = newest_halt {
        (S::Disabled, R::Halted, Some(Applicable::Halt(h)))
    } else if let Some(g) = first_live {
        (S::Enabled, R::Live, Some(Applicable::GoLive(g)))
    } else if let Some(g) = first_scheduled {
        (S::Disabled, R::Scheduled, Some(Applicable::Scheduled(g)))
    } else {
        (S::Disabled, R::NotLive, None)
    };
    let mut omitted = 0;
    if explain {
        // The deciding rule first, then the newest: what an operator asks about first. Only
        // the rules listed are sorted: on a long history a practice can be under hundreds.
        let order = |a: &Applicable<'_>| {
            let first = deciding.is_some_and(|d| d.is(a));
            (!first, std::cmp::Reverse(a.sequence()))
        };
        omitted = rules.len().saturating_sub(MAX_EXPLAINED_RULES);
        if omitted > 0 {
            rules.select_nth_unstable_by_key(MAX_EXPLAINED_RULES - 1, order);
            rules.truncate(MAX_EXPLAINED_RULES);
        }
        rules.sort_unstable_by_key(order);
    }
    Evaluation {
        state,
        reason,
        deciding,
        rules,
        omitted,
    }
}

/// The most characters of a command's or an opt-out's reason (or an opt-out's source) that an
/// answer quotes, in its sentence and in its rules; a longer one is cut, ending with "…". A
/// reason may be up to [`crate::rules::MAX_REASON_CHARS`] characters: quoted whole in every
/// rule of every answer it would make answers tens of KB. The whole reason stays in the
/// coordinator's GetCommand.
pub const QUOTED_REASON_CHARS: usize = 120;

/// `text` cut to [`QUOTED_REASON_CHARS`] characters (the last of them "…") if longer.
pub fn quoted(text: &str) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(QUOTED_REASON_CHARS) {
        None => text.into(),
        Some(_) => {
            let end = text
                .char_indices()
                .nth(QUOTED_REASON_CHARS - 1)
                .map_or(text.len(), |(i, _)| i);
            format!("{}…", &text[..end]).into()
        }
    }
}

impl Evaluation<'_> {
    /// One sentence for people: the state, the reason and the deciding rule (reasons quoted up
    /// to [`QUOTED_REASON_CHARS`] characters).
    pub fn explain(&self) -> String {
        let rule = |r: &Rule| {
            format!(
                "command {} (sequence {}, {}, by {}: {:?})",
                r.command,
                r.sequence,
                r.scope().describe(),
                r.issued_by,
                quoted(&r.reason)
            )
        };
        match (self.reason, self.deciding) {
            (Reason::NeverSynchronised, _) => {
                "unknown: this supplier has never synchronised with the coordinator; treat as off".to_owned()
            }
            (Reason::PracticeNotActive, _) => "disabled: the practice is not active in ODS".to_owned(),
            (Reason::AwaitingOptOutCheck, _) => {
                "disabled: the practice joined this supplier from another and stays off until the coordinator has sent any opt-out the national register holds for it"
                    .to_owned()
            }
            (Reason::OptedOut, Some(Applicable::OptOut(o))) => format!(
                "disabled: the practice opted out ({:?}, source {:?}, recorded by {})",
                quoted(&o.reason),
                quoted(&o.source),
                o.recorded_by
            ),
            (Reason::ControlStale, _) => {
                "disabled: fail-closed feature and the coordinator has not been heard from within its control TTL"
                    .to_owned()
            }
            (Reason::Halted, Some(Applicable::Halt(r))) => format!("disabled: halted by {}", rule(r)),
            (Reason::Live, Some(Applicable::GoLive(r))) => format!("enabled: live by {}", rule(r)),
            (Reason::Scheduled, Some(Applicable::Scheduled(r))) => {
                format!("disabled: go-live scheduled but not yet effective, {}", rule(r))
            }
            _ => "disabled: no go-live covers this practice".to_owned(),
        }
    }
}
