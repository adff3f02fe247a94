//! Views of the other resources: features, suppliers, a practice's answer, audit events.

use std::io::{self, Write};

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
            "{:<32} {:<12} {:>9} {:>8}",
            "FEATURE", "FAIL MODE", "APPROVALS", "SEQUENCE"
        )?;
        for f in &self.features {
            writeln!(
                w,
                "{:<32} {:<12} {:>9} {:>8}",
                short(&f.name),
                f.fail_mode().as_str_name().trim_start_matches("FAIL_MODE_"),
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

impl View for pb::ListSuppliersResponse {
    fn table(&self, w: &mut dyn Write) -> io::Result<()> {
        writeln!(
            w,
            "{:<10} {:<9} {:>7} {:>6} {:>8} {:>7} {:>9} {:<25} CONFLICTS / LAST ERROR",
            "SUPPLIER", "STATE", "APPLIED", "TARGET", "ENABLED", "HALTED", "OPTED-OUT", "LAST CONTACT"
        )?;
        for s in &self.suppliers {
            let (enabled, halted, opted) = s.feature_counts.iter().fold((0, 0, 0), |(e, h, o), f| {
                (e + f.enabled, h + f.halted, o + f.opted_out)
            });
            let extra = if !s.divergence.is_empty() {
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
            let extra = if s.held_practices > 0 {
                format!(
                    "{} practices held until the opt-out register answers; {extra}",
                    s.held_practices
                )
            } else {
                extra
            };
            writeln!(
                w,
                "{:<10} {:<9} {:>7} {:>6} {:>8} {:>7} {:>9} {:<25} {}",
                short(&s.name),
                s.state().as_str_name().trim_start_matches("STATE_"),
                s.applied_sequence,
                s.target_sequence,
                enabled,
                halted,
                opted,
                when(&s.last_contact_time),
                extra
            )?;
        }
        Ok(())
    }

    fn names(&self) -> Vec<String> {
        self.suppliers.iter().map(|s| s.name.clone()).collect()
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
            writeln!(
                w,
                "{:>6} {} {:<8} {} {} {} {}",
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
