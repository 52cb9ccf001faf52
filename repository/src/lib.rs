//! Backup repository: content-addressed chunk store on a local directory or S3, backup manifests,
//! ingest from PostgreSQL, verification and garbage collection.

pub mod manifest;

pub use manifest::{BackupManifest, ChunkId, Entry, EntryKind, RepoConfig};
