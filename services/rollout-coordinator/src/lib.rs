//! The coordinator service (`rollout-coordinator`), run by NHS England: halt, resume and go-live
//! commands with approvals, a durable global sequence, one delivery task per supplier over
//! mutual TLS, sync status, verification and audit.
//!
//! - [`Args`] / [`Config`]: typed configuration; the suppliers come from a TOML file.
//! - [`serve`]: runs the service on an already-bound listener until a shutdown future resolves.
//! - `coordinator`: the write path over the model (`model`, which holds the state, not the
//!   history); `history`: the log read from the store; `snapshot`: a supplier's effective
//!   state; `delivery`: the per-supplier tasks; `register`: the national opt-out register kept
//!   by them; `service`: the gRPC handlers.

mod answers;
mod change;
mod commit;
mod conflicts;
mod coordinator;
mod delivery;
mod failure;
mod four_eyes;
mod gap;
mod history;
mod impact;
mod in_force;
mod leader;
#[cfg(test)]
mod measure;
mod metrics;
mod model;
mod preview;
mod recovery;
mod redeliver;
mod register;
mod rejections;
mod scope_check;
mod service;
mod snapshot;
mod state_watch;
mod supervise;
mod sync;
#[cfg(test)]
mod tests;
mod traces;
mod upgrade;
mod verification;
pub mod web;

