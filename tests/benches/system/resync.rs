//! Part 5 through the coordinator: issuing the long history, waiting for every supplier, and
//! wiping and resynchronising one, timed from the servers' own events.

use super::*;

/// The events of the in-process servers that part 5 times a resynchronisation by: while
/// recording, every event at INFO or above of the coordinator's delivery tasks and of the
/// suppliers, and every new supplier span, with the time it happened.
pub(crate) mod events {
    use std::{
        sync::{
            Arc, Mutex,
            atomic::{AtomicBool, Ordering},
        },
        time::Instant,
    };

    use tracing::{
        Event, Level, Subscriber,
        field::{Field, Visit},
        span,
    };
    use tracing_subscriber::{Layer, filter::Targets, layer::Context, prelude::*};

    #[derive(Clone, Default)]
    pub struct Recorder {
        on: Arc<AtomicBool>,
        seen: Arc<Mutex<Vec<(Instant, String)>>>,
    }

    struct Message(String);

    impl Visit for Message {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                self.0 = format!("{value:?}");
            }
        }
    }

    impl<S: Subscriber> Layer<S> for Recorder {
        fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
            if self.on.load(Ordering::Relaxed) {
                let mut m = Message(String::new());
                event.record(&mut m);
                self.seen.lock().expect("events").push((Instant::now(), m.0));
            }
        }

        fn on_new_span(&self, attrs: &span::Attributes<'_>, _: &span::Id, _: Context<'_, S>) {
            if self.on.load(Ordering::Relaxed) {
                let name = format!("span {}", attrs.metadata().name());
                self.seen.lock().expect("events").push((Instant::now(), name));
            }
        }
    }

    impl Recorder {
        /// Installs the recorder as this process's subscriber (not recording yet).
        pub fn install() -> Self {
            let recorder = Recorder::default();
            let targets = Targets::new()
                .with_target("rollout_coordinator::delivery", Level::INFO)
                .with_target("rollout_supplier", Level::INFO);
            let _ = tracing_subscriber::registry()
                .with(recorder.clone().with_filter(targets))
                .try_init();
            recorder
        }

        /// Forgets what was seen and starts recording.
        pub fn start(&self) {
            self.seen.lock().expect("events").clear();
            self.on.store(true, Ordering::Relaxed);
        }

        pub fn stop(&self) {
            self.on.store(false, Ordering::Relaxed);
        }

        /// When the first event containing `text` was seen.
        pub fn first(&self, text: &str) -> Option<Instant> {
            self.seen
                .lock()
                .expect("events")
                .iter()
                .find(|(_, m)| m.contains(text))
                .map(|(t, _)| *t)
        }
    }
}

/// Issues the steps through the coordinator as the operators would: alice halts, resumes and
/// schedules go-lives, bob approves. Returns the last sequence dispatched.
pub(crate) async fn issue_history(
    alice: &mut CoordinatorServiceClient<Channel>,
    bob: &mut CoordinatorServiceClient<Channel>,
    steps: &[Step],
) -> i64 {
    let mut names: Vec<String> = Vec::with_capacity(steps.len());
    let feature = format!("features/{FEATURE}");
    for step in steps {
        let name = match step {
            Step::Halt(scope, reason) => {
                alice
                    .halt_feature(pb::HaltFeatureRequest {
                        name: feature.clone(),
                        scope: Some(rollout_net::wire::scope_pb(scope)),
                        reason: reason.clone(),
                        // Generated scopes may name codes or areas the estate lacks.
                        allow_unknown_practices: true,
                        allow_empty_scope: true,
                        ..Default::default()
                    })
                    .await
                    .expect("halt")
                    .into_inner()
                    .name
            }
            Step::Resume(halts, reason) => {
                let pending = alice
                    .resume_feature(pb::ResumeFeatureRequest {
                        name: feature.clone(),
                        halts: halts.iter().map(|h| names[*h].clone()).collect(),
                        reason: reason.clone(),
                        ..Default::default()
                    })
                    .await
                    .expect("resume")
                    .into_inner();
                approve(bob, &pending.name).await;
                pending.name
            }
            Step::GoLive(scope, reason) => {
                let pending = alice
                    .schedule_go_live(pb::ScheduleGoLiveRequest {
                        name: feature.clone(),
                        scope: Some(rollout_net::wire::scope_pb(scope)),
                        reason: reason.clone(),
                        // Generated scopes may name codes or areas the estate lacks.
                        allow_unknown_practices: true,
                        allow_empty_scope: true,
                        ..Default::default()
                    })
                    .await
                    .expect("go-live")
                    .into_inner();
                approve(bob, &pending.name).await;
                pending.name
            }
        };
        names.push(name);
    }
    target_sequence(alice).await
}

