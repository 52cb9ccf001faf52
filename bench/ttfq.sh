#!/usr/bin/env bash
# Time to first query: mount + PostgreSQL start + `SELECT 1`, against a full restore of the same
# backup to local disk + start. Cold page cache for both. Usage: bench/ttfq.sh [SCALE] [RUNS]
source "$(dirname "$0")/lib.sh"
SCALE=${1:-100}; RUNS=${2:-3}; PORT=56500
prepare_backup "$SCALE" $((PORT + 1))
DB_BYTES=$(du -sb "$SOURCE_DIR" | cut -f1)

inst=(); full=()
for run in $(seq "$RUNS"); do
  inst+=($(instant_ttfq_ms "$REPO" "$ID" "$PORT"))

  # baseline: restore everything to local disk, then start
  full+=($(full_restore_ms "$BENCH_DIR/restored" "$PORT"))
  echo "run $run: instant ${inst[-1]} ms, full restore ${full[-1]} ms" >&2
done
mi=$(med "${inst[@]}"); mf=$(med "${full[@]}")
printf '| time to first query, scale %s (%s MB) | %s ms | %s ms | %s |\n' \
  "$SCALE" $((DB_BYTES / 1000000)) "$mi" "$mf" "$(ratio "$mi" "$mf")"
