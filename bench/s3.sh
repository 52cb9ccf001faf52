#!/usr/bin/env bash
# Instant recovery from S3 against the same from file://, on realistic data (DATA=pgbench for
# pgbench's own). The S3 server is the MinIO the tests use (built by scripts/setup-test-deps.sh),
# reached through bench/delay-proxy.py, which adds a round-trip time: 0 ms and $RTT_MS (default
# 20, a bucket in another zone). Every run measures each side in turn, with a fresh IRCache (and
# chunk cache) and the page cache dropped:
#   - time to first query: `irctl mount` + `pg_ctl start` + first `SELECT 1`; for S3 at $RTT_MS
#     also `irctl recover`'s launch to its published instance's first `SELECT 1`;
#   - cold sequential read of the largest relation segment (`dd bs=1M`), with the mount's CPU
#     time per MiB read and its peak RSS; local disk (the source's copy) as the baseline;
#   - `pgbench -S` cold (the first $COLD_SECS s after start, 4 clients) and warm (every file
#     read once through the mount, then $WARM_SECS s);
#   - sync: `pg_basebackup -X stream` from PostgreSQL on a cold mount, MB/s.
# Usage: bench/s3.sh [SCALE] [RUNS]     (RTT_MS=20 COLD_SECS=60 WARM_SECS=20 CLIENTS=4)
DATA=${DATA:-realistic}
# shellcheck source=bench/recover-lib.sh
source "$(dirname "$0")/recover-lib.sh"
SCALE=${1:-100}; RUNS=${2:-3}; PORT=57500
PUB=$((PORT + 10)); TGT=$((PORT + 11)); S3_PORT=$((PORT + 20)); PROXY_PORT=$((PORT + 21))
RTT_MS=${RTT_MS:-20}; COLD_SECS=${COLD_SECS:-60}; WARM_SECS=${WARM_SECS:-20}
# shellcheck disable=SC2012 # the newest build of the pinned MinIO
MINIO=${IR_S3_SERVER_BIN:-$(ls -t "$HOME"/.cache/instant-recovery/bin/minio-* 2>/dev/null | head -n 1)}
[ -x "$MINIO" ] || { echo "no MinIO build: run scripts/setup-test-deps.sh (or set IR_S3_SERVER_BIN)" >&2; exit 1; }
machine_info

prepare_backup "$SCALE" $((PORT + 1))
FILE_REPO=$REPO
REL=$(cd "$SOURCE_DIR" && find base -type f -size +1M -printf '%s %p\n' | sort -rn | head -n 1 | cut -d' ' -f2)
REL_BYTES=$(stat -c %s "$SOURCE_DIR/$REL")
S3_DATA=$BENCH_DIR/s3-data
RTT_FILE=$BENCH_DIR/s3-rtt
MINIO_PID=; PROXY_PID=

cleanup() {
  recover_clean
  pg_stop "$BENCH_DIR/mnt"; mount_stop
  rm -rf "$BENCH_DIR/basebackup"
  [ -z "$PROXY_PID" ] || kill "$PROXY_PID" 2>/dev/null || true
  [ -z "$MINIO_PID" ] || kill "$MINIO_PID" 2>/dev/null || true
}
trap cleanup EXIT; trap "exit 1" INT TERM

export AWS_ACCESS_KEY_ID=irbench AWS_SECRET_ACCESS_KEY=irbench-secret AWS_REGION=us-east-1
export AWS_ENDPOINT_URL=http://127.0.0.1:$PROXY_PORT AWS_ALLOW_HTTP=true
mkdir -p "$S3_DATA/bench"
MINIO_ROOT_USER=$AWS_ACCESS_KEY_ID MINIO_ROOT_PASSWORD=$AWS_SECRET_ACCESS_KEY MINIO_BROWSER=off \
  MINIO_UPDATE=off "$MINIO" server --quiet --address "127.0.0.1:$S3_PORT" "$S3_DATA" \
  > "$BENCH_DIR/minio.log" 2>&1 &
MINIO_PID=$!
echo 0 > "$RTT_FILE"
DELAY_PROXY_RTT_FILE=$RTT_FILE python3 "$ROOT/bench/delay-proxy.py" "$PROXY_PORT" \
  "127.0.0.1:$S3_PORT" 0 > "$BENCH_DIR/proxy.log" 2>&1 &