use std::{
    collections::BTreeMap,
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use clap::Parser;
use rollout_core::SupplierId;
use rollout_net::{
    Access, AccessTable, Admission, AuthLayer, ConnectionBudget, Drain, Identity, MessageLimits, PolicyFile,
    Role,
    cli::{ConnectionArgs, LogArgs, ShutdownArgs, TlsArgs, TraceArgs},
    metrics::Metrics,
    server::Listeners,
    tls::{self, ClientTrust, ReloadingServerConfig, TlsFiles},
};
use rollout_proto::v1::coordinator_service_server::CoordinatorServiceServer;
use rollout_store::coordinator::SqlCoordinatorStore;
use serde::Deserialize;
use tokio::sync::watch;
use tracing::info;

pub use crate::coordinator::SupplierEndpoint;

/// The coordinator service of GP Rollout Control: halts, resumes and go-lives pushed to every
/// supplier over mutual TLS, with approvals, delivery tracking, verification and audit.
#[derive(Debug, Clone, Parser)]
#[command(name = "rollout-coordinator", version, about, long_about = None)]
pub struct Args {
    /// Address of the mutual-TLS gRPC port.
    #[arg(long, env = "ROLLOUT_LISTEN", default_value = "0.0.0.0:50050")]
    pub listen: SocketAddr,
    /// Address of the plaintext health port for probes (health only). `off` disables it.
    #[arg(long, env = "ROLLOUT_HEALTH_LISTEN", default_value = "127.0.0.1:50060")]
    pub health_listen: String,
    /// Address of the plaintext Prometheus metrics port (`GET /metrics`; keep it on loopback or
    /// a pod network: it needs no certificate). `off` disables it.
    #[arg(long, env = "ROLLOUT_METRICS_LISTEN", default_value = "127.0.0.1:9460")]
    pub metrics_listen: String,
    /// Address of the status page's HTTPS port (read-only, for browsers): the same
    /// certificate, CA bundle, CRLs and role policy as the gRPC port; roles viewer and above,
    /// the audit view auditor. `off` (the default) disables it.
    #[arg(long, env = "ROLLOUT_WEB_LISTEN", default_value = "off")]
    pub web_listen: String,
    /// The server's TLS files. The same certificate is the coordinator's client certificate
    /// towards the suppliers.
    #[command(flatten)]
    pub tls: TlsArgs,
    /// CA bundle that suppliers' server certificates must chain to (default: --tls-ca).
    /// Re-read when it changes, like every certificate file.
    #[arg(long, env = "ROLLOUT_SUPPLIER_CA", value_name = "PEM")]
    pub supplier_ca: Option<PathBuf>,
    /// CRLs (PEM, comma-separated) that suppliers' server certificates are checked against; a
    /// supplier whose CA has no CRL here is not checked for revocation. Re-read when they
    /// change. None by default.
    #[arg(long, env = "ROLLOUT_SUPPLIER_CRL", value_name = "PEM", value_delimiter = ',')]
    pub supplier_crl: Vec<PathBuf>,
    /// Role policy (TOML). Roles used here: operator (create features, halt, resume, go-live,
    /// redeliver, cancel), approver (approve, cancel), auditor (audit log), viewer (read).
    #[arg(long, env = "ROLLOUT_POLICY", value_name = "TOML")]
    pub policy: PathBuf,
    /// The suppliers (TOML): `[[supplier]]` tables with `id`, `endpoint` (host:port) and
    /// `identity` (the URI or DNS SAN their server certificate must carry).
    #[arg(long, env = "ROLLOUT_SUPPLIERS", value_name = "TOML")]
    pub suppliers: PathBuf,
    /// Database URL: `sqlite://PATH` (created if missing; one process per file).
    #[arg(
        long,
        env = "ROLLOUT_DATABASE_URL",
        default_value = "sqlite://rollout-coordinator.db"
    )]
    pub database_url: String,
    /// National GP practice file (epraccur format): dry runs, routing GetPracticeStatus and
    /// verification use it.
    #[arg(long, env = "ROLLOUT_PRACTICE_FILE", value_name = "CSV")]
    pub practice_file: PathBuf,
    /// Practice-to-supplier map (`ods_code,supplier`).
    #[arg(long, env = "ROLLOUT_SUPPLIER_MAP", value_name = "CSV")]
    pub supplier_map: PathBuf,
    /// How often each supplier is sent a heartbeat (GetSyncState). Keep it well under the
    /// shortest control TTL of any fail-closed feature.
    #[arg(long, env = "ROLLOUT_HEARTBEAT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub heartbeat: Duration,
    /// A supplier not heard from for this long is shown as STALE.
    #[arg(long, env = "ROLLOUT_STALE_AFTER", default_value = "30s", value_parser = humantime::parse_duration)]
    pub stale_after: Duration,
    #[command(flatten)]
    pub connections: ConnectionArgs,
    /// Most WatchCommand streams one identity may have open at once on this replica. One more
    /// is answered RESOURCE_EXHAUSTED (TOO_MANY_WATCH_STREAMS).
    #[arg(
        long,
        env = "ROLLOUT_MAX_WATCHES_PER_IDENTITY",
        default_value_t = Budgets::DEFAULT.watches_per_identity as u32,
        value_parser = clap::value_parser!(u32).range(1..),
        value_name = "N"
    )]
    pub max_watches_per_identity: u32,
    /// Most VerifyCommand calls one identity may have in flight at once on this replica (each
    /// pages every supplier's enabled practices). One more is answered RESOURCE_EXHAUSTED
    /// (TOO_MANY_CONCURRENT_CALLS).
    #[arg(
        long,
        env = "ROLLOUT_MAX_VERIFIES_PER_IDENTITY",
        default_value_t = Budgets::DEFAULT.verifies_per_identity as u32,
        value_parser = clap::value_parser!(u32).range(1..),
        value_name = "N"
    )]
    pub max_verifies_per_identity: u32,
    #[command(flatten)]
    pub shutdown: ShutdownArgs,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub trace: TraceArgs,
}

/// The suppliers file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SuppliersFile {
    supplier: Vec<SupplierEntry>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SupplierEntry {
    id: String,
    endpoint: String,
    identity: String,
}

/// How much of the coordinator one peer may hold (docs/RELIABILITY.md, "Budgets").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budgets {
    /// Connections, handshakes and streams per connection of the mutual-TLS port.
    pub connection: ConnectionBudget,
    /// WatchCommand streams open at once per identity.
    pub watches_per_identity: usize,
    /// VerifyCommand calls in flight at once per identity.
    pub verifies_per_identity: usize,
}