pub(crate) async fn approve(bob: &mut CoordinatorServiceClient<Channel>, name: &str) {
    bob.approve_command(pb::ApproveCommandRequest {
        name: name.into(),
        comment: "second person".into(),
        ..Default::default()
    })
    .await
    .expect("approve");
}

/// The last sequence the coordinator dispatched.
pub(crate) async fn target_sequence(c: &mut CoordinatorServiceClient<Channel>) -> i64 {
    c.list_suppliers(pb::ListSuppliersRequest::default())
        .await
        .expect("suppliers")
        .into_inner()
        .suppliers
        .iter()
        .map(|s| s.target_sequence)
        .max()
        .unwrap_or(0)
}

/// Waits until every supplier has applied `target`, by the coordinator's account.
pub(crate) async fn converged(c: &mut CoordinatorServiceClient<Channel>, target: i64) {
    let start = Instant::now();
    loop {
        let list = c
            .list_suppliers(pb::ListSuppliersRequest::default())
            .await
            .expect("suppliers")
            .into_inner();
        if list.suppliers.iter().all(|s| s.applied_sequence == target) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(3_600),
            "the suppliers did not converge on {target}: {:?}",
            list.suppliers
                .iter()
                .map(|s| (s.name.as_str(), s.applied_sequence, s.last_error.as_str()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The phases of one resynchronisation of a wiped supplier, each from its restart.
#[derive(Default, Clone, Copy)]
pub(crate) struct Resync {
    /// It answers (on an empty store).
    pub(crate) started: Duration,
    /// The coordinator found it had lost what it acknowledged.
    pub(crate) noticed: Duration,
    /// Its ReplaceRules handler was called.
    pub(crate) transfer: Duration,
    /// It committed the snapshot.
    pub(crate) installed: Duration,
    /// It answers at the target sequence.
    pub(crate) answered: Duration,
}

/// Stops a supplier, deletes its SQLite store (with its -wal and -shm files), starts it again
/// on its port, and times the phases until it answers at `target`.
pub(crate) async fn wipe_and_resync(
    s: &mut InProcess,
    pki: &Path,
    practice: &str,
    target: i64,
    events: &events::Recorder,
) -> Resync {
    s.stop().await;
    let db = s.database();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    events.start();
    let t = Instant::now();
    s.restart(pki).await;
    answer_at(pki, s.addr, practice, 0).await;
    let started = t.elapsed();
    answer_at(pki, s.addr, practice, target).await;
    let answered = t.elapsed();
    events.stop();
    let since = |text: &str| events.first(text).map_or(Duration::ZERO, |e| e.duration_since(t));
    Resync {
        started,
        noticed: since("resynchronising with a snapshot"),
        transfer: since("span replace_rules"),
        installed: since("snapshot installed"),
        answered,
    }
}

/// Bytes of a SQLite store with its -wal file.
pub(crate) fn store_bytes(db: &Path) -> u64 {
    ["", "-wal"]
        .iter()
        .filter_map(|suffix| std::fs::metadata(format!("{}{suffix}", db.display())).ok())
        .map(|m| m.len())
        .sum()
}

pub(crate) fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    percentile(&v, 0.5)
}

pub(crate) fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