PROXY_PID=$!
until curl -sf "http://127.0.0.1:$S3_PORT/minio/health/ready" >/dev/null; do
  kill -0 "$MINIO_PID" 2>/dev/null || { cat "$BENCH_DIR/minio.log" >&2; exit 1; }
  sleep 0.1
done
set_rtt() { echo "$1" > "$RTT_FILE"; sleep 1.5; } # the proxy reads it once a second

# The same backup in the bucket: ingested once from the source (the ids differ, the data not).
S3_REPO=s3://bench/$(data_name "$SCALE")
if ! "$IRCTL" backup list --repo "$S3_REPO" --output json 2>/dev/null | grep -q '"id"'; then
  "$IRCTL" repo init --repo "$S3_REPO" >/dev/null
  pg_start "$SOURCE_DIR" $((PORT + 1))
  "$IRCTL" backup create --repo "$S3_REPO" --from-pg "host=$SOCK port=$((PORT + 1)) user=postgres" >/dev/null
  pg_stop "$SOURCE_DIR"
fi
S3_ID=$(latest_backup_id "$S3_REPO")
FILE_ID=$ID

# use SIDE: REPO, ID and the proxy's RTT for file, s3-0 or s3-rtt.
use() {
  case $1 in
    file) REPO=$FILE_REPO; ID=$FILE_ID ;;
    s3-0) REPO=$S3_REPO; ID=$S3_ID; set_rtt 0 ;;
    s3-rtt) REPO=$S3_REPO; ID=$S3_ID; set_rtt "$RTT_MS" ;;
  esac
}
fresh_mount() {
  rm -rf "$BENCH_DIR/cache"; drop_caches
  mount_start "$REPO" "$ID" "$BENCH_DIR/cache" "$BENCH_DIR/mnt"
}
pgbench_tps() { # SECONDS
  as_pg "$PGBIN/pgbench" -h "$SOCK" -p "$PORT" -U postgres -S -c "${CLIENTS:-4}" -j 2 -T "$1" postgres 2>/dev/null |
    sed -n 's/^tps = \([0-9.]*\).*/\1/p' | cut -d. -f1
}

declare -A ttfq seq cpu rss cold warm sync
rec_rtt=(); local_seq=()
SIDES=(file s3-0 s3-rtt)
for run in $(seq "$RUNS"); do
  for side in "${SIDES[@]}"; do
    use "$side"
    # time to first query
    ttfq[$side]+="$(instant_ttfq_ms "$REPO" "$ID" "$PORT") "

    # cold sequential read, the mount's CPU and peak RSS
    fresh_mount
    c0=$(cpu_ticks "$MOUNT_PID"); t0=$(now_ms)
    dd if="$BENCH_DIR/mnt/$REL" of=/dev/null bs=1M status=none
    ms=$(($(now_ms) - t0)); c1=$(cpu_ticks "$MOUNT_PID")
    seq[$side]+="$(mbps "$REL_BYTES" "$ms") "
    cpu[$side]+="$(cpu_ms_per_mib $((c1 - c0)) "$REL_BYTES") "
    mount_stop

    # pgbench -S cold, then warm; peak RSS over both
    fresh_mount
    pg_start "$BENCH_DIR/mnt" "$PORT"; wait_query "$PORT"
    cold[$side]+="$(pgbench_tps "$COLD_SECS") "
    find "$BENCH_DIR/mnt/base" -type f -exec cat {} + > /dev/null
    warm[$side]+="$(pgbench_tps "$WARM_SECS") "
    rss[$side]+="$(peak_rss_mib "$MOUNT_PID") "
    pg_stop "$BENCH_DIR/mnt"; mount_stop

    # sync: a base backup from PostgreSQL on a cold mount
    fresh_mount
    pg_start "$BENCH_DIR/mnt" "$PORT"; wait_query "$PORT"
    rm -rf "$BENCH_DIR/basebackup"
    t0=$(now_ms)
    as_pg "$PGBIN/pg_basebackup" -h "$SOCK" -p "$PORT" -U postgres -D "$BENCH_DIR/basebackup" -X stream -c fast
    ms=$(($(now_ms) - t0))
    sync[$side]+="$(mbps "$(du -sb "$BENCH_DIR/basebackup" | cut -f1)" "$ms") "
    rm -rf "$BENCH_DIR/basebackup"
    pg_stop "$BENCH_DIR/mnt"; mount_stop
    echo "run $run $side: ttfq ${ttfq[$side]}ms; seq ${seq[$side]}MB/s; cpu ${cpu[$side]}ms/MiB;" \
      "pgbench -S cold ${cold[$side]}warm ${warm[$side]}tps; peak RSS ${rss[$side]}MiB; sync ${sync[$side]}MB/s" >&2
  done

  # irctl recover from S3 at $RTT_MS
  use s3-rtt
  rec_rtt+=($(recover_ttfq_ms))

  drop_caches; t0=$(now_ms)
  dd if="$SOURCE_DIR/$REL" of=/dev/null bs=1M status=none
  local_seq+=($(mbps "$REL_BYTES" $(($(now_ms) - t0))))
  echo "run $run: irctl recover from S3 at $RTT_MS ms ${rec_rtt[-1]} ms; local disk ${local_seq[-1]} MB/s (load $(cut -d' ' -f1 /proc/loadavg))" >&2
