//! A coordinator and four suppliers (emis, tpp, cegedim, microtest) in one test: real servers
//! on loopback, real mutual TLS, one SQLite file each, the synthetic national estate.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use rollout_core::{Estate, PracticeStatus, Scope, SupplierId};
use rollout_proto::v1::{self as pb, coordinator_service_client::CoordinatorServiceClient};
use tonic::transport::Channel;

use crate::support::{
    FEATURE, Running, channel_as, reference_estate, reference_files,
    supplier::{SupplierFiles, supplier_files},
};

/// The suppliers of the stack.
pub const SUPPLIERS: [&str; 4] = ["emis", "tpp", "cegedim", "microtest"];

/// The running stack.
pub struct Stack {
    pub dir: tempfile::TempDir,
    pub pki: PathBuf,
    pub suppliers: BTreeMap<
        &'static str,
        (
            SupplierFiles,
            Option<Running<rollout_supplier::Error>>,
            SocketAddr,
        ),
    >,
    pub coordinator: Option<Running<rollout_coordinator::Error>>,
    pub coordinator_addr: SocketAddr,
    /// The coordinator's `/metrics` address, once it has started (its metrics are always on).
    pub coordinator_metrics: Option<SocketAddr>,
    /// The coordinator's status page address, once it has started (always on).
    pub coordinator_web: Option<SocketAddr>,
    pub coordinator_db: PathBuf,
    /// The coordinator's database URL when it is not the SQLite file `coordinator_db`.
    pub coordinator_url: Option<String>,
    pub estate: Estate,
    /// Where the coordinator reaches a supplier, when not directly (a proxy).
    pub via: BTreeMap<&'static str, SocketAddr>,
    /// The coordinator's heartbeat (200 ms unless a test sets it before starting it).
    pub heartbeat: Duration,
    /// The coordinator's budgets (the defaults unless a test sets them before starting it).
    pub coordinator_budgets: rollout_coordinator::Budgets,
    /// Suppliers left out of the coordinator's suppliers list (they still run, and the estate
    /// still holds their practices): none unless a test sets them before starting it.
    pub unconfigured: Vec<&'static str>,
}

fn coordinator_policy(dir: &Path) -> PathBuf {
    let path = dir.join("coordinator-policy.toml");
    std::fs::write(
        &path,
        "[identities]\n\
         \"spiffe://gprollout.test/operator/alice\" = [\"operator\", \"approver\"]\n\
         \"spiffe://gprollout.test/operator/bob\" = [\"operator\", \"approver\"]\n\
         \"spiffe://gprollout.test/auditor\" = [\"auditor\"]\n\
         \"spiffe://gprollout.test/viewer\" = [\"viewer\"]\n",
    )
    .expect("write policy");
    path
}

impl Stack {
    /// Starts four suppliers (cegedim frozen if `freeze_cegedim`) and the coordinator.
    pub async fn start(freeze_cegedim: Option<&str>) -> Stack {
        let mut stack = Stack::suppliers(freeze_cegedim).await;
        stack.start_coordinator().await;
        stack
    }

    /// Starts only the four suppliers.
    pub async fn suppliers(freeze_cegedim: Option<&str>) -> Stack {
        Stack::suppliers_with(freeze_cegedim, |pki| {
            rolloutctl::pki::init(pki, false).expect("pki");
        })
        .await
    }

    /// Starts only the four suppliers, on the PKI `write_pki` writes into the directory it is
    /// given (the files `rolloutctl pki init` writes).
    pub async fn suppliers_with(freeze_cegedim: Option<&str>, write_pki: impl FnOnce(&Path)) -> Stack {
        rollout_net::tls::install_crypto_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = dir.path().join("pki");
        write_pki(&pki);
        let mut suppliers = BTreeMap::new();
        for s in SUPPLIERS {
            let files = supplier_files(dir.path(), &pki, s);
            let freeze = if s == "cegedim" { freeze_cegedim } else { None };
            let running = files.start(freeze).await;
            let addr = running.addr;
            suppliers.insert(s, (files, Some(running), addr));
        }
        let estate = reference_estate();
        Stack {
            coordinator_db: dir.path().join("coordinator.db"),
            coordinator_url: None,
            dir,
            pki,
            suppliers,
            coordinator: None,
            coordinator_addr: "127.0.0.1:0".parse().expect("addr"),
            coordinator_metrics: None,
            coordinator_web: None,
            estate,
            via: BTreeMap::new(),
            heartbeat: Duration::from_millis(200),
            coordinator_budgets: Default::default(),
            unconfigured: Vec::new(),
        }
    }

    /// The port the coordinator uses to reach `supplier`.
    pub fn endpoint_port(&self, supplier: &str) -> u16 {
        self.via
            .get(supplier)
            .map_or_else(|| self.suppliers[supplier].2.port(), |a| a.port())
    }

    /// The suppliers the coordinator is configured with: every one but the `unconfigured`.
    pub fn configured(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.suppliers
            .keys()
            .copied()
            .filter(|s| !self.unconfigured.contains(s))
    }

