//! Several replicas on one PostgreSQL database.

use std::time::Duration;

use rollout_core::Scope;
use rollout_proto::v1::{self as pb, practice_feature::Reason as R, practice_feature::State as S};

use crate::support::{
    define, feature_name, go_live, halt, pg_database, practices,
    supplier::{EMIS_A, EMIS_B, apply, control, get, supplier_files, toggle},
};

#[tokio::test]
async fn a_halt_applied_through_one_supplier_replica_is_answered_by_another() {
    let Some(db) = pg_database().await else { return };
    rollout_net::tls::install_crypto_provider();
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = tmp.path().join("pki");
    rolloutctl::pki::init(&pki, false).expect("pki");
    let mut files = supplier_files(tmp.path(), &pki, "emis");
    files.database_url = Some(db.url.clone());
    let a = files.start(None).await;
    let b = files.start(None).await;

    let mut control_a = control(&files, &a);
    apply(&mut control_a, define(1, None)).await;
    apply(&mut control_a, go_live(2, "golive-1", Scope::National, None)).await;

    // A watcher on replica B.
    let mut backend_b = toggle(&files, "backend-emis", &b);
    let mut stream = backend_b
        .watch_practice_features(pb::WatchPracticeFeaturesRequest {
            feature: feature_name(),
            practices: vec![EMIS_A.into()],
            start_version: 0,
        })
        .await
        .expect("watch on B")
        .into_inner();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    // Until B has caught up with the go-live, its snapshot or first changes may show it off.
    loop {
        let Ok(msg) = tokio::time::timeout_at(deadline, stream.message()).await else {
            let answer = get(&mut toggle(&files, "backend-emis", &b), EMIS_A).await;
            panic!("B did not catch up within 30 s; B answers {answer:?}");
        };
        let msg = msg.expect("stream").expect("message");
        if msg.practice_features.iter().any(|p| p.state() == S::Enabled) {
            break;
        }
    }

    // The halt goes through A; B answers it and B's watcher receives it.
    apply(&mut control_a, halt(3, "halt-1", practices(&[EMIS_A]))).await;
    let change = loop {
        let msg = tokio::time::timeout_at(deadline, stream.message())
            .await
            .expect("the halt reaches B's watcher")
            .expect("stream")
            .expect("message");
        if let Some(p) = msg.practice_features.iter().find(|p| p.state() == S::Disabled) {
            break p.clone();
        }
    };
    assert_eq!(change.reason(), R::Halted);
    let answer = get(&mut backend_b, EMIS_A).await;
    assert_eq!(
        (answer.state(), answer.reason(), answer.applied_sequence),
        (S::Disabled, R::Halted, 3)
    );

    // ApplyCommand stays exactly-once across replicas: the same sequence through B answers as
    // A did, and the next one through B is seen by A.
    let mut control_b = control(&files, &b);
    let first = apply(&mut control_a, halt(3, "halt-1", practices(&[EMIS_A]))).await;
    let again = apply(&mut control_b, halt(3, "halt-1", practices(&[EMIS_A]))).await;
    assert_eq!(
        (again.applied_sequence, again.apply_time),
        (first.applied_sequence, first.apply_time)
    );
    apply(&mut control_b, halt(4, "halt-2", practices(&[EMIS_B]))).await;
    let mut backend_a = toggle(&files, "backend-emis", &a);
    loop {
        let on_a = get(&mut backend_a, EMIS_B).await;
        if (on_a.state(), on_a.applied_sequence) == (S::Disabled, 4) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "A sees what was applied through B: {on_a:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    drop(stream);
    a.stop().await;
    b.stop().await;
    db.drop().await;
}

/// A `rollout-coordinator` process whose log the test reads.
pub struct CoordinatorProcess {
    /// The process.
    pub child: tokio::process::Child,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl CoordinatorProcess {
    /// Starts a coordinator process for `stack` on `database_url`.
    pub fn start(stack: &crate::stack::Stack, database_url: &str) -> CoordinatorProcess {
        use tokio::io::AsyncBufReadExt;
        let (policy, suppliers) = stack.coordinator_files();
        let mut child = crate::support::coordinator_command(&stack.pki, &policy, &suppliers, database_url)
            .args(["--health-listen", "off"])
            .env("ROLLOUT_LOG_FORMAT", "plain")
            .env("ROLLOUT_LOG", "info")
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start rollout-coordinator");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut lines = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
        let sink = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut log = sink.lock().expect("log");
                log.push_str(&line);
                log.push('\n');
            }
        });
        CoordinatorProcess { child, log }
    }

    /// Waits until the log has a line containing `marker`; returns that line.
    pub async fn wait_for(&self, marker: &str, within: Duration) -> String {
        let end = tokio::time::Instant::now() + within;
        loop {
            if let Some(line) = self.log.lock().expect("log").lines().find(|l| l.contains(marker)) {
                return line.to_owned();
            }
            assert!(
                tokio::time::Instant::now() < end,
                "no {marker:?} in the log within {within:?}:\n{}",
                self.log.lock().expect("log")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The gRPC address from the "coordinator listening" line.
    pub async fn addr(&self) -> std::net::SocketAddr {
        let line = self
            .wait_for("coordinator listening", Duration::from_secs(30))
            .await;
        let start = line.find("127.0.0.1:").expect("address in the log line");
        let rest = &line[start..];
        let end = rest
            .find(|c: char| c != '.' && c != ':' && !c.is_ascii_digit())
            .unwrap_or(rest.len());
        rest[..end].parse().expect("socket address")
    }
}

#[tokio::test]
async fn the_delivery_leader_dies_mid_burst_and_another_replica_takes_over() {
    let Some(db) = pg_database().await else { return };
    let mut stack = crate::stack::Stack::suppliers(None).await;
    let a = CoordinatorProcess::start(&stack, &db.url);
    a.wait_for("delivery leader", Duration::from_secs(30)).await;
    let b = CoordinatorProcess::start(&stack, &db.url);
    stack.coordinator_addr = b.addr().await;
    crate::stack::feature_live(&stack).await;

    // A burst of halts through B; A, the delivery leader, is killed part way through.
    let mut alice = stack.client("alice");
    let codes: Vec<String> = stack
        .estate
        .practices()
        .filter(|p| p.status == rollout_core::PracticeStatus::Active)
        .take(40)
        .map(|p| p.ods.to_string())
        .collect();
    let mut last = 0;
    for (i, ods) in codes.iter().enumerate() {
        if i == 12 {
            let pid = a.child.id().expect("pid");
            let killed = tokio::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()
                .await
                .expect("kill");
            assert!(killed.success());
        }
        let h = alice
            .halt_feature(pb::HaltFeatureRequest {
                name: feature_name(),
                scope: Some(pb::Scope {
                    target: Some(pb::scope::Target::Practices(pb::scope::PracticeList {
                        practices: vec![ods.clone()],
                    })),
                }),
                reason: format!("burst {i}"),
                request_id: String::new(),
                dry_run: false,
                ..Default::default()
            })
            .await
            .expect("halt through B")
            .into_inner();
        // The feature and its go-live took sequences 1 and 2.
        assert_eq!(
            h.sequence,
            3 + i as i64,
            "sequences are gap-free, whoever delivers"
        );
        last = h.sequence;
    }
    b.wait_for("delivery leader", Duration::from_secs(30)).await;

    // Every supplier ends with every command applied, in order.
    let viewer = stack.client("viewer");
    let end = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let list = viewer
            .clone()
            .list_suppliers(pb::ListSuppliersRequest::default())
            .await
            .expect("suppliers")
            .into_inner();
        if list.suppliers.iter().all(|s| s.applied_sequence == last) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "every supplier applies every command: {:?}",
            list.suppliers
                .iter()
                .map(|s| (s.name.clone(), s.applied_sequence))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut b = b;
    let _ = b.child.start_kill();
    for id in crate::stack::SUPPLIERS {
        stack.stop_supplier(id).await;
        let db_path = stack.suppliers[id].0.database.clone();
        let store =
            rollout_store::supplier::SqlSupplierStore::open(&format!("sqlite://{}", db_path.display()))
                .await
                .expect("open");
        let state = rollout_store::supplier::SupplierStore::load(&store)
            .await
            .expect("load");
        let sequences: Vec<u64> = state.commands.iter().map(|c| c.sequence).collect();
        assert_eq!(
            sequences,
            (1..=u64::try_from(last).expect("positive")).collect::<Vec<_>>(),
            "{id}: every command, once, in order"
        );
        let events = rollout_store::supplier::SupplierStore::list_audit(&store, 0, 10_000)
            .await
            .expect("audit");
        let applies = events
            .iter()
            .filter(|e| {
                e.draft.action.ends_with("/ApplyCommand")
                    && e.draft.outcome == rollout_core::audit::AuditOutcome::Accepted
            })
            .count();
        assert_eq!(applies as i64, last, "{id}: each command applied exactly once");
        store.close().await;
    }
    db.drop().await;
}
