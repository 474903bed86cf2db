# Sourced by scripts/long_runs.sh and scripts/rebench.sh: run a chain's jobs one at a time so
# that a stop reaches the running one.
#
#   run COMMAND...   runs COMMAND in the background and waits for it; a failing job ends the
#                    chain with its exit code. SIGTERM or Ctrl-C to the chain is passed to the
#                    job (which saves its progress), and the chain then exits 143.
#                    With DRY_RUN set, prints COMMAND instead of running it.

child=
stopped=0
trap 'stopped=1; [ -n "$child" ] && kill -TERM "$child" 2>/dev/null || true' TERM INT

run() {
  if [ "$stopped" -eq 1 ]; then exit 143; fi
  if [ -n "${DRY_RUN:-}" ]; then echo "$*"; return; fi
  "$@" &
  child=$!
  local rc=0
  while :; do
    wait "$child" && rc=0 || rc=$?
    kill -0 "$child" 2>/dev/null || break  # still alive: wait was cut short by the trapped signal
  done
  child=
  if [ "$rc" -ne 0 ]; then exit "$rc"; fi
  if [ "$stopped" -eq 1 ]; then exit 143; fi
}
