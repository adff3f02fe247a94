//! Views of the other resources: features, suppliers, a practice's answer, audit events.

use std::{
    collections::BTreeSet,
    io::{self, Write},
    time::SystemTime,
};

use rollout_proto::v1 as pb;

use super::{View, scope_summary, short, when};

/// A feature as `feature create` prints it: what was created, at which sequence.
impl View for pb::Feature {
    fn table(&self, w: &mut dyn Write) -> io::Result<()> {
        writeln!(w, "created {} (sequence {})", self.name, self.sequence)
    }

    fn names(&self) -> Vec<String> {
        vec![self.name.clone()]
    }
}

impl View for pb::ListFeaturesResponse {
    fn table(&self, w: &mut dyn Write) -> io::Result<()> {
        writeln!(
            w,
            "{:<32} {:<12} {:>11} {:>9} {:>8}",
            "FEATURE", "FAIL MODE", "CONTROL TTL", "APPROVALS", "SEQUENCE"
        )?;
        for f in &self.features {
            // A fail-static feature keeps serving out of contact: it has no TTL.
            let ttl = f
                .control_ttl
                .and_then(|d| std::time::Duration::try_from(d).ok())
                .filter(|_| f.fail_mode() == pb::FailMode::Closed)
                .map_or_else(|| "-".to_owned(), |d| humantime::format_duration(d).to_string());
            writeln!(
                w,
                "{:<32} {:<12} {:>11} {:>9} {:>8}",
                short(&f.name),
                f.fail_mode().as_str_name().trim_start_matches("FAIL_MODE_"),
                ttl,
                f.approvals_required,
                f.sequence
            )?;
        }
        Ok(())
    }

    fn names(&self) -> Vec<String> {
        self.features.iter().map(|f| f.name.clone()).collect()
    }
}

/// The suppliers, then for each feature the practices' counts as each supplier last counted
/// them, with how long ago and at which sequence.
impl View for pb::ListSuppliersResponse {
    fn table(&self, w: &mut dyn Write) -> io::Result<()> {
        writeln!(
            w,
            "{:<10} {:<9} {:>7} {:>6} {:<25} CONFLICTS / LAST ERROR",
            "SUPPLIER", "STATE", "APPLIED", "TARGET", "LAST CONTACT"
        )?;
        for s in &self.suppliers {
            writeln!(
                w,
                "{:<10} {:<9} {:>7} {:>6} {:<25} {}",
                short(&s.name),
                s.state().as_str_name().trim_start_matches("STATE_"),
                s.applied_sequence,
                s.target_sequence,
                when(&s.last_contact_time),
                supplier_notes(s)
            )?;
        }
        unapplied_halts(self, SystemTime::now(), w)?;
        let features: BTreeSet<&str> = self
            .suppliers
            .iter()
            .flat_map(|s| s.feature_counts.iter().map(|c| c.feature.as_str()))
            .collect();
        for feature in features {
            counts_table(self, feature, w)?;
        }
        refusals_table(self, w)?;
        tls_warnings(self, w)
    }

    fn names(&self) -> Vec<String> {
        self.suppliers.iter().map(|s| s.name.clone()).collect()
    }
}

/// The halts in force that suppliers have not applied yet, when any has: per supplier, each
/// halt listed (command, feature, sequence, how long ago it was issued, as of `now`) and how
/// many more there are, then where to look next. Nothing when none.
fn unapplied_halts(r: &pb::ListSuppliersResponse, now: SystemTime, w: &mut dyn Write) -> io::Result<()> {
    let behind: Vec<&pb::Supplier> = r
        .suppliers
        .iter()
        .filter(|s| s.unapplied_halt_count > 0)
        .collect();
    if behind.is_empty() {
        return Ok(());
    }
    for s in behind {
        let count = s.unapplied_halt_count;
        let halts = if count == 1 { "halt" } else { "halts" };
        writeln!(
            w,
            "\n{} has not applied {count} {halts} yet (applied sequence {} of {}): not in force there until it does",
            short(&s.name),
            s.applied_sequence,
            s.target_sequence
        )?;
        for h in &s.unapplied_halts {
            writeln!(
                w,
                "  {}  {}  sequence {}  {}",
                short(&h.command),
                short(&h.feature),
                h.sequence,
                issued(&h.create_time, now)
            )?;
        }
        let unlisted = usize::try_from(count)
            .unwrap_or(0)
            .saturating_sub(s.unapplied_halts.len());
        if unlisted > 0 {
            writeln!(w, "  and {unlisted} more")?;
        }
    }
    writeln!(
        w,
        "(check a halt at every supplier: rolloutctl verify COMMAND; see docs/RUNBOOK.md, \"A supplier does not acknowledge\")"
    )
}

