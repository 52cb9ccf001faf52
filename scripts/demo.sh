#!/usr/bin/env bash
# The main job on a local default: a sample database is backed up into a repository, then
# `irctl recover` brings the backup online through a FUSE mount, builds a standby on local disk,
# switches over, and leaves the standby running as the primary. Prints each phase with its timing.
#   SCALE=10 (pgbench scale of the sample database)  IR_DEMO_DIR=/tmp/instant-recovery-demo
set -euo pipefail
cd "$(dirname "$0")/.."

SCALE=${SCALE:-10}
WORK=${IR_DEMO_DIR:-/tmp/instant-recovery-demo}
PGBIN=${IR_PG_BINDIR:-/usr/lib/postgresql/15/bin}
SRC_PORT=${SRC_PORT:-55432}
PUB_PORT=${PUB_PORT:-55433}
TARGET_PORT=${TARGET_PORT:-55434}

[ "$(id -u)" = 0 ] || { echo "run as root (FUSE mount, PostgreSQL as user postgres)" >&2; exit 1; }
scripts/setup-test-deps.sh --runtime-only
cargo build --release -q -p irctl
IRCTL=$PWD/target/release/irctl

as_pg() { runuser -u postgres -- "$@"; }
now_ms() { date +%s%3N; }
stop_pg() { [ -f "$1/postmaster.pid" ] && as_pg "$PGBIN/pg_ctl" -D "$1" -m fast -w stop >/dev/null 2>&1; true; }

cleanup() {
  set +e
  stop_pg "$WORK/source"
  if [ "${KEEP:-0}" != 1 ]; then stop_pg "$WORK/target"; fi
}
trap cleanup EXIT

# Leftovers of an earlier demo: its target, a mount, its processes.
stop_pg "$WORK/target"
stop_pg "$WORK/source"
# The published instance and the base backup run in their own sessions (see irctl recover).
pkill -f "postgres -D $WORK/work/mnt " 2>/dev/null || true
pkill -f "pg_basebackup --pgdata $WORK/target" 2>/dev/null || true
pkill -f "irctl mount .*$WORK/work/" 2>/dev/null || true
umount -l "$WORK/work/mnt" 2>/dev/null || true
rm -rf "$WORK"
mkdir -p "$WORK/sock" "$WORK/source"
chmod 755 "$WORK"
chown postgres:postgres "$WORK/sock" "$WORK/source"

echo "== sample database (pgbench scale $SCALE)"
as_pg "$PGBIN/initdb" -D "$WORK/source" -A trust -U postgres >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$WORK/source" -l "$WORK/sock/source.log" -w \
  -o "-p $SRC_PORT -k $WORK/sock -c listen_addresses=''" start >/dev/null
as_pg "$PGBIN/pgbench" -h "$WORK/sock" -p "$SRC_PORT" -i -s "$SCALE" -q postgres 2>/dev/null
SUM_SQL="select count(*) || ' rows, sum(abalance) ' || sum(abalance) from pgbench_accounts"
SRC_SUM=$(as_pg psql -h "$WORK/sock" -p "$SRC_PORT" -At -c "$SUM_SQL" postgres)
SIZE=$(as_pg psql -h "$WORK/sock" -p "$SRC_PORT" -At -c "select pg_size_pretty(pg_database_size('postgres'))" postgres)

echo "== backup ($SIZE)"
"$IRCTL" repo init --repo "file://$WORK/repo" >/dev/null
t0=$(now_ms)
ID=$("$IRCTL" backup create --repo "file://$WORK/repo" --from-pg "host=$WORK/sock port=$SRC_PORT user=postgres")
echo "backup $ID in $(( $(now_ms) - t0 )) ms"
stop_pg "$WORK/source"

echo "== irctl recover"
"$IRCTL" recover --repo "file://$WORK/repo" --backup "$ID" --workdir "$WORK/work" \
  --target-pgdata "$WORK/target" --published-port "$PUB_PORT" --target-port "$TARGET_PORT"

echo
"$IRCTL" status --workdir "$WORK/work"
TARGET_SUM=$(as_pg psql -h "$WORK/work/run" -p "$TARGET_PORT" -At -c "$SUM_SQL" postgres)
echo "source: $SRC_SUM"
echo "target: $TARGET_SUM"
[ "$SRC_SUM" = "$TARGET_SUM" ] && echo "data matches" || { echo "DATA MISMATCH"; exit 1; }
as_pg psql -h "$WORK/work/run" -p "$TARGET_PORT" -At \
  -c "select 'target is a primary: ' || not pg_is_in_recovery()" postgres
if [ "${KEEP:-0}" = 1 ]; then
  echo "the target keeps running (KEEP=1): psql -h $WORK/work/run -p $TARGET_PORT -U postgres"
fi
