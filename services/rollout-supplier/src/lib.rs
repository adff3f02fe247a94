//! The supplier service (`rollout-supplier`), run by each GP IT supplier: per-practice toggle
//! state over gRPC for the supplier's backends, explained answers, watch streams, practice
//! opt-outs, and the coordinator's commands applied durably and in order.
//!
//! - [`Config`] / [`Args`]: typed configuration (flags with environment variables).
//! - [`serve`]: runs the service on an already-bound listener until a shutdown future resolves.
//! - `engine`: the serving state and its one write path; `service`: the gRPC handlers.

mod engine;
mod fanout;
mod metrics;
mod service;
mod snapshot;

use std::{
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use clap::Parser;
use rollout_core::{
    Estate, SupplierId,
    audit::{AuditDraft, AuditOutcome},
};
use rollout_net::{
    Access, AccessTable, Admission, AuthLayer, ConnectionBudget, Drain, MessageLimits, PolicyFile, Role,
    cli::{ConnectionArgs, LogArgs, ShutdownArgs, TlsArgs, TraceArgs},
    metrics::Metrics,
    server::Listeners,
    tls::{self, ReloadingServerConfig, TlsFiles},
};
use rollout_proto::flagd::evaluation::{
    v1::service_server::ServiceServer as FlagdV1Server, v2::service_server::ServiceServer as FlagdV2Server,
};
use rollout_proto::v1::{
    audit_service_server::AuditServiceServer, control_service_server::ControlServiceServer,
    practice_settings_service_server::PracticeSettingsServiceServer,
    toggle_service_server::ToggleServiceServer,
};
use rollout_store::supplier::SqlSupplierStore;
use tokio::sync::watch;
use tracing::{info, warn};

pub use engine::Engine;

/// The supplier service of GP Rollout Control: per-practice feature state for the supplier's
/// backends, practice opt-outs, and the coordinator's commands, over mutual TLS.
#[derive(Debug, Clone, Parser)]
#[command(name = "rollout-supplier", version, about, long_about = None)]
pub struct Args {
    /// This supplier's id, a lower-case slug (emis, tpp, cegedim, microtest).
    #[arg(long, env = "ROLLOUT_SUPPLIER_ID")]
    pub supplier_id: String,
    /// Address of the mutual-TLS gRPC port.
    #[arg(long, env = "ROLLOUT_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: SocketAddr,
    /// Address of the plaintext health port for probes (health only; keep it on loopback or a
    /// pod network). Set to `off` to disable.
    #[arg(long, env = "ROLLOUT_HEALTH_LISTEN", default_value = "127.0.0.1:50061")]
    pub health_listen: String,
    /// Address of the plaintext Prometheus metrics port (`GET /metrics`; keep it on loopback or
    /// a pod network: it needs no certificate). Set to `off` to disable.
    #[arg(long, env = "ROLLOUT_METRICS_LISTEN", default_value = "127.0.0.1:9461")]
    pub metrics_listen: String,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Role policy (TOML): which client identities hold which roles. Roles used here:
    /// backend (ToggleService), practice-admin (PracticeSettingsService), coordinator
    /// (ControlService, and ToggleService reads).
    #[arg(long, env = "ROLLOUT_POLICY", value_name = "TOML")]
    pub policy: PathBuf,
    /// Database URL: `sqlite://PATH` (created if missing; one process per file).
    #[arg(
        long,
        env = "ROLLOUT_DATABASE_URL",
        default_value = "sqlite://rollout-supplier.db"
    )]
    pub database_url: String,
    /// National GP practice file (epraccur format) to import at start, with --supplier-map.
    /// Only this supplier's practices are kept; re-importing updates attributes and keeps
    /// opt-outs and history. Practices new to an estate already imported (moved from another
    /// supplier) are held off until the coordinator has sent the national opt-out register's
    /// records for them.
    #[arg(
        long,
        env = "ROLLOUT_PRACTICE_FILE",
        requires = "supplier_map",
        value_name = "CSV"
    )]
    pub practice_file: Option<PathBuf>,
    /// Practice-to-supplier map (`ods_code,supplier`) for --practice-file.
    #[arg(
        long,
        env = "ROLLOUT_SUPPLIER_MAP",
        requires = "practice_file",
        value_name = "CSV"
    )]
    pub supplier_map: Option<PathBuf>,
    /// Declare a change freeze with this reason: go-lives and resumes from the coordinator are
    /// rejected (and shown there as conflicts); halts are always applied.
    #[arg(long, env = "ROLLOUT_FREEZE_REASON", value_name = "REASON")]
    pub freeze_reason: Option<String>,
    #[command(flatten)]
    pub connections: ConnectionArgs,
    /// Most watch streams (WatchPracticeFeatures and flagd EventStream) one identity may have
    /// open at once on this replica (a backend fleet sharing one certificate shares this). One
    /// more is answered RESOURCE_EXHAUSTED (TOO_MANY_WATCH_STREAMS).
    #[arg(
        long,
        env = "ROLLOUT_MAX_WATCHES_PER_IDENTITY",
        default_value_t = Budgets::DEFAULT.watches_per_identity as u32,
        value_parser = clap::value_parser!(u32).range(1..),
        value_name = "N"
    )]
    pub max_watches_per_identity: u32,
    #[command(flatten)]
    pub shutdown: ShutdownArgs,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub trace: TraceArgs,
}

