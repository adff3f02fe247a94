//! A stub supplier: a real tonic server over real mutual TLS (the project's own acceptor, a
//! supplier's certificate minted at test time) implementing ControlService and ToggleService
//! as the coordinator calls them. Told to, it answers as an honest supplier does (commands
//! applied in order, snapshots installed, its records listed), or with nonsense: absurd
//! sequences, outcomes that are neither APPLIED nor REJECTED, strings and lists of megabytes,
//! pages without end. A supplier is another organisation's service; this is one gone wrong.

use std::{
    net::SocketAddr,
    path::Path,
    pin::Pin,
    sync::{Arc, Mutex},
};

use rollout_core::{CommandId, HistoryHash};
use rollout_net::tls::{self, ReloadingServerConfig, TlsFiles};
use rollout_proto::v1::{
    self as pb,
    control_service_server::{ControlService, ControlServiceServer},
    toggle_service_server::{ToggleService, ToggleServiceServer},
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};

/// The applied sequence the stub claims when it answers nonsense.
pub const ABSURD: i64 = 100_000_000;
/// A string of megabytes.
fn huge(bytes: usize) -> String {
    "x".repeat(bytes)
}

/// How the stub answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// As a supplier does: commands applied in order, snapshots installed, records listed.
    Honest,
    /// ApplyCommand: applied sequence [`ABSURD`], REJECTED with a 3 MB reason, nothing applied.
    AbsurdApply,
    /// ApplyCommand: the outcome 0 (neither APPLIED nor REJECTED), nothing applied.
    NoOutcome,
    /// ReplaceRules: applied sequence [`ABSURD`], nothing installed.
    AbsurdSnapshot,
    /// GetSyncState and WatchSyncState: applied sequence [`ABSURD`].
    AbsurdState,
}

/// What the stub holds and how it answers.
#[derive(Debug)]
struct State {
    behaviour: Behaviour,
    /// The commands it holds (applied one by one, or installed by a snapshot), in order.
    held: Vec<pb::Command>,
    applied: u64,
    hash: HistoryHash,
    /// GetSyncState carries 10,000 counts of features nobody defined (1 MB).
    noisy: bool,
    /// GetSyncState calls answered.
    heartbeats: u64,
}

/// The stub, running.
pub struct StubSupplier {
    /// Where it listens (127.0.0.1).
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

#[derive(Clone)]
struct Handlers(Arc<Mutex<State>>);

impl StubSupplier {
    /// Starts one presenting `NAME.pem` of `pki` (a supplier's server certificate), trusting
    /// that directory's CA for its clients.
    pub async fn start(pki: &Path, name: &str, behaviour: Behaviour, noisy: bool) -> StubSupplier {
        let config = ReloadingServerConfig::load(TlsFiles::from_pki_dir(pki, name)).expect("server config");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(State {
            behaviour,
            held: Vec::new(),
            applied: 0,
            hash: HistoryHash::EMPTY,
            noisy,
            heartbeats: 0,
        }));
        let handlers = Handlers(state.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(ControlServiceServer::new(handlers.clone()))
                .add_service(ToggleServiceServer::new(handlers))
                .serve_with_incoming_shutdown(tls::incoming(listener, config), async {
                    let _ = stopped.await;
                })
                .await
                .expect("the stub supplier serves");
        });
        StubSupplier {
            addr,
            state,
            stop: Some(stop),
            task,
        }
    }

    /// Answers as `behaviour` says from now on.
    pub fn behave(&self, behaviour: Behaviour) {
        self.state.lock().expect("state").behaviour = behaviour;
    }

    /// Forgets everything it holds, as a supplier whose store was lost.
    pub fn lose_store(&self) {
        let mut s = self.state.lock().expect("state");
        s.held.clear();
        s.applied = 0;
        s.hash = HistoryHash::EMPTY;
    }

    /// Its applied sequence.
    pub fn applied(&self) -> u64 {
        self.state.lock().expect("state").applied
    }

    /// GetSyncState calls answered so far.
    pub fn heartbeats(&self) -> u64 {
        self.state.lock().expect("state").heartbeats
    }

    /// Stops it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = self.task.await;
    }
}

