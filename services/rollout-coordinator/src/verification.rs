//! A halt's verification judged from what the coordinator knows of each supplier: pure.
//!
//! Each supplier gets an outcome of its own. Only a supplier that applied the halt and
//! answered the read-back of its ENABLED practices in scope has its practices' state known
//! (VERIFIED or NOT_VERIFIED); for every other one the practices in scope are counted as
//! unverified and never as "0 enabled", and the consequence under the feature's fail mode
//! (DESIGN: FAIL_CLOSED, FAIL_STATIC) says what happens to them meanwhile.

use std::time::{Duration, SystemTime};

use rollout_core::{FailMode, SupplierId};
use rollout_net::wire;
use rollout_proto::v1::{
    self as pb,
    verify_command_response::{Consequence, Outcome, SupplierResult},
};

/// What the read-back of one supplier's ENABLED practices in scope gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadBack {
    /// Not asked: it is not delivered to, or has not applied the halt.
    NotAsked,
    /// It answered: how many practices in scope it answers ENABLED, and up to 100 of them.
    Answered { enabled: i32, named: Vec<String> },
    /// It did not answer in time, or answered an error or nonsense: why.
    Failed(String),
}

/// What the coordinator knows of one supplier when it verifies a halt.
#[derive(Debug, Clone)]
pub struct Facts {
    /// The supplier.
    pub supplier: SupplierId,
    /// Active practices of the supplier in the halt's scope, by the national estate.
    pub in_scope: i32,
    /// Whether the coordinator has an endpoint for it.
    pub delivered: bool,
    /// The last sequence it reported applied.
    pub applied_sequence: u64,
    /// When it last answered this coordinator process (`None` if not since it started).
    pub last_contact: Option<SystemTime>,
    /// The last contact on record from before this process started (the store keeps contact
    /// only with durable changes): shown, never used to time anything.
    pub contact_on_record: Option<SystemTime>,
    /// When it last answered having applied every command dispatched then: the contact its
    /// fail-closed features count (unknown since this coordinator started, if never).
    pub in_step_contact: Option<SystemTime>,
    /// The last error delivering to it, if any.
    pub last_error: String,
    /// The read-back.
    pub read_back: ReadBack,
}

/// The halt being verified: its sequence and its feature's fail mode.
#[derive(Debug, Clone, Copy)]
pub struct Halt {
    /// The halt's global sequence.
    pub sequence: u64,
    /// The fail mode of the feature it halts.
    pub fail_mode: FailMode,
}

impl Facts {
    /// Whether the supplier has applied the halt (a halt is never rejected: every supplier
    /// applies one, frozen or not).
    pub fn applied(&self, halt: &Halt) -> bool {
        self.applied_sequence >= halt.sequence
    }
}

/// The supplier's outcome and the counts and consequence that go with it.
pub fn judge(halt: &Halt, f: Facts) -> SupplierResult {
    let mut r = SupplierResult {
        supplier: format!("suppliers/{}", f.supplier),
        in_scope_count: f.in_scope,
        applied_sequence: i64::try_from(f.applied_sequence).unwrap_or(i64::MAX),
        last_contact_time: f.last_contact.or(f.contact_on_record).map(wire::timestamp),
        ..Default::default()
    };
    let outcome = if !f.delivered {
        Outcome::NotDelivered
    } else if !f.applied(halt) {
        r.error = format!(
            "has applied up to sequence {}, not yet the halt's {}",
            f.applied_sequence, halt.sequence
        );
        if !f.last_error.is_empty() {
            r.error = rollout_core::audit::printable(
                &format!("{}; last delivery error: {}", r.error, f.last_error),
                crate::answers::MAX_FAULT_CHARS,
            );
        }
        Outcome::NotApplied
    } else {
        match f.read_back {
            ReadBack::Answered { enabled, named } => {
                r.enabled_count = enabled;
                r.enabled_practices = named;
                r.checked_count = f.in_scope;
                if enabled == 0 {
                    Outcome::Verified
                } else {
                    Outcome::NotVerified
                }
            }
            ReadBack::Failed(why) => {
                r.error = why;
                Outcome::Unreachable
            }
            ReadBack::NotAsked => {
                r.error = "was not asked".to_owned();
                Outcome::Unreachable
            }
        }
    };
    r.outcome = outcome.into();
    if matches!(
        outcome,
        Outcome::NotApplied | Outcome::Unreachable | Outcome::NotDelivered
    ) {
        r.unverified_count = f.in_scope;
    }
    if !matches!(outcome, Outcome::Verified | Outcome::NotDelivered) {
        // The contact its fail-closed features count: the last in step with the coordinator,
        // as this process saw it; not known if it has not seen one since it started.
        r.consequence = Some(consequence(halt.fail_mode, f.in_step_contact));
    }
    r
}

