#!/usr/bin/env bash
# Worker memory with many large images in flight: starts emulator, api and one worker (WORKER_CONCURRENCY=N) against
# local Postgres/Redis on a scratch database, makes the emulator answer every request with a picture padded to SIZE
# bytes after a delay (so all N are in flight together), submits N jobs at once, waits for all of them, and prints
# the worker's resident-memory high-water mark (VmHWM) before and after, per in-flight image, and as a multiple of
# the image size. Run once per way a picture arrives: gpt-image-2 over OpenAI (always base64 inside the JSON answer),
# then flux-schnell over the OpenAI-compatible FLUX host with OPENAI_RESPONSE_FORMAT=b64_json and =url (downloaded);
# GPT image models ignore OPENAI_RESPONSE_FORMAT, so only a FLUX (or DALL-E) host still exercises the url path.
# Usage: scripts/worker-memory.sh [N=32] [SIZE=4194304] [PROFILE=release]
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-32}" SIZE="${2:-4194304}" PROFILE="${3:-release}"
SKIP_STORAGE_EMULATORS=1 scripts/services.sh >/dev/null 2>&1
if [ "$PROFILE" = release ]; then cargo build --release --locked -q; else cargo build --locked -q; fi
BIN="./target/$PROFILE/imagegen"
[ "$PROFILE" = dev ] && BIN=./target/debug/imagegen
PG=postgres://postgres@127.0.0.1:5432
work=$(mktemp -d)
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true
  for db in "${dbs[@]:-}"; do [ -n "$db" ] && psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1; done
  rm -rf "$work"
}
dbs=()
trap cleanup EXIT
hwm_mb() { awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }

run() { # run MODEL FORMAT (FORMAT: OPENAI_RESPONSE_FORMAT, which GPT image models ignore)
  local model=$1 format=$2 port=18103 emu=18190
  local tag; tag="$(echo "$model" | tr -c 'a-z0-9\n' '_')_$format"
  local db="imagegen_mem_$$_$tag" label="$model $format"
  dbs+=("$db")
  psql "$PG/postgres" -qc "CREATE DATABASE $db"
  export DATABASE_URL="$PG/$db" REDIS_URL=redis://127.0.0.1:6379 QUEUE_NAME="mem-$$-$tag"
  export LOCAL_STORAGE_PATH="$work/images-$tag" LOG_LEVEL=warn API_PORT=$port
  export OPENAI_API_KEY=sk-mem OPENAI_BASE_URL="http://127.0.0.1:$emu/v1" OPENAI_RESPONSE_FORMAT=$format
  export FLUX_API_KEY=sk-mem FLUX_BASE_URL="http://127.0.0.1:$emu/v1"
  export WORKER_CONCURRENCY=$N MAX_IMAGE_BYTES=$((SIZE * 2)) WAIT_MAX_SECS=300
  $BIN migrate >/dev/null
  $BIN emulator --port $emu >/dev/null 2>&1 & local e=$!; pids+=($e)
  $BIN worker >"$work/worker-$tag.log" 2>&1 & local w=$!; pids+=($w)
  $BIN api >"$work/api-$tag.log" 2>&1 & local a=$!; pids+=($a)
  for _ in $(seq 1 100); do curl -sf "localhost:$port/health/ready" >/dev/null && break; sleep 0.1; done
  curl -sf -X PUT "localhost:$emu/emulator/config" -H 'Content-Type: application/json' \
    -d "{\"openai\": {\"image_bytes\": $SIZE, \"latency_ms\": 1500}, \"flux\": {\"image_bytes\": $SIZE, \"latency_ms\": 1500}}" \
    >/dev/null
  local body="{\"prompt\": \"A very large lighthouse\", \"model\": \"$model\", \"size\": \"1024x1024\"}"
  # One job first: the worker's footprint with everything warmed up and one large image handled.
  curl -sf -o /dev/null -X POST "localhost:$port/api/v1/generate" -H 'Content-Type: application/json' -d "$body"
  local before; before=$(hwm_mb $w)
  for _ in $(seq 1 "$N"); do
    curl -sf -o /dev/null -X POST "localhost:$port/api/v1/generate" -H 'Content-Type: application/json' \
      -H 'Prefer: wait=300' -d "$body" &
  done
  wait $(jobs -p | grep -v -e "^$e$" -e "^$w$" -e "^$a$") 2>/dev/null || true
  local done_jobs; done_jobs=$(psql "$DATABASE_URL" -tAc "SELECT count(*) FROM jobs WHERE status = 'succeeded'")
  local after; after=$(hwm_mb $w)
  awk -v f="$label" -v n="$N" -v s="$SIZE" -v b="$before" -v a="$after" -v d="$done_jobs" 'BEGIN {
    img = s / 1048576; per = (a - b) / n;
    printf "%-22s %3d images of %.1f MB in flight: %d succeeded; worker VmHWM %.1f MB -> %.1f MB; +%.1f MB per image in flight = %.2fx the image\n",
      f, n, img, d - 1, b, a, per, per / img }'
  kill $a $w $e 2>/dev/null || true; wait $a $w $e 2>/dev/null || true
}

echo "worker memory, $N concurrent jobs, images of $SIZE bytes, $PROFILE build, $(nproc) cores"
run gpt-image-2 b64_json
run flux-schnell b64_json
run flux-schnell url
