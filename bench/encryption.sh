#!/usr/bin/env bash
# The cost of encryption: one database backed up into an unencrypted and an encrypted
# repository, then side by side, cold (page cache dropped, fresh mount cache): the full restore
# of the backup to local disk, and the time to first query through `irctl mount` (mount +
# PostgreSQL start + SELECT 1). The encrypted side pays the key derivation (Argon2id) of every
# irctl command too. The database is pgbench's at SCALE plus NOISE_MB of random bytes: pgbench's
# rows compress some fortyfold, which would leave the cipher little to do.
# Usage: bench/encryption.sh [SCALE] [RUNS] [NOISE_MB]
source "$(dirname "$0")/lib.sh"
SCALE=${1:-10}; RUNS=${2:-3}; NOISE_MB=${3:-300}; PORT=56550
PASSWORD=bench-password-not-secret
build

# Its own source cluster, kept between runs: the other benchmarks' have no noise table.
SOURCE_DIR=$BENCH_DIR/enc-source-$SCALE-$NOISE_MB
mkdir -p "$SOCK"; chown postgres:postgres "$SOCK" "$BENCH_DIR"
if [ ! -f "$SOURCE_DIR/PG_VERSION" ]; then
  rm -rf "$SOURCE_DIR"; mkdir -p "$SOURCE_DIR"; chown postgres:postgres "$SOURCE_DIR"
  as_pg "$PGBIN/initdb" -D "$SOURCE_DIR" -A trust -U postgres >/dev/null
  pg_start "$SOURCE_DIR" $((PORT + 1))
  as_pg "$PGBIN/pgbench" -h "$SOCK" -p $((PORT + 1)) -i -s "$SCALE" -q postgres >/dev/null 2>&1
  # 128 random bytes a row, about 170 bytes on disk with the tuple header.
  psql_q $((PORT + 1)) "create table noise as select g, decode(
      md5(random()::text) || md5(random()::text) || md5(random()::text) || md5(random()::text) ||
      md5(random()::text) || md5(random()::text) || md5(random()::text) || md5(random()::text),
      'hex') as b from generate_series(1, $NOISE_MB * 1000000 / 170) g" >/dev/null
  psql_q $((PORT + 1)) "checkpoint" >/dev/null
else
  pg_start "$SOURCE_DIR" $((PORT + 1))
fi
CONN="host=$SOCK port=$((PORT + 1)) user=postgres"

# Fresh repositories each run of the script: the ingest is measured too.
PLAIN=$BENCH_DIR/enc-bench-plain; ENC=$BENCH_DIR/enc-bench-encrypted
rm -rf "$PLAIN" "$ENC"
unset IR_REPO_PASSWORD IR_REPO_KEY_FILE
"$IRCTL" repo init --repo "file://$PLAIN" >/dev/null
IR_REPO_PASSWORD=$PASSWORD "$IRCTL" repo init --encryption --repo "file://$ENC" >/dev/null

backup() { # repo -> "ms id"
  local t0 id; t0=$(now_ms)
  id=$("$IRCTL" backup create --repo "file://$1" --from-pg "$CONN")
  echo "$(($(now_ms) - t0)) $id"
}
read -r ingest_plain ID_PLAIN < <(backup "$PLAIN")
export IR_REPO_PASSWORD=$PASSWORD
read -r ingest_enc ID_ENC < <(backup "$ENC")
unset IR_REPO_PASSWORD
pg_stop "$SOURCE_DIR"
echo "ingest: unencrypted $ingest_plain ms, encrypted $ingest_enc ms" >&2
DB_BYTES=$("$IRCTL" backup show "$ID_PLAIN" --repo "file://$PLAIN" --output json |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["total_size"])')

restore_ms() { # repo id -> ms, cold
  local t0 target=$BENCH_DIR/enc-bench-restored
  rm -rf "$target"; drop_caches
  t0=$(now_ms)
  "$IRCTL" backup restore "$2" --repo "file://$1" --target "$target" \
    --uid "$(id -u postgres)" --gid "$(id -g postgres)" >/dev/null
  echo $(($(now_ms) - t0))
  rm -rf "$target"
}
rp=(); re=(); tp=(); te=()
for run in $(seq "$RUNS"); do
  rp+=($(restore_ms "$PLAIN" "$ID_PLAIN")); tp+=($(instant_ttfq_ms "file://$PLAIN" "$ID_PLAIN" "$PORT"))
  export IR_REPO_PASSWORD=$PASSWORD
  re+=($(restore_ms "$ENC" "$ID_ENC")); te+=($(instant_ttfq_ms "file://$ENC" "$ID_ENC" "$PORT"))
  unset IR_REPO_PASSWORD
  echo "run $run: restore ${rp[-1]} / ${re[-1]} ms, first query ${tp[-1]} / ${te[-1]} ms" \
    "(unencrypted / encrypted)" >&2
done
mrp=$(med "${rp[@]}"); mre=$(med "${re[@]}"); mtp=$(med "${tp[@]}"); mte=$(med "${te[@]}")
echo "| pgbench scale $SCALE + $NOISE_MB MB random, backup of $((DB_BYTES / 1000000)) MB | unencrypted | encrypted | encrypted / unencrypted |"
echo "| --- | --- | --- | --- |"
printf '| backup create (once) | %s ms | %s ms | %s |\n' "$ingest_plain" "$ingest_enc" "$(ratio "$ingest_enc" "$ingest_plain")"
printf '| cold full restore, median of %s | %s ms | %s ms | %s |\n' "$RUNS" "$mrp" "$mre" "$(ratio "$mre" "$mrp")"
printf '| cold time to first query, median of %s | %s ms | %s ms | %s |\n' "$RUNS" "$mtp" "$mte" "$(ratio "$mte" "$mtp")"
printf '| stored bytes | %s | %s | %s |\n' "$(du -sb "$PLAIN" | cut -f1)" "$(du -sb "$ENC" | cut -f1)" \
  "$(ratio "$(du -sb "$ENC" | cut -f1)" "$(du -sb "$PLAIN" | cut -f1)")"
