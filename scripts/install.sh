#!/usr/bin/env bash
# Installs the three comfaas binaries (comfaas, comfaas-exec, comfaas-dispatch)
# with `cargo install`: into $CARGO_HOME/bin (~/.cargo/bin, on PATH after a
# rustup install), or PREFIX/bin when PREFIX is set. Extra arguments go to
# every `cargo install` (e.g. --debug, --force). Safe to run twice: cargo
# replaces what it installed before when the sources changed.
#   scripts/install.sh
#   PREFIX=/usr/local sudo -E scripts/install.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=()
if [[ -n "${PREFIX:-}" ]]; then
  root=(--root "$PREFIX")
fi
for package in services/cli services/exec services/dispatch; do
  cargo install --locked -j"${CARGO_BUILD_JOBS:-2}" --path "$package" "${root[@]}" "$@"
done
bin="${PREFIX:-${CARGO_HOME:-$HOME/.cargo}}/bin"
case ":$PATH:" in
  *":$bin:"*) echo "comfaas, comfaas-exec and comfaas-dispatch are in $bin" ;;
  *) echo "installed in $bin, which is not on PATH: export PATH=\"$bin:\$PATH\"" ;;
esac
