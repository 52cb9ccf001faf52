//! Ingest: turn a tar stream, a directory or a live server into a backup.
//!
//! A blocking thread walks the source, cuts each file into fixed-size chunks as its data arrives,
//! hashes them and passes the ones not yet seen in this backup to the async side through a bounded
//! channel. The async side compresses (blocking pool) and uploads a bounded number of chunks at a
//! time, skipping those the repository already has. The manifest is written last, only when every
//! chunk is stored: an interrupted ingest leaves orphan chunks for `gc`, never a half backup.

mod source;
mod store;
mod walk;

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::io::Read;
use std::path::Path as FsPath;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use serde::Serialize;
use time::OffsetDateTime;
use time::macros::format_description;
use tokio::sync::mpsc;

use crate::chunk_id::ChunkId;
use crate::error::RepoError;
use crate::lsn::format_lsn;
use crate::manifest::{BackupManifest, FORMAT_VERSION};
use crate::pgmeta::Captured;
use crate::repo::Repository;

pub use source::{Checkpoint, Source};
pub use store::RepairReport;

use source::Walk;
use walk::{Walked, Walker};

/// Marker objects of ingests in progress (`ingests/<backup id>`), refreshed while they run so
/// that `gc` leaves their chunks alone.
pub(crate) const MARKERS_DIR: &str = "ingests";
pub(crate) const MARKER_REFRESH: Duration = Duration::from_secs(300);
/// Memory allowed for chunks between the reader and the store, in plain bytes.
const IN_FLIGHT_BYTES: u64 = 128 * 1024 * 1024;

/// Counters updated while an ingest (or a verify) runs; poll them from another task to show
/// progress.
#[derive(Debug, Default)]
pub struct Progress {
    /// Plain bytes read from the source (verify: plain bytes checked).
    pub bytes_read: AtomicU64,
    /// Compressed bytes written to the repository.
    pub bytes_uploaded: AtomicU64,
    /// Chunks written to the repository (verify: chunks checked).
    pub chunks_new: AtomicU64,
    /// Chunks already in the repository or earlier in the same backup.
    pub chunks_deduped: AtomicU64,
    /// All-zero chunks, which are not stored.
    pub chunks_zero: AtomicU64,
    /// Stored chunks found damaged (or gone) when reused, and written again.
    pub chunks_replaced: AtomicU64,
}

/// A point-in-time copy of [`Progress`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ProgressSnapshot {
    pub bytes_read: u64,
    pub bytes_uploaded: u64,
    pub chunks_new: u64,
    pub chunks_deduped: u64,
    pub chunks_zero: u64,
    pub chunks_replaced: u64,
}

