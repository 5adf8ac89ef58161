#!/usr/bin/env bash
# What `--metrics` costs with 10 000 stored keys: runs the headless monitor against `keysync sim`
# (100 nodes announcing every 5 s, checks every 10 s) for DURATION seconds, once without
# --metrics and once with it, scraping /metrics every 5 s; prints VmRSS / VmHWM and the CPU
# seconds (user + system) of each run, and the size and time of one /metrics and one /status.
# Needs python3 and curl.
#
#   cargo build --release && docs/metrics-overhead.sh target/release/keysync [DURATION]
set -euo pipefail
BIN=$(realpath "${1:-target/release/keysync}")
DURATION=${2:-120}
WORK=$(mktemp -d)
SIM=""
KS=""
trap 'for p in $KS $SIM; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"' EXIT
python3 "$(dirname "$0")/seed-meshbot.py" "$WORK/meshbot.db"
"$BIN" --db "$WORK/k.db" import meshbot "$WORK/meshbot.db" >/dev/null
PORT=$((20000 + RANDOM % 20000))
MPORT=$((PORT + 1))
"$BIN" sim --listen "127.0.0.1:$PORT" --nodes 100 --announce-every 5s 2>"$WORK/sim.log" &
SIM=$!
sleep 1
tick=$(getconf CLK_TCK)

run() { # $1: label, then keysync's extra arguments
  local label=$1; shift
  cp "$WORK/k.db" "$WORK/run.db"
  "$BIN" --headless --db "$WORK/run.db" --host "127.0.0.1:$PORT" --sync-interval 10s \
    --cache-ttl 20s "$@" 2>"$WORK/$label.log" &
  KS=$!
  sleep 1
  local elapsed=0
  while [ "$elapsed" -lt "$DURATION" ]; do
    sleep 5; elapsed=$((elapsed + 5))
    if [ $# -gt 0 ]; then curl -sf "http://127.0.0.1:$MPORT/metrics" >/dev/null; fi
  done
  echo "$label after the scrapes: $(grep -E 'VmRSS|VmHWM' "/proc/$KS/status" | tr -s ' \t' ' ' | tr '\n' ' ')"
  if [ $# -gt 0 ]; then
    curl -sf -o "$WORK/m.txt" -w "  /metrics: %{size_download} bytes in %{time_total}s\n" "http://127.0.0.1:$MPORT/metrics"
    curl -sf -o "$WORK/s.json" -w "  /status: %{size_download} bytes in %{time_total}s\n" "http://127.0.0.1:$MPORT/status"
  fi
  read -r -a stat < "/proc/$KS/stat"
  local cpu
  cpu=$(awk -v u="${stat[13]}" -v s="${stat[14]}" -v t="$tick" 'BEGIN { printf "%.2f", (u + s) / t }')
  echo "$label at the end: $(grep -E 'VmRSS|VmHWM' "/proc/$KS/status" | tr -s ' \t' ' ' | tr '\n' ' ') CPU ${cpu}s in ${DURATION}s"
  kill "$KS"; wait "$KS" 2>/dev/null || true; KS=""
}

run without
run with-metrics --metrics "127.0.0.1:$MPORT"
