//! Practices, answers with their rules, and audit events, to the wire (and an audit event back).

use super::*;

/// A practice's ODS status for the wire.
pub fn practice_status_pb(s: PracticeStatus) -> pb::PracticeStatus {
    match s {
        PracticeStatus::Active => pb::PracticeStatus::Active,
        PracticeStatus::Closed => pb::PracticeStatus::Closed,
        PracticeStatus::Dormant => pb::PracticeStatus::Dormant,
        PracticeStatus::Proposed => pb::PracticeStatus::Proposed,
    }
}

/// A practice for the wire.
pub fn practice_pb(p: &Practice) -> pb::Practice {
    pb::Practice {
        name: ["practices/", p.ods.as_str()].concat(),
        display_name: p.name.clone(),
        region: p.region.as_str().to_owned(),
        icb: p.icb.as_str().to_owned(),
        sub_icb: p.sub_icb.as_str().to_owned(),
        supplier: p.supplier.as_str().to_owned(),
        status: practice_status_pb(p.status).into(),
    }
}

/// An effective state for the wire.
pub fn state_pb(s: State) -> pb::practice_feature::State {
    match s {
        State::Enabled => pb::practice_feature::State::Enabled,
        State::Disabled => pb::practice_feature::State::Disabled,
        State::Unknown => pb::practice_feature::State::Unknown,
    }
}

/// A reason for the wire.
pub fn reason_pb(r: Reason) -> pb::practice_feature::Reason {
    use pb::practice_feature::Reason as R;
    match r {
        Reason::NeverSynchronised => R::NeverSynchronised,
        Reason::PracticeNotActive => R::PracticeNotActive,
        Reason::AwaitingOptOutCheck => R::AwaitingOptOutCheck,
        Reason::OptedOut => R::OptedOut,
        Reason::ControlStale => R::ControlStale,
        Reason::Halted => R::Halted,
        Reason::Live => R::Live,
        Reason::Scheduled => R::Scheduled,
        Reason::NotLive => R::NotLive,
    }
}

fn rule_pb(r: &Rule, status: pb::rule::Status) -> pb::Rule {
    let (kind, effective_time) = match &r.kind {
        RuleKind::GoLive { effective_at, .. } => (pb::rule::Kind::GoLive, Some(timestamp(*effective_at))),
        RuleKind::Halt { .. } => (pb::rule::Kind::Halt, None),
    };
    pb::Rule {
        kind: kind.into(),
        status: status.into(),
        deciding: false,
        command: ["commands/", r.command.as_str()].concat(),
        sequence: i64::try_from(r.sequence).unwrap_or(i64::MAX),
        scope: Some(scope_summary_pb(r.scope())),
        issued_by: r.issued_by.clone(),
        issue_time: Some(timestamp(r.issued_at)),
        reason: rollout_core::quoted(&r.reason).into_owned(),
        effective_time,
        lifted_by: String::new(),
        source: String::new(),
        approved_by: r.approved_by.clone(),
    }
}

fn opt_out_rule_pb(o: &OptOut) -> pb::Rule {
    pb::Rule {
        kind: pb::rule::Kind::OptOut.into(),
        status: pb::rule::Status::Active.into(),
        issued_by: o.recorded_by.clone(),
        issue_time: Some(timestamp(o.recorded_at)),
        reason: rollout_core::quoted(&o.reason).into_owned(),
        source: rollout_core::quoted(&o.source).into_owned(),
        ..Default::default()
    }
}

/// An applicable rule for the wire.
pub fn applicable_pb(a: &Applicable<'_>) -> pb::Rule {
    use pb::rule::Status as S;
    match a {
        Applicable::GoLive(r) => rule_pb(r, S::Active),
        Applicable::Scheduled(r) => rule_pb(r, S::Scheduled),
        Applicable::Halt(r) => rule_pb(r, S::Active),
        Applicable::OptOut(o) => opt_out_rule_pb(o),
    }
}

