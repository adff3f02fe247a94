//! Conversions between the wire types of `rollout-proto` and the domain types of
//! `rollout-core`, shared by both services and the CLI.
//!
//! Validation happens here, once, where a request arrives: every function that reads a wire
//! value takes the field path it came from, so a failure is an INVALID_ARGUMENT naming that
//! field in a `BadRequest` violation. Handlers never touch raw wire strings.

use std::time::{Duration, SystemTime};

use rollout_core::{
    Action, Applicable, Command, CommandId, Evaluation, FailMode, FeatureDef, FeatureKey, IcbCode, OdsCode,
    OptOut, Practice, PracticeStatus, Reason, RegionCode, Rule, RuleKind, Scope, ScopeError, State,
    SubIcbCode, SupplierId, rules::MAX_REASON_CHARS,
};
use rollout_proto::v1 as pb;

use crate::error::ApiError;

/// Parses `prefix/{id}` (for example `features/{feature}`) with `parse` for the id.
fn named<T>(
    field: &str,
    name: &str,
    prefix: &str,
    parse: impl FnOnce(&str) -> Result<T, rollout_core::IdError>,
) -> Result<T, ApiError> {
    let id = name
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('/'))
        .filter(|id| !id.contains('/'))
        .ok_or_else(|| {
            ApiError::invalid_field(
                field,
                format!("{name:?} is not a name of the form {prefix}/{{id}}"),
            )
        })?;
    parse(id).map_err(|e| ApiError::invalid_field(field, e))
}

/// `features/{feature}`.
pub fn feature_name(field: &str, name: &str) -> Result<FeatureKey, ApiError> {
    named(field, name, "features", FeatureKey::parse)
}

/// `commands/{command}`.
pub fn command_name(field: &str, name: &str) -> Result<CommandId, ApiError> {
    named(field, name, "commands", CommandId::parse)
}

/// `suppliers/{supplier}`.
pub fn supplier_name(field: &str, name: &str) -> Result<SupplierId, ApiError> {
    named(field, name, "suppliers", SupplierId::parse)
}

/// `practices/{practice}/features/{feature}` (lower-case ODS codes are accepted).
pub fn practice_feature_name(field: &str, name: &str) -> Result<(OdsCode, FeatureKey), ApiError> {
    let bad = || {
        ApiError::invalid_field(
            field,
            format!("{name:?} is not a name of the form practices/{{practice}}/features/{{feature}}"),
        )
    };
    let mut parts = name.split('/');
    match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (Some("practices"), Some(ods), Some("features"), Some(feature), None) => Ok((
            OdsCode::parse(ods).map_err(|e| ApiError::invalid_field(field, e))?,
            FeatureKey::parse(feature).map_err(|e| ApiError::invalid_field(field, e))?,
        )),
        _ => Err(bad()),
    }
}

/// `practices/{practice}/features/{feature}/optOut`.
pub fn opt_out_name(field: &str, name: &str) -> Result<(OdsCode, FeatureKey), ApiError> {
    let inner = name.strip_suffix("/optOut").ok_or_else(|| {
        ApiError::invalid_field(
            field,
            format!("{name:?} is not a name of the form practices/{{practice}}/features/{{feature}}/optOut"),
        )
    })?;
    practice_feature_name(field, inner)
}

/// The resource name of a practice's answer.
pub fn practice_feature_resource(ods: &OdsCode, feature: &FeatureKey) -> String {
    ["practices/", ods.as_str(), "/features/", feature.as_str()].concat()
}

/// A required, non-empty, bounded free-text field (reason, source).
pub fn text(field: &str, value: &str) -> Result<String, ApiError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(ApiError::invalid_field(
            field,
            "is required: say why, in words a person will read later",
        ));
    }
    if value.chars().count() > MAX_REASON_CHARS {
        return Err(ApiError::invalid_field(
            field,
            format!("is longer than {MAX_REASON_CHARS} characters"),
        ));
    }
    Ok(value.to_owned())
}

/// The fingerprint of a request without its idempotency key (SHA-256 of the method and the
/// encoded body), stored with the key to tell a retry from a reuse of the key.
pub fn request_fingerprint(method: &str, body: &impl prost::Message) -> Vec<u8> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(method.as_bytes());
    h.update(body.encode_to_vec());
    h.finalize().to_vec()
}

