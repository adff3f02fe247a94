//! ControlService's two methods of the national opt-out register: ListOptOutChanges, how the
//! coordinator keeps its copy of this supplier's opt-outs, and ImportOptOuts, how it sends
//! records back (after this supplier lost its store) or on (with a practice that joined from
//! another supplier), releasing the practices held until it has answered.

use std::collections::HashMap;

use rollout_store::supplier::Withdrawal;

use super::{
    control::{CONTROL, sequence},
    *,
};

/// ListOptOutChanges: records per answer unless asked, and at most.
const DEFAULT_CHANGES: usize = 500;
const MAX_CHANGES: usize = 1_000;
/// ImportOptOuts: most records, and most released practices, in one call.
pub const MAX_IMPORTED: usize = 1_000;
pub const MAX_RELEASED: usize = 10_000;
/// Longest identity a record may name (recorded_by, withdrawn_by).
const MAX_IDENTITY_CHARS: usize = 500;

fn identity(field: &str, value: &str) -> Result<String, ApiError> {
    let value = value.trim();
    if value.is_empty() || value.chars().count() > MAX_IDENTITY_CHARS {
        return Err(ApiError::invalid_field(
            field,
            format!("must name the identity, in 1 to {MAX_IDENTITY_CHARS} characters"),
        ));
    }
    Ok(value.to_owned())
}

fn required_time(field: &str, t: Option<&prost_types::Timestamp>) -> Result<SystemTime, ApiError> {
    wire::time(
        field,
        t.ok_or_else(|| ApiError::invalid_field(field, "is required"))?,
    )
}

/// A record from the register, as this supplier will hold it (its change number is given when
/// it is installed). Refused unless it is whole: a valid name, reason, source, who recorded it
/// and when, its withdrawal if withdrawn, and its origin (restored or transferred) with the
/// supplier it came from.
fn imported(field: &str, o: &pb::PracticeOptOut) -> Result<OptOutRecord, ApiError> {
    let at = |name: &str| format!("{field}.{name}");
    let (practice, feature) = wire::opt_out_name(&at("name"), &o.name)?;
    let from = wire::supplier_name(&at("origin_supplier"), &o.origin_supplier)?;
    let origin = match o.origin() {
        pb::practice_opt_out::Origin::Restored => Origin::Restored(from),
        pb::practice_opt_out::Origin::Transferred => Origin::Transferred(from),
        _ => {
            return Err(ApiError::invalid_field(
                at("origin"),
                "must be ORIGIN_RESTORED or ORIGIN_TRANSFERRED: only a practice, through its supplier, records an opt-out",
            ));
        }
    };
    let withdrawal = if o.withdrawn {
        Some(Withdrawal {
            by: identity(&at("withdrawn_by"), &o.withdrawn_by)?,
            at: required_time(&at("withdraw_time"), o.withdraw_time.as_ref())?,
            reason: wire::stored_text(&at("withdraw_reason"), &o.withdraw_reason)?,
        })
    } else {
        None
    };
    Ok(OptOutRecord {
        opt_out: rollout_core::OptOut {
            practice,
            feature,
            reason: wire::stored_text(&at("reason"), &o.reason)?,
            source: wire::stored_text(&at("source"), &o.source)?,
            recorded_by: identity(&at("recorded_by"), &o.recorded_by)?,
            recorded_at: required_time(&at("create_time"), o.create_time.as_ref())?,
        },
        updated_at: not_ahead(
            &at("update_time"),
            required_time(&at("update_time"), o.update_time.as_ref())?,
        )?,
        withdrawal,
        change: 0,
        origin,
    })
}

/// `t`, unless it is further ahead of this supplier's clock than clocks differ
/// ([`rollout_core::register::MAX_CLOCK_AHEAD`]): a copy dated in the future would outrank
/// what the practice says here later.
fn not_ahead(field: &str, t: SystemTime) -> Result<SystemTime, ApiError> {
    let limit = SystemTime::now() + rollout_core::register::MAX_CLOCK_AHEAD;
    if t > limit {
        return Err(ApiError::invalid_field(
            field,
            "is in the future: a record's update time is when its supplier last changed it",
        ));
    }
    Ok(t)
}

