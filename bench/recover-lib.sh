# shellcheck shell=bash
# Helpers of the bench/recover-*.sh scripts (sourced; not a benchmark itself): one `irctl recover`
# at a time, with its workdir in $RW and its target data directory in $RT.
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# irctl recover wants a workdir no other user can swap: not below $BENCH_DIR, which belongs to
# postgres, but in a directory of root's next to it.
RECOVER_DIR=$BENCH_DIR-recover
RW=$RECOVER_DIR/work
RT=$RECOVER_DIR/target
REC_OUT=$BENCH_DIR/recover.out
REC_PID=

# status_get EXPR: prints the Python expression EXPR over `s`, the JSON of `irctl status`
# ("" when unreadable or null).
status_get() {
  "$IRCTL" status --workdir "$RW" --output json 2>/dev/null |
    python3 -c 'import json,sys
try:
    s = json.load(sys.stdin)
    v = eval(sys.argv[1])
    print("" if v is None else v)
except Exception:
    print("")' "$1" || true
}
phase() { status_get 's["phase"]'; }
timing() { status_get "s[\"timings\"].get(\"$1\")"; }

# recover_dir: $RECOVER_DIR, root's, where the workdir and the target go.
recover_dir() {
  mkdir -p "$RECOVER_DIR"; chown root:root "$RECOVER_DIR"; chmod 755 "$RECOVER_DIR"
}

# recover_start POLICY PUBLISHED_PORT TARGET_PORT [ARG...]: `irctl recover` of $REPO/$ID in the
# background, with the further arguments (e.g. a --target-*).
recover_start() {
  recover_clean
  recover_dir
  "$IRCTL" recover --repo "${REPO:?}" --backup "${ID:?}" --workdir "$RW" --target-pgdata "$RT" \
    --switchover "$1" --published-port "$2" --target-port "$3" --retry-limit 0 "${@:4}" \
    > "$REC_OUT" 2>&1 &
  REC_PID=$!
}

# recover_ttfq_ms: `irctl recover` of $REPO/$ID launched cold (manual switchover, published on
# $PUB) until its published instance answers `SELECT 1`; prints the ms and stops it again.
recover_ttfq_ms() {
  local t0 ms
  recover_clean; drop_caches
  t0=$(now_ms)
  recover_start manual "$PUB" "$TGT"
  until as_pg psql -h "$RW/run" -p "$PUB" -U postgres -At -c "select 1" postgres >/dev/null 2>&1; do
    kill -0 "$REC_PID" 2>/dev/null || { echo "irctl recover exited" >&2; recover_report; exit 1; }
    sleep 0.01
  done
  ms=$(($(now_ms) - t0))
  recover_clean
  echo "$ms"
}

