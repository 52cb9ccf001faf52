//! Storing chunks: each written once, a stored one reused only when it reads back sound, and
//! repair of the damaged and missing ones from a source that has them.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;

use object_store::{ObjectStoreExt, PutPayload};
use serde::Serialize;

use super::source::Source;
use super::{PendingChunk, Progress};
use crate::chunk_id::ChunkId;
use crate::error::RepoError;
use crate::repo::{Repository, chunk_path};

/// Level 1, not zstd's default 3: on PostgreSQL heap pages it decompresses about 1.5x faster (a
/// cold read through the mount is bound by its CPU) and compresses twice as fast, 10% smaller
/// (its index: as fast, 2% larger; bench/zstd-level.sh).
const ZSTD_LEVEL: i32 = 1;

/// What a repair did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RepairReport {
    /// Damaged or missing chunks found before the repair.
    pub damaged: u64,
    /// Those the source had, written again.
    pub replaced: Vec<ChunkId>,
    /// Those still damaged afterwards: the source did not have them.
    pub still_damaged: Vec<ChunkId>,
}

impl Repository {
    /// Replaces the repository's damaged and missing chunks with the ones `source` has (the
    /// same data, e.g. a newer backup of the same cluster, or the copy the backup was made
    /// from). Writes no backup; chunks nobody lacks are not written.
    pub async fn repair(
        &self,
        source: Source,
        progress: Arc<Progress>,
    ) -> Result<RepairReport, RepoError> {
        let walk = source.into_walk()?;
        let found = self
            .verify_repository(Arc::new(Progress::default()))
            .await?;
        let wanted: HashMap<ChunkId, usize> =
            found.damaged.iter().map(|d| (d.chunk, d.len)).collect();
        let mut report = RepairReport {
            damaged: wanted.len() as u64,
            ..Default::default()
        };
        if wanted.is_empty() {
            return Ok(report);
        }
        let replaced = std::sync::Mutex::new(Vec::new());
        self.walk_source(walk, progress.clone(), |c| {
            let wanted = wanted.contains_key(&c.id);
            let replaced = &replaced;
            let progress = &progress;
            async move {
                if wanted {
                    let id = c.id;
                    self.put_chunk(c, progress).await?;
                    replaced.lock().expect("replaced list").push(id);
                }
                Ok(())
            }
        })
        .await?;
        report.replaced = replaced.into_inner().expect("replaced list");
        report.replaced.sort();
        for (id, len) in &wanted {
            if !self.is_stored_sound(id, *len).await? {
                report.still_damaged.push(*id);
            }
        }
        report.still_damaged.sort();
        Ok(report)
    }

    /// Stores a chunk of this ingest. One already stored is reused only once it reads back as
    /// these very bytes: dedup must never make a new backup depend on a damaged object, and a
    /// damaged one is replaced on the way.
    pub(super) async fn store_chunk(
        &self,
        c: PendingChunk,
        progress: &Progress,
    ) -> Result<(), RepoError> {
        let (c, damage) = match self.fetch_chunk(&c.id).await {
            Ok(stored) => {
                let codec = self.codec().clone();
                let (c, verdict) = tokio::task::spawn_blocking(move || {
                    let verdict = codec
                        .open(chunk_path(&c.id).as_ref(), stored)
                        .and_then(|compressed| decodes_to(&compressed, &c.data));
                    (c, verdict)
                })
                .await
                .map_err(|e| RepoError::io("ingest", io::Error::other(e)))?;
                match verdict {
                    Ok(()) => {
                        Progress::add(&progress.chunks_deduped, 1);
                        return Ok(());
                    }
                    Err(reason) => (c, Some(reason)),
                }
            }
            Err(RepoError::MissingChunk { .. }) => (c, None),
            Err(RepoError::CorruptChunk { reason, .. }) => (c, Some(reason)),
            Err(e) => return Err(e),
        };
        if let Some(reason) = damage {
            tracing::warn!(chunk = %c.id, url = %self.url(), %reason, "a stored chunk is damaged; writing it again");
            Progress::add(&progress.chunks_replaced, 1);
        }
        self.put_chunk(c, progress).await
    }

    /// Whether the object stored under a chunk's name reads back as that chunk.
    async fn is_stored_sound(&self, id: &ChunkId, len: usize) -> Result<bool, RepoError> {
        match self.fetch_chunk(id).await {
            Ok(stored) => match self.decode_chunk(id, stored, len).await {
                Ok(_) => Ok(true),
                Err(RepoError::CorruptChunk { .. }) => Ok(false),
                Err(e) => Err(e),
            },
            Err(RepoError::MissingChunk { .. } | RepoError::CorruptChunk { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Compresses (and in an encrypted repository seals) and writes a chunk, replacing
    /// whatever object has its name.
    pub(crate) async fn put_chunk(
        &self,
        c: PendingChunk,
        progress: &Progress,
    ) -> Result<(), RepoError> {
        let path = chunk_path(&c.id);
        let (codec, at) = (self.codec().clone(), path.clone());
        let stored = tokio::task::spawn_blocking(move || {
            zstd::bulk::compress(&c.data, ZSTD_LEVEL).map(|z| codec.seal(at.as_ref(), z))
        })
        .await
        .map_err(|e| RepoError::io(path.to_string(), io::Error::other(e)))?
        .map_err(|e| RepoError::io(path.to_string(), e))?;
        let len = stored.len() as u64;
        self.store()
            .put(&path, PutPayload::from(stored))
            .await
            .map_err(|e| self.store_err(&path, e))?;
        Progress::add(&progress.chunks_new, 1);
        Progress::add(&progress.bytes_uploaded, len);
        Ok(())
    }
}

/// Whether a stored chunk object (decrypted) decompresses to exactly `plain`. Equal bytes have equal hashes,
/// so comparing them proves the object as hashing would, for less than half the work.
/// The decompression context and buffer are kept per thread: a fresh megabyte per chunk costs
/// as much in page faults as the decompression itself.
fn decodes_to(stored: &[u8], plain: &[u8]) -> Result<(), String> {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Option<(zstd::bulk::Decompressor<'static>, Vec<u8>)>> =
            const { std::cell::RefCell::new(None) };
    }
    SCRATCH.with_borrow_mut(|scratch| {
        if scratch.is_none() {
            let decompressor =
                zstd::bulk::Decompressor::new().map_err(|e| format!("cannot decompress: {e}"))?;
            *scratch = Some((decompressor, Vec::new()));
        }
        let (decompressor, buf) = scratch.as_mut().expect("made above");
        buf.clear();
        buf.reserve(plain.len());
        decompressor
            .decompress_to_buffer(stored, buf)
            .map_err(|e| format!("cannot decompress: {e}"))?;
        if buf.as_slice() == plain {
            Ok(())
        } else {
            Err("it does not hold the chunk's bytes".to_string())
        }
    })
}
