#!/usr/bin/env bash
# Makes sure a Docker engine answers: installs Debian's docker.io when missing and starts
# dockerd in the background when it is not running. Idempotent.
set -euo pipefail
if docker info >/dev/null 2>&1; then exit 0; fi
if ! command -v dockerd >/dev/null 2>&1; then
  echo "installing docker.io (Debian)" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
  echo "starting dockerd (log: /tmp/steward-dockerd.log)" >&2
  nohup dockerd >/tmp/steward-dockerd.log 2>&1 &
  for _ in $(seq 120); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
fi
docker info >/dev/null 2>&1 || { echo "dockerd did not come up; see /tmp/steward-dockerd.log" >&2; exit 1; }
