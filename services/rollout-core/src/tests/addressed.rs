//! Commands addressed to one supplier (redeliveries): only that supplier's book acts on them;
//! every other takes the sequence and changes nothing, frozen or not, and never restores one.

use super::{Step::*, command};
use crate::{Action, ApplyError, Command, CommandId, FeatureKey, Outcome, RuleBook, SupplierId};

fn to(supplier: &str, mut c: Command) -> Command {
    c.supplier = Some(SupplierId::parse(supplier).expect("supplier"));
    c
}

fn tpp_book() -> RuleBook {
    let mut book = RuleBook::for_supplier(SupplierId::parse("tpp").expect("supplier"));
    book.apply(&command(Define, 1), None).expect("define");
    book.apply(&command(Halt("h1", "national"), 2), None)
        .expect("halt");
    book
}

fn held(book: &RuleBook) -> Vec<String> {
    book.effective_commands()
        .into_iter()
        .map(|(_, id)| id.to_string())
        .collect()
}

#[test]
fn a_command_addressed_elsewhere_is_a_no_op_that_takes_its_sequence() {
    let mut book = tpp_book();
    let resume = to("emis", command(Resume("r1", "h1"), 3));
    assert!(!book.acts_on(&resume));
    assert_eq!(book.lifts(&resume), Vec::<u64>::new());
    assert_eq!(book.apply(&resume, None), Ok(Outcome::Applied));
    let go_live = to("emis", command(GoLive("g1", "national", 0), 4));
    assert_eq!(
        book.apply(&go_live, Some("winter change freeze")),
        Ok(Outcome::Applied),
        "a freeze rejects nothing addressed elsewhere"
    );
    assert_eq!(book.applied_sequence(), 4);
    assert_eq!(
        held(&book),
        ["def-1", "h1"],
        "the halt stands; the go-live is not filed"
    );
    assert!(book.halt(&CommandId::parse("h1").expect("id")).is_some());
}

#[test]
fn a_command_addressed_here_acts_as_any_other() {
    let mut book = tpp_book();
    let resume = to("tpp", command(Resume("r1", "h1"), 3));
    assert_eq!(
        book.apply(&resume, Some("winter change freeze")),
        Ok(Outcome::Rejected(
            "supplier change freeze: winter change freeze".into()
        )),
        "a freeze rejects it here"
    );
    let again = to("tpp", command(Resume("r2", "h1"), 4));
    assert_eq!(book.lifts(&again), vec![2]);
    assert_eq!(book.apply(&again, None), Ok(Outcome::Applied));
    let go_live = to("tpp", command(GoLive("g1", "national", 0), 5));
    assert_eq!(book.apply(&go_live, None), Ok(Outcome::Applied));
    assert_eq!(held(&book), ["def-1", "g1"]);
}

#[test]
fn a_book_of_no_supplier_acts_on_no_addressed_command() {
    let mut book = RuleBook::new();
    book.apply(&command(Define, 1), None).expect("define");
    let go_live = to("tpp", command(GoLive("g1", "national", 0), 2));
    assert_eq!(book.apply(&go_live, None), Ok(Outcome::Applied));
    assert_eq!(held(&book), ["def-1"]);
}

#[test]
fn a_restore_never_takes_a_command_addressed_elsewhere() {
    let mut book = RuleBook::for_supplier(SupplierId::parse("tpp").expect("supplier"));
    book.restore(&command(Define, 1)).expect("definition");
    let elsewhere = to("emis", command(GoLive("g1", "national", 0), 2));
    assert_eq!(
        book.restore(&elsewhere),
        Err(ApplyError::AddressedElsewhere(
            CommandId::parse("g1").expect("id")
        ))
    );
    let here = to("tpp", command(GoLive("g2", "national", 0), 3));
    book.restore(&here).expect("addressed here");
    assert_eq!(held(&book), ["def-1", "g2"]);
    assert!(
        book.feature(&FeatureKey::parse(super::FEATURE).expect("key"))
            .is_some_and(|f| f.rules().any(|r| r.command.as_str() == "g2")),
        "the go-live is a rule in force"
    );
    assert!(matches!(here.action, Action::GoLive { .. }));
}
