//! A coordinator restored from an older backup: no supplier lifts anything, every supplier
//! shows DIVERGED, nothing new is dispatched, and recovering the missing commands from a
//! supplier brings everyone back to SYNCED with every halt intact. On SQLite and PostgreSQL.

use std::time::Duration;

use rollout_proto::v1::{
    self as pb, practice_feature::Reason as R, practice_feature::State as S, supplier::State as Sync,
};
use tonic::Code;

use crate::{
    cli::ctl,
    stack::{SUPPLIERS, Stack, audit_events, delivered, feature_live, halt, national, suppliers_until},
    support::{FEATURE, assert_refused, pg_database, practice_feature},
};

/// How the test takes a backup of the coordinator's database and puts it back.
enum Backup {
    /// Copy the SQLite file (the coordinator stopped), and copy it back over the live one.
    Sqlite(std::path::PathBuf),
    /// A copy of the PostgreSQL database; restoring points the coordinator at the copy.
    Postgres(crate::support::PgDb),
}

fn scope(target: pb::scope::Target) -> pb::Scope {
    pb::Scope { target: Some(target) }
}

/// Each supplier's live answer for one of its practices.
async fn answers(stack: &Stack) -> Vec<(S, R, i64)> {
    let mut out = Vec::new();
    for s in SUPPLIERS {
        let p = stack
            .backend(s)
            .get_practice_feature(pb::GetPracticeFeatureRequest {
                name: practice_feature(&stack.practice_of(s)),
                explain: true,
            })
            .await
            .expect("answer")
            .into_inner();
        out.push((p.state(), p.reason(), p.applied_sequence));
    }
    out
}

/// Polls ListSuppliers until every supplier is in `state`.
async fn every_supplier(stack: &Stack, state: Sync, within: Duration) -> Vec<pb::Supplier> {
    suppliers_until(stack, within, &format!("every supplier {state:?}"), |list| {
        list.iter().all(|s| s.state() == state)
    })
    .await
}