/// When a halt was issued, in words as of `now`: `issued 3m 12s ago`.
fn issued(t: &Option<prost_types::Timestamp>, now: SystemTime) -> String {
    match t.and_then(|t| SystemTime::try_from(t).ok()) {
        Some(t) => {
            let secs = now.duration_since(t).unwrap_or_default().as_secs();
            format!(
                "issued {} ago",
                humantime::format_duration(std::time::Duration::from_secs(secs))
            )
        }
        None => "issue time unknown".to_owned(),
    }
}

/// What each server says is wrong with its TLS files (a CRL past its next update), when any
/// does.
fn tls_warnings(r: &pb::ListSuppliersResponse, w: &mut dyn Write) -> io::Result<()> {
    let all: Vec<(&str, &String)> = r
        .coordinator_tls_warnings
        .iter()
        .map(|t| ("coordinator", t))
        .chain(
            r.suppliers
                .iter()
                .flat_map(|s| s.tls_warnings.iter().map(|t| (short(&s.name), t))),
        )
        .collect();
    if all.is_empty() {
        return Ok(());
    }
    writeln!(
        w,
        "\nTLS warnings (see docs/RUNBOOK.md, \"Certificate rotation\"):"
    )?;
    for (who, warning) in all {
        writeln!(w, "  {who}: {warning}")?;
    }
    Ok(())
}

/// How each server's refused calls reached its audit log, when any server refused one: how
/// many one by one, how many in summaries (a flood), how many not written yet.
fn refusals_table(r: &pb::ListSuppliersResponse, w: &mut dyn Write) -> io::Result<()> {
    let rows: Vec<(&str, &pb::RefusalAudit)> = r
        .coordinator_refusal_audit
        .as_ref()
        .map(|a| ("coordinator", a))
        .into_iter()
        .chain(
            r.suppliers
                .iter()
                .filter_map(|s| s.refusal_audit.as_ref().map(|a| (short(&s.name), a))),
        )
        .collect();
    if rows.iter().all(|(_, a)| a.refused_calls == 0) {
        return Ok(());
    }
    writeln!(w)?;
    writeln!(
        w,
        "{:<11} {:>9} {:>10} {:>10} {:>9} {:>11}  LAST WRITE ERROR",
        "REFUSALS", "REFUSED", "ONE BY ONE", "SUMMARISED", "SUMMARIES", "NOT WRITTEN"
    )?;
    for (who, a) in rows {
        writeln!(
            w,
            "{:<11} {:>9} {:>10} {:>10} {:>9} {:>11}  {}",
            who,
            a.refused_calls,
            a.recorded_calls,
            a.summarised_calls,
            a.summary_events,
            a.pending_calls,
            a.last_error
        )?;
    }
    writeln!(
        w,
        "(since each process started; refusals beyond a caller's first few in a window are \
         counted in one summary event; NOT WRITTEN waits for the window's end or the store)"
    )
}

/// What the status says beside a supplier: divergence, conflicts or the last error, a freeze,
/// held practices.
fn supplier_notes(s: &pb::Supplier) -> String {
    let extra = if !s.fault.is_empty() {
        format!(
            "answers nonsense: {} (see the runbook: \"A supplier answers nonsense\")",
            s.fault
        )
    } else if !s.divergence.is_empty() {
        format!(
            "{} (see: rolloutctl recover --from {} --reason \"...\" --dry-run)",
            s.divergence,
            short(&s.name)
        )
    } else if s.conflicts.is_empty() {
        s.last_error.clone()
    } else {
        format!(
            "unresolved: {} (once its freeze has ended: rolloutctl redeliver COMMAND --to {} --reason \"...\")",
            s.conflicts.iter().map(|c| short(c)).collect::<Vec<_>>().join(" "),
            short(&s.name)
        )
    };
    let extra = if s.frozen {
        format!("frozen (go-lives and resumes are rejected); {extra}")
    } else {
        extra
    };
    if s.held_practices > 0 {
        format!(
            "{} practices held until the opt-out register answers; {extra}",
            s.held_practices
        )
    } else {
        extra
    }
}