    /// Writes the coordinator's policy and suppliers files; returns their paths.
    pub fn coordinator_files(&self) -> (PathBuf, PathBuf) {
        let suppliers = self.dir.path().join("suppliers.toml");
        let text: String = self
            .configured()
            .map(|id| {
                format!(
                    "[[supplier]]\nid = \"{id}\"\nendpoint = \"localhost:{}\"\nidentity = \"spiffe://gprollout.test/supplier/{id}\"\n\n",
                    self.endpoint_port(id)
                )
            })
            .collect();
        std::fs::write(&suppliers, text).expect("write suppliers");
        (coordinator_policy(self.dir.path()), suppliers)
    }

    /// The coordinator's configuration.
    pub fn coordinator_config(&self) -> rollout_coordinator::Config {
        let (practices, map) = reference_files();
        rollout_coordinator::Config {
            tls: rollout_net::TlsFiles::from_pki_dir(&self.pki, "coordinator"),
            supplier_ca: self.pki.join("ca.pem"),
            supplier_crls: Vec::new(),
            policy: coordinator_policy(self.dir.path()),
            suppliers: self
                .configured()
                .map(|id| rollout_coordinator::SupplierEndpoint {
                    id: SupplierId::parse(id).expect("id"),
                    endpoint: format!("localhost:{}", self.endpoint_port(id)),
                    identity: format!("spiffe://gprollout.test/supplier/{id}"),
                })
                .collect(),
            database_url: self
                .coordinator_url
                .clone()
                .unwrap_or_else(|| format!("sqlite://{}", self.coordinator_db.display())),
            estate: (practices, map),
            heartbeat: self.heartbeat,
            stale_after: Duration::from_secs(5).max(self.heartbeat * 2),
            shutdown_grace: Duration::from_secs(10),
            budgets: self.coordinator_budgets,
        }
    }

    /// Starts (or restarts, on the same port) the coordinator.
    pub async fn start_coordinator(&mut self) {
        let config = self.coordinator_config();
        let metrics = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind metrics");
        self.coordinator_metrics = Some(metrics.local_addr().expect("metrics address"));
        let web = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind web");
        self.coordinator_web = Some(web.local_addr().expect("web address"));
        let run = |listener, health, stop: tokio::sync::oneshot::Receiver<()>| async move {
            rollout_coordinator::serve(
                config,
                rollout_net::server::Listeners::new(listener, Some(health))
                    .with_metrics(metrics)
                    .with_web(web),
                async {
                    let _ = stop.await;
                },
            )
            .await
        };
        let running = if self.coordinator_addr.port() == 0 {
            Running::start(run).await
        } else {
            Running::start_at(self.coordinator_addr, run).await
        };
        self.coordinator_addr = running.addr;
        self.coordinator = Some(running);
    }

    /// Stops the coordinator.
    pub async fn stop_coordinator(&mut self) {
        if let Some(c) = self.coordinator.take() {
            c.stop().await;
        }
    }

    /// Stops a supplier.
    pub async fn stop_supplier(&mut self, id: &str) {
        let entry = self.suppliers.get_mut(id).expect("supplier");
        if let Some(r) = entry.1.take() {
            r.stop().await;
        }
    }

    /// Starts a stopped supplier again on its port.
    pub async fn start_supplier(&mut self, id: &str) {
        let entry = self.suppliers.get_mut(id).expect("supplier");
        let config = entry.0.config(None);
        let running = Running::start_at(entry.2, |listener, health, stop| async move {
            rollout_supplier::serve(
                config,
                rollout_net::server::Listeners::new(listener, Some(health)),
                async {
                    let _ = stop.await;
                },
            )
            .await
        })
        .await;
        entry.1 = Some(running);
    }

    /// A coordinator client as `who`.
    pub fn client(&self, who: &str) -> CoordinatorServiceClient<Channel> {
        CoordinatorServiceClient::new(channel_as(&self.pki, who, self.coordinator_addr))
    }

    /// A ToggleService client at a supplier, as its backend.
    pub fn backend(
        &self,
        supplier: &str,
    ) -> rollout_proto::v1::toggle_service_client::ToggleServiceClient<Channel> {
        let addr = self.suppliers[supplier].2;
        rollout_proto::v1::toggle_service_client::ToggleServiceClient::new(channel_as(
            &self.pki,
            &format!("backend-{supplier}"),
            addr,
        ))
    }

    /// Stops everything.
    pub async fn stop(mut self) {
        self.stop_coordinator().await;
        for id in SUPPLIERS {
            self.stop_supplier(id).await;
        }
    }

    /// Active practices of `supplier` that `scope` covers, from the national estate.
    pub fn expected(&self, supplier: &str, scope: &Scope) -> usize {
        self.estate
            .practices()
            .filter(|p| {
                p.supplier.as_str() == supplier && p.status == PracticeStatus::Active && scope.covers(p)
            })
            .count()
    }

