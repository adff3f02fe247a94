//! Scopes, feature definitions and commands, from the wire and to it.

use super::*;

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
        reason: stored_text(&sub("reason"), &c.reason)?,
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