/// One feature's counts per supplier, with when and at which sequence each was counted.
fn counts_table(r: &pb::ListSuppliersResponse, feature: &str, w: &mut dyn Write) -> io::Result<()> {
    writeln!(
        w,
        "\n{feature}: practices per supplier, as each supplier last counted them (at its heartbeat)"
    )?;
    writeln!(
        w,
        "{:<10} {:>8} {:>7} {:>9} {:>8} {:>9} {:>7}  COUNTED",
        "SUPPLIER", "ENABLED", "HALTED", "OPTED-OUT", "NOT-LIVE", "OTHER-OFF", "UNKNOWN"
    )?;
    for s in &r.suppliers {
        let Some(c) = s.feature_counts.iter().find(|c| c.feature == feature) else {
            writeln!(w, "{:<10} not counted yet", short(&s.name))?;
            continue;
        };
        writeln!(
            w,
            "{:<10} {:>8} {:>7} {:>9} {:>8} {:>9} {:>7}  {}",
            short(&s.name),
            c.enabled,
            c.halted,
            c.opted_out,
            c.not_live,
            c.other_disabled,
            c.unknown,
            freshness(s)
        )?;
    }
    Ok(())
}

/// How fresh a supplier's counts are: `1.2 s ago, at sequence 3 (up to date)`, or which
/// commands they do not count yet.
fn freshness(s: &pb::Supplier) -> String {
    let age = s
        .counts_time
        .and_then(|t| SystemTime::try_from(t).ok())
        .map_or_else(|| "time unknown".to_owned(), |t| ago(t, SystemTime::now()));
    let (counted, target) = (s.counts_sequence, s.target_sequence);
    let sequence = match target - counted {
        d if d <= 0 => format!("at sequence {counted} (up to date)"),
        1 => format!("at sequence {counted}: sequence {target} not counted yet"),
        _ => format!(
            "at sequence {counted}: sequences {} to {target} not counted yet",
            counted + 1
        ),
    };
    format!("{age}, {sequence}")
}

/// How long before `now` `t` was: `0.8 s ago`, `42 s ago`, `3 min ago`, `5 h ago`.
pub(super) fn ago(t: SystemTime, now: SystemTime) -> String {
    let secs = now.duration_since(t).unwrap_or_default().as_secs_f64();
    match secs {
        s if s < 10.0 => format!("{s:.1} s ago"),
        s if s < 120.0 => format!("{s:.0} s ago"),
        s if s < 7_200.0 => format!("{:.0} min ago", s / 60.0),
        s => format!("{:.0} h ago", s / 3_600.0),
    }
}

/// A practice's answer: the sentence, then the rules that apply, the deciding one starred.
impl View for pb::PracticeFeature {
    fn table(&self, w: &mut dyn Write) -> io::Result<()> {
        writeln!(w, "{}\n{}", self.name, self.explanation)?;
        for r in &self.rules {
            writeln!(
                w,
                "  {} {:<8} {:<8} {} {:<22} {} by {}: {}",
                if r.deciding { "*" } else { " " },
                r.kind().as_str_name().trim_start_matches("KIND_"),
                r.status().as_str_name().trim_start_matches("STATUS_"),
                if r.command.is_empty() {
                    "opt-out"
                } else {
                    short(&r.command)
                },
                scope_summary(&r.scope),
                when(&r.issue_time),
                r.issued_by,
                r.reason
            )?;
        }
        if self.omitted_rules > 0 {
            writeln!(
                w,
                "  ... and {} more rules in force (newest and deciding shown)",
                self.omitted_rules
            )?;
        }
        Ok(())
    }

    fn names(&self) -> Vec<String> {
        vec![self.name.clone()]
    }
}

/// Audit events, one a line; their names are their sequences.
impl View for pb::ListAuditEventsResponse {
    fn table(&self, w: &mut dyn Write) -> io::Result<()> {
        for e in &self.events {
            // A summary of refused calls says how many; an accepted command names itself and
            // what it covers.
            let calls = if e.call_count > 1 {
                format!(" ({} calls)", e.call_count)
            } else {
                String::new()
            };
            let command = if e.command.is_empty() {
                String::new()
            } else {
                format!(" {} [{}]", e.command, e.scope)
            };
            writeln!(
                w,
                "{:>6} {} {:<8}{calls} {} {} {}{command} {}",
                e.sequence,
                when(&e.event_time),
                e.outcome().as_str_name().trim_start_matches("OUTCOME_"),
                e.identity,
                short(&e.action),
                e.target,
                e.reason
            )?;
        }
        Ok(())
    }

