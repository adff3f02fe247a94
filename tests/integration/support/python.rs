//! A Python interpreter for the suites the integration tests run as child processes (the
//! OpenFeature Python suite, the status page's browser test): `$ROLLOUT_TEST_PYTHON`, checked to
//! hold a suite's pinned requirements (scripts/test.sh installs them in `target/test-venv`).

use std::path::{Path, PathBuf};

/// The workspace root (the suites' paths are relative to it).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is in the workspace")
        .to_owned()
}

/// Prints every pinned requirement of the file named by its argument that is not installed at
/// its version (nothing when all are).
const CHECK_REQUIREMENTS: &str = r##"
import sys
from importlib.metadata import PackageNotFoundError, version

missing = []
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if not line:
        continue
    name, wanted = line.split("==")
    try:
        installed = version(name)
    except PackageNotFoundError:
        installed = "none"
    if installed != wanted:
        missing.append(f"{name}=={wanted} (installed: {installed})")
print(", ".join(missing))
"##;

/// The Python interpreter with the requirements of `requirements` (a path from the workspace
/// root) installed, or why there is none.
pub fn python(requirements: &str) -> Result<PathBuf, String> {
    let python = std::env::var_os("ROLLOUT_TEST_PYTHON")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .ok_or("ROLLOUT_TEST_PYTHON is not set (a Python with the suite's requirements)")?;
    let out = std::process::Command::new(&python)
        .arg("-c")
        .arg(CHECK_REQUIREMENTS)
        .arg(workspace().join(requirements))
        .output()
        .map_err(|e| format!("ROLLOUT_TEST_PYTHON={} cannot run: {e}", python.display()))?;
    let missing = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || !missing.is_empty() {
        return Err(format!(
            "ROLLOUT_TEST_PYTHON={} lacks {missing}{}",
            python.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(python)
}

/// How a script run as a child process ended, and what it printed.
#[derive(Debug)]
pub struct Run {
    /// Its exit status; `None` if it was still running when the time ran out (then killed).
    pub status: Option<std::process::ExitStatus>,
    /// Its standard output.
    pub output: String,
    /// Its standard error (empty if it was killed).
    pub stderr: String,
}

impl Run {
    /// Everything it printed, to explain a failure.
    pub fn printed(&self) -> String {
        format!(
            "its output:\n{}\nits standard error:\n{}",
            self.output, self.stderr
        )
    }
}

/// Reads `child`'s standard output (and error, both piped) line by line, awaiting `on_line` for
/// each (a test acts when the script says it is ready), until it exits or `timeout` passes.
pub async fn drive(
    mut child: tokio::process::Child,
    timeout: std::time::Duration,
    mut on_line: impl AsyncFnMut(&str),
) -> Run {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
    let mut stderr = child.stderr.take().expect("stderr piped");
    let stderr = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let mut lines = BufReader::new(child.stdout.take().expect("stdout piped")).lines();
    let mut output = String::new();
    let run = async {
        while let Some(line) = lines.next_line().await.expect("read the script's output") {
            output.push_str(&line);
            output.push('\n');
            on_line(&line).await;
        }
        child.wait().await.expect("the script's exit status")
    };
    let status = tokio::time::timeout(timeout, run).await.ok();
    let stderr = if status.is_some() {
        stderr.await.unwrap_or_default()
    } else {
        String::new()
    };
    Run {
        status,
        output,
        stderr,
    }
}
