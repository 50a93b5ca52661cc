#!/usr/bin/env bash
# Verifies webhook deliveries (JSON lines, from the file given or standard input) with the Standard Webhooks reference
# verifier, the `standardwebhooks` package from PyPI (pinned below); see scripts/verify-webhooks.py for the format.
# Prints "verified N deliveries" and exits 0 only if every line verified. `--prepare` only installs it.
#
# The package goes into the CI tools' virtualenv (IMAGEGEN_CI_VENV, default /var/tmp/imagegen-ci-venv), never the
# system Python.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
VENV="${IMAGEGEN_CI_VENV:-/var/tmp/imagegen-ci-venv}"
STANDARDWEBHOOKS_VERSION=1.1.0
say() { echo "verify-webhooks: $*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
  say "creating the tools virtualenv $VENV"
  python3 -m venv "$VENV" || { say "ERROR: cannot create a Python virtualenv at $VENV"; exit 2; }
fi
installed="$("$VENV/bin/python" -c \
  'import importlib.metadata as m; print(m.version("standardwebhooks"))' 2>/dev/null || true)"
if [ "$installed" != "$STANDARDWEBHOOKS_VERSION" ]; then
  say "installing standardwebhooks $STANDARDWEBHOOKS_VERSION (pip) into $VENV"
  "$VENV/bin/python" -m pip install -q "standardwebhooks==$STANDARDWEBHOOKS_VERSION" >/dev/null \
    || { say "ERROR: could not install standardwebhooks $STANDARDWEBHOOKS_VERSION from PyPI"; exit 2; }
fi
# --prepare: only make sure the verifier is installed (scripts/test.sh, before tests run it in parallel).
[ "${1:-}" = "--prepare" ] && exit 0
exec "$VENV/bin/python" "$HERE/verify-webhooks.py" "$@"
