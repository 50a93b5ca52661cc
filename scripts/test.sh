#!/usr/bin/env bash
# The one test command: starts (or installs) Postgres and Redis if they are not running, then runs every test of
# the workspace (unit, integration against real Postgres/Redis, end-to-end against the real binaries).
# Extra arguments go to the test runner, e.g. `scripts/test.sh generate::wait_mode`.
# On exit it stops the storage emulators (moto, Azurite) it started itself, not ones that were already running
# (KEEP_SERVICES=1 leaves them up for the next run); Postgres and Redis, if it started them, stay up and it says how
# to stop them.
set -euo pipefail
cd "$(dirname "$0")/.."

started=$(mktemp)
stop_started() {
  local kind name what
  while read -r kind name what; do
    if [[ "$kind" == pid && "${KEEP_SERVICES:-}" != 1 ]]; then
      echo "test: stopping $name (pid $what), started by this run" >&2
      kill -- "-$what" 2>/dev/null || true
    elif [[ "$kind" == pid ]]; then
      echo "test: $name is still running (started by this run, KEEP_SERVICES=1); stop it with: kill -- -$what" >&2
    else
      echo "test: $name is still running (started by this run); stop it with: $what" >&2
    fi
  done <"$started"
  rm -f "$started"
}
trap stop_started EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

SERVICES_STARTED="$started" scripts/services.sh

# sqlx::test creates (and drops) one database per test on this server.
export DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export REDIS_URL="${TEST_REDIS_URL:-redis://127.0.0.1:6379}"

# The webhook tests verify deliveries with the Standard Webhooks reference verifier (Python, PyPI): installed once
# here, not by tests racing each other.
scripts/verify-webhooks.sh --prepare

# The end-to-end suite (one test binary, `it`: tests/it/main.rs) runs twice: api + worker processes on Postgres and
# Redis, then one `imagegen standalone` process on SQLite with its in-process queue (E2E_MODE=standalone). The second
# run leaves out, by filter, the modules whose tests need several processes or Redis itself (fleet, auth_fleet,
# webhooks_fleet, faults, budgets, shutdown) or never use the stack (deploy, standalone), so what it counts as passed did run.
not_standalone=(fleet auth_fleet webhooks_fleet faults budgets deploy standalone shutdown)
status=0
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@" || status=$?
  echo "test: the end-to-end suite again, standalone mode (SQLite, in-process queue)" >&2
  E2E_MODE=standalone cargo nextest run --workspace --no-fail-fast --no-tests=warn \
    -E "binary_id(imagegen::it) and not test(/^($(IFS='|'; echo "${not_standalone[*]}"))::/)" "$@" || status=$?
else
  echo "test: cargo-nextest not found; using cargo test" >&2
  cargo test --workspace --no-fail-fast "$@" || status=$?
  echo "test: the end-to-end suite again, standalone mode (SQLite, in-process queue)" >&2
  skip=()
  for module in "${not_standalone[@]}"; do skip+=(--skip "$module::"); done
  # After the caller's own `--` if it gave one (its test-binary arguments), else after ours.
  separator=(--)
  for arg in "$@"; do
    if [[ "$arg" == "--" ]]; then separator=(); fi
  done
  E2E_MODE=standalone cargo test --no-fail-fast --test it "$@" "${separator[@]}" "${skip[@]}" || status=$?
fi
exit "$status"
