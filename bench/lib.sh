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
# Every script describes the disk under it first, on a fresh machine too.
mkdir -p "$BENCH_DIR"
for tool in python3 pgrep; do
  command -v "$tool" >/dev/null || { echo "benchmarks need $tool" >&2; exit 1; }
done

# need COMMAND PACKAGE: stops the script unless COMMAND is installed (Debian's PACKAGE has it).
need() {
  command -v "$1" >/dev/null || { echo "bench/$(basename "$0") needs $1 (apt-get install $2)" >&2; exit 1; }
}
build() { (cd "$ROOT" && cargo build --release -q -p irctl); }
as_pg() { runuser -u postgres -- "$@"; }
now_ms() { date +%s%3N; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
# shellcheck disable=SC2048,SC2086 # med VALUE...: the median of the words given, split on purpose
med() { printf '%s\n' $* | median; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a/b}'; }
mbps() { awk -v b="$1" -v ms="$2" 'BEGIN {printf "%.0f", b / 1e6 / (ms / 1000)}'; } # BYTES MS
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # utime + stime of process $1
# cpu_ms_per_mib TICKS BYTES: CPU milliseconds per MiB of BYTES, from clock ticks.
cpu_ms_per_mib() {
  awk -v t="$1" -v hz="$(getconf CLK_TCK)" -v b="$2" 'BEGIN {printf "%.2f", t / hz * 1000 / (b / 1048576)}'
}
# children_cpu: sets CHILDREN_CPU_MS to the CPU time (user + system) of the children this shell
# has waited for so far, in ms (`times`, run in this shell: a subshell's would start at zero).
children_cpu() {
  times > "$BENCH_DIR/times"
  CHILDREN_CPU_MS=$(awk 'NR == 2 {
    for (i = 1; i <= NF; i++) { split($i, p, /[ms]/); ms += (p[1] * 60 + p[2]) * 1000 }
    printf "%.0f", ms }' "$BENCH_DIR/times")
}
peak_rss_mib() { awk '/VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; } # of process $1
# latest_backup_id REPO_URL: the id of the repository's newest backup.
latest_backup_id() {
  "$IRCTL" backup list --repo "$1" --output json | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["id"])'
}

# machine_info: the machine a run measured, on stderr: CPU, memory, the disk under
# $BENCH_DIR, the load average, and what else used the CPU.
machine_info() {
  local dev
  dev=$(df --output=source "$BENCH_DIR" 2>/dev/null | tail -n 1)
  {
    echo "machine: $(nproc) cores ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1))," \
      "$(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)," \
      "disk $dev ($(df -h --output=fstype,size,avail "$BENCH_DIR" | tail -n 1 | xargs))," \
      "kernel $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "busiest processes: $(ps -eo pcpu=,comm= --sort=-pcpu | head -n 3 | xargs)"
  } >&2
}

pg_start() { # datadir port
  as_pg "$PGBIN/pg_ctl" -D "$1" -l "$1.log" -w -t 600 \
    -o "-p $2 -k $SOCK -c listen_addresses='' ${PG_EXTRA_OPTS:-}" start >/dev/null
}
pg_stop() { as_pg "$PGBIN/pg_ctl" -D "$1" -m fast -w stop >/dev/null 2>&1 || true; }
psql_q() { as_pg psql -h "$SOCK" -p "$1" -At -c "$2" postgres; }
wait_query() { until psql_q "$1" "select 1" >/dev/null 2>&1; do sleep 0.01; done; }

mount_start() { # repo id cache mountpoint [irctl mount option...] -> sets MOUNT_PID
  mkdir -p "$4"; chown postgres:postgres "$4"
  : > "$BENCH_DIR/mount.log"
  "$IRCTL" mount --repo "$1" --backup "$2" --cache "$3" \
    --uid "$(id -u postgres)" --gid "$(id -g postgres)" "${@:5}" "$4" > "$BENCH_DIR/mount.log" 2>&1 &
  MOUNT_PID=$!
  until grep -q '^mounted' "$BENCH_DIR/mount.log"; do
    kill -0 "$MOUNT_PID" 2>/dev/null || { cat "$BENCH_DIR/mount.log" >&2; return 1; }
    sleep 0.01
  done
}
MOUNT_PID= # the running `irctl mount` of mount_start, if any
mount_stop() {
  [ -n "$MOUNT_PID" ] || return 0
  kill "$MOUNT_PID" 2>/dev/null || true; wait "$MOUNT_PID" 2>/dev/null || true
  MOUNT_PID=
}

# instant_ttfq_ms REPO ID PORT: instant recovery from cold (fresh IRCache, page cache dropped):
# `irctl mount`, `pg_ctl start` on PORT, first `SELECT 1`. Prints its ms; stops both again.
instant_ttfq_ms() {
  local t0 ms
  rm -rf "$BENCH_DIR/cache"; drop_caches
  t0=$(now_ms)
  mount_start "$1" "$2" "$BENCH_DIR/cache" "$BENCH_DIR/mnt"
  pg_start "$BENCH_DIR/mnt" "$3"; wait_query "$3"
  ms=$(($(now_ms) - t0))
  pg_stop "$BENCH_DIR/mnt"; mount_stop
  echo "$ms"
}

# DATA picks the source data: `pgbench` (pgbench's own, blank filler: its repository is about
# 1/38 of the data directory) or `realistic` (the same schema and size with a filler of random hex
# text: the repository is 0.3-0.6 of the data directory, as with real data).
DATA=${DATA:-pgbench}
case $DATA in pgbench | realistic) ;; *) echo "DATA must be pgbench or realistic, not $DATA" >&2; exit 1 ;; esac
# data_name NAME: NAME for pgbench data (the paths earlier runs made), NAME-realistic otherwise.
data_name() { if [ "$DATA" = pgbench ]; then echo "$1"; else echo "$1-$DATA"; fi; }

