#!/usr/bin/env bash
# The distributed mode's benchmarks, side by side in one run on this machine:
#   1. throughput at each number of writes in flight in $IN_FLIGHT (default "256 1024 4096"),
#      alternating the raw RabbitMQ ceiling (cluster/benches/amqp_ceiling.rs: lapin, 500-byte
#      persistent messages, one per message, confirms, over the cluster's partition queues,
#      that many in flight) with Ferry end to end (a local cluster of 2 workers and 2 ingress
#      nodes loaded by `ferry bench --closed-loop` over both ingress nodes, every write
#      verified) with the same number of writes in flight, once per client shape in $DEPTHS
#      (default "1 8"): d writes in flight per connection over in-flight/d connections; each
#      run's ratio, and the ratio of the two highest (each system's highest sustained
#      throughput). Depth matters: a connection's answers and events share a socket write
#      only when several are waiting, and on loopback the cost is per write;
#   2. the highest open-loop rate with p99 ack <= 50 ms (--find-max), as a ratio to the
#      ceiling at the first level;
#   3. the backlog drain (cluster/benches/backlog.rs: 200,000 instructions queued, then 2 workers).
# Optional: BENCH_PEAK=1 also runs the peak preset (10,000 clients, 15,000/s, 60 s) through the
# cluster. Results go to stdout and to $OUT (default target/bench-cluster).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-target/bench-cluster}
export FERRY_CLUSTER_DIR=${FERRY_CLUSTER_DIR:-$OUT/cluster}
export FERRY_CLUSTER__NAMESPACE=${FERRY_CLUSTER__NAMESPACE:-bench$$}
export FERRY_INGRESS_BASE_PORT=${FERRY_INGRESS_BASE_PORT:-7790}
mkdir -p "$OUT"
cargo build --release --quiet --bin ferry

echo "== load before: $(cut -d' ' -f1-3 /proc/loadavg)"
IN_FLIGHT=${IN_FLIGHT:-256 1024 4096}
DEPTHS=${DEPTHS:-1 8}
# Built before the cluster starts, so that no compiler shares the machine with a measurement.
cargo bench --quiet -p ferry-cluster --bench amqp_ceiling --no-run 2>/dev/null
cargo bench --quiet -p ferry-cluster --bench backlog --no-run 2>/dev/null

rm -rf "$FERRY_CLUSTER_DIR"
trap 'scripts/cluster.sh down >/dev/null 2>&1 || true' EXIT
scripts/cluster.sh up 2 2
urls="ws://127.0.0.1:$FERRY_INGRESS_BASE_PORT/v1/ws,ws://127.0.0.1:$((FERRY_INGRESS_BASE_PORT + 1))/v1/ws"
partitions=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["partitions"])' \
  "$FERRY_CLUSTER_DIR/data/ferry-store.json")
echo "== $partitions partitions"
best_ceiling=0
best_ferry=0
declare -A best_at_depth
for f in $IN_FLIGHT; do
  cargo bench --quiet -p ferry-cluster --bench amqp_ceiling -- --seconds 10 --partitions "$partitions" \
    --in-flight "$f" | tee "$OUT/ceiling-$f.json"
  c=$(sed -n 's/.*"messages_per_sec":\([0-9]*\).*/\1/p' "$OUT/ceiling-$f.json")
  ceiling=${ceiling:-$c}
  [ "$c" -gt "$best_ceiling" ] && best_ceiling=$c
  for d in $DEPTHS; do
    [ $((f / d)) -ge 1 ] || continue
    run="$OUT/closed-loop-$f-depth$d.json"
    target/release/ferry bench --url "$urls" --connections $((f / d)) --max-in-flight "$d" \
      --closed-loop --duration 10s --warmup 3s --json >"$run" || true
    read -r t p50 p99 < <(python3 -c '
import json, sys
run = json.load(open(sys.argv[1]))["runs"][0]
ack = run["ack_latency"]
print(0 if run["failures"] else int(run["achieved_rate"]), ack.get("p50_ms"), ack.get("p99_ms"))' "$run")
    echo "== $f in flight ($((f / d)) connections x $d): ceiling ${c} msgs/s; ferry ${t}/s (0 means not verified), ack p50 ${p50} ms, p99 ${p99} ms; ratio $(python3 -c "print(round($t/$c, 2))")"
    [ "$t" -gt "$best_ferry" ] && best_ferry=$t
    [ "$t" -gt "${best_at_depth[$d]:-0}" ] && best_at_depth[$d]=$t
  done
done
for d in $DEPTHS; do
  echo "== highest at $d in flight per connection: ferry ${best_at_depth[$d]:-0}/s; ratio to the highest ceiling $(python3 -c "print(round(${best_at_depth[$d]:-0}/$best_ceiling, 2))")"
done
echo "== highest sustained: ceiling ${best_ceiling} msgs/s; ferry ${best_ferry}/s; ratio $(python3 -c "print(round($best_ferry/$best_ceiling, 2))")"
start=$((ceiling / 2))
target/release/ferry bench --url "$urls" --connections 1000 --rate "$start" --duration 10s \
  --warmup 3s --find-max --max-steps 6 --goal-ack-p99-ms 50 --json >"$OUT/find-max.json" || true
best=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(int(r.get("max_sustained_rate") or 0))' "$OUT/find-max.json")
python3 - "$OUT/find-max.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
for run in r["runs"]:
    ack = run["ack_latency"]
    print(f"  step: target {run['target_rate']:.0f}/s -> {run['achieved_rate']:.0f}/s, ack p99 {ack.get('p99_ms')} ms, verified {not run['failures']}")
EOF
echo "== ceiling ${ceiling} msgs/s; ferry best sustained (p99 ack <= 50 ms) ${best}/s; ratio $(python3 -c "print(round($best/$ceiling, 2))")"

if [ "${BENCH_PEAK:-0}" = 1 ]; then
  target/release/ferry bench --url "$urls" --scenario peak | tee "$OUT/peak.txt" || true
fi
# Stops the cluster and deletes its namespace: durable queues and history streams outlive it.
scripts/cluster.sh destroy
trap - EXIT
cargo bench --quiet -p ferry-cluster --bench backlog -- --instructions 200000 | tee "$OUT/backlog.json"
echo "== load after: $(cut -d' ' -f1-3 /proc/loadavg)"
