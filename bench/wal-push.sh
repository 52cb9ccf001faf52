#!/usr/bin/env bash
# WAL archiving: `irctl wal push` of real 16 MiB segments into a file:// repository vs
# `cp` + fsync of the file and its directory (what a durable copy-to-a-directory
# archive_command does), one segment at a time, alternating which goes first. The segments
# come from a cluster that ran `pgbench -i` and a TPC-B load, copied as its archive_command
# completed them. Usage: bench/wal-push.sh [SEGMENTS] [RUNS]
source "$(dirname "$0")/lib.sh"
SEGMENTS=${1:-20}; RUNS=${2:-3}; PORT=56532
DIR=$BENCH_DIR/wal
build
trap 'pg_stop "$DIR/source"; rm -rf "$DIR/repo" "$DIR/cp"' EXIT
now_us() { date +%s%6N; }

# Real segments, made once and kept between runs.
if [ "$(ls "$DIR/segments" 2>/dev/null | grep -c '^[0-9A-F]\{24\}$')" -lt "$SEGMENTS" ]; then
  rm -rf "$DIR"; mkdir -p "$DIR/source" "$DIR/segments" "$SOCK"
  chown postgres:postgres "$BENCH_DIR" "$DIR" "$DIR/source" "$DIR/segments" "$SOCK"
  as_pg "$PGBIN/initdb" -D "$DIR/source" -A trust -U postgres >/dev/null
  PG_EXTRA_OPTS="-c archive_mode=on -c archive_command='cp %p $DIR/segments/%f'" \
    pg_start "$DIR/source" "$PORT"
  as_pg "$PGBIN/pgbench" -h "$SOCK" -p "$PORT" -i -s 10 -q postgres >/dev/null 2>&1
  while [ "$(ls "$DIR/segments" | grep -c '^[0-9A-F]\{24\}$')" -lt "$SEGMENTS" ]; do
    as_pg "$PGBIN/pgbench" -h "$SOCK" -p "$PORT" -c 2 -T 5 -n postgres >/dev/null 2>&1
    psql_q "$PORT" "select pg_switch_wal()" >/dev/null
    sleep 1
  done
  pg_stop "$DIR/source"
fi
mapfile -t NAMES < <(ls "$DIR/segments" | grep '^[0-9A-F]\{24\}$' | head -n "$SEGMENTS")
SEG_BYTES=$(stat -c %s "$DIR/segments/${NAMES[0]}")

ours=(); base=()
push() { local t0; t0=$(now_us); "$IRCTL" wal push --repo "file://$DIR/repo" "$DIR/segments/$1"; ours+=($(( $(now_us) - t0 ))); }
copy() { local t0; t0=$(now_us); cp "$DIR/segments/$1" "$DIR/cp/$1"; sync "$DIR/cp/$1" "$DIR/cp"; base+=($(( $(now_us) - t0 ))); }
for run in $(seq "$RUNS"); do
  rm -rf "$DIR/repo" "$DIR/cp"; mkdir -p "$DIR/cp"
  "$IRCTL" repo init --repo "file://$DIR/repo" >/dev/null
  sync
  i=0
  for name in "${NAMES[@]}"; do
    if (( (i + run) % 2 )); then push "$name"; copy "$name"; else copy "$name"; push "$name"; fi
    i=$((i + 1))
  done
  echo "run $run: irctl wal push median $(printf '%s\n' "${ours[@]: -$SEGMENTS}" | median) us," \
    "cp + fsync median $(printf '%s\n' "${base[@]: -$SEGMENTS}" | median) us" >&2
done
REPO_BYTES=$(du -sb "$DIR/repo/wal" | cut -f1)
mo=$(printf '%s\n' "${ours[@]}" | median); mb=$(printf '%s\n' "${base[@]}" | median)
printf '| archive one %s MiB segment: `irctl wal push` vs `cp` + fsync of file and directory (time ratio ours/baseline) | %s ms | %s ms | %s |\n' \
  $((SEG_BYTES >> 20)) "$(ratio "$mo" 1000)" "$(ratio "$mb" 1000)" "$(ratio "$mo" "$mb")"
printf '| archived bytes / segment bytes (%s segments) | %s MB | %s MB | %s |\n' \
  "$SEGMENTS" $((REPO_BYTES / 1000000)) $((SEG_BYTES * SEGMENTS / 1000000)) \
  "$(ratio "$REPO_BYTES" $((SEG_BYTES * SEGMENTS)))"
