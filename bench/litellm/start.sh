#!/usr/bin/env bash
# Start LiteLLM's proxy on 127.0.0.1:PORT as a plain OpenAI-compatible forwarder (model gpt-image-2) in front of
# an OpenAI Images API at EMULATOR_API_BASE (e.g. http://127.0.0.1:18190/v1), fully offline, in the background.
#
#   bench/litellm/start.sh PORT EMULATOR_API_BASE
#
# Environment (all optional):
#   LITELLM_PIDFILE   where the proxy's PID is written          (default /tmp/litellm-bench.pid)
#   LITELLM_LOG       path of the proxy's log (stdout+stderr)   (default /tmp/litellm-bench.log)
#                     NB: LiteLLM itself reads LITELLM_LOG as a log LEVEL; this script takes it as the path and
#                     passes LITELLM_LOG=$LITELLM_LOG_LEVEL (default WARNING) to the proxy.
#   LITELLM_LOG_LEVEL LiteLLM/uvicorn log level (WARNING: no per-request access log)
#   EMULATOR_API_KEY  key sent upstream                          (default sk-emulator; the emulator takes any)
#   LITELLM_MASTER_KEY  key clients must send                    (default sk-bench-master)
#   LITELLM_VENV      virtualenv holding litellm[proxy]          (default /var/tmp/litellm-bench-venv)
#   LITELLM_VERSION   litellm version installed when missing     (default 1.108.7, the one this was checked with)
#   LITELLM_BENCH_SDK_MAX_RETRIES  OpenAI SDK retries inside LiteLLM (default 0; see run_proxy.py)
#
# One uvicorn worker (one process, one event loop), for a fair single-process comparison.
# Exit codes: 0 ready; 1 the proxy died or was not ready within 120 s; 2 usage; 3 install failed;
# 4 the port is taken or a proxy from this pidfile is still running.  Stop it with: kill "$(cat "$LITELLM_PIDFILE")"
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
say() { printf 'litellm-bench: %s\n' "$*" >&2; }

