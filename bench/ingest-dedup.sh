#!/usr/bin/env bash
# Ingest of unchanged data into a repository that already holds it, so that nearly every chunk is
# reused. A reused chunk is read back and its hash checked before a new backup refers to it; this
# measures what that costs, side by side with a baseline irctl (BASE_IRCTL: a build that only
# asked whether the chunk object existed) and with pg_basebackup to local disk, in turn in each
# run. Usage: BASE_IRCTL=/path/to/irctl bench/ingest-dedup.sh [SCALE] [RUNS]
source "$(dirname "$0")/lib.sh"
SCALE=${1:-100}; RUNS=${2:-3}; PORT=56531
[ -x "${BASE_IRCTL:-}" ] || { echo "BASE_IRCTL must name the baseline irctl binary" >&2; exit 1; }
build
source_cluster "$SCALE" "$PORT"
trap 'pg_stop "$SOURCE_DIR"; rm -rf "$BENCH_DIR/dedup-repo" "$BENCH_DIR/basebackup"' EXIT
CONN="host=$SOCK port=$PORT user=postgres"
REPO=file://$BENCH_DIR/dedup-repo
rm -rf "$BENCH_DIR/dedup-repo"
"$IRCTL" repo init --repo "$REPO" >/dev/null
"$IRCTL" backup create --repo "$REPO" --from-pg "$CONN" >/dev/null
timed() { sync; local t0; t0=$(now_ms); "$1" backup create --repo "$REPO" --from-pg "$CONN" >/dev/null; echo $(( $(now_ms) - t0 )); }
ours=(); base=(); pb=()
for run in $(seq "$RUNS"); do
  # Each build goes first in every other run: the first warms the server's cache for the second.
  if (( run % 2 )); then
    base+=($(timed "$BASE_IRCTL")); ours+=($(timed "$IRCTL"))
  else
    ours+=($(timed "$IRCTL")); base+=($(timed "$BASE_IRCTL"))
  fi
  rm -rf "$BENCH_DIR/basebackup"; sync; t0=$(now_ms)
  "$PGBIN/pg_basebackup" -d "$CONN" -Ft -X fetch -D "$BENCH_DIR/basebackup"
  sync; pb+=($(( $(now_ms) - t0 )))
  echo "run $run: irctl ${ours[-1]} ms, baseline irctl ${base[-1]} ms, pg_basebackup ${pb[-1]} ms" >&2
done
mo=$(printf '%s\n' "${ours[@]}" | median); mb=$(printf '%s\n' "${base[@]}" | median)
mp=$(printf '%s\n' "${pb[@]}" | median)
printf '| re-ingest of unchanged data, scale %s: irctl vs baseline irctl (time ratio baseline/ours) | %s ms | %s ms | %s |\n' \
  "$SCALE" "$mo" "$mb" "$(ratio "$mb" "$mo")"
printf '| same, irctl vs pg_basebackup -Ft to local disk (time ratio) | %s ms | %s ms | %s |\n' \
  "$mo" "$mp" "$(ratio "$mp" "$mo")"
