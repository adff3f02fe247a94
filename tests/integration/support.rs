//! Helpers shared by the integration tests.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use rollout_net::tls::{self, TlsFiles};
use tonic::transport::Channel;

/// The path of a workspace binary built next to this test binary. The README's test command
/// builds the binaries before the tests run.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(Path::parent).expect("target directory");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the binaries first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// Runs the real `rolloutctl pki init --dir DIR` and returns DIR.
pub fn pki_init(parent: &Path) -> PathBuf {
    let dir = parent.join("pki");
    let out = Command::new(binary("rolloutctl"))
        .args(["pki", "init", "--dir"])
        .arg(&dir)
        .output()
        .expect("run rolloutctl");
    assert!(
        out.status.success(),
        "rolloutctl pki init failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// A lazily connecting mTLS channel to `addr` as the identity whose files are `name` in `pki`.
pub fn channel_as(pki: &Path, name: &str, addr: std::net::SocketAddr) -> Channel {
    let config = tls::client_config(&TlsFiles::from_pki_dir(pki, name), None).expect("client config");
    tls::channel(&format!("localhost:{}", addr.port()), config).expect("channel")
}
