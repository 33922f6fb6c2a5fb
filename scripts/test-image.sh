#!/usr/bin/env bash
# Builds the tiny local test image the Docker tests use (no registry is needed or reachable):
# a rootfs holding Debian's static busybox, a symlink per applet, /etc/passwd with root and a
# /www directory with an index.html, imported with `docker import`.
#
#   scripts/test-image.sh [--force] [NAME:TAG]      (default steward-test/busybox:1)
#
# Idempotent: does nothing when the image already exists, unless --force is given.
set -euo pipefail

force=0
image=""
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    -h|--help)
      sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    -*) echo "test-image.sh: unknown option $arg (use --force)" >&2; exit 2 ;;
    *)
      if [ -n "$image" ]; then
        echo "test-image.sh: give at most one image name, got $image and $arg" >&2
        exit 2
      fi
      image="$arg"
      ;;
  esac
done
image="${image:-steward-test/busybox:1}"

if ! docker info >/dev/null 2>&1; then
  echo "test-image.sh: the Docker engine does not answer (docker info failed); start dockerd first" >&2
  exit 1
fi

if [ "$force" = 0 ] && docker image inspect "$image" >/dev/null 2>&1; then
  exit 0
fi

# One builder at a time (test binaries may run this concurrently); then look again.
if command -v flock >/dev/null; then
  exec 9>"${TMPDIR:-/tmp}/steward-test-image.lock"
  flock 9
  if [ "$force" = 0 ] && docker image inspect "$image" >/dev/null 2>&1; then
    exit 0
  fi
fi

# A statically linked busybox: the image has no libc.
busybox=""
for candidate in /bin/busybox /usr/bin/busybox; do
  if [ -x "$candidate" ] && ! ldd "$candidate" >/dev/null 2>&1; then
    busybox="$candidate"
    break
  fi
done
if [ -z "$busybox" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test-image.sh: installing busybox-static" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >/dev/null \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >/dev/null; }
    busybox=/bin/busybox
  else
    echo "test-image.sh: no statically linked busybox found; install busybox-static" >&2
    exit 1
  fi
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
mkdir -p "$root"/{bin,etc,www,tmp,root,proc,sys,dev}
chmod 1777 "$root/tmp"
cp "$busybox" "$root/bin/busybox"
chmod 0755 "$root/bin/busybox"
for applet in $("$busybox" --list); do
  [ "$applet" = busybox ] && continue
  ln -sf busybox "$root/bin/$applet"
done
# Some tools look in /usr/bin and /sbin.
ln -s bin "$root/sbin"
mkdir -p "$root/usr"
ln -s ../bin "$root/usr/bin"
ln -s ../bin "$root/usr/sbin"
cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$root/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
echo "steward test image" >"$root/www/index.html"

tar --numeric-owner --owner=0 --group=0 -C "$root" -c . \
  | docker import \
      --change 'ENV PATH=/bin' \
      --change 'CMD ["/bin/sh"]' \
      - "$image" >/dev/null
echo "test-image.sh: built $image" >&2
