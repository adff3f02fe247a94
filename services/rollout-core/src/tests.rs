//! Rule tables and property tests for the domain rules (README.md, "The rules").

mod addressed;
mod estate;
mod properties;

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
    let e = evaluate_held(
        f,
        &fixture("A81001"),
        true,
        Some(&opt),
        &properties::ctx(100),
        true,
    );
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
