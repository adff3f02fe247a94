//! What the operator reads at 3 a.m.: `status` names the feature it counts and how fresh its
//! counts are, and the halts a supplier has not applied; `feature list` shows the control TTL;
//! a dry run names the practices a supplier without an endpoint will not reach; `halt --wait`
//! prints a name once or one JSON document; `verify` says why a halt is not verified; a wait
//! that times out names the suppliers that did not answer and what to do next, and a supplier
//! the coordinator cannot reach is not blamed on the coordinator.

use std::time::Duration;

use rollout_proto::v1 as pb;
use serde_json::Value;

use super::{ctl, ctl_json, text};
use crate::{
    stack::{SUPPLIERS, Stack, delivered, feature_live, halt, suppliers_until},
    support::FEATURE,
};

/// A second feature, fail-closed with a control TTL, defined but never live.
const SECOND: &str = "second-feature";

/// The line of a table that starts with `first`.
#[track_caller]
fn row<'t>(table: &'t str, first: &str) -> &'t str {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(first))
        .unwrap_or_else(|| panic!("no {first} row in:\n{table}"))
}

#[tokio::test]
async fn status_names_the_feature_it_counts_and_how_fresh_its_counts_are() {
    let mut stack = Stack::start(None).await;
    feature_live(&stack).await;
    let create = [
        "feature",
        "create",
        SECOND,
        "--fail-mode",
        "closed",
        "--control-ttl",
        "10m",
        "--reason",
        "r",
    ];
    ctl_json(&stack, "alice", &create).await;
    let listed = ctl(&stack, "viewer", &["feature", "list"]).await;
    let listed = text(&listed);
    assert!(row(&listed, FEATURE).contains(" - "), "{listed}");
    assert!(row(&listed, SECOND).contains(" 10m "), "{listed}");

    let halted = ctl_json(
        &stack,
        "alice",
        &["halt", FEATURE, "--scope", "national", "--reason", "r", "--wait"],
    )
    .await;
    // Until every supplier's next heartbeat, its counts are those from before the halt.
    suppliers_until(
        &stack,
        Duration::from_secs(30),
        "counted after the halt",
        |list| {
            list.iter()
                .all(|s| s.counts_sequence == s.target_sequence && s.feature_counts.len() == 2)
        },
    )
    .await;

    let status = ctl_json(&stack, "viewer", &["status", "--feature", FEATURE]).await;
    let impact = &halted["command"]["impact"]["suppliers"];
    for s in status["suppliers"].as_array().expect("suppliers") {
        let counts = s["featureCounts"].as_array().expect("counts");
        assert_eq!(counts.len(), 1, "{FEATURE}'s counts alone: {s}");
        assert_eq!(counts[0]["feature"], format!("features/{FEATURE}"));
        let in_scope = impact
            .as_array()
            .and_then(|i| i.iter().find(|i| i["supplier"] == s["name"]))
            .map(|i| i["practices"].clone());
        assert_eq!(Some(counts[0]["halted"].clone()), in_scope, "{s}");
        assert!(s["countsTime"].is_string(), "{s}");
    }
    let table = text(&ctl(&stack, "viewer", &["status", "--feature", FEATURE]).await);
    assert!(
        table.contains(&format!("\nfeatures/{FEATURE}: practices per supplier")),
        "{table}"
    );
    assert!(!table.contains(SECOND), "{table}");
    let counted = |table: &str| {
        row(
            table.split("practices per supplier").nth(1).expect("counts"),
            "tpp",
        )
        .to_owned()
    };
    assert!(counted(&table).contains("(up to date)"), "{table}");
    let every = text(&ctl(&stack, "viewer", &["status"]).await);
    assert!(
        every.contains(&format!("\nfeatures/{SECOND}: practices per supplier")),
        "{every}"
    );

    // A supplier out of contact keeps its old counts: the status says which commands they miss.
    let before: i64 = halted["command"]["sequence"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("the halt's sequence");
    stack.stop_supplier("tpp").await;
    let icb = pb::Scope {
        target: Some(pb::scope::Target::Icb("QN7".into())),
    };
    halt(&stack, icb).await;
    let table = text(&ctl(&stack, "viewer", &["status", "--feature", FEATURE]).await);
    assert!(
        counted(&table).contains(&format!(
            "at sequence {before}: sequence {} not counted yet",
            before + 1
        )),
        "{table}"
    );
    let unknown = ctl(&stack, "viewer", &["status", "--feature", "no-such-feature"]).await;
    assert_eq!(unknown.status.code(), Some(1), "{}", text(&unknown));
    assert!(text(&unknown).contains("features/no-such-feature does not exist"));
    stack.stop().await;
}

#[tokio::test]
async fn halt_wait_prints_the_name_once_and_json_as_one_document() {
    let stack = Stack::start(None).await;
    feature_live(&stack).await;
    let wait = |scope: &'static str, output: &'static str| {
        let stack = &stack;
        async move {
            let args = [
                "--output", output, "halt", FEATURE, "--scope", scope, "--reason", "r", "--wait",
            ];
            let out = ctl(stack, "alice", &args).await;
            assert!(out.status.success(), "{}", text(&out));
            String::from_utf8(out.stdout).expect("utf-8")
        }
    };
    let name = wait("icb:QN7", "name").await;
    assert_eq!(name.lines().count(), 1, "{name}");
    assert!(name.starts_with("commands/"), "{name}");

    let json = wait("region:Y60", "json").await;
    let doc: Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("not one JSON document ({e}):\n{json}"));
    assert!(
        doc["command"]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("commands/")),
        "{doc}"
    );
    let deliveries = doc["command"]["deliveries"].as_array().expect("deliveries");
    assert_eq!(deliveries.len(), SUPPLIERS.len(), "{doc}");
    assert!(deliveries.iter().all(|d| d["state"] == "STATE_APPLIED"), "{doc}");
    assert_eq!(doc["verification"]["verified"], true, "{doc}");
    assert!(doc["timeToVerifiedMs"].is_u64(), "{doc}");
    stack.stop().await;
}

