#!/bin/bash
# Guest test script, harness self-test: builds what spec.yaml declares with ip/bridge directly
# (no agent), so the kernel features, the isolation checks and the host-side assertions of
# agent/tests/guest_vlan.rs are proven independently of the agent. Then moves vp3 to VLAN 10
# as spec-moved.yaml does.
# shellcheck source=/dev/null # (guest paths: tests/guest/lib.sh, vlan/common.sh)
. /usr/lib/steward-guest/lib.sh
# shellcheck source=/dev/null
. /vlan/common.sh
setup_links

set -e
# vlans + br100
ip link add br100 type bridge stp_state 1
ip link set br100 up
ip addr add 10.100.0.1/24 dev br100
ip link add link eth1 name eth1.100 type vlan id 100
ip link set eth1.100 mtu 1400 master br100 up
# brtrunk: VLAN-filtering; eth2 a tagged trunk; vp1, vp2 untagged PVID 10; vp3 untagged PVID 20
ip link add brtrunk type bridge vlan_filtering 1
ip link set brtrunk up
ip link set eth2 master brtrunk
bridge vlan add dev eth2 vid 10
bridge vlan add dev eth2 vid 20
bridge vlan del dev eth2 vid 1
for p in vp1:10 vp2:10 vp3:20; do
  ip link set "${p%:*}" master brtrunk
  bridge vlan add dev "${p%:*}" vid "${p#*:}" pvid untagged
  bridge vlan del dev "${p%:*}" vid 1
done
# lab 150 on eth1: eth1.150 in br150 with 192.168.150.1/24
ip link add br150 type bridge
ip link set br150 up
ip addr add 192.168.150.1/24 dev br150
ip link add link eth1 name eth1.150 type vlan id 150
ip link set eth1.150 master br150 up
set +e

observe first
# VLAN 10 (vp1, vp2) reach each other; VLAN 20 (vp3) reaches neither, in the same subnet.
pings ping-ns1-ns2:ns1:10.10.0.2 ping-ns2-ns1:ns2:10.10.0.1 \
  ping-ns3-ns1:ns3:10.10.0.1 ping-ns3-ns2:ns3:10.10.0.2 ping-ns1-ns3:ns1:10.10.0.3

# spec-moved.yaml: vp3 from VLAN 20 to VLAN 10.
bridge vlan add dev vp3 vid 10 pvid untagged && bridge vlan del dev vp3 vid 20
observe moved
pings moved-ping-ns3-ns1:ns3:10.10.0.1 moved-ping-ns2-ns3:ns2:10.10.0.3
exit 0
