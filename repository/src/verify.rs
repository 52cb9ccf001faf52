//! Reading back every chunk of a backup to prove it restorable.

use std::collections::HashMap;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::error::RepoError;
use crate::ingest::Progress;
use crate::manifest::{ChunkId, EntryKind};
use crate::repo::Repository;

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
        let cs = manifest.chunk_size;
        // Each distinct chunk is read once, with the length its first use expects: a chunk id is
        // a hash of the content, so every use of it has the same length.
        let mut lengths: HashMap<ChunkId, usize> = HashMap::new();
        let mut files = 0;
        for e in &manifest.entries {
            if let EntryKind::File { chunks } = &e.kind {
                files += 1;
                for (i, c) in chunks.iter().enumerate() {
                    if let Some(c) = c {
                        let len = manifest.chunk_len(e.size, i as u64);
                        lengths.entry(*c).or_insert(len);
                    }
                }
            }
        }
        let failures: HashMap<ChunkId, String> = futures::stream::iter(lengths.clone())
            .map(|(c, len)| {
                let progress = &progress;
                async move {
                    match self.read_chunk(&c, len).await {
                        Ok(_) => {
                            progress
                                .bytes_read
                                .fetch_add(len as u64, std::sync::atomic::Ordering::Relaxed);
                            progress
                                .chunks_new
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            Ok(None)
                        }
                        Err(
                            e @ (RepoError::CorruptChunk { .. } | RepoError::MissingChunk { .. }),
                        ) => Ok(Some((c, e.to_string()))),
                        Err(e) => Err(e),
                    }
                }
            })
            .buffer_unordered(VERIFY_CONCURRENCY)
            .try_filter_map(|r| async move { Ok(r) })
            .try_collect()
            .await?;
        let mut damaged = Vec::new();
        for e in &manifest.entries {
            if let EntryKind::File { chunks } = &e.kind {
                for (i, c) in chunks.iter().enumerate() {
                    if let Some(reason) = c.as_ref().and_then(|c| failures.get(c)) {
                        damaged.push(DamagedChunk {
                            path: e.path.clone(),
                            chunk_index: i as u64,
                            offset: i as u64 * cs,
                            chunk: c.expect("failed chunks are stored chunks"),
                            reason: reason.clone(),
                        });
                    }
                }
            }
        }
        Ok(VerifyReport {
            backup_id: manifest.id,
            files,
            chunks_checked: lengths.len() as u64,
            bytes_checked: lengths.values().map(|&l| l as u64).sum(),
            damaged,
        })
    }
}
