#!/usr/bin/env bash
# Installs and starts what the test suite needs on a fresh Debian machine with Rust:
# Python's openapi-spec-validator, busybox-static (test images), and a running Docker engine.
# Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
need_apt=()
command -v python3 >/dev/null || need_apt+=(python3 python3-pip)
command -v curl >/dev/null || need_apt+=(curl)
[ -x /bin/busybox ] || need_apt+=(busybox-static)
command -v dockerd >/dev/null || need_apt+=(docker.io)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if ! python3 -c 'import openapi_spec_validator' 2>/dev/null; then
  python3 -m pip install -q openapi-spec-validator 2>/dev/null \
    || python3 -m pip install -q --break-system-packages openapi-spec-validator
fi
bash scripts/docker-up.sh
bash scripts/test-image.sh steward-test/busybox:1
