# Shared helpers of the benchmark scripts (sourced). Benchmarks run as root: FUSE mounts,
# PostgreSQL as user postgres, and dropping the page cache for cold runs.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PGBIN=${IR_PG_BINDIR:-/usr/lib/postgresql/15/bin}
BENCH_DIR=${IR_BENCH_DIR:-/var/tmp/ir-bench}
# IRCTL: another irctl build to measure (a release build of this checkout by default).
IRCTL=${IRCTL:-$ROOT/target/release/irctl}
SOCK=$BENCH_DIR/sock

[ "$(id -u)" = 0 ] || { echo "benchmarks run as root" >&2; exit 1; }
for tool in python3 pgrep; do
  command -v "$tool" >/dev/null || { echo "benchmarks need $tool" >&2; exit 1; }
done

build() { (cd "$ROOT" && cargo build --release -q -p irctl); }
as_pg() { runuser -u postgres -- "$@"; }
now_ms() { date +%s%3N; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a/b}'; }

pg_start() { # datadir port
  as_pg "$PGBIN/pg_ctl" -D "$1" -l "$1.log" -w -t 600 \
    -o "-p $2 -k $SOCK -c listen_addresses='' ${PG_EXTRA_OPTS:-}" start >/dev/null
}
pg_stop() { as_pg "$PGBIN/pg_ctl" -D "$1" -m fast -w stop >/dev/null 2>&1 || true; }
psql_q() { as_pg psql -h "$SOCK" -p "$1" -At -c "$2" postgres; }
wait_query() { until psql_q "$1" "select 1" >/dev/null 2>&1; do sleep 0.01; done; }

mount_start() { # repo id cache mountpoint -> sets MOUNT_PID
  mkdir -p "$4"; chown postgres:postgres "$4"
  : > "$BENCH_DIR/mount.log"
  "$IRCTL" mount --repo "$1" --backup "$2" --cache "$3" \
    --uid "$(id -u postgres)" --gid "$(id -g postgres)" "$4" > "$BENCH_DIR/mount.log" 2>&1 &
  MOUNT_PID=$!
  until grep -q '^mounted' "$BENCH_DIR/mount.log"; do
    kill -0 "$MOUNT_PID" 2>/dev/null || { cat "$BENCH_DIR/mount.log" >&2; return 1; }
    sleep 0.01
  done
}
mount_stop() { kill "$MOUNT_PID" 2>/dev/null || true; wait "$MOUNT_PID" 2>/dev/null || true; }

# A source cluster at pgbench scale $1 on port $2 in $BENCH_DIR/source-$1, kept between runs.
source_cluster() {
  local scale=$1 port=$2 dir=$BENCH_DIR/source-$1
  mkdir -p "$SOCK"; chown postgres:postgres "$SOCK" "$BENCH_DIR"
  if [ ! -f "$dir/PG_VERSION" ]; then
    rm -rf "$dir"; mkdir -p "$dir"; chown postgres:postgres "$dir"
    as_pg "$PGBIN/initdb" -D "$dir" -A trust -U postgres >/dev/null
    pg_start "$dir" "$port"
    as_pg "$PGBIN/pgbench" -h "$SOCK" -p "$port" -i -s "$scale" -q postgres >/dev/null 2>&1
    psql_q "$port" "checkpoint" >/dev/null
  else
    pg_start "$dir" "$port"
  fi
  SOURCE_DIR=$dir
}

# The repository holding one backup of the scale-$1 source; prints the backup id.
source_backup() {
  local scale=$1 port=$2 repo=$BENCH_DIR/repo-$1
  if [ ! -f "$repo/ir-repo.json" ]; then
    "$IRCTL" repo init --repo "file://$repo" >/dev/null
    "$IRCTL" backup create --repo "file://$repo" --from-pg "host=$SOCK port=$port user=postgres" >/dev/null
  fi
  "$IRCTL" backup list --repo "file://$repo" --output json | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["id"])'
}

# irctl built, and the scale-$1 source cluster (port $2) with its backup, the cluster stopped.
# Sets SOURCE_DIR, ID and REPO.
prepare_backup() {
  build
  source_cluster "$1" "$2"
  ID=$(source_backup "$1" "$2")
  pg_stop "$SOURCE_DIR"
  REPO=file://$BENCH_DIR/repo-$1
}

# The backup restored in full into directory $1, owned by postgres.
restore_to() {
  "$IRCTL" backup restore "$ID" --repo "$REPO" --target "$1" \
    --uid "$(id -u postgres)" --gid "$(id -g postgres)" >/dev/null
}

# The classic recovery, cold: full restore into $1, start on port $2, first query. Prints its ms;
# leaves nothing behind.
full_restore_ms() {
  local t0 ms
  rm -rf "$1"; drop_caches
  t0=$(now_ms)
  restore_to "$1"
  pg_start "$1" "$2"; wait_query "$2"
  ms=$(($(now_ms) - t0))
  pg_stop "$1"; rm -rf "$1"
  echo "$ms"
}
