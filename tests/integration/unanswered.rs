//! Suppliers that do not answer: four real `rollout-supplier` processes and a real
//! `rollout-coordinator` process. cegedim is frozen with SIGSTOP (as a hung process looks) and
//! tpp is put behind the test proxy turned black hole (as a dropped link looks). VerifyCommand
//! must answer within 3 s with each supplier's own outcome, the unverified counts and what
//! happens meanwhile under each fail mode; `rolloutctl halt --wait` must show the same; once
//! both are back the halts are applied and verify turns VERIFIED.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use rollout_proto::v1::{
    self as pb, coordinator_service_client::CoordinatorServiceClient, verify_command_response::Outcome,
};
use tonic::transport::Channel;

use crate::{
    proxy::{Mode, Proxy},
    stack::{SUPPLIERS, delivered_via, national},
    support::{
        binary, channel_as, coordinator_command, process::Process, reference_estate, supplier::supplier_files,
    },
};

/// The fail-static feature.
const STATIC: &str = "static-access";
/// The fail-closed feature.
const CLOSED: &str = "closed-access";
/// The fail-closed feature's control TTL: long enough not to run out during the test.
const TTL: Duration = Duration::from_secs(3_600);
/// How long a verification may take with two suppliers silent.
const ANSWERS_WITHIN: Duration = Duration::from_secs(3);

/// The processes, with tpp reached through a proxy.
struct Processes {
    _dir: tempfile::TempDir,
    pki: PathBuf,
    suppliers: BTreeMap<&'static str, Process>,
    tpp: Proxy,
    coordinator: Process,
    addr: std::net::SocketAddr,
}

impl Processes {
    async fn start() -> Processes {
        rollout_net::tls::install_crypto_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = crate::support::pki_init(dir.path());
        let mut suppliers = BTreeMap::new();
        let mut endpoints = String::new();
        let mut tpp = None;
        for s in SUPPLIERS {
            let files = supplier_files(dir.path(), &pki, s);
            let mut process = Process::spawn(files.command_at("127.0.0.1:0", "127.0.0.1:0"));
            let (mut addr, _) = process.addrs("supplier service listening").await;
            if s == "tpp" {
                let proxy = Proxy::start(addr).await;
                addr = proxy.addr;
                tpp = Some(proxy);
            }
            endpoints.push_str(&format!(
                "[[supplier]]\nid = \"{s}\"\nendpoint = \"localhost:{}\"\nidentity = \"spiffe://gprollout.test/supplier/{s}\"\n\n",
                addr.port()
            ));
            suppliers.insert(s, process);
        }
        let (policy, suppliers_file) = (dir.path().join("policy.toml"), dir.path().join("suppliers.toml"));
        std::fs::write(&suppliers_file, endpoints).expect("write suppliers");
        std::fs::write(
            &policy,
            "[identities]\n\
             \"spiffe://gprollout.test/operator/alice\" = [\"operator\", \"approver\"]\n\
             \"spiffe://gprollout.test/operator/bob\" = [\"operator\", \"approver\"]\n\
             \"spiffe://gprollout.test/viewer\" = [\"viewer\"]\n",
        )
        .expect("write policy");
        let database = format!("sqlite://{}", dir.path().join("coordinator.db").display());
        let mut command = coordinator_command(&pki, &policy, &suppliers_file, &database);
        command.args(["--health-listen", "127.0.0.1:0"]);
        let mut coordinator = Process::spawn(command);
        let (addr, _) = coordinator.addrs("coordinator listening").await;
        Processes {
            _dir: dir,
            pki,
            suppliers,
            tpp: tpp.expect("tpp's proxy"),
            coordinator,
            addr,
        }
    }

    fn client(&self, who: &str) -> CoordinatorServiceClient<Channel> {
        CoordinatorServiceClient::new(channel_as(&self.pki, who, self.addr))
    }

    /// Defines `key` with `fail_mode` and switches it on nationally (alice, approved by bob),
    /// applied everywhere.
    async fn live(&self, key: &str, fail_mode: pb::FailMode) {
        let mut alice = self.client("alice");
        alice
            .create_feature(pb::CreateFeatureRequest {
                feature_id: key.into(),
                feature: Some(pb::Feature {
                    fail_mode: fail_mode.into(),
                    control_ttl: (fail_mode == pb::FailMode::Closed)
                        .then(|| prost_types::Duration::try_from(TTL).expect("ttl")),
                    ..Default::default()
                }),
                reason: "national programme".into(),
                request_id: String::new(),
            })
            .await
            .expect("create feature");
        let live = alice
            .schedule_go_live(pb::ScheduleGoLiveRequest {
                name: format!("features/{key}"),
                scope: Some(national()),
                reason: "go live".into(),
                ..Default::default()
            })
            .await
            .expect("go-live")
            .into_inner();
        self.client("bob")
            .approve_command(pb::ApproveCommandRequest {
                name: live.name.clone(),
                comment: "approved".into(),
                request_id: String::new(),
            })
            .await
            .expect("approve");
        delivered_via(self.client("viewer"), &live.name).await;
    }

