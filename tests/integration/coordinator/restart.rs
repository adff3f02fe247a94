//! A coordinator restart, and a store from before migration 3.

/// What a viewer sees of the coordinator: every command (page by page), each read again
/// with GetCommand, and the suppliers (without what depends on contact since the start).
use rollout_proto::v1::{self as pb, practice_feature::Reason as R, practice_feature::State as S};
use tonic::Code;

use super::answer;
use crate::{
    stack::{SUPPLIERS, Stack, delivered, feature_live, halt, national},
    support::{assert_refused, feature_name},
};

async fn everything(stack: &Stack) -> (Vec<pb::Command>, Vec<pb::Command>, Vec<pb::Supplier>) {
    let mut viewer = stack.client("viewer");
    let mut commands = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = viewer
            .list_commands(pb::ListCommandsRequest {
                page_size: 7,
                page_token,
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        commands.extend(page.commands);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    // GetCommand's own annotations for approvers (lifted halts, a pending command's preview,
    // judged at the time asked) are not in the list: compared without them.
    let mut got = Vec::new();
    for c in &commands {
        let shown = viewer
            .get_command(pb::GetCommandRequest { name: c.name.clone() })
            .await
            .expect("get")
            .into_inner();
        got.push(pb::Command {
            lifted_halts: Vec::new(),
            preview: None,
            ..shown
        });
    }
    let suppliers = viewer
        .list_suppliers(pb::ListSuppliersRequest::default())
        .await
        .expect("suppliers")
        .into_inner()
        .suppliers
        .into_iter()
        .map(|s| pb::Supplier {
            state: 0,
            last_contact_time: None,
            last_error: String::new(),
            feature_counts: Vec::new(),
            counts_time: None,
            counts_sequence: 0,
            ..s
        })
        .collect();
    (commands, got, suppliers)
}

async fn approved(stack: &Stack, name: &str) -> pb::Command {
    stack
        .client("bob")
        .approve_command(pb::ApproveCommandRequest {
            name: name.to_owned(),
            comment: String::new(),
            request_id: String::new(),
        })
        .await
        .expect("approve")
        .into_inner()
}

async fn resume(stack: &Stack, halt: &str) -> pb::Command {
    stack
        .client("alice")
        .resume_feature(pb::ResumeFeatureRequest {
            name: feature_name(),
            halts: vec![halt.to_owned()],
            reason: "later".into(),
            request_id: String::new(),
            dry_run: false,
        })
        .await
        .expect("resume")
        .into_inner()
}

#[tokio::test]
async fn a_coordinator_restart_loses_nothing() {
    let mut stack = Stack::start(None).await;
    feature_live(&stack).await;
    // A history of halts, most of them lifted: retired commands are read from the store.
    let mut lifted = Vec::new();
    for _ in 0..6 {
        let h = halt(&stack, national()).await;
        delivered(&stack, &h.name).await;
        let r = resume(&stack, &h.name).await;
        delivered(&stack, &approved(&stack, &r.name).await.name).await;
        lifted.push(h);
    }
    let h = halt(&stack, national()).await;
    delivered(&stack, &h.name).await;
    let pending = resume(&stack, &h.name).await;
    let before = everything(&stack).await;
    assert_eq!(
        before.0.len(),
        1 + 1 + 6 * 2 + 2,
        "definition, go-live, 6 halts lifted, the last"
    );
    assert_eq!(before.0, before.1, "GetCommand answers as the list does");
    assert!(
        before
            .1
            .iter()
            .any(|c| c.name == lifted[0].name && c.deliveries.len() == SUPPLIERS.len()),
        "a lifted halt answers with its deliveries"
    );
    stack.stop_coordinator().await;
    stack.start_coordinator().await;
    let after = everything(&stack).await;
    assert_eq!(after, before, "the restarted coordinator answers as before");
    // The pending resume can still be approved, and takes the next sequence.
    let approved = approved(&stack, &pending.name).await;
    assert_eq!(approved.sequence, h.sequence + 1);
    delivered(&stack, &approved.name).await;
    assert_eq!(
        answer(&stack, "microtest", &stack.practice_of("microtest")).await,
        (S::Enabled, R::Live)
    );
    stack.stop().await;
}

/// Makes the coordinator's SQLite store one written before migration 3: its columns and
/// indexes gone, the migration not yet applied.
async fn before_migration_3(db: &std::path::Path) {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .expect("connect");
    for sql in [
        "DROP INDEX commands_issue_order",
        "DROP INDEX commands_feature_order",
        "DROP INDEX commands_state_order",
        "DROP INDEX commands_in_force",
        "DROP INDEX commands_action",
        "DROP INDEX deliveries_state",
        "ALTER TABLE commands DROP COLUMN feature",
        "ALTER TABLE commands DROP COLUMN action",
        "ALTER TABLE commands DROP COLUMN effective",
        "ALTER TABLE deliveries DROP COLUMN state",
        "DELETE FROM _sqlx_migrations WHERE version = 3",
    ] {
        sqlx::query(sql).execute(&mut conn).await.expect(sql);
    }
    conn.close().await.ok();
}

#[tokio::test]
async fn a_coordinator_store_from_before_migration_3_is_filled_in_at_start_and_answers_as_before() {
    let mut stack = Stack::start(None).await;
    feature_live(&stack).await;
    let lifted = halt(&stack, national()).await;
    let kept = halt(&stack, national()).await;
    delivered(&stack, &kept.name).await;
    let r = resume(&stack, &lifted.name).await;
    delivered(&stack, &approved(&stack, &r.name).await.name).await;
    let before = everything(&stack).await;
    stack.stop_coordinator().await;
    before_migration_3(&stack.coordinator_db).await;
    stack.start_coordinator().await;
    let after = everything(&stack).await;
    assert_eq!(after, before, "the upgraded store answers as before");
    // What is in force was worked out again: the lifted halt cannot be lifted twice, the other
    // can be lifted.
    let again = stack
        .client("alice")
        .resume_feature(pb::ResumeFeatureRequest {
            name: feature_name(),
            halts: vec![lifted.name.clone()],
            reason: "again".into(),
            request_id: String::new(),
            dry_run: false,
        })
        .await
        .expect_err("already lifted");
    assert_refused(
        &again,
        Code::FailedPrecondition,
        "HALT_ALREADY_LIFTED",
        "lifted twice",
    );
    assert!(again.message().contains(&r.name), "{}", again.message());
    let r = resume(&stack, &kept.name).await;
    delivered(&stack, &approved(&stack, &r.name).await.name).await;
    assert_eq!(
        answer(&stack, "microtest", &stack.practice_of("microtest")).await,
        (S::Enabled, R::Live)
    );
    stack.stop().await;
}
