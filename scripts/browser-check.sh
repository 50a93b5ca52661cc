#!/usr/bin/env bash
# The web playground in a real browser: Debian's headless `chromium` driven by Playwright for Python
# (scripts/browser_check.py lists the checks). Starts the standalone service (debug build, sandbox providers, a fresh
# SQLite file in a temporary folder) with authentication off, then on (a key made with `imagegen keys create`), and
# runs the checks against each. Screenshots at desktop and phone widths, light and dark, go to
# ${BROWSER_CHECK_ARTIFACTS:-target/ci-artifacts/playground}. Prints one line per check and "N passed, M failed" per
# phase; exits 1 on any failure.
#
# Playwright goes into the CI tools' virtualenv (IMAGEGEN_CI_VENV, default /var/tmp/imagegen-ci-venv); its own browser
# download is never used (`executable_path=/usr/bin/chromium`), so nothing but the package registries is needed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV="${IMAGEGEN_CI_VENV:-/var/tmp/imagegen-ci-venv}"
PLAYWRIGHT_VERSION=1.65.2
SHOTS="${BROWSER_CHECK_ARTIFACTS:-$ROOT/target/ci-artifacts/playground}"
say() { echo "browser-check: $*" >&2; }

if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing chromium (apt-get)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
      || { say "ERROR: could not install chromium"; exit 1; }
  else
    say "ERROR: chromium is not installed (apt-get install chromium)"
    exit 1
  fi
fi
CHROMIUM=$(command -v chromium)

if [ ! -x "$VENV/bin/python" ]; then
  say "creating the tools virtualenv $VENV"
  python3 -m venv "$VENV" || { say "ERROR: cannot create a Python virtualenv at $VENV"; exit 1; }
fi
if [ "$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("playwright"))' 2>/dev/null)" \
  != "$PLAYWRIGHT_VERSION" ]; then
  say "installing playwright $PLAYWRIGHT_VERSION (pip) into $VENV"
  "$VENV/bin/python" -m pip install -q "playwright==$PLAYWRIGHT_VERSION" >/dev/null \
    || { say "ERROR: could not install playwright $PLAYWRIGHT_VERSION from PyPI"; exit 1; }
fi

# A no-op when the tests built it already.
cargo build --locked --bin imagegen
TARGET="${CARGO_TARGET_DIR:-target}"
case "$TARGET" in /*) ;; *) TARGET="$ROOT/$TARGET" ;; esac
BIN="$TARGET/debug/imagegen"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/imagegen-browser-check.XXXXXX")
mkdir -p "$SHOTS"
rm -f "$SHOTS"/*.png
PID=""
stop() {
  if [ -n "$PID" ]; then
    kill "$PID" 2>/dev/null || true
    for _ in $(seq 1 40); do
      kill -0 "$PID" 2>/dev/null || break
      sleep 0.25
    done
    kill -KILL "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    PID=""
  fi
}
cleanup() {
  stop
  rm -rf "$WORK"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"

# start [VAR=value ...]: the standalone service in $WORK (its ./data and ./generated_images), on $port.
start() {
  (cd "$WORK" && exec env -i PATH="$PATH" HOME="$HOME" API_HOST=127.0.0.1 API_PORT="$port" "$@" "$BIN") \
    >>"$WORK/service.log" 2>&1 &
  PID=$!
  for _ in $(seq 1 150); do
    if python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' "$base/health/live" \
      2>/dev/null; then
      return 0
    fi
    kill -0 "$PID" 2>/dev/null || break
    sleep 0.2
  done
  say "ERROR: the service did not start on $base; its log:"
  tail -n 30 "$WORK/service.log" >&2
  exit 1
}

started=$SECONDS
status=0
say "authentication off"
start
"$VENV/bin/python" scripts/browser_check.py --base "$base" --phase open --shots "$SHOTS" --chromium "$CHROMIUM" \
  || status=1
stop

say "authentication on"
KEY=$(cd "$WORK" && env -i PATH="$PATH" HOME="$HOME" "$BIN" keys create --owner browser-check --name ci 2>/dev/null)
SIGNING="browser-check-signing-key-$RANDOM$RANDOM$RANDOM$RANDOM"
start ENABLE_AUTHENTICATION=true DOWNLOAD_SIGNING_KEY="$SIGNING"
"$VENV/bin/python" scripts/browser_check.py --base "$base" --phase auth --shots "$SHOTS" --chromium "$CHROMIUM" \
  --api-key "$KEY" || status=1
stop

if [ "$status" -ne 0 ]; then
  say "the service's last log lines:"
  tail -n 30 "$WORK/service.log" >&2
fi
say "screenshots in $SHOTS; $((SECONDS - started)) s"
exit "$status"