if [[ $# -ne 2 ]]; then
  say "usage: $0 PORT EMULATOR_API_BASE   (e.g. $0 18191 http://127.0.0.1:18190/v1)"
  exit 2
fi
port=$1
api_base=${2%/}
if ! [[ $port =~ ^[0-9]+$ ]] || ((port < 1 || port > 65535)); then
  say "bad PORT: $port"
  exit 2
fi
if ! [[ $api_base =~ ^https?:// ]]; then
  say "bad EMULATOR_API_BASE: $api_base (want e.g. http://127.0.0.1:18190/v1)"
  exit 2
fi

pidfile=${LITELLM_PIDFILE:-/tmp/litellm-bench.pid}
logfile=${LITELLM_LOG:-/tmp/litellm-bench.log}
log_level=${LITELLM_LOG_LEVEL:-WARNING}
venv=${LITELLM_VENV:-/var/tmp/litellm-bench-venv}
version=${LITELLM_VERSION:-1.108.7}
master_key=${LITELLM_MASTER_KEY:-sk-bench-master}
upstream_key=${EMULATOR_API_KEY:-sk-emulator}
py=$venv/bin/python

# --- install (into its own virtualenv: litellm[proxy] pins boto3/botocore/cryptography/... and would otherwise
# --- replace the versions the rest of the machine uses, e.g. the moto S3 server's)
installed_version() {
  [[ -x $py ]] || return 1
  "$py" - <<'EOF' 2>/dev/null
import importlib.metadata as m
for dist in ("uvicorn", "fastapi", "backoff", "apscheduler"):  # a few of the [proxy] extra's packages
    m.version(dist)
print(m.version("litellm"))
EOF
}

have=$(installed_version || true)
if [[ -z $have || ($have != "$version" && -n ${LITELLM_VERSION:-}) ]]; then
  say "litellm[proxy]==$version is missing from $venv: installing it (about 750 MB; takes a minute or more)"
  install_log=${logfile%.log}-install.log
  if ! {
    { [[ -x $py ]] || python3 -m venv "$venv"; } &&
      "$py" -m pip install --disable-pip-version-check "litellm[proxy]==$version"
  } >"$install_log" 2>&1; then
    tail -n 15 "$install_log" | cut -c1-300 >&2 || true
    say "ERROR: could not install litellm[proxy]==$version into $venv (full output: $install_log)"
    exit 3
  fi
  have=$(installed_version || true)
  if [[ -z $have ]]; then
    say "ERROR: litellm[proxy] still not importable from $venv after the install (see $install_log)"
    exit 3
  fi
  say "installed litellm $have"
fi

# --- refuse to start over a running one
if [[ -s $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  say "ERROR: a proxy from $pidfile is still running (pid $(cat "$pidfile")); stop it first: kill $(cat "$pidfile")"
  exit 4
fi
if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
  say "ERROR: something already listens on 127.0.0.1:$port"
  exit 4
fi

# --- start
mkdir -p "$(dirname "$pidfile")" "$(dirname "$logfile")"
rm -f "$pidfile"
cd "$here"
# env -i: nothing from the caller's environment (DATABASE_URL, REDIS_*, proxies, OPENAI_*) reaches the proxy.
# LITELLM_MODE=PRODUCTION: do not load a .env file. LITELLM_LOCAL_MODEL_COST_MAP: no cost-map download.
setsid nohup env -i \
  PATH="$venv/bin:/usr/local/bin:/usr/bin:/bin" HOME="${HOME:-/root}" LANG=C.UTF-8 \
  NO_PROXY=127.0.0.1,localhost,::1 no_proxy=127.0.0.1,localhost,::1 \
  LITELLM_MODE=PRODUCTION \
  LITELLM_LOCAL_MODEL_COST_MAP=True \
  LITELLM_LOG="$log_level" \
  LITELLM_DONT_SHOW_FEEDBACK_BOX=true \
  DISABLE_ADMIN_UI=True \
  LITELLM_MASTER_KEY="$master_key" \
  EMULATOR_API_BASE="$api_base" \
  EMULATOR_API_KEY="$upstream_key" \
  LITELLM_BENCH_SDK_MAX_RETRIES="${LITELLM_BENCH_SDK_MAX_RETRIES:-0}" \
  "$py" "$here/run_proxy.py" --config "$here/config.yaml" --host 127.0.0.1 --port "$port" --num_workers 1 \
  >"$logfile" 2>&1 </dev/null &
pid=$!
echo "$pid" >"$pidfile"
say "starting litellm $have on 127.0.0.1:$port -> $api_base (pid $pid, log $logfile)"

# --- wait for readiness: /health/liveliness does not call the upstream; /v1/models then shows the config loaded
t0=$SECONDS
deadline=$((t0 + 120))
while ((SECONDS < deadline)); do
  if ! kill -0 "$pid" 2>/dev/null; then
    tail -n 30 "$logfile" >&2 || true
    say "ERROR: the proxy exited during start-up (log: $logfile)"
    rm -f "$pidfile"
    exit 1
  fi
  if curl -sf -o /dev/null --max-time 2 "http://127.0.0.1:$port/health/liveliness" &&
    models=$(curl -sf --max-time 5 -H "Authorization: Bearer $master_key" "http://127.0.0.1:$port/v1/models") &&
    [[ $models == *'"gpt-image-2"'* ]]; then
    say "ready after $((SECONDS - t0))s: http://127.0.0.1:$port/v1/images/generations (Authorization: Bearer $master_key)"
    exit 0
  fi
  sleep 0.5
done
tail -n 30 "$logfile" >&2 || true
say "ERROR: the proxy was not ready within 120 s; stopping it (log: $logfile)"
kill "$pid" 2>/dev/null || true
rm -f "$pidfile"
exit 1
