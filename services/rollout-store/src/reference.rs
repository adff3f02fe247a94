//! Reading the national reference files (the GP practice file and the supplier map) from disk.
//! The parsing is `rollout_core::Estate::parse`; this is only the I/O around it.

use std::path::Path;

use rollout_core::{Estate, Source};

/// Reads and parses the practice file and the supplier map. The error names the file and,
/// for a malformed file, the line and column.
pub fn read_estate(practices: &Path, suppliers: &Path) -> Result<Estate, String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    let (a, b) = (read(practices)?, read(suppliers)?);
    Estate::parse(
        Source {
            name: &practices.display().to_string(),
            bytes: &a,
        },
        Source {
            name: &suppliers.display().to_string(),
            bytes: &b,
        },
    )
    .map_err(|e| e.to_string())
}
