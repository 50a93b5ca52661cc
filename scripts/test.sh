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

if cargo nextest --version >/dev/null 2>&1; then
  exec cargo nextest run --workspace --no-fail-fast "$@"
else
  echo "test: cargo-nextest not found; using cargo test" >&2
  exec cargo test --workspace --no-fail-fast "$@"
fi