# The realistic data set at scale $2 in the running cluster on port $1: pgbench's tables, each
# account's filler 84 random hex characters. Written with wal_level=minimal (the caller's start
# options) in the transaction that truncates the tables, so it costs no WAL, as pgbench's own
# server-side generation does.
generate_realistic() {
  local port=$1 scale=$2
  as_pg "$PGBIN/pgbench" -h "$SOCK" -p "$port" -i -I dt -s "$scale" postgres >/dev/null 2>&1
  as_pg psql -h "$SOCK" -p "$port" -q -v ON_ERROR_STOP=1 postgres >/dev/null <<SQL
begin;
truncate pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history;
insert into pgbench_branches (bid, bbalance) select b, 0 from generate_series(1, $scale) b;
insert into pgbench_tellers (tid, bid, tbalance)
  select t, (t - 1) / 10 + 1, 0 from generate_series(1, $scale * 10) t;
insert into pgbench_accounts (aid, bid, abalance, filler)
  select a, (a - 1) / 100000 + 1, 0,
         md5(random()::text) || md5(random()::text) || left(md5(random()::text), 20)
  from generate_series(1, $scale * 100000) a;
commit;
SQL
  as_pg "$PGBIN/pgbench" -h "$SOCK" -p "$port" -i -I vp -s "$scale" postgres >/dev/null 2>&1
}

# A source cluster of DATA at scale $1 on port $2 in $BENCH_DIR/source-$1[-realistic], kept
# between runs.
source_cluster() {
  local scale=$1 port=$2 dir
  dir=$BENCH_DIR/source-$(data_name "$1")
  mkdir -p "$SOCK"; chown postgres:postgres "$SOCK" "$BENCH_DIR"
  if [ ! -f "$dir/PG_VERSION" ]; then
    rm -rf "$dir"; mkdir -p "$dir"; chown postgres:postgres "$dir"
    as_pg "$PGBIN/initdb" -D "$dir" -A trust -U postgres >/dev/null
    if [ "$DATA" = realistic ]; then
      PG_EXTRA_OPTS="-c wal_level=minimal -c max_wal_senders=0 -c max_wal_size=4GB" \
        pg_start "$dir" "$port"
      generate_realistic "$port" "$scale"
      pg_stop "$dir"
      pg_start "$dir" "$port"
    else
      pg_start "$dir" "$port"
      as_pg "$PGBIN/pgbench" -h "$SOCK" -p "$port" -i -s "$scale" -q postgres >/dev/null 2>&1
    fi
    psql_q "$port" "checkpoint" >/dev/null
  else
    pg_start "$dir" "$port"
  fi
  SOURCE_DIR=$dir
}

# The repository holding one backup of the scale-$1 source; prints the backup id.
source_backup() {
  local scale=$1 port=$2 repo
  repo=$BENCH_DIR/repo-$(data_name "$1")
  if [ ! -f "$repo/ir-repo.json" ]; then
    "$IRCTL" repo init --repo "file://$repo" >/dev/null
    "$IRCTL" backup create --repo "file://$repo" --from-pg "host=$SOCK port=$port user=postgres" >/dev/null
  fi
  latest_backup_id "file://$repo"
}

# irctl built, and the scale-$1 source cluster (port $2) with its backup, the cluster stopped.
# Sets SOURCE_DIR, ID and REPO.
prepare_backup() {
  build
  source_cluster "$1" "$2"
  ID=$(source_backup "$1" "$2")
  pg_stop "$SOURCE_DIR"
  REPO=file://$BENCH_DIR/repo-$(data_name "$1")
}

# The Kubernetes benchmarks' backup: the operator, the agent, irctl and e2e/examples/k8s_bench
# built ($BENCH), the scale-$1 source (port $2) with a password on role `postgres` (the Pods accept
# TCP clients by password only), backed up into its own repository; sets ID, REPO and DB_BYTES
# and leaves the source stopped.
k8s_backup() {
  BENCH=$ROOT/target/release/examples/k8s_bench
  (cd "$ROOT" && cargo build --release -q --workspace --bins && cargo build --release -q -p ir-e2e --example k8s_bench)
  source_cluster "$1" "$2"
  psql_q "$2" "ALTER ROLE postgres PASSWORD '$("$BENCH" password)'" >/dev/null
  # source_backup's first argument only names the repository: repo-k8s-SCALE[-realistic].
  ID=$(source_backup "k8s-$1" "$2")
  REPO=file://$BENCH_DIR/repo-$(data_name "k8s-$1")
  pg_stop "$SOURCE_DIR"
  DB_BYTES=$(du -sb "$SOURCE_DIR" | cut -f1)
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
