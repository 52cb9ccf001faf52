//! What one mount counts as it serves: its chunk reads, its FUSE requests and its refusals for
//! a full cache disk. Plain atomics, updated on every request; the agent exposes them as
//! metrics.

use std::sync::atomic::AtomicU64;
use std::time::Instant;

use ir_telemetry::LatencyHistogram;

/// The FUSE requests whose latency is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FuseOp {
    Lookup,
    Getattr,
    Setattr,
    Readlink,
    Mknod,
    Mkdir,
    Unlink,
    Rmdir,
    Symlink,
    Rename,
    Link,
    Open,
    Read,
    Write,
    Release,
    Fsync,
    Opendir,
    Readdir,
    Fsyncdir,
    Statfs,
    Create,
    Fallocate,
}

impl FuseOp {
    pub const ALL: [FuseOp; 22] = [
        FuseOp::Lookup,
        FuseOp::Getattr,
        FuseOp::Setattr,
        FuseOp::Readlink,
        FuseOp::Mknod,
        FuseOp::Mkdir,
        FuseOp::Unlink,
        FuseOp::Rmdir,
        FuseOp::Symlink,
        FuseOp::Rename,
        FuseOp::Link,
        FuseOp::Open,
        FuseOp::Read,
        FuseOp::Write,
        FuseOp::Release,
        FuseOp::Fsync,
        FuseOp::Opendir,
        FuseOp::Readdir,
        FuseOp::Fsyncdir,
        FuseOp::Statfs,
        FuseOp::Create,
        FuseOp::Fallocate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FuseOp::Lookup => "lookup",
            FuseOp::Getattr => "getattr",
            FuseOp::Setattr => "setattr",
            FuseOp::Readlink => "readlink",
            FuseOp::Mknod => "mknod",
            FuseOp::Mkdir => "mkdir",
            FuseOp::Unlink => "unlink",
            FuseOp::Rmdir => "rmdir",
            FuseOp::Symlink => "symlink",
            FuseOp::Rename => "rename",
            FuseOp::Link => "link",
            FuseOp::Open => "open",
            FuseOp::Read => "read",
            FuseOp::Write => "write",
            FuseOp::Release => "release",
            FuseOp::Fsync => "fsync",
            FuseOp::Opendir => "opendir",
            FuseOp::Readdir => "readdir",
            FuseOp::Fsyncdir => "fsyncdir",
            FuseOp::Statfs => "statfs",
            FuseOp::Create => "create",
            FuseOp::Fallocate => "fallocate",
        }
    }
}

/// Counters of one mount.
#[derive(Debug, Default)]
pub struct MountStats {
    /// Bytes of chunks read from the repository, prefetches included; hits in the memory or
    /// disk cache do not count. These are the chunks' plain (decompressed) sizes: the
    /// repository hands over chunks decoded and does not tell what went over the wire, which
    /// for compressed chunks is less.
    pub fetched_bytes: AtomicU64,
    /// Chunk reads answered by the in-memory chunk cache.
    pub memory_hits: AtomicU64,
    /// Chunk loads answered by the on-disk chunk cache.
    pub disk_hits: AtomicU64,
    /// Chunk loads that went to the repository (prefetches included).
    pub misses: AtomicU64,
    /// Chunk reads from the repository that failed.
    pub repository_errors: AtomicU64,
    /// Operations refused with ENOSPC because the IRCache disk is full.
    pub enospc_refusals: AtomicU64,
    operations: [LatencyHistogram; FuseOp::ALL.len()],
}

impl MountStats {
    pub fn operation(&self, op: FuseOp) -> &LatencyHistogram {
        &self.operations[op as usize]
    }

    /// Runs a FUSE request's work and records how long it took.
    pub fn timed<T>(&self, op: FuseOp, work: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let result = work();
        self.operation(op).observe(started.elapsed());
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_has_its_own_histogram() {
        for (index, op) in FuseOp::ALL.iter().enumerate() {
            assert_eq!(*op as usize, index, "{op:?} is out of order in FuseOp::ALL");
        }
        let stats = MountStats::default();
        assert_eq!(stats.timed(FuseOp::Read, || 7), 7);
        assert_eq!(stats.operation(FuseOp::Read).count(), 1);
        assert_eq!(stats.operation(FuseOp::Write).count(), 0);
    }
}
