//! A halt's verification: the verdict, a row per supplier with its outcome, and what happens
//! meanwhile at each supplier that is not verified. A supplier that did not answer is shown
//! with `-` enabled, never `0`.

use std::{
    io::{self, Write},
    time::{Duration, SystemTime},
};

use rollout_proto::v1::{
    self as pb,
    verify_command_response::{Consequence, Outcome, SupplierResult},
};

use super::{View, resource::ago, short};

impl View for pb::VerifyCommandResponse {
    fn table(&self, w: &mut dyn Write) -> io::Result<()> {
        writeln!(w, "{} {}", short(&self.command), verdict(self))?;
        if self.suppliers.is_empty() {
            return Ok(());
        }
        writeln!(
            w,
            "  {:<10} {:<13} {:>8} {:>7} {:>10}  DETAIL",
            "SUPPLIER", "OUTCOME", "IN SCOPE", "ENABLED", "UNVERIFIED"
        )?;
        let now = SystemTime::now();
        for s in &self.suppliers {
            writeln!(
                w,
                "  {:<10} {:<13} {:>8} {:>7} {:>10}  {}",
                short(&s.supplier),
                outcome(s),
                s.in_scope_count,
                enabled(s),
                s.unverified_count,
                detail(s, now)
            )?;
        }
        let meanwhile: Vec<String> = self
            .suppliers
            .iter()
            .filter_map(|s| meanwhile(s, now).map(|m| format!("  {}: {m}", short(&s.supplier))))
            .collect();
        if !meanwhile.is_empty() {
            writeln!(w, "What happens meanwhile:")?;
            for line in meanwhile {
                writeln!(w, "{line}")?;
            }
        }
        if !self.verified && self.unverified_count > 0 {
            let undelivered = self.suppliers.iter().any(|s| {
                s.in_scope_count > 0 && matches!(s.outcome(), Outcome::NotApplied | Outcome::NotDelivered)
            });
            writeln!(
                w,
                "{} Next: docs/RUNBOOK.md, \"A supplier does not acknowledge\"; `rolloutctl verify {}` \
                 checks again",
                if undelivered {
                    "The halt stands and the coordinator keeps delivering it."
                } else {
                    "Every supplier with practices in scope acknowledged the halt; some could not \
                     confirm it now."
                },
                short(&self.command)
            )?;
        }
        Ok(())
    }

    fn names(&self) -> Vec<String> {
        vec![self.command.clone()]
    }
}

/// One supplier's verification in a line, as `halt --wait` prints it once the supplier has
/// applied the halt: `emis       VERIFIED: none of its 3386 practices in scope is enabled`.
pub fn supplier_verified(s: &SupplierResult) -> String {
    let what = match s.outcome() {
        Outcome::Verified => format!("none of its {} practices in scope is enabled", s.in_scope_count),
        Outcome::NotVerified => format!(
            "{} of its {} practices in scope are still enabled: {}",
            s.enabled_count,
            s.in_scope_count,
            practices(s)
        ),
        _ => format!(
            "{} practices in scope unverified: {}",
            s.unverified_count, s.error
        ),
    };
    format!("{:<10} {}: {what}", short(&s.supplier), outcome(s))
}

/// The verdict in words, with why a halt is not verified: `VERIFIED: ...`,
/// `NOT VERIFIED: lifted by commands/X`, `NOT VERIFIED: 2 of 4 suppliers not verified ...`.
fn verdict(r: &pb::VerifyCommandResponse) -> String {
    if r.verified {
        return "VERIFIED: no practice in scope is enabled".to_owned();
    }
    if !r.lifted_by.is_empty() {
        return format!(
            "NOT VERIFIED: lifted by {}: the halt is no longer in force, so there is nothing to verify",
            r.lifted_by
        );
    }
    let holding: Vec<String> = r
        .suppliers
        .iter()
        .filter(|s| {
            s.outcome() == Outcome::NotVerified || (s.outcome() != Outcome::Verified && s.in_scope_count > 0)
        })
        .map(|s| format!("{} {}", short(&s.supplier), outcome(s)))
        .collect();
    if r.in_scope_count == 0 && holding.is_empty() {
        return "NOT VERIFIED: the scope covers no practice, so there is nothing to verify".to_owned();
    }
    let mut why = Vec::new();
    if r.enabled_count > 0 {
        why.push(format!(
            "{} practices in scope are still enabled",
            r.enabled_count
        ));
    }
    if !holding.is_empty() {
        why.push(format!(
            "{} of {} suppliers not verified ({})",
            holding.len(),
            r.suppliers.len(),
            holding.join(", ")
        ));
    }
    if r.unverified_count > 0 {
        why.push(format!(
            "the state of {} of {} practices in scope is unknown",
            r.unverified_count, r.in_scope_count
        ));
    }
    if why.is_empty() {
        why.push("the coordinator did not verify it".to_owned());
    }
    format!("NOT VERIFIED: {}", why.join("; "))
}

