#!/bin/sh
# Steward agent installer. The registry serves this script at /install.sh with its own URL,
# its TLS certificate's pin and the agent packages it offers filled in, so a new host needs
# one command (as root):
#
#   curl -fsSL --cacert registry-ca.pem https://REGISTRY:7700/install.sh | sh -s -- --token TOKEN
#
# It downloads the steward-agent .deb for this machine's architecture from the registry,
# checks its sha256, installs it with dpkg (apt-get resolves missing dependencies), writes
# /etc/steward/agent.toml (mode 0600) with the registry URL, the certificate pin and the
# enrolment token, then enables and starts the steward-agent service (when systemd runs).
# Run again without --token to upgrade: the configuration is kept, the agent is restarted and
# its workloads keep running.
#
# Options: --help. The registry fills in the placeholders below (registry/src/api/install.rs).
set -eu

REGISTRY='@@REGISTRY@@'
CA_PIN='@@CA_PIN@@'
# Served by registry @@VERSION@@. One line per architecture: ARCH FILE SHA256.
PACKAGES='@@PACKAGES@@'
CONFIG=/etc/steward/agent.toml
UNIT=steward-agent.service

say() { printf 'steward install: %s\n' "$*" >&2; }
die() {
	say "error: $*"
	exit 1
}
usage() {
	cat <<EOF
Installs the Steward agent from the registry at $REGISTRY.
usage: curl -fsSL $REGISTRY/install.sh | sh -s -- [--token TOKEN] [options]
  --token TOKEN     enrolment token (stewardctl tokens create); without it an existing
                    $CONFIG is kept, and a new host is left unconfigured
  --registry URL    registry URL the agent uses [default: $REGISTRY]
  --ca-pin SHA256   pin this certificate sha256 [default: the certificate this registry
                    serves, if it serves https: ${CA_PIN:-none}]
  --ca-file PATH    trust this CA file instead of a pin (it must stay on the host)
  --no-ca-pin       trust the system's CAs instead of a pin
  --no-start        install and configure, but do not enable or start the service
  -h, --help        show this help
EOF
}

token=''
agent_registry="$REGISTRY"
pin="$CA_PIN"
ca_file=''
start=1
while [ $# -gt 0 ]; do
	case "$1" in
	--token) [ $# -ge 2 ] || die "--token needs a value"; token="$2"; shift 2 ;;
	--token=*) token="${1#*=}"; shift ;;
	--registry) [ $# -ge 2 ] || die "--registry needs a value"; agent_registry="$2"; shift 2 ;;
	--registry=*) agent_registry="${1#*=}"; shift ;;
	--ca-pin) [ $# -ge 2 ] || die "--ca-pin needs a value"; pin="$2"; shift 2 ;;
	--ca-pin=*) pin="${1#*=}"; shift ;;
	--ca-file) [ $# -ge 2 ] || die "--ca-file needs a value"; ca_file="$2"; pin=''; shift 2 ;;
	--ca-file=*) ca_file="${1#*=}"; pin=''; shift ;;
	--no-ca-pin) pin=''; shift ;;
	--no-start) start=0; shift ;;
	-h | --help) usage; exit 0 ;;
	*) die "unknown option $1 (see --help: curl -fsSL $REGISTRY/install.sh | sh -s -- --help)" ;;
	esac
done

