//! Whether a halt's or go-live's scope names what the national estate knows: the check that
//! turns an operator's typo (`supplier:emiss`, `icb:QZZ`, a mistyped ODS code) into a refusal
//! instead of a command that covers nothing and then verifies as "nothing enabled". Pure.
//!
//! - A supplier, region, ICB or sub-ICB that no practice of the estate has (and, for a
//!   supplier, that is not configured) is refused: INVALID_ARGUMENT `UNKNOWN_SCOPE_TARGET`,
//!   with a BadRequest violation on the field whose description names the closest known
//!   codes (Damerau–Levenshtein distance).
//! - Practice codes the estate does not know are refused (INVALID_ARGUMENT
//!   `UNKNOWN_PRACTICE`, one violation per code, up to [`MAX_NAMED`]) unless the request
//!   allows them (`allow_unknown_practices`, for practices about to open).
//! - A scope that covers no active practice is refused (FAILED_PRECONDITION `EMPTY_SCOPE`)
//!   unless the request allows it (`allow_empty_scope`). Allowed unknown codes are not
//!   "nothing": the operator named them on purpose.

use std::collections::BTreeSet;

use rollout_core::{Estate, OdsCode, PracticeStatus, Scope, SupplierId};
use rollout_net::{ApiError, wire};
use tonic::Code;

/// The most unknown practice codes named one by one in a refusal; the rest are counted.
pub const MAX_NAMED: usize = 20;

/// How many closest known codes a refusal suggests.
const SUGGESTIONS: usize = 3;

/// What the request explicitly allows.
#[derive(Debug, Clone, Copy, Default)]
pub struct Allowances {
    /// Practice codes the estate does not know are accepted and named in the impact.
    pub unknown_practices: bool,
    /// A scope that covers no active practice is accepted.
    pub empty_scope: bool,
}

/// Checks `scope` (of the request field `field`) against the estate and the configured
/// suppliers.
pub fn check(
    estate: &Estate,
    suppliers: &[SupplierId],
    field: &str,
    scope: &Scope,
    allow: Allowances,
) -> Result<(), ApiError> {
    let known = |kind: &str, given: &str, codes: BTreeSet<String>| {
        if codes.contains(given) {
            Ok(())
        } else {
            Err(unknown_target(&format!("{field}.{kind}"), given, &codes))
        }
    };
    let codes = |f: fn(&rollout_core::Practice) -> String| estate.practices().map(f).collect();
    match scope {
        Scope::National => {}
        Scope::Supplier(s) => {
            let mut all: BTreeSet<String> = codes(|p| p.supplier.to_string());
            all.extend(suppliers.iter().map(ToString::to_string));
            known("supplier", s.as_str(), all)?;
        }
        Scope::Region(r) => known("region", r.as_str(), codes(|p| p.region.to_string()))?,
        Scope::Icb(i) => known("icb", i.as_str(), codes(|p| p.icb.to_string()))?,
        Scope::SubIcb(s) => known("sub_icb", s.as_str(), codes(|p| p.sub_icb.to_string()))?,
        Scope::Practices(list) => {
            let unknown: Vec<&OdsCode> = list.iter().filter(|o| estate.get(o).is_none()).collect();
            if !unknown.is_empty() && !allow.unknown_practices {
                return Err(unknown_practices(estate, field, list.len(), &unknown));
            }
            if !unknown.is_empty() {
                return Ok(());
            }
        }
    }
    let covers_any = estate
        .practices()
        .any(|p| p.status == PracticeStatus::Active && scope.covers(p));
    if covers_any || allow.empty_scope {
        Ok(())
    } else {
        Err(empty(field, scope))
    }
}

/// Checks a region code as written on the wire against the regions of the estate, before it
/// is parsed: a code outside NHS England's seven (a typo such as `Y57`) is refused as unknown,
/// with the closest known ones, rather than as malformed.
pub fn known_region(estate: &Estate, field: &str, given: &str) -> Result<(), ApiError> {
    let code = given.trim().to_ascii_uppercase();
    let known: BTreeSet<String> = estate.practices().map(|p| p.region.to_string()).collect();
    if known.contains(&code) {
        Ok(())
    } else {
        Err(unknown_target(&format!("{field}.region"), given, &known))
    }
}

/// The known codes closest to `given`: at most three, nearest first (ties in code order), none
/// more than one edit further than the nearest.
pub fn closest<'a>(given: &str, known: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut ranked: Vec<(usize, &str)> = known
        .into_iter()
        .map(|k| (strsim::damerau_levenshtein(given, k), k))
        .collect();
    ranked.sort_unstable();
    let best = ranked.first().map_or(0, |(d, _)| *d);
    ranked
        .into_iter()
        .take_while(|(d, _)| *d <= best + 1)
        .take(SUGGESTIONS)
        .map(|(_, k)| k)
        .collect()
}

fn suggestion(closest: &[&str]) -> String {
    match closest {
        [] => "the national estate has none".into(),
        [one] => format!("did you mean {one}?"),
        many => format!("did you mean one of {}?", many.join(", ")),
    }
}

fn unknown_target(field: &str, given: &str, known: &BTreeSet<String>) -> ApiError {
    let near = closest(given, known.iter().map(String::as_str));
    let description = format!(
        "{} is not in the national estate; {}",
        wire::shown(given),
        suggestion(&near)
    );
    ApiError::new(
        Code::InvalidArgument,
        "UNKNOWN_SCOPE_TARGET",
        format!("{field}: {description}"),
    )
    .with_metadata("field", field)
    .with_metadata("closest", near.join(","))
    .with_violation(field, description)
}

