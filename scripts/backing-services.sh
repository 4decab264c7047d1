#!/usr/bin/env bash
# Make sure PostgreSQL and RabbitMQ (with its management API, which the test suite uses
# for one vhost per test) answer on this machine. Starts whichever is installed locally
# but stopped; otherwise says which is missing and how to start it, and fails.
#
# Hosts and ports come from the environment (defaults match config.yml):
#   PGHOST=127.0.0.1 PGPORT=5432 AMQP_HOST=127.0.0.1 AMQP_PORT=5672 RABBIT_MGMT_PORT=15672
set -euo pipefail

PGHOST=${PGHOST:-127.0.0.1}
PGPORT=${PGPORT:-5432}
AMQP_HOST=${AMQP_HOST:-127.0.0.1}
AMQP_PORT=${AMQP_PORT:-5672}
RABBIT_MGMT_PORT=${RABBIT_MGMT_PORT:-15672}

say() { echo "backing-services: $*" >&2; }

port_open() {  # host port
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

wait_port() {  # host port seconds
  local deadline=$((SECONDS + $3))
  until port_open "$1" "$2"; do
    ((SECONDS < deadline)) || return 1
    sleep 1
  done
}

ensure_postgres() {
  if port_open "$PGHOST" "$PGPORT"; then return 0; fi
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    say "PostgreSQL is not answering on $PGHOST:$PGPORT; starting cluster $version/main"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    wait_port "$PGHOST" "$PGPORT" 30 && return 0
  fi
  say "PostgreSQL is not reachable on $PGHOST:$PGPORT and could not be started here."
  say "Start it (e.g. 'pg_ctlcluster --skip-systemctl-redirect <version> main start'," \
      "or 'docker compose up -d postgres') and retry."
  return 1
}

ensure_rabbitmq() {
  if ! port_open "$AMQP_HOST" "$AMQP_PORT"; then
    if command -v rabbitmq-server >/dev/null; then
      say "RabbitMQ is not answering on $AMQP_HOST:$AMQP_PORT; starting it"
      rabbitmq-server -detached || true
      for _ in $(seq 1 12); do
        rabbitmqctl await_startup >/dev/null 2>&1 && break
        sleep 5
      done
    fi
    if ! wait_port "$AMQP_HOST" "$AMQP_PORT" 30; then
      say "RabbitMQ is not reachable on $AMQP_HOST:$AMQP_PORT and could not be started here."
      say "Start it ('rabbitmq-server -detached', or 'docker compose up -d rabbitmq') and retry."
      return 1
    fi
  fi
  if ! port_open "$AMQP_HOST" "$RABBIT_MGMT_PORT"; then
    if command -v rabbitmq-plugins >/dev/null; then
      say "enabling the RabbitMQ management plugin (port $RABBIT_MGMT_PORT)"
      rabbitmq-plugins enable rabbitmq_management >/dev/null
      wait_port "$AMQP_HOST" "$RABBIT_MGMT_PORT" 60 && return 0
    fi
    say "the RabbitMQ management API is not reachable on $AMQP_HOST:$RABBIT_MGMT_PORT."
    say "Enable it: 'rabbitmq-plugins enable rabbitmq_management'."
    return 1
  fi
}

ensure_postgres
ensure_rabbitmq
say "PostgreSQL $PGHOST:$PGPORT and RabbitMQ $AMQP_HOST:$AMQP_PORT (management :$RABBIT_MGMT_PORT) are up"
