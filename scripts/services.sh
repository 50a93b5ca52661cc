#!/usr/bin/env bash
# Makes sure PostgreSQL and Redis answer on their standard local ports (127.0.0.1:5432 and :6379), and the storage
# emulators the tests use: moto's S3 server (127.0.0.1:5000, bucket imagegen-test) and Azurite (127.0.0.1:10000,
# container imagegen-test). Starts each, and installs it (Debian packages, PyPI, npm), only when it does not answer.
# Says what it does. Idempotent. An emulator that cannot be installed is reported and skipped; the storage tests
# that need it then fail saying so.
#
# With SERVICES_STARTED naming a file, each service this run starts itself (not one that already answered) is
# appended to it, one line each: `pid NAME PID` for a process started in its own session (so `kill -- -PID` stops
# it and its children), or `left NAME HOW-TO-STOP` for one handed to its own manager (Postgres, Redis).
# scripts/test.sh uses it to stop what it started.
set -euo pipefail

PG_HOST=127.0.0.1 PG_PORT=5432 REDIS_PORT=6379
say() { echo "services: $*" >&2; }
started() { if [ -n "${SERVICES_STARTED:-}" ]; then echo "$*" >>"$SERVICES_STARTED"; fi; }
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
    if as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start; then
      started left postgres "pg_ctlcluster $version main stop"
    fi
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
    started left postgres "su postgres -c '$bin/pg_ctl -D $dir stop'"
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
  started left redis "redis-cli -p $REDIS_PORT shutdown nosave"
  wait_for redis redis_up
  say "redis is up on 127.0.0.1:$REDIS_PORT"
}

tcp_up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
moto_up() { tcp_up "$MOTO_PORT"; }
azurite_up() { tcp_up "$AZURITE_PORT"; }
# The tests expect these ports; they can be changed only to check this script without touching running emulators.
MOTO_PORT=${MOTO_PORT:-5000} AZURITE_PORT=${AZURITE_PORT:-10000} TEST_CONTAINER=imagegen-test
# Azurite's well-known development account (public, documented by Microsoft; not a secret).
AZURITE_ACCOUNT=devstoreaccount1
AZURITE_KEY='Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='

ensure_moto() {
  if ! moto_up; then
    if ! command -v moto_server >/dev/null; then
      say "installing moto[server] (pip)"
      if ! python3 -m pip install -q 'moto[server]' >/dev/null 2>&1; then
        say "ERROR: could not install moto[server] from PyPI; the S3 storage tests will fail"; return 0
      fi
    fi
    say "starting moto's S3 server on 127.0.0.1:$MOTO_PORT"
    setsid nohup moto_server -H 127.0.0.1 -p "$MOTO_PORT" >/var/tmp/imagegen-moto.log 2>&1 < /dev/null &
    started pid moto $!
    wait_for moto moto_up || { say "ERROR: moto did not start (see /var/tmp/imagegen-moto.log)"; return 0; }
  fi
  # Bucket for the tests (moto takes an unsigned PUT; an existing bucket answers 200 or 409, both fine).
  curl -s -o /dev/null -X PUT "http://127.0.0.1:$MOTO_PORT/$TEST_CONTAINER" || true
  say "moto S3 is up on 127.0.0.1:$MOTO_PORT (bucket $TEST_CONTAINER)"
}

ensure_azurite() {
  if ! azurite_up; then
    if ! command -v azurite-blob >/dev/null; then
      say "installing azurite (npm)"
      if ! npm install -g --silent azurite >/dev/null 2>&1; then
        say "ERROR: could not install azurite from npm; the Azure storage tests will fail"; return 0
      fi
    fi
    say "starting Azurite (blob) on 127.0.0.1:$AZURITE_PORT"
    setsid nohup azurite-blob --blobHost 127.0.0.1 --blobPort "$AZURITE_PORT" --inMemoryPersistence \
      --skipApiVersionCheck --loose --disableTelemetry >/var/tmp/imagegen-azurite.log 2>&1 < /dev/null &
    started pid azurite $!
    wait_for azurite azurite_up || { say "ERROR: Azurite did not start (see /var/tmp/imagegen-azurite.log)"; return 0; }
  fi
  # Container for the tests: object_store cannot create one, so sign a Create Container call (Shared Key).
  local date version=2021-08-06 hexkey sig
  date=$(date -u '+%a, %d %b %Y %H:%M:%S GMT')
  hexkey=$(printf '%s' "$AZURITE_KEY" | base64 -d | od -An -tx1 | tr -d ' \n')
  sig=$(printf "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:%s\nx-ms-version:%s\n/%s/%s/%s\nrestype:container" \
      "$date" "$version" "$AZURITE_ACCOUNT" "$AZURITE_ACCOUNT" "$TEST_CONTAINER" \
    | openssl dgst -sha256 -mac HMAC -macopt "hexkey:$hexkey" -binary | base64 -w0)
  curl -s -o /dev/null -X PUT -H "x-ms-date: $date" -H "x-ms-version: $version" -H "Content-Length: 0" \
    -H "Authorization: SharedKey $AZURITE_ACCOUNT:$sig" \
    "http://127.0.0.1:$AZURITE_PORT/$AZURITE_ACCOUNT/$TEST_CONTAINER?restype=container" || true
  say "Azurite is up on 127.0.0.1:$AZURITE_PORT (container $TEST_CONTAINER)"
}

ensure_postgres
ensure_redis
if [ "${SKIP_STORAGE_EMULATORS:-}" != 1 ]; then
  ensure_moto
  ensure_azurite
fi
