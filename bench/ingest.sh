#!/usr/bin/env bash
# Ingest: `irctl backup create --from-pg` vs `pg_basebackup -Ft -X fetch` to local disk, and the
# repository size relative to the data directory. Usage: bench/ingest.sh [SCALE] [RUNS]
source "$(dirname "$0")/lib.sh"
SCALE=${1:-100}; RUNS=${2:-3}; PORT=56530
build
source_cluster "$SCALE" "$PORT"
trap 'pg_stop "$SOURCE_DIR"; rm -rf "$BENCH_DIR/ingest-repo" "$BENCH_DIR/basebackup"' EXIT
CONN="host=$SOCK port=$PORT user=postgres"
DATA_BYTES=$(du -sb "$SOURCE_DIR" | cut -f1)
ir=(); pb=()
for run in $(seq "$RUNS"); do
  rm -rf "$BENCH_DIR/ingest-repo" "$BENCH_DIR/basebackup"
  "$IRCTL" repo init --repo "file://$BENCH_DIR/ingest-repo" >/dev/null
  sync; t0=$(now_ms)
  "$IRCTL" backup create --repo "file://$BENCH_DIR/ingest-repo" --from-pg "$CONN" >/dev/null
  sync; ir+=($(( $(now_ms) - t0 )))
  t0=$(now_ms)
  "$PGBIN/pg_basebackup" -d "$CONN" -Ft -X fetch -D "$BENCH_DIR/basebackup"
  sync; pb+=($(( $(now_ms) - t0 )))
  echo "run $run: irctl ${ir[-1]} ms, pg_basebackup ${pb[-1]} ms" >&2
done
REPO_BYTES=$(du -sb "$BENCH_DIR/ingest-repo" | cut -f1)
mi=$(printf '%s\n' "${ir[@]}" | median); mp=$(printf '%s\n' "${pb[@]}" | median)
# Throughput ratio: pg_basebackup time / irctl time (>= 1 means irctl is as fast).
printf '| ingest --from-pg, scale %s (%s MB) | %s ms | %s ms | %s |\n' \
  "$SCALE" $((DATA_BYTES / 1000000)) "$mi" "$mp" "$(ratio "$mp" "$mi")"
printf '| repository bytes / data directory bytes | %s MB | %s MB | %s |\n' \
  $((REPO_BYTES / 1000000)) $((DATA_BYTES / 1000000)) "$(ratio "$REPO_BYTES" "$DATA_BYTES")"
