# shellcheck shell=bash
# Helpers for guest test scripts, sourced with `. /usr/lib/steward-guest/lib.sh` (shipped in
# every initramfs built by tests/guest/build-initramfs.sh). Output goes to the serial console,
# where the host-side parser (agent/tests/common/guest.rs) finds it by name.
#
#   section NAME CMD...   runs CMD; its output (stdout and stderr) between the lines
#                           STEWARD-SECTION-BEGIN NAME
#                           STEWARD-SECTION-END NAME rc=N
#                         returns CMD's exit code
#   capture NAME CMD...   like section, but stdout in section NAME and stderr in NAME.stderr
#                         (for commands printing JSON on stdout and logs on stderr)
#   check WHAT CMD...     runs CMD quietly; prints `STEWARD-CHECK ok|fail WHAT`; counts failures
#   checks_done           prints `STEWARD-CHECKS failed=N`; returns 1 when any check failed

STEWARD_CHECK_FAILED=0

# _emit NAME FILE RC: a section from a file, always ending its text with a newline.
_emit() {
  echo "STEWARD-SECTION-BEGIN $1"
  cat "$2"
  if [ -s "$2" ] && [ -n "$(tail -c 1 "$2")" ]; then echo; fi
  echo "STEWARD-SECTION-END $1 rc=$3"
}

section() {
  local name="$1" rc
  shift
  "$@" >/tmp/.section.out 2>&1
  rc=$?
  _emit "$name" /tmp/.section.out "$rc"
  return "$rc"
}

capture() {
  local name="$1" rc
  shift
  "$@" >/tmp/.capture.out 2>/tmp/.capture.err
  rc=$?
  _emit "$name" /tmp/.capture.out "$rc"
  _emit "$name.stderr" /tmp/.capture.err "$rc"
  return "$rc"
}

check() {
  local what="$1"
  shift
  if "$@" >/dev/null 2>&1; then
    echo "STEWARD-CHECK ok $what"
  else
    echo "STEWARD-CHECK fail $what"
    STEWARD_CHECK_FAILED=$((STEWARD_CHECK_FAILED + 1))
  fi
}

checks_done() {
  echo "STEWARD-CHECKS failed=$STEWARD_CHECK_FAILED"
  [ "$STEWARD_CHECK_FAILED" = 0 ]
}
