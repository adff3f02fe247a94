//! Rule tables and property tests for the domain rules (README.md, "The rules").

mod addressed;

use std::time::{Duration, SystemTime};

use proptest::prelude::*;

use crate::{
    Action, ApplyError, Command, CommandId, Context, Estate, FailMode, FeatureDef, FeatureKey, IcbCode,
    OdsCode, OptOut, Outcome, Practice, PracticeStatus, Reason, RegionCode, RuleBook, Scope, Source, State,
    SubIcbCode, SupplierId, evaluate, evaluate_held,
};

const FEATURE: &str = "prospective-record-access";
const T0: Duration = Duration::from_secs(1_700_000_000);

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + T0 + Duration::from_secs(secs)
}

fn practice(
    ods: &str,
    supplier: &str,
    region: &str,
    icb: &str,
    sub_icb: &str,
    status: PracticeStatus,
) -> Practice {
    Practice {
        ods: OdsCode::parse(ods).expect("fixture ods"),
        name: format!("practice {ods}"),
        region: RegionCode::parse_region(region).expect("fixture region"),
        icb: IcbCode::parse(icb).expect("fixture icb"),
        sub_icb: SubIcbCode::parse(sub_icb).expect("fixture sub-icb"),
        supplier: SupplierId::parse(supplier).expect("fixture supplier"),
        status,
    }
}

/// The fixture practices the tables refer to by code.
fn fixture(ods: &str) -> Practice {
    use PracticeStatus::*;
    match ods {
        "A81001" => practice("A81001", "emis", "Y60", "QN7", "33G", Active),
        "A81002" => practice("A81002", "emis", "Y60", "QN7", "44H", Active),
        "B82001" => practice("B82001", "tpp", "Y58", "QWJ", "03V", Active),
        "C83001" => practice("C83001", "emis", "Y60", "QN7", "33G", Closed),
        "C83002" => practice("C83002", "tpp", "Y58", "QWJ", "03V", Dormant),
        "C83003" => practice("C83003", "cegedim", "Y61", "QAB", "12X", Proposed),
        "D84001" => practice("D84001", "microtest", "Y63", "QXY", "99Z", Active),
        other => panic!("no fixture practice {other}"),
    }
}

fn scope(s: &str) -> Scope {
    let (kind, value) = s.split_once(':').unwrap_or((s, ""));
    match kind {
        "national" => Scope::National,
        "supplier" => Scope::Supplier(SupplierId::parse(value).expect("scope")),
        "region" => Scope::Region(RegionCode::parse_region(value).expect("scope")),
        "icb" => Scope::Icb(IcbCode::parse(value).expect("scope")),
        "sub-icb" => Scope::SubIcb(SubIcbCode::parse(value).expect("scope")),
        "practices" => Scope::practices(value.split(',').collect::<Vec<_>>().into_iter()).expect("scope"),
        other => panic!("bad scope kind {other}"),
    }
}

/// A step of a table row: one coordinator command, given its id.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// Define the feature, fail-static.
    Define,
    /// Define the feature, fail-closed with a TTL in seconds.
    DefineClosed(u64),
    /// Halt `id` in a scope.
    Halt(&'static str, &'static str),
    /// Go live `id` in a scope, effective at a time (seconds after T0).
    GoLive(&'static str, &'static str, u64),
    /// Resume `id` lifting the named halts (comma separated).
    Resume(&'static str, &'static str),
}

fn command(step: Step, sequence: u64) -> Command {
    let (id, action) = match step {
        Step::Define | Step::DefineClosed(_) => (
            format!("def-{sequence}"),
            Action::CreateFeature(FeatureDef {
                key: FeatureKey::parse(FEATURE).expect("key"),
                description: String::new(),
                fail_mode: match step {
                    Step::DefineClosed(ttl) => FailMode::Closed {
                        ttl: Duration::from_secs(ttl),
                    },
                    _ => FailMode::Static,
                },
                approvals_required: 1,
            }),
        ),
        Step::Halt(id, s) => (id.to_owned(), Action::Halt { scope: scope(s) }),
        Step::GoLive(id, s, t) => (
            id.to_owned(),
            Action::GoLive {
                scope: scope(s),
                effective_at: Some(at(t)),
            },
        ),
        Step::Resume(id, halts) => (
            id.to_owned(),
            Action::Resume {
                halts: halts
                    .split(',')
                    .map(|h| CommandId::parse(h).expect("halt id"))
                    .collect(),
            },
        ),
    };
    Command {
        id: CommandId::parse(&id).expect("command id"),
        sequence,
        feature: FeatureKey::parse(FEATURE).expect("key"),
        action,
        reason: format!("reason for {id}"),
        requester: "spiffe://gprollout.test/operator/alice".to_owned(),
        issued_at: at(0),
        approved_by: vec![],
        redelivery_of: None,
        supplier: None,
    }
}