recover_report() {
  echo "---- irctl recover output ($REC_OUT)" >&2; tail -n 20 "$REC_OUT" >&2 || true
  local log
  for log in "$RW"/logs/*.log; do
    [ -f "$log" ] || continue
    echo "---- $log" >&2; tail -n 10 "$log" >&2
  done
}

# wait_phase PHASE [TIMEOUT_S]: until the recovery reaches PHASE; fails on Failed, Waiting, on
# irctl exiting before it, and on the timeout.
wait_phase() {
  local want=$1 deadline=$(($(date +%s) + ${2:-900})) p
  while :; do
    p=$(phase)
    [ "$p" = "$want" ] && return 0
    case $p in Failed | Waiting)
      echo "irctl recover: phase $p while waiting for $want" >&2; recover_report; return 1 ;;
    esac
    if ! kill -0 "$REC_PID" 2>/dev/null; then
      p=$(phase)
      [ "$p" = "$want" ] && return 0
      echo "irctl recover exited in phase '$p' while waiting for $want" >&2; recover_report
      return 1
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "timeout waiting for phase $want (at '$p')" >&2; recover_report; return 1
    fi
    sleep 0.2
  done
}

# recover_wait_exit: irctl recover ends by itself after Completed.
recover_wait_exit() {
  local rc=0
  wait "$REC_PID" || rc=$?
  REC_PID=
  if [ "$rc" != 0 ]; then echo "irctl recover exited with $rc" >&2; recover_report; return 1; fi
}

wait_gone() { # pid seconds
  for _ in $(seq $(($2 * 20))); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.05; done
  return 1
}
# stop_ours PID SIGNAL TEXT: only if PID's command line mentions TEXT (not a reused pid): sends
# SIGNAL, and SIGKILL if it is still there after 30 s.
stop_ours() {
  [ -n "$1" ] && [ -r "/proc/$1/cmdline" ] || return 0
  tr '\0' ' ' < "/proc/$1/cmdline" | grep -qF -- "$3" || return 0
  kill "-$2" "$1" 2>/dev/null || true
  wait_gone "$1" 30 || kill -KILL "$1" 2>/dev/null || true
}

# recover_clean: stops whatever a recovery in $RW left running (after a completed one, only the
# promoted target) and removes $RW and $RT. Processes are found by pid only: the postmasters'
# postmaster.pid, the pids irctl records in recovery.json, and the children of pg_basebackup.
recover_clean() {
  local pub="" bb="" mnt="" kids="" pid
  if [ -n "$REC_PID" ] && kill -0 "$REC_PID" 2>/dev/null; then
    kill -TERM "$REC_PID" 2>/dev/null || true # it stops after the current step
    wait_gone "$REC_PID" 20 || kill -KILL "$REC_PID" 2>/dev/null || true
    wait "$REC_PID" 2>/dev/null || true
  fi
  REC_PID=
  if [ -f "$RW/recovery.json" ]; then
    read -r pub bb mnt < <(python3 -c 'import json,sys
r = json.load(open(sys.argv[1])).get("resources", {})
print(*(r.get(k) or "-" for k in ("publishedPid", "baseBackupPid", "mountPid")))' \
      "$RW/recovery.json" 2>/dev/null) || true
  fi
  [ "$pub" != - ] || pub=""; [ "$bb" != - ] || bb=""; [ "$mnt" != - ] || mnt=""
  [ -n "$pub" ] || pub=$(head -n 1 "$RW/mnt/postmaster.pid" 2>/dev/null || true)
  [ -z "$bb" ] || kids=$(pgrep -P "$bb" || true)
  if [ -f "$RT/postmaster.pid" ]; then
    as_pg "$PGBIN/pg_ctl" -D "$RT" -m fast -w stop >/dev/null 2>&1 || true
  fi
  stop_ours "$pub" QUIT "$RW/mnt" # immediate shutdown: the copy on the mount is thrown away
  stop_ours "$bb" TERM "$RT"
  for pid in $kids; do stop_ours "$pid" TERM "$RT"; done
  stop_ours "$mnt" TERM "$RW/mnt"
  if grep -qF " $RW/mnt " /proc/self/mountinfo; then umount -l "$RW/mnt" 2>/dev/null || true; fi
  rm -rf "$RW" "$RT"
}

# pgbench_start PORT HOST OUT: TPC-B, $CLIENTS clients, 60 s, in the background (sets PGB_PID).
# pgbench truncates pgbench_history first, so the history counts this run's commits only.
pgbench_start() {
  as_pg "$PGBIN/pgbench" -h "$2" -p "$1" -U postgres -c "${CLIENTS:-4}" -j 2 -T 60 postgres \
    > "$3" 2>&1 &
  PGB_PID=$!
}
# pgbench_end OUT: waits for pgbench (the switchover ends its sessions, so it exits with "Run was
# aborted") and sets PROCESSED to the number of transactions it saw committed.
pgbench_end() {
  wait "$PGB_PID" 2>/dev/null || true
  PGB_PID=
  # shellcheck disable=SC2034 # read by the caller
  PROCESSED=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$1")
}
pgbench_kill() { [ -z "${PGB_PID:-}" ] || kill "$PGB_PID" 2>/dev/null || true; }
