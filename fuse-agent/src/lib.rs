//! The instant-recovery data plane on a node: a backup's data directory served read-write through
//! FUSE, reads from the backup repository, writes into a crash-safe local cache (the IRCache),
//! and the node agent that does so for the RecoveryMounts of its node.

pub mod agent;
pub mod blockmap;
pub mod error;
pub mod fs;
pub mod fuse;
mod lease;
pub mod meta;
pub mod mount;
pub mod source;
pub mod stats;

pub use error::{FsError, FsResult};
pub use fs::{CacheOptions, ChunkSource, IrFs};
pub use mount::{
    MountError, MountOptions, Mounted, clear_stale_mount, is_fuse_mount, mount_backup,
};
pub use source::{RepoSource, SourceConfig};
