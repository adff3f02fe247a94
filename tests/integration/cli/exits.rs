//! `rolloutctl`'s exit statuses as README.md documents them: a command line it does not
//! understand exits 64 (EX_USAGE), never 2, which scripts read as "rejected, not verified or
//! broken"; `--help` exits 0.

use std::process::Output;

use super::text;
use crate::support::{binary, pki_init};

/// Runs `rolloutctl` with a development PKI and a coordinator address where nothing listens:
/// none of these command lines gets as far as a call.
async fn run(pki: &std::path::Path, args: &[&str]) -> Output {
    tokio::process::Command::new(binary("rolloutctl"))
        .args(["--coordinator", "localhost:1", "--as", "alice", "--pki-dir"])
        .arg(pki)
        .args(args)
        .env_remove("ROLLOUT_OUTPUT")
        .output()
        .await
        .expect("run rolloutctl")
}

#[tokio::test]
async fn a_command_line_not_understood_exits_64_and_help_exits_0() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki_init(dir.path());
    let not_understood: [(&[&str], &str); 11] = [
        (
            &[
                "halt",
                "f",
                "--scope",
                "national",
                "--reason",
                "r",
                "--request-id",
                "zz",
            ],
            "is not a UUID version 4",
        ),
        (
            &["halt", "f", "--scope", "icb:Q", "--reason", "r"],
            "--scope \"icb:Q\"",
        ),
        (
            &["halt", "f", "--scope", "supplier:EMIS", "--reason", "r"],
            "--scope \"supplier:EMIS\"",
        ),
        (&["status", "--bogus"], "unexpected argument '--bogus'"),
        (&["halt", "f", "--reason", "r"], "--scope <SCOPE>"),
        (&[], "requires a subcommand"),
        (&["practice", "show", "A81001"], "--feature <FEATURE>"),
        (
            &["halt", "f", "--scope", "county:kent", "--reason", "r"],
            "use national, supplier:ID",
        ),
        (
            &[
                "go-live", "f", "--scope", "national", "--reason", "r", "--at", "Tuesday",
            ],
            "use RFC 3339",
        ),
        (
            &["verify", "x", "--supplier-timeout", "50ms"],
            "50ms is outside 100ms to 30s",
        ),
        // Refused before the halt is sent, not after.
        (
            &[
                "halt",
                "f",
                "--scope",
                "national",
                "--reason",
                "r",
                "--wait",
                "--supplier-timeout",
                "31s",
            ],
            "31s is outside 100ms to 30s",
        ),
    ];
    for (args, says) in not_understood {
        let out = run(&pki, args).await;
        assert_eq!(out.status.code(), Some(64), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(says), "{args:?}: {}", text(&out));
        assert!(
            out.stdout.is_empty(),
            "{args:?}: usage errors go to standard error"
        );
    }
    let no_port = tokio::process::Command::new(binary("rolloutctl"))
        .args(["--coordinator", "nohostport", "--as", "alice", "--pki-dir"])
        .arg(&pki)
        .arg("status")
        .output()
        .await
        .expect("run rolloutctl");
    assert_eq!(no_port.status.code(), Some(64), "{}", text(&no_port));
    assert!(text(&no_port).contains("is not HOST:PORT"), "{}", text(&no_port));
    for args in [&["--help"][..], &["halt", "--help"], &["--version"]] {
        let out = run(&pki, args).await;
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out));
        assert!(!out.stdout.is_empty(), "{args:?}");
    }
    let help = run(&pki, &["--help"]).await;
    assert!(
        text(&help).contains("64 the command line was not understood"),
        "the exit statuses are in --help: {}",
        text(&help)
    );
}
