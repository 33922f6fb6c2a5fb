#!/usr/bin/env bash
# Builds a small initramfs for a QEMU test guest booted with Debian's stock kernel
# (linux-image-amd64), cached under OUT_DIR by a hash of every input.
#
#   tests/guest/build-initramfs.sh [options] OUT_DIR [SRC[:DEST]]...
#
#   SRC[:DEST]        a file copied into the guest at DEST (default /<basename of SRC>);
#                     a file landing at /test.sh is the guest's test script, run by /init
#   --bin SRC[:DEST]  an executable copied with its shared libraries (ldd) and stripped of
#                     debug info (default DEST /usr/bin/<basename>)
#   --module NAME     an extra kernel module (dependencies are added from modules.dep)
#   --no-install      never apt-get install what is missing (exit 3 instead)
#
# The guest always has: busybox (static), bash, iproute2's `ip` and `bridge` (with libraries),
# and the modules 8021q garp mrp stp llc bridge dummy veth, loaded in dependency order.
# Prints on stdout `KERNEL=<path>`, `INITRAMFS=<path>` and `KERNEL_VERSION=<ver>`; progress
# goes to stderr. Exit codes: 0 ok, 2 usage, 3 a component (kernel, qemu, busybox, iproute2)
# is missing and could not be installed, 1 anything else. See tests/guest/README.md.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
log() { echo "build-initramfs: $*" >&2; }
die() { log "$*"; exit 1; }
missing() { log "MISSING COMPONENT: $*"; exit 3; }
usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

install=1
bins=()
modules=(8021q garp mrp stp llc bridge dummy veth)
out=""
files=()
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) [ $# -ge 2 ] || usage; bins+=("$2"); shift 2 ;;
    --module) [ $# -ge 2 ] || usage; modules+=("$2"); shift 2 ;;
    --no-install) install=0; shift ;;
    -h|--help) usage ;;
    -*) log "unknown option $1"; usage ;;
    *) if [ -z "$out" ]; then out="$1"; else files+=("$1"); fi; shift ;;
  esac
done
[ -n "$out" ] || usage

# --- Components: installed on demand from Debian --------------------------------------------
kernel_version() {
  # The version the linux-image-amd64 metapackage points at (NOT `uname -r`: the host may run
  # another kernel, without modules).
  local dep
  dep="$(dpkg-query -W -f '${Depends}' linux-image-amd64 2>/dev/null || true)"
  dep="$(printf '%s' "$dep" | grep -o 'linux-image-[^ ,|]*' | head -n1 | sed 's/^linux-image-//')"
  if [ -n "$dep" ] && [ -f "/boot/vmlinuz-$dep" ] && [ -d "/lib/modules/$dep" ]; then
    echo "$dep"
  fi
}
static_busybox() {
  local c
  for c in /bin/busybox /usr/bin/busybox; do
    if [ -x "$c" ] && ! ldd "$c" >/dev/null 2>&1; then echo "$c"; return; fi
  done
}
need=()
[ -n "$(kernel_version)" ] || need+=(linux-image-amd64)
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[ -n "$(static_busybox)" ] || need+=(busybox-static)
{ command -v ip && command -v bridge; } >/dev/null || need+=(iproute2)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$install" = 1 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing ${need[*]} (apt-get)"
    exec 8>"${TMPDIR:-/tmp}/steward-guest-apt.lock"
    flock 8
    { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" \
      || { apt-get update -qq \
           && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"; }
    } >/dev/null 2>&1 || missing "apt-get install ${need[*]} failed"
    flock -u 8
  else
    missing "${need[*]} (install them: apt-get install ${need[*]}, or run scripts/deps.sh as root)"
  fi
fi
kver="$(kernel_version)"
[ -n "$kver" ] || missing "linux-image-amd64 is installed but /boot/vmlinuz-<ver> or /lib/modules/<ver> is not there"
kernel="/boot/vmlinuz-$kver"
[ -r "$kernel" ] || missing "$kernel is not readable"
busybox="$(static_busybox)"
[ -n "$busybox" ] || missing "no statically linked busybox after installing busybox-static"
bashbin="$(command -v bash)"
ipbin="$(command -v ip)"
bridgebin="$(command -v bridge)"
moddir="/lib/modules/$kver"

