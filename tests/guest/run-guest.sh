#!/usr/bin/env bash
# Boots a test guest (an initramfs from build-initramfs.sh and Debian's kernel) in QEMU, with
# the serial console captured to a log file; tries KVM first and falls back to TCG.
#
#   tests/guest/run-guest.sh [options] INITRAMFS KERNEL [-- QEMU ARGS...]
#
#   --log FILE        serial log (default: INITRAMFS's directory/serial.log)
#   --timeout SECS    hard limit for the whole guest run (default 300)
#   --accel MODE      auto (default), kvm or tcg; env STEWARD_GUEST_ACCEL sets it too
#   --kvm-wait SECS   how long a KVM boot may take to print STEWARD-GUEST-BEGIN before it is
#                     taken as hung and TCG is used instead (default 20; env
#                     STEWARD_GUEST_KVM_WAIT)
#   --mem MB          guest memory (default 512)
#   --append TEXT     extra kernel command-line arguments
#
# Prints on stdout `ACCEL=kvm|tcg`, `LOG=<file>`, `RESULT=ok|fail|none`, `ELAPSED_MS=<n>` (the
# run that counted) and `KVM_FALLBACK=<why>` when KVM was tried and given up. Exit codes:
# 0 the guest printed `STEWARD-GUEST-RESULT ok`, 1 it printed `... fail`, 4 no result (crash,
# hang, timeout: see the log), 2 usage, 3 QEMU is missing.
set -euo pipefail

log() { echo "run-guest: $*" >&2; }
usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

logfile=""
timeout_s=300
accel="${STEWARD_GUEST_ACCEL:-auto}"
kvm_wait="${STEWARD_GUEST_KVM_WAIT:-20}"
mem=512
append=""
pos=()
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --log) logfile="$2"; shift 2 ;;
    --timeout) timeout_s="$2"; shift 2 ;;
    --accel) accel="$2"; shift 2 ;;
    --kvm-wait) kvm_wait="$2"; shift 2 ;;
    --mem) mem="$2"; shift 2 ;;
    --append) append="$2"; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) usage ;;
    -*) log "unknown option $1"; usage ;;
    *) pos+=("$1"); shift ;;
  esac
done
[ ${#pos[@]} -eq 2 ] || usage
initramfs="${pos[0]}"
kernel="${pos[1]}"
[ -f "$initramfs" ] || { log "$initramfs: no such file"; exit 2; }
[ -f "$kernel" ] || { log "$kernel: no such file"; exit 2; }
case "$accel" in auto|kvm|tcg) ;; *) log "--accel must be auto, kvm or tcg"; exit 2 ;; esac
command -v qemu-system-x86_64 >/dev/null \
  || { log "MISSING COMPONENT: qemu-system-x86_64 (apt-get install qemu-system-x86)"; exit 3; }
[ -n "$logfile" ] || logfile="$(dirname "$initramfs")/serial.log"
mkdir -p "$(dirname "$logfile")"

now_ms() { date +%s%3N; }

