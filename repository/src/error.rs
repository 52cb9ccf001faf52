//! Errors of the repository crate. Every message names the repository, backup, chunk or file
//! concerned, so that a caller can print it as is.

use std::time::Duration;

use crate::manifest::ChunkId;

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("invalid repository URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },

    #[error("repository {url} is not allowed: {reason}")]
    PathNotAllowed { url: String, reason: String },

    #[error(
        "no credentials for {url}: name a credentials Secret, or allow the process's own \
         credentials explicitly"
    )]
    NoCredentials { url: String },

    #[error("no repository at {url}: ir-repo.json not found (create one with `irctl repo init`)")]
    NotARepository { url: String },

    #[error("a repository already exists at {url} (ir-repo.json is present)")]
    AlreadyExists { url: String },

    #[error(
        "repository {url} has format version {found}; this build reads format version {supported}"
    )]
    UnsupportedFormat {
        url: String,
        found: u32,
        supported: u32,
    },

    #[error("invalid chunk size {size}: {reason}")]
    InvalidChunkSize { size: u64, reason: String },

    #[error("invalid backup id {id:?}: expected letters, digits and '-' only")]
    InvalidBackupId { id: String },

    #[error("backup {id} not found in {url}")]
    BackupNotFound { id: String, url: String },

    #[error("repository {url} has no backups")]
    NoBackups { url: String },

    #[error("storage error on {path} in {url}: {source}")]
    Store {
        url: String,
        path: String,
        #[source]
        source: object_store::Error,
        transient: bool,
    },

    #[error("object {path} in {url} is invalid: {reason}")]
    InvalidObject {
        url: String,
        path: String,
        reason: String,
    },

    #[error("chunk {id} in {url} is still unavailable after retrying for {waited:?}: {last}")]
    Unavailable {
        id: ChunkId,
        url: String,
        waited: Duration,
        last: String,
    },

    #[error("chunk {id} in {url} is corrupt: {reason}")]
    CorruptChunk {
        id: ChunkId,
        url: String,
        reason: String,
    },

    #[error("chunk {id} is missing from {url}")]
    MissingChunk { id: ChunkId, url: String },

    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot back up {path}: {reason}")]
    Unsupported { path: String, reason: String },

    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },

    #[error("pg_basebackup failed ({status}): {stderr}")]
    PgBasebackup { status: String, stderr: String },

    #[error("ingest into {url} stopped: {reason}")]
    Aborted { url: String, reason: String },
}

impl RepoError {
    /// Whether retrying the same operation later may succeed (network trouble, server errors,
    /// timeouts), as opposed to a fact about the data or the request.
    pub fn is_transient(&self) -> bool {
        match self {
            RepoError::Store { transient, .. } => *transient,
            RepoError::Unavailable { .. } => true,
            _ => false,
        }
    }

    pub(crate) fn io(path: impl Into<String>, source: std::io::Error) -> Self {
        RepoError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn unsupported(path: impl Into<String>, reason: impl Into<String>) -> Self {
        RepoError::Unsupported {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
