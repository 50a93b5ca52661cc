#!/usr/bin/env bash
# The official `openai` Python SDK (PyPI, pinned below) against `imagegen emulator`: proves the SDK parses what the
# emulator answers for OpenAI and Azure OpenAI (scripts/sdk_check.py lists the checks). Prints one line per check and
# ends with "N passed, M failed"; exits 1 on any failure.
#
# The SDK goes into the CI tools' virtualenv (IMAGEGEN_CI_VENV, default /var/tmp/imagegen-ci-venv), never the system
# Python. The emulator runs from the debug build with a clean environment (no EMULATOR_* from the caller) on a free
# loopback port, and is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV="${IMAGEGEN_CI_VENV:-/var/tmp/imagegen-ci-venv}"
OPENAI_VERSION=3.57.0
KEY="sk-sdk-check-$RANDOM$RANDOM"
DEPLOYMENT=my-gpt-image-2-deployment
say() { echo "sdk-check: $*" >&2; }

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

LOG=$(mktemp "${TMPDIR:-/tmp}/imagegen-sdk-check.XXXXXX")
EMULATOR_PID=""
cleanup() {
  if [ -n "$EMULATOR_PID" ]; then
    kill "$EMULATOR_PID" 2>/dev/null || true
    for _ in $(seq 1 20); do
      kill -0 "$EMULATOR_PID" 2>/dev/null || break
      sleep 0.25
    done
    kill -KILL "$EMULATOR_PID" 2>/dev/null || true
    wait "$EMULATOR_PID" 2>/dev/null || true
  fi
  rm -f "$LOG"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"
# `exec`: `$!` is then the emulator itself, which cleanup stops.
(exec env -i PATH="$PATH" HOME="$HOME" "$BIN" emulator --port "$port" --api-key "$KEY" \
  --azure-deployment "$DEPLOYMENT=gpt-image-2") >"$LOG" 2>&1 &
EMULATOR_PID=$!
ready=""
for _ in $(seq 1 100); do
  if python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' "$base/health" \
    2>/dev/null; then
    ready=1
    break
  fi
  kill -0 "$EMULATOR_PID" 2>/dev/null || break
  sleep 0.2
done
if [ -z "$ready" ]; then
  say "ERROR: the emulator did not start on $base; its log:"
  tail -n 30 "$LOG" >&2
  exit 1
fi

status=0
"$VENV/bin/python" scripts/sdk_check.py --base "$base" --api-key "$KEY" --azure-deployment "$DEPLOYMENT" || status=$?
if [ "$status" -ne 0 ]; then
  say "the emulator's last log lines:"
  tail -n 20 "$LOG" >&2
fi
exit "$status"
