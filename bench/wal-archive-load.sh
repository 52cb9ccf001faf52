#!/usr/bin/env bash
# WAL archiving under load: a source (pgbench -i -s SCALE, made once and kept) started with
# archive_mode=on runs TPC-B (`pgbench -c CLIENTS -j CLIENTS -T SECONDS`) twice, once archiving
# with `irctl wal push` into a fresh file:// repository and once with the baseline
# `test ! -f DIR/%f && cp %p DIR/%f && sync DIR/%f DIR` (durable copy into a directory). Every
# 10 s it samples the archiver's backlog: the completed segments not yet archived
# (pg_wal/archive_status/*.ready), and the segments between pg_walfile_name(pg_current_wal_lsn())
# and pg_stat_archiver.last_archived_wal (stderr). Reports the maximum and the final backlog (at
# the end of the load), the time the backlog then takes to drain, and the tps.
# Usage: bench/wal-archive-load.sh [SCALE] [CLIENTS] [SECONDS]
source "$(dirname "$0")/lib.sh"
SCALE=${1:-100}; CLIENTS=${2:-4}; DURATION=${3:-300}; PORT=61500
DIR=$BENCH_DIR/archive-load-$SCALE; SRC=$DIR/source

build
mkdir -p "$SOCK" "$BENCH_DIR/bin"; chown postgres:postgres "$SOCK"
# archive_command runs as postgres: a copy of irctl it can run.
cp "$IRCTL" "$BENCH_DIR/bin/irctl.new"; chmod 755 "$BENCH_DIR/bin/irctl.new"
mv -f "$BENCH_DIR/bin/irctl.new" "$BENCH_DIR/bin/irctl"; IRCTL=$BENCH_DIR/bin/irctl

cleanup() { [ -z "${PGB_PID:-}" ] || kill "$PGB_PID" 2>/dev/null || true; pg_stop "$SRC"; }
trap cleanup EXIT; trap "exit 1" INT TERM

if [ ! -f "$DIR/ready" ]; then
  rm -rf "$DIR"; mkdir -p "$SRC"; chown postgres:postgres "$DIR" "$SRC"
  as_pg "$PGBIN/initdb" -D "$SRC" -A trust -U postgres >/dev/null
  pg_start "$SRC" "$PORT"
  as_pg "$PGBIN/pgbench" -h "$SOCK" -p "$PORT" -i -s "$SCALE" -q postgres >/dev/null 2>&1
  psql_q "$PORT" "checkpoint" >/dev/null
  pg_stop "$SRC"
  touch "$DIR/ready"
fi

segno() { echo $((16#${1:8:8} * 256 + 16#${1:16:8})); } # 16 MiB segments
ready_count() { find "$SRC/pg_wal/archive_status" -name '*.ready' | wc -l; }
behind() {
  local cur last
  cur=$(psql_q "$PORT" "select pg_walfile_name(pg_current_wal_lsn())")
  last=$(psql_q "$PORT" "select coalesce(last_archived_wal, '') from pg_stat_archiver")
  if [ -z "$last" ]; then echo "-"; else echo $(($(segno "$cur") - $(segno "${last:0:24}"))); fi
}

# load NAME ARCHIVE_COMMAND: one run; sets MAXB, FINALB, DRAIN_S, TPS, WAL_MB, FAILED.
load() {
  local name=$1 t=0 b start out=$DIR/$1.pgbench t0
  PG_EXTRA_OPTS="-c archive_mode=on -c archive_command='$2'" pg_start "$SRC" "$PORT"
  psql_q "$PORT" "checkpoint" >/dev/null
  drop_caches
  start=$(psql_q "$PORT" "select pg_current_wal_lsn()")
  as_pg "$PGBIN/pgbench" -h "$SOCK" -p "$PORT" -c "$CLIENTS" -j "$CLIENTS" -T "$DURATION" postgres \
    > "$out" 2>&1 &
  PGB_PID=$!
  MAXB=0
  while :; do
    for _ in $(seq 100); do kill -0 "$PGB_PID" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$PGB_PID" 2>/dev/null || break
    t=$((t + 10)); b=$(ready_count)
    [ "$b" -le "$MAXB" ] || MAXB=$b
    echo "$name ${t}s: backlog $b ready, $(behind) segments behind the current one" >&2
  done
  FINALB=$(ready_count)
  [ "$FINALB" -le "$MAXB" ] || MAXB=$FINALB
  wait "$PGB_PID" || { cat "$out" >&2; PGB_PID=; return 1; }
  PGB_PID=
  WAL_MB=$(($(psql_q "$PORT" "select pg_wal_lsn_diff(pg_current_wal_lsn(), '$start')::bigint") / 1000000))
  echo "$name end: backlog $FINALB ready, $(behind) segments behind, $WAL_MB MB of WAL" >&2
  t0=$(now_ms)
  while [ "$(ready_count)" -gt 0 ]; do sleep 0.1; done
  DRAIN_S=$(ratio $(($(now_ms) - t0)) 1000)
  FAILED=$(psql_q "$PORT" "select failed_count from pg_stat_archiver")
  TPS=$(sed -n 's/^tps = \([0-9]*\).*/\1/p' "$out")
  pg_stop "$SRC"
}

rm -rf "$DIR/repo" "$DIR/cp"; mkdir -p "$DIR/cp"
"$IRCTL" repo init --repo "file://$DIR/repo" >/dev/null
chown -R postgres:postgres "$DIR/repo" "$DIR/cp"
load cp "test ! -f $DIR/cp/%f && cp %p $DIR/cp/%f && sync $DIR/cp/%f $DIR/cp"
bmax=$MAXB; bfinal=$FINALB; bdrain=$DRAIN_S; btps=$TPS; bwal=$WAL_MB; bfail=$FAILED
load irctl "$IRCTL wal push --repo file://$DIR/repo %p"
echo "failed archive_command calls: irctl $FAILED, cp $bfail; WAL: irctl $WAL_MB MB, cp $bwal MB" >&2
rm -rf "$DIR/repo" "$DIR/cp"

what="archiving TPC-B, scale $SCALE, $CLIENTS clients, $DURATION s"
printf '| %s: maximum archiver backlog (segments ready, sampled every 10 s) | %s | %s | |\n' \
  "$what" "$MAXB" "$bmax"
printf '| %s: backlog at the end of the load, then drained in | %s, %s s | %s, %s s | |\n' \
  "$what" "$FINALB" "$DRAIN_S" "$bfinal" "$bdrain"
printf '| %s: tps (ratio ours/baseline, higher is better) | %s | %s | %s |\n' \
  "$what" "$TPS" "$btps" "$(ratio "$TPS" "$btps")"
