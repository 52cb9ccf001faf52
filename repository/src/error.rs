//! Errors of the repository crate. Every message names the repository, backup, chunk or file
//! concerned, so that a caller can print it as is.

use std::time::Duration;

use crate::chunk_id::ChunkId;

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

    #[error(
        "repository {url} is encrypted: give its password in IR_REPO_PASSWORD or its key file \
         with --key-file (IR_REPO_KEY_FILE)"
    )]
    KeyRequired { url: String },

    #[error(
        "the password or key file given does not open repository {url}: it is not this \
         repository's key (or the wrapped key in its ir-repo.json was altered)"
    )]
    WrongKey { url: String },

    #[error(
        "repository {url} is not encrypted, yet a key was given (IR_REPO_PASSWORD or \
         --key-file): unset it to use this repository, or make an encrypted one with \
         `irctl repo init --encryption`"
    )]
    NotEncrypted { url: String },

    #[error("invalid repository key: {reason}")]
    InvalidKey { reason: String },

    #[error("invalid chunk size {size}: {reason}")]
    InvalidChunkSize { size: u64, reason: String },

    #[error("invalid backup id {id:?}: expected letters, digits and '-' only")]
    InvalidBackupId { id: String },

    #[error("backup {id} not found in {url}")]
    BackupNotFound { id: String, url: String },

    #[error("backup {id} is in use: {holder} holds a lease on it until {expires}")]
    BackupLeased {
        id: String,
        holder: String,
        expires: time::OffsetDateTime,
    },

    #[error(
        "a retention policy needs at least one rule (keep last, daily, weekly or within): \
         without one, prune would delete every backup"
    )]
    EmptyRetentionPolicy,

    #[error("invalid lease holder {holder:?}: letters, digits, '-', '_' and '.' only")]
    InvalidLeaseHolder { holder: String },

    #[error("repository {url} has no backups{}", if *invalid > 0 { format!(" but {invalid} invalid ones (see `irctl backup list`)") } else { String::new() })]
    NoBackups { url: String, invalid: usize },

    #[error("backup {id} in {url} is invalid: {reason}")]
    InvalidManifest {
        id: String,
        url: String,
        reason: String,
    },

    #[error("backup {id} already exists in {url}")]
    BackupExists { id: String, url: String },

    /// `detail` is the storage's error summarised by [`summarize_store_error`]: what a server
    /// answers is not ours to repeat at length in statuses and events.
    #[error("storage error on {path} in {url}: {detail}")]
    Store {
        url: String,
        path: String,
        detail: String,
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

/// Longest storage error kept in a message.
const MAX_DETAIL_CHARS: usize = 300;

/// A storage error fit for a status message: the response body a server sent along (S3's XML,
/// an HTML error page) is left out but for its error code, control characters become spaces,
/// and the rest is cut to a few hundred characters.
pub(crate) fn summarize_store_error(e: &dyn std::fmt::Display) -> String {
    let full = e.to_string();
    let body_at = [
        "<?xml",
        "<Error",
        "<html",
        "<HTML",
        "<!DOCTYPE",
        "<!doctype",
    ]
    .iter()
    .filter_map(|marker| full.find(marker))
    .min();
    let (head, body) = match body_at {
        Some(at) => full.split_at(at),
        None => (full.as_str(), ""),
    };
    let code = body
        .split_once("<Code>")
        .and_then(|(_, rest)| rest.split_once("</Code>"))
        .map(|(code, _)| code)
        .filter(|code| code.len() <= 64 && code.chars().all(|c| c.is_ascii_alphanumeric()));
    let mut text: String = head
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let text_trimmed = text.trim_end_matches([':', ' ']).len();
    text.truncate(text_trimmed);
    if let Some(code) = code {
        text = format!("{text} ({code})");
    }
    if text.chars().count() > MAX_DETAIL_CHARS {
        text = text.chars().take(MAX_DETAIL_CHARS).collect::<String>() + "...";
    }
    text
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

#[cfg(test)]
mod tests {
    use super::summarize_store_error;

    #[test]
    fn store_errors_lose_their_bodies_and_stay_short() {
        let s3 = "Generic S3 error: Error performing GET http://s3/b/ir-repo.json in 2ms - \
                  Server returned non-2xx status code: 403 Forbidden: <?xml version=\"1.0\"?>\n\
                  <Error><Code>AccessDenied</Code><Message>secret-ish detail</Message>\
                  <Key>ir-repo.json</Key><RequestId>1</RequestId></Error>";
        let text = summarize_store_error(&s3);
        assert_eq!(
            text,
            "Generic S3 error: Error performing GET http://s3/b/ir-repo.json in 2ms - Server \
             returned non-2xx status code: 403 Forbidden (AccessDenied)"
        );
        let html = format!("status 502: <html>{}</html>", "x".repeat(10_000));
        assert_eq!(summarize_store_error(&html), "status 502");
        let long = "e\u{1b}[31m ".repeat(1000);
        let text = summarize_store_error(&long);
        assert!(
            text.chars().count() <= 303 && !text.contains('\u{1b}'),
            "{text}"
        );
    }
}