/// How much of the supplier service one peer may hold (docs/RELIABILITY.md, "Budgets").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budgets {
    /// Connections, handshakes and streams per connection of the mutual-TLS port.
    pub connection: ConnectionBudget,
    /// Watch streams (WatchPracticeFeatures and flagd EventStream) open at once per identity.
    pub watches_per_identity: usize,
}

impl Budgets {
    /// The defaults of the flags: 10,000 watch streams per identity is the fan-out the
    /// benchmark measures (docs/PERFORMANCE.md, about 13 KiB a stream).
    pub const DEFAULT: Budgets = Budgets {
        connection: ConnectionBudget::DEFAULT,
        watches_per_identity: 10_000,
    };
}

impl Default for Budgets {
    fn default() -> Self {
        Budgets::DEFAULT
    }
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// This supplier.
    pub supplier: SupplierId,
    /// TLS files of the gRPC port.
    pub tls: TlsFiles,
    /// The role policy file.
    pub policy: PathBuf,
    /// Database URL.
    pub database_url: String,
    /// Reference files to import at start: (practice file, supplier map).
    pub estate: Option<(PathBuf, PathBuf)>,
    /// The change-freeze reason, if frozen.
    pub freeze_reason: Option<String>,
    /// How long shutdown may take, from the signal to the exit.
    pub shutdown_grace: Duration,
    /// What one peer may hold.
    pub budgets: Budgets,
}

