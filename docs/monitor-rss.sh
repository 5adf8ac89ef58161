#!/usr/bin/env bash
# The monitor's memory with 10 000 stored keys: imports 10 000 generated keys, runs
# `keysync sim` (100 nodes announcing every 5 s) and the monitor against it in a 120x40 tmux
# window (checks every 10 s), and prints VmRSS / VmHWM at 10, 20, 40, 80 and 160 s.
# Needs python3 (to write the generated meshbot database) and tmux.
#
#   cargo build --release && docs/monitor-rss.sh target/release/keysync
set -euo pipefail
BIN=$(realpath "${1:-target/release/keysync}")
WORK=$(mktemp -d)
trap 'tmux -L keysync-rss kill-server 2>/dev/null || true; kill "$SIM" 2>/dev/null || true; rm -rf "$WORK"' EXIT
python3 "$(dirname "$0")/seed-meshbot.py" "$WORK/meshbot.db"
"$BIN" --db "$WORK/k.db" import meshbot "$WORK/meshbot.db"
PORT=$((20000 + RANDOM % 20000))
"$BIN" sim --listen "127.0.0.1:$PORT" --nodes 100 --announce-every 5s 2>"$WORK/sim.log" &
SIM=$!
sleep 1
tmux -L keysync-rss new-session -d -s rss -x 120 -y 40 \
  "exec $BIN --db $WORK/k.db --host 127.0.0.1:$PORT --sync-interval 10s --cache-ttl 20s"
sleep 1
PID=$(tmux -L keysync-rss list-panes -t rss -F '#{pane_pid}')
elapsed=1
for at in ${RSS_AT:-10 20 40 80 160}; do
  sleep $((at - elapsed)); elapsed=$at
  echo "t=${at}s $(grep -E 'VmRSS|VmHWM|RssAnon|RssFile' "/proc/$PID/status" | tr -s ' \t' ' ' | tr '\n' ' ')"
done
grep -E "^(Threads)" "/proc/$PID/status"
tmux -L keysync-rss capture-pane -p -t rss | sed -n 2p
