#!/usr/bin/env bash
# Set-up plus the whole test suite: formatting, lints, unit and integration
# tests against real nats-server processes. Safe to run twice.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"

echo "[test] cargo fmt --check"
cargo fmt --all -- --check
echo "[test] cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "[test] building binaries (integration tests start them)"
cargo build --workspace --bins
echo "[test] cargo nextest"
cargo nextest run --workspace --no-fail-fast "$@"
