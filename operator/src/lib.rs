//! The Kubernetes driver of the instant-recovery engine: the InstantRecovery and
//! BackupRepository controllers run by the `ir-operator` binary. The engine itself (state
//! machine, PostgreSQL control) is `ir-engine`.

pub mod k8s;
