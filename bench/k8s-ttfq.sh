#!/usr/bin/env bash
# Apply to first query on Kubernetes, against the local `irctl recover` of the same backup, in one
# run, alternating (e2e/examples/k8s_bench.rs, subcommand ttfq). The cluster is the test harness
# (ir_e2e::installation): a real node (scripts/node/up.sh: etcd, kube-apiserver, the
# controllers, the scheduler, containerd, the kubelet and kube-proxy), the agent and the
# operator as processes bound to the chart's RBAC rules, PostgreSQL in Pods of the local
# `postgres:15` image. Per run, cold page cache before each side:
#  - local: launch of `irctl recover` (automatic switchover) to its first `select 1` on the
#    published port, and the time to first query it reports; it then runs to Completed, and its
#    promoted target is stopped and removed;
#  - cluster: server-side apply of an InstantRecovery (switchover Manual, so it stays put) to the
#    first `SELECT 1` through its Service's ClusterIP (kube-proxy's rules to the published Pod),
#    and `status.timings.timeToFirstQueryMs`; then
#    the InstantRecovery is deleted and the run waits until it is gone.
# Both try their `SELECT 1` every 10 ms. The backup is the scale-SCALE pgbench source of lib.sh
# with a password on role `postgres` (the Pods accept TCP clients by password only; the password
# is set on the source cluster once), in its own repository $IR_BENCH_DIR/repo-k8s-SCALE[-realistic].
# Usage: bench/k8s-ttfq.sh [SCALE] [RUNS]
# shellcheck source=bench/recover-lib.sh
source "$(dirname "$0")/recover-lib.sh"
SCALE=${1:-50}; RUNS=${2:-3}; PORT=58000
k8s_backup "$SCALE" $((PORT + 1))

recover_clean
recover_dir
trap recover_clean EXIT; trap "exit 1" INT TERM
"$BENCH" ttfq --repo "$REPO" --backup "$ID" --runs "$RUNS" --workdir "$RW" --target-pgdata "$RT" \
  --published-port $((PORT + 10)) --target-port $((PORT + 11)) \
  --label "scale $SCALE ($((DB_BYTES / 1000000)) MB)"