    fn names(&self) -> Vec<String> {
        self.events.iter().map(|e| e.sequence.to_string()).collect()
    }
}

/// The register: counts per supplier and feature, then one line per opt-out.
impl View for pb::ListOptOutsResponse {
    fn table(&self, w: &mut dyn Write) -> io::Result<()> {
        writeln!(
            w,
            "{:<10} {:<28} {:>9} {:>9}",
            "SUPPLIER", "FEATURE", "OPTED-OUT", "WITHDRAWN"
        )?;
        for c in &self.counts {
            writeln!(
                w,
                "{:<10} {:<28} {:>9} {:>9}",
                short(&c.supplier),
                short(&c.feature),
                c.opted_out,
                c.withdrawn
            )?;
        }
        writeln!(w)?;
        writeln!(
            w,
            "{:<8} {:<28} {:<10} {:<11} {:<25} {:<12} REASON",
            "PRACTICE", "FEATURE", "SUPPLIER", "STATE", "RECORDED", "ORIGIN"
        )?;
        for o in &self.opt_outs {
            let mut parts = o.name.split('/');
            let (ods, feature) = (parts.nth(1).unwrap_or_default(), parts.nth(1).unwrap_or_default());
            let origin = match o.origin() {
                pb::practice_opt_out::Origin::Restored => "restored".to_owned(),
                pb::practice_opt_out::Origin::Transferred => {
                    format!("from {}", short(&o.origin_supplier))
                }
                _ => "recorded".to_owned(),
            };
            writeln!(
                w,
                "{:<8} {:<28} {:<10} {:<11} {:<25} {:<12} {}",
                ods,
                feature,
                short(&o.supplier),
                if o.withdrawn { "withdrawn" } else { "opted out" },
                when(&o.create_time),
                origin,
                o.reason
            )?;
        }
        Ok(())
    }

    fn names(&self) -> Vec<String> {
        self.opt_outs.iter().map(|o| o.name.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn halt(n: i64, issued: SystemTime) -> pb::supplier::UnappliedHalt {
        pb::supplier::UnappliedHalt {
            command: format!("commands/halt-{n}"),
            sequence: n,
            feature: "features/f".into(),
            create_time: Some(issued.into()),
        }
    }

    fn section(r: &pb::ListSuppliersResponse, now: SystemTime) -> String {
        let mut out = Vec::new();
        unapplied_halts(r, now, &mut out).expect("write");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn unapplied_halts_are_named_with_their_age_and_how_many_more() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let tpp = pb::Supplier {
            name: "suppliers/tpp".into(),
            applied_sequence: 4,
            target_sequence: 27,
            unapplied_halts: (5..25).map(|n| halt(n, now - Duration::from_secs(192))).collect(),
            unapplied_halt_count: 23,
            ..Default::default()
        };
        let emis = pb::Supplier {
            name: "suppliers/emis".into(),
            applied_sequence: 27,
            target_sequence: 27,
            ..Default::default()
        };
        let text = section(
            &pb::ListSuppliersResponse {
                suppliers: vec![emis.clone(), tpp],
                ..Default::default()
            },
            now,
        );
        assert!(
            text.contains("tpp has not applied 23 halts yet (applied sequence 4 of 27): not in force there until it does"),
            "{text}"
        );
        assert!(
            text.contains("\n  halt-5  f  sequence 5  issued 3m 12s ago\n"),
            "{text}"
        );
        assert_eq!(text.matches("issued 3m 12s ago").count(), 20, "{text}");
        assert!(text.contains("\n  and 3 more\n"), "{text}");
        assert!(text.contains("rolloutctl verify COMMAND"), "{text}");
        assert!(text.contains("\"A supplier does not acknowledge\""), "{text}");
        assert!(!text.contains("emis"), "{text}");

        let none = pb::ListSuppliersResponse {
            suppliers: vec![emis],
            ..Default::default()
        };
        assert_eq!(section(&none, now), "", "nothing when no halt is unapplied");
    }
}
