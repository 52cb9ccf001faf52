//! Backup repository: content-addressed chunk store on a local directory or S3, backup manifests,
//! ingest from PostgreSQL, verification and garbage collection.
//!
//! Layout: `ir-repo.json` (config), `backups/<id>.json.zst` (manifests, zstd JSON),
//! `chunks/<aa>/<blake3>` (zstd chunks named by the hash of their plain bytes),
//! `ingests/<id>` (markers of ingests in progress), `leases/<id>/<holder>.json` (backups in use)
//! and `wal/<sysid>/...` (archived WAL, see [`wal`]).
//!
//! In an encrypted repository (`ir-repo.json` format version 2) chunks, manifests and WAL
//! objects are sealed with XChaCha20-Poly1305 and chunks are named by a keyed BLAKE3 hash;
//! the keys are wrapped in `ir-repo.json` by a password or key file ([`RepoKey`]).

mod bounded;
mod chunk_id;
mod conninfo;
mod crypto;
pub mod error;
mod gc;
mod ingest;
mod location;
mod lsn;
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

pub use chunk_id::{ChunkId, InvalidChunkId};
pub use crypto::{EncryptionConfig, KdfParams, WrappedKey};
pub use error::RepoError;
pub use gc::GcReport;
pub use ingest::{Checkpoint, Progress, ProgressSnapshot, RepairReport, Source};
pub use location::{
    Credentials, DEFAULT_READ_DEADLINE, PASSWORD_ENV, RepoKey, RepoLocation, S3Credentials, Secret,
};
pub use lsn::{format_lsn, parse_lsn};
pub use manifest::{
    BackupManifest, Entry, EntryKind, EntryPath, MAX_MANIFEST_BYTES, MAX_MANIFEST_OBJECT_BYTES,
    ManifestError, RepoConfig,
};
pub use pgmeta::{BackupLabel, parse_backup_label};
pub use repo::{BackupList, InvalidBackup, Repository};
pub use restore::RestoreOwner;
pub use retention::{
    Lease, MAX_LEASE_TTL, PruneAction, PruneScope, Pruned, RetentionPolicy, Verdict, decide,
};
pub use verify::{ChunkUse, DamagedChunk, DamagedSharedChunk, RepoVerifyReport, VerifyReport};
