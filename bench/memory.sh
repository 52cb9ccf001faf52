#!/usr/bin/env bash
# Peak RSS of `irctl mount` serving a database (realistic data unless DATA=pgbench), cold and then
# warm, with its in-memory chunk cache at 256 MiB (the default) and at 64 MiB, so what the
# configured cache accounts for shows. Each phase: `pgbench -S` ($SECS s, 4 clients) on
# PostgreSQL started on the mount, then every file of the data directory read once through it
# (`cat`). Cold: fresh IRCache, page cache dropped. Warm: the same mount again, its peak reset
# (/proc/PID/clear_refs) first. The mount's own bound is stated in docs/benchmarks.md.
# Usage: bench/memory.sh [SCALE] [RUNS]     (SECS=30)
DATA=${DATA:-realistic}
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
SCALE=${1:-100}; RUNS=${2:-1}; PORT=57600; SECS=${SECS:-30}
machine_info
prepare_backup "$SCALE" $((PORT + 1))
DB_BYTES=$(du -sb "$SOURCE_DIR" | cut -f1)
cleanup() { pg_stop "$BENCH_DIR/mnt"; mount_stop; }
trap cleanup EXIT; trap "exit 1" INT TERM

serve() { # one phase: pgbench -S, then every file read
  as_pg "$PGBIN/pgbench" -h "$SOCK" -p "$PORT" -U postgres -S -c "${CLIENTS:-4}" -j 2 -T "$SECS" postgres >/dev/null 2>&1
  find "$BENCH_DIR/mnt" -type f -exec cat {} + > /dev/null
}
declare -A cold warm
for run in $(seq "$RUNS"); do
  for mib in 256 64; do
    rm -rf "$BENCH_DIR/cache"; drop_caches
    mount_start "$REPO" "$ID" "$BENCH_DIR/cache" "$BENCH_DIR/mnt" --memory-cache-mib "$mib"
    pg_start "$BENCH_DIR/mnt" "$PORT"; wait_query "$PORT"
    serve; cold[$mib]+="$(peak_rss_mib "$MOUNT_PID") "
    echo 5 > "/proc/$MOUNT_PID/clear_refs"
    serve; warm[$mib]+="$(peak_rss_mib "$MOUNT_PID") "
    pg_stop "$BENCH_DIR/mnt"; mount_stop
    echo "run $run, memory cache $mib MiB: peak RSS cold ${cold[$mib]}MiB, warm ${warm[$mib]}MiB" >&2
  done
done
for mib in 256 64; do
  printf '| %s scale %s (%s MB): peak RSS of `irctl mount`, memory cache %s MiB, cold / warm | %s / %s MiB |\n' \
    "$DATA" "$SCALE" $((DB_BYTES / 1000000)) "$mib" "$(med "${cold[$mib]}")" "$(med "${warm[$mib]}")"
done