fn book(steps: &[Step]) -> RuleBook {
    let mut book = RuleBook::new();
    for (i, step) in steps.iter().enumerate() {
        book.apply(&command(*step, i as u64 + 1), None)
            .expect("table steps apply");
    }
    book
}

fn opt_out(ods: &str) -> OptOut {
    OptOut {
        practice: OdsCode::parse(ods).expect("ods"),
        feature: FeatureKey::parse(FEATURE).expect("key"),
        reason: "the practice wrote to us".to_owned(),
        source: "letter".to_owned(),
        recorded_by: "spiffe://gprollout.test/supplier/emis/practice-admin".to_owned(),
        recorded_at: at(0),
    }
}

/// One table row.
struct Row {
    name: &'static str,
    steps: &'static [Step],
    practice: &'static str,
    /// Moves the practice after the rules were made (new ICB, supplier...).
    moved: Option<fn(&mut Practice)>,
    opted_out: bool,
    /// The practice joined the supplier from another and awaits the opt-out check.
    held: bool,
    /// Seconds after T0 at which to evaluate.
    now: u64,
    /// Seconds after T0 of the last contact; `None` for never.
    contact: Option<u64>,
    expect: (State, Reason, Option<&'static str>),
}

const fn row(
    name: &'static str,
    steps: &'static [Step],
    practice: &'static str,
    expect: (State, Reason, Option<&'static str>),
) -> Row {
    Row {
        name,
        steps,
        practice,
        moved: None,
        opted_out: false,
        held: false,
        now: 100,
        contact: Some(100),
        expect,
    }
}

fn check(rows: &[Row]) {
    let mut failures = Vec::new();
    for r in rows {
        let book = book(r.steps);
        let mut p = fixture(r.practice);
        if let Some(moved) = r.moved {
            moved(&mut p);
        }
        let opt = r.opted_out.then(|| opt_out(r.practice));
        let ctx = Context {
            now: at(r.now),
            synchronised: book.synchronised(),
            last_contact: r.contact.map(at),
        };
        let key = FeatureKey::parse(FEATURE).expect("key");
        let got = match book.feature(&key) {
            Some(f) => {
                let e = evaluate_held(f, &p, r.held, opt.as_ref(), &ctx, true);
                let deciding = e.deciding.map(|d| match d {
                    crate::Applicable::OptOut(_) => "opt-out".to_owned(),
                    crate::Applicable::GoLive(r)
                    | crate::Applicable::Scheduled(r)
                    | crate::Applicable::Halt(r) => r.command.to_string(),
                });
                // The deciding rule is always among the listed ones.
                if let Some(d) = e.deciding {
                    assert!(e.rules.contains(&d), "{}: deciding rule not listed", r.name);
                }
                (e.state, e.reason, deciding)
            }
            None => (State::Unknown, Reason::NeverSynchronised, None),
        };
        let want = (r.expect.0, r.expect.1, r.expect.2.map(str::to_owned));
        if got != want {
            failures.push(format!("{}: got {got:?}, want {want:?}", r.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

use {Reason as R, State as S, Step::*};

const LIVE: &[Step] = &[Define, GoLive("g1", "national", 0)];

#[test]
fn rule_table() {
    let rows = [
        // Off unless a go-live covers the practice and has taken effect.
        row(
            "defined only: not live",
            &[Define],
            "A81001",
            (S::Disabled, R::NotLive, None),
        ),
        row(
            "national go-live",
            LIVE,
            "A81001",
            (S::Enabled, R::Live, Some("g1")),
        ),
        row(
            "go-live before its time",
            &[Define, GoLive("g1", "national", 500)],
            "A81001",
            (S::Disabled, R::Scheduled, Some("g1")),
        ),
        Row {
            now: 500,
            contact: Some(500),
            ..row(
                "go-live exactly at its time",
                &[Define, GoLive("g1", "national", 500)],
                "A81001",
                (S::Enabled, R::Live, Some("g1")),
            )
        },
        row(
            "earliest effective go-live decides",
            &[Define, GoLive("g1", "icb:QN7", 0), GoLive("g2", "national", 0)],
            "A81001",
            (S::Enabled, R::Live, Some("g1")),
        ),
        row(
            "a later-effective go-live does not hide a live one",
            &[
                Define,
                GoLive("g1", "national", 900),
                GoLive("g2", "supplier:emis", 10),
            ],
            "A81001",
            (S::Enabled, R::Live, Some("g2")),
        ),
        // Scope matching, every kind, covered and not covered.
        row(
            "supplier scope covers",
            &[Define, GoLive("g1", "supplier:emis", 0)],
            "A81001",
            (S::Enabled, R::Live, Some("g1")),
        ),
        row(
            "supplier scope misses",
            &[Define, GoLive("g1", "supplier:emis", 0)],
            "B82001",
            (S::Disabled, R::NotLive, None),
        ),
        row(
            "region scope covers",
            &[Define, GoLive("g1", "region:Y58", 0)],
            "B82001",
            (S::Enabled, R::Live, Some("g1")),
        ),
        row(
            "region scope misses",
            &[Define, GoLive("g1", "region:Y58", 0)],
            "A81001",
            (S::Disabled, R::NotLive, None),
        ),
        row(
            "icb scope covers",
            &[Define, GoLive("g1", "icb:QN7", 0)],
            "A81002",
            (S::Enabled, R::Live, Some("g1")),
        ),
        row(
            "icb scope misses",
            &[Define, GoLive("g1", "icb:QN7", 0)],
            "D84001",
            (S::Disabled, R::NotLive, None),
        ),
        row(
            "sub-icb scope covers",
            &[Define, GoLive("g1", "sub-icb:33G", 0)],
            "A81001",
            (S::Enabled, R::Live, Some("g1")),
        ),
        row(
            "sub-icb scope misses",
            &[Define, GoLive("g1", "sub-icb:33G", 0)],
            "A81002",
            (S::Disabled, R::NotLive, None),
        ),
        row(
            "practice list covers",
            &[Define, GoLive("g1", "practices:A81002,D84001", 0)],
            "D84001",
            (S::Enabled, R::Live, Some("g1")),
        ),
        row(
            "practice list misses",
            &[Define, GoLive("g1", "practices:A81002,D84001", 0)],
            "A81001",
            (S::Disabled, R::NotLive, None),
        ),
        // Halts.
        row(
            "national halt after go-live",
            &[Define, GoLive("g1", "national", 0), Halt("h1", "national")],
            "A81001",
            (S::Disabled, R::Halted, Some("h1")),
        ),
        row(
            "halt before go-live still wins",
            &[Define, Halt("h1", "national"), GoLive("g1", "national", 0)],
            "A81001",
            (S::Disabled, R::Halted, Some("h1")),
        ),
        row(
            "icb halt covers",
            &[Define, GoLive("g1", "national", 0), Halt("h1", "icb:QN7")],
            "A81002",
            (S::Disabled, R::Halted, Some("h1")),
        ),
        row(
            "icb halt leaves other ICBs",
            &[Define, GoLive("g1", "national", 0), Halt("h1", "icb:QN7")],
            "B82001",
            (S::Enabled, R::Live, Some("g1")),
        ),
        row(
            "supplier halt covers",
            &[Define, GoLive("g1", "national", 0), Halt("h1", "supplier:tpp")],
            "B82001",
            (S::Disabled, R::Halted, Some("h1")),
        ),
        row(
            "region halt covers",
            &[Define, GoLive("g1", "national", 0), Halt("h1", "region:Y63")],
            "D84001",
            (S::Disabled, R::Halted, Some("h1")),
        ),
        row(
            "sub-icb halt covers",
            &[Define, GoLive("g1", "national", 0), Halt("h1", "sub-icb:44H")],
            "A81002",
            (S::Disabled, R::Halted, Some("h1")),
        ),
        row(
            "practice-list halt covers",
            &[
                Define,
                GoLive("g1", "national", 0),
                Halt("h1", "practices:A81001"),
            ],
            "A81001",
            (S::Disabled, R::Halted, Some("h1")),
        ),
        row(
            "practice-list halt leaves others",
            &[
                Define,
                GoLive("g1", "national", 0),
                Halt("h1", "practices:A81001"),
            ],
            "A81002",
            (S::Enabled, R::Live, Some("g1")),
        ),
        row(
            "newest of two halts decides",
            &[
                Define,
                GoLive("g1", "national", 0),
                Halt("h1", "national"),
                Halt("h2", "icb:QN7"),
            ],
            "A81001",
            (S::Disabled, R::Halted, Some("h2")),
        ),
        row(
            "halt alone, no go-live",
            &[Define, Halt("h1", "national")],
            "A81001",
            (S::Disabled, R::Halted, Some("h1")),
        ),
        // Resumes lift exactly what they name.
        row(
            "resume lifts the named halt",
            &[
                Define,
                GoLive("g1", "national", 0),
                Halt("h1", "national"),
                Resume("r1", "h1"),
            ],
            "A81001",
            (S::Enabled, R::Live, Some("g1")),
        ),
        row(
            "resume never lifts a halt it does not name",
            &[
                Define,
                GoLive("g1", "national", 0),
                Halt("h1", "national"),
                Halt("h2", "icb:QN7"),
                Resume("r1", "h1"),
            ],
            "A81001",
            (S::Disabled, R::Halted, Some("h2")),
        ),
        row(
            "a delayed resume cannot undo a newer halt",
            &[
                Define,
                GoLive("g1", "national", 0),
                Halt("h1", "national"),
                Halt("h2", "national"),
                Resume("r1", "h1"),
            ],
            "B82001",
            (S::Disabled, R::Halted, Some("h2")),
        ),
        row(
            "resume of both halts",
            &[
                Define,
                GoLive("g1", "national", 0),
                Halt("h1", "national"),
                Halt("h2", "icb:QN7"),
                Resume("r1", "h1,h2"),
            ],
            "A81001",
            (S::Enabled, R::Live, Some("g1")),
        ),
        row(
            "resume naming an unknown halt lifts nothing",
            &[
                Define,
                GoLive("g1", "national", 0),
                Halt("h1", "national"),
                Resume("r1", "nope"),
            ],
            "A81001",
            (S::Disabled, R::Halted, Some("h1")),
        ),
        row(
            "resume naming a go-live lifts nothing",
            &[
                Define,
                GoLive("g1", "national", 0),
                Halt("h1", "national"),
                Resume("r1", "g1"),
            ],
            "A81001",
            (S::Disabled, R::Halted, Some("h1")),
        ),
        row(
            "resume does not switch on where no go-live covers",
            &[
                Define,
                GoLive("g1", "icb:QWJ", 0),
                Halt("h1", "national"),
                Resume("r1", "h1"),
            ],
            "A81001",
            (S::Disabled, R::NotLive, None),
        ),
        // Opt-outs beat everything the coordinator says.
        Row {
            opted_out: true,
            ..row(
                "opt-out beats go-live",
                LIVE,
                "A81001",
                (S::Disabled, R::OptedOut, Some("opt-out")),
            )
        },
        Row {
            opted_out: true,
            ..row(
                "opt-out beats resume",
                &[
                    Define,
                    GoLive("g1", "national", 0),
                    Halt("h1", "national"),
                    Resume("r1", "h1"),
                ],
                "A81001",
                (S::Disabled, R::OptedOut, Some("opt-out")),
            )
        },
        Row {
            opted_out: true,
            ..row(
                "opt-out with a halt too",
                &[Define, GoLive("g1", "national", 0), Halt("h1", "national")],
                "A81001",
                (S::Disabled, R::OptedOut, Some("opt-out")),
            )
        },
        Row {
            opted_out: true,
            ..row(
                "opt-out with nothing live",
                &[Define],
                "A81001",
                (S::Disabled, R::OptedOut, Some("opt-out")),
            )
        },
        // A practice that joined from another supplier waits for the national register's
        // opt-outs: after never-synchronised and not-active, before the opt-out.
        Row {
            held: true,
            ..row(
                "held practice is off under a go-live",
                LIVE,
                "A81001",
                (S::Disabled, R::AwaitingOptOutCheck, None),
            )
        },
        Row {
            held: true,
            opted_out: true,
            ..row(
                "held beats opt-out in the reason",
                LIVE,
                "A81001",
                (S::Disabled, R::AwaitingOptOutCheck, None),
            )
        },
        Row {
            held: true,
            ..row(
                "held beats a halt in the reason",
                &[Define, GoLive("g1", "national", 0), Halt("h1", "national")],
                "A81001",
                (S::Disabled, R::AwaitingOptOutCheck, None),
            )
        },
        Row {
            held: true,
            ..row(
                "closed beats held in the reason",
                LIVE,
                "C83001",
                (S::Disabled, R::PracticeNotActive, None),
            )
        },
        Row {
            held: true,
            ..row(
                "never synchronised beats held",
                &[],
                "A81001",
                (S::Unknown, R::NeverSynchronised, None),
            )
        },
        // Practice status.
        row(
            "closed practice is off",
            LIVE,
            "C83001",
            (S::Disabled, R::PracticeNotActive, None),
        ),
        row(
            "dormant practice is off",
            LIVE,
            "C83002",
            (S::Disabled, R::PracticeNotActive, None),
        ),
        row(
            "proposed practice is off",
            LIVE,
            "C83003",
            (S::Disabled, R::PracticeNotActive, None),
        ),
        Row {
            opted_out: true,
            ..row(
                "closed beats opt-out in the reason",
                LIVE,
                "C83001",
                (S::Disabled, R::PracticeNotActive, None),
            )
        },
        // Control staleness.
        Row {
            now: 1_000,
            contact: Some(100),
            ..row(
                "fail-closed after the TTL",
                &[DefineClosed(60), GoLive("g1", "national", 0)],
                "A81001",
                (S::Disabled, R::ControlStale, None),
            )
        },
        Row {
            now: 150,
            contact: Some(100),
            ..row(
                "fail-closed within the TTL",
                &[DefineClosed(60), GoLive("g1", "national", 0)],
                "A81001",
                (S::Enabled, R::Live, Some("g1")),
            )
        },
        Row {
            now: 160,
            contact: Some(100),
            ..row(
                "fail-closed exactly at the TTL",
                &[DefineClosed(60), GoLive("g1", "national", 0)],
                "A81001",
                (S::Enabled, R::Live, Some("g1")),
            )
        },
        Row {
            contact: None,
            ..row(
                "fail-closed with no contact since start",
                &[DefineClosed(60), GoLive("g1", "national", 0)],
                "A81001",
                (S::Disabled, R::ControlStale, None),
            )
        },
        Row {
            now: 100_000,
            contact: Some(100),
            ..row(
                "fail-static keeps serving when stale",
                LIVE,
                "A81001",
                (S::Enabled, R::Live, Some("g1")),
            )
        },
        Row {
            now: 1_000,
            contact: Some(100),
            ..row(
                "fail-closed stale with a halt reports stale",
                &[DefineClosed(60), Halt("h1", "national")],
                "A81001",
                (S::Disabled, R::ControlStale, None),
            )
        },
        // Never synchronised.
        Row {
            contact: None,
            ..row(
                "unknown before the first sync",
                &[],
                "A81001",
                (S::Unknown, R::NeverSynchronised, None),
            )
        },
        // Scopes are judged by current attributes.
        Row {
            moved: Some(|p| p.icb = IcbCode::parse("QWJ").expect("icb")),
            ..row(
                "moved ICB: judged by the new ICB's halt",
                &[Define, GoLive("g1", "national", 0), Halt("h1", "icb:QWJ")],
                "A81001",
                (S::Disabled, R::Halted, Some("h1")),
            )
        },
        Row {
            moved: Some(|p| p.icb = IcbCode::parse("QWJ").expect("icb")),
            ..row(
                "moved ICB: the old ICB's halt no longer applies",
                &[Define, GoLive("g1", "national", 0), Halt("h1", "icb:QN7")],
                "A81001",
                (S::Enabled, R::Live, Some("g1")),
            )
        },
        Row {
            moved: Some(|p| p.supplier = SupplierId::parse("tpp").expect("supplier")),
            ..row(
                "moved supplier: covered by the new supplier's go-live",
                &[Define, GoLive("g1", "supplier:tpp", 0)],
                "A81001",
                (S::Enabled, R::Live, Some("g1")),
            )
        },
    ];
    assert!(rows.len() >= 40, "the table must keep at least 40 cases");
    check(&rows);
}

#[test]
fn explanation_lists_rules_in_force_deciding_first_and_retires_lifted_halts() {
    let book = book(&[
        Define,
        GoLive("g1", "national", 0),
        Halt("h1", "national"),
        Resume("r1", "h1"),
        GoLive("g2", "icb:QN7", 900),
    ]);
    let f = book
        .feature(&FeatureKey::parse(FEATURE).expect("key"))
        .expect("feature");
    let ctx = Context {
        now: at(100),
        synchronised: true,
        last_contact: Some(at(100)),
    };
    let e = evaluate(f, &fixture("A81001"), None, &ctx, true);
    let kinds: Vec<_> = e
        .rules
        .iter()
        .map(|a| match a {
            crate::Applicable::GoLive(r) => format!("live {}", r.command),
            crate::Applicable::Scheduled(r) => format!("scheduled {}", r.command),
            crate::Applicable::Halt(r) => format!("halt {}", r.command),
            crate::Applicable::OptOut(_) => "opt-out".to_owned(),
        })
        .collect();
    // The lifted halt is retired: it is history (the coordinator's), not a rule in force. The
    // deciding rule comes first, then the newest.
    assert_eq!(kinds, ["live g1", "scheduled g2"]);
    assert_eq!(e.omitted, 0);
    assert!(
        e.explain().starts_with("enabled: live by command g1"),
        "{}",
        e.explain()
    );
    // Without explanation nothing is listed, and the answer is the same.
    let quiet = evaluate(f, &fixture("A81001"), None, &ctx, false);
    assert!(quiet.rules.is_empty());
    assert_eq!(
        (quiet.state, quiet.reason, quiet.deciding),
        (e.state, e.reason, e.deciding)
    );
}

#[test]
fn a_held_practice_says_plainly_that_it_waits_for_the_register() {
    let book = book(LIVE);
    let f = book
        .feature(&FeatureKey::parse(FEATURE).expect("key"))
        .expect("feature");
    let opt = opt_out("A81001");
    let e = evaluate_held(f, &fixture("A81001"), true, Some(&opt), &ctx(100), true);
    assert_eq!(
        (e.state, e.reason, e.deciding),
        (S::Disabled, R::AwaitingOptOutCheck, None)
    );
    assert_eq!(
        e.explain(),
        "disabled: the practice joined this supplier from another and stays off until the \
         coordinator has sent any opt-out the national register holds for it"
    );
    // The rules that apply are still listed for whoever asks why.
    assert_eq!(e.rules.len(), 2, "the opt-out and the go-live: {:?}", e.rules);
}

#[test]
fn apply_is_strictly_in_sequence() {
    let mut book = RuleBook::new();
    assert!(!book.synchronised());
    assert_eq!(
        book.apply(&command(Define, 2), None),
        Err(ApplyError::Gap { applied: 0, got: 2 })
    );
    assert_eq!(book.apply(&command(Define, 1), None), Ok(Outcome::Applied));
    assert_eq!(
        book.apply(&command(Define, 1), None),
        Err(ApplyError::AlreadyApplied { applied: 1, got: 1 })
    );
    assert_eq!(
        book.apply(&command(Halt("h1", "national"), 3), None),
        Err(ApplyError::Gap { applied: 1, got: 3 })
    );
    assert_eq!(
        book.apply(&command(Halt("h1", "national"), 2), None),
        Ok(Outcome::Applied)
    );
    assert_eq!(
        book.apply(&command(Halt("h1", "national"), 3), None),
        Err(ApplyError::DuplicateCommand(CommandId::parse("h1").expect("id")))
    );
    assert_eq!(book.applied_sequence(), 2);
    assert!(book.synchronised());
}

#[test]
fn freeze_rejects_go_live_and_resume_but_never_a_halt() {
    let mut book = book(&[Define, Halt("h1", "national")]);
    let freeze = Some("winter change freeze");
    let go = book.apply(&command(GoLive("g1", "national", 0), 3), freeze);
    assert!(
        matches!(go, Ok(Outcome::Rejected(ref r)) if r.contains("winter change freeze")),
        "{go:?}"
    );
    assert_eq!(
        book.apply(&command(Halt("h2", "icb:QN7"), 4), freeze),
        Ok(Outcome::Applied)
    );
    assert!(matches!(
        book.apply(&command(Resume("r1", "h1"), 5), freeze),
        Ok(Outcome::Rejected(_))
    ));
    assert_eq!(
        book.applied_sequence(),
        5,
        "rejections still advance the sequence"
    );
    let f = book
        .feature(&FeatureKey::parse(FEATURE).expect("key"))
        .expect("feature");
    assert_eq!(f.rules().len(), 2, "only the two halts are held");
    assert!(
        book.halt(&CommandId::parse("h1").expect("id"))
            .is_some_and(|h| matches!(h.kind, crate::RuleKind::Halt { .. }))
    );
}

#[test]
fn commands_for_undefined_features_are_refused() {
    let mut book = RuleBook::new();
    assert!(matches!(
        book.apply(&command(Halt("h1", "national"), 1), None),
        Err(ApplyError::UnknownFeature(_))
    ));
    assert_eq!(book.applied_sequence(), 0);
    book.apply(&command(Define, 1), None).expect("define");
    assert!(matches!(
        book.apply(&command(Define, 2), None),
        Err(ApplyError::FeatureExists(_))
    ));
}

#[test]
fn feature_definitions_are_range_checked() {
    let def = |fail_mode, approvals_required| FeatureDef {
        key: FeatureKey::parse(FEATURE).expect("key"),
        description: String::new(),
        fail_mode,
        approvals_required,
    };
    assert!(def(FailMode::Static, 1).validate().is_ok());
    assert!(def(FailMode::Static, 0).validate().is_err());
    assert!(def(FailMode::Static, 6).validate().is_err());
    let closed = |s| FailMode::Closed {
        ttl: Duration::from_secs(s),
    };
    assert!(def(closed(9), 1).validate().is_err());
    assert!(def(closed(10), 1).validate().is_ok());
    assert!(def(closed(8 * 24 * 3600), 1).validate().is_err());
}

#[test]
fn scope_lists_are_checked() {
    use crate::ScopeError;
    assert_eq!(
        Scope::practices(Vec::<&str>::new().into_iter()),
        Err(ScopeError::EmptyList)
    );
    let many: Vec<String> = (0..10_001).map(|i| format!("A{i:05}")).collect();
    assert_eq!(
        Scope::practices(many.iter().map(String::as_str)),
        Err(ScopeError::TooMany { count: 10_001 })
    );
    assert!(Scope::practices(many[..10_000].iter().map(String::as_str)).is_ok());
    assert!(matches!(
        Scope::practices(["A81001", "bad"].into_iter()),
        Err(ScopeError::Practice { index: 1, .. })
    ));
    let Ok(Scope::Practices(set)) = Scope::practices(["a81001", "A81001"].into_iter()) else {
        panic!("lower case is normalised and duplicates dropped")
    };
    assert_eq!(set.len(), 1);
}

// ---- The national reference files ----

const EPRACCUR: &[u8] = include_bytes!("../../../data/epraccur.csv");
const SUPPLIERS: &[u8] = include_bytes!("../../../data/gp-system-suppliers.csv");

fn load(practices: &[u8], suppliers: &[u8]) -> Result<Estate, crate::EstateError> {
    Estate::parse(
        Source {
            name: "epraccur.csv",
            bytes: practices,
        },
        Source {
            name: "gp-system-suppliers.csv",
            bytes: suppliers,
        },
    )
}

#[test]
fn synthetic_estate_loads_with_the_right_counts() {
    let estate = load(EPRACCUR, SUPPLIERS).expect("the synthetic estate loads");
    assert_eq!(estate.len(), 6_400, "GP practices (setting 4) of any status");
    let active = estate.active_by_supplier();
    let counts: Vec<(&str, usize)> = active.iter().map(|(s, n)| (s.as_str(), *n)).collect();
    assert_eq!(
        counts,
        [
            ("cegedim", 178),
            ("emis", 3_386),
            ("microtest", 178),
            ("tpp", 2_558)
        ]
    );
    assert_eq!(active.values().sum::<usize>(), 6_300);
    let emis = estate.for_supplier(&SupplierId::parse("emis").expect("emis"));
    assert!(emis.practices().all(|p| p.supplier.as_str() == "emis"));
    // The index finds every practice under its own code, in both estates, and the order is by code.
    for e in [&estate, &emis] {
        assert!(e.practices().all(|p| e.get(&p.ods) == Some(p)));
        assert!(
            e.practices()
                .zip(e.practices().skip(1))
                .all(|(a, b)| a.ods < b.ods)
        );
    }
    assert_eq!(emis.len(), emis.practices().count());
    assert!(emis.get(&OdsCode::parse("Y99999").expect("ods")).is_none());
    let p = estate
        .get(&OdsCode::parse("L56296").expect("ods"))
        .expect("first row");
    assert_eq!(
        (p.region.as_str(), p.icb.as_str(), p.sub_icb.as_str()),
        ("Y60", "QN7", "33G")
    );
}

/// Replaces one field of one line of the practice file.
fn corrupt(line: usize, column: usize, value: &str) -> Vec<u8> {
    let text = std::str::from_utf8(EPRACCUR).expect("utf-8");
    let mut lines: Vec<String> = text.split("\r\n").map(str::to_owned).collect();
    let mut fields: Vec<String> = lines[line - 1].split("\",\"").map(str::to_owned).collect();
    let last = fields.len() - 1;
    // The split leaves the row's opening and closing quotes on the first and last fields.
    fields[column - 1] = match column - 1 {
        0 => format!("\"{value}"),
        i if i == last => format!("{value}\""),
        _ => value.to_owned(),
    };
    lines[line - 1] = fields.join("\",\"");
    lines.join("\r\n").into_bytes()
}

#[test]
fn a_bad_row_fails_the_whole_file_with_its_position() {
    let cases = [
        (corrupt(4_321, 13, "X"), "epraccur.csv:4321:13: status code \"X\""),
        (corrupt(17, 1, "1234"), "epraccur.csv:17:1: practice code"),
        (corrupt(2, 3, "Y99"), "epraccur.csv:2:3: region code"),
        (corrupt(6_500, 4, "ZZZ"), "epraccur.csv:6500:4: ICB code"),
        (corrupt(9, 15, "X"), "epraccur.csv:9:15: sub-ICB"),
        (corrupt(9, 26, "four"), "epraccur.csv:9:26: prescribing setting"),
    ];
    for (bytes, want) in cases {
        let err = load(&bytes, SUPPLIERS).expect_err(want).to_string();
        assert!(err.starts_with(want), "got {err:?}, want {want:?}");
    }
    let short = b"\"A81001\",\"X\"\r\n";
    let err = load(short, SUPPLIERS).expect_err("short row").to_string();
    assert_eq!(err, "epraccur.csv:1: expected 27 columns, found 2");

    let mut map = SUPPLIERS.to_vec();
    map.extend_from_slice(b"A00758,emis\n");
    let err = load(EPRACCUR, &map).expect_err("duplicate").to_string();
    assert!(
        err.starts_with("gp-system-suppliers.csv:6402:1: practice A00758 appears more than once"),
        "{err}"
    );
    let err = load(EPRACCUR, b"ods_code,supplier\n")
        .expect_err("unmapped")
        .to_string();
    assert!(
        err.contains("has no supplier in gp-system-suppliers.csv"),
        "{err}"
    );
}

// ---- Properties ----

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

fn ctx(now: u64) -> Context {
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

#[test]
fn answers_quote_at_most_120_characters_of_a_reason() {
    use crate::{QUOTED_REASON_CHARS, quoted};
    assert_eq!(quoted("letter of 2022-12-20"), "letter of 2022-12-20");
    let exact = "é".repeat(QUOTED_REASON_CHARS);
    assert_eq!(quoted(&exact), exact.as_str(), "exactly the limit is kept whole");
    let long = "é".repeat(1_000);
    let cut = quoted(&long);
    assert_eq!(cut.chars().count(), QUOTED_REASON_CHARS);
    assert!(cut.ends_with('…') && cut.starts_with("éé"), "{cut}");
}