/// The records and released practices of an ImportOptOuts request, validated whole.
fn import_request(r: &pb::ImportOptOutsRequest) -> Result<(Vec<OptOutRecord>, Vec<OdsCode>), ApiError> {
    if r.opt_outs.len() > MAX_IMPORTED {
        return Err(ApiError::invalid_field(
            "opt_outs",
            format!(
                "holds {} records; send at most {MAX_IMPORTED} a call",
                r.opt_outs.len()
            ),
        ));
    }
    if r.released_practices.len() > MAX_RELEASED {
        return Err(ApiError::invalid_field(
            "released_practices",
            format!(
                "names {} practices; release at most {MAX_RELEASED} a call",
                r.released_practices.len()
            ),
        ));
    }
    let mut seen = HashMap::new();
    let mut records = Vec::with_capacity(r.opt_outs.len());
    for (i, o) in r.opt_outs.iter().enumerate() {
        let field = format!("opt_outs[{i}]");
        let record = imported(&field, o)?;
        let key = (record.opt_out.practice, record.opt_out.feature.clone());
        if let Some(first) = seen.insert(key, i) {
            return Err(ApiError::invalid_field(
                format!("{field}.name"),
                format!("names the same practice and feature as opt_outs[{first}]; send each record once"),
            ));
        }
        records.push(record);
    }
    let released = r
        .released_practices
        .iter()
        .enumerate()
        .map(|(i, ods)| {
            OdsCode::parse(ods).map_err(|e| ApiError::invalid_field(format!("released_practices[{i}]"), e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((records, released))
}

impl Handlers {
    /// ListOptOutChanges: the records changed after `after_change`, in change order, at most
    /// `page_size` (default 500, at most 1,000) and at most the page byte budget (2 MiB); the
    /// caller asks again from the last change received until it reaches `latest_change`.
    pub(super) async fn opt_out_changes(
        &self,
        r: &pb::ListOptOutChangesRequest,
    ) -> Result<pb::ListOptOutChangesResponse, ApiError> {
        let after = sequence("after_change", r.after_change)?;
        let size = wire::page_size("page_size", r.page_size, DEFAULT_CHANGES, MAX_CHANGES)?;
        let latest = self.engine.current().opt_out_change;
        let rows = self
            .engine
            .store()
            .opt_out_changes(after, u32::try_from(size).unwrap_or(u32::MAX))
            .await
            .map_err(|e| ApiError::internal("reading opt-out changes", e))?;
        // Rows written through another replica since this one's state was read count too.
        let latest = rows.last().map_or(latest, |r| r.change.max(latest));
        let (opt_outs, _) = Page::new(size)
            .fill(rows.iter().map(opt_out_pb))
            .finish(|_| String::new());
        Ok(pb::ListOptOutChangesResponse {
            opt_outs,
            latest_change: version_i64(latest),
            store_id: self.engine.store_id.clone(),
        })
    }

    /// ImportOptOuts: validates the whole request (INVALID_ARGUMENT with the field otherwise),
    /// then installs and releases through the engine's one write path.
    pub(super) async fn import(
        &self,
        req: Request<pb::ImportOptOutsRequest>,
    ) -> Result<Response<pb::ImportOptOutsResponse>, Status> {
        let method = format!("{CONTROL}/ImportOptOuts");
        let audit = draft(&req, &method, &format!("suppliers/{}", self.engine.supplier), "");
        let r = req.get_ref();
        Span::current()
            .record("records", r.opt_outs.len())
            .record("released", r.released_practices.len());
        self.audited(audit.clone(), async {
            let (records, released) = import_request(r)?;
            let done = self
                .engine
                .import_opt_outs(records, released, audit.clone())
                .await?;
            Ok(pb::ImportOptOutsResponse {
                installed: i32::try_from(done.installed).unwrap_or(i32::MAX),
                kept: i32::try_from(done.kept).unwrap_or(i32::MAX),
                latest_change: version_i64(done.latest_change),
            })
        })
        .await
    }
}
