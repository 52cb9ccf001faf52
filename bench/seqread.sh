#!/usr/bin/env bash
# Cold sequential read of a 1 GiB relation segment through the mount vs the same bytes on local
# disk. Usage: bench/seqread.sh [SCALE] [RUNS]   (scale 100 has a full 1 GiB segment)
source "$(dirname "$0")/lib.sh"
SCALE=${1:-100}; RUNS=${2:-3}; PORT=56510
build
source_cluster "$SCALE" $((PORT + 1))
ID=$(source_backup "$SCALE" $((PORT + 1)))
REL=$(psql_q $((PORT + 1)) "select pg_relation_filepath('pgbench_accounts')")
pg_stop "$SOURCE_DIR"
REPO=file://$BENCH_DIR/repo-$SCALE
BYTES=$(stat -c %s "$SOURCE_DIR/$REL")

read_mbps() { # file -> MB/s
  local t0 t1; t0=$(now_ms); dd if="$1" of=/dev/null bs=1M status=none; t1=$(now_ms)
  awk -v b="$BYTES" -v ms=$((t1 - t0)) 'BEGIN {printf "%.0f", b / 1e6 / (ms / 1000)}'
}
mnt=(); nat=()
for run in $(seq "$RUNS"); do
  rm -rf "$BENCH_DIR/cache"
  mount_start "$REPO" "$ID" "$BENCH_DIR/cache" "$BENCH_DIR/mnt"
  drop_caches; mnt+=($(read_mbps "$BENCH_DIR/mnt/$REL"))
  mount_stop
  drop_caches; nat+=($(read_mbps "$SOURCE_DIR/$REL"))
  echo "run $run: mount ${mnt[-1]} MB/s, native ${nat[-1]} MB/s" >&2
done
mm=$(printf '%s\n' "${mnt[@]}" | median); mn=$(printf '%s\n' "${nat[@]}" | median)
printf '| cold sequential read, %s MB | %s MB/s | %s MB/s | %s |\n' $((BYTES / 1000000)) "$mm" "$mn" "$(ratio "$mm" "$mn")"
