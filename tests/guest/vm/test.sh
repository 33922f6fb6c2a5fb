#!/bin/bash
# The guest of the VM tests (agent/tests/vm_*.rs): booted *by the agent* as a VM with a
# virtio NIC on a managed bridge. Takes its address and peer from the kernel command line
# (vm.ip=10.77.0.2/24 vm.peer=10.77.0.1; vm.http=PORT also serves /health over HTTP on that
# port, for health checks), else from the cloud-init seed's network-config (the agent writes
# one from the VM's lab lease: needs the virtio_blk, vfat and nls modules in the guest), prints markers on the serial console the host-side
# test reads from serial.log, pings the bridge's address, and stays up (a VM, not a one-shot).
ip_arg=$(tr ' ' '\n' </proc/cmdline | sed -n 's/^vm\.ip=//p')
peer=$(tr ' ' '\n' </proc/cmdline | sed -n 's/^vm\.peer=//p')
http=$(tr ' ' '\n' </proc/cmdline | sed -n 's/^vm\.http=//p')
echo "VM-GUEST-UP"
for _ in $(seq 1 100); do [ -e /sys/class/net/eth0 ] && break; sleep 0.1; done
echo "VM-NIC $(cat /sys/class/net/eth0/address 2>/dev/null || echo none)"
# No address on the command line: take it from the cloud-init seed's network-config (the
# disk labelled CIDATA), as cloud-init would: the first NIC's address and default route.
if [ -z "$ip_arg" ]; then
  mkdir -p /seed
  for dev in /dev/vd?; do
    mount -t vfat -o ro "$dev" /seed 2>/dev/null || continue
    if [ -f /seed/network-config ]; then
      ip_arg=$(grep -A1 '^    addresses:' /seed/network-config | sed -n 's/^ *- *//p' | head -n1)
      peer=$(sed -n 's/^ *via: *//p' /seed/network-config | head -n1)
      echo "VM-NETCONF ${ip_arg:-none} via ${peer:-none}"
    fi
    umount /seed
    break
  done
fi
if [ -n "$ip_arg" ]; then
  ip addr add "$ip_arg" dev eth0
  ip link set eth0 up
  ok=no
  for _ in $(seq 1 60); do
    if ping -c 1 -W 2 "$peer" >/dev/null 2>&1; then ok=yes; break; fi
    sleep 1
  done
  echo "VM-PING-$ok $peer"
  if [ -n "$http" ]; then
    mkdir -p /www && echo ok >/www/health
    httpd -p "$http" -h /www && echo "VM-HTTP-UP $http"
  fi
fi
echo "VM-READY"
while true; do sleep 3600; done
