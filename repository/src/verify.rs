//! Reading back every chunk of a backup, or of the whole repository, to prove it restorable.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::chunk_id::ChunkId;
use crate::error::RepoError;
use crate::ingest::Progress;
use crate::manifest::{BackupManifest, EntryKind};
use crate::repo::{InvalidBackup, Repository};

const VERIFY_CONCURRENCY: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DamagedChunk {
    pub path: String,
    pub chunk_index: u64,
    /// Offset of the chunk in the file.
    pub offset: u64,
    pub chunk: ChunkId,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub backup_id: String,
    pub files: u64,
    /// Distinct stored chunks read.
    pub chunks_checked: u64,
    /// Plain bytes of the distinct chunks read.
    pub bytes_checked: u64,
    /// Every file chunk that cannot be read back, in manifest order.
    pub damaged: Vec<DamagedChunk>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.damaged.is_empty()
    }
}

/// One use of a chunk: which backup, which file, which chunk of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChunkUse {
    pub backup_id: String,
    pub path: String,
    pub chunk_index: u64,
}

/// A stored chunk that cannot be read back, with every backup file that needs it: one damaged
/// chunk shared by dedup damages all of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DamagedSharedChunk {
    pub chunk: ChunkId,
    /// Its plain length.
    pub len: usize,
    pub reason: String,
    pub uses: Vec<ChunkUse>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RepoVerifyReport {
    pub backups: u64,
    /// Backups whose manifest is invalid (their chunks are not checked).
    pub invalid_backups: Vec<InvalidBackup>,
    pub chunks_checked: u64,
    pub bytes_checked: u64,
    pub damaged: Vec<DamagedSharedChunk>,
}

impl RepoVerifyReport {
    pub fn is_ok(&self) -> bool {
        self.damaged.is_empty() && self.invalid_backups.is_empty()
    }
}

/// Each distinct stored chunk of `manifests` with its length: a chunk id is a hash of the
/// content, so every use of it has the same length.
fn distinct_chunks<'a>(
    manifests: impl IntoIterator<Item = &'a BackupManifest>,
) -> HashMap<ChunkId, usize> {
    let mut lengths = HashMap::new();
    for m in manifests {
        for e in &m.entries {
            if let EntryKind::File { chunks } = &e.kind {
                for (i, c) in chunks.iter().enumerate() {
                    if let Some(c) = c {
                        lengths
                            .entry(*c)
                            .or_insert_with(|| m.chunk_len(e.size, i as u64));
                    }
                }
            }
        }
    }
    lengths
}

/// The uses of the damaged chunks in `m`, in manifest order.
fn uses_in<'a>(
    m: &'a BackupManifest,
    damaged: &'a HashMap<ChunkId, String>,
) -> impl Iterator<Item = (ChunkId, u64, &'a str)> + 'a {
    m.entries.iter().flat_map(move |e| {
        let chunks = match &e.kind {
            EntryKind::File { chunks } => chunks.as_slice(),
            _ => &[],
        };
        chunks.iter().enumerate().filter_map(move |(i, c)| {
            let c = (*c)?;
            damaged
                .contains_key(&c)
                .then_some((c, i as u64, e.path.as_str()))
        })
    })
}

impl Repository {
    /// Reads and checks every chunk of backup `id`. Missing and corrupt chunks are reported per
    /// file; a repository that stays unreachable fails the verification instead, since nothing
    /// can be said about the data then.
    pub async fn verify(
        &self,
        id: &str,
        progress: Arc<Progress>,
    ) -> Result<VerifyReport, RepoError> {
        let manifest = self.load_manifest(id).await?;
        let lengths = distinct_chunks([&manifest]);
        let failures = self.check_chunks(&lengths, &progress).await?;
        let damaged = uses_in(&manifest, &failures)
            .map(|(chunk, index, path)| DamagedChunk {
                path: path.to_string(),
                chunk_index: index,
                offset: index * manifest.chunk_size,
                chunk,
                reason: failures[&chunk].clone(),
            })
            .collect();
        Ok(VerifyReport {
            backup_id: manifest.id.clone(),
            files: manifest
                .entries
                .iter()
                .filter(|e| matches!(e.kind, EntryKind::File { .. }))
                .count() as u64,
            chunks_checked: lengths.len() as u64,
            bytes_checked: lengths.values().map(|&l| l as u64).sum(),
            damaged,
        })
    }

    /// Reads and checks every chunk any backup needs, each once, and names every backup file a
    /// damaged one hurts. Invalid manifests are reported, not fatal.
    pub async fn verify_repository(
        &self,
        progress: Arc<Progress>,
    ) -> Result<RepoVerifyReport, RepoError> {
        let list = self.list_backups().await?;
        let lengths = distinct_chunks(&list.backups);
        let failures = self.check_chunks(&lengths, &progress).await?;
        let mut damaged: HashMap<ChunkId, DamagedSharedChunk> = HashMap::new();
        for m in &list.backups {
            for (chunk, index, path) in uses_in(m, &failures) {
                damaged
                    .entry(chunk)
                    .or_insert_with(|| DamagedSharedChunk {
                        chunk,
                        len: lengths[&chunk],
                        reason: failures[&chunk].clone(),
                        uses: Vec::new(),
                    })
                    .uses
                    .push(ChunkUse {
                        backup_id: m.id.clone(),
                        path: path.to_string(),
                        chunk_index: index,
                    });
            }
        }
        let mut damaged: Vec<DamagedSharedChunk> = damaged.into_values().collect();
        damaged.sort_by_key(|d| d.chunk);
        Ok(RepoVerifyReport {
            backups: list.backups.len() as u64,
            invalid_backups: list.invalid,
            chunks_checked: lengths.len() as u64,
            bytes_checked: lengths.values().map(|&l| l as u64).sum(),
            damaged,
        })
    }

    /// Why each chunk of `lengths` that cannot be read back fails.
    async fn check_chunks(
        &self,
        lengths: &HashMap<ChunkId, usize>,
        progress: &Progress,
    ) -> Result<HashMap<ChunkId, String>, RepoError> {
        futures::stream::iter(lengths.iter())
            .map(|(c, len)| async move {
                match self.read_chunk(c, *len).await {
                    Ok(_) => {
                        progress
                            .bytes_read
                            .fetch_add(*len as u64, Ordering::Relaxed);
                        progress.chunks_new.fetch_add(1, Ordering::Relaxed);
                        Ok(None)
                    }
                    Err(e @ (RepoError::CorruptChunk { .. } | RepoError::MissingChunk { .. })) => {
                        Ok(Some((*c, e.to_string())))
                    }
                    Err(e) => Err(e),
                }
            })
            .buffer_unordered(VERIFY_CONCURRENCY)
            .try_filter_map(|r| async move { Ok(r) })
            .try_collect()
            .await
    }
}
