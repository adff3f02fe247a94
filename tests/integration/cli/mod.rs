//! The real `rolloutctl` binary against a real coordinator and four suppliers: the operator's
//! workflow here; `exits.rs` the exit statuses; `output.rs` what status, feature list,
//! practice show, halt --wait, watch and verify print; `confirm.rs` the question asked at a
//! terminal (a real pseudo-terminal); `hints.rs` what a refused call or a failed connection
//! says to do, against `stub.rs`, a stand-in coordinator over real mutual TLS.

mod confirm;
mod exits;
mod hints;
mod output;
mod stub;

use std::process::Output;

use rollout_proto::v1 as pb;
use serde_json::Value;

use crate::{
    stack::{SUPPLIERS, Stack},
    support::{FEATURE, binary},
};

/// Runs `rolloutctl` as `who` against the stack's coordinator.
pub async fn ctl(stack: &Stack, who: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(binary("rolloutctl"))
        .arg("--coordinator")
        .arg(format!("localhost:{}", stack.coordinator_addr.port()))
        .arg("--pki-dir")
        .arg(&stack.pki)
        .args(["--as", who])
        .args(args)
        .output()
        .await
        .expect("run rolloutctl")
}

/// Runs `rolloutctl --output json`, expects success, parses standard output.
pub async fn ctl_json(stack: &Stack, who: &str, args: &[&str]) -> Value {
    let mut all = vec!["--output", "json"];
    all.extend_from_slice(args);
    let out = ctl(stack, who, &all).await;
    assert!(
        out.status.success(),
        "rolloutctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "rolloutctl {args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Standard output and standard error together.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A command's id from its JSON.
pub fn id(command: &Value) -> String {
    command["name"]
        .as_str()
        .expect("name")
        .trim_start_matches("commands/")
        .to_owned()
}

#[tokio::test]
async fn the_operator_workflow_through_rolloutctl() {
    let stack = Stack::start(Some("end of year freeze")).await;

    let feature = ctl_json(
        &stack,
        "alice",
        &[
            "feature",
            "create",
            FEATURE,
            "--fail-mode",
            "static",
            "--reason",
            "national programme",
        ],
    )
    .await;
    assert_eq!(feature["name"], format!("features/{FEATURE}"));
    let list = ctl_json(&stack, "viewer", &["feature", "list"]).await;
    assert_eq!(list["features"][0]["failMode"], "FAIL_MODE_STATIC");

    // Go-live: pending until bob approves; alice cannot approve her own.
    let go = ctl_json(
        &stack,
        "alice",
        &["go-live", FEATURE, "--scope", "national", "--reason", "go live"],
    )
    .await;
    assert_eq!(go["state"], "STATE_PENDING_APPROVAL");
    let own = ctl(&stack, "alice", &["approve", &id(&go)]).await;
    assert!(!own.status.success());
    assert!(text(&own).contains("SELF_APPROVAL"), "{}", text(&own));
    // The hint asks for another person, not for another role alice already holds.
    assert!(
        text(&own).contains("so a different person must approve it"),
        "{}",
        text(&own)
    );
    assert!(!text(&own).contains("holds the role"), "{}", text(&own));
    let approved = ctl_json(&stack, "bob", &["approve", &id(&go), "--comment", "agreed"]).await;
    assert_eq!(approved["state"], "STATE_DISPATCHED");

    // Watching the go-live ends with status 2: cegedim's freeze rejected it.
    let watch = ctl(&stack, "viewer", &["watch", &id(&go), "--timeout", "30s"]).await;
    assert_eq!(watch.status.code(), Some(2), "{}", text(&watch));
    assert!(text(&watch).contains("cegedim"), "{}", text(&watch));
    let status = ctl_json(&stack, "viewer", &["status"]).await;
    let states: Vec<(String, String)> = status["suppliers"]
        .as_array()
        .expect("suppliers")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or_default().to_owned(),
                s["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert!(
        states.contains(&("suppliers/cegedim".into(), "STATE_REJECTED".into())),
        "{states:?}"
    );
    assert_eq!(states.len(), SUPPLIERS.len());

    // halt --wait: every supplier applies it, it is verified, and the time is printed.
    let halted = ctl(
        &stack,
        "alice",
        &[
            "halt",
            FEATURE,
            "--scope",
            "national",
            "--reason",
            "paused",
            "--wait",
            "--timeout",
            "60s",
        ],
    )
    .await;
    let halted_text = text(&halted);
    assert!(halted.status.success(), "{halted_text}");
    assert!(halted_text.contains("VERIFIED"), "{halted_text}");
    assert!(halted_text.contains("time to a verified halt:"), "{halted_text}");
    let commands = ctl_json(&stack, "viewer", &["commands", "list", "--feature", FEATURE]).await;
    let newest = &commands["commands"][0];
    assert_eq!(newest["halt"]["scope"]["national"], serde_json::json!({}));
    let halt_id = id(newest);
    let verify = ctl_json(&stack, "viewer", &["verify", &halt_id]).await;
    assert_eq!(verify["verified"], true);
    let shown = ctl_json(&stack, "viewer", &["commands", "show", &halt_id]).await;
    assert_eq!(shown["deliveries"].as_array().map(Vec::len), Some(4));

    let practice = stack.practice_of("tpp");
    let show = ["practice", "show", &practice, "--feature", FEATURE];
    let answer = ctl_json(&stack, "viewer", &show).await;
    assert_eq!(answer["state"], "STATE_DISABLED");
    assert_eq!(answer["reason"], "REASON_HALTED");
    let table = ctl(&stack, "viewer", &show).await;
    assert!(
        text(&table).contains("disabled: halted by command"),
        "{}",
        text(&table)
    );

    // Resume and cancel.
    let resume = ctl_json(
        &stack,
        "alice",
        &[
            "resume",
            FEATURE,
            "--halt",
            &halt_id,
            "--reason",
            "consulted",
            "--dry-run",
        ],
    )
    .await;
    assert_eq!(resume["state"], "STATE_DRY_RUN");
    assert_eq!(resume["impact"]["practices"], 6_300);
    let resume = ctl_json(
        &stack,
        "alice",
        &["resume", FEATURE, "--halt", &halt_id, "--reason", "consulted"],
    )
    .await;
    // The approver's view: the halt it lifts, with its scope, and what would turn on where.
    let shown = ctl(&stack, "bob", &["commands", "show", &id(&resume)]).await;
    let shown = text(&shown);
    assert!(
        shown.contains(&format!("lifts     {halt_id}")) && shown.contains(": national; by "),
        "{shown}"
    );
    assert!(
        shown.contains("preview   ") && shown.contains(" practices would turn on, "),
        "{shown}"
    );
    assert!(shown.contains("emis"), "{shown}");
    let cancelled = ctl_json(&stack, "bob", &["cancel", &id(&resume), "--reason", "not yet"]).await;
    assert_eq!(cancelled["state"], "STATE_CANCELLED");

    // Audit: listed and verified by the auditor; refused to a viewer.
    let audit = ctl_json(&stack, "auditor", &["audit", "list"]).await;
    assert!(
        audit["events"].as_array().is_some_and(|e| e.len() >= 6),
        "{audit}"
    );
    let verified = ctl(&stack, "auditor", &["audit", "verify"]).await;
    assert!(
        verified.status.success() && text(&verified).contains("audit chain verified"),
        "{}",
        text(&verified)
    );
    let refused = ctl(&stack, "viewer", &["audit", "list"]).await;
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused).contains("PermissionDenied") && text(&refused).contains("hint:"),
        "{}",
        text(&refused)
    );

    // Errors say what to do.
    let bad_scope = ctl(
        &stack,
        "alice",
        &["halt", FEATURE, "--scope", "county:kent", "--reason", "x"],
    )
    .await;
    assert!(
        text(&bad_scope).contains("use national, supplier:ID"),
        "{}",
        text(&bad_scope)
    );
    stack.stop().await;
}

#[tokio::test]
async fn audit_verify_fails_after_a_row_is_tampered_with() {
    let mut stack = Stack::start(None).await;
    crate::stack::feature_live(&stack).await;
    let ok = ctl(&stack, "auditor", &["audit", "verify"]).await;
    assert!(ok.status.success(), "{}", text(&ok));
    stack.stop_coordinator().await;

    let options = format!("sqlite://{}", stack.coordinator_db.display());
    let pool = sqlx::SqlitePool::connect(&options)
        .await
        .expect("open the database");
    let changed = sqlx::query("UPDATE audit SET reason = 'nothing to see here' WHERE sequence = 2")
        .execute(&pool)
        .await
        .expect("tamper");
    assert_eq!(changed.rows_affected(), 1);
    pool.close().await;

    stack.start_coordinator().await;
    let broken = ctl(&stack, "auditor", &["audit", "verify"]).await;
    assert_eq!(broken.status.code(), Some(2), "{}", text(&broken));
    assert!(text(&broken).contains("broken at event 2"), "{}", text(&broken));
    stack.stop().await;
}

#[tokio::test]
async fn rolloutctl_without_a_certificate_says_what_to_do() {
    let out = tokio::process::Command::new(binary("rolloutctl"))
        .args(["--pki-dir", "/nonexistent", "status"])
        .env_remove("ROLLOUT_AS")
        .env_remove("ROLLOUT_CERT")
        .output()
        .await
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(64),
        "a command line without a certificate"
    );
    assert!(
        text(&out).contains("no client certificate: pass --as NAME"),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn a_reader_that_stops_early_ends_rolloutctl_quietly_with_success() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let stack = Stack::start(None).await;
    let created = ctl(
        &stack,
        "alice",
        &[
            "feature",
            "create",
            FEATURE,
            "--fail-mode",
            "static",
            "--reason",
            "x",
        ],
    )
    .await;
    assert!(created.status.success(), "{}", text(&created));
    // A halt of 10,000 practices: its JSON is far more than a pipe holds, so rolloutctl is
    // still writing when the reader goes.
    let codes: Vec<String> = (0..10_000).map(|i| format!("Y{i:05}")).collect();
    let scope = pb::Scope {
        target: Some(pb::scope::Target::Practices(pb::scope::PracticeList {
            practices: codes,
        })),
    };
    let halt = crate::stack::halt(&stack, scope).await;

    // As `rolloutctl ... | head -1`: read one line, then close the pipe.
    let mut child = tokio::process::Command::new(binary("rolloutctl"))
        .arg("--coordinator")
        .arg(format!("localhost:{}", stack.coordinator_addr.port()))
        .arg("--pki-dir")
        .arg(&stack.pki)
        .args([
            "--as", "viewer", "--output", "json", "commands", "show", &halt.name,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run rolloutctl");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = lines.next_line().await.expect("read").expect("a first line");
    assert_eq!(first, "{");
    drop(lines);
    let out = child.wait_with_output().await.expect("rolloutctl ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    stack.stop().await;
}
