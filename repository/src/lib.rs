//! Backup repository: content-addressed chunk store on a local directory or S3, backup manifests,
//! ingest from PostgreSQL, verification and garbage collection.
//!
//! Layout: `ir-repo.json` (config), `backups/<id>.json.zst` (manifests, zstd JSON),
//! `chunks/<aa>/<blake3>` (zstd chunks named by the hash of their plain bytes),
//! `ingests/<id>` (markers of ingests in progress), `leases/<id>/<holder>.json` (backups in use)
//! and `wal/<sysid>/...` (archived WAL, see [`wal`]).

mod bounded;
mod conninfo;
pub mod error;
mod gc;
mod ingest;
mod location;
pub mod manifest;
mod pgmeta;
mod random;
mod repo;
mod restore;
mod retention;
pub mod size;
mod store;
mod verify;
pub mod wal;

pub use error::RepoError;
pub use gc::GcReport;
pub use ingest::{Checkpoint, Progress, ProgressSnapshot, RepairReport, Source};
pub use location::{Credentials, DEFAULT_READ_DEADLINE, RepoLocation, S3Credentials};
pub use manifest::{
    BackupManifest, ChunkId, Entry, EntryKind, EntryPath, MAX_MANIFEST_BYTES,
    MAX_MANIFEST_OBJECT_BYTES, ManifestError, RepoConfig,
};
pub use pgmeta::{format_lsn, parse_lsn};
pub use repo::{BackupList, InvalidBackup, Repository};
pub use restore::RestoreOwner;
pub use retention::{Lease, MAX_LEASE_TTL, RetentionPolicy, Verdict, decide};
pub use verify::{ChunkUse, DamagedChunk, DamagedSharedChunk, RepoVerifyReport, VerifyReport};
