#!/usr/bin/env bash
# A whole local Ferry cluster of the distributed mode, on the machine's RabbitMQ and Redis:
#
#   scripts/cluster.sh up [WORKERS] [INGRESS]   # default 2 workers and 2 ingress nodes
#   scripts/cluster.sh down                     # stop them all (gracefully)
#   scripts/cluster.sh destroy                  # down, then delete the namespace's queues,
#                                               # exchanges and Redis keys (`ferry destroy`)
#   scripts/cluster.sh status
#
# Clients connect to ws://127.0.0.1:7710/v1/ws, :7711, ... (FERRY_INGRESS_BASE_PORT). The same
# environment as scripts/scale.sh applies (FERRY_CLUSTER_DIR, FERRY_CLUSTER__NAMESPACE, ...).
# For private brokers, start them on ports of your own and point the cluster at them:
#   redis-server --port 6390 --save '' --daemonize yes
#   FERRY_CLUSTER__BUS_URL=redis://127.0.0.1:6390/ scripts/cluster.sh up
set -euo pipefail
cd "$(dirname "$0")/.."

case ${1:-} in
  up)
    scripts/scale.sh worker "${2:-2}"
    scripts/scale.sh ingress "${3:-2}"
    ;;
  down)
    scripts/scale.sh ingress 0
    scripts/scale.sh worker 0
    ;;
  destroy)
    scripts/cluster.sh down
    "${FERRY_BIN:-target/release/ferry}" --data "${FERRY_CLUSTER_DIR:-ferry-cluster}/data" destroy \
      --confirm "${FERRY_CLUSTER__NAMESPACE:-ferry}"
    ;;
  status) scripts/scale.sh status ;;
  *)
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
