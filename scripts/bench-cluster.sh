#!/usr/bin/env bash
# The distributed mode's benchmarks, side by side in one run on this machine:
#   1. the raw RabbitMQ ceiling (cluster/benches/amqp_ceiling.rs: lapin, 500-byte persistent
#      messages, one per message, confirms, over 16 partition quorum queues);
#   2. a local cluster (2 workers, 2 ingress nodes) loaded by `ferry bench` over both ingress
#      nodes: its throughput in a closed loop with as many writes in flight as the ceiling's
#      client keeps (one per connection), and the highest open-loop rate with p99 ack <= 50 ms
#      (--find-max), each reported as a ratio to 1.;
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
cargo bench --quiet -p ferry-cluster --bench amqp_ceiling -- --seconds 15 | tee "$OUT/ceiling.json"
ceiling=$(sed -n 's/.*"messages_per_sec":\([0-9]*\).*/\1/p' "$OUT/ceiling.json")
in_flight=$(sed -n 's/.*"in_flight":\([0-9]*\).*/\1/p' "$OUT/ceiling.json")

rm -rf "$FERRY_CLUSTER_DIR"
trap 'scripts/cluster.sh down >/dev/null 2>&1 || true' EXIT
scripts/cluster.sh up 2 2
urls="ws://127.0.0.1:$FERRY_INGRESS_BASE_PORT/v1/ws,ws://127.0.0.1:$((FERRY_INGRESS_BASE_PORT + 1))/v1/ws"
target/release/ferry bench --url "$urls" --connections "$in_flight" --closed-loop --duration 10s \
  --warmup 3s --json >"$OUT/closed-loop.json" || true
closed=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); run=r["runs"][0]; print(int(run["achieved_rate"]) if not run["failures"] else 0)' "$OUT/closed-loop.json")
echo "== ceiling ${ceiling} msgs/s; ferry closed loop, ${in_flight} in flight: ${closed}/s (verified: 0 means not); ratio $(python3 -c "print(round($closed/$ceiling, 2))")"
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
scripts/cluster.sh down
trap - EXIT
# The namespace's durable queues (and its history streams in Redis) stay until deleted.
redis-cli --scan --pattern "$FERRY_CLUSTER__NAMESPACE:*" 2>/dev/null | xargs -r -n 500 redis-cli del >/dev/null || true
for q in $(rabbitmqctl list_queues name -q 2>/dev/null | grep "^$FERRY_CLUSTER__NAMESPACE\."); do
  rabbitmqctl delete_queue "$q" -q >/dev/null 2>&1 || true
done
# rabbitmqctl has no delete_exchange; RabbitMQ 3.10's own function does it.
for x in $(rabbitmqctl list_exchanges name -q 2>/dev/null | grep "^$FERRY_CLUSTER__NAMESPACE\."); do
  rabbitmqctl eval "rabbit_exchange:delete(rabbit_misc:r(<<\"/\">>, exchange, <<\"$x\">>), false, <<\"ferry\">>)." \
    >/dev/null 2>&1 || true
done
cargo bench --quiet -p ferry-cluster --bench backlog -- --instructions 200000 | tee "$OUT/backlog.json"
echo "== load after: $(cut -d' ' -f1-3 /proc/loadavg)"
