//! Helpers shared by the integration tests: servers started and stopped, mutual TLS clients,
//! command builders, throwaway PostgreSQL databases; `supplier` is a supplier under test and
//! `grpcurl` runs the real grpcurl.

pub mod grpcurl;
pub mod held;
pub mod pki;
pub mod process;
pub mod python;
pub mod supplier;

use std::{
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime},
};

use rollout_core::{Action, CommandId, FailMode, FeatureDef, FeatureKey, Scope};
use rollout_net::tls::{self, TlsFiles};
use rollout_proto::v1 as pb;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{Code, Status, transport::Channel};
use tonic_types::StatusExt;

/// The path of a workspace binary built next to this test binary. The README's test command
/// builds the binaries before the tests run.
#[track_caller]
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(Path::parent).expect("target directory");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the binaries first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// Runs the real `rolloutctl pki init --dir DIR` and returns DIR.
#[track_caller]
pub fn pki_init(parent: &Path) -> PathBuf {
    let dir = parent.join("pki");
    let out = Command::new(binary("rolloutctl"))
        .args(["pki", "init", "--dir"])
        .arg(&dir)
        .output()
        .expect("run rolloutctl");
    assert!(
        out.status.success(),
        "rolloutctl pki init failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// A mutual-TLS channel to `addr` that trusts the CA in `pki` but presents no client
/// certificate of its own.
pub fn channel_without_certificate(pki: &Path, addr: SocketAddr) -> Channel {
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(pki.join("ca.pem")).expect("ca");
    for cert in <rustls::pki_types::CertificateDer as rustls::pki_types::pem::PemObject>::pem_slice_iter(&ca)
    {
        roots.add(cert.expect("pem")).expect("add");
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    rollout_net::tls::channel(&format!("localhost:{}", addr.port()), config).expect("channel")
}

/// A lazily connecting mTLS channel to `addr` as the identity whose files are `name` in `pki`.
pub fn channel_as(pki: &Path, name: &str, addr: SocketAddr) -> Channel {
    let config = tls::client_config(&TlsFiles::from_pki_dir(pki, name), None).expect("client config");
    tls::channel(&format!("localhost:{}", addr.port()), config).expect("channel")
}

/// A `rollout-coordinator` command line every process test shares: mutual TLS from `pki`,
/// `policy` and `suppliers` files, the store at `database_url`, the synthetic estate, a 200 ms
/// heartbeat, listening on a free loopback port. Callers add `--health-listen` and anything
/// else their test needs.
pub fn coordinator_command(
    pki: &Path,
    policy: &Path,
    suppliers: &Path,
    database_url: &str,
) -> tokio::process::Command {
    let (practices, map) = reference_files();
    let mut command = tokio::process::Command::new(binary("rollout-coordinator"));
    command
        .args([
            "--listen",
            "127.0.0.1:0",
            "--heartbeat",
            "200ms",
            "--stale-after",
            "5s",
        ])
        .arg("--tls-ca")
        .arg(pki.join("ca.pem"))
        .arg("--tls-cert")
        .arg(pki.join("coordinator.pem"))
        .arg("--tls-key")
        .arg(pki.join("coordinator-key.pem"))
        .arg("--policy")
        .arg(policy)
        .arg("--suppliers")
        .arg(suppliers)
        .args(["--database-url", database_url])
        .arg("--practice-file")
        .arg(practices)
        .arg("--supplier-map")
        .arg(map)
        // Metrics off unless a test asks (`--metrics-listen` overrides it): processes of tests
        // running at once would all want the default port.
        .env("ROLLOUT_METRICS_LISTEN", "off");
    command
}

/// The repository's synthetic reference files.
pub fn reference_files() -> (PathBuf, PathBuf) {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data");
    (data.join("epraccur.csv"), data.join("gp-system-suppliers.csv"))
}

/// The national estate of the synthetic reference files.
pub fn reference_estate() -> rollout_core::Estate {
    let (practices, map) = reference_files();
    rollout_core::Estate::parse(
        rollout_core::Source {
            name: "epraccur.csv",
            bytes: &std::fs::read(&practices).expect("read the practice file"),
        },
        rollout_core::Source {
            name: "gp-system-suppliers.csv",
            bytes: &std::fs::read(&map).expect("read the supplier map"),
        },
    )
    .expect("estate")
}

/// The ErrorInfo reason of a status.
pub fn reason(status: &Status) -> String {
    status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

/// Asserts a status's code and ErrorInfo reason.
#[track_caller]
pub fn assert_refused(status: &Status, code: Code, reason_: &str, what: &str) {
    assert_eq!(
        (status.code(), reason(status).as_str()),
        (code, reason_),
        "{what}: {status:?}"
    );
}

/// A running server task and the means to stop it.
pub struct Running<E> {
    /// The mTLS address.
    pub addr: SocketAddr,
    /// The plaintext health address.
    pub health: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), E>>>,
}

impl<E: std::fmt::Debug> Running<E> {
    /// Binds both ports on loopback and runs `serve(listener, health_listener, shutdown)`.
    pub async fn start<F>(serve: impl FnOnce(TcpListener, TcpListener, oneshot::Receiver<()>) -> F) -> Self
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: Send + 'static,
    {
        Self::start_at("127.0.0.1:0".parse().expect("addr"), serve).await
    }

    /// As [`Running::start`], with the gRPC port at `addr` (to restart a server where its
    /// clients expect it).
    pub async fn start_at<F>(
        addr: SocketAddr,
        serve: impl FnOnce(TcpListener, TcpListener, oneshot::Receiver<()>) -> F,
    ) -> Self
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: Send + 'static,
    {
        // Server logs go to the test's captured output: shown only when a test fails.
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("info")
            .try_init();
        let listener = TcpListener::bind(addr).await.expect("bind");
        let health = TcpListener::bind("127.0.0.1:0").await.expect("bind health");
        let (addr, health_addr) = (
            listener.local_addr().expect("addr"),
            health.local_addr().expect("addr"),
        );
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(serve(listener, health, stopped));
        Running {
            addr,
            health: health_addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the server and waits for it to finish cleanly.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let result = tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .expect("server stops within 20 s")
                .expect("server task");
            result.expect("server ran and stopped cleanly");
        }
    }
}

/// The feature every test uses.
pub const FEATURE: &str = "prospective-record-access";

/// `features/prospective-record-access`.
pub fn feature_name() -> String {
    format!("features/{FEATURE}")
}

/// `practices/{ods}/features/prospective-record-access`.
pub fn practice_feature(ods: &str) -> String {
    format!("practices/{ods}/features/{FEATURE}")
}

fn key() -> FeatureKey {
    FeatureKey::parse(FEATURE).expect("feature key")
}

/// A coordinator command on the wire, as the coordinator would send it.
pub fn command(sequence: u64, id: &str, action: Action) -> pb::Command {
    rollout_net::wire::command_pb(&rollout_core::Command {
        id: CommandId::parse(id).expect("command id"),
        sequence,
        feature: key(),
        action,
        reason: format!("test command {id}"),
        requester: "spiffe://gprollout.test/operator/alice".into(),
        issued_at: SystemTime::now(),
        approved_by: vec![],
        redelivery_of: None,
        supplier: None,
    })
}

/// Defines the feature (fail-static unless `ttl` is given).
pub fn define(sequence: u64, ttl: Option<Duration>) -> pb::Command {
    command(
        sequence,
        &format!("define-{sequence}"),
        Action::CreateFeature(FeatureDef {
            key: key(),
            description: "automatic prospective online record access".into(),
            fail_mode: ttl.map_or(FailMode::Static, |ttl| FailMode::Closed { ttl }),
            approvals_required: 1,
        }),
    )
}

/// A halt.
pub fn halt(sequence: u64, id: &str, scope: Scope) -> pb::Command {
    command(sequence, id, Action::Halt { scope })
}

/// A go-live, at once or at `at`.
pub fn go_live(sequence: u64, id: &str, scope: Scope, at: Option<SystemTime>) -> pb::Command {
    command(
        sequence,
        id,
        Action::GoLive {
            scope,
            effective_at: at,
        },
    )
}

/// A resume of the named halts.
pub fn resume(sequence: u64, id: &str, halts: &[&str]) -> pb::Command {
    command(
        sequence,
        id,
        Action::Resume {
            halts: halts
                .iter()
                .map(|h| CommandId::parse(h).expect("halt id"))
                .collect(),
        },
    )
}

/// The history hash after the commands given, from the empty log.
pub fn history_of(commands: &[&pb::Command]) -> rollout_core::HistoryHash {
    commands.iter().fold(rollout_core::HistoryHash::EMPTY, |h, c| {
        let id = CommandId::parse(c.name.trim_start_matches("commands/")).expect("command id");
        h.next(u64::try_from(c.sequence).expect("sequence"), &id)
    })
}

/// A snapshot as one ReplaceRules stream: the header in the first chunk, then one command a
/// chunk, the last chunk marked.
pub fn snapshot(
    sequence: u64,
    hash: rollout_core::HistoryHash,
    base: (u64, rollout_core::HistoryHash),
    commands: Vec<pb::Command>,
) -> Vec<pb::ReplaceRulesRequest> {
    let header = pb::replace_rules_request::Header {
        sequence: sequence as i64,
        history_hash: hash.as_bytes().to_vec(),
        base_sequence: base.0 as i64,
        base_history_hash: base.1.as_bytes().to_vec(),
    };
    let mut chunks = vec![pb::ReplaceRulesRequest {
        header: Some(header),
        ..Default::default()
    }];
    chunks.extend(commands.into_iter().map(|c| pb::ReplaceRulesRequest {
        commands: vec![c],
        ..Default::default()
    }));
    if let Some(last) = chunks.last_mut() {
        last.last = true;
    }
    chunks
}

/// A scope listing practices.
pub fn practices(codes: &[&str]) -> Scope {
    Scope::practices(codes.iter().copied()).expect("practice scope")
}

/// A fresh PostgreSQL database for one test, created from `ROLLOUT_TEST_DATABASE_URL` and
/// dropped by [`PgDb::drop`], or, if the test panics first, when the value is dropped.
pub struct PgDb {
    /// The database's URL.
    pub url: String,
    admin: String,
    name: String,
    dropped: bool,
}

async fn drop_database(admin: &str, name: &str) -> Result<(), sqlx::Error> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(admin).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await?;
    conn.close().await.ok();
    Ok(())
}

/// A fresh PostgreSQL database, or `None` (with a note) when `ROLLOUT_TEST_DATABASE_URL` is not
/// set. In CI (`CI` set) a missing URL fails the test instead: the PostgreSQL suite must run.
pub async fn pg_database() -> Option<PgDb> {
    use sqlx::Connection;
    let admin = match std::env::var("ROLLOUT_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ if std::env::var_os("CI").is_some() => {
            panic!(
                "ROLLOUT_TEST_DATABASE_URL is not set: in CI the PostgreSQL suite must run (.ci/run sets it)"
            )
        }
        _ => {
            eprintln!(
                "PostgreSQL test not run: set ROLLOUT_TEST_DATABASE_URL (scripts/test.sh does when PostgreSQL is up)"
            );
            return None;
        }
    };
    let name = format!("gprollout_test_{:016x}", fastrand::u64(..));
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("connect to ROLLOUT_TEST_DATABASE_URL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create a test database");
    conn.close().await.ok();
    let (base, query) = admin
        .split_once('?')
        .map_or((admin.as_str(), None), |(b, q)| (b, Some(q)));
    let root = base.rsplit_once('/').map_or(base, |(r, _)| r);
    let url = match query {
        Some(q) => format!("{root}/{name}?{q}"),
        None => format!("{root}/{name}"),
    };
    Some(PgDb {
        url,
        admin,
        name,
        dropped: false,
    })
}

impl PgDb {
    /// A copy of the database as it is now (a backup), itself a fresh test database. No other
    /// connection may be open to this one while it is copied.
    pub async fn copy(&self) -> PgDb {
        use sqlx::Connection;
        let name = format!("gprollout_test_{:016x}", fastrand::u64(..));
        let mut conn = sqlx::PgConnection::connect(&self.admin)
            .await
            .expect("connect to ROLLOUT_TEST_DATABASE_URL");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE {name} TEMPLATE {}",
            self.name
        )))
        .execute(&mut conn)
        .await
        .expect("copy the test database");
        conn.close().await.ok();
        PgDb {
            url: self.url.replace(&self.name, &name),
            admin: self.admin.clone(),
            name,
            dropped: false,
        }
    }

    /// Drops the database (closing any connection still open to it).
    pub async fn drop(mut self) {
        drop_database(&self.admin, &self.name)
            .await
            .expect("drop the test database");
        self.dropped = true;
    }
}

impl Drop for PgDb {
    /// A test that panicked before [`PgDb::drop`] still leaves no database behind: it is dropped
    /// here, on a thread of its own (this one may be inside the test's runtime).
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime
                .block_on(drop_database(&admin, &name))
                .map_err(|e| e.to_string())
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}: {dropped:?}", self.name);
        }
    }
}