/// An evaluation for the wire, with its rules (marking the deciding one, listed first) if it
/// was explained: at most [`rollout_core::MAX_EXPLAINED_RULES`], with a count of the rest.
pub fn evaluation_pb(name: String, e: &Evaluation<'_>) -> pb::PracticeFeature {
    pb::PracticeFeature {
        name,
        state: state_pb(e.state).into(),
        reason: reason_pb(e.reason).into(),
        explanation: e.explain(),
        rules: e
            .rules
            .iter()
            .map(|a| {
                let mut rule = applicable_pb(a);
                rule.deciding = e.deciding.is_some_and(|d| d.is(a));
                rule
            })
            .collect(),
        omitted_rules: i32::try_from(e.omitted).unwrap_or(i32::MAX),
        ..Default::default()
    }
}

/// An audit event for the wire.
pub fn audit_pb(e: &rollout_core::audit::AuditEvent) -> pb::AuditEvent {
    pb::AuditEvent {
        sequence: i64::try_from(e.sequence).unwrap_or(i64::MAX),
        event_time: Some(timestamp(rollout_core::audit::from_micros(e.time_micros))),
        identity: e.draft.identity.clone(),
        action: e.draft.action.clone(),
        target: e.draft.target.clone(),
        outcome: match e.draft.outcome {
            rollout_core::audit::AuditOutcome::Accepted => pb::audit_event::Outcome::Accepted,
            rollout_core::audit::AuditOutcome::Refused => pb::audit_event::Outcome::Refused,
        }
        .into(),
        reason: e.draft.reason.clone(),
        request_id: e.draft.request_id.clone(),
        previous_hash: e.previous_hash.clone(),
        hash: e.hash.clone(),
        call_count: i64::try_from(e.draft.calls).unwrap_or(i64::MAX),
        peer: e.draft.peer.clone(),
        command: e.draft.command.clone(),
        scope: e.draft.scope.clone(),
    }
}

/// Reads an audit event from the wire (for `rolloutctl audit verify`).
pub fn audit_from_pb(e: &pb::AuditEvent) -> rollout_core::audit::AuditEvent {
    rollout_core::audit::AuditEvent {
        sequence: u64::try_from(e.sequence).unwrap_or(0),
        time_micros: e
            .event_time
            .and_then(|t| SystemTime::try_from(t).ok())
            .map(rollout_core::audit::micros)
            .unwrap_or_default(),
        draft: rollout_core::audit::AuditDraft {
            identity: e.identity.clone(),
            action: e.action.clone(),
            target: e.target.clone(),
            outcome: if e.outcome() == pb::audit_event::Outcome::Refused {
                rollout_core::audit::AuditOutcome::Refused
            } else {
                rollout_core::audit::AuditOutcome::Accepted
            },
            reason: e.reason.clone(),
            request_id: e.request_id.clone(),
            peer: e.peer.clone(),
            // 0 is an answer from a server older than the field: one call.
            calls: u64::try_from(e.call_count).ok().filter(|n| *n > 0).unwrap_or(1),
            command: e.command.clone(),
            scope: e.scope.clone(),
        },
        previous_hash: e.previous_hash.clone(),
        hash: e.hash.clone(),
    }
}

/// Where a ListAuditEvents page starts: after the sequence its `page_token` names, or after
/// `after_sequence`; and its size (default 100, at most 1,000).
pub fn audit_page_start(r: &pb::ListAuditEventsRequest) -> Result<(u64, usize), ApiError> {
    let size = page_size("page_size", r.page_size, 100, 1_000)?;
    let after = match page_token_after("page_token", &r.page_token, "audit")? {
        Some(t) => t
            .parse::<u64>()
            .map_err(|_| ApiError::invalid_field("page_token", "is not a page token this server gave"))?,
        None => u64::try_from(r.after_sequence)
            .map_err(|_| ApiError::invalid_field("after_sequence", "must not be negative"))?,
    };
    Ok((after, size))
}

/// A ListAuditEvents page of `size` from `events`, the events after its start as the store
/// gave them (asked for one more than `size`, so that a next page token is set exactly when
/// more events exist).
pub fn audit_page(events: &[rollout_core::audit::AuditEvent], size: usize) -> pb::ListAuditEventsResponse {
    let (events, next_page_token) = crate::Page::new(size)
        .fill(events.iter().map(audit_pb))
        .finish(|e| page_token("audit", &e.sequence.to_string()));
    pb::ListAuditEventsResponse {
        events,
        next_page_token,
    }
}
