#!/usr/bin/env bash
# Makes sure PostgreSQL and Redis answer on their standard local ports (127.0.0.1:5432 and :6379), starting them,
# and installing them from Debian's packages, only when they do not. Says what it does. Idempotent.
set -euo pipefail

PG_HOST=127.0.0.1 PG_PORT=5432 REDIS_PORT=6379
say() { echo "services: $*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

pg_up() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT" 2>/dev/null; }
redis_up() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; }

wait_for() { # wait_for NAME CHECK
  for _ in $(seq 1 60); do "$2" && return 0; sleep 0.5; done
  say "$1 did not come up"; return 1
}

ensure_postgres() {
  if command -v pg_isready >/dev/null && pg_up; then say "postgres is up on $PG_HOST:$PG_PORT"; return; fi
  if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    say "installing postgresql (apt)"
    as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  if command -v pg_ctlcluster >/dev/null && [ -n "$(ls /etc/postgresql 2>/dev/null)" ]; then
    local version; version=$(ls /etc/postgresql | sort -V | tail -n1)
    say "starting postgres cluster $version/main"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  fi
  if ! wait_for postgres pg_up 2>/dev/null; then
    # No packaged cluster: run a private one with trust auth for local tests.
    local bin dir; bin=$(dirname "$(ls /usr/lib/postgresql/*/bin/postgres | sort -V | tail -n1)"); dir=/var/tmp/imagegen-pg
    say "starting a private postgres in $dir"
    if [ ! -f "$dir/PG_VERSION" ]; then
      as_root mkdir -p "$dir" && as_root chown postgres "$dir"
      as_root su postgres -c "$bin/initdb -D $dir -A trust -U postgres" >/dev/null
    fi
    as_root su postgres -c "$bin/pg_ctl -D $dir -l $dir/log -o '-c listen_addresses=$PG_HOST -p $PG_PORT -k $dir' start" >/dev/null
    wait_for postgres pg_up
  fi
  say "postgres is up on $PG_HOST:$PG_PORT"
}

ensure_redis() {
  if command -v redis-cli >/dev/null && redis_up; then say "redis is up on 127.0.0.1:$REDIS_PORT"; return; fi
  if ! command -v redis-server >/dev/null; then
    say "installing redis-server (apt)"
    as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  fi
  say "starting redis on 127.0.0.1:$REDIS_PORT"
  mkdir -p /var/tmp/imagegen-redis
  redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
    --dir /var/tmp/imagegen-redis --logfile /var/tmp/imagegen-redis/redis.log
  wait_for redis redis_up
  say "redis is up on 127.0.0.1:$REDIS_PORT"
}

ensure_postgres
ensure_redis