async fn restored_coordinator_lifts_nothing_and_recovers(postgres: Option<crate::support::PgDb>) {
    let mut stack = Stack::suppliers(None).await;
    stack.coordinator_url = postgres.as_ref().map(|db| db.url.clone());
    stack.start_coordinator().await;
    feature_live(&stack).await;
    let first = halt(&stack, scope(pb::scope::Target::Region("Y61".into()))).await;
    delivered(&stack, &first.name).await;

    // The backup, taken with the coordinator stopped.
    stack.stop_coordinator().await;
    let backup = match &postgres {
        Some(db) => Backup::Postgres(db.copy().await),
        None => {
            let copy = stack.dir.path().join("coordinator-backup.db");
            std::fs::copy(&stack.coordinator_db, &copy).expect("back up the coordinator");
            Backup::Sqlite(copy)
        }
    };
    stack.start_coordinator().await;

    // Ten more commands after the backup, delivered everywhere: halts each supplier would
    // lift if the coordinator resynchronised it to the older state.
    let mut later = Vec::new();
    for i in 0..10 {
        let target = match i {
            0 => pb::scope::Target::Supplier("tpp".into()),
            1 => pb::scope::Target::Supplier("emis".into()),
            2 => pb::scope::Target::Supplier("cegedim".into()),
            3 => pb::scope::Target::Supplier("microtest".into()),
            _ => pb::scope::Target::Practices(pb::scope::PracticeList {
                practices: vec![stack.practice_of(SUPPLIERS[i % 4])],
            }),
        };
        let h = halt(&stack, scope(target)).await;
        delivered(&stack, &h.name).await;
        later.push(h);
    }
    let last = later.last().expect("halts").sequence;
    let before = answers(&stack).await;
    assert!(
        before.iter().all(|a| *a == (S::Disabled, R::Halted, last)),
        "every supplier halted at sequence {last}: {before:?}"
    );

    // Restore the backup and start the coordinator on it.
    stack.stop_coordinator().await;
    let _copy = match backup {
        Backup::Sqlite(copy) => {
            for suffix in ["-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", stack.coordinator_db.display()));
            }
            std::fs::copy(&copy, &stack.coordinator_db).expect("restore the coordinator");
            None
        }
        Backup::Postgres(copy) => {
            stack.coordinator_url = Some(copy.url.clone());
            Some(copy)
        }
    };
    stack.start_coordinator().await;

    let diverged = every_supplier(&stack, Sync::Diverged, Duration::from_secs(30)).await;
    assert!(
        diverged
            .iter()
            .all(|s| s.applied_sequence == last && s.divergence.contains("log ends at")),
        "{diverged:?}"
    );
    assert_eq!(
        answers(&stack).await,
        before,
        "no supplier lifted anything or went back"
    );

    // Nothing new is dispatched while the suppliers hold commands the log does not.
    let refused = stack
        .client("alice")
        .halt_feature(pb::HaltFeatureRequest {
            name: format!("features/{FEATURE}"),
            scope: Some(national()),
            reason: "a halt after the restore".into(),
            ..Default::default()
        })
        .await
        .expect_err("refused while diverged");
    assert_refused(
        &refused,
        Code::FailedPrecondition,
        "SUPPLIER_DIVERGED",
        "halt while diverged",
    );
    assert!(
        refused.message().contains("rolloutctl recover"),
        "{}",
        refused.message()
    );

    // The operator looks first: a dry run names the ten halts and changes nothing.
    let dry = ctl(
        &stack,
        "alice",
        &[
            "recover",
            "--from",
            "emis",
            "--reason",
            "restored from backup",
            "--dry-run",
        ],
    )
    .await;
    let text = String::from_utf8_lossy(&dry.stdout);
    assert!(
        dry.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    assert!(text.contains("would recover 10 commands from emis"), "{text}");
    for h in &later {
        assert!(text.contains(h.name.trim_start_matches("commands/")), "{text}");
    }
    every_supplier(&stack, Sync::Diverged, Duration::from_secs(5)).await;

    let done = ctl(
        &stack,
        "alice",
        &["recover", "--from", "emis", "--reason", "restored from backup"],
    )
    .await;
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    assert!(
        String::from_utf8_lossy(&done.stdout).contains("recovered 10 commands from emis"),
        "{}",
        String::from_utf8_lossy(&done.stdout)
    );

    let synced = every_supplier(&stack, Sync::Synced, Duration::from_secs(30)).await;
    assert!(synced.iter().all(|s| s.target_sequence == last), "{synced:?}");
    // Every supplier's delivery of every recovered command settles (the others answer from
    // their own records), so watching one to the end completes.
    for h in [&later[0], later.last().expect("halts")] {
        let settled = delivered(&stack, &h.name).await;
        assert!(
            settled
                .deliveries
                .iter()
                .all(|d| d.state() == pb::delivery::State::Applied),
            "{settled:?}"
        );
    }
    assert_eq!(answers(&stack).await, before, "every halt intact after recovery");
    let recovered = stack
        .client("viewer")
        .get_command(pb::GetCommandRequest {
            name: later[0].name.clone(),
        })
        .await
        .expect("a recovered command is the coordinator's again")
        .into_inner();
    assert_eq!(
        (recovered.sequence, recovered.state()),
        (later[0].sequence, pb::command::State::Dispatched)
    );

    // Dispatch works again, and the recovery is in the audit log.
    let next = halt(&stack, national()).await;
    assert_eq!(next.sequence, last + 1);
    delivered(&stack, &next.name).await;
    let events = audit_events(&stack).await;
    assert!(
        events
            .iter()
            .any(|e| e.action.ends_with("/RecoverCommands") && e.reason.contains("restored from backup")),
        "the recovery is audited"
    );
    stack.stop().await;
    if let Some(copy) = _copy {
        copy.drop().await;
    }
    if let Some(db) = postgres {
        db.drop().await;
    }
}

#[tokio::test]
async fn a_coordinator_restored_from_an_older_sqlite_backup_lifts_nothing_and_recovers() {
    restored_coordinator_lifts_nothing_and_recovers(None).await;
}

#[tokio::test]
async fn a_coordinator_restored_from_an_older_postgres_backup_lifts_nothing_and_recovers() {
    let Some(db) = pg_database().await else { return };
    restored_coordinator_lifts_nothing_and_recovers(Some(db)).await;
}
