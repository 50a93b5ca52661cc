#!/usr/bin/env bash
# Wait-mode latency against the emulator with zero provider delay: starts emulator, api and worker (release build)
# against local Postgres/Redis on a scratch database, sends N sequential `POST /api/v1/generate` requests, and
# prints p50/p90/p99/max of the whole request (submit -> queue -> worker -> provider -> storage -> answer), next to
# the same figures for calling the emulator directly (the floor).
# Usage: scripts/latency.sh [N=200]
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-200}"
SKIP_STORAGE_EMULATORS=1 scripts/services.sh >/dev/null 2>&1
cargo build --release --locked -q
BIN=./target/release/imagegen
DB="imagegen_latency_$$"
psql postgres://postgres@127.0.0.1:5432/postgres -qc "CREATE DATABASE $DB"
work=$(mktemp -d)
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true
  psql postgres://postgres@127.0.0.1:5432/postgres -qc "DROP DATABASE IF EXISTS $DB" || true
  rm -rf "$work"
}
trap cleanup EXIT
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$DB" REDIS_URL=redis://127.0.0.1:6379
export QUEUE_NAME="latency-$$" LOCAL_STORAGE_PATH="$work/images" LOG_LEVEL=warn
export OPENAI_API_KEY=sk-latency OPENAI_BASE_URL=http://127.0.0.1:18090/v1 API_PORT=18003
$BIN migrate
$BIN emulator --port 18090 >/dev/null 2>&1 & pids+=($!)
$BIN worker >"$work/worker.log" 2>&1 & pids+=($!)
$BIN api >"$work/api.log" 2>&1 & pids+=($!)
for _ in $(seq 1 100); do curl -sf localhost:18003/health/ready >/dev/null && break; sleep 0.1; done

body='{"prompt": "A lighthouse at dusk", "model": "gpt-image-2", "size": "1024x1024"}'
measure() { # measure URL BODY [HEADER...] -> one time_total per line
  local url=$1 data=$2; shift 2
  for _ in $(seq 1 "$N"); do
    curl -s -o /dev/null -w '%{time_total}\n' -X POST "$url" -H 'Content-Type: application/json' "$@" -d "$data"
  done
}
stats() { sort -n | awk -v label="$1" '{a[NR]=$1} END {
  printf "%-34s n=%d  p50=%.1f ms  p90=%.1f ms  p99=%.1f ms  max=%.1f ms\n", label, NR,
    a[int(NR*0.5)+0]*1000, a[int(NR*0.9)+0]*1000, a[int(NR*0.99)+0]*1000, a[NR]*1000 }'; }

# GPT image models always answer base64 and refuse response_format (the emulator answers dall-e-3 with 404: retired).
direct='{"model": "gpt-image-2", "prompt": "A lighthouse at dusk", "size": "1024x1024"}'
measure http://127.0.0.1:18003/api/v1/generate "$body" >/dev/null   # warm-up (connections, page cache)
measure http://127.0.0.1:18090/v1/images/generations "$direct" -H 'Authorization: Bearer sk-latency' \
  | stats "emulator directly (floor)"
measure http://127.0.0.1:18003/api/v1/generate "$body" | stats "imagegen wait mode (end to end)"
