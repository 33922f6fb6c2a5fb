#!/usr/bin/env bash
# Runs the README's two commands as a new user would: from a fresh clone of this checkout's HEAD,
# inside a fresh Debian 12 container (debootstrap minbase plus gcc, git and ca-certificates, with
# this machine's Rust toolchain copied in, nothing else), so that whatever was installed here by
# hand cannot hide a missing install step. The container gets the capabilities its own dockerd,
# network namespaces, tmpfs mounts and QEMU need (all but CAP_SYS_RESOURCE, which this sandbox
# does not grant, so not --privileged).
#
#   bash scripts/fresh-debian.sh [demo|test|both] [WORKDIR]     (default: both, /tmp/steward-fresh)
#
# Logs and a summary with each command's exit status and duration are written under WORKDIR;
# the container (named steward-fresh) is left running so the demo can be looked at later
# (`docker exec steward-fresh ...`); `docker rm -f steward-fresh` removes it.
set -euo pipefail
what=${1:-both}
work=${2:-/tmp/steward-fresh}
image=steward-fresh:bookworm
name=steward-fresh
repo=$(cd "$(dirname "$0")/.." && pwd)
case "$what" in demo | test | both) ;; *) echo "usage: $0 [demo|test|both] [WORKDIR]" >&2; exit 2 ;; esac

if ! docker image inspect "$image" >/dev/null 2>&1; then
  echo "== building $image (debootstrap bookworm, then the Rust toolchain)"
  root="$work/rootfs"
  rm -rf "$root"
  debootstrap --variant=minbase --include=ca-certificates,gcc,libc6-dev,git,procps bookworm \
    "$root" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$work.debootstrap.log" 2>&1
  toolchain=$(rustc --print sysroot)
  mkdir -p "$root/root/.rustup/toolchains" "$root/root/.cargo/bin"
  cp -a "$toolchain" "$root/root/.rustup/toolchains/"
  printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "default"\n' \
    "$(basename "$toolchain")" >"$root/root/.rustup/settings.toml"
  cp -a "$HOME/.cargo/bin/." "$root/root/.cargo/bin/"
  rm -rf "$root"/var/cache/apt/archives/*.deb
  tar --numeric-owner -C "$root" -c . | docker import \
    --change 'ENV PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' - "$image" >/dev/null
  rm -rf "$root"
fi

rm -rf "$work"
mkdir -p "$work/docker"
git clone -q "$repo" "$work/src"
echo "== $(cd "$work/src" && git log --oneline -1)"
docker rm -f "$name" >/dev/null 2>&1 || true
docker run -d --name "$name" --cap-add ALL --cap-drop SYS_RESOURCE \
  --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
  --device /dev/net/tun --device /dev/kvm --device-cgroup-rule 'a *:* rwm' \
  -v /sys/fs/cgroup:/sys/fs/cgroup --tmpfs /run \
  -v "$work/src:/src" -v "$work/docker:/var/lib/docker" \
  "$image" sleep infinity >/dev/null
docker exec "$name" mount -o remount,rw /sys
# The CA certificates this machine trusts beyond Debian's (a TLS-inspecting egress, where there
# is one), as every machine of the same network has them.
if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
  docker cp /usr/local/share/ca-certificates/. "$name:/usr/local/share/ca-certificates/"
  docker exec "$name" update-ca-certificates >/dev/null 2>&1
fi
ca=/etc/ssl/certs/ca-certificates.crt
run() {
  local cmd=$1 log=$2 start rc
  start=$(date +%s)
  echo "== $cmd (log: $log)"
  rc=0
  docker exec -e CI=true -e SSL_CERT_FILE=$ca -e PIP_CERT=$ca -e REQUESTS_CA_BUNDLE=$ca \
    -e CURL_CA_BUNDLE=$ca -w /src "$name" bash -c "$cmd" >"$log" 2>&1 || rc=$?
  echo "$cmd: exit $rc in $(($(date +%s) - start)) s" | tee -a "$work/summary"
}
[ "$what" = test ] || run 'bash scripts/demo.sh' "$work/demo.log"
[ "$what" = demo ] || run 'bash scripts/test.sh' "$work/test.log"
