//! Property tests: the indexed, compacted book answers as a full scan and a replay of the
//! whole log would, and nothing fails open.

use super::{
    estate::{EPRACCUR, SUPPLIERS, load},
    *,
};

fn arb_practice() -> impl Strategy<Value = Practice> {
    (
        0u32..40,
        prop::sample::select(vec!["emis", "tpp", "cegedim"]),
        prop::sample::select(vec!["Y56", "Y60"]),
        prop::sample::select(vec!["QN7", "QWJ", "QAB"]),
        prop::sample::select(vec!["33G", "03V"]),
        prop::sample::select(vec![
            PracticeStatus::Active,
            PracticeStatus::Active,
            PracticeStatus::Closed,
        ]),
    )
        .prop_map(|(n, s, r, i, si, st)| practice(&format!("A{n:05}"), s, r, i, si, st))
}

fn arb_scope() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "national",
        "supplier:emis",
        "supplier:tpp",
        "region:Y60",
        "icb:QN7",
        "icb:QAB",
        "sub-icb:03V",
        "practices:A00001,A00002,A00003",
        "practices:A00007",
    ])
}

const HALT_IDS: [&str; 6] = ["h0", "h1", "h2", "h3", "h4", "h5"];
const GO_IDS: [&str; 6] = ["g0", "g1", "g2", "g3", "g4", "g5"];

/// Random command steps (after the feature definition).
fn arb_steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        prop_oneof![
            (0usize..6, arb_scope()).prop_map(|(i, s)| Halt(HALT_IDS[i], s)),
            (0usize..6, arb_scope(), 0u64..300).prop_map(|(i, s, t)| GoLive(GO_IDS[i], s, t)),
            (0usize..6).prop_map(|i| Resume("r", HALT_IDS[i])),
        ],
        0..14,
    )
}

/// Applies the feature definition, then the steps, skipping any that cannot apply (a halt id
/// drawn twice). Go-live and resume ids get their sequence appended so they never collide.
fn book_with(define: Step, steps: &[Step]) -> RuleBook {
    log_with(define, steps).0
}

/// The book of [`book_with`] and the log of every command it applied, in order. Command ids
/// are unique in a real log: a halt id drawn a second time is skipped.
fn log_with(define: Step, steps: &[Step]) -> (RuleBook, Vec<Command>) {
    let mut book = RuleBook::new();
    let first = command(define, 1);
    book.apply(&first, None).expect("define");
    let mut log = vec![first];
    for step in steps {
        let sequence = book.applied_sequence() + 1;
        let mut cmd = command(*step, sequence);
        if !matches!(step, Halt(..)) {
            cmd.id = CommandId::parse(&format!("{}-{sequence}", cmd.id)).expect("id");
        }
        if log.iter().all(|c| c.id != cmd.id) && book.check(&cmd).is_ok() {
            book.apply(&cmd, None).expect("checked");
            log.push(cmd);
        }
    }
    (book, log)
}

/// The answer a replay of the whole log gives, with no index and no compaction: a halt is in
/// force unless a later resume of its feature names it. (state, reason, deciding sequence).
fn full_log_answer(
    log: &[Command],
    p: &Practice,
    opted_out: bool,
    ctx: &Context,
) -> (State, Reason, Option<u64>) {
    let lifted = |h: &Command| {
        log.iter().any(|r| {
            r.sequence > h.sequence
                && r.feature == h.feature
                && matches!(&r.action, Action::Resume { halts } if halts.contains(&h.id))
        })
    };
    let ttl = log.iter().find_map(|c| match &c.action {
        Action::CreateFeature(def) => Some(def.fail_mode),
        _ => None,
    });
    let stale = match ttl {
        Some(FailMode::Closed { ttl }) => ctx
            .last_contact
            .is_none_or(|t| ctx.now.duration_since(t).is_ok_and(|d| d > ttl)),
        _ => false,
    };
    let newest_halt = log
        .iter()
        .filter(|c| matches!(&c.action, Action::Halt { scope } if scope.covers(p)) && !lifted(c))
        .map(|c| c.sequence)
        .max();
    let go_lives = log.iter().filter_map(|c| match &c.action {
        Action::GoLive { scope, effective_at } if scope.covers(p) => {
            Some((c.sequence, effective_at.unwrap_or(c.issued_at)))
        }
        _ => None,
    });
    let first_live = go_lives
        .clone()
        .filter(|(_, t)| *t <= ctx.now)
        .map(|(s, _)| s)
        .min();
    let first_scheduled = go_lives.filter(|(_, t)| *t > ctx.now).map(|(s, _)| s).min();
    if !ctx.synchronised {
        (State::Unknown, Reason::NeverSynchronised, None)
    } else if p.status != PracticeStatus::Active {
        (State::Disabled, Reason::PracticeNotActive, None)
    } else if opted_out {
        (State::Disabled, Reason::OptedOut, Some(0))
    } else if stale {
        (State::Disabled, Reason::ControlStale, None)
    } else if let Some(h) = newest_halt {
        (State::Disabled, Reason::Halted, Some(h))
    } else if let Some(g) = first_live {
        (State::Enabled, Reason::Live, Some(g))
    } else if let Some(g) = first_scheduled {
        (State::Disabled, Reason::Scheduled, Some(g))
    } else {
        (State::Disabled, Reason::NotLive, None)
    }
}