/// An optional idempotency key: empty, or a UUID version 4 (normalised to lower case).
pub fn request_id(field: &str, value: &str) -> Result<Option<String>, ApiError> {
    if value.is_empty() {
        return Ok(None);
    }
    match uuid::Uuid::parse_str(value) {
        Ok(u) if u.get_version_num() == 4 => Ok(Some(u.hyphenated().to_string())),
        _ => Err(ApiError::invalid_field(
            field,
            format!("{value:?} is not a UUID version 4"),
        )),
    }
}

/// A page size: 0 means `default`; above `max` is refused.
pub fn page_size(field: &str, value: i32, default: usize, max: usize) -> Result<usize, ApiError> {
    match usize::try_from(value) {
        Ok(0) => Ok(default),
        Ok(n) if n <= max => Ok(n),
        _ => Err(ApiError::invalid_field(
            field,
            format!("must be between 0 and {max}, got {value}"),
        )),
    }
}

/// A page token made by [`page_token`]: opaque to callers, tied to the query it came from.
pub fn page_token_after(field: &str, token: &str, query: &str) -> Result<Option<String>, ApiError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || {
        ApiError::invalid_field(
            field,
            "is not a page token this server gave for this query; start again without one",
        )
    };
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| token.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(bad)?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let (q, after) = text.split_once('\n').ok_or_else(bad)?;
    if q != query {
        return Err(bad());
    }
    Ok(Some(after.to_owned()))
}

/// The token for the page after `last`, for `query` (the request's filters, so a token is not
/// reused with other filters).
pub fn page_token(query: &str, last: &str) -> String {
    format!("{query}\n{last}")
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A timestamp from the wire: normalised (nanos in 0..1e9) and within 0001-01-01 to 9999-12-31,
/// as the protobuf Timestamp contract requires. prost would quietly normalise a bad one instead.
pub fn time(field: &str, t: &prost_types::Timestamp) -> Result<SystemTime, ApiError> {
    const MIN: i64 = -62_135_596_800;
    const MAX: i64 = 253_402_300_799;
    if !(0..1_000_000_000).contains(&t.nanos) || !(MIN..=MAX).contains(&t.seconds) {
        return Err(ApiError::invalid_field(
            field,
            "is not a valid timestamp (nanos must be 0 to 999,999,999; years 1 to 9999)",
        ));
    }
    SystemTime::try_from(*t).map_err(|e| ApiError::invalid_field(field, format!("is not a valid time: {e}")))
}

/// A timestamp for the wire.
pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    t.into()
}

fn scope_error(field: &str, e: ScopeError) -> ApiError {
    match e {
        ScopeError::Practice { index, source } => {
            ApiError::invalid_field(format!("{field}.practices.practices[{index}]"), source)
        }
        ScopeError::EmptyList | ScopeError::TooMany { .. } => {
            ApiError::invalid_field(format!("{field}.practices.practices"), e)
        }
        other => ApiError::invalid_field(field, other),
    }
}

/// A scope from the wire; exactly one target must be set.
pub fn scope(field: &str, s: Option<&pb::Scope>) -> Result<Scope, ApiError> {
    use pb::scope::Target;
    let target = s
        .and_then(|s| s.target.as_ref())
        .ok_or_else(|| scope_error(field, ScopeError::Missing))?;
    let sub = |name: &str| format!("{field}.{name}");
    Ok(match target {
        Target::National(_) => Scope::National,
        Target::Supplier(v) => {
            Scope::Supplier(SupplierId::parse(v).map_err(|e| ApiError::invalid_field(sub("supplier"), e))?)
        }
        Target::Region(v) => {
            Scope::Region(RegionCode::parse_region(v).map_err(|e| ApiError::invalid_field(sub("region"), e))?)
        }
        Target::Icb(v) => Scope::Icb(IcbCode::parse(v).map_err(|e| ApiError::invalid_field(sub("icb"), e))?),
        Target::SubIcb(v) => {
            Scope::SubIcb(SubIcbCode::parse(v).map_err(|e| ApiError::invalid_field(sub("sub_icb"), e))?)
        }
        Target::Practices(list) => {
            Scope::practices(list.practices.iter().map(String::as_str)).map_err(|e| scope_error(field, e))?
        }
    })
}

