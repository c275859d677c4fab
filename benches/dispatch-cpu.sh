#!/usr/bin/env bash
# CPU time the comfaas-dispatch process uses over one run of comfaas-bench,
# a figure the machine's noise barely moves (latency and throughput do).
#   benches/dispatch-cpu.sh [DIR]   DIR holds comfaas-bench and the service
#                                   binaries (default: target/release)
# Prints the dispatcher's utime + stime in clock ticks (usually 1/100 s),
# sampled from /proc every 50 ms until the bench ends.
set -euo pipefail
dir="$(cd "${1:-target/release}" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
( cd "$work" && "$dir/comfaas-bench" >"$work/bench.out" 2>&1 ) &
bench=$!
ticks=0
while kill -0 "$bench" 2>/dev/null; do
  for pid in $(pgrep -f "^$dir/comfaas-dispatch" || true); do
    now=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || true)
    [ -n "$now" ] && ticks=$now
  done
  sleep 0.05
done
wait "$bench"
echo "comfaas-dispatch used $ticks ticks of CPU ($(getconf CLK_TCK) a second) over one comfaas-bench run"