# Values end up in TOML strings: refuse anything that would need escaping.
case "$token" in
*[!A-Za-z0-9._-]*) die "the token may hold only letters, digits, '.', '_' and '-'" ;;
esac
case "$agent_registry" in
http://?* | https://?*) ;;
*) die "--registry must be an http:// or https:// URL, got '$agent_registry'" ;;
esac
case "$agent_registry" in
*[!]A-Za-z0-9._~:/%@[-]*) die "--registry holds characters a URL here may not have: '$agent_registry'" ;;
esac
case "$pin" in
*[!0-9A-Fa-f:]*) die "--ca-pin must be a sha256 in hex (colons allowed)" ;;
esac
case "$ca_file" in
'') ;;
/*) [ -r "$ca_file" ] || die "--ca-file $ca_file is not readable" ;;
*) die "--ca-file must be an absolute path" ;;
esac
case "$ca_file" in
*[\"\\]*) die "--ca-file may not contain quotes or backslashes" ;;
esac

[ "$(id -u)" = 0 ] || die "run this as root (… | sudo sh -s -- --token …)"
command -v dpkg >/dev/null 2>&1 || die "this installer needs a Debian-based system (dpkg)"
arch=$(dpkg --print-architecture)
line=$(printf '%s\n' "$PACKAGES" | while read -r a f s; do
	if [ "$a" = "$arch" ]; then
		echo "$f $s"
		break
	fi
done)
[ -n "$line" ] || die "the registry at $REGISTRY offers no steward-agent package for $arch"
file=${line% *}
sha=${line#* }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
deb="$tmp/$file"
url="$REGISTRY/packages/$file"
# The sha256 below is what makes the download trustworthy (it comes with this script, which
# was fetched the way its caller chose); with a pinned, usually self-signed, certificate the
# chain cannot be checked by curl, so it is not.
say "downloading $url"
if command -v curl >/dev/null 2>&1; then
	insecure=''
	[ -z "$CA_PIN" ] || insecure='--insecure'
	# shellcheck disable=SC2086
	curl -fsSL --retry 5 --retry-delay 2 --retry-connrefused $insecure -o "$deb" "$url" \
		|| die "downloading $url failed"
elif command -v wget >/dev/null 2>&1; then
	insecure=''
	[ -z "$CA_PIN" ] || insecure='--no-check-certificate'
	# shellcheck disable=SC2086
	wget -q --tries=5 $insecure -O "$deb" "$url" || die "downloading $url failed"
else
	die "neither curl nor wget is installed"
fi
echo "$sha  $deb" | sha256sum -c --status - \
	|| die "$file does not have the sha256 the registry announced ($sha); not installing it"

say "installing $file"
# Nothing may read this script's stdin (with `curl … | sh` it is the rest of the script), and
# nothing may ask: a changed /etc/default/steward-agent is kept (the new one is .dpkg-dist).
if ! dpkg -i --force-confdef --force-confold "$deb" </dev/null; then
	command -v apt-get >/dev/null 2>&1 || die "dpkg could not install $file"
	say "installing missing dependencies with apt-get"
	DEBIAN_FRONTEND=noninteractive apt-get -f install -y -o Dpkg::Options::=--force-confdef \
		-o Dpkg::Options::=--force-confold </dev/null || die "apt-get could not install the dependencies of $file"
fi

if [ -n "$token" ]; then
	umask 077
	mkdir -p /etc/steward
	if [ -f "$CONFIG" ]; then
		cp -p "$CONFIG" "$CONFIG.old"
		say "saved the previous configuration as $CONFIG.old"
	fi
	new=$(mktemp /etc/steward/.agent.toml.XXXXXX)
	{
		echo "# Written by the Steward install script from $REGISTRY on $(date -u '+%Y-%m-%d %H:%M UTC')."
		echo "# Every field: /usr/share/doc/steward-agent/examples/agent.toml"
		echo "registry = \"$agent_registry\""
		echo "enrollment_token = \"$token\""
		[ -z "$pin" ] || echo "ca_pin_sha256 = \"$pin\""
		[ -z "$ca_file" ] || echo "ca_file = \"$ca_file\""
	} >"$new"
	chmod 0600 "$new"
	mv -f "$new" "$CONFIG"
	say "wrote $CONFIG (mode 0600): registry $agent_registry${pin:+, certificate pinned}"
	if [ -f /var/lib/steward/node.json ]; then
		say "note: this host is already enrolled (/var/lib/steward/node.json); the agent keeps that identity and does not use the token (steward-agent enroll --force enrols again)"
	fi
elif [ -f "$CONFIG" ]; then
	say "kept the existing $CONFIG"
else
	say "installed, but not configured (no --token): write $CONFIG (see /usr/share/doc/steward-agent/examples/agent.toml), then: systemctl enable --now $UNIT"
	exit 0
fi

if [ "$start" = 0 ]; then
	say "not starting the service (--no-start); start it with: systemctl enable --now $UNIT"
elif [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
	systemctl daemon-reload </dev/null
	systemctl enable "$UNIT" </dev/null >/dev/null 2>&1 || systemctl enable "$UNIT" </dev/null
	# A restart picks up a new configuration; workloads keep running (KillMode=process).
	systemctl restart "$UNIT" </dev/null
	say "steward-agent is enabled and running; follow it with: journalctl -u $UNIT -f"
else
	init=$(cat /proc/1/comm 2>/dev/null || echo unknown)
	say "systemd is not running here (PID 1 is $init): the service was not started. Start the agent with: /usr/bin/steward-agent --config $CONFIG run"
fi