/// A scope for the wire.
pub fn scope_pb(s: &Scope) -> pb::Scope {
    use pb::scope::Target;
    let target = match s {
        Scope::National => Target::National(pb::scope::National {}),
        Scope::Supplier(v) => Target::Supplier(v.to_string()),
        Scope::Region(v) => Target::Region(v.to_string()),
        Scope::Icb(v) => Target::Icb(v.to_string()),
        Scope::SubIcb(v) => Target::SubIcb(v.to_string()),
        Scope::Practices(set) => Target::Practices(pb::scope::PracticeList {
            practices: set.iter().map(ToString::to_string).collect(),
        }),
    };
    pb::Scope { target: Some(target) }
}

/// A scope in the bounded form explained answers carry: kind and target, or for a practice
/// list how many it names (never the list).
pub fn scope_summary_pb(s: &Scope) -> pb::ScopeSummary {
    use pb::scope_summary::Kind;
    let (kind, target, practice_count) = match s {
        Scope::National => (Kind::National, String::new(), 0),
        Scope::Supplier(v) => (Kind::Supplier, v.to_string(), 0),
        Scope::Region(v) => (Kind::Region, v.to_string(), 0),
        Scope::Icb(v) => (Kind::Icb, v.to_string(), 0),
        Scope::SubIcb(v) => (Kind::SubIcb, v.to_string(), 0),
        Scope::Practices(set) => (
            Kind::PracticeList,
            String::new(),
            i32::try_from(set.len()).unwrap_or(i32::MAX),
        ),
    };
    pb::ScopeSummary {
        kind: kind.into(),
        target,
        practice_count,
    }
}

/// A feature definition from the wire (the key comes from the caller: the request's
/// `feature_id`, or the command's `feature`).
pub fn feature_def(field: &str, key: FeatureKey, f: &pb::Feature) -> Result<FeatureDef, ApiError> {
    let fail_mode = match pb::FailMode::try_from(f.fail_mode) {
        Ok(pb::FailMode::Static) => FailMode::Static,
        Ok(pb::FailMode::Closed) => {
            let ttl = f.control_ttl.as_ref().ok_or_else(|| {
                ApiError::invalid_field(format!("{field}.control_ttl"), "is required for FAIL_MODE_CLOSED")
            })?;
            let ttl = Duration::try_from(*ttl).map_err(|e| {
                ApiError::invalid_field(
                    format!("{field}.control_ttl"),
                    format!("is not a valid duration: {e}"),
                )
            })?;
            FailMode::Closed { ttl }
        }
        _ => {
            return Err(ApiError::invalid_field(
                format!("{field}.fail_mode"),
                "must be FAIL_MODE_STATIC or FAIL_MODE_CLOSED",
            ));
        }
    };
    let approvals_required = match f.approvals_required {
        0 => 1,
        n => u32::try_from(n).map_err(|_| {
            ApiError::invalid_field(format!("{field}.approvals_required"), "must be positive")
        })?,
    };
    let def = FeatureDef {
        key,
        description: f.description.trim().to_owned(),
        fail_mode,
        approvals_required,
    };
    def.validate().map_err(|e| {
        let sub = match e {
            rollout_core::FeatureDefError::ControlTtl => "control_ttl",
            rollout_core::FeatureDefError::Approvals => "approvals_required",
        };
        ApiError::invalid_field(format!("{field}.{sub}"), e)
    })?;
    Ok(def)
}

/// A feature definition for the wire.
pub fn feature_pb(def: &FeatureDef) -> pb::Feature {
    let (fail_mode, control_ttl) = match def.fail_mode {
        FailMode::Static => (pb::FailMode::Static, None),
        FailMode::Closed { ttl } => (pb::FailMode::Closed, prost_types::Duration::try_from(ttl).ok()),
    };
    pb::Feature {
        name: format!("features/{}", def.key),
        description: def.description.clone(),
        fail_mode: fail_mode.into(),
        control_ttl,
        approvals_required: i32::try_from(def.approvals_required).unwrap_or(i32::MAX),
        ..Default::default()
    }
}

/// A sequenced command from the wire (what a supplier receives). `field` is the path of the
/// command in the request.
pub fn command(field: &str, c: &pb::Command) -> Result<Command, ApiError> {
    let sequence = u64::try_from(c.sequence).ok().filter(|s| *s > 0).ok_or_else(|| {
        ApiError::invalid_field(
            format!("{field}.sequence"),
            "must be a positive global sequence number",
        )
    })?;
    Ok(Command {
        sequence,
        ..command_unsequenced(field, c)?
    })
}