impl Handlers {
    fn sync_state(&self) -> pb::SyncState {
        let s = self.0.lock().expect("state");
        let absurd = s.behaviour == Behaviour::AbsurdState;
        let mut counts = vec![pb::FeatureCounts {
            feature: format!("features/{}", crate::support::FEATURE),
            practices: 3,
            ..Default::default()
        }];
        if s.noisy {
            counts.extend((0..10_000).map(|i| pb::FeatureCounts {
                feature: format!("features/{i:05}-{}", huge(90)),
                practices: i,
                ..Default::default()
            }));
        }
        pb::SyncState {
            supplier: "suppliers/microtest".into(),
            applied_sequence: if absurd {
                ABSURD
            } else {
                i64::try_from(s.applied).expect("applied")
            },
            history_hash: s.hash.as_bytes().to_vec(),
            feature_counts: counts,
            read_time: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
            ..Default::default()
        }
    }

    /// Applies `c` honestly: the next sequence, continuing the history held.
    fn apply(&self, c: &pb::Command, previous: &[u8]) -> Result<pb::ApplyCommandResponse, Status> {
        let mut s = self.0.lock().expect("state");
        let sequence = u64::try_from(c.sequence).map_err(|_| Status::invalid_argument("sequence"))?;
        let applied = pb::apply_command_response::Outcome::Applied as i32;
        if sequence <= s.applied {
            return Ok(pb::ApplyCommandResponse {
                applied_sequence: i64::try_from(s.applied).expect("applied"),
                outcome: applied,
                ..Default::default()
            });
        }
        if sequence != s.applied + 1 || previous != s.hash.as_bytes() {
            return Err(Status::failed_precondition(format!(
                "sequence {sequence} does not follow {}",
                s.applied
            )));
        }
        let id = CommandId::parse(c.name.trim_start_matches("commands/")).expect("command id");
        s.hash = s.hash.next(sequence, &id);
        s.applied = sequence;
        s.held.push(c.clone());
        Ok(pb::ApplyCommandResponse {
            applied_sequence: c.sequence,
            outcome: applied,
            apply_time: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
            ..Default::default()
        })
    }
}

