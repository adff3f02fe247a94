//! `rolloutctl audit list|verify`: the coordinator's hash-chained audit log, or with
//! `--supplier ID` a supplier's, which the coordinator reads from the supplier unchanged.

use clap::Subcommand;
use rollout_net::wire;
use rollout_proto::v1 as pb;

use super::{Ctx, Exit, Outcome};
use crate::{
    client::{CliError, Client, pages},
    render::warn,
};

/// The audit log.
#[derive(Debug, Subcommand)]
pub enum Audit {
    /// Audit events, oldest first.
    List {
        /// Only events after this sequence.
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// At most this many (a last line says when more follow, and from where).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
        /// A supplier's log instead of the coordinator's (for example `emis`), read through the
        /// coordinator.
        #[arg(long, value_name = "ID")]
        supplier: Option<String>,
    },
    /// Read the whole log and check its hash chain. Exits 2 if it is broken.
    Verify {
        /// A supplier's log instead of the coordinator's (for example `emis`), read through the
        /// coordinator, which passes the supplier's pages on unchanged.
        #[arg(long, value_name = "ID")]
        supplier: Option<String>,
    },
}

impl Audit {
    /// Lists or verifies.
    pub async fn run(self, ctx: &mut Ctx) -> Outcome {
        match self {
            Audit::List {
                after,
                limit,
                supplier,
            } => {
                let log = Log::of(supplier.as_deref())?;
                let r = events(&ctx.client, &log, after, limit as usize).await?;
                let more = (!r.next_page_token.is_empty())
                    .then(|| r.events.last().map(|e| e.sequence))
                    .flatten();
                let exit = ctx.print(&r)?;
                if let Some(last) = more {
                    ctx.out.say(format_args!(
                        "more events follow: rolloutctl audit list{} --after {last}",
                        log.flag()
                    ))?;
                }
                Ok(exit)
            }
            Audit::Verify { supplier } => {
                let log = Log::of(supplier.as_deref())?;
                let events: Vec<_> = events(&ctx.client, &log, 0, usize::MAX)
                    .await?
                    .events
                    .iter()
                    .map(wire::audit_from_pb)
                    .collect();
                match rollout_core::audit::verify_chain(&events) {
                    Ok(n) => {
                        let last = events.last().map_or("-", |e| e.hash.as_str());
                        let calls: u64 = events.iter().map(|e| e.draft.calls).sum();
                        ctx.out.line(format_args!(
                            "{} audit chain verified: {n} events ({calls} calls), last hash {last}",
                            log.whose()
                        ))?;
                        Ok(Exit::Success)
                    }
                    Err(e) => {
                        warn(format_args!("{} audit chain BROKEN: {e}", log.whose()));
                        Ok(Exit::CheckFailed)
                    }
                }
            }
        }
    }
}

/// Whose log: the coordinator's, or a supplier's (`suppliers/{id}`).
struct Log(Option<String>);

impl Log {
    fn of(supplier: Option<&str>) -> Result<Log, CliError> {
        supplier
            .map(|s| {
                let id = s.strip_prefix("suppliers/").unwrap_or(s);
                rollout_core::SupplierId::parse(id)
                    .map(|id| format!("suppliers/{id}"))
                    .map_err(|e| CliError::Usage(format!("--supplier: {e}")))
            })
            .transpose()
            .map(Log)
    }

    fn whose(&self) -> String {
        self.0.clone().unwrap_or_else(|| "coordinator".into())
    }

    /// The flag that names this log again, for a hint.
    fn flag(&self) -> String {
        self.0
            .as_deref()
            .map(|s| format!(" --supplier {}", s.trim_start_matches("suppliers/")))
            .unwrap_or_default()
    }
}

/// Up to `most` audit events of `log` after the sequence `after`, oldest first; the answer's
/// `next_page_token` is set when more follow.
async fn events(
    client: &Client,
    log: &Log,
    after: i64,
    most: usize,
) -> Result<pb::ListAuditEventsResponse, tonic::Status> {
    let supplier = log.0.clone().unwrap_or_default();
    pages(client, most, 1_000, |mut c, page_token, page_size| {
        let supplier = supplier.clone();
        async move {
            c.list_audit_events(pb::ListAuditEventsRequest {
                page_size,
                page_token,
                after_sequence: after,
                supplier,
            })
            .await
        }
    })
    .await
}
