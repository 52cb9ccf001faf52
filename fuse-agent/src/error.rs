use std::io;
use std::path::PathBuf;

use ir_repository::ChunkId;

/// Errors of the filesystem core, each with the errno the kernel gets for it.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    #[error("operation not supported: {0}")]
    Unsupported(&'static str),
    #[error("stale file handle")]
    BadHandle,
    #[error("{path}: offset {offset}: chunk {chunk}: {reason}")]
    Chunk {
        path: String,
        offset: u64,
        chunk: ChunkId,
        reason: String,
    },
    #[error("cache metadata store: {0}")]
    Meta(String),
    #[error(
        "cache {} belongs to {found}, not to {wanted} ({differs} differ); use another cache directory or delete this one",
        .cache.display()
    )]
    Foreign {
        cache: PathBuf,
        found: String,
        wanted: String,
        differs: String,
    },
    #[error(
        "cache {}: lost {}: {reason}; refusing the cache rather than serving its writes as zeros or starting it over (restore the file, or delete the cache directory to start from the backup again)",
        .cache.display(),
        .missing.display()
    )]
    Lost {
        cache: PathBuf,
        missing: PathBuf,
        reason: String,
    },
    #[error("the disk of cache {} is full", .0.display())]
    CacheFull(PathBuf),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl FsError {
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::Exists => libc::EEXIST,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::Invalid(_) => libc::EINVAL,
            FsError::Unsupported(_) => libc::EOPNOTSUPP,
            FsError::BadHandle => libc::EBADF,
            FsError::Chunk { .. } => libc::EIO,
            FsError::Meta(_) | FsError::Foreign { .. } | FsError::Lost { .. } => libc::EIO,
            FsError::CacheFull(_) => libc::ENOSPC,
            FsError::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

impl From<redb::Error> for FsError {
    fn from(e: redb::Error) -> Self {
        match e {
            // Keeps the errno (ENOSPC on a full cache disk).
            redb::Error::Io(io) => FsError::Io(io),
            other => FsError::Meta(other.to_string()),
        }
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for FsError {
            fn from(e: $t) -> Self {
                FsError::from(redb::Error::from(e))
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

pub type FsResult<T> = Result<T, FsError>;
