#!/usr/bin/env bash
# Cold sequential read of a 1 GiB relation segment through the mount vs the same bytes on local
# disk, page cache dropped on both sides, with the mount's CPU time per MiB read: in 1 MiB reads
# (`dd bs=1M`) and in 8 KiB reads, PostgreSQL's page, as its sequential scans read. With
# BASELINE_IRCTL set to another irctl build, that build's mount is measured too, in the same runs
# (before and after a change, side by side), reading BASELINE_REPO (a repository URL; the same
# one by default), e.g. one that build ingested.
# Usage: bench/seqread.sh [SCALE] [RUNS]   (scale 100 has a full 1 GiB segment; DATA=realistic)
source "$(dirname "$0")/lib.sh"
SCALE=${1:-100}; RUNS=${2:-3}; PORT=56510
machine_info
build
source_cluster "$SCALE" $((PORT + 1))
ID=$(source_backup "$SCALE" $((PORT + 1)))
REL=$(psql_q $((PORT + 1)) "select pg_relation_filepath('pgbench_accounts')")
pg_stop "$SOURCE_DIR"
REPO=file://$BENCH_DIR/repo-$(data_name "$SCALE")
BYTES=$(stat -c %s "$SOURCE_DIR/$REL")
BASE_REPO=${BASELINE_REPO:-$REPO}
BASE_ID=$(latest_backup_id "$BASE_REPO")
trap mount_stop EXIT

read_mbps() { # file block-size -> MB/s
  local t0 t1; t0=$(now_ms); dd if="$1" of=/dev/null bs="$2" status=none; t1=$(now_ms)
  mbps "$BYTES" $((t1 - t0))
}
# mount_read BUILD REPO ID BS: a cold read in BS reads through a fresh mount of REPO's backup ID
# by irctl BUILD; sets MBPS and CPU_MS_MIB.
mount_read() {
  local c0
  rm -rf "$BENCH_DIR/cache"
  IRCTL=$1 mount_start "$2" "$3" "$BENCH_DIR/cache" "$BENCH_DIR/mnt"
  drop_caches; c0=$(cpu_ticks "$MOUNT_PID")
  MBPS=$(read_mbps "$BENCH_DIR/mnt/$REL" "$4")
  CPU_MS_MIB=$(cpu_ms_per_mib $(($(cpu_ticks "$MOUNT_PID") - c0)) "$BYTES")
  mount_stop
}
mnt=(); cpu=(); base=(); base_cpu=(); nat=(); mnt8=(); cpu8=(); base8=(); base_cpu8=(); nat8=()
for run in $(seq "$RUNS"); do
  mount_read "$IRCTL" "$REPO" "$ID" 1M; mnt+=("$MBPS"); cpu+=("$CPU_MS_MIB")
  if [ -n "${BASELINE_IRCTL:-}" ]; then
    mount_read "$BASELINE_IRCTL" "$BASE_REPO" "$BASE_ID" 1M; base+=("$MBPS"); base_cpu+=("$CPU_MS_MIB")
  fi
  drop_caches; nat+=($(read_mbps "$SOURCE_DIR/$REL" 1M))
  mount_read "$IRCTL" "$REPO" "$ID" 8k; mnt8+=("$MBPS"); cpu8+=("$CPU_MS_MIB")
  if [ -n "${BASELINE_IRCTL:-}" ]; then
    mount_read "$BASELINE_IRCTL" "$BASE_REPO" "$BASE_ID" 8k; base8+=("$MBPS"); base_cpu8+=("$CPU_MS_MIB")
  fi
  drop_caches; nat8+=($(read_mbps "$SOURCE_DIR/$REL" 8k))
  echo "run $run: 1 MiB reads: mount ${mnt[-1]} MB/s (${cpu[-1]} CPU ms/MiB)${BASELINE_IRCTL:+, baseline mount ${base[-1]} MB/s (${base_cpu[-1]} CPU ms/MiB)}, native ${nat[-1]} MB/s; 8 KiB reads: mount ${mnt8[-1]} MB/s (${cpu8[-1]} CPU ms/MiB)${BASELINE_IRCTL:+, baseline mount ${base8[-1]} MB/s (${base_cpu8[-1]} CPU ms/MiB)}, native ${nat8[-1]} MB/s (load $(cut -d' ' -f1 /proc/loadavg))" >&2
done
label="$DATA scale $SCALE: cold sequential read, $((BYTES / 1000000)) MB"
printf '| %s, 8 KiB reads, through the mount vs local disk | %s MB/s | %s MB/s | %s |\n' "$label" "$(med "${mnt8[@]}")" "$(med "${nat8[@]}")" "$(ratio "$(med "${mnt8[@]}")" "$(med "${nat8[@]}")")"
printf '| %s, 1 MiB reads, through the mount vs local disk | %s MB/s | %s MB/s | %s |\n' "$label" "$(med "${mnt[@]}")" "$(med "${nat[@]}")" "$(ratio "$(med "${mnt[@]}")" "$(med "${nat[@]}")")"
if [ -n "${BASELINE_IRCTL:-}" ]; then
  printf '| %s, 1 MiB reads, through the mount vs the baseline build'"'"'s mount | %s MB/s | %s MB/s | %s |\n' "$label" "$(med "${mnt[@]}")" "$(med "${base[@]}")" "$(ratio "$(med "${mnt[@]}")" "$(med "${base[@]}")")"
  printf '| %s, 1 MiB reads, the mount'"'"'s CPU per MiB vs the baseline build'"'"'s | %s ms | %s ms | %s |\n' "$label" "$(med "${cpu[@]}")" "$(med "${base_cpu[@]}")" "$(ratio "$(med "${cpu[@]}")" "$(med "${base_cpu[@]}")")"
  printf '| %s, 8 KiB reads, through the mount vs the baseline build'"'"'s mount | %s MB/s | %s MB/s | %s |\n' "$label" "$(med "${mnt8[@]}")" "$(med "${base8[@]}")" "$(ratio "$(med "${mnt8[@]}")" "$(med "${base8[@]}")")"
  printf '| %s, 8 KiB reads, the mount'"'"'s CPU per MiB vs the baseline build'"'"'s | %s ms | %s ms | %s |\n' "$label" "$(med "${cpu8[@]}")" "$(med "${base_cpu8[@]}")" "$(ratio "$(med "${cpu8[@]}")" "$(med "${base_cpu8[@]}")")"
else
  printf '| %s, the mount'"'"'s CPU per MiB, 1 MiB / 8 KiB reads | %s / %s ms |\n' "$label" "$(med "${cpu[@]}")" "$(med "${cpu8[@]}")"
fi
