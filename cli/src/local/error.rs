//! What the local driver fails with.

use std::path::{Path, PathBuf};

use ir_engine::postgres;

use super::dir::WalkError;

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid recovery state: {source}")]
    State {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("no recovery in {0} (recovery.json not found)")]
    NoRecovery(PathBuf),
    #[error("another irctl recover is running on {0}")]
    Busy(PathBuf),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Postgres(#[from] postgres::PgError),
    #[error("validation failed: {message}")]
    Invalid { reason: String, message: String },
    #[error("recovery failed ({reason}): {message}")]
    Failed { reason: String, message: String },
}

pub(super) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LocalError + '_ {
    move |source| LocalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl From<WalkError> for LocalError {
    fn from(e: WalkError) -> Self {
        match e {
            WalkError::Io(path, source) => LocalError::Io { path, source },
            other => LocalError::Conflict(other.to_string()),
        }
    }
}
