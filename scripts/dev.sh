#!/usr/bin/env bash
# Runs the whole service locally with no API keys: Postgres and Redis (started, or installed, if needed), the
# provider emulator, one worker and the API on http://localhost:${API_PORT:-8003}. Ctrl-C stops everything it started.
# Every provider without a key is answered by the emulator: OpenAI's GPT image models (gpt-image-2, ...), Together's
# FLUX.1 [schnell] and Black Forest Labs' FLUX models. Set OPENAI_API_KEY (and leave OPENAI_BASE_URL unset),
# FLUX_API_KEY or BFL_API_KEY to use the real service instead.
set -euo pipefail
cd "$(dirname "$0")/.."

SKIP_STORAGE_EMULATORS=1 scripts/services.sh
cargo build --release --locked
BIN=./target/release/imagegen

export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/imagegen}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
db_name="${DATABASE_URL##*/}"; db_name="${db_name%%\?*}"
server_url="${DATABASE_URL%/*}/postgres"
psql "$server_url" -tAc "SELECT 1 FROM pg_database WHERE datname = '$db_name'" | grep -q 1 \
  || psql "$server_url" -qc "CREATE DATABASE \"$db_name\""
$BIN migrate

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

EMULATOR_PORT="${EMULATOR_PORT:-8090}"
if [ -z "${OPENAI_API_KEY:-}${AZURE_OPENAI_API_KEY:-}${AZURE_OPENAI_AD_TOKEN:-}" ] || [ -z "${FLUX_API_KEY:-}" ] \
  || [ -z "${BFL_API_KEY:-}" ]; then
  $BIN emulator --port "$EMULATOR_PORT" & pids+=($!)
fi
if [ -z "${OPENAI_API_KEY:-}${AZURE_OPENAI_API_KEY:-}${AZURE_OPENAI_AD_TOKEN:-}" ]; then
  export OPENAI_API_KEY=sk-local-emulator OPENAI_BASE_URL="http://127.0.0.1:$EMULATOR_PORT/v1"
  echo "dev: no OPENAI_API_KEY: GPT image models (gpt-image-2, ...) are served by the emulator on port $EMULATOR_PORT" >&2
fi
if [ -z "${FLUX_API_KEY:-}" ]; then
  export FLUX_API_KEY=local-emulator FLUX_BASE_URL="http://127.0.0.1:$EMULATOR_PORT/v1"
  echo "dev: no FLUX_API_KEY: FLUX.1 [schnell] (flux-schnell) is served by the emulator on port $EMULATOR_PORT" >&2
fi
if [ -z "${BFL_API_KEY:-}" ]; then
  export BFL_API_KEY=local-emulator BFL_BASE_URL="http://127.0.0.1:$EMULATOR_PORT/bfl/v1"
  echo "dev: no BFL_API_KEY: BFL's models (flux-2-pro, ...) are served by the emulator on port $EMULATOR_PORT" >&2
fi
$BIN worker & pids+=($!)
$BIN api & pids+=($!)
echo "dev: API on http://localhost:${API_PORT:-8003} (docs at /docs); Ctrl-C to stop" >&2
wait -n "${pids[@]}"
