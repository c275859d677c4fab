#!/usr/bin/env bash
# Set-up plus the whole test suite: formatting, lints, unit and integration
# tests against real nats-server processes. Safe to run twice.
# The suite runs on the current nats-server scripts/setup.sh installs into
# the project's tool folder; then the integration tests run once more on
# Debian's 2.9 (the oldest release comfaas supports), so both stay working.
# COMFAAS_NATS_SERVER picks the first pass's binary, COMFAAS_FLOOR_NATS_SERVER
# the second's.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"

TOOLS="${COMFAAS_TOOLS:-$HOME/.cache/comfaas/tools}"
export COMFAAS_NATS_SERVER="${COMFAAS_NATS_SERVER:-$TOOLS/nats-server/bin/nats-server}"
FLOOR="${COMFAAS_FLOOR_NATS_SERVER:-$(command -v nats-server)}"

echo "[test] cargo fmt --check"
cargo fmt --all -- --check
echo "[test] cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "[test] building binaries (integration tests start them)"
cargo build --workspace --bins
# Both passes run whatever the first found; the script fails if either did.
failed=0
echo "[test] cargo nextest on $("$COMFAAS_NATS_SERVER" --version) ($COMFAAS_NATS_SERVER)"
cargo nextest run --workspace --no-fail-fast "$@" || failed=1
echo "[test] integration tests again on $("$FLOOR" --version) ($FLOOR), the oldest supported"
COMFAAS_NATS_SERVER="$FLOOR" cargo nextest run -p comfaas-tests --no-fail-fast "$@" || failed=1
exit "$failed"
