//! The question before a national or supplier-wide halt or go-live, and before an approval:
//! asked at a terminal (standard input a real pseudo-terminal here), after showing what the
//! command covers, and only `yes` goes ahead; never asked with `--yes`, for a narrower scope,
//! or without a terminal.

use std::{io::Write, os::fd::OwnedFd, process::Output, time::Duration};

use rollout_proto::v1 as pb;
use rustix::{
    fs::{Mode, OFlags},
    pty::OpenptFlags,
};
use tokio::io::AsyncReadExt;

use super::{ctl, text};
use crate::{
    stack::{Stack, feature_live},
    support::{FEATURE, binary},
};

/// What the question ends with.
const QUESTION: &str = "Type yes to go ahead: ";

/// A pseudo-terminal: the side this test types into, and the side the child reads.
fn pty() -> (OwnedFd, OwnedFd) {
    let master = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).expect("openpt");
    rustix::pty::grantpt(&master).expect("grantpt");
    rustix::pty::unlockpt(&master).expect("unlockpt");
    let name = rustix::pty::ptsname(&master, Vec::new()).expect("ptsname");
    let terminal = rustix::fs::open(name.as_c_str(), OFlags::RDWR | OFlags::NOCTTY, Mode::empty())
        .expect("open the terminal");
    (master, terminal)
}

/// Runs `rolloutctl` as `who` with standard input a terminal. With `answer`, waits until it
/// asks, then types the answer; without, expects it to finish without asking.
async fn at_terminal(stack: &Stack, who: &str, args: &[&str], answer: Option<&str>) -> Output {
    let (master, terminal) = pty();
    let mut child = tokio::process::Command::new(binary("rolloutctl"))
        .arg("--coordinator")
        .arg(format!("localhost:{}", stack.coordinator_addr.port()))
        .arg("--pki-dir")
        .arg(&stack.pki)
        .args(["--as", who])
        .args(args)
        .stdin(std::process::Stdio::from(terminal))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run rolloutctl");
    let mut stderr = child.stderr.take().expect("stderr");
    let mut said = Vec::new();
    if let Some(answer) = answer {
        let asked = async {
            let mut buf = [0; 4096];
            while !String::from_utf8_lossy(&said).ends_with(QUESTION) {
                let n = stderr.read(&mut buf).await.expect("read");
                assert!(n > 0, "ended without asking: {}", String::from_utf8_lossy(&said));
                said.extend_from_slice(&buf[..n]);
            }
        };
        tokio::time::timeout(Duration::from_secs(30), asked)
            .await
            .expect("asked within 30 s");
        std::fs::File::from(master.try_clone().expect("dup"))
            .write_all(format!("{answer}\n").as_bytes())
            .expect("type the answer");
    }
    let finished = async {
        stderr.read_to_end(&mut said).await.expect("read");
        child.wait_with_output().await.expect("wait")
    };
    let mut out = tokio::time::timeout(Duration::from_secs(60), finished)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "rolloutctl {args:?} did not finish (did it ask?): {}",
                String::from_utf8_lossy(&said)
            )
        });
    drop(master);
    out.stderr = said;
    out
}

/// How many commands the coordinator holds.
async fn commands(stack: &Stack) -> usize {
    stack
        .client("viewer")
        .list_commands(pb::ListCommandsRequest {
            page_size: 500,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .commands
        .len()
}

#[tokio::test]
async fn a_wide_halt_or_go_live_asks_at_a_terminal_and_never_without_one() {
    let stack = Stack::start(None).await;
    feature_live(&stack).await;
    let national = ["halt", FEATURE, "--scope", "national", "--reason", "r"];

    // Shown, asked, answered no: nothing sent.
    let before = commands(&stack).await;
    let no = at_terminal(&stack, "alice", &national, Some("no")).await;
    assert_eq!(no.status.code(), Some(1), "{}", text(&no));
    let shown = String::from_utf8_lossy(&no.stdout);
    assert!(shown.contains("state     DRY_RUN"), "the impact first:\n{shown}");
    assert!(shown.contains("impact    6300 practices"), "{shown}");
    assert!(
        text(&no).contains(&format!(
            "Halt {FEATURE} nationally: 6300 practices at 4 suppliers? {QUESTION}"
        )),
        "{}",
        text(&no)
    );
    assert!(text(&no).contains("the halt was not issued: nothing was sent"));
    assert_eq!(commands(&stack).await, before, "a halt was issued");

    // Answered yes: issued.
    let yes = at_terminal(&stack, "alice", &national, Some("yes")).await;
    assert!(yes.status.success(), "{}", text(&yes));
    assert!(String::from_utf8_lossy(&yes.stdout).contains("state     DISPATCHED"));
    assert_eq!(commands(&stack).await, before + 1);

    // A supplier-wide go-live: its preview per supplier, then the question.
    let go = ["go-live", FEATURE, "--scope", "supplier:tpp", "--reason", "r"];
    let asked = at_terminal(&stack, "alice", &go, Some("yes")).await;
    assert!(asked.status.success(), "{}", text(&asked));
    assert!(String::from_utf8_lossy(&asked.stdout).contains("preview   "));
    assert!(
        text(&asked).contains(&format!("Ask to go live with {FEATURE} at every practice of tpp")),
        "{}",
        text(&asked)
    );
    let pending = String::from_utf8_lossy(&asked.stdout).into_owned();
    let go_live = pending
        .split("command   ")
        .last()
        .and_then(|rest| rest.lines().next())
        .expect("the go-live's id")
        .to_owned();

    // Approval with JSON output at a terminal: the command shown on standard error, asked,
    // and standard output one JSON document.
    let approve = ["--output", "json", "approve", &go_live];
    let approved = at_terminal(&stack, "bob", &approve, Some("yes")).await;
    assert!(approved.status.success(), "{}", text(&approved));
    assert!(String::from_utf8_lossy(&approved.stderr).contains("preview   "));
    let doc: serde_json::Value = serde_json::from_slice(&approved.stdout).expect("one JSON document");
    assert_eq!(doc["state"], "STATE_DISPATCHED", "{doc}");

    // Not asked: with --yes, for an ICB, or without a terminal.
    let count = commands(&stack).await;
    let told = ["halt", FEATURE, "--scope", "national", "--reason", "r", "--yes"];
    let icb = ["halt", FEATURE, "--scope", "icb:QN7", "--reason", "r"];
    for (args, terminal) in [(&told[..], true), (&icb[..], true), (&national[..], false)] {
        let out = if terminal {
            at_terminal(&stack, "alice", args, None).await
        } else {
            ctl(&stack, "alice", args).await
        };
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        assert!(!text(&out).contains(QUESTION), "{args:?} asked: {}", text(&out));
    }
    assert_eq!(commands(&stack).await, count + 3);
    stack.stop().await;
}
