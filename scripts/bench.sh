#!/usr/bin/env bash
# The benchmarks: builds the release binaries, makes sure Postgres and Redis are up, raises the open-file limit and
# the kernel's per-CPU packet queue for the scale tests, and runs imagegen-bench, which writes bench/results/latest.md and latency.svg.
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
# Scenarios 3 and 8 open 10,000 connections on loopback in two seconds, which on 2 busy cores overflows the default
# queue of 1,000 packets per CPU: the kernel drops SYNs and requests, and clients report timeouts that are the load
# generator's, not the service's (the bench notes the drops it saw). Raised, until the next boot, when we may (root).
backlog=$(cat /proc/sys/net/core/netdev_max_backlog 2>/dev/null || echo 0)
if [ "$backlog" -lt 10000 ] && [ -w /proc/sys/net/core/netdev_max_backlog ]; then
  echo 10000 > /proc/sys/net/core/netdev_max_backlog && echo "bench: net.core.netdev_max_backlog $backlog -> 10000" >&2
fi
exec ./target/release/imagegen-bench --bin target/release/imagegen "$@"