# --- Module closure in load order (dependencies first) ---------------------------------------
# Names are keyed with `_` for `-` (the kernel treats them alike).
declare -A modpath=() moddeps=() seen=()
order=()
while IFS= read -r line; do
  m="${line%%:*}"
  base="${m##*/}"
  base="${base%%.ko*}"
  modpath[${base//-/_}]="$m"
  moddeps[${base//-/_}]="${line#*:}"
done <"$moddir/modules.dep"
add_module() { # NAME [optional]: optional ones (soft dependencies) may fail to load
  local name="${1//-/_}" opt="${2:-}" d b
  [ -n "${seen[$name]:-}" ] && return 0
  seen[$name]=1
  if [ -z "${modpath[$name]:-}" ]; then
    if grep -qE "/${name//_/[-_]}\.ko" "$moddir/modules.builtin" 2>/dev/null; then return 0; fi
    die "kernel module $name not found in $moddir/modules.dep"
  fi
  # Soft dependencies ("softdep M pre: X"; X may be an alias) load first when they are modules.
  for d in $(softdeps_pre "$name"); do
    if [ -n "${modpath[${d//-/_}]:-}" ]; then
      add_module "$d" optional
    else
      while read -r b; do
        [ -n "${modpath[${b//-/_}]:-}" ] && add_module "$b" optional
      done < <(awk -v a="$d" '$1 == "alias" && $2 == a { print $3 }' "$moddir/modules.alias")
    fi
  done
  for d in ${moddeps[$name]}; do
    b="${d##*/}"
    add_module "${b%%.ko*}" "$opt"
  done
  order+=("${opt:+?}$name")
}
softdeps_pre() {
  awk -v m="$1" -v m2="${1//_/-}" '$1 == "softdep" && ($2 == m || $2 == m2) {
    for (i = 3; i <= NF; i++) {
      if ($i == "pre:") { p = 1; continue }
      if ($i == "post:") { p = 0; continue }
      if (p) print $i
    }
  }' "$moddir/modules.softdep" 2>/dev/null || true
}
for m in "${modules[@]}"; do add_module "$m"; done

# --- Cache key: every input ---------------------------------------------------------------------
filehash() { sha256sum "$1" | cut -d' ' -f1; }
split_spec() { # SRC[:DEST] DEFAULT_DIR -> sets src, dest
  src="${1%%:*}"
  if [ "$src" != "$1" ]; then dest="${1#*:}"; else dest="$2/$(basename "$src")"; fi
  case "$dest" in /*) ;; *) die "destination $dest of $src must be absolute" ;; esac
  [ -f "$src" ] || die "$src: no such file"
}
for b in "${bins[@]}"; do split_spec "$b" /usr/bin; done
for f in "${files[@]}"; do split_spec "$f" ""; done
manifest="$(
  echo "script $(filehash "$0") init $(filehash "$here/init.sh") lib $(filehash "$here/lib.sh")"
  echo "kernel $kver $(stat -c '%s %Y' "$kernel")"
  echo "busybox $(filehash "$busybox") bash $(filehash "$bashbin") ip $(filehash "$ipbin") bridge $(filehash "$bridgebin")"
  echo "modules ${order[*]}"
  for b in "${bins[@]}"; do split_spec "$b" /usr/bin; echo "bin $dest $(filehash "$src")"; done
  for f in "${files[@]}"; do split_spec "$f" ""; echo "file $dest $(filehash "$src")"; done
)"
key="$(printf '%s\n' "$manifest" | sha256sum | cut -c1-16)"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
dir="$out/$key"
emit() {
  touch "$dir"
  echo "KERNEL=$kernel"
  echo "INITRAMFS=$dir/initramfs.cpio"
  echo "KERNEL_VERSION=$kver"
}
if [ -f "$dir/initramfs.cpio" ]; then
  log "cached: $dir"
  emit
  exit 0
fi

# --- Build the root file system ----------------------------------------------------------------
work="$(mktemp -d "$out/.build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
root="$work/root"
mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,run,tmp,root,var,usr/bin,usr/sbin,usr/lib,usr/lib64}
ln -s usr/lib "$root/lib"
ln -s usr/lib64 "$root/lib64"
ln -s ../run "$root/var/run"
chmod 1777 "$root/tmp"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\n' >"$root/etc/group"
printf '127.0.0.1 localhost\n' >"$root/etc/hosts"

# Copies an executable and the libraries ldd names (same paths; /lib is usr/lib in the guest).
copy_exe() {
  local src="$1" dest="$2" lib
  mkdir -p "$root$(dirname "$dest")"
  if command -v strip >/dev/null; then
    strip --strip-debug -o "$root$dest" "$src" 2>/dev/null || cp "$src" "$root$dest"
  else
    cp "$src" "$root$dest"
  fi
  chmod 0755 "$root$dest"
  for lib in $(ldd "$src" 2>/dev/null | grep -o '/[^ ]*' || true); do
    [ -e "$root$lib" ] && continue
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
}

cp "$busybox" "$root/bin/busybox"
chmod 0755 "$root/bin/busybox"
copy_exe "$bashbin" /bin/bash
copy_exe "$ipbin" /usr/sbin/ip
copy_exe "$bridgebin" /usr/sbin/bridge
for b in "${bins[@]}"; do split_spec "$b" /usr/bin; copy_exe "$src" "$dest"; done
for f in "${files[@]}"; do
  split_spec "$f" ""
  mkdir -p "$root$(dirname "$dest")"
  cp "$src" "$root$dest"
  case "$src" in *.sh) chmod 0755 "$root$dest" ;; esac
done
# Busybox applets for every name not provided by a real binary.
for applet in $("$busybox" --list); do
  case "$applet" in busybox|init|linuxrc) continue ;; esac
  if [ ! -e "$root/usr/sbin/$applet" ] && [ ! -e "$root/usr/bin/$applet" ] && [ ! -e "$root/bin/$applet" ]; then
    ln -s busybox "$root/bin/$applet"
  fi
done

mkdir -p "$root/lib/modules"
for m in "${order[@]}"; do
  m="${m#\?}"
  src="$moddir/${modpath[$m]}"
  case "$src" in
    *.ko) cp "$src" "$root/lib/modules/$m.ko" ;;
    *.ko.xz) xz -dc "$src" >"$root/lib/modules/$m.ko" ;;
    *.ko.zst) zstd -qdc "$src" >"$root/lib/modules/$m.ko" ;;
    *.ko.gz) gzip -dc "$src" >"$root/lib/modules/$m.ko" ;;
    *) die "unknown module format: $src" ;;
  esac
done
printf '%s\n' "${order[@]}" >"$root/etc/guest-modules"
printf '%s\n' "$manifest" >"$root/etc/guest-manifest"
cp "$here/init.sh" "$root/init"
chmod 0755 "$root/init"
mkdir -p "$root/usr/lib/steward-guest"
cp "$here/lib.sh" "$root/usr/lib/steward-guest/lib.sh"
if [ "$(id -u)" = 0 ]; then
  mknod -m 600 "$root/dev/console" c 5 1
  mknod -m 666 "$root/dev/null" c 1 3
fi

# Uncompressed: the guest (often TCG) would spend longer inflating than QEMU spends loading.
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | "$busybox" cpio -o -H newc -R 0:0 2>/dev/null) \
  >"$work/initramfs.cpio"
printf '%s\n' "$manifest" >"$work/manifest"
rm -rf "$root"
mv "$work" "$dir.tmp.$$"
mv -T "$dir.tmp.$$" "$dir" 2>/dev/null || rm -rf "$dir.tmp.$$" # lost a race: same content
trap - EXIT
log "built $dir ($(du -h "$dir/initramfs.cpio" | cut -f1), kernel $kver, modules ${order[*]})"

# Keep the 6 most recently used builds.
# shellcheck disable=SC2012 # (names are hex keys)
ls -1dt "$out"/*/ 2>/dev/null | tail -n +7 | while read -r old; do
  [ -f "$old/initramfs.cpio" ] && rm -rf "$old"
done
emit