/// The compacted book's answer in the same shape as [`full_log_answer`].
fn book_answer(
    book: &RuleBook,
    p: &Practice,
    opted_out: bool,
    ctx: &Context,
) -> (State, Reason, Option<u64>) {
    let opt = opted_out.then(|| opt_out(p.ods.as_str()));
    let e = evaluate(book.feature(&key()).expect("feature"), p, opt.as_ref(), ctx, true);
    if let Some(d) = e.deciding {
        assert_eq!(e.rules.first(), Some(&d), "the deciding rule is listed first");
    }
    assert!(e.rules.len() <= crate::MAX_EXPLAINED_RULES);
    (e.state, e.reason, e.deciding.map(|d| d.sequence()))
}

fn book_from(steps: &[Step]) -> RuleBook {
    book_with(Define, steps)
}

pub(super) fn ctx(now: u64) -> Context {
    Context {
        now: at(now),
        synchronised: true,
        last_contact: Some(at(now)),
    }
}

fn key() -> FeatureKey {
    FeatureKey::parse(FEATURE).expect("key")
}

/// The obvious, unindexed evaluation: scan every rule.
fn naive(book: &RuleBook, p: &Practice, opted_out: bool, now: u64) -> State {
    let f = book.feature(&key()).expect("feature");
    if p.status != PracticeStatus::Active || opted_out {
        return State::Disabled;
    }
    let covering = f.rules().filter(|r| r.scope().covers(p));
    let mut live = false;
    for r in covering {
        match &r.kind {
            crate::RuleKind::Halt { .. } => return State::Disabled,
            crate::RuleKind::GoLive { effective_at, .. } if *effective_at <= at(now) => live = true,
            _ => {}
        }
    }
    if live { State::Enabled } else { State::Disabled }
}