/// A command from the wire whose sequence is not checked (a command still waiting for
/// approval has none); the result's sequence is 0.
pub fn command_unsequenced(field: &str, c: &pb::Command) -> Result<Command, ApiError> {
    use pb::command::Action as A;
    let sub = |name: &str| format!("{field}.{name}");
    let id = command_name(&sub("name"), &c.name)?;
    let feature = feature_name(&sub("feature"), &c.feature)?;
    let action = match c.action.as_ref() {
        Some(A::CreateFeature(cf)) => {
            let f = cf
                .feature
                .as_ref()
                .ok_or_else(|| ApiError::invalid_field(sub("create_feature.feature"), "is required"))?;
            Action::CreateFeature(feature_def(&sub("create_feature.feature"), feature.clone(), f)?)
        }
        Some(A::Halt(h)) => Action::Halt {
            scope: scope(&sub("halt.scope"), h.scope.as_ref())?,
        },
        Some(A::GoLive(g)) => Action::GoLive {
            scope: scope(&sub("go_live.scope"), g.scope.as_ref())?,
            effective_at: g
                .effective_time
                .as_ref()
                .map(|t| time(&sub("go_live.effective_time"), t))
                .transpose()?,
        },
        Some(A::Resume(r)) => {
            if r.halts.is_empty() {
                return Err(ApiError::invalid_field(
                    sub("resume.halts"),
                    "name at least one halt to lift",
                ));
            }
            Action::Resume {
                halts: r
                    .halts
                    .iter()
                    .enumerate()
                    .map(|(i, h)| command_name(&format!("{field}.resume.halts[{i}]"), h))
                    .collect::<Result<_, _>>()?,
            }
        }
        None => {
            return Err(ApiError::invalid_field(
                sub("action"),
                "set one of create_feature, halt, resume, go_live",
            ));
        }
    };
    Ok(Command {
        id,
        sequence: 0,
        feature,
        action,
        reason: text(&sub("reason"), &c.reason)?,
        requester: c.requester.clone(),
        issued_at: c
            .create_time
            .as_ref()
            .map(|t| time(&sub("create_time"), t))
            .transpose()?
            .unwrap_or(SystemTime::UNIX_EPOCH),
        approved_by: c.approvals.iter().map(|a| a.approver.clone()).collect(),
        redelivery_of: optional(&c.redelivery_of, |v| command_name(&sub("redelivery_of"), v))?,
        supplier: optional(&c.supplier, |v| supplier_name(&sub("supplier"), v))?,
    })
}

/// An optional name: empty is `None`, anything else must parse.
fn optional<T>(value: &str, parse: impl FnOnce(&str) -> Result<T, ApiError>) -> Result<Option<T>, ApiError> {
    (!value.is_empty()).then(|| parse(value)).transpose()
}

/// A command for the wire (what the coordinator sends): the fields a supplier needs.
pub fn command_pb(c: &Command) -> pb::Command {
    use pb::command::Action as A;
    let action = match &c.action {
        Action::CreateFeature(def) => A::CreateFeature(pb::command::CreateFeature {
            feature: Some(feature_pb(def)),
        }),
        Action::Halt { scope } => A::Halt(pb::command::Halt {
            scope: Some(scope_pb(scope)),
        }),
        Action::Resume { halts } => A::Resume(pb::command::Resume {
            halts: halts.iter().map(|h| format!("commands/{h}")).collect(),
        }),
        Action::GoLive { scope, effective_at } => A::GoLive(pb::command::GoLive {
            scope: Some(scope_pb(scope)),
            effective_time: effective_at.map(timestamp),
        }),
    };
    pb::Command {
        name: format!("commands/{}", c.id),
        sequence: i64::try_from(c.sequence).unwrap_or(i64::MAX),
        feature: format!("features/{}", c.feature),
        action: Some(action),
        reason: c.reason.clone(),
        requester: c.requester.clone(),
        create_time: Some(timestamp(c.issued_at)),
        approvals: c
            .approved_by
            .iter()
            .map(|a| pb::command::Approval {
                approver: a.clone(),
                ..Default::default()
            })
            .collect(),
        redelivery_of: c
            .redelivery_of
            .as_ref()
            .map(|id| format!("commands/{id}"))
            .unwrap_or_default(),
        supplier: c
            .supplier
            .as_ref()
            .map(|s| format!("suppliers/{s}"))
            .unwrap_or_default(),
        ..Default::default()
    }
}

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
        },
        previous_hash: e.previous_hash.clone(),
        hash: e.hash.clone(),
    }
}

#[cfg(test)]
mod tests {
    //! Conversion from untrusted input never panics: arbitrary protobuf bytes and strings.

