//! Four eyes bind people, not certificates. The coordinator's role policy names the person
//! behind each identity; two certificates of one person (a laptop and a smartcard identity)
//! cannot request and approve each other's go-live, nor give two of the approvals a command
//! needs. The refusal names the person, and the audit log records identity and person. A real
//! coordinator over real mutual TLS, with certificates minted at test time.

use std::path::Path;

use rollout_proto::v1::{self as pb, coordinator_service_client::CoordinatorServiceClient};
use rolloutctl::pki::{DevCa, IdentitySpec, Validity};
use tonic::{Code, Status, transport::Channel};
use tonic_types::StatusExt;

use crate::{
    stack::national,
    support::{FEATURE, Running, assert_refused, channel_as, reference_files},
};

const ALICE: &str = "555123456789";
const BOB: &str = "555198765432";
const CAROL: &str = "555100000001";

/// (certificate name, identity path, roles, person)
const PEOPLE: [(&str, &str, &str, Option<&str>); 7] = [
    (
        "alice",
        "operator/alice",
        r#"["operator", "approver"]"#,
        Some(ALICE),
    ),
    (
        "alice-smartcard",
        "operator/alice-smartcard",
        r#"["operator", "approver"]"#,
        Some(ALICE),
    ),
    ("bob", "operator/bob", r#"["operator", "approver"]"#, Some(BOB)),
    ("bob-laptop", "operator/bob-laptop", r#"["approver"]"#, Some(BOB)),
    ("carol", "operator/carol", r#"["approver"]"#, Some(CAROL)),
    ("auditor", "auditor", r#"["auditor"]"#, None),
    ("viewer", "viewer", r#"["viewer"]"#, None),
];

fn identity(name: &str) -> String {
    let path = PEOPLE.iter().find(|p| p.0 == name).expect("a person").1;
    format!("spiffe://gprollout.test/{path}")
}

struct World {
    dir: tempfile::TempDir,
    coordinator: Running<rollout_coordinator::Error>,
}

impl World {
    /// A coordinator whose policy names the people above, with one supplier nobody runs.
    async fn start() -> World {
        rollout_net::tls::install_crypto_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = dir.path().join("pki");
        std::fs::create_dir_all(&pki).expect("pki dir");
        let ca = DevCa::new("four eyes CA").expect("ca");
        std::fs::write(pki.join("ca.pem"), ca.cert_pem()).expect("write ca");
        issue(&ca, &pki, "coordinator", "coordinator", true);
        let mut policy = String::from("[identities]\n");
        for (name, path, roles, person) in PEOPLE {
            issue(&ca, &pki, name, path, false);
            let person = person.map(|p| format!(", person = \"{p}\"")).unwrap_or_default();
            policy.push_str(&format!(
                "\"spiffe://gprollout.test/{path}\" = {{ roles = {roles}{person} }}\n"
            ));
        }
        std::fs::write(dir.path().join("policy.toml"), policy).expect("write policy");
        let nobody = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr");
        let suppliers = dir.path().join("suppliers.toml");
        std::fs::write(
            &suppliers,
            format!(
                "[[supplier]]\nid = \"emis\"\nendpoint = \"localhost:{}\"\nidentity = \"spiffe://gprollout.test/supplier/emis\"\n",
                nobody.port()
            ),
        )
        .expect("write suppliers");
        let (practices, map) = reference_files();
        let config = rollout_coordinator::Config {
            tls: rollout_net::TlsFiles::from_pki_dir(&pki, "coordinator"),
            supplier_ca: pki.join("ca.pem"),
            supplier_crls: Vec::new(),
            policy: dir.path().join("policy.toml"),
            suppliers: rollout_coordinator::read_suppliers(&suppliers).expect("suppliers"),
            database_url: format!("sqlite://{}", dir.path().join("coordinator.db").display()),
            estate: (practices, map),
            heartbeat: std::time::Duration::from_millis(200),
            stale_after: std::time::Duration::from_secs(5),
            shutdown_grace: std::time::Duration::from_secs(10),
            budgets: Default::default(),
        };
        let coordinator = Running::start(|listener, health, stop| async move {
            rollout_coordinator::serve(
                config,
                rollout_net::server::Listeners::new(listener, Some(health)),
                async {
                    let _ = stop.await;
                },
            )
            .await
        })
        .await;
        World { dir, coordinator }
    }

    fn client(&self, who: &str) -> CoordinatorServiceClient<Channel> {
        CoordinatorServiceClient::new(channel_as(
            &self.dir.path().join("pki"),
            who,
            self.coordinator.addr,
        ))
    }

    async fn define(&self, key: &str, approvals: i32) {
        self.client("alice")
            .create_feature(pb::CreateFeatureRequest {
                feature_id: key.into(),
                feature: Some(pb::Feature {
                    fail_mode: pb::FailMode::Static.into(),
                    approvals_required: approvals,
                    ..Default::default()
                }),
                reason: "national programme".into(),
                request_id: String::new(),
            })
            .await
            .expect("create feature");
    }

    /// A national go-live of `key` asked for by `who`, waiting for approval.
    async fn go_live(&self, who: &str, key: &str) -> pb::Command {
        self.client(who)
            .schedule_go_live(pb::ScheduleGoLiveRequest {
                name: format!("features/{key}"),
                scope: Some(national()),
                reason: "the pilot went well".into(),
                ..Default::default()
            })
            .await
            .expect("go-live")
            .into_inner()
    }

    async fn approve(&self, who: &str, name: &str) -> Result<pb::Command, Status> {
        self.client(who)
            .approve_command(pb::ApproveCommandRequest {
                name: name.into(),
                comment: "checked".into(),
                request_id: String::new(),
            })
            .await
            .map(tonic::Response::into_inner)
    }
}

fn issue(ca: &DevCa, dir: &Path, name: &str, path: &str, server: bool) {
    let issued = ca
        .issue(&IdentitySpec::new(name, path, server), Validity::default())
        .expect("issue");
    std::fs::write(dir.join(format!("{name}.pem")), issued.cert_pem).expect("write");
    std::fs::write(dir.join(format!("{name}-key.pem")), issued.key_pem).expect("write");
}

/// The refusal's ErrorInfo names the person.
#[track_caller]
fn names_the_person(status: &Status, person: &str) {
    let info = status
        .get_error_details()
        .error_info()
        .cloned()
        .expect("ErrorInfo");
    assert_eq!(
        info.metadata.get("person").map(String::as_str),
        Some(person),
        "{status:?}"
    );
    assert!(status.message().contains("same person"), "{}", status.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_certificates_of_one_person_cannot_approve_each_others_commands() {
    let world = World::start().await;
    world.define(FEATURE, 1).await;

    // alice asks with her laptop's certificate and approves with her smartcard's: refused, and
    // the other way round.
    let asked = world.go_live("alice", FEATURE).await;
    assert_eq!(asked.requester_person, ALICE);
    let refused = world
        .approve("alice-smartcard", &asked.name)
        .await
        .expect_err("refused");
    assert_refused(
        &refused,
        Code::PermissionDenied,
        "SELF_APPROVAL",
        "alice's smartcard",
    );
    names_the_person(&refused, ALICE);
    let other_way = world.go_live("alice-smartcard", FEATURE).await;
    let refused = world
        .approve("alice", &other_way.name)
        .await
        .expect_err("refused");
    assert_refused(
        &refused,
        Code::PermissionDenied,
        "SELF_APPROVAL",
        "alice's laptop",
    );

    // Another person may.
    let approved = world.approve("bob", &asked.name).await.expect("bob approves");
    assert_eq!(approved.state(), pb::command::State::Dispatched);
    let approval = &approved.approvals[0];
    assert_eq!(
        (approval.approver.as_str(), approval.person.as_str()),
        (identity("bob").as_str(), BOB)
    );

    // Two approvals are two people: bob's second certificate does not count twice.
    let two = "online-consultation";
    world.define(two, 2).await;
    let asked = world.go_live("alice", two).await;
    world.approve("bob", &asked.name).await.expect("first approval");
    let refused = world
        .approve("bob-laptop", &asked.name)
        .await
        .expect_err("refused");
    assert_refused(
        &refused,
        Code::FailedPrecondition,
        "ALREADY_APPROVED",
        "bob's laptop",
    );
    names_the_person(&refused, BOB);
    let done = world.approve("carol", &asked.name).await.expect("second person");
    assert_eq!(done.state(), pb::command::State::Dispatched);

    // The audit log records the identity and the person, accepted and refused alike.
    let events = audit_events_of(&world).await;
    let approvals: Vec<(&str, pb::audit_event::Outcome)> = events
        .iter()
        .filter(|e| e.action.ends_with("/ApproveCommand"))
        .map(|e| (e.identity.as_str(), e.outcome()))
        .collect();
    let refused = pb::audit_event::Outcome::Refused;
    let accepted = pb::audit_event::Outcome::Accepted;
    let who = |name: &str, person: &str| format!("{} (person {person})", identity(name));
    assert_eq!(
        approvals,
        [
            (who("alice-smartcard", ALICE).as_str(), refused),
            (who("alice", ALICE).as_str(), refused),
            (who("bob", BOB).as_str(), accepted),
            (who("bob", BOB).as_str(), accepted),
            (who("bob-laptop", BOB).as_str(), refused),
            (who("carol", CAROL).as_str(), accepted),
        ]
    );
    world.coordinator.stop().await;
}

/// The coordinator's audit log, as the auditor reads it.
async fn audit_events_of(world: &World) -> Vec<pb::AuditEvent> {
    let mut auditor = world.client("auditor");
    let page = auditor
        .list_audit_events(pb::ListAuditEventsRequest {
            page_size: 1_000,
            ..Default::default()
        })
        .await
        .expect("audit")
        .into_inner();
    page.events
}