type SyncStream = Pin<Box<dyn Stream<Item = Result<pb::SyncState, Status>> + Send>>;
type PracticeStream = Pin<Box<dyn Stream<Item = Result<pb::WatchPracticeFeaturesResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ControlService for Handlers {
    async fn apply_command(
        &self,
        req: Request<pb::ApplyCommandRequest>,
    ) -> Result<Response<pb::ApplyCommandResponse>, Status> {
        let r = req.into_inner();
        let c = r.command.ok_or_else(|| Status::invalid_argument("command"))?;
        let behaviour = self.0.lock().expect("state").behaviour;
        let answer = match behaviour {
            Behaviour::AbsurdApply => pb::ApplyCommandResponse {
                applied_sequence: ABSURD,
                outcome: pb::apply_command_response::Outcome::Rejected as i32,
                rejection_reason: huge(3_000_000),
                apply_time: None,
            },
            Behaviour::NoOutcome => pb::ApplyCommandResponse {
                applied_sequence: c.sequence,
                ..Default::default()
            },
            _ => self.apply(&c, &r.previous_history_hash)?,
        };
        Ok(Response::new(answer))
    }

    async fn get_sync_state(
        &self,
        _: Request<pb::GetSyncStateRequest>,
    ) -> Result<Response<pb::SyncState>, Status> {
        self.0.lock().expect("state").heartbeats += 1;
        Ok(Response::new(self.sync_state()))
    }

    type WatchSyncStateStream = SyncStream;

    async fn watch_sync_state(
        &self,
        _: Request<pb::WatchSyncStateRequest>,
    ) -> Result<Response<SyncStream>, Status> {
        // The state once, then nothing until the reader goes.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let first = self.sync_state();
        tokio::spawn(async move {
            if tx.send(Ok(first)).await.is_ok() {
                tx.closed().await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn replace_rules(
        &self,
        req: Request<Streaming<pb::ReplaceRulesRequest>>,
    ) -> Result<Response<pb::ReplaceRulesResponse>, Status> {
        let mut chunks = req.into_inner();
        let (mut header, mut commands) = (None, Vec::new());
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            header = header.or(chunk.header);
            commands.extend(chunk.commands);
            if chunk.last {
                break;
            }
        }
        let h = header.ok_or_else(|| Status::invalid_argument("header"))?;
        let mut s = self.0.lock().expect("state");
        if s.behaviour == Behaviour::AbsurdSnapshot {
            return Ok(Response::new(pb::ReplaceRulesResponse {
                applied_sequence: ABSURD,
                ..Default::default()
            }));
        }
        s.applied = u64::try_from(h.sequence).expect("sequence");
        s.hash = HistoryHash::from_slice(&h.history_hash).expect("hash");
        s.held = commands;
        Ok(Response::new(pb::ReplaceRulesResponse {
            applied_sequence: h.sequence,
            apply_time: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
            command_count: i32::try_from(s.held.len()).expect("count"),
        }))
    }

    async fn list_applied_commands(
        &self,
        req: Request<pb::ListAppliedCommandsRequest>,
    ) -> Result<Response<pb::ListAppliedCommandsResponse>, Status> {
        let after = req.get_ref().after_sequence;
        let s = self.0.lock().expect("state");
        Ok(Response::new(pb::ListAppliedCommandsResponse {
            commands: s
                .held
                .iter()
                .filter(|c| c.sequence > after)
                .map(|c| pb::AppliedCommand {
                    command: Some(c.clone()),
                    ..Default::default()
                })
                .collect(),
            next_page_token: String::new(),
            applied_sequence: i64::try_from(s.applied).expect("applied"),
        }))
    }

    async fn list_opt_out_changes(
        &self,
        _: Request<pb::ListOptOutChangesRequest>,
    ) -> Result<Response<pb::ListOptOutChangesResponse>, Status> {
        Err(Status::unimplemented("no opt-outs here"))
    }

    async fn import_opt_outs(
        &self,
        _: Request<pb::ImportOptOutsRequest>,
    ) -> Result<Response<pb::ImportOptOutsResponse>, Status> {
        Err(Status::unimplemented("no opt-outs here"))
    }
}

#[tonic::async_trait]
impl ToggleService for Handlers {
    /// The answer asked for, with a 3 MB explanation and 10,000 rules.
    async fn get_practice_feature(
        &self,
        req: Request<pb::GetPracticeFeatureRequest>,
    ) -> Result<Response<pb::PracticeFeature>, Status> {
        Ok(Response::new(pb::PracticeFeature {
            name: req.into_inner().name,
            state: pb::practice_feature::State::Enabled.into(),
            explanation: huge(3_000_000),
            rules: (0..10_000)
                .map(|i| pb::Rule {
                    command: format!("commands/{i}"),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }))
    }

    async fn batch_get_practice_features(
        &self,
        _: Request<pb::BatchGetPracticeFeaturesRequest>,
    ) -> Result<Response<pb::BatchGetPracticeFeaturesResponse>, Status> {
        Err(Status::unimplemented("not in this stub"))
    }

    /// Pages without end: one enabled practice with a 100 KB name each, and another page.
    async fn list_practice_features(
        &self,
        _: Request<pb::ListPracticeFeaturesRequest>,
    ) -> Result<Response<pb::ListPracticeFeaturesResponse>, Status> {
        Ok(Response::new(pb::ListPracticeFeaturesResponse {
            practice_features: vec![pb::PracticeFeature {
                name: huge(100_000),
                state: pb::practice_feature::State::Enabled.into(),
                ..Default::default()
            }],
            next_page_token: "more".into(),
            ..Default::default()
        }))
    }

    type WatchPracticeFeaturesStream = PracticeStream;

    async fn watch_practice_features(
        &self,
        _: Request<pb::WatchPracticeFeaturesRequest>,
    ) -> Result<Response<PracticeStream>, Status> {
        Err(Status::unimplemented("not in this stub"))
    }
}