    use proptest::prelude::*;
    use prost::Message;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

        #[test]
        fn commands_from_arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(c) = pb::Command::decode(bytes.as_slice()) {
                let _ = command("command", &c);
                let _ = command_unsequenced("command", &c);
            }
            if let Ok(s) = pb::Scope::decode(bytes.as_slice()) {
                let _ = scope("scope", Some(&s));
            }
            if let Ok(f) = pb::Feature::decode(bytes.as_slice()) {
                let _ = feature_def("feature", FeatureKey::parse("f").expect("key"), &f);
            }
            if let Ok(t) = prost_types::Timestamp::decode(bytes.as_slice()) {
                let _ = time("t", &t);
            }
        }

        #[test]
        fn names_and_fields_from_arbitrary_strings_never_panic(s in "\\PC{0,120}", n in any::<i32>()) {
            let _ = practice_feature_name("name", &s);
            let _ = opt_out_name("name", &s);
            let _ = feature_name("name", &s);
            let _ = command_name("name", &s);
            let _ = supplier_name("name", &s);
            let _ = request_id("request_id", &s);
            let _ = text("reason", &s);
            let _ = page_token_after("page_token", &s, "query");
            let _ = page_size("page_size", n, 10, 100);
        }

        #[test]
        fn valid_names_round_trip(ods in "[a-zA-Z][0-9]{5}", key in "[a-z][a-z0-9]{0,20}") {
            let name = format!("practices/{ods}/features/{key}");
            let (o, k) = practice_feature_name("name", &name).expect("valid");
            prop_assert_eq!(practice_feature_resource(&o, &k), format!("practices/{}/features/{key}", ods.to_uppercase()));
        }

        #[test]
        fn page_tokens_round_trip(q in "\\PC{0,40}", last in "\\PC{0,40}") {
            let token = page_token(&q, &last);
            let back = page_token_after("page_token", &token, &q).expect("own token");
            prop_assert_eq!(back, Some(last));
        }
    }

    #[test]
    fn a_command_survives_the_wire() {
        let c = Command {
            id: CommandId::parse("c-1").expect("id"),
            sequence: 7,
            feature: FeatureKey::parse("prospective-record-access").expect("key"),
            action: Action::Halt {
                scope: Scope::practices(["A81001", "b82002"].into_iter()).expect("scope"),
            },
            reason: "paused".into(),
            requester: "alice".into(),
            issued_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            approved_by: vec!["bob".into()],
            redelivery_of: None,
            supplier: None,
        };
        let redelivery = Command {
            id: CommandId::parse("c-2").expect("id"),
            sequence: 8,
            action: Action::Resume {
                halts: vec![CommandId::parse("c-1").expect("id")],
            },
            redelivery_of: Some(CommandId::parse("c-0").expect("id")),
            supplier: Some(SupplierId::parse("tpp").expect("supplier")),
            ..c.clone()
        };
        let wire = command_pb(&redelivery);
        assert_eq!(
            (wire.redelivery_of.as_str(), wire.supplier.as_str()),
            ("commands/c-0", "suppliers/tpp")
        );
        assert_eq!(command("command", &wire).expect("valid"), redelivery);
        let bad = pb::Command {
            supplier: "tpp".into(),
            ..wire
        };
        let refused = command("command", &bad).expect_err("not a supplier name");
        assert!(refused.to_string().contains("command.supplier"), "{refused}");
        let back = command(
            "command",
            &pb::Command::decode(command_pb(&c).encode_to_vec().as_slice()).expect("decode"),
        )
        .expect("valid");
        assert_eq!(back, c);
    }

    #[test]
    fn an_answer_quotes_at_most_120_characters_of_a_reason() {
        let reason = "é".repeat(MAX_REASON_CHARS);
        let o = OptOut {
            practice: OdsCode::parse("A81001").expect("ods"),
            feature: FeatureKey::parse("prospective-record-access").expect("key"),
            reason: reason.clone(),
            source: reason.clone(),
            recorded_by: "practice-admin".into(),
            recorded_at: SystemTime::UNIX_EPOCH,
        };
        let rule = applicable_pb(&Applicable::OptOut(&o));
        for (field, text) in [("reason", &rule.reason), ("source", &rule.source)] {
            assert_eq!(text.chars().count(), rollout_core::QUOTED_REASON_CHARS, "{field}");
            assert!(text.ends_with('…'), "{field}: {text}");
        }
    }
}
