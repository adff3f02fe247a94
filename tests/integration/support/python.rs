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