#[tokio::test]
async fn verify_says_when_a_halt_was_lifted_or_covers_no_practice() {
    let stack = Stack::start(None).await;
    feature_live(&stack).await;
    let icb = pb::Scope {
        target: Some(pb::scope::Target::Icb("QN7".into())),
    };
    let h = halt(&stack, icb).await;
    let resume = stack
        .client("alice")
        .resume_feature(pb::ResumeFeatureRequest {
            name: format!("features/{FEATURE}"),
            halts: vec![h.name.clone()],
            reason: "r".into(),
            ..Default::default()
        })
        .await
        .expect("resume")
        .into_inner();
    let args = ["approve", &resume.name, "--yes"];
    let approved = ctl(&stack, "bob", &args).await;
    assert!(approved.status.success(), "{}", text(&approved));
    delivered(&stack, &resume.name).await;
    let lifted = ctl(&stack, "viewer", &["verify", &h.name]).await;
    assert_eq!(lifted.status.code(), Some(2), "{}", text(&lifted));
    assert!(
        text(&lifted).contains(&format!("NOT VERIFIED: lifted by {}", resume.name)),
        "{}",
        text(&lifted)
    );

    let nowhere = [
        "--output",
        "name",
        "halt",
        FEATURE,
        "--scope",
        "practices:Y99999",
        "--reason",
        "r",
        "--allow-unknown-practices",
        "--allow-empty-scope",
    ];
    let empty = ctl(&stack, "alice", &nowhere).await;
    assert!(empty.status.success(), "{}", text(&empty));
    let name = String::from_utf8_lossy(&empty.stdout).trim().to_owned();
    let verified = ctl(&stack, "viewer", &["verify", &name]).await;
    assert_eq!(verified.status.code(), Some(2), "{}", text(&verified));
    assert!(
        text(&verified).contains("NOT VERIFIED: the scope covers no practice"),
        "{}",
        text(&verified)
    );
    stack.stop().await;
}

#[tokio::test]
async fn a_wait_that_times_out_names_the_suppliers_that_did_not_answer() {
    let mut stack = Stack::start(None).await;
    feature_live(&stack).await;
    stack.stop_supplier("tpp").await;
    let args = [
        "halt",
        FEATURE,
        "--scope",
        "icb:QN7",
        "--reason",
        "r",
        "--wait",
        "--timeout",
        "2s",
    ];
    let out = ctl(&stack, "alice", &args).await;
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(3), "{said}");
    let unanswered = said
        .split("have not answered: ")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .unwrap_or_else(|| panic!("no suppliers named:\n{said}"));
    assert!(unanswered.contains("tpp"), "{said}");
    assert!(said.contains("Next: `rolloutctl status`"), "{said}");
    assert!(said.contains("A supplier does not acknowledge"), "{said}");

    // A command waiting for approval: the wait says so, and who must act.
    let go_live = [
        "go-live", FEATURE, "--scope", "icb:QN7", "--reason", "r", "--output", "name",
    ];
    let out = ctl(&stack, "alice", &go_live).await;
    assert!(out.status.success(), "{}", text(&out));
    let pending = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let out = ctl(&stack, "viewer", &["watch", &pending, "--timeout", "1s"]).await;
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(3), "{said}");
    assert!(said.contains("waiting for approval (0 of 1 given)"), "{said}");
    assert!(said.contains("still waiting for approval"), "{said}");

    // The coordinator answers for the supplier it cannot reach: the hint blames the supplier.
    let practice = stack.practice_of("tpp");
    let show = ["practice", "show", &practice, "--feature", FEATURE];
    let out = ctl(&stack, "viewer", &show).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("hint: the coordinator is up but could not reach that supplier"),
        "{}",
        text(&out)
    );
    stack.stop().await;
}

