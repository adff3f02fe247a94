#!/usr/bin/env bash
# Runs the whole test suite: builds the binaries the process tests start, then every test of
# the workspace (unit, rule tables, property tests, and the one integration-test binary with
# real servers over real mutual TLS). Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --workspace --bins --locked
cargo test --workspace --locked "$@"