/// What happens to a supplier's practices while it is not verified: FAIL_CLOSED turns them off
/// at `last_counted` (its last contact in step with the coordinator) plus the control TTL,
/// unless it catches up first (unset when that contact is not known); FAIL_STATIC keeps its
/// last applied state.
pub fn consequence(fail_mode: FailMode, last_counted: Option<SystemTime>) -> Consequence {
    match fail_mode {
        FailMode::Static => Consequence {
            fail_mode: pb::FailMode::Static.into(),
            ..Default::default()
        },
        FailMode::Closed { ttl } => Consequence {
            fail_mode: pb::FailMode::Closed.into(),
            off_time: last_counted.and_then(|t| t.checked_add(ttl)).map(wire::timestamp),
            control_ttl: prost_types::Duration::try_from(ttl).ok(),
        },
    }
}

/// The whole command's verdict: in force, something in scope, every supplier with practices
/// in scope VERIFIED and none NOT_VERIFIED.
pub fn verified(results: &[SupplierResult], lifted: bool) -> bool {
    let in_scope: i32 = results.iter().map(|r| r.in_scope_count).sum();
    !lifted
        && in_scope > 0
        && results.iter().all(|r| match r.outcome() {
            Outcome::Verified => true,
            Outcome::NotVerified => false,
            _ => r.in_scope_count == 0,
        })
}

