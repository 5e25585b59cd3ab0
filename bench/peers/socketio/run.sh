#!/usr/bin/env bash
# The Socket.IO peer of `ferry bench --scenario fanout`: installs the pinned packages (npm ci),
# starts the one-room server, runs the load client against it, stops the server.
# Usage: bench/peers/socketio/run.sh [client options...]
#   e.g. run.sh --watchers 1000 --rate 1000 --duration 30 --warmup 5 --size 500 [--threads 2] [--json]
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund --silent >/dev/null
out=$(mktemp)
node server.js >"$out" &
server=$!
trap 'kill "$server" 2>/dev/null || true; rm -f "$out"' EXIT
for _ in $(seq 1 100); do
  grep -q 'serving' "$out" && break
  sleep 0.1
done
url=$(grep -o 'http://[0-9.:]*' "$out" | head -1)
[ -n "$url" ] || { echo "the socket.io server did not start" >&2; exit 1; }
node client.js --url "$url" "$@"