fn state(book: &RuleBook, p: &Practice, opted_out: bool, now: u64) -> State {
    let opt = opted_out.then(|| opt_out(p.ods.as_str()));
    evaluate(
        book.feature(&key()).expect("feature"),
        p,
        opt.as_ref(),
        &ctx(now),
        false,
    )
    .state
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn indexed_evaluation_matches_a_full_scan(
        steps in arb_steps(), practices in prop::collection::vec(arb_practice(), 1..8),
        opted in any::<bool>(), now in 0u64..400,
    ) {
        let book = book_from(&steps);
        for p in &practices {
            prop_assert_eq!(state(&book, p, opted, now), naive(&book, p, opted, now));
        }
    }

    #[test]
    fn adding_a_halt_never_turns_a_practice_on(
        steps in arb_steps(), extra in arb_scope(), practices in prop::collection::vec(arb_practice(), 1..8),
        now in 0u64..400,
    ) {
        let before = book_from(&steps);
        let mut with_halt = steps.clone();
        with_halt.push(Halt("extra-halt", extra));
        let after = book_from(&with_halt);
        for p in &practices {
            if state(&after, p, false, now) == State::Enabled {
                prop_assert_eq!(state(&before, p, false, now), State::Enabled);
            }
        }
    }

    #[test]
    fn removing_an_opt_out_never_turns_on_a_halted_practice(
        steps in arb_steps(), practices in prop::collection::vec(arb_practice(), 1..8), now in 0u64..400,
    ) {
        let book = book_from(&steps);
        let f = book.feature(&key()).expect("feature");
        for p in &practices {
            let halted = f.rules().any(|r| {
                matches!(r.kind, crate::RuleKind::Halt { .. }) && r.scope().covers(p)
            });
            prop_assert_eq!(state(&book, p, true, now), State::Disabled);
            if halted {
                prop_assert_eq!(state(&book, p, false, now), State::Disabled);
            }
        }
    }

    #[test]
    fn a_resume_never_turns_on_a_practice_under_a_halt_it_does_not_name(
        steps in arb_steps(), lift in 0usize..6, practices in prop::collection::vec(arb_practice(), 1..8),
        now in 0u64..400,
    ) {
        let before = book_from(&steps);
        let mut with_resume = steps.clone();
        with_resume.push(Resume("r", HALT_IDS[lift]));
        let after = book_from(&with_resume);
        let f = before.feature(&key()).expect("feature");
        for p in &practices {
            let other_halt = f.rules().any(|r| {
                matches!(r.kind, crate::RuleKind::Halt { .. })
                    && r.command.as_str() != HALT_IDS[lift]
                    && r.scope().covers(p)
            });
            if other_halt {
                prop_assert_eq!(state(&after, p, false, now), State::Disabled);
            }
        }
    }

    #[test]
    fn nothing_fails_open(
        steps in arb_steps(), practices in prop::collection::vec(arb_practice(), 1..8), now in 0u64..400,
        stale_by in 61u64..10_000,
    ) {
        // A fail-closed feature with stale control, a never-synchronised book, inactive
        // practices and held practices (awaiting the national register's opt-outs) are never
        // ENABLED, whatever the rules.
        let book = book_with(DefineClosed(60), &steps);
        let f = book.feature(&key()).expect("feature");
        let stale = Context { now: at(now + stale_by), synchronised: true, last_contact: Some(at(now)) };
        let never = Context { synchronised: false, ..ctx(now) };
        for p in &practices {
            prop_assert_eq!(evaluate(f, p, None, &stale, false).state, State::Disabled);
            prop_assert_eq!(evaluate(f, p, None, &never, false).state, State::Unknown);
            if p.status != PracticeStatus::Active {
                prop_assert_eq!(evaluate(f, p, None, &ctx(now), false).state, State::Disabled);
            }
            let held = evaluate_held(f, p, true, None, &ctx(now), true);
            prop_assert_ne!(held.state, State::Enabled);
            if p.status == PracticeStatus::Active {
                prop_assert_eq!(held.reason, Reason::AwaitingOptOutCheck);
            }
        }
        // The same with a fail-static feature, whose rules alone may switch practices on.
        let book = book_from(&steps);
        let f = book.feature(&key()).expect("feature");
        for p in &practices {
            let opt = opt_out(p.ods.as_str());
            for opted in [None, Some(&opt)] {
                prop_assert_ne!(evaluate_held(f, p, true, opted, &ctx(now), false).state, State::Enabled);
            }
        }
    }

    #[test]
    fn compacted_state_answers_exactly_as_the_full_log(
        closed in any::<bool>(), steps in arb_steps(), practices in prop::collection::vec(arb_practice(), 1..8),
        opted in any::<bool>(), now in 0u64..400, contact_age in 0u64..120,
    ) {
        let define = if closed { DefineClosed(60) } else { Define };
        let (book, log) = log_with(define, &steps);
        // The effective state alone, as a snapshot carries it and a store reloads it.
        let mut restored = RuleBook::new();
        for (sequence, id) in book.effective_commands() {
            let cmd = log.iter().find(|c| c.id == id && c.sequence == sequence).expect("held command is in the log");
            restored.restore(cmd).expect("effective commands restore");
        }
        restored.mark_synchronised(book.applied_sequence());
        prop_assert_eq!(restored.applied_sequence(), book.applied_sequence());
        // Compaction keeps no lifted halt and no resume.
        let held = book.effective_commands().len();
        let kept = log.iter().filter(|c| !matches!(c.action, Action::Resume { .. })).count();
        prop_assert!(held <= kept);
        let ctx = Context { now: at(now + contact_age), synchronised: true, last_contact: Some(at(now)) };
        for p in &practices {
            let want = full_log_answer(&log, p, opted, &ctx);
            prop_assert_eq!(book_answer(&book, p, opted, &ctx), want);
            prop_assert_eq!(book_answer(&restored, p, opted, &ctx), want);
        }
    }

    #[test]
    fn identifier_parsers_never_panic(s in "\\PC{0,80}") {
        let _ = OdsCode::parse(&s);
        let _ = RegionCode::parse_region(&s);
        let _ = IcbCode::parse(&s);
        let _ = SubIcbCode::parse(&s);
        let _ = SupplierId::parse(&s);
        let _ = FeatureKey::parse(&s);
        let _ = CommandId::parse(&s);
    }

    #[test]
    fn the_estate_reader_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = load(&bytes, SUPPLIERS);
        let _ = load(EPRACCUR, &bytes);
    }
}