/// The default time each supplier has to answer.
pub const DEFAULT_SUPPLIER_TIMEOUT: Duration = Duration::from_secs(2);
/// The shortest time a caller may give each supplier.
pub const MIN_SUPPLIER_TIMEOUT: Duration = Duration::from_millis(100);
/// The longest time a caller may give each supplier.
pub const MAX_SUPPLIER_TIMEOUT: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    const SEQ: u64 = 10;

    fn facts(delivered: bool, applied: u64, read_back: ReadBack) -> Facts {
        Facts {
            supplier: SupplierId::parse("tpp").expect("supplier"),
            in_scope: 42,
            delivered,
            applied_sequence: applied,
            last_contact: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000)),
            contact_on_record: None,
            in_step_contact: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000)),
            last_error: String::new(),
            read_back,
        }
    }

    fn closed() -> Halt {
        Halt {
            sequence: SEQ,
            fail_mode: FailMode::Closed {
                ttl: Duration::from_secs(60),
            },
        }
    }

    struct Row {
        what: &'static str,
        facts: Facts,
        outcome: Outcome,
        enabled: i32,
        checked: i32,
        unverified: i32,
        consequence: bool,
    }

    #[test]
    fn each_supplier_gets_the_outcome_its_facts_support() {
        let answered = |enabled| ReadBack::Answered {
            enabled,
            named: Vec::new(),
        };
        let rows = [
            Row {
                what: "applied, none enabled",
                facts: facts(true, SEQ, answered(0)),
                outcome: Outcome::Verified,
                enabled: 0,
                checked: 42,
                unverified: 0,
                consequence: false,
            },
            Row {
                what: "applied, three enabled",
                facts: facts(true, SEQ + 2, answered(3)),
                outcome: Outcome::NotVerified,
                enabled: 3,
                checked: 42,
                unverified: 0,
                consequence: true,
            },
            Row {
                what: "behind: not asked, never counted as none enabled",
                facts: facts(true, SEQ - 1, ReadBack::NotAsked),
                outcome: Outcome::NotApplied,
                enabled: 0,
                checked: 0,
                unverified: 42,
                consequence: true,
            },
            Row {
                what: "behind, even if it answered",
                facts: facts(true, SEQ - 1, answered(0)),
                outcome: Outcome::NotApplied,
                enabled: 0,
                checked: 0,
                unverified: 42,
                consequence: true,
            },
            Row {
                what: "applied, silent",
                facts: facts(true, SEQ, ReadBack::Failed("did not answer within 2s".into())),
                outcome: Outcome::Unreachable,
                enabled: 0,
                checked: 0,
                unverified: 42,
                consequence: true,
            },
            Row {
                what: "no endpoint",
                facts: facts(false, 0, ReadBack::NotAsked),
                outcome: Outcome::NotDelivered,
                enabled: 0,
                checked: 0,
                unverified: 42,
                consequence: false,
            },
        ];
        for row in rows {
            let r = judge(&closed(), row.facts);
            assert_eq!(r.outcome(), row.outcome, "{}", row.what);
            assert_eq!(r.enabled_count, row.enabled, "{}: enabled", row.what);
            assert_eq!(r.checked_count, row.checked, "{}: checked", row.what);
            assert_eq!(r.unverified_count, row.unverified, "{}: unverified", row.what);
            assert_eq!(
                r.consequence.is_some(),
                row.consequence,
                "{}: consequence",
                row.what
            );
            assert_eq!(r.in_scope_count, 42, "{}", row.what);
        }
    }

    #[test]
    fn fail_closed_turns_off_at_last_contact_plus_ttl_and_fail_static_never() {
        let contact = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let closed = FailMode::Closed {
            ttl: Duration::from_secs(60),
        };
        let c = consequence(closed, Some(contact));
        assert_eq!(c.fail_mode(), pb::FailMode::Closed);
        assert_eq!(c.off_time.expect("off time").seconds, 1_060);
        assert_eq!(c.control_ttl.expect("ttl").seconds, 60);
        assert!(
            consequence(closed, None).off_time.is_none(),
            "not known: never guessed"
        );
        let c = consequence(FailMode::Static, Some(contact));
        assert_eq!(c.fail_mode(), pb::FailMode::Static);
        assert!(c.off_time.is_none() && c.control_ttl.is_none());
    }

    /// A supplier stuck behind does not count the coordinator's contact: its practices turn
    /// the feature off at its last contact in step plus the TTL, however recently it answered.
    #[test]
    fn a_supplier_behind_turns_off_at_its_last_contact_in_step_plus_ttl() {
        let stuck = Facts {
            last_contact: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(5_000)),
            in_step_contact: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000)),
            ..facts(true, SEQ - 1, ReadBack::NotAsked)
        };
        let r = judge(&closed(), stuck.clone());
        assert_eq!(r.outcome(), Outcome::NotApplied);
        assert_eq!(
            r.last_contact_time.expect("last contact").seconds,
            5_000,
            "shown as it is"
        );
        let off = r.consequence.and_then(|c| c.off_time).expect("off time");
        assert_eq!(off.seconds, 1_060, "from the last contact in step");
        // Not seen in step since the coordinator started (after a restart, the contact on
        // record is shown but says nothing of when it was last in step): no time is given.
        let unknown = Facts {
            in_step_contact: None,
            last_contact: None,
            contact_on_record: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(4_000)),
            ..stuck
        };
        let r = judge(&closed(), unknown);
        assert_eq!(r.last_contact_time.expect("on record").seconds, 4_000);
        assert!(r.consequence.and_then(|c| c.off_time).is_none());
    }

    #[test]
    fn the_verdict_needs_every_supplier_with_practices_in_scope_verified() {
        let result = |outcome: Outcome, in_scope| SupplierResult {
            outcome: outcome.into(),
            in_scope_count: in_scope,
            ..Default::default()
        };
        let ok = result(Outcome::Verified, 10);
        assert!(verified(std::slice::from_ref(&ok), false));
        assert!(!verified(std::slice::from_ref(&ok), true), "a lifted halt");
        assert!(
            !verified(&[result(Outcome::Verified, 0)], false),
            "nothing in scope"
        );
        assert!(
            verified(&[ok.clone(), result(Outcome::Unreachable, 0)], false),
            "a silent supplier with nothing in scope does not hold it back"
        );
        for silent in [Outcome::Unreachable, Outcome::NotApplied, Outcome::NotDelivered] {
            assert!(!verified(&[ok.clone(), result(silent, 1)], false), "{silent:?}");
        }
        assert!(
            !verified(&[ok, result(Outcome::NotVerified, 0)], false),
            "enabled practices the estate does not place in scope still count"
        );
    }
}