impl Budgets {
    /// The defaults of the flags.
    pub const DEFAULT: Budgets = Budgets {
        connection: ConnectionBudget::DEFAULT,
        watches_per_identity: 100,
        verifies_per_identity: 2,
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
    /// TLS files of the gRPC port (and the client side towards suppliers).
    pub tls: TlsFiles,
    /// CA bundle for suppliers' server certificates.
    pub supplier_ca: PathBuf,
    /// CRLs suppliers' server certificates are checked against.
    pub supplier_crls: Vec<PathBuf>,
    /// Role policy file.
    pub policy: PathBuf,
    /// The suppliers.
    pub suppliers: Vec<SupplierEndpoint>,
    /// Database URL.
    pub database_url: String,
    /// The national reference files (practice file, supplier map).
    pub estate: (PathBuf, PathBuf),
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Staleness threshold.
    pub stale_after: Duration,
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
        /// The setting.
        setting: String,
        /// What is wrong.
        message: String,
    },
    /// TLS files unusable.
    #[error(transparent)]
    Tls(#[from] rollout_net::TlsError),
    /// Role policy unusable.
    #[error(transparent)]
    Policy(#[from] rollout_net::auth::PolicyError),
    /// Store failure.
    #[error(transparent)]
    Store(#[from] rollout_store::StoreError),
    /// Stored state unreadable.
    #[error(transparent)]
    Load(#[from] crate::coordinator::LoadError),
    /// Reference files unusable.
    #[error("estate: {0}")]
    Estate(String),
    /// Server failure.
    #[error("server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Reflection set-up failure.
    #[error("reflection set-up failed: {0}")]
    Reflection(#[from] rollout_net::server::ReflectionError),
    /// A port could not be listened on.
    #[error("cannot listen: {0}")]
    Listen(#[from] std::io::Error),
}

/// Reads the suppliers file.
pub fn read_suppliers(path: &Path) -> Result<Vec<SupplierEndpoint>, Error> {
    let setting = |message: String| Error::Setting {
        setting: format!("--suppliers {}", path.display()),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| setting(e.to_string()))?;
    let file: SuppliersFile = toml::from_str(&text).map_err(|e| setting(e.to_string()))?;
    let mut seen = std::collections::HashSet::new();
    file.supplier
        .into_iter()
        .map(|e| {
            let id = SupplierId::parse(&e.id).map_err(|err| setting(err.to_string()))?;
            if !seen.insert(id.clone()) {
                return Err(setting(format!("supplier {id} is listed twice")));
            }
            if !e.endpoint.contains(':') {
                return Err(setting(format!(
                    "endpoint {:?} of {id} is not host:port",
                    e.endpoint
                )));
            }
            Ok(SupplierEndpoint {
                id,
                endpoint: e.endpoint,
                identity: e.identity,
            })
        })
        .collect()
}

impl TryFrom<Args> for Config {
    type Error = Error;

    fn try_from(a: Args) -> Result<Self, Error> {
        let suppliers = read_suppliers(&a.suppliers)?;
        if a.heartbeat.is_zero() || a.heartbeat >= a.stale_after {
            return Err(Error::Setting {
                setting: "--heartbeat".into(),
                message: "must be above zero and below --stale-after".into(),
            });
        }
        let tls: TlsFiles = a.tls.into();
        Ok(Config {
            supplier_ca: a.supplier_ca.unwrap_or_else(|| tls.ca.clone()),
            supplier_crls: a.supplier_crl,
            tls,
            policy: a.policy,
            suppliers,
            database_url: a.database_url,
            estate: (a.practice_file, a.supplier_map),
            heartbeat: a.heartbeat,
            stale_after: a.stale_after,
            shutdown_grace: a.shutdown.shutdown_grace,
            budgets: Budgets {
                connection: a.connections.into(),
                watches_per_identity: usize::try_from(a.max_watches_per_identity).unwrap_or(usize::MAX),
                verifies_per_identity: usize::try_from(a.max_verifies_per_identity).unwrap_or(usize::MAX),
            },
        })
    }
}

/// The coordinator's service, named as health reports it.
const SERVICE: &str = "nhs.gprollout.v1.CoordinatorService";

/// Who may call what on the coordinator.
pub fn access_table() -> AccessTable {
    static OPERATOR: &[Role] = &[Role::Operator];
    static APPROVER: &[Role] = &[Role::Approver];
    static CANCEL: &[Role] = &[Role::Operator, Role::Approver];
    static AUDITOR: &[Role] = &[Role::Auditor];
    static READ: &[Role] = &[Role::Viewer, Role::Operator, Role::Approver, Role::Auditor];
    const S: &str = "/nhs.gprollout.v1.CoordinatorService/";
    AccessTable::new()
        .allow(S, Access::AnyOf(READ))
        .allow(
            "/nhs.gprollout.v1.CoordinatorService/CreateFeature",
            Access::AnyOf(OPERATOR),
        )
        .allow(
            "/nhs.gprollout.v1.CoordinatorService/HaltFeature",
            Access::AnyOf(OPERATOR),
        )
        .allow(
            "/nhs.gprollout.v1.CoordinatorService/ResumeFeature",
            Access::AnyOf(OPERATOR),
        )
        .allow(
            "/nhs.gprollout.v1.CoordinatorService/ScheduleGoLive",
            Access::AnyOf(OPERATOR),
        )
        .allow(
            "/nhs.gprollout.v1.CoordinatorService/ApproveCommand",
            Access::AnyOf(APPROVER),
        )
        .allow(
            "/nhs.gprollout.v1.CoordinatorService/CancelCommand",
            Access::AnyOf(CANCEL),
        )
        .allow(
            "/nhs.gprollout.v1.CoordinatorService/ListAuditEvents",
            Access::AnyOf(AUDITOR),
        )
        .allow(
            "/nhs.gprollout.v1.CoordinatorService/RecoverCommands",
            Access::AnyOf(OPERATOR),
        )
        .allow(
            "/nhs.gprollout.v1.CoordinatorService/ListOptOuts",
            Access::AnyOf(READ),
        )
        .allow(
            "/nhs.gprollout.v1.CoordinatorService/RedeliverCommand",
            Access::AnyOf(OPERATOR),
        )
}

/// The coordinator's client side towards the suppliers: its own certificate and key (the
/// server's), the suppliers' CA bundle and CRLs, re-read when they change.
fn client_trust(config: &Config) -> Result<Arc<ClientTrust>, Error> {
    Ok(ClientTrust::load(TlsFiles {
        ca: config.supplier_ca.clone(),
        crls: config.supplier_crls.clone(),
        ..config.tls.clone()
    })?)
}

/// Opens one mTLS channel per supplier (a connection of its own, made at its first call, with
/// the files of `trust` in force then), each checking the supplier's server identity.
fn supplier_channels(
    config: &Config,
    trust: &Arc<ClientTrust>,
) -> Result<BTreeMap<SupplierId, tonic::transport::Channel>, Error> {
    let mut channels = BTreeMap::new();
    for s in &config.suppliers {
        let channel = tls::reloading_channel(&s.endpoint, trust.clone(), Identity::new(&s.identity))?;
        channels.insert(s.id.clone(), channel);
    }
    Ok(channels)
}

/// Runs the coordinator on `listeners` (mutual TLS, and the plaintext health and metrics ports
/// that are on) until `shutdown` resolves; delivery tasks run alongside. Then, within the grace
/// period, sets health NOT_SERVING, stops delivery and accepting, ends every stream with
/// UNAVAILABLE, lets calls in flight finish, writes the queued refusals to the audit log and
/// closes the store.
pub async fn serve(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let drain = Drain::new(config.shutdown_grace);
    let policy_file = PolicyFile::load(&config.policy)?;
    let tls = ReloadingServerConfig::load(config.tls.clone())?;
    let trust = client_trust(&config)?;
    let estate = Arc::new(
        rollout_store::reference::read_estate(&config.estate.0, &config.estate.1).map_err(Error::Estate)?,
    );
    let store = SqlCoordinatorStore::open(&config.database_url).await?;
    let store_handle = store.clone();
    let core = crate::coordinator::Core::load(
        Arc::new(store),
        estate.clone(),
        config.suppliers.clone(),
        config.stale_after,
    )
    .await?;
    info!(
        practices = estate.len(),
        suppliers = config.suppliers.len(),
        "national estate loaded"
    );
    // Delivery has connections of its own: the reads callers drive through the handlers
    // (VerifyCommand, GetPracticeStatus) never share a connection's stream budget with it.
    let channels = supplier_channels(&config, &trust)?;
    let read_channels = supplier_channels(&config, &trust)?;

    let (stop_tx, stop_rx) = watch::channel(false);
    // Every replica serves the API; exactly one (the holder of the leadership lock) delivers.
    let leader = tokio::spawn(leader::lead(
        store_handle.clone(),
        core.clone(),
        channels,
        config.heartbeat,
        stop_rx.clone(),
    ));
    // On a shared (PostgreSQL) store, follow what the other replicas write.
    if let Some(feed) = store_handle.changes().await? {
        let follower = core.clone();
        tokio::spawn(feed.follow(stop_rx.clone(), move || {
            let follower = follower.clone();
            async move { follower.follow_store().await }
        }));
    }

    let audit_store = core.store().clone();
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
    let policy = policy_file.policy();
    let auth =
        AuthLayer::new(policy.clone(), access_table(), Some(refusals.observer())).with_trust(tls.clone());
    let web_tls = match &listeners.web {
        Some(_) => Some(ReloadingServerConfig::load_https(config.tls.clone())?),
        None => None,
    };
    let web_auth = web_tls.as_ref().map(|t| {
        AuthLayer::new(
            policy.clone(),
            web::access_table(&access_table()),
            Some(refusals.observer()),
        )
        .with_trust(t.clone())
    });
    // The server's own files are re-read by its acceptor; these by this loop.
    let reloaded = trust.clone();
    tokio::spawn(tls::every_reload_check(stop_rx.clone(), move || {
        policy_file.reload_if_changed();
        reloaded.reload_if_changed();
    }));

    let admission = Admission::new(config.budgets.connection);
    let metrics = listeners.metrics.map(|l| {
        let mut m = Metrics::new("coordinator", &[rollout_proto::FILE_DESCRIPTOR_SET]);
        m.observe_admission(&admission);
        m.observe_refusals(&refusals);
        let store = core.store().clone();
        m.observe_audit_chain(move || {
            let store = store.clone();
            async move { store.audit_head().await.ok() }
        });
        metrics::CoordinatorMetrics::observe(&mut m, &core);
        (l, m)
    });
    let handlers = service::Handlers::new(
        core.clone(),
        read_channels,
        stop_rx.clone(),
        &config.budgets,
        policy,
        refusals,
    )
    .with_tls_warnings(tls::TlsWarnings::new(tls.clone(), Some(trust.clone())));
    let web = match (listeners.web, web_tls, web_auth) {
        (Some(l), Some(t), Some(a)) => {
            let page = web::Web::new(handlers.clone(), core.clone(), a, stop_rx.clone());
            let budget = Admission::new(web::BUDGET);
            let listener = rollout_net::https::HttpsListener::new(l, t, &budget)?;
            info!(page = %web::address(listener.addr()), "status page");
            Some(web::serve(listener, page, drain.begun()))
        }
        _ => None,
    };
    let (reporter, health) = rollout_net::server::health();
    let (reflect_v1, reflect_v1alpha) = rollout_net::server::reflection(&[SERVICE])?;
    reporter
        .set_service_status(SERVICE, tonic_health::ServingStatus::Serving)
        .await;
    info!(addr = ?listeners.grpc.local_addr().ok(), health = ?listeners.health.as_ref().and_then(|l| l.local_addr().ok()), grace = ?config.shutdown_grace, "coordinator listening");

    let main = rollout_net::server::builder_for(&admission, metrics.as_ref().map(|(_, m)| m.rpc()))
        .layer(auth)
        .layer(drain.layer())
        .add_service(health.clone())
        .add_service(reflect_v1)
        .add_service(reflect_v1alpha)
        .add_service(CoordinatorServiceServer::new(handlers).with_message_limits())
        .serve_with_incoming_shutdown(tls::incoming_for(listeners.grpc, tls, &admission), drain.begun());
    let plaintext = rollout_net::server::serve_plaintext(listeners.health, health.clone(), metrics, &drain);
    let web = async {
        if let Some(web) = web
            && let Err(e) = web.await
        {
            tracing::warn!(error = %e, "status page server failed");
        }
    };
    let servers = async { tokio::join!(main, plaintext, web).0 };
    let stopping = async {
        rollout_net::server::set_not_serving(&reporter, &[SERVICE]).await;
        // Delivery stops; WatchCommand streams end themselves, saying how to resume.
        let _ = stop_tx.send(true);
    };
    let result = drain.serve(servers, shutdown, stopping).await;
    drain.join("delivery", leader).await;
    // Every refusal queued while serving is in the audit log before the store closes.
    let audit = audit.flush(drain.deadline()).await;
    drain
        .until_deadline("closing the store", store_handle.close())
        .await;
    drain.log_stopped("coordinator", audit);
    result.map_err(Error::from)
}
