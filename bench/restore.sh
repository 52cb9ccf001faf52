#!/usr/bin/env bash
# Restore alone: cold `irctl backup restore` of this build and of BASELINE_IRCTL (another irctl
# build, required), alternating in each run and swapping which goes first from run to run, page
# cache dropped before each: throughput (the data directory's bytes over the restore's time) and
# CPU (user + system). bench/peer.sh times it against pgBackRest; this isolates a change to it.
# Usage: BASELINE_IRCTL=/path/to/irctl bench/restore.sh [SCALE] [RUNS]   (DATA=realistic)
DATA=${DATA:-realistic}
source "$(dirname "$0")/lib.sh"
SCALE=${1:-100}; RUNS=${2:-5}; PORT=58100
: "${BASELINE_IRCTL:?set BASELINE_IRCTL to the irctl build to compare with}"
machine_info
prepare_backup "$SCALE" $((PORT + 1))
DB_BYTES=$(du -sb "$SOURCE_DIR" | cut -f1)
RESTORED=$BENCH_DIR/restore-bench
trap 'rm -rf "$RESTORED"' EXIT

# timed_restore BUILD: a cold restore by irctl BUILD; sets MBPS and CPU_S.
timed_restore() {
  local t0 c0
  rm -rf "$RESTORED"; drop_caches
  children_cpu; c0=$CHILDREN_CPU_MS
  t0=$(now_ms)
  IRCTL=$1 restore_to "$RESTORED"
  MBPS=$(mbps "$DB_BYTES" $(($(now_ms) - t0)))
  children_cpu; CPU_S=$(awk -v ms=$((CHILDREN_CPU_MS - c0)) 'BEGIN {printf "%.2f", ms / 1000}')
}
ours=(); ours_cpu=(); base=(); base_cpu=()
for run in $(seq "$RUNS"); do
  order=("$IRCTL" "$BASELINE_IRCTL")
  [ $((run % 2)) = 1 ] || order=("$BASELINE_IRCTL" "$IRCTL")
  for build in "${order[@]}"; do
    timed_restore "$build"
    if [ "$build" = "$IRCTL" ]; then ours+=("$MBPS"); ours_cpu+=("$CPU_S")
    else base+=("$MBPS"); base_cpu+=("$CPU_S"); fi
  done
  echo "run $run: this build ${ours[-1]} MB/s (${ours_cpu[-1]} s CPU), baseline ${base[-1]} MB/s (${base_cpu[-1]} s CPU) (load $(cut -d' ' -f1 /proc/loadavg))" >&2
done
label="$DATA scale $SCALE ($((DB_BYTES / 1000000)) MB)"
printf '| %s: restore throughput, `irctl backup restore`, this build vs the baseline build | %s MB/s | %s MB/s | %s |\n' "$label" "$(med "${ours[@]}")" "$(med "${base[@]}")" "$(ratio "$(med "${ours[@]}")" "$(med "${base[@]}")")"
printf '| %s: restore CPU (user + system), this build vs the baseline build | %s s | %s s | %s |\n' "$label" "$(med "${ours_cpu[@]}")" "$(med "${base_cpu[@]}")" "$(ratio "$(med "${ours_cpu[@]}")" "$(med "${base_cpu[@]}")")"
