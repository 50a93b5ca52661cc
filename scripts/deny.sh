#!/usr/bin/env bash
# cargo-deny against deny.toml: by default `check licenses bans sources`, as CI runs it. Those need nothing but
# Cargo.lock and the crates' manifests. `scripts/deny.sh advisories` runs the RustSec check instead, which fetches
# the advisory database from GitHub: run it where there is internet access (CI has none but the registries).
# Installs the pinned cargo-deny with `cargo install --locked` when it is missing or another version (~3.5 min on
# 2 cores, once per machine).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.20.2

if [ "$(cargo deny --version 2>/dev/null)" != "cargo-deny $VERSION" ]; then
  echo "deny: installing cargo-deny $VERSION (cargo install --locked)" >&2
  cargo install cargo-deny --version "$VERSION" --locked --quiet
fi

checks=("$@")
if [ ${#checks[@]} -eq 0 ]; then checks=(licenses bans sources); fi
# The inclusion graphs of duplicate-version warnings run to hundreds of lines; the crate names are enough here
# (`cargo deny check bans` shows the graphs).
cargo deny --locked check --hide-inclusion-graph "${checks[@]}"
