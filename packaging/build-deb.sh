#!/usr/bin/env bash
# Builds the Debian packages with dpkg-deb from staging trees:
#   steward-agent     /usr/bin/steward-agent, its systemd unit, /etc/default/steward-agent
#   steward-registry  /usr/bin/steward-registry and stewardctl, its systemd unit,
#                     /etc/steward/registry.toml, and the steward-agent package in
#                     /usr/share/steward/packages (served to new hosts by GET /install.sh)
#
#   packaging/build-deb.sh [--bin-dir DIR] [--out DIR] [--fast]
#
#   --bin-dir DIR  take the binaries from DIR instead of running `cargo build --release`
#   --out DIR      where the .deb files go [default: target/debian]
#   --fast         gzip -1 instead of xz (for tests: same contents, quicker to build)
#
# Prints the paths of the two packages. Needs dpkg-dev (dpkg-shlibdeps, dpkg-parsechangelog),
# help2man and binutils (strip); scripts/deps.sh installs them. The version is the workspace's
# (Cargo.toml), and packaging/deb/changelog must have an entry for it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
src=$root/packaging

bin_dir=""
out="${CARGO_TARGET_DIR:-$root/target}/debian"
compress=(-Zxz -z6)
while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir) bin_dir=$(realpath "$2"); shift 2 ;;
    --out) mkdir -p "$2"; out=$(realpath "$2"); shift 2 ;;
    --fast) compress=(-Zgzip -z1); shift ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-deb.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

die() { echo "build-deb.sh: $*" >&2; exit 1; }
for tool in dpkg-deb dpkg-shlibdeps dpkg-parsechangelog help2man strip gzip; do
  command -v "$tool" >/dev/null || die "$tool is missing: run scripts/deps.sh (packages dpkg-dev, help2man, binutils)"
done

version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
[ -n "$version" ] || die "no version in Cargo.toml's [workspace.package]"
changelog_version=$(dpkg-parsechangelog -l "$src/deb/changelog" -S Version)
[ "$changelog_version" = "$version" ] \
  || die "packaging/deb/changelog's latest entry is $changelog_version, the workspace is $version: add an entry"
# Reproducible: every timestamp (man pages, files, archive members) is the changelog's.
SOURCE_DATE_EPOCH=$(dpkg-parsechangelog -l "$src/deb/changelog" -S Timestamp)
export SOURCE_DATE_EPOCH
arch=$(dpkg --print-architecture)

if [ -z "$bin_dir" ]; then
  # The agent ships in the size-optimised `release-agent` profile (fewer resident pages on
  # every host; see Cargo.toml), the registry in the speed-optimised `release` profile.
  cargo build --release --locked -p steward-registry >&2
  cargo build --profile release-agent --locked -p steward-agent >&2
  bin_dir="${CARGO_TARGET_DIR:-$root/target}/release"
  agent_bin="${CARGO_TARGET_DIR:-$root/target}/release-agent/steward-agent"
else
  agent_bin="$bin_dir/steward-agent"
fi
[ -x "$agent_bin" ] || die "$agent_bin is missing (build it, or drop --bin-dir)"
for b in steward-registry stewardctl; do
  [ -x "$bin_dir/$b" ] || die "$bin_dir/$b is missing (build it, or drop --bin-dir)"
done

stage_root="$out/staging"
rm -rf "$stage_root"
mkdir -p "$stage_root"
umask 022

