//! ListOptOuts, the national opt-out register as the coordinator keeps it, and the register's
//! part of the supplier view (how far it has read each supplier's opt-out changes).

use prost::Message;
use rollout_core::OdsCode;
use rollout_net::{ApiError, Page, wire};
use rollout_proto::v1 as pb;
use rollout_store::coordinator::RegisterQuery;
use tonic::{Request, Response, Status};

use super::Handlers;
use crate::coordinator::store_error;

/// ListOptOuts: opt-outs a page unless asked, and at most.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1_000;

fn count(n: u64) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The register's rows matching the request's filters, paged by name (at most `page_size`,
/// default 100, at most 1,000, and at most 2 MiB), each with the supplier holding it, and
/// counts per supplier and feature over every matching row.
pub(super) async fn list_opt_outs(
    h: &Handlers,
    req: Request<pb::ListOptOutsRequest>,
) -> Result<Response<pb::ListOptOutsResponse>, Status> {
    let r = req.get_ref();
    let feature = (!r.feature.is_empty())
        .then(|| wire::feature_name("feature", &r.feature))
        .transpose()?;
    let supplier = (!r.supplier.is_empty())
        .then(|| wire::supplier_name("supplier", &r.supplier))
        .transpose()?;
    // A filter naming what does not exist is a mistake to say, not an empty register.
    if let Some(f) = &feature
        && h.core.read(|m| m.feature(f).is_none()).await
    {
        return Err(ApiError::not_found("FEATURE_NOT_FOUND", format!("features/{f}")).into());
    }
    if let Some(s) = &supplier
        && !h.core.suppliers.iter().any(|e| e.id == *s)
    {
        return Err(ApiError::not_found("SUPPLIER_NOT_FOUND", format!("suppliers/{s}")).into());
    }
    let practice = (!r.practice.is_empty())
        .then(|| OdsCode::parse(&r.practice))
        .transpose()
        .map_err(|e| ApiError::invalid_field("practice", e))?;
    let size = wire::page_size("page_size", r.page_size, DEFAULT_PAGE, MAX_PAGE)?;
    let filters = format!("{}|{}|{}|{}", r.feature, r.supplier, r.practice, r.show_withdrawn);
    let after = wire::page_token_after("page_token", &r.page_token, &filters)?
        .map(|name| {
            wire::opt_out_name("page_token", &name).map(|(ods, key)| (ods.to_string(), key.to_string()))
        })
        .transpose()?;
    let query = RegisterQuery {
        feature: feature.map(|f| f.to_string()),
        supplier: supplier.map(|s| s.to_string()),
        practice: practice.map(|p| p.to_string()),
        show_withdrawn: r.show_withdrawn,
        after,
        // One more than a page: the page knows it is not the last.
        limit: u32::try_from(size + 1).unwrap_or(u32::MAX),
    };
    let store = h.core.store();
    let rows = store
        .list_register(&query)
        .await
        .map_err(store_error("reading the opt-out register"))?;
    let records = rows
        .iter()
        .map(|row| {
            pb::PracticeOptOut::decode(row.body.as_slice())
                .map(|o| pb::PracticeOptOut {
                    supplier: format!("suppliers/{}", row.supplier),
                    change: 0,
                    ..o
                })
                .map_err(|e| ApiError::internal("decoding an opt-out of the register", e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (opt_outs, next_page_token) = Page::new(size)
        .fill(records)
        .finish(|o| wire::page_token(&filters, &o.name));
    let counts = store
        .count_register(&query)
        .await
        .map_err(store_error("counting the opt-out register"))?
        .into_iter()
        .map(|c| pb::list_opt_outs_response::Count {
            supplier: format!("suppliers/{}", c.supplier),
            feature: format!("features/{}", c.feature),
            opted_out: count(c.opted_out),
            withdrawn: count(c.withdrawn),
        })
        .collect();
    Ok(Response::new(pb::ListOptOutsResponse {
        opt_outs,
        next_page_token,
        counts,
    }))
}

/// Fills each supplier view's `opt_out_change`: the last of its opt-out changes the register
/// has read (0 before the first).
pub(super) async fn with_register(h: &Handlers, views: &mut [pb::Supplier]) -> Result<(), ApiError> {
    let cursors = h
        .core
        .store()
        .opt_out_cursors()
        .await
        .map_err(store_error("reading the opt-out register's cursors"))?;
    for view in views {
        let id = view.name.strip_prefix("suppliers/").unwrap_or(&view.name);
        view.opt_out_change = cursors
            .iter()
            .find(|(s, _)| s == id)
            .map_or(0, |(_, c)| i64::try_from(c.change).unwrap_or(i64::MAX));
    }
    Ok(())
}