fn unknown_practices(estate: &Estate, field: &str, listed: usize, unknown: &[&OdsCode]) -> ApiError {
    let named: Vec<String> = unknown.iter().take(MAX_NAMED).map(ToString::to_string).collect();
    let more = unknown.len() - named.len();
    let mut message = format!(
        "{} of the {listed} practices listed {} not in the national estate: {}",
        unknown.len(),
        if unknown.len() == 1 { "is" } else { "are" },
        named.join(", ")
    );
    if more > 0 {
        message.push_str(&format!(" and {more} more"));
    }
    message.push_str("; check the codes, or set allow_unknown_practices for practices about to open");
    let mut error = ApiError::new(Code::InvalidArgument, "UNKNOWN_PRACTICE", message)
        .with_metadata("field", format!("{field}.practices.practices"))
        .with_metadata("unknown_count", unknown.len().to_string());
    let known: Vec<String> = estate.practices().map(|p| p.ods.to_string()).collect();
    for (i, code) in named.iter().enumerate() {
        // Suggestions for the first few only: each is a pass over the estate.
        let hint = if i < SUGGESTIONS {
            format!(
                "; {}",
                suggestion(&closest(code, known.iter().map(String::as_str)))
            )
        } else {
            String::new()
        };
        error = error.with_violation(
            format!("{field}.practices.practices"),
            format!("{code} is not in the national estate{hint}"),
        );
    }
    error
}

fn empty(field: &str, scope: &Scope) -> ApiError {
    ApiError::failed_precondition(
        "EMPTY_SCOPE",
        format!(
            "{field}: {} covers no active practice in the national estate; nothing would change. \
             Check the scope, or set allow_empty_scope if this is intended",
            wire::shown(&scope.describe())
        ),
    )
    .with_metadata("field", field)
}

#[cfg(test)]
mod tests {
    use rollout_core::{IcbCode, RegionCode};

    use super::*;
    use crate::impact::tests::practice;

    fn estate() -> Estate {
        [
            practice("A81001", "emis", "QWE", PracticeStatus::Active),
            practice("A81002", "tpp", "QMJ", PracticeStatus::Active),
            practice("A81003", "tpp", "QKK", PracticeStatus::Closed),
        ]
        .into_iter()
        .collect()
    }

    fn run(scope: Scope, allow: Allowances) -> Result<(), ApiError> {
        let configured = [SupplierId::parse("cegedim").expect("valid")];
        check(&estate(), &configured, "scope", &scope, allow)
    }

    fn list(codes: &[&str]) -> Scope {
        Scope::practices(codes.iter().copied()).expect("valid")
    }

    #[test]
    fn a_misspelt_supplier_is_refused_with_the_nearest_known_one() {
        let e = run(
            Scope::Supplier(SupplierId::parse("emiss").expect("valid")),
            Allowances::default(),
        )
        .expect_err("refused");
        assert_eq!(e.reason(), "UNKNOWN_SCOPE_TARGET");
        assert!(e.to_string().contains("did you mean emis?"), "{e}");
    }

    #[test]
    fn a_configured_supplier_with_no_practices_is_known_but_empty() {
        let e = run(
            Scope::Supplier(SupplierId::parse("cegedim").expect("valid")),
            Allowances::default(),
        )
        .expect_err("refused");
        assert_eq!(e.reason(), "EMPTY_SCOPE");
        let allowed = Allowances {
            empty_scope: true,
            ..Default::default()
        };
        run(
            Scope::Supplier(SupplierId::parse("cegedim").expect("valid")),
            allowed,
        )
        .expect("valid");
    }

    #[test]
    fn a_region_with_no_practice_in_the_estate_is_unknown() {
        let e = run(
            Scope::Region(RegionCode::parse_region("Y58").expect("valid")),
            Allowances::default(),
        )
        .expect_err("refused");
        assert_eq!(e.reason(), "UNKNOWN_SCOPE_TARGET");
        assert!(e.to_string().contains("did you mean Y56?"), "{e}");
    }

    #[test]
    fn a_region_code_outside_the_seven_is_unknown_not_malformed() {
        let e = known_region(&estate(), "scope", "Y57").expect_err("refused");
        assert_eq!(e.reason(), "UNKNOWN_SCOPE_TARGET");
        assert!(e.to_string().contains("did you mean Y56?"), "{e}");
        known_region(&estate(), "scope", "y56").expect("known, in any case");
    }

    #[test]
    fn an_icb_with_only_closed_practices_covers_nothing() {
        let e = run(
            Scope::Icb(IcbCode::parse("QKK").expect("valid")),
            Allowances::default(),
        )
        .expect_err("refused");
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert_eq!(e.reason(), "EMPTY_SCOPE");
    }

    #[test]
    fn unknown_practice_codes_are_named_unless_allowed() {
        let e = run(list(&["A81001", "Z12345"]), Allowances::default()).expect_err("refused");
        assert_eq!(e.reason(), "UNKNOWN_PRACTICE");
        assert!(e.to_string().contains("Z12345"), "{e}");
        let allowed = Allowances {
            unknown_practices: true,
            ..Default::default()
        };
        run(list(&["Z12345"]), allowed).expect("valid");
    }

    #[test]
    fn known_scopes_that_cover_an_active_practice_pass() {
        run(Scope::National, Allowances::default()).expect("valid");
        run(
            Scope::Icb(IcbCode::parse("QWE").expect("valid")),
            Allowances::default(),
        )
        .expect("valid");
        run(list(&["A81002"]), Allowances::default()).expect("valid");
    }

    #[test]
    fn closest_ranks_by_edit_distance_with_transpositions_as_one() {
        assert_eq!(closest("QEW", ["QMJ", "QWE", "QKK"]), ["QWE", "QKK", "QMJ"]);
        assert_eq!(closest("emiss", ["tpp", "emis", "cegedim"]), ["emis"]);
    }
}
