//! A supplier under test: its files (PKI, role policy, database), the server started on them,
//! a client per service as a given identity, and the EMIS practices the tests name.

use std::path::{Path, PathBuf};

use rollout_core::SupplierId;
use rollout_proto::v1::{
    self as pb, control_service_client::ControlServiceClient,
    practice_settings_service_client::PracticeSettingsServiceClient,
    toggle_service_client::ToggleServiceClient,
};
use tonic::transport::Channel;

use super::{Running, binary, channel_as, practice_feature, reference_files};

/// An active EMIS practice in region Y60, ICB QN7, sub-ICB 33G.
pub const EMIS_A: &str = "L56296";
/// Another active EMIS practice in region Y60, ICB QNT.
pub const EMIS_B: &str = "S92134";
/// A closed EMIS practice.
pub const EMIS_CLOSED: &str = "Q24642";
/// An active EMIS practice in ICB QRP.
pub const EMIS_QRP: &str = "O82754";
/// Active EMIS practices in the synthetic estate.
pub const EMIS_ACTIVE: i32 = 3_386;
/// EMIS practices of any status.
pub const EMIS_ALL: i32 = 3_441;

/// A supplier's files in a test directory: PKI, policy, database.
pub struct SupplierFiles {
    pub pki: PathBuf,
    pub policy: PathBuf,
    pub database: PathBuf,
    /// A database URL to use instead of the SQLite file (PostgreSQL replica tests).
    pub database_url: Option<String>,
    pub supplier: String,
}

/// Writes the role policy a supplier uses in these tests: its own backend and practice admin,
/// the coordinator, and the viewer (listed, but with no role the supplier serves).
pub fn supplier_files(dir: &Path, pki: &Path, supplier: &str) -> SupplierFiles {
    let policy = dir.join(format!("policy-{supplier}.toml"));
    std::fs::write(
        &policy,
        format!(
            "[identities]\n\
             \"spiffe://gprollout.test/supplier/{supplier}/backend\" = [\"backend\"]\n\
             \"spiffe://gprollout.test/supplier/{supplier}/practice-admin\" = [\"practice-admin\"]\n\
             \"spiffe://gprollout.test/coordinator\" = [\"coordinator\"]\n\
             \"spiffe://gprollout.test/viewer\" = [\"viewer\"]\n"
        ),
    )
    .expect("write policy");
    SupplierFiles {
        pki: pki.to_owned(),
        policy,
        database: dir.join(format!("{supplier}.db")),
        database_url: None,
        supplier: supplier.to_owned(),
    }
}

impl SupplierFiles {
    pub fn config(&self, freeze: Option<&str>) -> rollout_supplier::Config {
        rollout_supplier::Config {
            supplier: SupplierId::parse(&self.supplier).expect("supplier"),
            tls: rollout_net::TlsFiles::from_pki_dir(&self.pki, &format!("supplier-{}", self.supplier)),
            policy: self.policy.clone(),
            database_url: self
                .database_url
                .clone()
                .unwrap_or_else(|| format!("sqlite://{}", self.database.display())),
            estate: Some(reference_files()),
            freeze_reason: freeze.map(str::to_owned),
            shutdown_grace: std::time::Duration::from_secs(10),
            budgets: Default::default(),
        }
    }

    /// The `rollout-supplier` command line for this supplier, listening on `listen`, without
    /// the plaintext health port.
    pub fn command(&self, listen: &str) -> tokio::process::Command {
        self.command_at(listen, "off")
    }

    /// The `rollout-supplier` command line for this supplier, listening on `listen`, with the
    /// plaintext health port at `health`.
    pub fn command_at(&self, listen: &str, health: &str) -> tokio::process::Command {
        let config = self.config(None);
        let (practices, map) = reference_files();
        let mut cmd = tokio::process::Command::new(binary("rollout-supplier"));
        cmd.args([
            "--supplier-id",
            &self.supplier,
            "--listen",
            listen,
            "--health-listen",
            health,
        ])
        .arg("--tls-ca")
        .arg(&config.tls.ca)
        .arg("--tls-cert")
        .arg(&config.tls.cert)
        .arg("--tls-key")
        .arg(&config.tls.key)
        .arg("--policy")
        .arg(&config.policy)
        .args(["--database-url", &config.database_url])
        .arg("--practice-file")
        .arg(practices)
        .arg("--supplier-map")
        .arg(map)
        // Metrics off unless a test asks (`--metrics-listen` overrides it).
        .env("ROLLOUT_METRICS_LISTEN", "off");
        cmd
    }

    /// As [`SupplierFiles::start`], with the metrics port on too: the server and its address.
    pub async fn start_with_metrics(&self) -> (Running<rollout_supplier::Error>, std::net::SocketAddr) {
        let config = self.config(None);
        let metrics = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind metrics");
        let metrics_addr = metrics.local_addr().expect("metrics address");
        let running = Running::start(|listener, health, stop| async move {
            let listeners = rollout_net::server::Listeners::new(listener, Some(health)).with_metrics(metrics);
            rollout_supplier::serve(config, listeners, async {
                let _ = stop.await;
            })
            .await
        })
        .await;
        (running, metrics_addr)
    }

    pub async fn start(&self, freeze: Option<&str>) -> Running<rollout_supplier::Error> {
        let config = self.config(freeze);
        Running::start(|listener, health, stop| async move {
            rollout_supplier::serve(
                config,
                rollout_net::server::Listeners::new(listener, Some(health)),
                async {
                    let _ = stop.await;
                },
            )
            .await
        })
        .await
    }
}

/// A supplier (emis) started in a fresh directory with a fresh PKI.
pub async fn emis() -> (tempfile::TempDir, SupplierFiles, Running<rollout_supplier::Error>) {
    rollout_net::tls::install_crypto_provider();
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = tmp.path().join("pki");
    rolloutctl::pki::init(&pki, false).expect("pki");
    let files = supplier_files(tmp.path(), &pki, "emis");
    let running = files.start(None).await;
    (tmp, files, running)
}

pub fn toggle(
    files: &SupplierFiles,
    who: &str,
    r: &Running<rollout_supplier::Error>,
) -> ToggleServiceClient<Channel> {
    ToggleServiceClient::new(channel_as(&files.pki, who, r.addr))
}

pub fn control(files: &SupplierFiles, r: &Running<rollout_supplier::Error>) -> ControlServiceClient<Channel> {
    ControlServiceClient::new(channel_as(&files.pki, "coordinator", r.addr))
}

pub fn settings(
    files: &SupplierFiles,
    who: &str,
    r: &Running<rollout_supplier::Error>,
) -> PracticeSettingsServiceClient<Channel> {
    PracticeSettingsServiceClient::new(channel_as(&files.pki, who, r.addr))
}

pub async fn apply(c: &mut ControlServiceClient<Channel>, command: pb::Command) -> pb::ApplyCommandResponse {
    c.apply_command(pb::ApplyCommandRequest {
        command: Some(command),
        ..Default::default()
    })
    .await
    .expect("apply command")
    .into_inner()
}

pub async fn get(t: &mut ToggleServiceClient<Channel>, ods: &str) -> pb::PracticeFeature {
    t.get_practice_feature(pb::GetPracticeFeatureRequest {
        name: practice_feature(ods),
        explain: true,
    })
    .await
    .expect("get practice feature")
    .into_inner()
}
