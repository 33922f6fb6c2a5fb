#!/bin/busybox sh
# shellcheck shell=dash
# /init of the test guest built by tests/guest/build-initramfs.sh: mounts the pseudo file
# systems, loads the modules listed in /etc/guest-modules (dependency order), runs /test.sh and
# powers off. Everything goes to the serial console between clear markers:
#   STEWARD-GUEST-BEGIN ... STEWARD-GUEST-RESULT ok|fail rc=N ... STEWARD-GUEST-END
# (tests/guest/README.md describes them and the section markers of lib.sh).
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /dev/pts /dev/shm && mount -t devpts devpts /dev/pts
# Keep kernel messages off the console: they would interleave with the test's output.
echo 1 >/proc/sys/kernel/printk
uptime_s() { cut -d' ' -f1 /proc/uptime; }
echo "STEWARD-GUEST-BEGIN kernel=$(uname -r) uptime=$(uptime_s)s"
modfail=""
while read -r m; do
  case "$m" in
    # A soft dependency (e.g. crc32c_intel, which wants SSE4.2 that TCG's CPU may lack).
    \?*) insmod "/lib/modules/${m#\?}.ko" 2>/dev/null || echo "optional module ${m#\?} not loaded" ;;
    # No stray dummy0: tests create what they need.
    dummy) insmod "/lib/modules/$m.ko" numdummies=0 || modfail="$modfail $m" ;;
    *) insmod "/lib/modules/$m.ko" || modfail="$modfail $m" ;;
  esac
done </etc/guest-modules
if [ -n "$modfail" ]; then
  echo "STEWARD-GUEST-MODULES fail:$modfail"
else
  echo "STEWARD-GUEST-MODULES ok $(tr -d '?' </etc/guest-modules | tr '\n' ' ')uptime=$(uptime_s)s"
fi
/usr/sbin/ip link set lo up
rc=0
if [ -n "$modfail" ]; then
  rc=100
elif [ -f /test.sh ]; then
  # bash, not busybox sh: busybox's shell runs its own applets (ip, ...) before $PATH.
  bash /test.sh
  rc=$?
else
  echo "no /test.sh in this initramfs"
  rc=101
fi
if [ "$rc" = 0 ]; then
  echo "STEWARD-GUEST-RESULT ok rc=0 uptime=$(uptime_s)s"
else
  echo "STEWARD-GUEST-RESULT fail rc=$rc uptime=$(uptime_s)s"
fi
echo "STEWARD-GUEST-END"
sync
poweroff -f
# If power-off did not work, init exiting panics the kernel; panic=-1 reboots at once and QEMU's
# -no-reboot turns that into an exit.
exit 1
