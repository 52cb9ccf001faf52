#!/usr/bin/env bash
# The zstd level of the repository's chunks: compression ratio, compression and decompression
# speed at level 1 (what ingest uses) and level 3 (zstd's default), on 64 MiB of
# pgbench_accounts' heap and of its primary key index, in 1 MiB blocks as the chunks are
# (`zstd -b`, the zstd CLI's own benchmark, about 3 s per level).
# Usage: bench/zstd-level.sh [SCALE]   (DATA=realistic)
DATA=${DATA:-realistic}
source "$(dirname "$0")/lib.sh"
SCALE=${1:-100}; PORT=57700
need zstd zstd
machine_info
source_cluster "$SCALE" $((PORT + 1))
heap=$(psql_q $((PORT + 1)) "select pg_relation_filepath('pgbench_accounts')")
index=$(psql_q $((PORT + 1)) "select pg_relation_filepath('pgbench_accounts_pkey')")
pg_stop "$SOURCE_DIR"
SAMPLE=$BENCH_DIR/zstd-sample
trap 'rm -f "$SAMPLE"' EXIT

# level RELATION LEVEL: "RATIO COMPRESSION_MB/S DECOMPRESSION_MB/S" of 64 MiB of RELATION at
# LEVEL.
level() {
  dd if="$SOURCE_DIR/$1" of="$SAMPLE" bs=1M count=64 status=none
  zstd -b"$2" -B1M "$SAMPLE" 2>&1 | tr '\r' '\n' | grep 'MB/s.*MB/s' | tail -n 1 |
    sed -E 's/.*\(x([0-9.]+)\), *([0-9.]+) MB\/s, *([0-9.]+) MB\/s$/\1 \2 \3/'
}
for rel in heap index; do
  read -r r1 c1 d1 < <(level "${!rel}" 1)
  read -r r3 c3 d3 < <(level "${!rel}" 3)
  printf '| %s scale %s, pgbench_accounts %s: zstd decompression, level 1 vs level 3 | %s MB/s | %s MB/s | %s |\n' \
    "$DATA" "$SCALE" "$rel" "$d1" "$d3" "$(ratio "$d1" "$d3")"
  printf '| the same, compression ratio, level 1 vs level 3 | %s | %s | %s |\n' "$r1" "$r3" "$(ratio "$r1" "$r3")"
  printf '| the same, compression speed, level 1 vs level 3 | %s MB/s | %s MB/s | %s |\n' "$c1" "$c3" "$(ratio "$c1" "$c3")"
done
