#!/usr/bin/env bash
# Starts or stops local Ferry processes of the distributed mode until N of a kind run, live:
#
#   scripts/scale.sh worker N     # ferry worker processes on the shared data directory
#   scripts/scale.sh ingress N    # ferry ingress nodes on ports FERRY_INGRESS_BASE_PORT+i
#   scripts/scale.sh status       # what runs, then `ferry status`
#
# A worker stopped here gets SIGTERM: it leaves the membership, finishes and acknowledges what
# it holds, flushes and closes its partitions, and the others take them over. Nothing
# acknowledged is lost and nothing is applied twice, so scaling under load is safe.
#
# Environment (all optional):
#   FERRY_BIN               the ferry binary (default target/release/ferry, built if missing)
#   FERRY_CLUSTER_DIR       data, pid files and logs (default ./ferry-cluster)
#   FERRY_INGRESS_BASE_PORT first ingress port (default 7710)
#   FERRY_CLUSTER__*        the [cluster] settings (namespace, broker_url, bus_url, ...)
#   FERRY_STOP_TIMEOUT      seconds a stopping process may take before SIGKILL (default 30)
#   FERRY_STORE__PARTITIONS partitions of a new data directory (default 4 here, not `ferry
#                           init`'s 16): at most this many workers share the load, and each
#                           partition is a quorum queue whose cost per message grows as its
#                           traffic thins (BENCHMARKS.md, distributed mode, 2026-12-07)
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${FERRY_BIN:-target/release/ferry}
DIR=${FERRY_CLUSTER_DIR:-ferry-cluster}
BASE_PORT=${FERRY_INGRESS_BASE_PORT:-7710}
STOP_TIMEOUT=${FERRY_STOP_TIMEOUT:-30}
RUN="$DIR/run"

usage() {
  sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

ensure_binary() {
  if [ ! -x "$BIN" ]; then
    echo "building $BIN" >&2
    cargo build --release --quiet --bin ferry
  fi
}

ferry() { "$BIN" --data "$DIR/data" "$@"; }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# The pid files of running processes of a kind, oldest (lowest index) first; stale ones go.
running() {
  local kind=$1 f
  for f in $(ls "$RUN"/"$kind"-*.pid 2>/dev/null | sort -t- -k2 -n); do
    if alive "$f"; then echo "$f"; else rm -f "$f"; fi
  done
}

free_index() {
  local kind=$1 i=1
  while alive "$RUN/$kind-$i.pid"; do i=$((i + 1)); done
  echo "$i"
}

start() {
  local kind=$1 i log pid line
  i=$(free_index "$kind")
  log="$RUN/$kind-$i.log"
  : >"$log"
  # Not through the `ferry` function: $! must be the process itself, not a subshell.
  case $kind in
    worker) "$BIN" --data "$DIR/data" worker --id "worker-$i" >"$log" 2>&1 & ;;
    ingress)
      "$BIN" --data "$DIR/data" ingress --id "ingress-$i" \
        --listen "127.0.0.1:$((BASE_PORT + i - 1))" >"$log" 2>&1 &
      ;;
  esac
  pid=$!
  echo "$pid" >"$RUN/$kind-$i.pid"
  # Ready when it prints its first line on stdout (after connecting to the brokers).
  for _ in $(seq 1 300); do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "error: $kind-$i exited at start; its log ($log):" >&2
      tail -n 20 "$log" >&2
      rm -f "$RUN/$kind-$i.pid"
      return 1
    fi
    line=$(grep -m1 -E '^ferry (worker|ingress) ' "$log" || true)
    if [ -n "$line" ]; then echo "started $kind-$i (pid $pid): $line"; return 0; fi
    sleep 0.1
  done
  echo "error: $kind-$i did not become ready in 30 s (log $log)" >&2
  return 1
}

stop() {
  local file=$1 pid name
  pid=$(cat "$file")
  name=$(basename "$file" .pid)
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 $((STOP_TIMEOUT * 10))); do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$file"
      echo "stopped $name (pid $pid)"
      return 0
    fi
    sleep 0.1
  done
  echo "warning: $name (pid $pid) did not stop in ${STOP_TIMEOUT}s: killing it" >&2
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$file"
}

scale() {
  local kind=$1 want=$2 have files
  case $want in '' | *[!0-9]*) usage ;; esac
  mkdir -p "$RUN"
  [ -f "$DIR/data/ferry-store.json" ] || [ "$kind" != worker ] \
    || FERRY_STORE__PARTITIONS=${FERRY_STORE__PARTITIONS:-4} ferry init >/dev/null
  files=$(running "$kind")
  have=$(printf '%s' "$files" | grep -c . || true)
  while [ "$have" -lt "$want" ]; do
    start "$kind"
    have=$((have + 1))
  done
  if [ "$have" -gt "$want" ]; then
    # The newest go first, one at a time, so that each handover completes before the next.
    for f in $(printf '%s\n' $files | sort -t- -k2 -n -r | head -n $((have - want))); do
      stop "$f"
    done
  fi
}

status() {
  local kind f
  for kind in worker ingress; do
    for f in $(running "$kind"); do
      echo "$(basename "$f" .pid): pid $(cat "$f")"
    done
  done
  if "$BIN" help status >/dev/null 2>&1; then ferry status; fi
}

[ $# -ge 1 ] || usage
ensure_binary
case $1 in
  worker | ingress) [ $# -eq 2 ] || usage; scale "$1" "$2" ;;
  status) status ;;
  *) usage ;;
esac