    /// A national halt of `key` as alice.
    async fn halt(&self, key: &str) -> pb::Command {
        self.client("alice")
            .halt_feature(pb::HaltFeatureRequest {
                name: format!("features/{key}"),
                scope: Some(national()),
                reason: "halted until further notice".into(),
                ..Default::default()
            })
            .await
            .expect("halt")
            .into_inner()
    }

    /// VerifyCommand as the viewer, and how long it took.
    async fn verify(&self, halt: &str) -> (pb::VerifyCommandResponse, Duration) {
        let started = Instant::now();
        let answer = self
            .client("viewer")
            .verify_command(pb::VerifyCommandRequest {
                name: halt.into(),
                ..Default::default()
            })
            .await
            .expect("verify")
            .into_inner();
        (answer, started.elapsed())
    }

    /// Runs `rolloutctl` as `who`.
    async fn ctl(&self, who: &str, args: &[&str]) -> std::process::Output {
        tokio::process::Command::new(binary("rolloutctl"))
            .arg("--coordinator")
            .arg(format!("localhost:{}", self.addr.port()))
            .arg("--pki-dir")
            .arg(&self.pki)
            .args(["--as", who])
            .args(args)
            .output()
            .await
            .expect("run rolloutctl")
    }
}

/// Follows WatchCommand until each of `suppliers` has applied `name`.
async fn applied_by(client: CoordinatorServiceClient<Channel>, name: &str, suppliers: &[&str]) {
    let mut client = client;
    let mut stream = client
        .watch_command(pb::WatchCommandRequest { name: name.into() })
        .await
        .expect("watch")
        .into_inner();
    let all_applied = async {
        while let Some(update) = stream.message().await.expect("stream") {
            let cmd = update.command.expect("command");
            let applied = |s: &&str| {
                cmd.deliveries.iter().any(|d| {
                    d.supplier == format!("suppliers/{s}") && d.state() == pb::delivery::State::Applied
                })
            };
            if suppliers.iter().all(applied) {
                return;
            }
        }
        panic!("the watch of {name} ended first");
    };
    tokio::time::timeout(Duration::from_secs(30), all_applied)
        .await
        .unwrap_or_else(|_| panic!("{suppliers:?} did not apply {name} within 30 s"));
}

/// Each supplier's result by its short name.
fn by_supplier(
    r: &pb::VerifyCommandResponse,
) -> BTreeMap<String, &pb::verify_command_response::SupplierResult> {
    r.suppliers
        .iter()
        .map(|s| (s.supplier.trim_start_matches("suppliers/").to_owned(), s))
        .collect()
}

/// Checks a verification with emis and microtest VERIFIED and cegedim and tpp `silent`, each
/// with its practices in scope (by the estate) and, for the silent ones, the consequence under
/// `fail_mode`.
#[track_caller]
fn check_partial(r: &pb::VerifyCommandResponse, silent: Outcome, fail_mode: pb::FailMode) {
    let estate = reference_estate().active_by_supplier();
    let in_scope =
        |s: &str| i32::try_from(estate[&rollout_core::SupplierId::parse(s).expect("id")]).expect("count");
    assert!(!r.verified, "{r:?}");
    let results = by_supplier(r);
    for s in SUPPLIERS {
        let got = results[s];
        assert_eq!(got.in_scope_count, in_scope(s), "{s}");
        if s == "emis" || s == "microtest" {
            assert_eq!(got.outcome(), Outcome::Verified, "{s}: {got:?}");
            assert_eq!((got.enabled_count, got.unverified_count), (0, 0), "{s}");
            assert_eq!(got.checked_count, in_scope(s), "{s}");
            assert!(got.consequence.is_none(), "{s}");
            continue;
        }
        assert_eq!(got.outcome(), silent, "{s}: {got:?}");
        assert_eq!(got.enabled_count, 0, "{s}: not known, never counted");
        assert_eq!((got.checked_count, got.unverified_count), (0, in_scope(s)), "{s}");
        assert!(!got.error.is_empty(), "{s}: says why");
        let c = got.consequence.as_ref().expect("a consequence");
        assert_eq!(c.fail_mode(), fail_mode, "{s}");
        let contact = SystemTime::try_from(got.last_contact_time.expect("last contact")).expect("time");
        match fail_mode {
            pb::FailMode::Closed => {
                let off = SystemTime::try_from(c.off_time.expect("off time")).expect("time");
                assert_eq!(off.duration_since(contact).expect("after contact"), TTL, "{s}");
            }
            _ => assert!(c.off_time.is_none(), "{s}: fail-static never turns off by itself"),
        }
    }
    assert_eq!(r.unverified_count, in_scope("cegedim") + in_scope("tpp"));
    assert_eq!(r.checked_count, in_scope("emis") + in_scope("microtest"));
    assert_eq!(r.enabled_count, 0);
}

