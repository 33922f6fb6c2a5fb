#!/usr/bin/env bash
# Builds, once, the clean Debian machine the install tests run in: `debootstrap
# --variant=minbase bookworm` plus what `curl … | sh` and the packages need (curl,
# ca-certificates, adduser), trimmed of apt lists, docs and locales, and imported with
# `docker import`. The root file system is cached as a tarball under CACHE_DIR, so a rerun
# (even after `docker image rm`) downloads nothing.
#
#   debian-rootfs.sh CACHE_DIR IMAGE        (DEBIAN_MIRROR overrides http://deb.debian.org/debian)
set -euo pipefail
cache=$1
image=$2
if docker image inspect "$image" >/dev/null 2>&1; then exit 0; fi
mkdir -p "$cache"
# One builder at a time (several test processes may ask at once); then look again.
exec 9>"$cache/.lock"
flock 9
if docker image inspect "$image" >/dev/null 2>&1; then exit 0; fi
tarball="$cache/bookworm-minbase-curl-adduser.tar.gz"
if [ ! -s "$tarball" ]; then
  command -v debootstrap >/dev/null || { echo "debootstrap is missing: run scripts/deps.sh" >&2; exit 1; }
  work=$(mktemp -d "$cache/rootfs.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  echo "debian-rootfs.sh: debootstrap bookworm into $work (about a minute)" >&2
  if ! debootstrap --variant=minbase --include=curl,ca-certificates,adduser bookworm \
    "$work/root" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$work/debootstrap.log" 2>&1; then
    tail -30 "$work/debootstrap.log" >&2
    echo "debian-rootfs.sh: debootstrap failed (is the Debian mirror reachable?)" >&2
    exit 1
  fi
  rm -rf "$work/root"/var/cache/apt/* "$work/root"/var/lib/apt/lists/* \
    "$work/root"/usr/share/doc/* "$work/root"/usr/share/man/* "$work/root"/usr/share/locale/*
  tar --numeric-owner -C "$work/root" -czf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
fi
docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["/bin/bash"]' \
  "$tarball" "$image" >/dev/null
echo "debian-rootfs.sh: imported $image from $tarball" >&2
