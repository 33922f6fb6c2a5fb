#!/usr/bin/env bash
# Installs and starts what the test suite needs on a fresh Debian machine with Rust:
# a Python venv at /opt/steward-pytest with openapi-spec-validator and schemathesis (from PyPI;
# Debian's python3 has no pip, so the venv comes from python3-venv), busybox-static (test
# images), nftables (nft, for the network isolation tests), iperf3 (the isolation bench's
# throughput part), a running Docker engine, and
# for the QEMU guest and VM tests (tests/guest/) Debian's stock kernel, QEMU, qemu-utils, mtools
# and iproute2; etcd (etcd-server, and etcd-client for etcdctl) for the etcd store tests and
# protoc (protobuf-compiler, with libprotobuf-dev for the .proto files it imports), which
# building the registry needs (the etcd client's gRPC code).
# Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
need_apt=()
[ -x /usr/bin/python3 ] || need_apt+=(python3)
/usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null || need_apt+=(python3-venv)
command -v curl >/dev/null || need_apt+=(curl)
[ -x /bin/busybox ] || need_apt+=(busybox-static)
command -v dockerd >/dev/null || need_apt+=(docker.io)
# Network isolation (agent/tests/network_isolation.rs; the agent runs nft for its own table).
[ -x /usr/sbin/nft ] || need_apt+=(nftables)
# The isolation bench's throughput part (agent/benches/isolation.rs; skipped without it).
command -v iperf3 >/dev/null || need_apt+=(iperf3)
# The etcd store: protoc builds the etcd client (a registry build dependency), etcd and etcdctl run the
# test clusters (registry/tests/common/etcd.rs, kv_conformance.rs).
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/descriptor.proto ] || need_apt+=(libprotobuf-dev)
command -v etcd >/dev/null || need_apt+=(etcd-server)
command -v etcdctl >/dev/null || need_apt+=(etcd-client)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# QEMU guest tests: the guest boots linux-image-amd64's kernel (not the host's) with its
# modules; iproute2 gives the guest a real ip/bridge. No recommends: nothing else is needed.
need_guest=()
dpkg-query -W -f '${Status}' linux-image-amd64 2>/dev/null | grep -q 'ok installed' \
  || need_guest+=(linux-image-amd64)
command -v qemu-system-x86_64 >/dev/null || need_guest+=(qemu-system-x86)
command -v bridge >/dev/null || need_guest+=(iproute2)
# VM tests and bench (agent/tests/vm_*.rs, agent/benches/vm.rs): overlays with qemu-img, the
# cloud-init seed read back with mtools.
# Installed together with qemu-system-x86 in any case: Debian's qemu-system-x86 removes a newer
# (backported) qemu-utils that a machine may come with, taking qemu-img away.
# A locally installed newer qemu-utils (no repository offers it) would make apt refuse the
# pair: ask for the version that matches qemu-system-x86 (a downgrade, allowed below).
if [[ " ${need_guest[*]} " == *" qemu-system-x86 "* ]]; then
  [ ${#need_apt[@]} -gt 0 ] || apt-get update -qq
  qemu_version=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
  need_guest+=("qemu-utils=$qemu_version")
elif ! command -v qemu-img >/dev/null; then
  need_guest+=(qemu-utils)
fi
command -v mtype >/dev/null || need_guest+=(mtools)
if [ ${#need_guest[@]} -gt 0 ]; then
  [ ${#need_apt[@]} -gt 0 ] || apt-get update -qq
  echo "installing ${need_guest[*]} for the guest tests (Debian)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    --allow-downgrades "${need_guest[@]}" >/tmp/steward-apt-guest.log 2>&1 \
    || { tail -n 20 /tmp/steward-apt-guest.log >&2; exit 1; }
fi
# Status page and metrics tests (registry/tests/e2e_ui.rs, agent/tests/e2e_metrics.rs):
# headless Chromium (with its recommended fonts, for readable screenshots) and promtool
# (Debian package prometheus; no recommends: only promtool is used, no service is started).
need_ui=()
command -v chromium >/dev/null || need_ui+=(chromium)
command -v promtool >/dev/null || need_ui+=(prometheus)
if [ ${#need_ui[@]} -gt 0 ]; then
  apt-get update -qq
  echo "installing ${need_ui[*]} for the status page and metrics tests (Debian)" >&2
  for pkg in "${need_ui[@]}"; do
    extra=()
    [ "$pkg" = prometheus ] && extra=(--no-install-recommends)
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${extra[@]}" "$pkg" \
      >/tmp/steward-apt-ui.log 2>&1 || { tail -n 20 /tmp/steward-apt-ui.log >&2; exit 1; }
  done
fi
# The OpenAPI checks (registry/tests/e2e_server.rs, e2e_openapi.rs) run this venv's python and
# schemathesis; it is Debian's python3 (not whatever python3 is first on PATH), so a fresh
# machine and a developer's give the same result.
PYENV=/opt/steward-pytest
if ! "$PYENV/bin/python" -c 'import openapi_spec_validator' 2>/dev/null \
  || [ ! -x "$PYENV/bin/schemathesis" ]; then
  echo "creating $PYENV (openapi-spec-validator, schemathesis from PyPI)" >&2
  /usr/bin/python3 -m venv "$PYENV"
  "$PYENV/bin/pip" install -q --disable-pip-version-check openapi-spec-validator 'schemathesis>=4,<5' \
    >/tmp/steward-pip.log 2>&1 || { tail -n 20 /tmp/steward-pip.log >&2; exit 1; }
fi
bash scripts/docker-up.sh
bash scripts/test-image.sh steward-test/busybox:1
# Packaging and install tests (registry/tests/e2e_install.rs): build the .deb files (dpkg-dev,
# help2man, binutils), check them (lintian, systemd-analyze from systemd, shellcheck), check
# cloud-init user-data (cloud-init: only `cloud-init schema` is used, and
# /etc/cloud/cloud-init.disabled keeps it from acting at boot), and debootstrap the clean
# Debian machine (debootstrap; flock from util-linux).
need_pkg=()
for tool in dpkg-shlibdeps:dpkg-dev help2man:help2man strip:binutils lintian:lintian \
  systemd-analyze:systemd shellcheck:shellcheck debootstrap:debootstrap flock:util-linux; do
  command -v "${tool%%:*}" >/dev/null || need_pkg+=("${tool#*:}")
done
new_cloud_init=0
command -v cloud-init >/dev/null || { need_pkg+=(cloud-init); new_cloud_init=1; }
if [ ${#need_pkg[@]} -gt 0 ]; then
  apt-get update -qq
  echo "installing ${need_pkg[*]} for the packaging tests (Debian)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${need_pkg[@]}" >/tmp/steward-apt-packaging.log 2>&1 \
    || { tail -n 20 /tmp/steward-apt-packaging.log >&2; exit 1; }
  if [ "$new_cloud_init" = 1 ]; then
    mkdir -p /etc/cloud && touch /etc/cloud/cloud-init.disabled
  fi
fi
# Everything the tests call, checked after all installs (one install can remove another's tools).
for tool in protoc etcd etcdctl docker qemu-system-x86_64 qemu-img mtype bridge chromium promtool debootstrap \
  lintian shellcheck /opt/steward-pytest/bin/schemathesis; do
  command -v "$tool" >/dev/null || { echo "deps.sh: $tool is still missing after the installs" >&2; exit 1; }
done
