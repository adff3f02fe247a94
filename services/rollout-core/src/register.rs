//! The rules of the national opt-out register that both services keep: which of two copies of
//! a practice's opt-out record stands, and which practices a supplier holds off when they join
//! it from another supplier.
//!
//! A practice records (or withdraws) an opt-out at its supplier only; the coordinator keeps a
//! copy of every supplier's records (the register) and sends them back when a supplier lost
//! its store, or on to the new supplier when a practice moves. Copies of one record are told
//! apart by their update time alone: the later one is the practice's last word.

use std::{collections::BTreeSet, time::SystemTime};

use crate::{OdsCode, Practice, estate::Estate};

/// Whether a copy of a record updated at `incoming` replaces the one held, updated at `held`
/// (`None`: none held). Only a strictly later update does: an equal time is the same record
/// (a copy coming back), so taking it again changes nothing, and an older one never undoes
/// what the practice said since.
pub fn supersedes(incoming: SystemTime, held: Option<SystemTime>) -> bool {
    held.is_none_or(|held| incoming > held)
}

/// The update time of a new write of a record last updated at `held` (`None`: a first write):
/// now, or just after `held` if the clock reads earlier (stepped back, or a copy dated ahead
/// of it), so that the practice's newest word always supersedes its last one.
pub fn next_update(now: SystemTime, held: Option<SystemTime>) -> SystemTime {
    match held {
        Some(held) if held >= now => held + std::time::Duration::from_micros(1),
        _ => now,
    }
}

/// How far ahead of the receiver's clock a copy's update time may be (clocks differ by a few
/// seconds at most; a copy dated further ahead would outrank the practice's later words).
pub const MAX_CLOCK_AHEAD: std::time::Duration = std::time::Duration::from_secs(300);

/// The practices an estate import brings to a supplier that it did not hold before, which it
/// holds off until the coordinator has sent the register's records for them. None on the
/// store's first import (an empty `before`): a new or wiped store holds every practice for the
/// first time, and a wiped one gets its own records back by restore, not by transfer.
pub fn joined<'a>(before: &Estate, after: impl IntoIterator<Item = &'a Practice>) -> BTreeSet<OdsCode> {
    if before.is_empty() {
        return BTreeSet::new();
    }
    after
        .into_iter()
        .filter(|p| before.get(&p.ods).is_none())
        .map(|p| p.ods)
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_new_write_always_supersedes_the_last_even_when_the_clock_went_back() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        assert_eq!(next_update(now, None), now);
        assert_eq!(next_update(now, Some(now - Duration::from_secs(1))), now);
        for held in [now, now + Duration::from_secs(3_600)] {
            let next = next_update(now, Some(held));
            assert!(supersedes(next, Some(held)), "{next:?} after {held:?}");
        }
    }

    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::{IcbCode, PracticeStatus, RegionCode, SubIcbCode, SupplierId};

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    #[test]
    fn only_a_later_update_supersedes() {
        assert!(supersedes(at(5), None), "nothing held: installed");
        assert!(supersedes(at(6), Some(at(5))), "newer: installed");
        assert!(!supersedes(at(5), Some(at(5))), "the same record: no change");
        assert!(
            !supersedes(at(4), Some(at(5))),
            "older: what the practice said since stands"
        );
    }

    fn practice(ods: &str) -> Practice {
        Practice {
            ods: OdsCode::parse(ods).expect("ods"),
            name: format!("practice {ods}"),
            region: RegionCode::parse_region("Y60").expect("region"),
            icb: IcbCode::parse("QN7").expect("icb"),
            sub_icb: SubIcbCode::parse("33G").expect("sub-icb"),
            supplier: SupplierId::parse("emis").expect("supplier"),
            status: PracticeStatus::Active,
        }
    }

    #[test]
    fn practices_new_to_a_supplier_are_held_except_on_its_first_import() {
        let first: Vec<Practice> = ["A81001", "A81002"].into_iter().map(practice).collect();
        assert!(
            joined(&Estate::default(), &first).is_empty(),
            "first import: none held"
        );
        let before: Estate = first.iter().cloned().collect();
        let after: Vec<Practice> = ["A81002", "B82001"].into_iter().map(practice).collect();
        let held: Vec<String> = joined(&before, &after).iter().map(|o| o.to_string()).collect();
        assert_eq!(held, ["B82001"], "only the practice new to the supplier");
    }
}
