//! Views of commands: one command whole, a list of them, a halt's verification, a recovery, and
//! a watch's progress.

use std::io::{self, Write};

use rollout_proto::v1 as pb;

use super::{View, scope_summary, short, when};

/// What a command does: `halt`, `resume`, `go-live` or `create-feature`.
fn action(c: &pb::Command) -> &'static str {
    use pb::command::Action;
    match &c.action {
        Some(Action::Halt(_)) => "halt",
        Some(Action::Resume(_)) => "resume",
        Some(Action::GoLive(_)) => "go-live",
        Some(Action::CreateFeature(_)) => "create-feature",
        None => "-",
    }
}

fn state(c: &pb::Command) -> &'static str {
    c.state().as_str_name().trim_start_matches("STATE_")
}

/// A delivery's state without its prefix: `APPLIED`.
fn delivery_state(d: &pb::Delivery) -> &'static str {
    d.state().as_str_name().trim_start_matches("STATE_")
}

/// A scope as the operator wrote it: `national`, `icb QN7`, `practices A81001, A81002 (2)`.
fn scope(s: &Option<pb::Scope>) -> String {
    use pb::scope::Target;
    match s.as_ref().and_then(|s| s.target.as_ref()) {
        Some(Target::National(_)) | None => "national".to_owned(),
        Some(Target::Supplier(v)) => format!("supplier {v}"),
        Some(Target::Region(v)) => format!("region {v}"),
        Some(Target::Icb(v)) => format!("icb {v}"),
        Some(Target::SubIcb(v)) => format!("sub-icb {v}"),
        Some(Target::Practices(list)) => {
            let shown: Vec<&str> = list.practices.iter().take(5).map(String::as_str).collect();
            let more = if list.practices.len() > shown.len() {
                ", ..."
            } else {
                ""
            };
            format!("practices {}{more} ({})", shown.join(", "), list.practices.len())
        }
    }
}

/// The lines an approver reads first: the scope, the halts a resume lifts, a go-live's
/// effective time, and whom a redelivery is for.
fn what_it_does(c: &pb::Command, w: &mut dyn Write) -> io::Result<()> {
    use pb::command::Action;
    match &c.action {
        Some(Action::Halt(h)) => writeln!(w, "scope     {}", scope(&h.scope))?,
        Some(Action::GoLive(g)) => {
            writeln!(w, "scope     {}", scope(&g.scope))?;
            let at = match g.effective_time {
                Some(_) => when(&g.effective_time),
                None => "as soon as approved and delivered".to_owned(),
            };
            writeln!(w, "effective {at}")?;
        }
        _ => {}
    }
    for h in &c.lifted_halts {
        writeln!(
            w,
            "lifts     {} (sequence {}): {}; by {} at {}: {}",
            short(&h.command),
            h.sequence,
            scope_summary(&h.scope),
            h.requester,
            when(&h.create_time),
            h.reason
        )?;
    }
    if !c.supplier.is_empty() {
        writeln!(
            w,
            "for       {} only (a redelivery of {})",
            short(&c.supplier),
            short(&c.redelivery_of)
        )?;
    }
    Ok(())
}

/// What the command would change at each supplier, as its preview says.
fn preview(p: &pb::Preview, w: &mut dyn Write) -> io::Result<()> {
    writeln!(
        w,
        "preview   {} practices would turn on, {} stay off (judged at {})",
        p.turn_on,
        p.stay_off,
        when(&p.evaluate_time)
    )?;
    for s in &p.suppliers {
        let off = [
            (s.stay_off_halted, "another halt"),
            (s.stay_off_opted_out, "opted out"),
            (s.stay_off_not_live, "not live"),
            (s.stay_off_not_active, "not active"),
            (s.stay_off_scheduled, "scheduled later"),
        ];
        let why: Vec<String> = off
            .iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, why)| format!("{n} {why}"))
            .collect();
        writeln!(
            w,
            "          {:<10} {} in scope: {} turn on, {} already on{}{}",
            short(&s.supplier),
            s.practices,
            s.turn_on,
            s.already_on,
            if why.is_empty() {
                String::new()
            } else {
                format!("; stay off: {}", why.join(", "))
            },
            if s.frozen {
                format!(
                    "; FROZEN ({}): it would reject this, redeliver once the freeze ends",
                    s.freeze_reason
                )
            } else {
                String::new()
            }
        )?;
    }
    Ok(())
}

/// The practices a command covers, per supplier; the suppliers the coordinator does not
/// deliver to marked, with how many practices in scope it will not reach; and listed codes the
/// estate does not know.
fn impact(i: &pb::Impact, w: &mut dyn Write) -> io::Result<()> {
    let per: Vec<String> = i
        .suppliers
        .iter()
        .map(|s| {
            let mark = if s.not_delivered { " (not delivered)" } else { "" };
            format!("{} {}{mark}", short(&s.supplier), s.practices)
        })
        .collect();
    if per.is_empty() {
        writeln!(w, "impact    {} practices", i.practices)?;
    } else {
        writeln!(w, "impact    {} practices ({})", i.practices, per.join(", "))?;
    }
    let undelivered: Vec<&str> = i
        .suppliers
        .iter()
        .filter(|s| s.not_delivered)
        .map(|s| short(&s.supplier))
        .collect();
    if !undelivered.is_empty() {
        writeln!(
            w,
            "unreached {} practices in scope will not be reached: {} not delivered: the coordinator has no endpoint for {}",
            i.not_delivered_practices,
            undelivered.join(", "),
            if undelivered.len() == 1 { "it" } else { "them" }
        )?;
    }
    if !i.unknown_practices.is_empty() {
        writeln!(w, "unknown   {}", unknown_codes(&i.unknown_practices))?;
    }
    Ok(())
}

