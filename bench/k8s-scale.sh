#!/usr/bin/env bash
# The operator with many InstantRecovery objects (e2e/examples/k8s_bench.rs, subcommand scale),
# on the test harness (ir_e2e::installation: a real node with its control plane, the agent and
# the operator as a release build, bound to the chart's RBAC rules):
#  - memory: the operator's VmRSS (/proc/<pid>/status) idle with no InstantRecovery, and 10 s
#    after OBJECTS of them have settled;
#  - reconcile latency: from sending the create of an object to the first status a watch sees,
#    for one object alone (5 times, one after the other) and for OBJECTS created at once
#    (p50, p99, max);
#  - steady state: from sending a spec change (switchover.maxLagBytes) to the watch seeing
#    status.observedGeneration catch up, for one object alone and for all OBJECTS at once.
# The objects are cheap but real: their repositoryRef names a BackupRepository that does not
# exist, so each goes through validation to Waiting (reason RepositoryNotFound) and stays there
# (the next retry is 5 minutes away). Everything is deleted at the end.
# Usage: bench/k8s-scale.sh [OBJECTS]
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
OBJECTS=${1:-200}
(cd "$ROOT" && cargo build --release -q --workspace --bins && cargo build --release -q -p ir-e2e --example k8s_bench)
"$ROOT/target/release/examples/k8s_bench" scale --objects "$OBJECTS"
