#!/usr/bin/env bash
# The main job on a local default: a sample database is backed up into a repository, the backup is
# mounted, PostgreSQL starts on the mount and answers its first query. Prints each step's timing.
#   SCALE=10 (pgbench scale of the sample database)  IR_DEMO_DIR=/tmp/instant-recovery-demo
set -euo pipefail
cd "$(dirname "$0")/.."

SCALE=${SCALE:-10}
WORK=${IR_DEMO_DIR:-/tmp/instant-recovery-demo}
PGBIN=${IR_PG_BINDIR:-/usr/lib/postgresql/15/bin}
SRC_PORT=${SRC_PORT:-55432}
MNT_PORT=${MNT_PORT:-55433}

[ "$(id -u)" = 0 ] || { echo "run as root (FUSE mount, PostgreSQL as user postgres)" >&2; exit 1; }
scripts/setup-test-deps.sh --runtime-only
cargo build --release -q -p irctl
IRCTL=$PWD/target/release/irctl

as_pg() { runuser -u postgres -- "$@"; }
now_ms() { date +%s%3N; }
step() { printf '%-44s %8s ms\n' "$1" "$2"; }

cleanup() {
  set +e
  [ -d "$WORK/mnt/base" ] && as_pg "$PGBIN/pg_ctl" -D "$WORK/mnt" -m fast stop >/dev/null 2>&1
  [ -n "${MOUNT_PID:-}" ] && kill "$MOUNT_PID" 2>/dev/null && wait "$MOUNT_PID" 2>/dev/null
  [ -f "$WORK/source/PG_VERSION" ] && as_pg "$PGBIN/pg_ctl" -D "$WORK/source" -m fast stop >/dev/null 2>&1
}
trap cleanup EXIT

if mountpoint -q "$WORK/mnt" 2>/dev/null || ! stat "$WORK/mnt" >/dev/null 2>&1; then
  umount -l "$WORK/mnt" 2>/dev/null || true
fi
rm -rf "$WORK"
mkdir -p "$WORK"/{sock,mnt}
chmod 755 "$WORK"
chown postgres:postgres "$WORK/sock" "$WORK/mnt"
mkdir -p "$WORK/source" && chown postgres:postgres "$WORK/source"

echo "== sample database (pgbench scale $SCALE)"
as_pg "$PGBIN/initdb" -D "$WORK/source" -A trust -U postgres >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$WORK/source" -l "$WORK/sock/source.log" -w \
  -o "-p $SRC_PORT -k $WORK/sock -c listen_addresses=''" start >/dev/null
as_pg "$PGBIN/pgbench" -h "$WORK/sock" -p "$SRC_PORT" -i -s "$SCALE" -q postgres 2>/dev/null
SRC_SUM=$(as_pg psql -h "$WORK/sock" -p "$SRC_PORT" -At -c "select count(*), sum(abalance) from pgbench_accounts" postgres)
SIZE=$(as_pg psql -h "$WORK/sock" -p "$SRC_PORT" -At -c "select pg_size_pretty(pg_database_size('postgres'))" postgres)

echo "== backup"
"$IRCTL" repo init --repo "file://$WORK/repo" >/dev/null
t0=$(now_ms)
ID=$("$IRCTL" backup create --repo "file://$WORK/repo" --from-pg "host=$WORK/sock port=$SRC_PORT user=postgres")
t_backup=$(( $(now_ms) - t0 ))
as_pg "$PGBIN/pg_ctl" -D "$WORK/source" -m fast stop >/dev/null
"$IRCTL" backup show "$ID" --repo "file://$WORK/repo" | head -n 12

echo "== instant recovery from the backup"
: > "$WORK/mount.log"
t0=$(now_ms)
"$IRCTL" mount --repo "file://$WORK/repo" --backup "$ID" --cache "$WORK/cache" \
  --uid "$(id -u postgres)" --gid "$(id -g postgres)" "$WORK/mnt" > "$WORK/mount.log" 2>&1 &
MOUNT_PID=$!
until grep -q '^mounted' "$WORK/mount.log"; do
  kill -0 "$MOUNT_PID" 2>/dev/null || { cat "$WORK/mount.log"; exit 1; }
  sleep 0.02
done
t_mount=$(( $(now_ms) - t0 ))
as_pg "$PGBIN/pg_ctl" -D "$WORK/mnt" -l "$WORK/sock/mounted.log" \
  -o "-p $MNT_PORT -k $WORK/sock -c listen_addresses=''" start >/dev/null
until as_pg psql -h "$WORK/sock" -p "$MNT_PORT" -At -c "select 1" postgres >/dev/null 2>&1; do sleep 0.02; done
t_first=$(( $(now_ms) - t0 ))
MNT_SUM=$(as_pg psql -h "$WORK/sock" -p "$MNT_PORT" -At -c "select count(*), sum(abalance) from pgbench_accounts" postgres)
as_pg "$PGBIN/pgbench" -h "$WORK/sock" -p "$MNT_PORT" -T 5 -c 2 postgres 2>/dev/null | grep -E '^tps' || true

echo
step "database size" "$SIZE" | sed 's/ ms$//'
step "backup create --from-pg" "$t_backup"
step "mount ready" "$t_mount"
step "mount + PostgreSQL start + first query" "$t_first"
echo "source   count, sum(abalance): $SRC_SUM"
echo "mounted  count, sum(abalance): $MNT_SUM (before the pgbench writes)"
[ "$SRC_SUM" = "$MNT_SUM" ] && echo "data matches" || { echo "DATA MISMATCH"; exit 1; }
echo "cache used: $(du -sh "$WORK/cache" | cut -f1)"
