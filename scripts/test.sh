#!/usr/bin/env bash
# Runs every test of Ferry. On a fresh Debian machine with Rust it first installs and starts what
# the tests need (RabbitMQ, Redis, Python 3); on a machine that already runs them it only checks.
#
# Environment knobs (all optional):
#   FERRY_FAILOVER_KILLS=N     SIGKILLs of a worker in the distributed failover test (default 1)
#   FERRY_CRASH_KILLS=N        SIGKILL crash iterations of the store's process crash test (default 30)
#   FERRY_CRASH_ITERATIONS=N   simulated-crash iterations of the store's crash tests
#   FERRY_TEST_ARGS="..."      extra arguments after `cargo test ... --`
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*"; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for_port() {
  local port=$1 name=$2 i
  for i in $(seq 1 120); do
    port_open "$port" && return 0
    sleep 1
  done
  echo "error: $name did not open port $port within 120 s" >&2
  return 1
}

apt_updated=0
apt_install() {
  if [ "$(id -u)" != 0 ]; then
    echo "error: $* missing and not root: install it with apt-get install $*" >&2
    exit 1
  fi
  if [ "$apt_updated" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_redis() {
  if port_open 6379; then log "redis: running on 127.0.0.1:6379"; return; fi
  command -v redis-server >/dev/null || { log "redis: installing"; apt_install redis-server; }
  log "redis: starting"
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp --logfile /tmp/ferry-test-redis.log
  wait_for_port 6379 redis
}

ensure_rabbitmq() {
  if port_open 5672; then log "rabbitmq: running on 127.0.0.1:5672"; return; fi
  command -v rabbitmq-server >/dev/null || { log "rabbitmq: installing"; apt_install rabbitmq-server; }
  log "rabbitmq: starting"
  rabbitmq-server -detached
  wait_for_port 5672 rabbitmq
}

ensure_python() {
  command -v python3 >/dev/null || { log "python3: installing"; apt_install python3; }
}

command -v cargo >/dev/null || { echo "error: cargo not found: install Rust (rustup) first" >&2; exit 1; }
ensure_python
ensure_redis
ensure_rabbitmq

log "cargo test (workspace)"
# shellcheck disable=SC2086
cargo test --workspace --release -- ${FERRY_TEST_ARGS:-}
