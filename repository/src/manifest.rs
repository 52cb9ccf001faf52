//! The on-repository data model: repository config and backup manifests.

mod path;
mod validate;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::chunk_id::ChunkId;
pub use crate::crypto::EncryptionConfig;

pub use path::{EntryPath, InvalidPath};
pub use validate::{MAX_ENTRIES, MAX_LABELS, ManifestError, check_labels};

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

/// Largest decompressed manifest read: 64 MiB of JSON, about a million chunk references of 67
/// bytes, the manifest of a database of some 950 GiB at the default chunk size (60 TiB at 64 MiB
/// chunks). It is a quarter of the operator's default memory limit (see docs/security.md): an
/// ingest that would write a larger one is refused, and a stored one is never decompressed past
/// it.
pub const MAX_MANIFEST_BYTES: u64 = 64 * 1024 * 1024;

/// Largest stored (compressed) manifest object. Chunk references are hex, which zstd brings to
/// about 54%: a manifest within [`MAX_MANIFEST_BYTES`] takes some 35 MiB.
pub const MAX_MANIFEST_OBJECT_BYTES: u64 = 40 * 1024 * 1024;

/// Largest zstd window of a manifest frame that does not declare its size: the one of level 19,
/// the highest the zstd tool uses by default. Ours always declare it and are decoded in one pass,
/// without a window.
const MANIFEST_WINDOW_LOG_MAX: u32 = 23;

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
    /// Who made the backup and why, as `key=value` pairs (`irctl backup create --label`; the
    /// operator's Backups label theirs with their uid). Absent in older manifests.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
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
        Self::from_json(
            &decompress_bounded(compressed)?,
            expected_id,
            repo_chunk_size,
        )
    }

    /// Parses and validates a manifest's decompressed JSON (see [`BackupManifest::decode`]).
    pub(crate) fn from_json(
        json: &[u8],
        expected_id: &str,
        repo_chunk_size: u64,
    ) -> Result<BackupManifest, ManifestError> {
        let mut de = serde_json::Deserializer::from_slice(json);
        let m: BackupManifest = match serde_path_to_error::deserialize(&mut de) {
            Ok(m) => m,
            Err(e) => {
                // A newer format may have changed the fields: say so rather than which one.
                #[derive(Deserialize)]
                struct Version {
                    format_version: u32,
                }
                if let Ok(v) = serde_json::from_slice::<Version>(json)
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

    /// The manifest as stored: zstd-compressed JSON. Refused past [`MAX_MANIFEST_BYTES`] or
    /// [`MAX_MANIFEST_OBJECT_BYTES`], which no reader would accept.
    pub(crate) fn encode(&self) -> Result<Vec<u8>, ManifestError> {
        let json = serde_json::to_vec(self).map_err(|e| invalid(e.to_string()))?;
        let too_large = |what: &str, size: usize, limit: u64| ManifestError {
            field: "entries".into(),
            reason: format!(
                "the manifest would take {size} bytes {what}, more than the {limit} any reader \
                 accepts: use a repository with a larger chunk size"
            ),
        };
        if json.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(too_large("of JSON", json.len(), MAX_MANIFEST_BYTES));
        }
        let compressed = zstd::bulk::compress(&json, MANIFEST_ZSTD_LEVEL)
            .map_err(|e| invalid(format!("cannot compress: {e}")))?;
        if compressed.len() as u64 > MAX_MANIFEST_OBJECT_BYTES {
            return Err(too_large(
                "compressed",
                compressed.len(),
                MAX_MANIFEST_OBJECT_BYTES,
            ));
        }
        Ok(compressed)
    }
}

const MANIFEST_ZSTD_LEVEL: i32 = 9;

fn invalid(reason: String) -> ManifestError {
    ManifestError {
        field: "manifest".into(),
        reason,
    }
}

/// How many bytes decompressing a stored manifest may make: what its frame header declares, or
/// [`MAX_MANIFEST_BYTES`] when it declares nothing.
pub(crate) fn decompressed_limit(compressed: &[u8]) -> Result<u64, ManifestError> {
    Ok(declared_size(compressed)?.unwrap_or(MAX_MANIFEST_BYTES))
}

/// The size a manifest's frame header declares. One past [`MAX_MANIFEST_BYTES`] is refused
/// here, before anything is allocated (a few kilobytes of zstd can claim gigabytes).
fn declared_size(compressed: &[u8]) -> Result<Option<u64>, ManifestError> {
    match zstd::zstd_safe::get_frame_content_size(compressed) {
        Ok(Some(declared)) if declared > MAX_MANIFEST_BYTES => Err(invalid(format!(
            "declares {declared} bytes decompressed, more than the {MAX_MANIFEST_BYTES} a \
             manifest may take"
        ))),
        Ok(declared) => Ok(declared),
        Err(_) => Err(invalid("cannot decompress: not a zstd frame".into())),
    }
}

/// Decompresses a stored manifest: a frame that declares its size in one pass into a buffer of
/// that size, any other through a stream whose output never grows past [`MAX_MANIFEST_BYTES`].
pub(crate) fn decompress_bounded(compressed: &[u8]) -> Result<Vec<u8>, ManifestError> {
    let cannot = |e: std::io::Error| invalid(format!("cannot decompress: {e}"));
    if let Some(declared) = declared_size(compressed)? {
        let mut json = Vec::with_capacity(declared as usize);
        let mut decompressor = zstd::bulk::Decompressor::new().map_err(cannot)?;
        decompressor
            .decompress_to_buffer(compressed, &mut json)
            .map_err(|e| {
                invalid(format!(
                    "cannot decompress into the {declared} bytes it declares: {e}"
                ))
            })?;
        return Ok(json);
    }
    let mut decoder = zstd::stream::read::Decoder::with_buffer(compressed).map_err(cannot)?;
    decoder
        .window_log_max(MANIFEST_WINDOW_LOG_MAX)
        .map_err(cannot)?;
    read_capped(decoder, MAX_MANIFEST_BYTES as usize)
        .map_err(cannot)?
        .ok_or_else(|| {
            invalid(format!(
                "decompresses to more than {MAX_MANIFEST_BYTES} bytes"
            ))
        })
}

/// Reads `r` to its end into a buffer whose capacity never passes `limit`; `None` when `r` has
/// more than that.
fn read_capped(mut r: impl std::io::Read, limit: usize) -> std::io::Result<Option<Vec<u8>>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 128 * 1024];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(Some(out)),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if out.len() + n > limit {
            return Ok(None);
        }
        if out.capacity() - out.len() < n {
            let grown = (out.capacity() * 2).max(out.len() + n).min(limit);
            out.reserve_exact(grown - out.len());
        }
        out.extend_from_slice(&buf[..n]);
    }
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
            labels: Default::default(),
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
