//! The on-repository data model: repository config and backup manifests.

mod path;
mod validate;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::chunk_id::ChunkId;
pub use crate::crypto::EncryptionConfig;

pub use path::{EntryPath, InvalidPath};
pub use validate::{MAX_ENTRIES, ManifestError};

/// Version of the repository layout (`ir-repo.json`, manifests, chunk paths).
pub const FORMAT_VERSION: u32 = 1;

/// `ir-repo.json`'s `format_version` in an encrypted repository: the same layout with every
/// chunk, manifest and WAL object sealed (see `crypto.rs`). Builds that predate encryption
/// refuse it as a format they do not read rather than take ciphertext for zstd.
pub const ENCRYPTED_FORMAT_VERSION: u32 = 2;

/// Default chunk size. 1 MiB keeps a manifest small (one id per MiB: about 100 KiB of ids per
/// 1.5 GB backup), makes one S3 GET large enough to amortise its latency, and is still small
/// enough that the first read of a random 8 KiB page fetches little more than it needs.
pub const DEFAULT_CHUNK_SIZE: u64 = 1024 * 1024;

/// `ir-repo.json`: written once by `repo init`, read by everyone who opens the repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoConfig {
    pub format_version: u32,
    /// Fixed chunk size in bytes for every backup of the repository.
    pub chunk_size: u64,
    /// Hash over the plain chunk bytes; names the chunk object. Always `blake3` (keyed with
    /// the repository's id key when it is encrypted).
    pub hash: String,
    /// Compression of chunk objects. Always `zstd`.
    pub compression: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    /// Random identity given at `repo init` (128 bits, hex). An IRCache is bound to it, so that
    /// a backup id found in another repository is never mistaken for this one's. Repositories
    /// made before it existed have none; their URL stands in for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_id: Option<String>,
    /// How the objects are encrypted, in an encrypted repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum EntryKind {
    Dir,
    /// `chunks[i]` covers bytes `[i * chunk_size, min((i + 1) * chunk_size, size))`; `None` is an
    /// all-zero chunk, which is not stored.
    File {
        chunks: Vec<Option<ChunkId>>,
    },
    Symlink {
        target: String,
    },
}

/// Largest decompressed manifest read: about four million chunk references, the manifest of a
/// 4 TiB database at the default chunk size (256 TiB at 64 MiB chunks). An ingest that would
/// write a larger one is refused, and a stored one is never decompressed past it.
pub const MAX_MANIFEST_BYTES: u64 = 256 * 1024 * 1024;

/// Whether `id` has the form of a backup id (it names an object: letters, digits and `-` only).
pub(crate) fn is_backup_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// One file, directory or symlink of the data directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative to the data directory; parents come before their children.
    pub path: EntryPath,
    #[serde(flatten)]
    pub kind: EntryKind,
    /// Permission bits (`0o7777` part of st_mode).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: i64,
}

/// `backups/<id>.json.zst`. Its presence is what makes a backup exist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupManifest {
    pub format_version: u32,
    pub id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    /// When the ingest finished: the source's copy, and so the backup, had ended by then.
    /// Absent in manifests written before it was recorded.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub ended: Option<OffsetDateTime>,
    /// Contents of `PG_VERSION`, e.g. `15`.
    pub pg_version: String,
    /// Database system identifier from `global/pg_control`, as a decimal string (it does not fit
    /// a JSON number losslessly).
    pub system_identifier: String,
    /// `X/Y` form, as PostgreSQL prints LSNs.
    pub start_lsn: String,
    /// End of the WAL needed for consistency; `None` when the source did not say.
    pub stop_lsn: Option<String>,
    pub timeline: u32,
    /// Sum of the sizes of all files.
    pub total_size: u64,
    pub chunk_size: u64,
    /// Mode, uid and gid of the data directory itself.
    pub root_mode: u32,
    pub root_uid: u32,
    pub root_gid: u32,
    pub entries: Vec<Entry>,
}

impl BackupManifest {
    /// No later than this the backup is consistent: a point in time from here on can be
    /// recovered from it. For a backup whose ingest outlasted its copy (an import of an older
    /// backup) this is later than the backup's true end: never too early.
    pub fn consistent_by(&self) -> OffsetDateTime {
        self.ended.unwrap_or(self.created)
    }

    /// Number of chunks a file of `size` bytes has.
    pub fn chunk_count(&self, size: u64) -> u64 {
        size.div_ceil(self.chunk_size)
    }

    /// Length of chunk `index` of a file of `size` bytes (the last one may be short; 0 past the
    /// end).
    pub fn chunk_len(&self, size: u64, index: u64) -> usize {
        let start = index.saturating_mul(self.chunk_size);
        size.saturating_sub(start).min(self.chunk_size) as usize
    }
}

