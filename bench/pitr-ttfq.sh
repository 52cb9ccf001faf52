#!/usr/bin/env bash
# Point in time, command to first query: a source cluster (pgbench -i -s SCALE) archives its WAL
# into a file:// repository with `irctl wal push`; after `irctl backup create --from-pg` it runs
# TPC-B (synchronous_commit=off) until about WAL_MIB MiB of WAL were written (pg_current_wal_lsn differences), then takes
# the restore point `bench`, switches WAL and waits until pg_stat_archiver archived it all. Each
# run, cold page cache and a fresh workdir for both, alternating which goes first:
# - instant: `irctl recover --target-name bench --switchover manual`, wall time from launching it
#   until the published instance answers and `pg_is_in_recovery()` is false (it replayed the WAL
#   up to the point and promoted), and the timings.timeToFirstQueryMs `irctl status` reports;
# - baseline: `irctl backup restore` + recovery.signal + PostgreSQL started with
#   restore_command = `irctl wal fetch`, recovery_target_name = bench and
#   recovery_target_action = promote, until it answers and is promoted.
# The source, its repository and the point are made once and kept between runs
# ($IR_BENCH_DIR/pitr-SCALE-WAL_MIB). Usage: bench/pitr-ttfq.sh [SCALE] [WAL_MIB] [RUNS]
# shellcheck source=bench/recover-lib.sh
source "$(dirname "$0")/recover-lib.sh"
SCALE=${1:-10}; WAL_MIB=${2:-1024}; RUNS=${3:-3}; PORT=61400
PUB=$((PORT + 10)); TGT=$((PORT + 11))
DIR=$BENCH_DIR/pitr-$SCALE-$WAL_MIB; RESTORED=$DIR/restored
REPO=file://$DIR/repo

build
mkdir -p "$SOCK" "$BENCH_DIR/bin"; chown postgres:postgres "$SOCK" "$BENCH_DIR"
# archive_command and restore_command run as postgres: a copy of irctl it can run (and that a
# rebuild does not change under a run).
cp "$IRCTL" "$BENCH_DIR/bin/irctl.new"; chmod 755 "$BENCH_DIR/bin/irctl.new"
mv -f "$BENCH_DIR/bin/irctl.new" "$BENCH_DIR/bin/irctl"; IRCTL=$BENCH_DIR/bin/irctl

cleanup() {
  recover_clean
  pg_stop "$DIR/source"
  pg_stop "$RESTORED"; rm -rf "$RESTORED"
}
trap cleanup EXIT; trap "exit 1" INT TERM

lsn_bytes_since() { psql_q "$PORT" "select pg_wal_lsn_diff(pg_current_wal_lsn(), '$1')::bigint"; }

# The source, its backup, WAL_MIB of WAL after it and the restore point, all archived.
make_history() {
  local start last archived
  rm -rf "$DIR"; mkdir -p "$DIR/source"; chown postgres:postgres "$DIR" "$DIR/source"
  as_pg "$PGBIN/initdb" -D "$DIR/source" -A trust -U postgres >/dev/null
  "$IRCTL" repo init --repo "$REPO" >/dev/null
  chown -R postgres:postgres "$DIR/repo" # archive_command runs as postgres
  PG_EXTRA_OPTS="-c archive_mode=on -c archive_command='$IRCTL wal push --repo $REPO %p'" \
    pg_start "$DIR/source" "$PORT"
  as_pg "$PGBIN/pgbench" -h "$SOCK" -p "$PORT" -i -s "$SCALE" -q postgres >/dev/null 2>&1
  psql_q "$PORT" "checkpoint" >/dev/null
  "$IRCTL" backup create --repo "$REPO" --from-pg "host=$SOCK port=$PORT user=postgres" >/dev/null
  start=$(psql_q "$PORT" "select pg_current_wal_lsn()")
  while [ "$(lsn_bytes_since "$start")" -lt $((WAL_MIB << 20)) ]; do
    # Without waiting for each commit's flush: the WAL is the same, written faster.
    as_pg env PGOPTIONS="-c synchronous_commit=off" \
      "$PGBIN/pgbench" -h "$SOCK" -p "$PORT" -c 2 -j 2 -T 5 -n postgres >/dev/null 2>&1
  done
  psql_q "$PORT" "select pg_create_restore_point('bench')" >/dev/null
  lsn_bytes_since "$start" > "$DIR/wal-bytes"
  last=$(psql_q "$PORT" "select pg_walfile_name(pg_current_wal_lsn())")
  psql_q "$PORT" "select pg_switch_wal()" >/dev/null
  until archived=$(psql_q "$PORT" "select coalesce(last_archived_wal, '') from pg_stat_archiver")
        [[ ! "$archived" < "$last" ]]; do
    sleep 0.2
  done
  du -sb "$DIR/source" | cut -f1 > "$DIR/db-bytes"
  pg_stop "$DIR/source"
  latest_backup_id "$REPO" > "$DIR/id"
}
if [ ! -s "$DIR/id" ]; then
  t0=$(now_ms); make_history
  echo "history made in $(($(now_ms) - t0)) ms" >&2