/// A configuration or start-up error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is invalid.
    #[error("invalid setting {setting}: {message}")]
    Setting {
        /// The flag.
        setting: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The TLS files are not usable.
    #[error(transparent)]
    Tls(#[from] rollout_net::TlsError),
    /// The role policy is not usable.
    #[error(transparent)]
    Policy(#[from] rollout_net::auth::PolicyError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] rollout_store::StoreError),
    /// The stored state could not be rebuilt.
    #[error(transparent)]
    Load(#[from] engine::LoadError),
    /// A reference file could not be read or parsed.
    #[error("estate import failed: {0}")]
    Estate(String),
    /// The gRPC server failed.
    #[error("server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Reflection could not be set up.
    #[error("reflection set-up failed: {0}")]
    Reflection(#[from] rollout_net::server::ReflectionError),
}

impl TryFrom<Args> for Config {
    type Error = Error;

    fn try_from(a: Args) -> Result<Self, Error> {
        let supplier = SupplierId::parse(&a.supplier_id).map_err(|e| Error::Setting {
            setting: "--supplier-id",
            message: e.to_string(),
        })?;
        if let Some(r) = &a.freeze_reason
            && r.trim().is_empty()
        {
            return Err(Error::Setting {
                setting: "--freeze-reason",
                message: "give the reason for the freeze, or leave the setting out".into(),
            });
        }
        Ok(Config {
            supplier,
            tls: a.tls.into(),
            policy: a.policy,
            database_url: a.database_url,
            estate: a.practice_file.zip(a.supplier_map),
            freeze_reason: a.freeze_reason,
            shutdown_grace: a.shutdown.shutdown_grace,
            budgets: Budgets {
                connection: a.connections.into(),
                watches_per_identity: usize::try_from(a.max_watches_per_identity).unwrap_or(usize::MAX),
            },
        })
    }
}

/// Who may call what on the supplier.
pub fn access_table() -> AccessTable {
    static BACKEND: &[Role] = &[Role::Backend, Role::Coordinator];
    static ADMIN: &[Role] = &[Role::PracticeAdmin];
    static COORDINATOR: &[Role] = &[Role::Coordinator];
    static AUDITOR: &[Role] = &[Role::Coordinator, Role::Auditor];
    static FLAGD: &[Role] = &[Role::Backend];
    AccessTable::new()
        .allow("/nhs.gprollout.v1.ToggleService/", Access::AnyOf(BACKEND))
        .allow("/nhs.gprollout.v1.PracticeSettingsService/", Access::AnyOf(ADMIN))
        .allow("/nhs.gprollout.v1.ControlService/", Access::AnyOf(COORDINATOR))
        .allow("/nhs.gprollout.v1.AuditService/", Access::AnyOf(AUDITOR))
        // The OpenFeature flagd evaluation protocol: backends only (docs/OPENFEATURE.md).
        .allow("/flagd.evaluation.v1.Service/", Access::AnyOf(FLAGD))
        .allow("/flagd.evaluation.v2.Service/", Access::AnyOf(FLAGD))
}

/// Reads the reference files and keeps this supplier's practices.
pub fn read_estate(practices: &Path, suppliers: &Path, supplier: &SupplierId) -> Result<Estate, Error> {
    Ok(rollout_store::reference::read_estate(practices, suppliers)
        .map_err(Error::Estate)?
        .for_supplier(supplier))
}

/// The supplier's services, named as health reports them.
const SERVICES: [&str; 6] = [
    "nhs.gprollout.v1.ToggleService",
    "nhs.gprollout.v1.PracticeSettingsService",
    "nhs.gprollout.v1.ControlService",
    "nhs.gprollout.v1.AuditService",
    "flagd.evaluation.v1.Service",
    "flagd.evaluation.v2.Service",
];

/// Opens the store, loads the engine from it and imports the estate if configured.
async fn open(config: &Config) -> Result<(Arc<Engine>, SqlSupplierStore), Error> {
    let store = SqlSupplierStore::open(&config.database_url).await?;
    let store_handle = store.clone();
    let engine = Engine::load(
        Arc::new(store),
        config.supplier.clone(),
        config.freeze_reason.clone(),
    )
    .await?;
    if let Some((practices, suppliers)) = &config.estate {
        let estate = read_estate(practices, suppliers, &config.supplier)?;
        let audit = AuditDraft {
            identity: "local".into(),
            action: "import-estate".into(),
            target: format!("suppliers/{}", config.supplier),
            outcome: AuditOutcome::Accepted,
            reason: format!("{} and {}", practices.display(), suppliers.display()),
            request_id: String::new(),
            ..rollout_core::audit::AuditDraft::default()
        };
        // Replicas starting together may race to import the same files: the loser reloads
        // and finds nothing left to change.
        let mut attempt = 0;
        let change = loop {
            attempt += 1;
            match engine
                .import_estate(estate.practices().cloned().collect(), audit.clone())
                .await
            {
                Ok(change) => break change,
                Err(e) if e.code() == tonic::Code::Aborted && attempt < 3 => continue,
                Err(e) => return Err(Error::Estate(e.to_string())),
            }
        };
        info!(
            practices = estate.len(),
            added = change.added,
            updated = change.updated,
            removed = change.removed,
            "estate imported"
        );
    }
    if engine.current().estate.is_empty() {
        warn!("the estate is empty: import the practice file with --practice-file and --supplier-map");
    }
    if let Some(reason) = &config.freeze_reason {
        warn!(
            reason,
            "change freeze declared: go-lives and resumes will be rejected"
        );
    }
    Ok((engine, store_handle))
}

/// Starts what runs beside the server until `stop`: the clock task and, on a shared
/// (PostgreSQL) store, the follower of the other replicas' writes.
async fn background(
    engine: &Arc<Engine>,
    store: &SqlSupplierStore,
    stop: &watch::Receiver<bool>,
) -> Result<(), Error> {
    // Follow what the other replicas write: at once on their notification, and every 2 s in
    // case a notification was missed.
    if let Some(feed) = store.changes().await? {
        let follower = engine.clone();
        tokio::spawn(feed.follow(stop.clone(), move || {
            let follower = follower.clone();
            async move { follower.follow_store().await }
        }));
        info!("shared store: following changes made through other replicas");
    }
    let clock_engine = engine.clone();
    let mut clock_stop = stop.clone();
    tokio::spawn(async move {
        loop {
            let wait = clock_engine
                .next_boundary()
                .and_then(|t| t.duration_since(std::time::SystemTime::now()).ok())
                .unwrap_or(Duration::from_secs(5))
                .min(Duration::from_secs(5));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = clock_engine.clock.notified() => {}
                _ = clock_stop.changed() => return,
            }
            clock_engine.refresh().await;
        }
    });
    Ok(())
}

/// Runs the supplier service on `listeners` (mutual TLS, and the plaintext health and metrics
/// ports that are on) until `shutdown` resolves; then, within the grace period, sets health
/// NOT_SERVING, stops accepting, ends every stream with UNAVAILABLE (watch streams with the
/// version to resume from), lets calls in flight finish, writes the queued refusals to the
/// audit log and closes the store.
pub async fn serve(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let drain = Drain::new(config.shutdown_grace);
    let policy = PolicyFile::load(&config.policy)?;
    let tls = ReloadingServerConfig::load(config.tls.clone())?;
    let (engine, store_handle) = open(&config).await?;
    let audit_store = engine.store().clone();
    let (refusals, audit) = rollout_net::audit_refusals(move |draft| {
        let store = audit_store.clone();
        async move {
            store
                .append_audit(draft)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    });
    let auth =
        AuthLayer::new(policy.policy(), access_table(), Some(refusals.observer())).with_trust(tls.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    // The server's own certificate files are re-read by its acceptor; the policy by this loop.
    tokio::spawn(tls::every_reload_check(stop_rx.clone(), move || {
        policy.reload_if_changed();
    }));
    background(&engine, &store_handle, &stop_rx).await?;

    let admission = Admission::new(config.budgets.connection);
    let metrics = listeners.metrics.map(|l| {
        let mut m = Metrics::new("supplier", &[rollout_proto::FILE_DESCRIPTOR_SET]);
        m.observe_admission(&admission);
        m.observe_refusals(&refusals);
        let store = engine.store().clone();
        m.observe_audit_chain(move || {
            let store = store.clone();
            async move { store.audit_head().await.ok() }
        });
        m.registry()
            .register_collector(Box::new(metrics::SupplierCollector(engine.clone())));
        (l, m)
    });
    let handlers = service::Handlers::new(
        engine.clone(),
        stop_rx.clone(),
        config.budgets.watches_per_identity,
        refusals,
    )
    .with_tls_warnings(tls::TlsWarnings::new(tls.clone(), None));
    let (reporter, health) = rollout_net::server::health();
    let (reflect_v1, reflect_v1alpha) = rollout_net::server::reflection(&SERVICES)?;
    for name in SERVICES {
        reporter
            .set_service_status(name, tonic_health::ServingStatus::Serving)
            .await;
    }
    let addr = listeners.grpc.local_addr().ok();
    let health_addr = listeners.health.as_ref().and_then(|l| l.local_addr().ok());
    info!(supplier = %config.supplier, addr = ?addr, health = ?health_addr, grace = ?config.shutdown_grace, "supplier service listening");

    let main = rollout_net::server::builder_for(&admission, metrics.as_ref().map(|(_, m)| m.rpc()))
        .layer(auth)
        .layer(drain.layer())
        .add_service(health.clone())
        .add_service(reflect_v1)
        .add_service(reflect_v1alpha)
        .add_service(ToggleServiceServer::new(handlers.clone()).with_message_limits())
        .add_service(PracticeSettingsServiceServer::new(handlers.clone()).with_message_limits())
        .add_service(ControlServiceServer::new(handlers.clone()).with_message_limits())
        .add_service(AuditServiceServer::new(handlers.clone()).with_message_limits())
        .add_service(FlagdV1Server::new(handlers.clone()).with_message_limits())
        .add_service(FlagdV2Server::new(handlers).with_message_limits())
        .serve_with_incoming_shutdown(tls::incoming_for(listeners.grpc, tls, &admission), drain.begun());
    let plaintext = rollout_net::server::serve_plaintext(listeners.health, health.clone(), metrics, &drain);
    let servers = async { tokio::join!(main, plaintext).0 };
    let stopping = async {
        rollout_net::server::set_not_serving(&reporter, &SERVICES).await;
        // The watch streams end themselves, with the version to resume from.
        let _ = stop_tx.send(true);
    };
    let result = drain.serve(servers, shutdown, stopping).await;
    // Every refusal queued while serving is in the audit log before the store closes.
    let audit = audit.flush(drain.deadline()).await;
    drain
        .until_deadline("closing the store", store_handle.close())
        .await;
    drain.log_stopped("supplier service", audit);
    result.map_err(Error::from)
}
