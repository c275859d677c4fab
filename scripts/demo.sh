#!/usr/bin/env bash
# Set-up, build, start the embedded default (`comfaas dev`), send device
# events and an invocation, print the results and which node ran each,
# then stop. Safe to run twice.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
echo "[demo] building"
cargo build --release -j"${CARGO_BUILD_JOBS:-2}" --bins
BIN=target/release

PORT="${COMFAAS_DEMO_PORT:-4222}"
if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
  # Something already listens there: use a free port instead.
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
fi
export COMFAAS_NATS_URL="nats://127.0.0.1:$PORT"
LOG=$(mktemp -t comfaas-dev.XXXXXX.log)

"$BIN/comfaas" dev --port "$PORT" --mqtt-port 0 >"$LOG" 2>&1 &
DEV=$!
trap 'kill -INT $DEV 2>/dev/null; wait $DEV 2>/dev/null; rm -f "$LOG"' EXIT

# Waits until the `comfaas dev` of pid $1 logging to $2 is up; exits if not.
wait_up() {
  for _ in $(seq 1 600); do
    if grep -q "comfaas is up" "$2"; then return 0; fi
    if ! kill -0 "$1" 2>/dev/null; then cat "$2"; echo "[demo] comfaas dev exited"; exit 1; fi
    sleep 0.2
  done
  cat "$2"; echo "[demo] comfaas dev did not come up"; exit 1
}

echo "[demo] starting comfaas dev on $COMFAAS_NATS_URL (log: $LOG)"
wait_up $DEV "$LOG"
cat "$LOG"

echo
echo "[demo] the node table"
"$BIN/comfaas" nodes
echo
echo "[demo] deployed functions"
"$BIN/comfaas" ls
echo
echo "[demo] a request, as 'nats req comfaas.invoke.hello' would send it"
"$BIN/comfaas" invoke hello --data '{"name":"demo"}' -v
echo
echo "[demo] six devices publish sensor batches as events (comfaas.event.sensor-stats)"
"$BIN/comfaas" iot-sim --function sensor-stats --devices 6 --events 2
echo
echo "[demo] the paper's Monte Carlo Pi over MPI in C, Rust and Python: 100,000 points, 2 processes"
PTS=$(mktemp -t comfaas-points.XXXXXX)
python3 -c 'import os, sys; sys.stdout.buffer.write(os.urandom(8 * 100000))' > "$PTS"
for fn in pi-mpi-c pi-mpi-rs pi-mpi-py; do
  printf '%-10s ' "$fn"
  "$BIN/comfaas" invoke "$fn" --data @"$PTS" --procs 2
done
rm -f "$PTS"
echo
echo "[demo] Java and C functions, compiled once at deploy"
"$BIN/comfaas" invoke hello-java --data 'ping'
"$BIN/comfaas" invoke hello-c --data 'ping'
echo
echo "[demo] an unknown function gets a clear error"
"$BIN/comfaas" invoke nope || true
echo
echo "[demo] where the last requests went and why (comfaas decisions), and what hello's runs wrote"
"$BIN/comfaas" decisions | head -n 8 || true
"$BIN/comfaas" logs hello | tail -n 3 || true
METRICS=$(sed -n 's/.*dispatcher metrics: \(http[^ ]*\).*/\1/p' "$LOG" | head -n 1)
if [ -n "$METRICS" ]; then
  echo "[demo] Prometheus metrics at $METRICS:"
  python3 -c 'import sys, urllib.request; print(*[l for l in urllib.request.urlopen(sys.argv[1]).read().decode().splitlines() if l.startswith("comfaas_dispatch_invocations_total")][:4], sep="\n")' "$METRICS" || true
fi
DASH=$(sed -n 's/.*dashboard at \(http[^ ]*\).*/\1/p' "$LOG" | head -n 1)
[ -n "$DASH" ] && echo "[demo] the live dashboard was at $DASH (open it while comfaas dev runs)"
echo
MQTT_PORT=$(sed -n 's/.*MQTT devices at mqtts\{0,1\}:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$LOG" | head -n 1)
echo "[demo] an MQTT device (paho-mqtt) publishes an event on comfaas/event/hello (QoS 1) and reads"
echo "       its result on comfaas/result/hello (MQTT port $MQTT_PORT)"
"${COMFAAS_PYCLIENT:-$HOME/.cache/comfaas/pyclient}/bin/python" - "$MQTT_PORT" <<'PY'
import sys, threading
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
got, subscribed = threading.Event(), threading.Event()
c = mqtt.Client(CallbackAPIVersion.VERSION2)
c.on_subscribe = lambda *a: subscribed.set()
c.on_message = lambda cl, u, m: (print(f"  {m.topic}: {m.payload.decode()}"), got.set())
c.connect("127.0.0.1", int(sys.argv[1]))
c.loop_start()
c.subscribe("comfaas/result/hello", qos=1)
subscribed.wait(10)
c.publish("comfaas/event/hello", b'{"name":"mqtt"}', qos=1).wait_for_publish(10)
if not got.wait(60):
    sys.exit("no result over MQTT within 60 s")
c.loop_stop()
PY

echo
echo "[demo] five sites on emulated WAN links: comfaas dev --sites edge,chicago,new-york,los-angeles,miami"
kill -INT $DEV 2>/dev/null; wait $DEV 2>/dev/null || true
LOG2=$(mktemp -t comfaas-sites.XXXXXX.log)
INPUT=$(mktemp -t comfaas-input.XXXXXX)
"$BIN/comfaas" dev --port "$PORT" --sites edge,chicago,new-york,los-angeles,miami \
  --functions tests/functions >"$LOG2" 2>&1 &
DEV=$!
trap 'kill -INT $DEV 2>/dev/null; wait $DEV 2>/dev/null; rm -f "$LOG" "$LOG2" "$INPUT"' EXIT
wait_up $DEV "$LOG2"
grep -E "^(site|edge uplink)" "$LOG2"
sleep 3  # a few pings: the dispatcher measures each site's round trip
"$BIN/comfaas" nodes
echo
echo "[demo] a job using as many MPI processes as a site allows (--procs 1-16: 4 at the edge, 16 in"
echo "       the cloud), placed automatically; the first runs explore, then the fastest site is kept"
for i in 1 2 3 4 5 6; do
  printf 'no input, run %s: ' "$i"
  "$BIN/comfaas" invoke emulated-work --procs 1-16 -v 2>&1 | grep -E 'Comfaas-Node|procs' | tr '\n' ' '
  echo
done
echo
echo "[demo] the same job with a 16 MB input kept at the edge: crossing a link to a cloud site"
echo "       would cost more than its 16 processes save, so the job stays at the edge"
for i in 1 2 3 4; do
  head -c 16000000 /dev/urandom >"$INPUT"
  printf '16 MB input, run %s: ' "$i"
  "$BIN/comfaas" invoke emulated-work --procs 1-16 --input-file "$INPUT" -v 2>&1 |
    grep -E 'Comfaas-Node|procs' | tr '\n' ' '
  echo
done
echo
echo "[demo] done"