fi
ID=$(cat "$DIR/id"); WAL_BYTES=$(cat "$DIR/wal-bytes"); DB_BYTES=$(cat "$DIR/db-bytes")

promoted() { # socket dir, port
  [ "$(as_pg psql -h "$1" -p "$2" -U postgres -At -c "select pg_is_in_recovery()" postgres 2>/dev/null)" = f ]
}

instant() {
  local t0 r=""
  recover_clean; drop_caches
  t0=$(now_ms)
  recover_start manual "$PUB" "$TGT" --target-name bench
  until promoted "$RW/run" "$PUB"; do
    kill -0 "$REC_PID" 2>/dev/null || { echo "irctl recover exited" >&2; recover_report; exit 1; }
    sleep 0.01
  done
  wall+=($(($(now_ms) - t0)))
  for _ in $(seq 100); do r=$(timing timeToFirstQueryMs); [ -z "$r" ] || break; sleep 0.1; done
  [ -n "$r" ] || { echo "no timeToFirstQueryMs in the status" >&2; recover_report; exit 1; }
  reported+=("$r")
  recover_clean
}

baseline() {
  local t0
  pg_stop "$RESTORED"; rm -rf "$RESTORED"; drop_caches
  t0=$(now_ms)
  restore_to "$RESTORED"
  as_pg touch "$RESTORED/recovery.signal"
  PG_EXTRA_OPTS="-c restore_command='$IRCTL wal fetch --repo $REPO %f %p' \
-c recovery_target_name=bench -c recovery_target_action=promote" pg_start "$RESTORED" "$PORT"
  until promoted "$SOCK" "$PORT"; do sleep 0.01; done
  full+=($(($(now_ms) - t0)))
  pg_stop "$RESTORED"; rm -rf "$RESTORED"
}

reported=(); wall=(); full=()
for run in $(seq "$RUNS"); do
  if (( run % 2 )); then instant; baseline; else baseline; instant; fi
  echo "run $run: irctl recover reports ${reported[-1]} ms, promoted after ${wall[-1]} ms;" \
    "restore + replay ${full[-1]} ms" >&2
done
mr=$(printf '%s\n' "${reported[@]}" | median); mw=$(printf '%s\n' "${wall[@]}" | median)
mf=$(printf '%s\n' "${full[@]}" | median)
echo "per run: reported ${reported[*]} ms; wall ${wall[*]} ms; restore + replay ${full[*]} ms" >&2
what="to a restore point $((WAL_BYTES >> 20)) MiB of WAL after the backup, scale $SCALE ($((DB_BYTES / 1000000)) MB)"
printf '| %s: launch to promoted published instance vs restore + replay + promote | %s ms | %s ms | %s |\n' \
  "$what" "$mw" "$mf" "$(ratio "$mw" "$mf")"
printf '| %s: time to first query irctl reports | %s ms | %s ms | %s |\n' \
  "$what" "$mr" "$mf" "$(ratio "$mr" "$mf")"
