#!/bin/bash
# Guest test script: steward-agent converges spec.yaml (VLANs, a VLAN-filtering bridge with
# tagged/untagged/PVID ports, a lab network) on dummy NICs and veth ports; then re-applies it
# (nothing to write), moves vp3 to VLAN 10 (spec-moved.yaml) and asks for a VLAN on a parent
# the policy does not allow (spec-refused.yaml). agent/tests/guest_vlan.rs asserts on the output.
# shellcheck source=/dev/null # (guest paths: tests/guest/lib.sh, vlan/common.sh)
. /usr/lib/steward-guest/lib.sh
# shellcheck source=/dev/null
. /vlan/common.sh
setup_links

apply() { # NAME SPEC: sections NAME (status JSON) and NAME.stderr (the agent's log), with rc
  capture "$1" env RUST_LOG=info NO_COLOR=1 steward-agent --data-dir /var/lib/steward \
    --config /etc/steward/agent.toml apply --json --file "$2"
}

apply apply /vlan/spec.yaml
observe first
# VLAN 10 (vp1, vp2) reach each other; VLAN 20 (vp3) reaches neither, in the same subnet.
pings ping-ns1-ns2:ns1:10.10.0.2 ping-ns2-ns1:ns2:10.10.0.1 \
  ping-ns3-ns1:ns3:10.10.0.1 ping-ns3-ns2:ns3:10.10.0.2 ping-ns1-ns3:ns1:10.10.0.3

apply apply-again /vlan/spec.yaml

apply apply-moved /vlan/spec-moved.yaml
observe moved
pings moved-ping-ns3-ns1:ns3:10.10.0.1 moved-ping-ns2-ns3:ns2:10.10.0.3

apply apply-refused /vlan/spec-refused.yaml
section refused-link ip -d link show eth3.30
exit 0
