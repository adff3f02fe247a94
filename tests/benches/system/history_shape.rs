//! Part 5's long history: generated the same on every run, turned into commands, and what is
//! in force after it.

use super::*;

/// One command of a history after the feature's definition and national go-live (sequences 1
/// and 2), in a form that can be applied at a supplier or issued through the coordinator.
pub(crate) enum Step {
    Halt(Scope, String),
    /// Lifts the halts issued at these earlier steps.
    Resume(Vec<usize>, String),
    GoLive(Scope, String),
}

/// A long history, the same on every run. `shape.list_halts` halts listing `shape.list_size`
/// codes each are spread evenly through it: each list names a random 20 to 60 per cent of its
/// codes from three in five of the active practices (the other two in five are never listed)
/// and fills the rest with codes no supplier holds. One list halt in five is lifted again (a
/// resume after every tenth list lifts two). Between the lists come incidents: national,
/// regional, ICB and sub-ICB halts, each lifted a few commands later by a resume that may lift
/// several (one sub-ICB halt in forty is never lifted), and an ICB go-live after every fortieth
/// list. So at the end the feature is still live nationally, the listed practices and the
/// sub-ICBs still halted are off, and the rest are on.
pub(crate) fn long_history(shape: Shape, estate: &Estate) -> Vec<Step> {
    let active: Vec<&Practice> = estate
        .practices()
        .filter(|p| p.status == PracticeStatus::Active)
        .collect();
    let listed: Vec<OdsCode> = active
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 5 < 3)
        .map(|(_, p)| p.ods)
        .collect();
    let held: std::collections::HashSet<OdsCode> = estate.practices().map(|p| p.ods).collect();
    fn distinct<T: Ord>(practices: &[&Practice], code: impl Fn(&Practice) -> T) -> Vec<T> {
        practices
            .iter()
            .map(|p| code(p))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }
    let regions = distinct(&active, |p| p.region);
    let icbs = distinct(&active, |p| p.icb);
    let sub_icbs = distinct(&active, |p| p.sub_icb);
    let mut rng = fastrand::Rng::with_seed(2_000);
    let total = shape.commands.saturating_sub(2);
    let mut steps = Vec::with_capacity(total);
    let mut lists: Vec<usize> = Vec::new();
    let mut open: Vec<usize> = Vec::new();
    let mut queued: VecDeque<Step> = VecDeque::new();
    let mut incidents = 0usize;
    for pos in 0..total {
        let step = if lists.len() < shape.list_halts && pos * shape.list_halts >= lists.len() * total {
            let n = lists.len();
            lists.push(pos);
            if n % 10 == 9 {
                queued.push_back(Step::Resume(
                    vec![lists[n - 9], lists[n - 5]],
                    format!("the practices of letters {} and {} withdrew them", n - 9, n - 5),
                ));
            }
            if n % 40 == 20 {
                queued.push_back(Step::GoLive(
                    Scope::Icb(icbs[rng.usize(..icbs.len())]),
                    format!("ICB confirmed its go-live after letter {n}"),
                ));
            }
            let real = (shape.list_size * rng.usize(20..=60) / 100).min(listed.len());
            let mut pool = listed.clone();
            for i in 0..real {
                let j = rng.usize(i..pool.len());
                pool.swap(i, j);
            }
            let mut codes: BTreeSet<OdsCode> = pool[..real].iter().copied().collect();
            while codes.len() < shape.list_size {
                let code: OdsCode = format!("Z{:05}", rng.u32(..100_000)).parse().expect("code");
                if !held.contains(&code) {
                    codes.insert(code);
                }
            }
            Step::Halt(
                Scope::Practices(Arc::new(codes)),
                format!("letter {n}: these practices asked not to go ahead yet"),
            )
        } else if let Some(q) = queued.pop_front() {
            q
        } else if !open.is_empty() && (open.len() >= 3 || rng.bool() || pos + 4 >= total) {
            Step::Resume(
                std::mem::take(&mut open),
                format!("incident {incidents} resolved"),
            )
        } else {
            incidents += 1;
            let last = pos + 1 == total;
            let scope = match incidents % 20 {
                _ if last => Scope::SubIcb(sub_icbs[rng.usize(..sub_icbs.len())]),
                0 => Scope::National,
                5 | 15 => Scope::Region(regions[rng.usize(..regions.len())]),
                i if i % 2 == 0 => Scope::Icb(icbs[rng.usize(..icbs.len())]),
                _ => Scope::SubIcb(sub_icbs[rng.usize(..sub_icbs.len())]),
            };
            // One sub-ICB halt in forty (and one at the very end) stays in force.
            if !(last || incidents % 40 == 1) {
                open.push(pos);
            }
            Step::Halt(
                scope,
                format!("incident {incidents}: clinical safety concern reported"),
            )
        };
        steps.push(step);
    }
    steps
}

/// The sequence of step `i`.
pub(crate) fn step_sequence(i: usize) -> u64 {
    i as u64 + 3
}

/// The whole long history as sequenced commands, the young history first.
pub(crate) fn history_commands(steps: &[Step]) -> Vec<rollout_core::Command> {
    let id = |i: usize| {
        let kind = match &steps[i] {
            Step::Halt(..) => "halt",
            Step::Resume(..) => "resume",
            Step::GoLive(..) => "go-live",
        };
        format!("{kind}-{}", step_sequence(i))
    };
    let mut commands = young_history();
    commands.extend(steps.iter().enumerate().map(|(i, step)| {
        let (action, reason) = match step {
            Step::Halt(scope, reason) => (rollout_core::Action::Halt { scope: scope.clone() }, reason),
            Step::Resume(halts, reason) => (
                rollout_core::Action::Resume {
                    halts: halts.iter().map(|h| id(*h).parse().expect("id")).collect(),
                },
                reason,
            ),
            Step::GoLive(scope, reason) => (
                rollout_core::Action::GoLive {
                    scope: scope.clone(),
                    effective_at: None,
                },
                reason,
            ),
        };
        domain_command(step_sequence(i), &id(i), action, reason)
    }));
    commands
}

/// What a history leaves in force, worked out with the rule book the suppliers use.
pub(crate) struct InForce {
    pub(crate) list_halts: usize,
    pub(crate) area_halts: usize,
    pub(crate) go_lives: usize,
    pub(crate) national_halts: usize,
}

impl InForce {
    pub(crate) fn of(commands: &[rollout_core::Command]) -> Self {
        let mut book = rollout_core::RuleBook::new();
        for c in commands {
            book.apply(c, None).expect("the history applies");
        }
        let mut f = InForce {
            list_halts: 0,
            area_halts: 0,
            go_lives: 0,
            national_halts: 0,
        };
        for rule in book
            .feature(&FEATURE.parse().expect("key"))
            .expect("feature")
            .rules()
        {
            match &rule.kind {
                rollout_core::RuleKind::GoLive { .. } => f.go_lives += 1,
                rollout_core::RuleKind::Halt {
                    scope: Scope::Practices(_),
                } => f.list_halts += 1,
                rollout_core::RuleKind::Halt {
                    scope: Scope::National,
                } => f.national_halts += 1,
                rollout_core::RuleKind::Halt { .. } => f.area_halts += 1,
            }
        }
        f
    }

    pub(crate) fn rules(&self) -> usize {
        self.list_halts + self.area_halts + self.go_lives + self.national_halts
    }
}
