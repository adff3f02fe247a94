//! ControlService: the coordinator's channel into the supplier.

use rollout_core::HistoryHash;
use tokio_stream::StreamExt;

use super::*;
use crate::{
    engine::SnapshotHeader,
    metrics::{ANSWERS, answer},
};

pub(super) const CONTROL: &str = "/nhs.gprollout.v1.ControlService";
/// Most chunks one snapshot may take (at most 1 MiB each, a snapshot of 1 GiB): past that
/// the transfer is refused rather than buffered for ever.
const MAX_SNAPSHOT_CHUNKS: usize = 1_024;

/// Most bytes one snapshot chunk may take (1 MiB, as the contract says): with
/// [`MAX_SNAPSHOT_CHUNKS`], a transfer buffers at most 1 GiB before it is applied.
const MAX_CHUNK_BYTES: usize = 1024 * 1024;

fn too_large(received: usize) -> ApiError {
    ApiError::resource_exhausted(
        "SNAPSHOT_CHUNK_TOO_LARGE",
        format!(
            "snapshot chunk {} is over {MAX_CHUNK_BYTES} bytes; send chunks of at most 1 MiB. Nothing was changed",
            received + 1
        ),
    )
    .with_metadata("limit_bytes", MAX_CHUNK_BYTES.to_string())
}

fn history_hash(field: &str, bytes: &[u8]) -> Result<HistoryHash, ApiError> {
    HistoryHash::from_slice(bytes).ok_or_else(|| ApiError::invalid_field(field, "must be 32 bytes (SHA-256)"))
}

pub(super) fn sequence(field: &str, value: i64) -> Result<u64, ApiError> {
    u64::try_from(value).map_err(|_| ApiError::invalid_field(field, "must not be negative"))
}

impl Handlers {
    /// The supplier's synchronisation state in `s`: applied sequence, history hash, freeze,
    /// counts per feature (one pass over the answers; a held practice counts as other
    /// disabled), and for the national opt-out register the store's identity, the latest
    /// opt-out change and the held practices.
    fn sync_state(&self, s: &Serving) -> pb::SyncState {
        let mut counts: Vec<pb::FeatureCounts> = s
            .answers
            .iter()
            .map(|(feature, answers)| {
                let mut n = [0; ANSWERS.len()];
                for (_, state, reason) in answers {
                    n[answer(*state, *reason)] += 1;
                }
                pb::FeatureCounts {
                    feature: format!("features/{feature}"),
                    practices: i32::try_from(answers.len()).unwrap_or(i32::MAX),
                    enabled: n[0],
                    halted: n[1],
                    opted_out: n[2],
                    not_live: n[3],
                    other_disabled: n[4],
                    unknown: n[5],
                }
            })
            .collect();
        counts.sort_by(|a, b| a.feature.cmp(&b.feature));
        pb::SyncState {
            supplier: format!("suppliers/{}", self.engine.supplier),
            applied_sequence: version_i64(s.book.applied_sequence()),
            last_apply_time: s.last_apply_time.map(wire::timestamp),
            frozen: self.engine.freeze.is_some(),
            freeze_reason: self.engine.freeze.clone().unwrap_or_default(),
            feature_counts: counts,
            version: version_i64(s.version),
            read_time: Some(wire::timestamp(SystemTime::now())),
            history_hash: s.head.as_bytes().to_vec(),
            store_id: self.engine.store_id.clone(),
            opt_out_change: version_i64(s.opt_out_change),
            held_practices: s.held.iter().map(ToString::to_string).collect(),
            refusal_audit: Some(self.refusals.status()),
            tls_warnings: self.tls_warnings.list(),
        }
    }
}

