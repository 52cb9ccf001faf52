#!/usr/bin/env bash
# pgbench on the mount (warm) vs the same data on local disk: select-only (-S) and TPC-B.
# Usage: bench/pgbench.sh [SCALE] [SECONDS] [RUNS]
source "$(dirname "$0")/lib.sh"
SCALE=${1:-100}; SECS=${2:-30}; RUNS=${3:-3}; PORT=56520; CLIENTS=${CLIENTS:-4}
prepare_backup "$SCALE" $((PORT + 1))

# Native copy of the same backup, and the mount, both started once and warmed.
rm -rf "$BENCH_DIR/native" "$BENCH_DIR/cache"
restore_to "$BENCH_DIR/native"
mount_start "$REPO" "$ID" "$BENCH_DIR/cache" "$BENCH_DIR/mnt"
trap 'pg_stop "$BENCH_DIR/mnt"; pg_stop "$BENCH_DIR/native"; mount_stop' EXIT
pg_start "$BENCH_DIR/mnt" "$PORT"; pg_start "$BENCH_DIR/native" $((PORT + 2))
tps() { # port args...
  local port=$1; shift
  as_pg "$PGBIN/pgbench" -h "$SOCK" -p "$port" -c "$CLIENTS" -j 2 -T "$SECS" "$@" postgres 2>/dev/null \
    | awk '/^tps/ {print int($3)}'
}
# Warm both the same way: every relation file read once into the page cache. (A restore leaves
# its writes in the page cache; `count(*)` alone would only read the primary key index.)
for dir in "$BENCH_DIR/mnt" "$BENCH_DIR/native"; do
  find "$dir/base" -type f -exec cat {} + > /dev/null
done
for mode in S tpcb; do
  m=(); n=()
  args=(); [ "$mode" = S ] && args=(-S)
  for run in $(seq "$RUNS"); do
    m+=($(tps "$PORT" "${args[@]}")); n+=($(tps $((PORT + 2)) "${args[@]}"))
    echo "$mode run $run: mount ${m[-1]} tps, native ${n[-1]} tps" >&2
  done
  mm=$(printf '%s\n' "${m[@]}" | median); mn=$(printf '%s\n' "${n[@]}" | median)
  printf '| pgbench %s, scale %s, %s clients, %ss | %s tps | %s tps | %s |\n' \
    "$([ "$mode" = S ] && echo "-S" || echo "TPC-B")" "$SCALE" "$CLIENTS" "$SECS" "$mm" "$mn" "$(ratio "$mm" "$mn")"
done
