#!/usr/bin/env bash
# Runs the README's shell examples verbatim against a freshly started service: the debug binary in standalone mode
# (SQLite, in-process queue, sandbox providers) on http://localhost:8003 and the emulator on localhost:8090, in a
# scratch directory. Every ```bash block of README.md runs, in order, with `set -euo pipefail`, unless the line
# before it (blank lines aside) is `<!-- readme-examples: skip: REASON -->`; skipped blocks are listed with their
# reason. A curl without -f/--fail gets --fail-with-body, so an HTTP error fails its example as well. Fails on the
# first example that fails.
# Where it can, everything runs in a network namespace of its own (unshare -rn), so ports 8003 and 8090 are free and
# nothing else on the machine is reached; otherwise on the host, refusing if those ports are taken.
# Usage: scripts/readme-examples.sh [README]   (builds target/debug/imagegen; CARGO_TARGET_DIR is respected)
set -euo pipefail
cd "$(dirname "$0")/.."
README=$(realpath "${1:-README.md}")

if [ -z "${READMEX_INSIDE:-}" ]; then
  cargo build --locked -q -p imagegen
  BIN=$(realpath "${CARGO_TARGET_DIR:-target}/debug/imagegen")
  export BIN README READMEX_INSIDE=1
  if unshare -rn true 2>/dev/null; then
    exec unshare -rn "$0" "$README"
  fi
  echo "readme-examples: no network namespace (unshare -rn); on the host" >&2
fi

if command -v ip >/dev/null && [ "$(id -u)" = 0 ]; then ip link set lo up 2>/dev/null || true; fi
for port in 8003 8090; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "readme-examples: port $port is taken; the examples need it" >&2
    exit 1
  fi
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/imagegen-readme.XXXXXX")
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# Only these settings: nothing from the caller's environment (no keys, no DATABASE_URL) reaches the service.
clean_env=(env -i PATH="$PATH" HOME="$WORK" LOG_LEVEL=warn)
(cd "$WORK" && exec "${clean_env[@]}" "$BIN" emulator --port 8090) >"$WORK/emulator.log" 2>&1 &
pids+=($!)
(cd "$WORK" && exec "${clean_env[@]}" "$BIN" standalone) >"$WORK/service.log" 2>&1 &
pids+=($!)
ready=""
for _ in $(seq 1 120); do
  if "$BIN" healthcheck --url http://127.0.0.1:8003/health/ready --timeout-secs 1 >/dev/null 2>&1 \
    && "$BIN" healthcheck --url http://127.0.0.1:8090/emulator/stats --timeout-secs 1 >/dev/null 2>&1; then
    ready=1
    break
  fi
  sleep 0.5
done
if [ -z "$ready" ]; then
  echo "readme-examples: the service did not become ready; its log:" >&2
  tail -n 30 "$WORK/service.log" "$WORK/emulator.log" >&2
  exit 1
fi

# The blocks, NUL-separated as "<line>\t<skip reason or empty>\t<text>".
mapfile -d '' blocks < <(python3 - "$README" <<'EOF'
import re, sys
lines = open(sys.argv[1], encoding="utf-8").read().split("\n")
i, skip = 0, ""
while i < len(lines):
    line = lines[i]
    m = re.fullmatch(r"\s*<!--\s*readme-examples:\s*skip:\s*(.*?)\s*-->\s*", line)
    if m:
        skip = m.group(1) or "marked skip"
    elif line.startswith("```"):
        lang, start, body = line[3:].strip(), i + 1, []
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        if lang == "bash":
            sys.stdout.write(f"{start}\t{skip}\t" + "\n".join(body) + "\0")
        skip = ""
    elif line.strip():
        skip = ""
    i += 1
EOF
)

ran=0
skipped=0
for block in "${blocks[@]}"; do
  line=${block%%$'\t'*}
  rest=${block#*$'\t'}
  reason=${rest%%$'\t'*}
  text=${rest#*$'\t'}
  first=$(printf '%s\n' "$text" | grep -v '^\s*#' | head -n 1)
  if [ -n "$reason" ]; then
    echo "readme-examples: skip $(basename "$README"):$line ($reason): $first" >&2
    skipped=$((skipped + 1))
    continue
  fi
  echo "readme-examples: run $(basename "$README"):$line: $first" >&2
  # shellcheck disable=SC2016
  prelude='curl() {
    local a
    for a in "$@"; do
      case "$a" in
        --fail | --fail-with-body) command curl "$@"; return ;;
        --*) ;;
        -*f*) command curl "$@"; return ;;
      esac
    done
    command curl --fail-with-body "$@"
  }'

  # `imagegen` on the PATH, as for someone who installed it.
  if ! (cd "$WORK" && "${clean_env[@]}" PATH="$(dirname "$BIN"):$PATH" bash -euo pipefail -c "$prelude
$text" >"$WORK/out.txt" 2>&1); then
    echo "readme-examples: FAILED $(basename "$README"):$line:" >&2
    sed 's/^/  | /' <<<"$text" >&2
    echo "  output:" >&2
    tail -c 2000 "$WORK/out.txt" | sed 's/^/  > /' >&2
    echo >&2
    echo "  the service's last log lines:" >&2
    tail -n 15 "$WORK/service.log" | sed 's/^/  > /' >&2
    exit 1
  fi
  ran=$((ran + 1))
done
echo "readme-examples: $ran examples ran, $skipped skipped as marked" >&2
