#!/usr/bin/env bash
# Where the mount's CPU goes in a cold sequential read: `perf record` of `irctl mount` while `dd`
# reads pgbench_accounts' first segment (1 MiB reads, fresh IRCache, page cache dropped), then
# the top symbols as a share of the mount's samples. Usage: bench/profile-read.sh [SCALE]
# (DATA=realistic; needs `perf`, Debian's linux-perf)
DATA=${DATA:-realistic}
source "$(dirname "$0")/lib.sh"
SCALE=${1:-100}; PORT=57800
need perf linux-perf
machine_info
prepare_backup "$SCALE" $((PORT + 1))
pg_start "$SOURCE_DIR" $((PORT + 1))
REL=$(psql_q $((PORT + 1)) "select pg_relation_filepath('pgbench_accounts')")
pg_stop "$SOURCE_DIR"
PERF_DATA=$BENCH_DIR/profile-read.perf
trap 'mount_stop; rm -f "$PERF_DATA"' EXIT

rm -rf "$BENCH_DIR/cache"
mount_start "$REPO" "$ID" "$BENCH_DIR/cache" "$BENCH_DIR/mnt"
drop_caches
perf record -q -F 999 -g -p "$MOUNT_PID" -o "$PERF_DATA" 2>/dev/null &
PERF_PID=$!
sleep 0.5 # perf attaches to every thread of the mount
dd if="$BENCH_DIR/mnt/$REL" of=/dev/null bs=1M status=none
kill -INT "$PERF_PID"; wait "$PERF_PID" 2>/dev/null || true
echo "\`irctl mount\` during a cold sequential read ($DATA scale $SCALE), % of its samples, by object:"
perf report -i "$PERF_DATA" --no-children --sort dso --stdio 2>/dev/null |
  awk '/^ +[0-9.]+%/ && n++ < 4' | sed -E 's/ +/ /g'
# zstd's Huffman decoding loops are assembly whose symbols have no size, so perf cannot name them:
# their samples show as bare addresses.
echo "top symbols:"
perf report -i "$PERF_DATA" --no-children --sort symbol --stdio 2>/dev/null |
  awk '/^ +[0-9.]+%/ && n++ < 12' | sed -E 's/ +/ /g; s/( -)+ *$//'
