#!/usr/bin/env bash
# schemathesis (PyPI) against the service's own OpenAPI document, twice: authentication off, then on with an API
# key. Every check runs (scripts/schemathesis.toml says which one is off where, and why; scripts/schemathesis_hooks.py
# drops one false positive of schemathesis's own): no 5xx, and every status, header, content type and body as
# documented. It prints the cases run in each mode and fails on any failure.
#
# The service is `imagegen standalone` in a temporary directory: SQLite, the in-process queue and the sandbox
# providers (the built-in emulator), with a clean environment so no real provider key or Redis is picked up.
# schemathesis goes into the CI tools' virtualenv, never the system Python (a global pip install broke moto once).
#
#   SCHEMATHESIS_MAX_EXAMPLES  cases per operation and phase (default 200: about a minute a mode)
#   SCHEMATHESIS_SEED          replay a run (each run prints its seed)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV="${IMAGEGEN_CI_VENV:-/var/tmp/imagegen-ci-venv}"
VERSION=4.32.5
MAX_EXAMPLES="${SCHEMATHESIS_MAX_EXAMPLES:-200}"
say() { echo "schemathesis: $*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
  say "creating the tools virtualenv $VENV"
  python3 -m venv "$VENV" || { say "ERROR: cannot create a Python virtualenv at $VENV"; exit 1; }
fi
if [ "$("$VENV/bin/schemathesis" --version 2>/dev/null)" != "schemathesis, version $VERSION" ]; then
  say "installing schemathesis $VERSION (pip) into $VENV"
  "$VENV/bin/python" -m pip install -q "schemathesis==$VERSION" >/dev/null \
    || { say "ERROR: could not install schemathesis $VERSION from PyPI"; exit 1; }
fi

# A no-op when the tests built it already.
cargo build --locked --bin imagegen
TARGET="${CARGO_TARGET_DIR:-target}"
case "$TARGET" in /*) ;; *) TARGET="$ROOT/$TARGET" ;; esac
BIN="$TARGET/debug/imagegen"

WORK=""
SERVICE_PID=""
cleanup() {
  if [ -n "$SERVICE_PID" ]; then
    # SIGTERM (a graceful stop of SHUTDOWN_GRACE_SECONDS), SIGKILL if it is still there 10 s later.
    kill "$SERVICE_PID" 2>/dev/null || true
    for _ in $(seq 1 20); do
      kill -0 "$SERVICE_PID" 2>/dev/null || break
      sleep 0.5
    done
    kill -KILL "$SERVICE_PID" 2>/dev/null || true
    wait "$SERVICE_PID" 2>/dev/null || true
  fi
  if [ -n "$WORK" ]; then rm -rf "$WORK"; fi
  SERVICE_PID=""
  WORK=""
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}


run_mode() { # run_mode off|on
  local mode=$1 port base config started status=0
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/imagegen-schemathesis.XXXXXX")
  mkdir -p "$WORK/data"
  port=$(free_port)
  base="http://127.0.0.1:$port"
  config="$WORK/schemathesis.toml"
  cp scripts/schemathesis.toml "$config"
  # imagegen runs with these settings only: no provider key, REDIS_URL or DATABASE_URL from the caller's environment.
  local clean_env=(env -i PATH="$PATH" HOME="$HOME" DATABASE_URL="sqlite:$WORK/data/imagegen.db"
    LOCAL_STORAGE_PATH="$WORK/images")
  local settings=(API_PORT="$port" WAIT_MAX_SECS=10 SHUTDOWN_GRACE_SECONDS=2)
  if [ "$mode" = on ]; then
    # The key is made on the service's own database before it starts (keys create migrates it first).
    IMAGEGEN_SCHEMATHESIS_KEY=$(cd "$WORK" && "${clean_env[@]}" "$BIN" keys create --owner schemathesis --name ci \
      2>"$WORK/keys.log") \
      || { say "ERROR: imagegen keys create failed:"; cat "$WORK/keys.log" >&2; exit 1; }
    case "$IMAGEGEN_SCHEMATHESIS_KEY" in
      igk_*) ;;
      *) say "ERROR: imagegen keys create printed no key"; exit 1 ;;
    esac
    export IMAGEGEN_SCHEMATHESIS_KEY
    # AUTH_FAILURES_PER_MINUTE=0: schemathesis sends thousands of requests without the key from one address and
    # expects 401 for each, which the failed-authentication limit would answer 429 after the first 60.
    settings+=(ENABLE_AUTHENTICATION=true DOWNLOAD_SIGNING_KEY="schemathesis-download-signing-key-$RANDOM$RANDOM"
      AUTH_FAILURES_PER_MINUTE=0)
    # schemathesis sends it through the document's bearer scheme, so `ignored_auth` can take it away and expect 401.
    # The key stays out of the file: schemathesis reads ${...} from the environment.
    # shellcheck disable=SC2016
    printf '\n[auth.openapi.bearer]\nbearer = "${IMAGEGEN_SCHEMATHESIS_KEY}"\n' >>"$config"
  fi
  # `exec`: `$!` is then the service itself, which cleanup stops.
  (cd "$WORK" && exec "${clean_env[@]}" "${settings[@]}" "$BIN" standalone) >"$WORK/service.log" 2>&1 &
  SERVICE_PID=$!
  local ready=""
  for _ in $(seq 1 120); do
    if "$BIN" healthcheck --url "$base/health/ready" --timeout-secs 1 >/dev/null 2>&1; then ready=1; break; fi
    if ! kill -0 "$SERVICE_PID" 2>/dev/null; then break; fi
    sleep 0.5
  done
  if [ -z "$ready" ]; then
    say "ERROR: the service (authentication $mode) did not become ready; its log:"
    tail -n 50 "$WORK/service.log" >&2
    exit 1
  fi

  say "authentication $mode: $base, up to $MAX_EXAMPLES cases per operation and phase"
  started=$(date +%s)
  # No --checks: schemathesis runs every check by default, and a --checks list would override the config file's
  # per-operation exception.
  local args=(run "$base/openapi.json" --url "$base" --max-examples "$MAX_EXAMPLES"
    --request-timeout 30 --generation-database none --no-color)
  if [ -n "${SCHEMATHESIS_SEED:-}" ]; then args+=(--seed "$SCHEMATHESIS_SEED"); fi
  # From the work directory, so nothing schemathesis writes lands in the checkout.
  (cd "$WORK" && SCHEMATHESIS_HOOKS="$ROOT/scripts/schemathesis_hooks.py" \
    "$VENV/bin/schemathesis" --config-file "$config" "${args[@]}") | tee "$WORK/run.log" || status=$?
  local cases answers
  cases=$(grep -A1 '^Test cases:' "$WORK/run.log" | tail -n 1 | sed 's/^ *//')
  # What the service answered, from its request log: shows the cases got past authentication to the handlers.
  answers=$(python3 -c '
import collections, json, sys
counts = collections.Counter()
for line in open(sys.argv[1], errors="replace"):
    try:
        entry = json.loads(line)
    except ValueError:
        continue
    if entry.get("message") == "request" and "status" in entry:
        counts[entry["status"]] += 1
print(", ".join(f"{n} x {status}" for status, n in sorted(counts.items())))
' "$WORK/service.log")
  say "authentication $mode: ${cases:-no summary} in $(($(date +%s) - started)) s; the service answered $answers"
  if [ "$status" -ne 0 ]; then
    say "ERROR: schemathesis failed with authentication $mode; the service's last log lines:"
    tail -n 30 "$WORK/service.log" >&2
    exit "$status"
  fi
  cleanup
}

run_mode off
run_mode on
say "no failures with authentication off or on"