/// The command id `rolloutctl halt` printed in its table (`command   ID`).
fn printed_id(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("command   "))
        .map(|id| id.trim().to_owned())
        .unwrap_or_else(|| panic!("no command line in:\n{out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_and_a_black_holed_supplier_get_outcomes_of_their_own_within_3_s_and_verify_once_back() {
    let mut p = Processes::start().await;
    p.live(STATIC, pb::FailMode::Static).await;
    p.live(CLOSED, pb::FailMode::Closed).await;
    // Applied everywhere, then cegedim hangs and tpp's link goes dark.
    let applied = p.halt(STATIC).await;
    delivered_via(p.client("viewer"), &applied.name).await;
    p.suppliers["cegedim"].signal("STOP").await;
    p.tpp.set(Mode::BlackHole);

    // Fail-static, applied by all before they went silent: the two silent ones UNREACHABLE.
    let (r, took) = p.verify(&applied.name).await;
    assert!(took < ANSWERS_WITHIN, "verify took {took:?}");
    check_partial(&r, Outcome::Unreachable, pb::FailMode::Static);
    for s in ["cegedim", "tpp"] {
        assert!(
            by_supplier(&r)[s].error.contains("did not answer within 2s"),
            "{s}: {}",
            by_supplier(&r)[s].error
        );
    }

    // Fail-closed, issued while they are silent: NOT_APPLIED, turning off at contact + TTL.
    let pending = p.halt(CLOSED).await;
    applied_by(p.client("viewer"), &pending.name, &["emis", "microtest"]).await;
    let (r, took) = p.verify(&pending.name).await;
    assert!(took < ANSWERS_WITHIN, "verify took {took:?}");
    check_partial(&r, Outcome::NotApplied, pb::FailMode::Closed);
    for s in ["cegedim", "tpp"] {
        assert!(by_supplier(&r)[s].applied_sequence < pending.sequence, "{s}");
    }

    // The same situation through `rolloutctl halt --wait`: each supplier verified as it applies,
    // then on the timeout the partial verification and what happens meanwhile; exit 3.
    let args = [
        "halt",
        CLOSED,
        "--scope",
        "national",
        "--reason",
        "r",
        "--wait",
        "--timeout",
        "3s",
    ];
    let out = p.ctl("alice", &args).await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert_eq!(out.status.code(), Some(3), "{stdout}\n{stderr}");
    for s in ["emis", "microtest"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(s) && l.contains("VERIFIED: none of its")),
            "{s} verified as it applied:\n{stdout}"
        );
    }
    let id = printed_id(&stdout);
    assert!(
        stdout.contains(&format!("{id} NOT VERIFIED: 2 of 4 suppliers not verified")),
        "{stdout}"
    );
    for s in ["cegedim", "tpp"] {
        let row = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(s) && l.contains("NOT APPLIED"))
            .unwrap_or_else(|| panic!("no NOT APPLIED row for {s}:\n{stdout}"));
        assert!(
            row.contains(" - "),
            "{s}: no enabled count shown for a silent supplier: {row}"
        );
        assert!(
            stdout.contains(&format!(
                "  {s}: fail-closed: its practices turn the feature off by themselves at"
            )),
            "{stdout}"
        );
    }
    assert!(stdout.contains("What happens meanwhile:"), "{stdout}");
    assert!(stderr.contains("have not answered: "), "{stderr}");

    // Back: both apply every halt, and each verifies.
    p.suppliers["cegedim"].signal("CONT").await;
    p.tpp.set(Mode::Pass);
    for halt in [
        applied.name.clone(),
        pending.name.clone(),
        format!("commands/{id}"),
    ] {
        delivered_via(p.client("viewer"), &halt).await;
        let (r, _) = p.verify(&halt).await;
        assert!(r.verified, "{halt}: {r:?}");
        assert!(
            r.suppliers.iter().all(|s| s.outcome() == Outcome::Verified),
            "{r:?}"
        );
        assert_eq!(r.unverified_count, 0);
    }
    for (_, mut s) in std::mem::take(&mut p.suppliers) {
        s.stop("TERM", Duration::from_secs(15)).await;
    }
    p.coordinator.stop("TERM", Duration::from_secs(15)).await;
}
