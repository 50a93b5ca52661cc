#!/usr/bin/env bash
# The one test command: starts (or installs) Postgres and Redis if they are not running, then runs every test of
# the workspace (unit, integration against real Postgres/Redis, end-to-end against the real binaries).
# Extra arguments go to the test runner, e.g. `scripts/test.sh e2e::wait_mode`.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh

# sqlx::test creates (and drops) one database per test on this server.
export DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export REDIS_URL="${TEST_REDIS_URL:-redis://127.0.0.1:6379}"

# The end-to-end suite runs twice: api + worker processes on Postgres and Redis, then one `imagegen standalone`
# process on SQLite with its in-process queue (E2E_MODE=standalone; tests that need several processes or Redis
# itself say so and skip).
status=0
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@" || status=$?
  echo "test: the end-to-end suite again, standalone mode (SQLite, in-process queue)" >&2
  E2E_MODE=standalone cargo nextest run --workspace --no-fail-fast --no-tests=warn -E 'binary(e2e) | binary(auth) | binary(models)' "$@" || status=$?
else
  echo "test: cargo-nextest not found; using cargo test" >&2
  cargo test --workspace --no-fail-fast "$@" || status=$?
  echo "test: the end-to-end suite again, standalone mode (SQLite, in-process queue)" >&2
  E2E_MODE=standalone cargo test --no-fail-fast --test e2e "$@" || status=$?
fi
exit "$status"