# Never leave a QEMU behind when this script is stopped.
current_pidfile=""
# shellcheck disable=SC2317 # (called by the trap)
cleanup() {
  local q
  if [ -n "$current_pidfile" ] && q="$(cat "$current_pidfile" 2>/dev/null)" && [ -n "$q" ]; then
    kill "$q" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# boot ACCEL LOG WAIT_BEGIN: runs QEMU until it exits, the hard timeout passes, or (WAIT_BEGIN
# > 0) no STEWARD-GUEST-BEGIN appeared within WAIT_BEGIN seconds. Sets `outcome` to exited,
# timeout or no-begin.
boot() {
  local acc="$1" out="$2" wait_begin="$3" cpu=() start pid
  [ "$acc" = kvm ] && cpu=(-cpu host)
  : >"$out"
  rm -f "$out.pid"
  current_pidfile="$out.pid"
  start=$(now_ms)
  # In a subshell whose stderr is dropped: QEMU aborting on a KVM error makes bash print
  # "Aborted" otherwise. QEMU's own output is in the log.
  (
    qemu-system-x86_64 -accel "$acc" "${cpu[@]}" -m "$mem" -nographic -no-reboot \
      -kernel "$kernel" -initrd "$initramfs" \
      -append "console=ttyS0 panic=-1 quiet${append:+ $append}" -pidfile "$out.pid" \
      "${extra[@]}" </dev/null >"$out" 2>&1
    exit 0
  ) 2>/dev/null &
  pid=$!
  outcome=exited
  while kill -0 "$pid" 2>/dev/null; do
    local el=$(( $(now_ms) - start ))
    if [ "$wait_begin" -gt 0 ] && [ "$el" -gt $((wait_begin * 1000)) ] \
      && ! grep -aq STEWARD-GUEST-BEGIN "$out"; then
      outcome=no-begin
      break
    fi
    if [ "$el" -gt $((timeout_s * 1000)) ]; then
      outcome=timeout
      break
    fi
    # The guest printed its end marker: give QEMU a moment to power off by itself.
    if grep -aq STEWARD-GUEST-END "$out" && [ -z "${end_seen:-}" ]; then end_seen=$(now_ms); fi
    if [ -n "${end_seen:-}" ] && [ $(( $(now_ms) - end_seen )) -gt 10000 ]; then break; fi
    sleep 0.2
  done
  end_seen=""
  if kill -0 "$pid" 2>/dev/null; then
    local qpid
    qpid="$(cat "$out.pid" 2>/dev/null || true)"
    if [ -n "$qpid" ]; then
      kill "$qpid" 2>/dev/null || true
      sleep 0.5
      if kill -0 "$qpid" 2>/dev/null; then kill -9 "$qpid" 2>/dev/null || true; fi
    fi
    kill "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  current_pidfile=""
  rm -f "$out.pid"
  elapsed=$(( $(now_ms) - start ))
}

used=""
fallback=""
if [ "$accel" != tcg ]; then
  if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
    boot kvm "$logfile.kvm" "$kvm_wait"
    if grep -aq STEWARD-GUEST-BEGIN "$logfile.kvm"; then
      used=kvm
      mv "$logfile.kvm" "$logfile"
    else
      case "$outcome" in
        no-begin) fallback="KVM boot printed no STEWARD-GUEST-BEGIN within ${kvm_wait}s (hung)" ;;
        timeout) fallback="KVM boot timed out after ${timeout_s}s" ;;
        *) fallback="QEMU with KVM exited without booting: $(grep -a -m1 -i 'error' "$logfile.kvm" | tr -d '\r' || true)" ;;
      esac
    fi
  else
    fallback="/dev/kvm is missing or not read-writable"
  fi
  if [ -z "$used" ] && [ "$accel" = kvm ]; then
    log "KVM requested but unusable: $fallback (log: $logfile.kvm)"
    echo "ACCEL=none"
    echo "LOG=$logfile.kvm"
    echo "RESULT=none"
    exit 4
  fi
fi
if [ -z "$used" ]; then
  [ -n "$fallback" ] && log "falling back to TCG: $fallback"
  boot tcg "$logfile" 0
  used=tcg
fi

result=none
if grep -aq 'STEWARD-GUEST-RESULT ok' "$logfile"; then
  result=ok
elif grep -aq 'STEWARD-GUEST-RESULT fail' "$logfile"; then
  result=fail
fi
[ "$outcome" = timeout ] && log "the guest was killed after the hard timeout of ${timeout_s}s"
echo "ACCEL=$used"
echo "LOG=$logfile"
echo "RESULT=$result"
echo "ELAPSED_MS=$elapsed"
[ -n "$fallback" ] && echo "KVM_FALLBACK=$fallback"
log "accelerator $used, result $result, ${elapsed} ms, serial log $logfile"
case "$result" in ok) exit 0 ;; fail) exit 1 ;; *) exit 4 ;; esac