done

DB_BYTES=$(du -sb "$SOURCE_DIR" | cut -f1)
label="$DATA scale $SCALE ($((DB_BYTES / 1000000)) MB)"
f=file; z=s3-0; r=s3-rtt
echo "per run: local disk ${local_seq[*]} MB/s; irctl recover at $RTT_MS ms ${rec_rtt[*]} ms" >&2
for side in "${SIDES[@]}"; do
  echo "per run $side: ttfq ${ttfq[$side]}; seq ${seq[$side]}; cpu ${cpu[$side]}; cold ${cold[$side]}; warm ${warm[$side]}; rss ${rss[$side]}; sync ${sync[$side]}" >&2
done
row() { # what ours baseline unit
  printf '| %s, %s | %s %s | %s %s | %s |\n' "$label" "$1" "$2" "$4" "$3" "$4" "$(ratio "$2" "$3")"
}
row "time to first query (mount + start + \`SELECT 1\`), S3 at 0 ms vs file://" "$(med "${ttfq[$z]}")" "$(med "${ttfq[$f]}")" ms
row "time to first query, S3 at $RTT_MS ms RTT vs file://" "$(med "${ttfq[$r]}")" "$(med "${ttfq[$f]}")" ms
row "\`irctl recover\` launch to first \`SELECT 1\`, S3 at $RTT_MS ms RTT vs mount + start from file://" "$(med "${rec_rtt[@]}")" "$(med "${ttfq[$f]}")" ms
row "cold sequential read of a $((REL_BYTES / 1000000)) MB segment, file:// vs local disk" "$(med "${seq[$f]}")" "$(med "${local_seq[@]}")" MB/s
row "cold sequential read, S3 at 0 ms vs local disk" "$(med "${seq[$z]}")" "$(med "${local_seq[@]}")" MB/s
row "cold sequential read, S3 at $RTT_MS ms RTT vs local disk" "$(med "${seq[$r]}")" "$(med "${local_seq[@]}")" MB/s
row "mount's CPU per MiB of cold sequential read, S3 at $RTT_MS ms vs file://" "$(med "${cpu[$r]}")" "$(med "${cpu[$f]}")" ms
row "\`pgbench -S\` cold (first $COLD_SECS s), S3 at $RTT_MS ms vs file://" "$(med "${cold[$r]}")" "$(med "${cold[$f]}")" tps
row "\`pgbench -S\` cold, S3 at 0 ms vs file://" "$(med "${cold[$z]}")" "$(med "${cold[$f]}")" tps
row "\`pgbench -S\` warm ($WARM_SECS s), S3 at $RTT_MS ms vs file://" "$(med "${warm[$r]}")" "$(med "${warm[$f]}")" tps
row "sync (\`pg_basebackup\` from a cold mount), S3 at $RTT_MS ms vs file://" "$(med "${sync[$r]}")" "$(med "${sync[$f]}")" MB/s
row "sync, S3 at 0 ms vs file://" "$(med "${sync[$z]}")" "$(med "${sync[$f]}")" MB/s
row "peak RSS of \`irctl mount\` (cold read, pgbench cold + warm), S3 at $RTT_MS ms vs file://" "$(med "${rss[$r]}")" "$(med "${rss[$f]}")" MiB