# put MODE SRC DST: a file into the staging tree.
put() { install -D -m "$1" "$2" "$3"; }
# put_bin SRC DST: a stripped binary, as dh_strip does it.
put_bin() {
  mkdir -p "$(dirname "$2")"
  strip --remove-section=.comment --remove-section=.note --strip-unneeded -o "$2" "$1"
  chmod 0755 "$2"
}
# gz SRC DST: gzip -9n (no name, no time stamp), as dh_compress does it.
gz() { mkdir -p "$(dirname "$2")"; gzip -9nc "$1" >"$2"; chmod 0644 "$2"; }
# man BIN NAME DESCRIPTION DST_DIR: a man page from --help/--version.
man_page() {
  local page="$4/usr/share/man/man1/$2.1.gz"
  mkdir -p "$(dirname "$page")"
  help2man --no-info --no-discard-stderr --section 1 --source "Steward $version" \
    --version-string "$version" --name "$3" "$1" | gzip -9n >"$page"
  chmod 0644 "$page"
}
# docs PKG: copyright, changelog and lintian overrides.
docs() {
  put 0644 "$src/deb/copyright" "$stage_root/$1/usr/share/doc/$1/copyright"
  gz "$src/deb/changelog" "$stage_root/$1/usr/share/doc/$1/changelog.gz"
  put 0644 "$src/deb/$1.lintian-overrides" "$stage_root/$1/usr/share/lintian/overrides/$1"
}
# depends BIN...: the shared-library dependencies (dpkg-shlibdeps needs a debian/control).
depends() {
  local work
  work=$(mktemp -d)
  mkdir "$work/debian"
  printf 'Source: steward\n\nPackage: steward\nArchitecture: any\n' >"$work/debian/control"
  (cd "$work" && dpkg-shlibdeps -O "$@" 2>/dev/null) | sed -n 's/^shlibs:Depends=//p'
  rm -rf "$work"
}
# finish PKG: maintainer scripts, md5sums, control file, then dpkg-deb.
finish() {
  local pkg=$1 depends=$2 extra=$3 description=$4 dir="$stage_root/$1"
  mkdir -p "$dir/DEBIAN"
  for s in postinst prerm postrm; do put 0755 "$src/deb/$pkg.$s" "$dir/DEBIAN/$s"; done
  find "$dir/etc" -type f -printf '/etc/%P\n' | sort >"$dir/DEBIAN/conffiles"
  (cd "$dir" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) >"$dir/DEBIAN/md5sums"
  local size
  size=$(du -sk --apparent-size --exclude=DEBIAN "$dir" | cut -f1)
  {
    echo "Package: $pkg"
    echo "Source: steward"
    echo "Version: $version"
    echo "Architecture: $arch"
    echo "Maintainer: Steward maintainers <steward@example.org>"
    echo "Installed-Size: $size"
    echo "Depends: $depends"
    [ -z "$extra" ] || printf '%s\n' "$extra"
    echo "Section: admin"
    echo "Priority: optional"
    printf '%s\n' "$description"
  } >"$dir/DEBIAN/control"
  chmod 0644 "$dir/DEBIAN/control" "$dir/DEBIAN/conffiles" "$dir/DEBIAN/md5sums"
  find "$dir" -type d -exec chmod 0755 {} +
  find "$dir" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
  local deb="$out/${pkg}_${version}_${arch}.deb"
  dpkg-deb --root-owner-group "${compress[@]}" --build "$dir" "$deb" >/dev/null
  echo "$deb"
}

# --- steward-agent
a="$stage_root/steward-agent"
put_bin "$agent_bin" "$a/usr/bin/steward-agent"
put 0644 "$src/systemd/steward-agent.service" "$a/lib/systemd/system/steward-agent.service"
put 0644 "$src/deb/steward-agent.default" "$a/etc/default/steward-agent"
mkdir -p "$a/etc/steward"
put 0644 "$src/agent.toml.example" "$a/usr/share/doc/steward-agent/examples/agent.toml"
docs steward-agent
man_page "$a/usr/bin/steward-agent" steward-agent \
  "Steward's on-host agent: keeps this host in the state declared in the registry" "$a"
agent_deb=$(finish steward-agent "$(depends "$a/usr/bin/steward-agent")" \
  "Recommends: docker.io, nftables" \
  "Description: Steward agent: keeps this host in the state declared centrally
 The Steward agent runs on every hypervisor, Docker host and bare-metal node
 of a fleet. It enrols with a Steward registry, pulls this node's desired
 state (containers, VMs, host networks, payloads), makes the host match it,
 and reports heartbeats and what it observed.
 .
 The service starts once /etc/steward/agent.toml exists: cloud-init or the
 registry's install script write it. Upgrading, restarting or removing this
 package never stops the containers and VMs the agent started.")

# --- steward-registry
r="$stage_root/steward-registry"
put_bin "$bin_dir/steward-registry" "$r/usr/bin/steward-registry"
put_bin "$bin_dir/stewardctl" "$r/usr/bin/stewardctl"
put 0644 "$src/systemd/steward-registry.service" "$r/lib/systemd/system/steward-registry.service"
put 0644 "$src/deb/steward-registry.default" "$r/etc/default/steward-registry"
put 0644 "$src/registry.toml.example" "$r/etc/steward/registry.toml"
put 0644 "$agent_deb" "$r/usr/share/steward/packages/$(basename "$agent_deb")"
docs steward-registry
man_page "$r/usr/bin/steward-registry" steward-registry \
  "Steward's central registry: desired state, enrolment, heartbeats and events of a fleet" "$r"
man_page "$r/usr/bin/stewardctl" stewardctl "admin CLI for the Steward registry" "$r"
registry_deb=$(finish steward-registry "adduser, $(depends "$r/usr/bin/steward-registry" "$r/usr/bin/stewardctl")" \
  "" \
  "Description: Steward registry: desired state and health of a fleet of hosts
 The Steward registry is the thin central service of a Steward fleet: it
 stores each node's desired state, hands it to the node's agent, merges
 fleet-wide fragments, tracks node health from heartbeats and keeps an
 event log. stewardctl is its admin command line.
 .
 It also serves the steward-agent package and an install script, so a new
 host is enrolled with one command (curl from the registry's /install.sh,
 piped to sh with an enrolment token), or with cloud-init user-data from
 stewardctl cloud-init.")

echo "$agent_deb"
echo "$registry_deb"