impl BackupManifest {
    /// Reads a stored manifest (`backups/<expected_id>.json.zst`): decompressed up to
    /// [`MAX_MANIFEST_BYTES`], parsed, and validated whole against the repository's chunk size.
    /// Never panics, whatever the bytes.
    pub fn decode(
        compressed: &[u8],
        expected_id: &str,
        repo_chunk_size: u64,
    ) -> Result<BackupManifest, ManifestError> {
        let json = decompress_bounded(compressed)?;
        let mut de = serde_json::Deserializer::from_slice(&json);
        let m: BackupManifest = match serde_path_to_error::deserialize(&mut de) {
            Ok(m) => m,
            Err(e) => {
                // A newer format may have changed the fields: say so rather than which one.
                #[derive(Deserialize)]
                struct Version {
                    format_version: u32,
                }
                if let Ok(v) = serde_json::from_slice::<Version>(&json)
                    && v.format_version != FORMAT_VERSION
                {
                    return Err(ManifestError {
                        field: "format_version".into(),
                        reason: format!(
                            "{} is not supported (this build reads {FORMAT_VERSION})",
                            v.format_version
                        ),
                    });
                }
                let field = e.path().to_string();
                return Err(ManifestError {
                    field: if field == "." {
                        "manifest".into()
                    } else {
                        field
                    },
                    reason: e.into_inner().to_string(),
                });
            }
        };
        m.validate(repo_chunk_size)?;
        if m.id != expected_id {
            return Err(ManifestError {
                field: "id".into(),
                reason: format!("{:?} differs from the id it is stored under", m.id),
            });
        }
        Ok(m)
    }

    /// The manifest as stored: zstd-compressed JSON. Refused past [`MAX_MANIFEST_BYTES`], which
    /// no reader would accept.
    pub(crate) fn encode(&self) -> Result<Vec<u8>, ManifestError> {
        let json = serde_json::to_vec(self).map_err(|e| ManifestError {
            field: "manifest".into(),
            reason: e.to_string(),
        })?;
        if json.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(ManifestError {
                field: "entries".into(),
                reason: format!(
                    "the manifest would take {} bytes, more than the {MAX_MANIFEST_BYTES} any \
                     reader accepts: use a repository with a larger chunk size",
                    json.len()
                ),
            });
        }
        zstd::bulk::compress(&json, MANIFEST_ZSTD_LEVEL).map_err(|e| ManifestError {
            field: "manifest".into(),
            reason: format!("cannot compress: {e}"),
        })
    }
}

const MANIFEST_ZSTD_LEVEL: i32 = 9;

/// Decompresses a stored manifest, never past [`MAX_MANIFEST_BYTES`] (a few kilobytes of zstd
/// can claim gigabytes).
pub(crate) fn decompress_bounded(compressed: &[u8]) -> Result<Vec<u8>, ManifestError> {
    use std::io::Read;
    let invalid = |reason: String| ManifestError {
        field: "manifest".into(),
        reason,
    };
    let decoder = zstd::stream::read::Decoder::with_buffer(compressed)
        .map_err(|e| invalid(format!("cannot decompress: {e}")))?;
    let mut json = Vec::new();
    decoder
        .take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut json)
        .map_err(|e| invalid(format!("cannot decompress: {e}")))?;
    if json.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(invalid(format!(
            "decompresses to more than {MAX_MANIFEST_BYTES} bytes"
        )));
    }
    Ok(json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_json_round_trip() {
        let id = ChunkId::of(b"x");
        let m = BackupManifest {
            format_version: FORMAT_VERSION,
            id: "20261125T063512Z-3fa2".to_string(),
            created: time::macros::datetime!(2026-11-25 06:35:12 UTC),
            ended: None,
            pg_version: "15".to_string(),
            system_identifier: "7311234567890123456".to_string(),
            start_lsn: "0/2000028".to_string(),
            stop_lsn: Some("0/2000100".to_string()),
            timeline: 1,
            total_size: 3 << 20,
            chunk_size: DEFAULT_CHUNK_SIZE,
            root_mode: 0o700,
            root_uid: 26,
            root_gid: 26,
            entries: vec![
                Entry {
                    path: EntryPath::new("base").unwrap(),
                    kind: EntryKind::Dir,
                    mode: 0o700,
                    uid: 26,
                    gid: 26,
                    size: 0,
                    mtime: 1_700_000_000,
                },
                Entry {
                    path: EntryPath::new("base/1").unwrap(),
                    kind: EntryKind::File {
                        chunks: vec![Some(id), None, Some(id)],
                    },
                    mode: 0o600,
                    uid: 26,
                    gid: 26,
                    size: 3 << 20,
                    mtime: 1_700_000_001,
                },
                Entry {
                    path: EntryPath::new("pg_wal").unwrap(),
                    kind: EntryKind::Symlink {
                        target: "/wal".to_string(),
                    },
                    mode: 0o777,
                    uid: 26,
                    gid: 26,
                    size: 4,
                    mtime: 1_700_000_002,
                },
            ],
        };
        let json = serde_json::to_string(&m).unwrap();
        assert!(
            json.contains(&format!("\"chunks\":[\"{id}\",null,\"{id}\"]")),
            "{json}"
        );
        assert!(json.contains("\"type\":\"symlink\""), "{json}");
        let back: BackupManifest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
        assert_eq!(m.chunk_count(3 << 20), 3);
        assert_eq!(m.chunk_count((3 << 20) + 1), 4);
        assert_eq!(m.chunk_len((3 << 20) + 1, 2), 1 << 20);
        assert_eq!(m.chunk_len((3 << 20) + 1, 3), 1);
    }
}
