# shellcheck shell=bash
# Shared by the VLAN guest scripts (manual.sh, agent.sh): the stand-in NICs and namespaces
# before any configuration, and the observations the host-side test asserts on.
#
#   setup_links   dummies eth1 eth2 eth3 (up); namespaces ns1..ns3, each with eth0 at
#                 10.10.0.N/24 whose veth peer vpN stays in the root namespace (up, unenslaved)
#   observe TAG   sections TAG-links (ip -d link show), TAG-links-json (ip -j -d link show),
#                 TAG-vlans (bridge vlan show), TAG-vlans-json, TAG-addrs-json (ip -j addr show)
#   pings NAME:NS:ADDR...    one ping per argument, concurrently; section NAME with its outcome

setup_links() {
  set -e
  for nic in eth1 eth2 eth3; do
    ip link add "$nic" type dummy
    ip link set "$nic" up
  done
  for n in 1 2 3; do
    ip netns add "ns$n"
    ip link add "vp$n" type veth peer name eth0 netns "ns$n"
    ip link set "vp$n" up
    ip -n "ns$n" link set lo up
    ip -n "ns$n" addr add "10.10.0.$n/24" dev eth0
    ip -n "ns$n" link set eth0 up
  done
  set +e
  echo "setup: eth1 eth2 eth3 (dummy), ns1..ns3 with 10.10.0.1-3/24 behind vp1..vp3"
}

observe() {
  section "$1-links" ip -d link show
  section "$1-links-json" ip -j -d link show
  section "$1-vlans" bridge vlan show
  section "$1-vlans-json" bridge -j vlan show
  section "$1-addrs-json" ip -j addr show
}

pings() { # NAME:NS:ADDR...: one ping each, all at once; section NAME per ping (rc 0: a reply)
  local p name ns addr
  for p in "$@"; do
    IFS=: read -r name ns addr <<<"$p"
    # -W: seconds to wait for the reply; ARP resolution on a slow (TCG) guest needs a moment.
    (ip netns exec "$ns" ping -c 1 -W 3 "$addr" >"/tmp/$name.out" 2>&1; echo $? >"/tmp/$name.rc") &
  done
  wait
  for p in "$@"; do
    name="${p%%:*}"
    _emit "$name" "/tmp/$name.out" "$(cat "/tmp/$name.rc")"
  done
}
