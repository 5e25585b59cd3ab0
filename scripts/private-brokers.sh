#!/usr/bin/env bash
# Starts or stops a private RabbitMQ or Redis on a port of its own, for tests that stop or
# restart a broker (the machine's shared brokers on 5672 and 6379 are never touched):
#
#   scripts/private-brokers.sh start-redis PORT DIR     # empty, no persistence: a restart wipes it
#   scripts/private-brokers.sh stop-redis PORT
#   scripts/private-brokers.sh start-rabbitmq PORT DIR  # node ferryPORT@localhost, data in DIR
#   scripts/private-brokers.sh stop-rabbitmq DIR
#
# Each command returns once the port is open (start) or closed (stop), or fails after
# FERRY_BROKER_WAIT seconds (default 60). Starting RabbitMQ again with the same DIR keeps its
# durable queues and their messages. RabbitMQ runs as the user `rabbitmq` (Debian's package), so
# DIR is handed to that user and must be reachable by it (e.g. a fresh directory under /tmp);
# its Erlang distribution port is PORT+20000, so PORT must be at most 45535. Only loopback.
set -euo pipefail

WAIT=${FERRY_BROKER_WAIT:-60}

usage() {
  sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Waits (bounded) until the port is open (want=open) or closed (want=closed).
wait_port() {
  local port=$1 want=$2 what=$3 i
  for i in $(seq 1 $((WAIT * 10))); do
    if port_open "$port"; then
      [ "$want" = open ] && return 0
    else
      [ "$want" = closed ] && return 0
    fi
    sleep 0.1
  done
  echo "error: $what: port $port not $want after ${WAIT}s" >&2
  return 1
}

need() {
  command -v "$1" >/dev/null || {
    echo "error: $1 is not installed (scripts/test.sh installs it: apt-get install $2)" >&2
    exit 3
  }
}

check_port() {
  case $1 in '' | *[!0-9]*) usage ;; esac
  if port_open "$1"; then
    echo "error: port $1 is already in use" >&2
    exit 1
  fi
}

absolute() { mkdir -p "$1" && cd "$1" && pwd; }

start_redis() {
  local port=$1 dir
  need redis-server redis-server
  check_port "$port"
  dir=$(absolute "$2")
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
    --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" \
    >"$dir/redis.out" 2>&1 </dev/null || { cat "$dir/redis.out" >&2; exit 1; }
  wait_port "$port" open "redis on $port" || { tail -n 20 "$dir/redis.log" >&2; exit 1; }
  echo "redis running on 127.0.0.1:$port (pid $(cat "$dir/redis.pid" 2>/dev/null || echo ?))"
}

stop_redis() {
  local port=$1
  need redis-cli redis-tools
  case $port in '' | *[!0-9]*) usage ;; esac
  redis-cli -h 127.0.0.1 -p "$port" shutdown nosave >/dev/null 2>&1 || true
  wait_port "$port" closed "redis on $port"
  echo "redis on 127.0.0.1:$port stopped"
}

start_rabbitmq() {
  local port=$1 dir
  need rabbitmq-server rabbitmq-server
  check_port "$port"
  if [ "$port" -gt 45535 ]; then
    echo "error: rabbitmq port $port: its distribution port $((port + 20000)) would be out of range" >&2
    exit 1
  fi
  if [ "$(id -u)" != 0 ]; then
    echo "error: starting a private rabbitmq needs root: the node runs as the user rabbitmq" >&2
    exit 1
  fi
  dir=$(absolute "$2")
  mkdir -p "$dir/log"
  echo '[].' >"$dir/enabled_plugins"
  printf 'listeners.tcp.1 = 127.0.0.1:%s\nloopback_users = none\n' "$port" >"$dir/rabbit.conf"
  echo "$port" >"$dir/port"
  rm -f "$dir/pid"
  chown -R rabbitmq:rabbitmq "$dir"
  if command -v runuser >/dev/null && ! runuser -u rabbitmq -- test -w "$dir"; then
    echo "error: the user rabbitmq cannot write $dir (is a parent directory private?)" >&2
    exit 1
  fi
  # RABBITMQ_CONF_ENV_FILE names no file: the machine's rabbitmq-env.conf is not for this node.
  RABBITMQ_CONFIG_FILE="$dir/rabbit.conf" \
    RABBITMQ_CONF_ENV_FILE="$dir/none-env" \
    NODE_IP_ADDRESS=127.0.0.1 \
    RABBITMQ_NODENAME="ferry$port@localhost" \
    RABBITMQ_NODE_PORT="$port" \
    RABBITMQ_DIST_PORT=$((port + 20000)) \
    RABBITMQ_MNESIA_BASE="$dir/mnesia" \
    RABBITMQ_LOG_BASE="$dir/log" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
    RABBITMQ_PID_FILE="$dir/pid" \
    RABBITMQ_FEATURE_FLAGS_FILE="$dir/feature_flags" \
    RABBITMQ_QUORUM_DIR="$dir/quorum" \
    RABBITMQ_STREAM_DIR="$dir/stream" \
    RABBITMQ_PLUGINS_EXPAND_DIR="$dir/plugins-expand" \
    setsid rabbitmq-server >"$dir/out" 2>&1 </dev/null &
  if ! wait_port "$port" open "rabbitmq on $port"; then
    tail -n 20 "$dir/out" >&2
    exit 1
  fi
  echo "rabbitmq running on 127.0.0.1:$port (node ferry$port@localhost, pid $(cat "$dir/pid" 2>/dev/null || echo ?))"
}

# The pids of the private node's processes (its command lines name the node).
node_pids() { pgrep -f -- "ferry$1@localhost" || true; }

stop_rabbitmq() {
  local dir port pid
  [ -f "$1/port" ] || { echo "error: $1 holds no private rabbitmq (no port file)" >&2; exit 1; }
  dir=$(cd "$1" && pwd)
  port=$(cat "$dir/port")
  pid=$(cat "$dir/pid" 2>/dev/null || true)
  if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; fi
  if ! wait_port "$port" closed "rabbitmq on $port"; then
    echo "warning: rabbitmq on $port did not stop: killing node ferry$port@localhost" >&2
    # shellcheck disable=SC2046
    kill -KILL $(node_pids "$port") 2>/dev/null || true
    wait_port "$port" closed "rabbitmq on $port"
  fi
  # The node's VM may linger a moment after closing its listener: starting it again at once
  # would find its name taken.
  for _ in $(seq 1 $((WAIT * 10))); do
    [ -z "$(node_pids "$port")" ] && break
    sleep 0.1
  done
  if [ -n "$(node_pids "$port")" ]; then
    # shellcheck disable=SC2046
    kill -KILL $(node_pids "$port") 2>/dev/null || true
  fi
  echo "rabbitmq on 127.0.0.1:$port stopped"
}

[ $# -ge 1 ] || usage
case $1 in
  start-redis) [ $# -eq 3 ] || usage; start_redis "$2" "$3" ;;
  stop-redis) [ $# -eq 2 ] || usage; stop_redis "$2" ;;
  start-rabbitmq) [ $# -eq 3 ] || usage; start_rabbitmq "$2" "$3" ;;
  stop-rabbitmq) [ $# -eq 2 ] || usage; stop_rabbitmq "$2" ;;
  *) usage ;;
esac