#[tokio::test]
async fn status_names_the_halts_a_supplier_has_not_applied() {
    let mut stack = Stack::start(None).await;
    feature_live(&stack).await;
    suppliers_until(&stack, Duration::from_secs(30), "synced", |list| {
        list.iter().all(|s| s.applied_sequence == s.target_sequence)
    })
    .await;
    let synced = text(&ctl(&stack, "viewer", &["status"]).await);
    assert!(
        !synced.contains("has not applied"),
        "nothing when none:\n{synced}"
    );

    stack.stop_supplier("tpp").await;
    let icb = pb::Scope {
        target: Some(pb::scope::Target::Icb("QN7".into())),
    };
    let h = halt(&stack, icb).await;
    suppliers_until(&stack, Duration::from_secs(30), "applied by the others", |list| {
        list.iter()
            .all(|s| s.name == "suppliers/tpp" || s.applied_sequence == s.target_sequence)
    })
    .await;
    let out = ctl(&stack, "viewer", &["status"]).await;
    let table = text(&out);
    assert!(out.status.success(), "{table}");
    let section = table
        .split("\ntpp has not applied 1 halt yet")
        .nth(1)
        .unwrap_or_else(|| panic!("no section for tpp:\n{table}"));
    let id = h.name.trim_start_matches("commands/");
    let line = section
        .lines()
        .find(|l| l.contains(id))
        .unwrap_or_else(|| panic!("{id} not named:\n{table}"));
    assert!(line.contains(FEATURE), "{line}");
    assert!(line.contains(&format!("sequence {} ", h.sequence)), "{line}");
    assert!(line.contains(" issued ") && line.ends_with(" ago"), "{line}");
    assert!(section.contains("rolloutctl verify COMMAND"), "{table}");
    assert!(section.contains("\"A supplier does not acknowledge\""), "{table}");
    assert!(!section.contains("and 1 more"), "{table}");
    for other in ["emis", "cegedim", "microtest"] {
        assert!(!table.contains(&format!("{other} has not applied")), "{table}");
    }
    let json = ctl_json(&stack, "viewer", &["status"]).await;
    let tpp = json["suppliers"]
        .as_array()
        .and_then(|l| l.iter().find(|s| s["name"] == "suppliers/tpp"))
        .unwrap_or_else(|| panic!("no tpp: {json}"));
    assert_eq!(tpp["unappliedHaltCount"], 1, "{tpp}");
    assert_eq!(tpp["unappliedHalts"][0]["command"], h.name.as_str(), "{tpp}");

    stack.start_supplier("tpp").await;
    suppliers_until(&stack, Duration::from_secs(30), "applied by tpp", |list| {
        list.iter().all(|s| s.applied_sequence == s.target_sequence)
    })
    .await;
    let applied = text(&ctl(&stack, "viewer", &["status"]).await);
    assert!(!applied.contains("has not applied"), "{applied}");
    stack.stop().await;
}

#[tokio::test]
async fn a_dry_run_names_the_practices_a_supplier_without_an_endpoint_will_not_reach() {
    let mut stack = Stack::suppliers(None).await;
    stack.unconfigured = vec!["microtest"];
    stack.start_coordinator().await;
    let create = [
        "feature",
        "create",
        FEATURE,
        "--fail-mode",
        "static",
        "--reason",
        "r",
    ];
    ctl_json(&stack, "alice", &create).await;
    let n = stack.expected("microtest", &rollout_core::Scope::National);
    let dry_run = |scope: &'static str| {
        let stack = &stack;
        async move {
            let args = ["halt", FEATURE, "--scope", scope, "--reason", "r", "--dry-run"];
            let out = ctl(stack, "alice", &args).await;
            assert!(out.status.success(), "{}", text(&out));
            String::from_utf8(out.stdout).expect("utf-8")
        }
    };
    let national = dry_run("national").await;
    assert!(
        row(&national, "impact").contains(&format!(", microtest {n} (not delivered), ")),
        "{national}"
    );
    assert_eq!(
        row(&national, "unreached"),
        format!(
            "unreached {n} practices in scope will not be reached: microtest not delivered: \
             the coordinator has no endpoint for it"
        ),
        "{national}"
    );
    let tpp = dry_run("supplier:tpp").await;
    assert!(
        !tpp.contains("not delivered") && !tpp.contains("unreached"),
        "{tpp}"
    );
    stack.stop().await;
}
