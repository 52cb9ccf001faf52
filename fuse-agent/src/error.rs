use std::io;

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
            FsError::Meta(_) => libc::EIO,
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