/// The task behind one WatchSyncState stream: the current state, then the state after each
/// change of the applied sequence, history hash, latest opt-out change or held practices, until
/// the reader goes away or the server shuts down (which ends the stream with UNAVAILABLE
/// `SHUTTING_DOWN`).
async fn watch_sync_state(h: Handlers, tx: mpsc::Sender<Result<pb::SyncState, Status>>) {
    let mut changes = h.engine.watch_sync_point();
    let mut shutdown = h.shutdown.clone();
    let mut sent = None;
    loop {
        changes.borrow_and_update();
        let s = h.engine.current();
        let point = s.sync_mark();
        if sent.as_ref() != Some(&point) {
            tokio::select! {
                delivered = tx.send(Ok(h.sync_state(&s))) => if delivered.is_err() { return },
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
            sent = Some(point);
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { break },
            _ = shutdown.wait_for(|stop| *stop) => break,
            _ = tx.closed() => return,
        }
    }
    let applied = h.engine.current().book.applied_sequence();
    let status = ApiError::unavailable(
        "SHUTTING_DOWN",
        format!(
            "the supplier is shutting down at applied sequence {applied}; watch again (or ask \
             GetSyncState) once it is back"
        ),
    )
    .with_metadata("applied_sequence", applied.to_string());
    // After the last state, if the reader has yet to take it (the drain's grace period bounds
    // the wait).
    tokio::select! {
        _ = tx.send(Err(status.into())) => {}
        _ = tx.closed() => {}
    }
}

#[tonic::async_trait]
impl ControlService for Handlers {
    async fn list_opt_out_changes(
        &self,
        req: Request<pb::ListOptOutChangesRequest>,
    ) -> Result<Response<pb::ListOptOutChangesResponse>, Status> {
        self.opt_out_changes(req.get_ref())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    #[instrument(skip_all, fields(records, released))]
    async fn import_opt_outs(
        &self,
        req: Request<pb::ImportOptOutsRequest>,
    ) -> Result<Response<pb::ImportOptOutsResponse>, Status> {
        self.import(req).await
    }

    async fn apply_command(
        &self,
        req: Request<pb::ApplyCommandRequest>,
    ) -> Result<Response<pb::ApplyCommandResponse>, Status> {
        let span = rollout_net::call_span!("ApplyCommand");
        span.record("gprollout.supplier", self.engine.supplier.as_str());
        rollout_net::trace::traced(span, req.metadata(), self.apply(&req)).await
    }

    async fn get_sync_state(
        &self,
        req: Request<pb::GetSyncStateRequest>,
    ) -> Result<Response<pb::SyncState>, Status> {
        // The heartbeat: contact only if this supplier has applied up to the coordinator's
        // latest sequence, which the heartbeat carries.
        let target = sequence("target_sequence", req.get_ref().target_sequence)?;
        self.engine.heard_target(target);
        self.engine.contact();
        Ok(Response::new(self.sync_state(&self.engine.current())))
    }

    type WatchSyncStateStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::SyncState, Status>> + Send>>;

    async fn watch_sync_state(
        &self,
        _req: Request<pb::WatchSyncStateRequest>,
    ) -> Result<Response<Self::WatchSyncStateStream>, Status> {
        // Not a heartbeat: only GetSyncState, ApplyCommand and ReplaceRules are the
        // coordinator's contact (see `engine/contact.rs`).
        // One message waits for the reader at most; changes in between coalesce in the engine's
        // watch channel, so a slow reader holds nothing but the latest state.
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(watch_sync_state(self.clone(), tx));
        Ok(rollout_net::ends_itself(Response::new(Box::pin(
            ReceiverStream::new(rx),
        ))))
    }

    async fn replace_rules(
        &self,
        req: Request<tonic::Streaming<pb::ReplaceRulesRequest>>,
    ) -> Result<Response<pb::ReplaceRulesResponse>, Status> {
        let span = rollout_net::call_span!("ReplaceRules");
        span.record("gprollout.supplier", self.engine.supplier.as_str());
        let metadata = req.metadata().clone();
        rollout_net::trace::traced(span, &metadata, self.replace(req)).await
    }

    async fn list_applied_commands(
        &self,
        req: Request<pb::ListAppliedCommandsRequest>,
    ) -> Result<Response<pb::ListAppliedCommandsResponse>, Status> {
        let r = req.get_ref();
        let run = async {
            let after = sequence("after_sequence", r.after_sequence)?;
            let size = wire::page_size("page_size", r.page_size, 100, 500)?;
            let query = r.after_sequence.to_string();
            let from = match wire::page_token_after("page_token", &r.page_token, &query)? {
                Some(last) => last.parse::<u64>().map_err(|_| {
                    ApiError::invalid_field("page_token", "is not a token this service issued")
                })?,
                None => after,
            };
            let applied = self.engine.current().book.applied_sequence();
            let rows = self
                .engine
                .store()
                .list_commands(from, u32::try_from(size + 1).unwrap_or(u32::MAX))
                .await
                .map_err(|e| ApiError::internal("reading the command log", e))?;
            let mut page = rollout_net::Page::new(size);
            for row in &rows {
                let command = pb::Command::decode(row.body.as_slice())
                    .map_err(|e| ApiError::internal("decoding a stored command", e))?;
                let item = pb::AppliedCommand {
                    command: Some(command),
                    rejection_reason: row.rejection.clone().unwrap_or_default(),
                    apply_time: Some(wire::timestamp(row.applied_at)),
                };
                if !page.push(item) {
                    break;
                }
            }
            let (commands, next_page_token) = page.finish(|c| {
                let sequence = c.command.as_ref().map_or(0, |c| c.sequence);
                wire::page_token(&query, &sequence.to_string())
            });
            Ok::<_, ApiError>(pb::ListAppliedCommandsResponse {
                commands,
                next_page_token,
                applied_sequence: version_i64(applied),
            })
        };
        run.await.map(Response::new).map_err(Status::from)
    }
}

impl Handlers {
    /// ApplyCommand, in its span (a child of the coordinator's `dispatch`, whose W3C trace
    /// context the call carries): the command applied through the engine's one write path, whose
    /// store commit and publication to watchers are spans of their own.
    async fn apply(
        &self,
        req: &Request<pb::ApplyCommandRequest>,
    ) -> Result<Response<pb::ApplyCommandResponse>, Status> {
        let method = format!("{CONTROL}/ApplyCommand");
        let r = req.get_ref();
        let target = r.command.as_ref().map(|c| c.name.clone()).unwrap_or_default();
        let audit = draft(req, &method, &target, "");
        self.audited(audit.clone(), async {
            let pbc = r
                .command
                .as_ref()
                .ok_or_else(|| ApiError::invalid_field("command", "is required"))?;
            let cmd = wire::command("command", pbc)?;
            let previous = (!r.previous_history_hash.is_empty())
                .then(|| history_hash("previous_history_hash", &r.previous_history_hash))
                .transpose()?;
            let span = Span::current();
            span.record("gprollout.sequence", cmd.sequence);
            if rollout_net::trace::command_id(req.metadata()) != Some(cmd.id.as_str()) {
                span.record("gprollout.command_id", cmd.id.as_str());
            }
            let audit = AuditDraft {
                reason: format!("{} {}: {}", cmd.action.name(), cmd.feature, cmd.reason),
                ..audit.clone()
            }
            .naming(&cmd);
            // The coordinator's latest sequence: at least this command's, and what it says it
            // is (so that catching up counts as contact only once every missed command is in).
            self.engine.heard_sequence(cmd.sequence);
            self.engine
                .heard_sequence(sequence("target_sequence", r.target_sequence)?);
            let applied = self
                .engine
                .apply(pbc.encode_to_vec(), cmd, previous, audit)
                .await?;
            // Contact, if it brought this supplier up to the coordinator's latest sequence.
            self.engine.contact();
            Ok(pb::ApplyCommandResponse {
                applied_sequence: version_i64(self.engine.current().book.applied_sequence()),
                outcome: if applied.rejection.is_some() {
                    pb::apply_command_response::Outcome::Rejected
                } else {
                    pb::apply_command_response::Outcome::Applied
                }
                .into(),
                rejection_reason: applied.rejection.unwrap_or_default(),
                apply_time: Some(wire::timestamp(applied.at)),
            })
        })
        .await
    }

    /// ReplaceRules, in its span: the whole snapshot gathered first, then installed through the
    /// engine's one write path.
    async fn replace(
        &self,
        req: Request<tonic::Streaming<pb::ReplaceRulesRequest>>,
    ) -> Result<Response<pb::ReplaceRulesResponse>, Status> {
        let method = format!("{CONTROL}/ReplaceRules");
        let audit = draft(&req, &method, &format!("suppliers/{}", self.engine.supplier), "");
        let mut chunks = req.into_inner();
        self.audited(audit.clone(), async move {
            // Gather the whole transfer first: nothing is applied until the last chunk has
            // arrived, so a transfer cut short changes nothing.
            let mut header = None;
            let mut commands = Vec::new();
            let mut received = 0;
            let mut last = false;
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk.map_err(|s| match s.code() {
                    // tonic's decoder refuses a chunk over the message limit.
                    tonic::Code::OutOfRange => too_large(received),
                    _ => ApiError::new(
                        tonic::Code::Aborted,
                        "SNAPSHOT_INTERRUPTED",
                        format!("the snapshot transfer broke off after {received} chunks ({}); nothing was changed", s.message()),
                    ),
                })?;
                if chunk.encoded_len() > MAX_CHUNK_BYTES {
                    return Err(too_large(received));
                }
                received += 1;
                if received > MAX_SNAPSHOT_CHUNKS {
                    return Err(ApiError::new(
                        tonic::Code::ResourceExhausted,
                        "SNAPSHOT_TOO_LARGE",
                        format!("a snapshot may take at most {MAX_SNAPSHOT_CHUNKS} chunks"),
                    ));
                }
                match (chunk.header, received) {
                    (Some(h), 1) => header = Some(h),
                    (Some(_), _) => return Err(ApiError::invalid_field("header", "is allowed in the first chunk only")),
                    (None, 1) => return Err(ApiError::invalid_field("header", "is required in the first chunk")),
                    (None, _) => {}
                }
                for c in &chunk.commands {
                    let field = format!("commands[{}]", commands.len());
                    commands.push((c.encode_to_vec(), wire::command(&field, c)?));
                }
                if chunk.last {
                    last = true;
                    break;
                }
            }
            let (Some(h), true) = (header, last) else {
                return Err(ApiError::new(
                    tonic::Code::Aborted,
                    "SNAPSHOT_INCOMPLETE",
                    format!("the snapshot transfer ended after {received} chunks without its last chunk; nothing was changed"),
                ));
            };
            let header = SnapshotHeader {
                sequence: sequence("header.sequence", h.sequence)?,
                history_hash: history_hash("header.history_hash", &h.history_hash)?,
                base_sequence: sequence("header.base_sequence", h.base_sequence)?,
                base_history_hash: history_hash("header.base_history_hash", &h.base_history_hash)?,
            };
            Span::current().record("gprollout.sequence", header.sequence);
            let mut previous = 0;
            for (i, (_, c)) in commands.iter().enumerate() {
                if c.sequence > header.sequence || c.sequence <= previous {
                    return Err(ApiError::invalid_field(
                        format!("commands[{i}].sequence"),
                        format!(
                            "is {}: a snapshot's commands come in increasing sequence order, none past the header's sequence {}",
                            c.sequence, header.sequence
                        ),
                    ));
                }
                previous = c.sequence;
            }
            let audit = AuditDraft {
                reason: format!(
                    "snapshot as of sequence {} ({} commands in force, {received} chunks)",
                    header.sequence,
                    commands.len()
                ),
                ..audit.clone()
            };
            self.engine.heard_sequence(header.sequence);
            let count = self.engine.install_snapshot(header, commands, audit).await?;
            // Contact, if it brought this supplier up to the coordinator's latest sequence.
            self.engine.contact();
            Ok(pb::ReplaceRulesResponse {
                applied_sequence: version_i64(header.sequence),
                apply_time: Some(wire::timestamp(SystemTime::now())),
                command_count: i32::try_from(count).unwrap_or(i32::MAX),
            })
        })
        .await
    }
}
