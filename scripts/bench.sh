#!/usr/bin/env bash
# The benchmarks: builds the release binaries, makes sure Postgres and Redis are up, raises the open-file limit for
# the wait-mode scale test, and runs imagegen-bench, which writes bench/results/latest.md and latency.svg.
# Usage: scripts/bench.sh [--quick] [--no-litellm] [--only 1,3]
#   --quick       shorter runs and 1,000 (not 10,000) waiting clients; under five minutes on 2 cores once built
#   --no-litellm  skip the LiteLLM comparison (it installs litellm[proxy] from PyPI, about 750 MB, on first use)
set -euo pipefail
cd "$(dirname "$0")/.."
SKIP_STORAGE_EMULATORS=1 scripts/services.sh
echo "bench: building release binaries" >&2
cargo build --release --locked -q -p imagegen -p imagegen-bench
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
echo "bench: open-file limit $(ulimit -n)" >&2
exec ./target/release/imagegen-bench --bin target/release/imagegen "$@"
