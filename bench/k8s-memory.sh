#!/usr/bin/env bash
# Peak RSS of the agent (`ir-agent`) while it serves a published backup on the real node
# (e2e/examples/k8s_bench.rs, subcommand memory), as bench/memory.sh measures `irctl mount`: an
# InstantRecovery in mode Publish (nothing is copied), then per phase `pgbench -S` (SECS s,
# 4 clients, to the published Pod) and a sequential scan of pgbench_accounts. Cold: page cache
# dropped before the apply, the agent's peak reset (/proc/PID/clear_refs) once the Pod answers;
# warm: page cache dropped again and the peak reset, the agent's caches kept. The data is
# realistic unless DATA=pgbench, with a password on role `postgres` (the Pods accept TCP clients
# by password only), in its own repository $IR_BENCH_DIR/repo-k8s-SCALE[-realistic].
# IR_MEMORY_CACHE_MIB sets the agent's memory cache per mount (`ir-agent --memory-cache-mib`).
# Usage: bench/k8s-memory.sh [SCALE] [RUNS]     (SECS=30, IR_MEMORY_CACHE_MIB=256)
DATA=${DATA:-realistic}
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
SCALE=${1:-100}; RUNS=${2:-1}; PORT=57900; SECS=${SECS:-30}
machine_info
k8s_backup "$SCALE" $((PORT + 1))
"$BENCH" memory --repo "$REPO" --backup "$ID" --runs "$RUNS" --seconds "$SECS" \
  --label "$DATA scale $SCALE ($((DB_BYTES / 1000000)) MB)"
