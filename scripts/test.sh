#!/usr/bin/env bash
# The whole test suite: installs what the tests need, then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
# --no-fail-fast: one failing test binary must not hide the results of the ones after it.
cargo test --workspace --locked --no-fail-fast "$@"
