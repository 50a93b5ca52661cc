#!/usr/bin/env bash
# The official OpenAI SDKs, unchanged but for their base URL and key, against the service's OpenAI-compatible surface
# (`POST /v1/images/generations`, `GET /v1/models`, errors in OpenAI's shape): the `openai` Python SDK (PyPI, pinned
# below; scripts/openai_compat_check.py lists the checks), then the `openai` Node SDK (npm, pinned below;
# scripts/openai_compat_check.mjs) when node and npm can install it. Each prints one line per check and ends with
# "N passed, M failed"; the script exits 1 on any failure.
#
# What runs, from the debug build, each with a clean environment (`env -i`: no provider key, DATABASE_URL or
# REDIS_URL from the caller) on a free loopback port, stopped on exit:
#   - `imagegen emulator --api-key K`, standing in for OpenAI;
#   - `imagegen standalone` in a temporary directory (SQLite there, the in-process queue, local storage), with
#     OPENAI_API_KEY=K and OPENAI_BASE_URL=<emulator>/v1, authentication on, RATE_LIMIT_PER_MINUTE=20 and one
#     provider call per job (PROVIDER_MAX_ATTEMPTS=1, JOB_MAX_PROVIDER_CALLS=1, so an emulator failure is the
#     job's failure);
#   - API keys minted with `imagegen keys create` on its database: one owner per SDK, and one whose rate limit the
#     checks use up (shared by both SDKs).
#
# The Python SDK goes into the CI tools' virtualenv (IMAGEGEN_CI_VENV, default /var/tmp/imagegen-ci-venv), the Node
# SDK into a cache directory (IMAGEGEN_CI_NODE, default /var/tmp/imagegen-ci-node), never the system or the checkout;
# OPENAI_COMPAT_NODE_SDK=VERSION checks another release of it. Without node or npm, or when npm cannot install it,
# the Node part is skipped with a note (the Python part still decides the result).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV="${IMAGEGEN_CI_VENV:-/var/tmp/imagegen-ci-venv}"
NODE_CACHE="${IMAGEGEN_CI_NODE:-/var/tmp/imagegen-ci-node}"
OPENAI_VERSION=3.57.0
# The Node SDK: 7.x needs Node 22 or later; on older Node (20 here), 6.49.0, the last 6.x (no Node requirement).
OPENAI_NODE_VERSION=7.59.0
OPENAI_NODE_VERSION_LEGACY=6.49.0
# Per owner; the Python checks make 16 requests with their key, the Node ones 7 with theirs.
RATE_LIMIT=20
STARTED=$(date +%s)
say() { echo "openai-compat: $*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
  say "creating the tools virtualenv $VENV"
  python3 -m venv "$VENV" || { say "ERROR: cannot create a Python virtualenv at $VENV"; exit 1; }
fi
if [ "$("$VENV/bin/python" -c 'import openai; print(openai.__version__)' 2>/dev/null)" != "$OPENAI_VERSION" ]; then
  say "installing openai $OPENAI_VERSION (pip) into $VENV"
  "$VENV/bin/python" -m pip install -q "openai==$OPENAI_VERSION" >/dev/null \
    || { say "ERROR: could not install openai $OPENAI_VERSION from PyPI"; exit 1; }
fi

# A no-op when the tests built it already.
cargo build --locked --bin imagegen
TARGET="${CARGO_TARGET_DIR:-target}"
case "$TARGET" in /*) ;; *) TARGET="$ROOT/$TARGET" ;; esac
BIN="$TARGET/debug/imagegen"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/imagegen-openai-compat.XXXXXX")
EMULATOR_PID=""
SERVICE_PID=""
stop() { # stop PID: SIGTERM, SIGKILL if it is still there 10 s later
  local pid=$1
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 40); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.25
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  if [ -n "$SERVICE_PID" ]; then stop "$SERVICE_PID"; fi
  if [ -n "$EMULATOR_PID" ]; then stop "$EMULATOR_PID"; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
logs() { # the last lines of both processes' logs, after a failure
  say "the service's last log lines:"
  tail -n 30 "$WORK/service.log" >&2 || true
  say "the emulator's last log lines:"
  tail -n 10 "$WORK/emulator.log" >&2 || true
}

PROVIDER_KEY="sk-openai-compat-$RANDOM$RANDOM"
emulator_port=$(free_port)
emulator="http://127.0.0.1:$emulator_port"
# `exec`: `$!` is then the process itself, which cleanup stops.
(exec env -i PATH="$PATH" HOME="$HOME" "$BIN" emulator --port "$emulator_port" --api-key "$PROVIDER_KEY") \
  >"$WORK/emulator.log" 2>&1 &
EMULATOR_PID=$!

# imagegen runs with these settings only.
DB="sqlite:$WORK/db.sqlite"
clean_env=(env -i PATH="$PATH" HOME="$HOME" DATABASE_URL="$DB")
mint() { # mint OWNER: prints a new key of OWNER (keys create migrates the database first)
  local key
  key=$(cd "$WORK" && "${clean_env[@]}" "$BIN" keys create --owner "$1" --name openai-compat 2>>"$WORK/keys.log") \
    || { say "ERROR: imagegen keys create --owner $1 failed:"; cat "$WORK/keys.log" >&2; exit 1; }
  case "$key" in
    igk_*) printf '%s' "$key" ;;
    *) say "ERROR: imagegen keys create --owner $1 printed no key"; exit 1 ;;
  esac
}
KEY_PYTHON=$(mint openai-compat-python)
KEY_NODE=$(mint openai-compat-node)
KEY_LIMITED=$(mint openai-compat-rate-limited)

port=$(free_port)
base="http://127.0.0.1:$port"
(cd "$WORK" && exec "${clean_env[@]}" API_PORT="$port" LOCAL_STORAGE_PATH="$WORK/images" \
  OPENAI_API_KEY="$PROVIDER_KEY" OPENAI_BASE_URL="$emulator/v1" \
  ENABLE_AUTHENTICATION=true DOWNLOAD_SIGNING_KEY="openai-compat-download-signing-key-$RANDOM$RANDOM" \
  RATE_LIMIT_PER_MINUTE="$RATE_LIMIT" PROVIDER_MAX_ATTEMPTS=1 JOB_MAX_PROVIDER_CALLS=1 \
  WAIT_MAX_SECS=60 SHUTDOWN_GRACE_SECONDS=2 "$BIN" standalone) >"$WORK/service.log" 2>&1 &
SERVICE_PID=$!

ready=""
for _ in $(seq 1 120); do
  if "$BIN" healthcheck --url "$emulator/health" --timeout-secs 1 >/dev/null 2>&1 \
    && "$BIN" healthcheck --url "$base/health/ready" --timeout-secs 1 >/dev/null 2>&1; then
    ready=1
    break
  fi
  if ! kill -0 "$SERVICE_PID" 2>/dev/null || ! kill -0 "$EMULATOR_PID" 2>/dev/null; then break; fi
  sleep 0.5
done
if [ -z "$ready" ]; then
  say "ERROR: the emulator ($emulator) or the service ($base) did not become ready"
  logs
  exit 1
fi
say "service $base (standalone, authentication on, RATE_LIMIT_PER_MINUTE=$RATE_LIMIT), OpenAI = emulator $emulator"

status=0
say "Python: openai $OPENAI_VERSION"
# No __pycache__ in the checkout (the check imports scripts/sdk_check.py).
PYTHONDONTWRITEBYTECODE=1 OPENAI_COMPAT_KEY="$KEY_PYTHON" OPENAI_COMPAT_LIMITED_KEY="$KEY_LIMITED" \
  "$VENV/bin/python" scripts/openai_compat_check.py --base "$base" --emulator "$emulator" || status=1

# Node: the official `openai` package from npm (its configured registry), into the cache directory.
node_note=""
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  node_note="SKIPPED: node or npm is not installed"
else
  node_major=$(node -p 'process.versions.node.split(".")[0]')
  version=$OPENAI_NODE_VERSION
  if [ -n "${OPENAI_COMPAT_NODE_SDK:-}" ]; then
    version=$OPENAI_COMPAT_NODE_SDK
  elif [ "$node_major" -lt 22 ]; then
    version=$OPENAI_NODE_VERSION_LEGACY
    say "Node $(node --version) is older than 22, which openai $OPENAI_NODE_VERSION needs: using openai $version"
  fi
  sdk="$NODE_CACHE/openai-$version"
  installed=$(cd "$sdk" 2>/dev/null && node -p 'require("./node_modules/openai/package.json").version' 2>/dev/null \
    || true)
  if [ "$installed" != "$version" ]; then
    say "installing openai $version (npm) into $sdk"
    mkdir -p "$sdk"
    printf '{"private": true, "dependencies": {"openai": "%s"}}\n' "$version" >"$sdk/package.json"
    if ! (cd "$sdk" && npm install --no-audit --no-fund --loglevel=error >"$WORK/npm.log" 2>&1); then
      node_note="SKIPPED: npm could not install openai $version: $(grep -m 1 -i 'error' "$WORK/npm.log" || true)"
    fi
  fi
  if [ -z "$node_note" ]; then
    say "Node $(node --version): openai $version"
    OPENAI_COMPAT_KEY="$KEY_NODE" OPENAI_COMPAT_LIMITED_KEY="$KEY_LIMITED" OPENAI_COMPAT_SDK_DIR="$sdk" \
      node scripts/openai_compat_check.mjs --base "$base" || status=1
  fi
fi
if [ -n "$node_note" ]; then
  say "Node SDK $node_note; only the Python SDK was checked"
fi

if [ "$status" -ne 0 ]; then
  logs
  say "FAILED after $(($(date +%s) - STARTED)) s"
  exit 1
fi
say "passed in $(($(date +%s) - STARTED)) s"
