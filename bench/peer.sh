#!/usr/bin/env bash
# Instant recovery against a real peer, pgBackRest (Debian's `pgbackrest`), on the same cluster
# (realistic data unless DATA=pgbench), alternating in each run, page cache dropped before each:
#   - instant: `irctl mount` + `pg_ctl start` + first `SELECT 1` (fresh IRCache);
#   - `irctl recover`: launch to its published instance's first `SELECT 1` (the recovery is then
#     stopped: its sync is bench/recover-sync.sh's);
#   - physical limit: `pg_ctl start` + first `SELECT 1` on a data directory restored beforehand
#     (untimed): what PostgreSQL itself needs, so the mount's overhead is the difference;
#   - full restore + start: `irctl backup restore`, then `pgbackrest restore --process-max=2`
#     (recovery to the backup's end, `--type=immediate --target-action=promote`), each followed
#     by start + first `SELECT 1`; their restore throughput is the data directory's bytes over
#     the restore command's time.
# pgBackRest's backup is made once, like irctl's, from the stopped-and-started source with WAL
# archiving to its own repository (zstd, as irctl's chunks; --process-max=2). With
# BASELINE_IRCTL set to another irctl build, that build's `irctl backup restore` is timed too, in
# the same runs, for its restore throughput (before and after a change, side by side).
# Usage: bench/peer.sh [SCALE] [RUNS]
DATA=${DATA:-realistic}
# shellcheck source=bench/recover-lib.sh
source "$(dirname "$0")/recover-lib.sh"
SCALE=${1:-100}; RUNS=${2:-3}; PORT=57400
PUB=$((PORT + 10)); TGT=$((PORT + 11))
need pgbackrest pgbackrest
machine_info

prepare_backup "$SCALE" $((PORT + 1))
DB_BYTES=$(du -sb "$SOURCE_DIR" | cut -f1)
RESTORED=$BENCH_DIR/peer-restored
PB=$BENCH_DIR/pgbackrest-$(data_name "$SCALE")
PB_CONF=$PB/pgbackrest.conf

pgbr() { as_pg pgbackrest --config="$PB_CONF" --stanza=bench "$@"; }
# pgBackRest's repository, stanza and one full backup of the source, made once.
pgbackrest_backup() {
  [ -f "$PB/backed-up" ] && return 0
  rm -rf "$PB"; mkdir -p "$PB/repo" "$PB/log" "$PB/lock"
  cat > "$PB_CONF" <<CONF
[global]
repo1-path=$PB/repo
compress-type=zst
process-max=2
start-fast=y
log-path=$PB/log
lock-path=$PB/lock
log-level-console=warn
log-level-file=info

[bench]
pg1-path=$SOURCE_DIR
pg1-socket-path=$SOCK
pg1-port=$((PORT + 1))
CONF
  chown -R postgres:postgres "$PB"
  PG_EXTRA_OPTS="-c archive_mode=on -c archive_command='pgbackrest --config=$PB_CONF --stanza=bench archive-push %p'" \
    pg_start "$SOURCE_DIR" $((PORT + 1))
  pgbr stanza-create
  pgbr --type=full backup
  pg_stop "$SOURCE_DIR"
  touch "$PB/backed-up"
}
pgbackrest_backup
IR_REPO_BYTES=$(du -sb "${REPO#file://}" | cut -f1)
PB_REPO_BYTES=$(du -sb "$PB/repo" | cut -f1)

cleanup() {
  recover_clean
  pg_stop "$BENCH_DIR/mnt"; mount_stop
  pg_stop "$RESTORED"; rm -rf "$RESTORED"
}
trap cleanup EXIT; trap "exit 1" INT TERM

# start_ms DIR: start + first query on DIR, in ms; stops it again.
start_ms() {
  local t0 ms
  t0=$(now_ms)
  pg_start "$1" "$PORT"; wait_query "$PORT"
  ms=$(($(now_ms) - t0))
  pg_stop "$1"
  echo "$ms"
}
# restore_then_start COMMAND...: a cold restore into $RESTORED by COMMAND, then start + first
# query; sets RESTORE_MS, RESTORE_CPU_S (the restore's CPU, user + system) and START_MS.
restore_then_start() {
  local t0 c0
  rm -rf "$RESTORED"; drop_caches
  children_cpu; c0=$CHILDREN_CPU_MS
  t0=$(now_ms)
  "$@"
  RESTORE_MS=$(($(now_ms) - t0))
  children_cpu; RESTORE_CPU_S=$(awk -v ms=$((CHILDREN_CPU_MS - c0)) 'BEGIN {printf "%.1f", ms / 1000}')
  START_MS=$(start_ms "$RESTORED")
}
baseline_restore() { IRCTL=$BASELINE_IRCTL restore_to "$RESTORED"; }
pgbackrest_restore() {
  mkdir -p "$RESTORED"; chown postgres:postgres "$RESTORED"; chmod 700 "$RESTORED"
  pgbr --pg1-path="$RESTORED" --process-max=2 --type=immediate --target-action=promote \
    --archive-mode=off restore
}