/// A command as `show`, `halt` and the other writes print it: what it does, where it stands,
/// its impact, approvals and deliveries.
impl View for pb::Command {
    fn table(&self, w: &mut dyn Write) -> io::Result<()> {
        writeln!(w, "command   {}", short(&self.name))?;
        writeln!(w, "action    {} {}", action(self), short(&self.feature))?;
        writeln!(w, "state     {}", state(self))?;
        writeln!(w, "sequence  {}", self.sequence)?;
        writeln!(
            w,
            "requester {}",
            with_person(&self.requester, &self.requester_person)
        )?;
        writeln!(w, "reason    {}", self.reason)?;
        what_it_does(self, w)?;
        if let Some(i) = &self.impact {
            impact(i, w)?;
        }
        for a in &self.approvals {
            writeln!(
                w,
                "approved  by {} at {}",
                with_person(&a.approver, &a.person),
                when(&a.approve_time)
            )?;
        }
        if self.state() == pb::command::State::PendingApproval {
            writeln!(
                w,
                "waiting   for {} approval(s) by a different person",
                self.approvals_required - self.approvals.len() as i32
            )?;
        }
        for d in &self.deliveries {
            writeln!(
                w,
                "delivery  {:<10} {:<8} applied {} acknowledged {}{}",
                short(&d.supplier),
                delivery_state(d),
                when(&d.apply_time),
                when(&d.acknowledge_time),
                match (d.rejection_reason.is_empty(), d.resolved_by.is_empty()) {
                    (true, _) => String::new(),
                    (false, true) => format!(" rejected: {} (unresolved)", d.rejection_reason),
                    (false, false) => format!(
                        " rejected: {} (resolved by {})",
                        d.rejection_reason,
                        short(&d.resolved_by)
                    ),
                }
            )?;
        }
        if let Some(p) = &self.preview {
            preview(p, w)?;
        }
        Ok(())
    }

    fn names(&self) -> Vec<String> {
        vec![self.name.clone()]
    }
}

impl View for pb::ListCommandsResponse {
    fn table(&self, w: &mut dyn Write) -> io::Result<()> {
        writeln!(
            w,
            "{:<36} {:>4} {:<16} {:<28} {:<18} REQUESTER",
            "COMMAND", "SEQ", "STATE", "FEATURE", "ACTION"
        )?;
        for c in &self.commands {
            writeln!(
                w,
                "{:<36} {:>4} {:<16} {:<28} {:<18} {}",
                short(&c.name),
                c.sequence,
                state(c),
                short(&c.feature),
                action(c),
                c.requester
            )?;
        }
        Ok(())
    }

    fn names(&self) -> Vec<String> {
        self.commands.iter().map(|c| c.name.clone()).collect()
    }
}

impl View for pb::RecoverCommandsResponse {
    fn table(&self, w: &mut dyn Write) -> io::Result<()> {
        writeln!(
            w,
            "{} {} commands from {}: the log goes from sequence {} to {}",
            if self.dry_run {
                "would recover"
            } else {
                "recovered"
            },
            self.command_count,
            short(&self.supplier),
            self.from_sequence,
            self.to_sequence
        )?;
        writeln!(
            w,
            "{:>8} {:<14} {:<36} {:<22} {:<10} REASON",
            "SEQUENCE", "ACTION", "COMMAND", "SCOPE", "OUTCOME"
        )?;
        for c in &self.commands {
            writeln!(
                w,
                "{:>8} {:<14} {:<36} {:<22} {:<10} {}",
                c.sequence,
                c.action,
                short(&c.name),
                scope_summary(&c.scope),
                if c.rejected { "rejected" } else { "applied" },
                c.reason
            )?;
        }
        let unlisted = usize::try_from(self.command_count)
            .unwrap_or(0)
            .saturating_sub(self.commands.len());
        if unlisted > 0 {
            writeln!(w, "... {unlisted} more not listed")?;
        }
        if self.dry_run {
            writeln!(
                w,
                "nothing was changed; run again without --dry-run to recover them"
            )?;
        }
        Ok(())
    }

    fn names(&self) -> Vec<String> {
        self.commands.iter().map(|c| c.name.clone()).collect()
    }
}

/// A watch's line for a supplier that has answered: `emis       APPLIED`, with the reason of a
/// rejection.
pub fn answered(d: &pb::Delivery) -> String {
    format!(
        "{:<10} {}{}",
        short(&d.supplier),
        delivery_state(d),
        if d.rejection_reason.is_empty() {
            String::new()
        } else {
            format!(": {}", d.rejection_reason)
        }
    )
}

/// Listed codes the national estate does not know, as the impact names them: the first 20,
/// then how many more.
fn unknown_codes(codes: &[String]) -> String {
    const SHOWN: usize = 20;
    let mut text = format!(
        "{} not in the national estate: {}",
        codes.len(),
        codes[..codes.len().min(SHOWN)].join(", ")
    );
    if codes.len() > SHOWN {
        text.push_str(&format!(" and {} more", codes.len() - SHOWN));
    }
    text
}

/// An identity, and the person behind it when the coordinator's policy names one.
fn with_person(identity: &str, person: &str) -> String {
    if person.is_empty() {
        identity.to_owned()
    } else {
        format!("{identity} (person {person})")
    }
}