impl Progress {
    pub fn snapshot(&self) -> ProgressSnapshot {
        ProgressSnapshot {
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            bytes_uploaded: self.bytes_uploaded.load(Ordering::Relaxed),
            chunks_new: self.chunks_new.load(Ordering::Relaxed),
            chunks_deduped: self.chunks_deduped.load(Ordering::Relaxed),
            chunks_zero: self.chunks_zero.load(Ordering::Relaxed),
            chunks_replaced: self.chunks_replaced.load(Ordering::Relaxed),
        }
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// A chunk to store: its plain bytes and their hash.
pub(crate) struct PendingChunk {
    id: ChunkId,
    data: Vec<u8>,
}

/// UTC time to the second, then 64 random bits: sortable by time, and two ingests never pick the
/// same id (writing a manifest never replaces one either).
fn new_backup_id(now: OffsetDateTime) -> String {
    let stamp = now
        .format(format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .expect("UTC time formats");
    format!("{stamp}-{}", crate::random::hex(8))
}

/// How many chunks may be between the reader and the store at once.
fn in_flight(chunk_size: u64) -> usize {
    (IN_FLIGHT_BYTES / chunk_size).clamp(2, 16) as usize
}

/// Keeps the ingest marker fresh while the ingest runs; stops refreshing when dropped.
struct MarkerGuard(tokio::task::JoinHandle<()>);

impl Drop for MarkerGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Repository {
    /// Ingests a tar stream, e.g. the output of `pg_basebackup -Ft -X fetch -D -`.
    pub async fn ingest_tar<R: Read + Send + 'static>(
        &self,
        reader: R,
        progress: Arc<Progress>,
    ) -> Result<BackupManifest, RepoError> {
        self.ingest(Source::Tar(Box::new(reader)), BTreeMap::new(), progress)
            .await
    }

    /// Ingests a plain-format `pg_basebackup` directory or a cleanly shut down data directory.
    pub async fn ingest_dir(
        &self,
        dir: &FsPath,
        progress: Arc<Progress>,
    ) -> Result<BackupManifest, RepoError> {
        self.ingest(Source::Dir(dir.to_path_buf()), BTreeMap::new(), progress)
            .await
    }

    /// Runs `pg_basebackup` against a live server and ingests its output (see [`Source::Pg`]).
    pub async fn ingest_pg(
        &self,
        conninfo: &str,
        checkpoint: Checkpoint,
        pg_bindir: Option<&FsPath>,
        progress: Arc<Progress>,
    ) -> Result<BackupManifest, RepoError> {
        let source = Source::Pg {
            conninfo: conninfo.to_owned(),
            checkpoint,
            pg_bindir: pg_bindir.map(FsPath::to_path_buf),
        };
        self.ingest(source, BTreeMap::new(), progress).await
    }

    /// Makes a new backup of `source`, with `labels` in its manifest.
    pub async fn ingest(
        &self,
        source: Source,
        labels: BTreeMap<String, String>,
        progress: Arc<Progress>,
    ) -> Result<BackupManifest, RepoError> {
        crate::manifest::check_labels(&labels)
            .map_err(|e| RepoError::unsupported(e.field, e.reason))?;
        let walk = source.into_walk()?;
        let created = OffsetDateTime::now_utc();
        let id = new_backup_id(created);
        let marker = Path::from(format!("{MARKERS_DIR}/{id}"));
        self.put_marker(&marker).await?;
        let refresher = {
            let repo = self.clone();
            let marker = marker.clone();
            MarkerGuard(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(MARKER_REFRESH).await;
                    if let Err(e) = repo.put_marker(&marker).await {
                        tracing::warn!("cannot refresh ingest marker: {e}");
                    }
                }
            }))
        };
        let result = self.ingest_run(&id, created, walk, labels, progress).await;
        drop(refresher);
        if let Err(e) = self.store().delete(&marker).await {
            tracing::warn!("cannot remove ingest marker {marker}: {e}");
        }
        result
    }

    /// Walks `walk` on a blocking thread and hands each distinct non-zero chunk to `sink`, a
    /// bounded number at a time.
    async fn walk_source<S, Fut>(
        &self,
        walk: Walk,
        progress: Arc<Progress>,
        sink: S,
    ) -> Result<Walked, RepoError>
    where
        S: FnMut(PendingChunk) -> Fut,
        Fut: Future<Output = Result<(), RepoError>>,
    {
        let chunk_size = self.config().chunk_size;
        let n = in_flight(chunk_size);
        let (tx, mut rx) = mpsc::channel(n);
        let walker = Walker {
            url: self.url().to_string(),
            codec: self.codec().clone(),
            buf: vec![0; chunk_size as usize],
            tx,
            progress,
            seen: HashSet::new(),
            entries: BTreeMap::new(),
            root: None,
            captured: Captured::default(),
        };
        let reader = tokio::task::spawn_blocking(move || {
            let mut walker = walker;
            walk(&mut walker)?;
            Ok::<_, RepoError>(walker.finish())
        });
        // Ends when the reader drops its sender (done or failed); on a sink error, dropping
        // the receiver stops the reader at its next chunk.
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
            .map(sink)
            .buffer_unordered(n)
            .try_collect::<()>()
            .await?;
        match reader.await {
            Ok(r) => r,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    async fn ingest_run(
        &self,
        id: &str,
        created: OffsetDateTime,
        walk: Walk,
        labels: BTreeMap<String, String>,
        progress: Arc<Progress>,
    ) -> Result<BackupManifest, RepoError> {
        let chunk_size = self.config().chunk_size;
        let walked = self
            .walk_source(walk, progress.clone(), |c| self.store_chunk(c, &progress))
            .await?;
        let meta = walked.captured.derive()?;
        let manifest = BackupManifest {
            format_version: FORMAT_VERSION,
            id: id.to_string(),
            created,
            ended: Some(OffsetDateTime::now_utc()),
            pg_version: meta.pg_version,
            system_identifier: meta.system_identifier.to_string(),
            start_lsn: format_lsn(meta.start_lsn),
            stop_lsn: meta.stop_lsn.map(format_lsn),
            timeline: meta.timeline,
            total_size: walked.total_size,
            chunk_size,
            root_mode: walked.root.mode & 0o7777,
            root_uid: walked.root.uid,
            root_gid: walked.root.gid,
            labels,
            entries: walked.entries,
        };
        // Never write what a reader would refuse.
        manifest
            .validate(chunk_size)
            .map_err(|e| RepoError::unsupported(e.field, e.reason))?;
        self.write_manifest(&manifest).await?;
        Ok(manifest)
    }

    async fn put_marker(&self, path: &Path) -> Result<(), RepoError> {
        self.store()
            .put(path, PutPayload::from(Vec::new()))
            .await
            .map(|_| ())
            .map_err(|e| self.store_err(path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_ids_sort_by_time() {
        let t = time::macros::datetime!(2026-11-25 06:35:12 UTC);
        let id = new_backup_id(t);
        assert!(id.starts_with("20261125T063512Z-"), "{id}");
        assert_eq!(id.len(), "20261125T063512Z-".len() + 16);
        assert!(new_backup_id(t + Duration::from_secs(1)) > id);
        assert_ne!(new_backup_id(t), id, "same second, another id");
    }

    #[test]
    fn in_flight_is_bounded() {
        assert_eq!(in_flight(1 << 20), 16);
        assert_eq!(in_flight(64 << 20), 2);
    }
}