inst=(); rec=(); phys=(); irfull=(); pbfull=(); irtput=(); pbtput=(); basetput=()
ircpu=(); pbcpu=(); basecpu=()
for run in $(seq "$RUNS"); do
  inst+=($(instant_ttfq_ms "$REPO" "$ID" "$PORT"))

  rec+=($(recover_ttfq_ms))

  restore_then_start restore_to "$RESTORED"
  irfull+=($((RESTORE_MS + START_MS))); irtput+=($(mbps "$DB_BYTES" "$RESTORE_MS")); ircpu+=("$RESTORE_CPU_S")
  # The physical limit: a data directory restored as the backup left it, started cold.
  rm -rf "$RESTORED"; restore_to "$RESTORED"; drop_caches
  phys+=($(start_ms "$RESTORED"))

  restore_then_start pgbackrest_restore
  pbfull+=($((RESTORE_MS + START_MS))); pbtput+=($(mbps "$DB_BYTES" "$RESTORE_MS")); pbcpu+=("$RESTORE_CPU_S")
  if [ -n "${BASELINE_IRCTL:-}" ]; then
    restore_then_start baseline_restore; basetput+=($(mbps "$DB_BYTES" "$RESTORE_MS")); basecpu+=("$RESTORE_CPU_S")
  fi
  rm -rf "$RESTORED"
  echo "run $run: mount+start ${inst[-1]} ms, irctl recover ${rec[-1]} ms, pg_ctl start on a" \
    "restored copy ${phys[-1]} ms; irctl restore+start ${irfull[-1]} ms (${irtput[-1]} MB/s, ${ircpu[-1]} s CPU)," \
    "pgbackrest restore+start ${pbfull[-1]} ms (${pbtput[-1]} MB/s, ${pbcpu[-1]} s CPU)${BASELINE_IRCTL:+, baseline irctl restore ${basetput[-1]} MB/s (${basecpu[-1]} s CPU)} (load $(cut -d' ' -f1 /proc/loadavg))" >&2
done
mi=$(med "${inst[@]}"); mr=$(med "${rec[@]}"); mp=$(med "${phys[@]}")
mif=$(med "${irfull[@]}"); mpf=$(med "${pbfull[@]}"); mit=$(med "${irtput[@]}"); mpt=$(med "${pbtput[@]}")
echo "per run: mount+start ${inst[*]}; irctl recover ${rec[*]}; physical ${phys[*]};" \
  "irctl full ${irfull[*]}; pgbackrest full ${pbfull[*]} (ms)" >&2
label="$DATA scale $SCALE ($((DB_BYTES / 1000000)) MB; repositories: irctl $((IR_REPO_BYTES / 1000000)) MB = $(ratio "$IR_REPO_BYTES" "$DB_BYTES"), pgBackRest $((PB_REPO_BYTES / 1000000)) MB = $(ratio "$PB_REPO_BYTES" "$DB_BYTES"))"
printf '| %s: mount + start + `SELECT 1` vs `pgbackrest restore` + start | %s ms | %s ms | %s |\n' "$label" "$mi" "$mpf" "$(ratio "$mi" "$mpf")"
printf '| %s: `irctl recover` launch to first `SELECT 1` vs `pgbackrest restore` + start | %s ms | %s ms | %s |\n' "$label" "$mr" "$mpf" "$(ratio "$mr" "$mpf")"
printf '| %s: mount + start + `SELECT 1` vs `irctl backup restore` + start | %s ms | %s ms | %s |\n' "$label" "$mi" "$mif" "$(ratio "$mi" "$mif")"
printf '| %s: mount + start + `SELECT 1` vs `pg_ctl start` on a restored copy (physical limit) | %s ms | %s ms | %s |\n' "$label" "$mi" "$mp" "$(ratio "$mi" "$mp")"
printf '| %s: restore throughput, `irctl backup restore` vs `pgbackrest restore --process-max=2` | %s MB/s | %s MB/s | %s |\n' "$label" "$mit" "$mpt" "$(ratio "$mit" "$mpt")"
mic=$(med "${ircpu[@]}"); mpc=$(med "${pbcpu[@]}")
printf '| %s: restore CPU (user + system), `irctl backup restore` vs `pgbackrest restore --process-max=2` | %s s | %s s | %s |\n' "$label" "$mic" "$mpc" "$(ratio "$mic" "$mpc")"
if [ -n "${BASELINE_IRCTL:-}" ]; then
  mbt=$(med "${basetput[@]}")
  printf '| %s: restore throughput, `irctl backup restore` vs the baseline build'"'"'s | %s MB/s | %s MB/s | %s |\n' "$label" "$mit" "$mbt" "$(ratio "$mit" "$mbt")"
  mbc=$(med "${basecpu[@]}")
  printf '| %s: restore CPU, `irctl backup restore` vs the baseline build'"'"'s | %s s | %s s | %s |\n' "$label" "$mic" "$mbc" "$(ratio "$mic" "$mbc")"
fi