    /// An active practice of `supplier`.
    pub fn practice_of(&self, supplier: &str) -> String {
        self.estate
            .practices()
            .find(|p| p.supplier.as_str() == supplier && p.status == PracticeStatus::Active)
            .map(|p| p.ods.to_string())
            .expect("an active practice")
    }
}

/// Defines the feature (fail static) as `operator`.
pub async fn define_feature(operator: &mut CoordinatorServiceClient<Channel>) {
    operator
        .create_feature(pb::CreateFeatureRequest {
            feature_id: FEATURE.into(),
            feature: Some(pb::Feature {
                description: "automatic prospective online record access".into(),
                fail_mode: pb::FailMode::Static.into(),
                ..Default::default()
            }),
            reason: "national programme".into(),
            request_id: String::new(),
        })
        .await
        .expect("create feature");
}

/// Creates the feature and switches it on nationally (alice requests, bob approves), waiting
/// until every supplier has applied both.
pub async fn feature_live(stack: &Stack) {
    let mut alice = stack.client("alice");
    define_feature(&mut alice).await;
    let live = alice
        .schedule_go_live(pb::ScheduleGoLiveRequest {
            name: format!("features/{FEATURE}"),
            scope: Some(national()),
            effective_time: None,
            reason: "go live".into(),
            request_id: String::new(),
            dry_run: false,
            ..Default::default()
        })
        .await
        .expect("go-live")
        .into_inner();
    stack
        .client("bob")
        .approve_command(pb::ApproveCommandRequest {
            name: live.name.clone(),
            comment: "approved".into(),
            request_id: String::new(),
        })
        .await
        .expect("approve");
    delivered(stack, &live.name).await;
}

/// Polls ListSuppliers until `done` holds for the list, and returns it; fails after `within`,
/// saying what it waited for and where each supplier stood.
pub async fn suppliers_until(
    stack: &Stack,
    within: Duration,
    what: &str,
    done: impl Fn(&[pb::Supplier]) -> bool,
) -> Vec<pb::Supplier> {
    let end = tokio::time::Instant::now() + within;
    loop {
        let list = stack
            .client("viewer")
            .list_suppliers(pb::ListSuppliersRequest::default())
            .await
            .expect("list suppliers")
            .into_inner()
            .suppliers;
        if done(&list) {
            return list;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "not {what} within {within:?}: {:?}",
            list.iter()
                .map(|s| (
                    s.name.as_str(),
                    s.state(),
                    s.applied_sequence,
                    s.divergence.as_str(),
                    s.last_error.as_str()
                ))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The national scope on the wire.
pub fn national() -> pb::Scope {
    pb::Scope {
        target: Some(pb::scope::Target::National(pb::scope::National {})),
    }
}

/// Follows WatchCommand until every supplier has answered; returns the final command.
pub async fn delivered(stack: &Stack, name: &str) -> pb::Command {
    delivered_as(stack, "viewer", name).await
}

/// [`delivered`], watching as `who`.
pub async fn delivered_as(stack: &Stack, who: &str, name: &str) -> pb::Command {
    delivered_via(stack.client(who), name).await
}

/// [`delivered`], watching with `client`.
pub async fn delivered_via(mut client: CoordinatorServiceClient<Channel>, name: &str) -> pb::Command {
    let mut stream = client
        .watch_command(pb::WatchCommandRequest { name: name.into() })
        .await
        .expect("watch command")
        .into_inner();
    let follow = async {
        loop {
            let update = stream
                .message()
                .await
                .expect("stream")
                .expect("an update before the end");
            if update.complete {
                return update.command.expect("command");
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), follow)
        .await
        .expect("every supplier answers within 30 s")
}

/// Issues a halt as alice. Practice codes the estate does not know are allowed (tests list
/// made-up codes to make large commands); a scope that covers nothing is not.
pub async fn halt(stack: &Stack, scope: pb::Scope) -> pb::Command {
    stack
        .client("alice")
        .halt_feature(pb::HaltFeatureRequest {
            name: format!("features/{FEATURE}"),
            scope: Some(scope),
            reason: "halted until further notice".into(),
            allow_unknown_practices: true,
            ..Default::default()
        })
        .await
        .expect("halt")
        .into_inner()
}

/// VerifyCommand of the halt `name` (`commands/...`) as a viewer, with the default timeout, for
/// every supplier.
pub async fn verify(stack: &Stack, name: &str) -> pb::VerifyCommandResponse {
    stack
        .client("viewer")
        .verify_command(pb::VerifyCommandRequest {
            name: name.to_owned(),
            ..Default::default()
        })
        .await
        .expect("verify")
        .into_inner()
}

/// The coordinator's audit log, every page.
pub async fn audit_events(stack: &Stack) -> Vec<pb::AuditEvent> {
    let mut auditor = stack.client("auditor");
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = auditor
            .list_audit_events(pb::ListAuditEventsRequest {
                page_size: 1_000,
                page_token,
                ..Default::default()
            })
            .await
            .expect("audit")
            .into_inner();
        all.extend(page.events);
        if page.next_page_token.is_empty() {
            return all;
        }
        page_token = page.next_page_token;
    }
}
