#!/usr/bin/env bash
# Stop the proxy that start.sh started (PID from LITELLM_PIDFILE, default /tmp/litellm-bench.pid).
set -euo pipefail
pidfile=${LITELLM_PIDFILE:-/tmp/litellm-bench.pid}
if [[ ! -s $pidfile ]]; then
  echo "litellm-bench: no pidfile at $pidfile; nothing to stop" >&2
  exit 0
fi
pid=$(cat "$pidfile")
if kill "$pid" 2>/dev/null; then
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
  echo "litellm-bench: stopped pid $pid" >&2
fi
rm -f "$pidfile"
