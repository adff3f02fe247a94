//! The task behind one WatchPracticeFeatures stream.

use super::*;

/// One watch stream's task.
pub(super) struct Watcher {
    pub(super) engine: Arc<Engine>,
    pub(super) feature: FeatureKey,
    pub(super) filter: Option<Arc<HashSet<OdsCode>>>,
    pub(super) tx: mpsc::Sender<Result<pb::WatchPracticeFeaturesResponse, Status>>,
    /// One of the caller's watch slots, given back when the task ends (the stream closed).
    pub(super) _slot: IdentitySlot,
}

impl Watcher {
    fn message(
        &self,
        event: pb::watch_practice_features_response::EventType,
        version: u64,
        answers: &[Answer],
        cause: &str,
    ) -> pb::WatchPracticeFeaturesResponse {
        let version = version_i64(version);
        pb::WatchPracticeFeaturesResponse {
            event_type: event.into(),
            version,
            practice_features: answers
                .iter()
                .filter(|(ods, ..)| self.filter.as_ref().is_none_or(|f| f.contains(ods)))
                .map(|(ods, state, reason)| pb::PracticeFeature {
                    name: wire::practice_feature_resource(ods, &self.feature),
                    state: wire::state_pb(*state).into(),
                    reason: wire::reason_pb(*reason).into(),
                    version,
                    ..Default::default()
                })
                .collect(),
            cause: cause.to_owned(),
        }
    }

    /// Sends the snapshot of `s`; returns its version, or `None` if the client has gone.
    async fn snapshot(&self, s: &Serving) -> Option<u64> {
        use pb::watch_practice_features_response::EventType;
        let unknown: Vec<Answer>;
        let answers = match s.answers.get(&self.feature) {
            Some(a) => a.as_slice(),
            None => {
                unknown = s
                    .estate
                    .practices()
                    .map(|p| (p.ods, State::Unknown, Reason::NeverSynchronised))
                    .collect();
                &unknown
            }
        };
        let selected: Vec<Answer> = answers
            .iter()
            .filter(|(ods, ..)| self.filter.as_ref().is_none_or(|f| f.contains(ods)))
            .copied()
            .collect();
        for chunk in selected.chunks(SNAPSHOT_CHUNK) {
            self.tx
                .send(Ok(self.message(
                    EventType::Snapshot,
                    s.version,
                    chunk,
                    "snapshot",
                )))
                .await
                .ok()?;
        }
        self.tx
            .send(Ok(self.message(
                EventType::SnapshotComplete,
                s.version,
                &[],
                "snapshot complete",
            )))
            .await
            .ok()?;
        Some(s.version)
    }

    /// Sends a change batch if it concerns this watcher; `None` if the client has gone.
    async fn change(&self, batch: &ChangeBatch) -> Option<()> {
        // A watcher of fewer practices than the batch holds looks its own up in the batch's
        // index rather than scanning the whole batch.
        let picked: Vec<Answer>;
        let answers = match &self.filter {
            Some(filter) if filter.len() < batch.changes.len() => {
                let mut mine: Vec<Answer> = filter
                    .iter()
                    .filter_map(|ods| batch.index.get(ods).map(|&i| batch.changes[i]))
                    .collect();
                mine.sort_by_key(|(ods, ..)| *ods);
                picked = mine;
                picked.as_slice()
            }
            _ => batch.changes.as_slice(),
        };
        let msg = self.message(
            pb::watch_practice_features_response::EventType::Change,
            batch.version,
            answers,
            &batch.cause,
        );
        if !msg.practice_features.is_empty() {
            self.tx.send(Ok(msg)).await.ok()?;
        }
        Some(())
    }

    pub(super) async fn run(self, start_version: u64, mut shutdown: watch::Receiver<bool>) {
        let (mut rx, start) = self.engine.subscribe(start_version);
        // The last version of this feature the client has seen in full.
        let mut seen = match start {
            WatchStart::Resume(backlog) => {
                let mut seen = start_version;
                for batch in backlog.iter().filter(|b| b.feature == self.feature) {
                    if self.change(batch).await.is_none() {
                        return;
                    }
                    seen = batch.version;
                }
                seen
            }
            WatchStart::Snapshot(s) => match self.snapshot(&s).await {
                Some(v) => v,
                None => return,
            },
        };
        loop {
            tokio::select! {
                _ = async { shutdown.wait_for(|stop| *stop).await.map(|_| ()) } => {
                    // Shutting down (or the server is gone): tell the client where to resume.
                    let status = ApiError::unavailable(
                        "SHUTTING_DOWN",
                        format!("the server is shutting down; reconnect and resume from version {seen}"),
                    )
                    .with_metadata("version", seen.to_string());
                    let _ = self.tx.send(Err(status.into())).await;
                    return;
                }
                _ = self.tx.closed() => return,
                received = rx.recv() => match received {
                    Ok(batch) if batch.feature == self.feature && batch.version > seen => {
                        if self.change(&batch).await.is_none() {
                            return;
                        }
                        seen = batch.version;
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, feature = %self.feature, "watcher fell behind; sending a fresh snapshot");
                        self.engine.recorded.watcher_lagged();
                        match self.snapshot(&self.engine.current()).await {
                            Some(v) => seen = v,
                            None => return,
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }
}
