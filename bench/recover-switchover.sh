#!/usr/bin/env bash
# Switchover downtime (writes refused: from read-only to the new primary promoted), idle and under
# pgbench TPC-B load, and a check that no commit a client saw acknowledged is lost.
#  instant recovery: `irctl recover --switchover manual`; once ReadyForSwitchover (the standby in
#    the target streams from the published instance on the mount), `irctl switchover`; the
#    downtime is the one irctl measures (status timings.switchoverDowntimeMs).
#  baseline: a primary on local disk (full restore of the same backup) and a standby made with
#    `pg_basebackup -X stream -R`; `CHECKPOINT` (untimed, as irctl does it before read-only),
#    then `ALTER SYSTEM SET default_transaction_read_only` + reload +
#    ending the sessions, `pg_ctl stop -m fast` of the primary, `pg_ctl promote -w` of the standby,
#    timed by this script.
# Under load, pgbench (TPC-B, $CLIENTS clients, -T 60) runs against the primary (the published
# instance) for $LOAD_SECS s before the switchover, which ends its sessions. pgbench truncates
# pgbench_history when it starts and every TPC-B transaction inserts one row into it, so the number
# of transactions pgbench reports as processed must be <= the rows on the promoted copy.
# Usage: bench/recover-switchover.sh [SCALE] [RUNS]
# shellcheck source=bench/recover-lib.sh
source "$(dirname "$0")/recover-lib.sh"
SCALE=${1:-50}; RUNS=${2:-3}; PORT=57100; CLIENTS=${CLIENTS:-4}; LOAD_SECS=${LOAD_SECS:-5}
PUB=$((PORT + 10)); TGT=$((PORT + 11)); BPORT=$((PORT + 20)); SPORT=$((PORT + 21))
BP=$BENCH_DIR/switchover-primary; BS=$BENCH_DIR/switchover-standby
PGB_OUT=$BENCH_DIR/switchover-pgbench.out
prepare_backup "$SCALE" $((PORT + 1))

cleanup() {
  pgbench_kill
  recover_clean
  pg_stop "$BS"; pg_stop "$BP"
  rm -rf "$BP" "$BS"
}
trap cleanup EXIT; trap "exit 1" INT TERM

# check_commits WHAT PROCESSED PORT SOCKET_DIR: the promoted copy has every acknowledged commit.
LOST=0
check_commits() {
  local rows
  rows=$(as_pg psql -h "$4" -p "$3" -U postgres -At -c "select count(*) from pgbench_history" postgres)
  echo "    $1: pgbench processed ${2:-?} transactions; pgbench_history on the promoted copy: $rows rows" >&2
  if [ -z "$2" ] || [ "$2" -eq 0 ]; then
    echo "FAILED ($1): pgbench reported no processed transaction: the load did not run" >&2
    cat "$PGB_OUT" >&2; exit 1
  fi
  if [ "$2" -gt "$rows" ]; then
    echo "LOST COMMITS ($1): pgbench saw $2 transactions committed, the promoted copy has $rows" >&2
    LOST=$((LOST + 1))
  fi
}

ours() { # idle|load; sets DT (ms)
  recover_start manual "$PUB" "$TGT"
  wait_phase ReadyForSwitchover
  if [ "$1" = load ]; then pgbench_start "$PUB" "$RW/run" "$PGB_OUT"; sleep "$LOAD_SECS"; fi
  "$IRCTL" switchover --workdir "$RW" >/dev/null
  wait_phase Completed
  recover_wait_exit
  if [ "$1" = load ]; then
    pgbench_end "$PGB_OUT"
    check_commits "instant recovery" "$PROCESSED" "$TGT" "$RW/run"
  fi
  DT=$(timing switchoverDowntimeMs)
  [ -n "$DT" ] || { echo "no switchoverDowntimeMs in the status" >&2; recover_report; exit 1; }
  recover_clean
}

baseline() { # idle|load; sets DT (ms)
  local t0
  rm -rf "$BP" "$BS"
  restore_to "$BP"
  pg_start "$BP" "$BPORT"
  as_pg "$PGBIN/pg_basebackup" -D "$BS" -X stream -R -c fast -h "$SOCK" -p "$BPORT" -U postgres
  pg_start "$BS" "$SPORT"
  until [ "$(psql_q "$BPORT" "select count(*) from pg_stat_replication where state = 'streaming'")" = 1 ]; do
    sleep 0.05
  done
  if [ "$1" = load ]; then pgbench_start "$BPORT" "$SOCK" "$PGB_OUT"; sleep "$LOAD_SECS"; fi
  # Like irctl: a checkpoint while writes still flow, so the shutdown checkpoint has less to do.
  as_pg psql -h "$SOCK" -p "$BPORT" -U postgres -At -q -c "CHECKPOINT" postgres
  t0=$(now_ms)
  as_pg psql -h "$SOCK" -p "$BPORT" -U postgres -At -q \
    -c "ALTER SYSTEM SET default_transaction_read_only = on" -c "SELECT pg_reload_conf()" \
    -c "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
        WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()" postgres >/dev/null
  as_pg "$PGBIN/pg_ctl" -D "$BP" -m fast -w stop >/dev/null
  as_pg "$PGBIN/pg_ctl" -D "$BS" -w promote >/dev/null
  DT=$(($(now_ms) - t0))
  if [ "$1" = load ]; then
    pgbench_end "$PGB_OUT"
    check_commits "baseline" "$PROCESSED" "$SPORT" "$SOCK"
  fi
  pg_stop "$BS"; rm -rf "$BP" "$BS"
}

declare -A OURS BASE
for run in $(seq "$RUNS"); do
  for load in idle load; do
    ours "$load"; OURS[$load]+="$DT "
    ours_dt=$DT
    baseline "$load"; BASE[$load]+="$DT "
    echo "run $run, $load: instant recovery $ours_dt ms, baseline $DT ms (load average $(cut -d' ' -f1 /proc/loadavg))" >&2
  done
done
for load in idle load; do
  read -ra o <<< "${OURS[$load]}"; read -ra b <<< "${BASE[$load]}"
  mo=$(printf '%s\n' "${o[@]}" | median); mb=$(printf '%s\n' "${b[@]}" | median)
  echo "$load per run: instant recovery ${OURS[$load]}ms; baseline ${BASE[$load]}ms" >&2
  label="idle"
  [ "$load" = load ] && label="pgbench TPC-B, $CLIENTS clients"
  printf '| switchover downtime (read-only to promoted), scale %s, %s | %s ms | %s ms | %s |\n' \
    "$SCALE" "$label" "$mo" "$mb" "$(ratio "$mo" "$mb")"
done
if [ "$LOST" -gt 0 ]; then echo "LOST COMMITS in $LOST switchover(s)" >&2; exit 1; fi
echo "no acknowledged commit lost in $((RUNS * 2)) loaded switchovers" >&2
