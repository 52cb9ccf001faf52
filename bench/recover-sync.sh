#!/usr/bin/env bash
# Sync throughput: the copy `irctl recover` makes of the published instance, i.e.
# `pg_basebackup -X stream -c fast` from PostgreSQL running on the mount (cold: fresh IRCache,
# page cache dropped once the instance is up), against the same `pg_basebackup` from the same
# backup restored to local disk (page cache dropped too). Both write to a local-disk directory
# (pg_basebackup syncs it). MB/s = bytes of the copy (du -sb) / wall time of pg_basebackup.
# The mount and PostgreSQL on it are started as bench/lib.sh does (the same `irctl mount` that
# `irctl recover` runs), to time the copy alone.
# Usage: bench/recover-sync.sh [SCALE] [RUNS]
# shellcheck source=bench/recover-lib.sh
source "$(dirname "$0")/recover-lib.sh"
SCALE=${1:-50}; RUNS=${2:-3}; PORT=57200
CACHE=$BENCH_DIR/sync-cache; MNT=$BENCH_DIR/sync-mnt; NATIVE=$BENCH_DIR/sync-native
OUT=$BENCH_DIR/sync-copy
prepare_backup "$SCALE" $((PORT + 1))

cleanup() {
  pg_stop "$MNT"; pg_stop "$NATIVE"
  mount_stop
  if grep -qF " $MNT " /proc/self/mountinfo; then umount -l "$MNT" 2>/dev/null || true; fi
  rm -rf "$CACHE" "$MNT" "$NATIVE" "$OUT"
}
trap cleanup EXIT; trap "exit 1" INT TERM

# copy PORT: times pg_basebackup from the instance on PORT into $OUT; sets MS and BYTES.
copy() {
  local t0
  rm -rf "$OUT"
  drop_caches
  t0=$(now_ms)
  as_pg "$PGBIN/pg_basebackup" -D "$OUT" -X stream -c fast -h "$SOCK" -p "$1" -U postgres
  MS=$(($(now_ms) - t0))
  BYTES=$(du -sb "$OUT" | cut -f1)
  rm -rf "$OUT"
}

# The local-disk copy, restored once; restarted before each of its runs like the mount side.
restore_to "$NATIVE"

ours=(); base=()
for run in $(seq "$RUNS"); do
  rm -rf "$CACHE" "$MNT"
  mount_start "$REPO" "$ID" "$CACHE" "$MNT"
  pg_start "$MNT" "$PORT"; wait_query "$PORT"
  c0=$(cpu_ticks "$MOUNT_PID")
  copy "$PORT"
  cpu=$(awk -v t=$(($(cpu_ticks "$MOUNT_PID") - c0)) -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.1f", t / hz}')
  ours+=("$(mbps "$BYTES" "$MS")")
  pg_stop "$MNT"; mount_stop
  echo "run $run: mount $BYTES bytes in $MS ms = ${ours[-1]} MB/s (irctl mount CPU ${cpu} s)" >&2

  pg_start "$NATIVE" $((PORT + 2)); wait_query $((PORT + 2))
  copy $((PORT + 2))
  base+=("$(mbps "$BYTES" "$MS")")
  pg_stop "$NATIVE"
  echo "run $run: local disk $BYTES bytes in $MS ms = ${base[-1]} MB/s" \
    "(load average $(cut -d' ' -f1 /proc/loadavg))" >&2
done
mo=$(med "${ours[@]}"); mb=$(med "${base[@]}")
echo "per run: mount ${ours[*]} MB/s; local disk ${base[*]} MB/s" >&2
printf '| sync: pg_basebackup -X stream from the published instance (cold) vs from local disk, scale %s | %s MB/s | %s MB/s | %s |\n' \
  "$SCALE" "$mo" "$mb" "$(ratio "$mo" "$mb")"
