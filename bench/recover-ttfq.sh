#!/usr/bin/env bash
# Command to first query: `irctl recover` (validate, mount, start PostgreSQL on the mount) until
# the published instance answers `SELECT 1`, against the full-restore baseline of bench/ttfq.sh
# (`irctl backup restore` + start + `SELECT 1`). Cold page cache and a fresh workdir (IRCache)
# for both. Two figures for instant recovery: the "time to first query" irctl reports
# (status timings.timeToFirstQueryMs: from its start to its own first successful query), and the
# wall time this script measures from launching the command to its first successful `select 1`
# (psql as user postgres on the published port, retried every 10 ms). Each recovery then runs to
# the end (sync and automatic switchover) before the next step.
# Usage: bench/recover-ttfq.sh [SCALE] [RUNS]
# shellcheck source=bench/recover-lib.sh
source "$(dirname "$0")/recover-lib.sh"
SCALE=${1:-50}; RUNS=${2:-3}; PORT=57300
PUB=$((PORT + 10)); TGT=$((PORT + 11)); RESTORED=$BENCH_DIR/ttfq-restored
prepare_backup "$SCALE" $((PORT + 1))
DB_BYTES=$(du -sb "$SOURCE_DIR" | cut -f1)

cleanup() {
  recover_clean
  pg_stop "$RESTORED"; rm -rf "$RESTORED"
}
trap cleanup EXIT; trap "exit 1" INT TERM

published_answers() {
  as_pg psql -h "$RW/run" -p "$PUB" -U postgres -At -c "select 1" postgres >/dev/null 2>&1
}

reported=(); wall=(); full=()
for run in $(seq "$RUNS"); do
  recover_clean; drop_caches
  t0=$(now_ms)
  recover_start automatic "$PUB" "$TGT"
  until published_answers; do
    kill -0 "$REC_PID" 2>/dev/null || { echo "irctl recover exited" >&2; recover_report; exit 1; }
    sleep 0.01
  done
  wall+=($(($(now_ms) - t0)))
  wait_phase Completed
  recover_wait_exit
  TTFQ=$(timing timeToFirstQueryMs)
  [ -n "$TTFQ" ] || { echo "no timeToFirstQueryMs in the status" >&2; recover_report; exit 1; }
  reported+=("$TTFQ")
  recover_clean

  full+=($(full_restore_ms "$RESTORED" "$PORT"))
  echo "run $run: irctl recover reports ${reported[-1]} ms, first select 1 after ${wall[-1]} ms;" \
    "full restore ${full[-1]} ms (load average $(cut -d' ' -f1 /proc/loadavg))" >&2
done
mr=$(printf '%s\n' "${reported[@]}" | median); mw=$(printf '%s\n' "${wall[@]}" | median)
mf=$(printf '%s\n' "${full[@]}" | median)
echo "per run: reported ${reported[*]} ms; wall ${wall[*]} ms; full restore ${full[*]} ms" >&2
printf '| command to first query, scale %s (%s MB): time to first query irctl reports | %s ms | %s ms | %s |\n' \
  "$SCALE" $((DB_BYTES / 1000000)) "$mr" "$mf" "$(ratio "$mr" "$mf")"
printf '| command to first query, scale %s (%s MB): launch to first select 1 | %s ms | %s ms | %s |\n' \
  "$SCALE" $((DB_BYTES / 1000000)) "$mw" "$mf" "$(ratio "$mw" "$mf")"
