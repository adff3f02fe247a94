//! An audit trail that answers questions: accepted events name their command and what it
//! covers; ListAuditEvents says when more events exist, at the coordinator and for a
//! supplier's log read through it; and `rolloutctl audit verify --supplier` verifies a
//! supplier's chain as the supplier wrote it, and finds it broken once a row is changed.

use rollout_proto::v1 as pb;
use tonic::Code;

use crate::{
    cli::{ctl, text},
    stack::{Stack, audit_events, delivered, feature_live},
    support::{FEATURE, assert_refused},
};

fn icb(code: &str) -> pb::Scope {
    pb::Scope {
        target: Some(pb::scope::Target::Icb(code.into())),
    }
}

/// Every page of a log through the coordinator, `page_size` at a time; checks that each page
/// but the last says more events exist.
async fn paged(stack: &Stack, supplier: &str, page_size: i32) -> Vec<pb::AuditEvent> {
    let mut auditor = stack.client("auditor");
    let (mut all, mut page_token) = (Vec::new(), String::new());
    loop {
        let page = auditor
            .list_audit_events(pb::ListAuditEventsRequest {
                page_size,
                page_token,
                supplier: supplier.into(),
                ..Default::default()
            })
            .await
            .expect("audit page")
            .into_inner();
        let full = page.events.len() == usize::try_from(page_size).expect("size");
        all.extend(page.events);
        if page.next_page_token.is_empty() {
            return all;
        }
        assert!(full, "a page that says more exist is full ({supplier})");
        page_token = page.next_page_token;
    }
}

#[tokio::test]
async fn accepted_halts_and_resumes_name_their_command_and_scope() {
    let stack = Stack::start(None).await;
    feature_live(&stack).await;
    let mut alice = stack.client("alice");
    let halt = alice
        .halt_feature(pb::HaltFeatureRequest {
            name: format!("features/{FEATURE}"),
            scope: Some(icb("QN7")),
            reason: "QN7 asked for time".into(),
            ..Default::default()
        })
        .await
        .expect("halt")
        .into_inner();
    let resume = alice
        .resume_feature(pb::ResumeFeatureRequest {
            name: format!("features/{FEATURE}"),
            halts: vec![halt.name.clone()],
            reason: "QN7 is ready".into(),
            ..Default::default()
        })
        .await
        .expect("resume")
        .into_inner();
    stack
        .client("bob")
        .approve_command(pb::ApproveCommandRequest {
            name: resume.name.clone(),
            comment: "checked".into(),
            request_id: String::new(),
        })
        .await
        .expect("approve");
    delivered(&stack, &resume.name).await;

    let events = audit_events(&stack).await;
    // The last accepted event of each kind: the halt, the resume and its approval.
    let named = |action: &str| {
        let e = events
            .iter()
            .rev()
            .find(|e| e.action.ends_with(action) && e.outcome() == pb::audit_event::Outcome::Accepted)
            .unwrap_or_else(|| panic!("no accepted {action} in {events:?}"));
        (e.command.clone(), e.scope.clone())
    };
    let lifts = format!("lifts {}", halt.name);
    assert_eq!(named("/HaltFeature"), (halt.name.clone(), "icb:QN7".into()));
    assert_eq!(named("/ResumeFeature"), (resume.name.clone(), lifts.clone()));
    assert_eq!(named("/ApproveCommand"), (resume.name.clone(), lifts.clone()));
    assert_eq!(named("/CreateFeature").1, format!("defines features/{FEATURE}"));

    // The supplier's own log names the commands it applied, read through the coordinator.
    let emis = paged(&stack, "suppliers/emis", 1_000).await;
    let applied: Vec<(String, String)> = emis
        .iter()
        .filter(|e| e.action.ends_with("/ApplyCommand"))
        .map(|e| (e.command.clone(), e.scope.clone()))
        .collect();
    assert!(
        applied.contains(&(halt.name.clone(), "icb:QN7".into())),
        "{applied:?}"
    );
    assert!(applied.contains(&(resume.name.clone(), lifts)), "{applied:?}");
    stack.stop().await;
}

#[tokio::test]
async fn audit_pages_say_when_more_events_exist() {
    let stack = Stack::start(None).await;
    feature_live(&stack).await;
    let whole = paged(&stack, "", 1_000).await;
    assert!(whole.len() >= 3, "{whole:?}");
    let in_twos = paged(&stack, "", 2).await;
    assert_eq!(in_twos, whole, "pages of two hold the whole log");
    let emis = paged(&stack, "suppliers/emis", 1_000).await;
    assert_eq!(paged(&stack, "suppliers/emis", 1).await, emis);
    assert!(
        emis.len() >= 2,
        "the supplier applied the definition and the go-live"
    );

    // rolloutctl says when it stopped before the end, and where to go on from.
    let first = ctl(&stack, "auditor", &["audit", "list", "--limit", "2"]).await;
    assert!(first.status.success(), "{}", text(&first));
    let more = format!(
        "more events follow: rolloutctl audit list --after {}",
        whole[1].sequence
    );
    assert!(text(&first).contains(&more), "{}", text(&first));
    let all = ctl(&stack, "auditor", &["audit", "list", "--limit", "1000"]).await;
    assert!(!text(&all).contains("more events follow"), "{}", text(&all));
    let supplier = ctl(
        &stack,
        "auditor",
        &["audit", "list", "--supplier", "emis", "--limit", "1"],
    )
    .await;
    assert!(
        text(&supplier).contains("more events follow: rolloutctl audit list --supplier emis --after 1"),
        "{}",
        text(&supplier)
    );
    stack.stop().await;
}

#[tokio::test]
async fn a_suppliers_chain_is_verified_through_rolloutctl() {
    let mut stack = Stack::start(None).await;
    feature_live(&stack).await;
    let ok = ctl(&stack, "auditor", &["audit", "verify", "--supplier", "emis"]).await;
    assert!(
        ok.status.success() && text(&ok).contains("suppliers/emis audit chain verified"),
        "{}",
        text(&ok)
    );
    let viewer = ctl(&stack, "viewer", &["audit", "verify", "--supplier", "emis"]).await;
    assert_eq!(viewer.status.code(), Some(1), "{}", text(&viewer));
    assert!(text(&viewer).contains("ROLE_REQUIRED"), "{}", text(&viewer));
    let unknown = stack
        .client("auditor")
        .list_audit_events(pb::ListAuditEventsRequest {
            supplier: "suppliers/nobody".into(),
            ..Default::default()
        })
        .await
        .expect_err("unknown supplier");
    assert_refused(
        &unknown,
        Code::NotFound,
        "SUPPLIER_NOT_FOUND",
        "an unknown supplier",
    );

    // A row changed in the supplier's own store breaks its chain, as rolloutctl reports.
    stack.stop_supplier("emis").await;
    let db = &stack.suppliers["emis"].0.database;
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .expect("open the supplier's database");
    let changed = sqlx::query("UPDATE audit SET reason = 'nothing to see here' WHERE sequence = 2")
        .execute(&pool)
        .await
        .expect("tamper");
    assert_eq!(changed.rows_affected(), 1);
    pool.close().await;
    stack.start_supplier("emis").await;
    let broken = ctl(&stack, "auditor", &["audit", "verify", "--supplier", "emis"]).await;
    assert_eq!(broken.status.code(), Some(2), "{}", text(&broken));
    assert!(
        text(&broken).contains("suppliers/emis audit chain BROKEN") && text(&broken).contains("event 2"),
        "{}",
        text(&broken)
    );
    stack.stop().await;
}