/// The outcome as a column: `VERIFIED`, `NOT APPLIED`, ...
fn outcome(s: &SupplierResult) -> String {
    s.outcome()
        .as_str_name()
        .trim_start_matches("OUTCOME_")
        .replace('_', " ")
}

/// The enabled count, or `-` where the supplier's answer did not show it.
fn enabled(s: &SupplierResult) -> String {
    match s.outcome() {
        Outcome::Verified | Outcome::NotVerified => s.enabled_count.to_string(),
        _ => "-".to_owned(),
    }
}

/// Why a supplier is where it is: the practices still enabled, how far behind it is, what
/// its error was, with its last contact.
fn detail(s: &SupplierResult, now: SystemTime) -> String {
    let contact = || {
        s.last_contact_time
            .and_then(|t| SystemTime::try_from(t).ok())
            .map_or_else(
                || "never heard from".to_owned(),
                |t| format!("last contact {}", ago(t, now)),
            )
    };
    match s.outcome() {
        Outcome::Verified => String::new(),
        Outcome::NotVerified => practices(s),
        Outcome::NotApplied => format!("{}; {}", s.error, contact()),
        Outcome::Unreachable => format!("applied the halt; {}; {}", s.error, contact()),
        Outcome::NotDelivered => {
            "the coordinator has no endpoint for it: the halt was never sent there".to_owned()
        }
        Outcome::Unspecified => s.error.clone(),
    }
}

/// The practices a supplier still answers ENABLED: the first ten codes, then how many more.
fn practices(s: &SupplierResult) -> String {
    const SHOWN: usize = 10;
    let codes: Vec<&str> = s
        .enabled_practices
        .iter()
        .take(SHOWN)
        .map(|n| n.split('/').nth(1).unwrap_or(n))
        .collect();
    let more = usize::try_from(s.enabled_count)
        .unwrap_or(0)
        .saturating_sub(codes.len());
    if more > 0 {
        format!("{} and {more} more", codes.join(" "))
    } else {
        codes.join(" ")
    }
}

/// What happens to a not-verified supplier's practices in scope, by the fail mode; nothing for
/// a supplier with none in scope.
fn meanwhile(s: &SupplierResult, now: SystemTime) -> Option<String> {
    let c = s.consequence.as_ref()?;
    if s.in_scope_count == 0 && s.enabled_count == 0 {
        return None;
    }
    Some(match (s.outcome(), c.fail_mode()) {
        (Outcome::Unreachable, _) => format!(
            "it acknowledged the halt, so its practices in scope should be off; {} stay \
             unverified until it answers",
            s.unverified_count
        ),
        (_, pb::FailMode::Closed) => fail_closed(c, now),
        (Outcome::NotVerified, _) => format!(
            "fail-static: its {} practices still enabled stay on until it turns them off",
            s.enabled_count
        ),
        _ => format!(
            "fail-static: its practices keep their last applied state until it applies the halt: \
             those on stay on ({} in scope unverified)",
            s.unverified_count
        ),
    })
}

/// When a fail-closed supplier's practices turn off by themselves.
fn fail_closed(c: &Consequence, now: SystemTime) -> String {
    let time = |t: Option<prost_types::Timestamp>| t.and_then(|t| SystemTime::try_from(t).ok());
    let ttl = c
        .control_ttl
        .and_then(|d| Duration::try_from(d).ok())
        .map(|d| humantime::format_duration(d).to_string())
        .unwrap_or_default();
    let at = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string();
    match time(c.off_time) {
        Some(off) if off > now => format!(
            "fail-closed: its practices turn the feature off by themselves at {} ({} from now: its \
             last contact in step with the coordinator plus the control TTL of {ttl}), unless it \
             is reached and up to date first",
            at(off),
            humantime::format_duration(Duration::from_secs(
                off.duration_since(now).unwrap_or_default().as_secs()
            ))
        ),
        Some(off) => format!(
            "fail-closed: its practices turned the feature off by themselves at {} by its own clock \
             (its last contact in step with the coordinator plus the control TTL of {ttl}); they \
             stay off until it is in contact and has applied everything, this halt included",
            at(off)
        ),
        None => format!(
            "fail-closed: when is not known: the coordinator has not seen it up to date since it \
             started; its practices turn the feature off once {ttl} pass without it being up to date"
        ),
    }
}
