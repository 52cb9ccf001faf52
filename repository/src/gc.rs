//! Garbage collection: removing chunks no backup refers to.

use std::collections::HashSet;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use object_store::path::Path;
use serde::Serialize;
use time::OffsetDateTime;

use crate::chunk_id::ChunkId;
use crate::error::RepoError;
use crate::ingest::{MARKER_REFRESH, MARKERS_DIR};
use crate::manifest::EntryKind;
use crate::repo::{CHUNKS_DIR, InvalidBackup, Repository};

const DELETE_CONCURRENCY: usize = 16;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub backups: u64,
    pub chunks_total: u64,
    pub chunks_referenced: u64,
    /// Unreferenced chunks younger than the grace period: possibly from an ingest in progress.
    pub chunks_recent: u64,
    /// Unreferenced chunks deleted (or that would be, in a dry run).
    pub chunks_deleted: u64,
    pub bytes_deleted: u64,
    /// Backup ids of ingests still running; while there are any, nothing is deleted, as they may
    /// rely on old unreferenced chunks they found already stored.
    pub ingests_running: Vec<String>,
    /// Backups whose manifest is invalid. The chunks an invalid manifest still names are kept.
    pub invalid_backups: Vec<InvalidBackup>,
    /// Invalid backups whose chunk references cannot be read at all; while there are any,
    /// nothing is deleted (delete or repair those manifests first).
    pub unreadable_backups: Vec<String>,
}

/// A stored chunk as listed.
#[derive(Debug, Clone)]
pub(crate) struct StoredChunk {
    pub id: ChunkId,
    pub path: Path,
    pub size: u64,
    /// Seconds since the Unix epoch.
    pub modified: i64,
}

/// The chunks to delete: unreferenced and last written at least `grace` before `now`.
pub(crate) fn select_garbage<'a>(
    chunks: &'a [StoredChunk],
    referenced: &HashSet<ChunkId>,
    now: i64,
    grace: Duration,
) -> Vec<&'a StoredChunk> {
    let cutoff = now.saturating_sub(i64::try_from(grace.as_secs()).unwrap_or(i64::MAX));
    chunks
        .iter()
        .filter(|c| !referenced.contains(&c.id) && c.modified <= cutoff)
        .collect()
}

impl Repository {
    /// Deletes chunks that no backup refers to and that are older than `grace` (which protects
    /// the chunks of an ingest still running). Stale ingest markers are removed as well.
    pub async fn gc(&self, grace: Duration, dry_run: bool) -> Result<GcReport, RepoError> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        // A running ingest rewrites its marker every MARKER_REFRESH: judging markers by the
        // caller's grace alone would call a live ingest stale when the grace is shorter.
        let marker_age = grace.max(2 * MARKER_REFRESH);
        let marker_age = i64::try_from(marker_age.as_secs()).unwrap_or(i64::MAX);
        let markers = self.list(MARKERS_DIR).await?;
        let (running, stale): (Vec<_>, Vec<_>) = markers
            .into_iter()
            .partition(|m| m.last_modified.timestamp() > now.saturating_sub(marker_age));
        let mut report = GcReport {
            dry_run,
            ingests_running: running
                .iter()
                .filter_map(|m| m.location.filename().map(str::to_string))
                .collect(),
            ..Default::default()
        };
        // Chunks are listed before manifests: a backup finished in between then only adds
        // references, never loses its chunks.
        let chunks: Vec<StoredChunk> = self
            .list(CHUNKS_DIR)
            .await?
            .into_iter()
            .filter_map(|m| {
                Some(StoredChunk {
                    id: m.location.filename()?.parse().ok()?,
                    size: m.size,
                    modified: m.last_modified.timestamp(),
                    path: m.location,
                })
            })
            .collect();
        let list = self.list_backups().await?;
        let mut referenced = HashSet::new();
        for m in &list.backups {
            for e in &m.entries {
                if let EntryKind::File { chunks } = &e.kind {
                    referenced.extend(chunks.iter().flatten().copied());
                }
            }
        }
        for invalid in &list.invalid {
            let scavenged = self
                .with_manifest_json(&invalid.id, |json| scavenge_references(&json.ok()?))
                .await;
            match scavenged {
                Ok(Some(ids)) => referenced.extend(ids),
                // Deleted since the listing: it needs none of its chunks any more.
                Err(RepoError::BackupNotFound { .. }) => {}
                Ok(None) | Err(_) => report.unreadable_backups.push(invalid.id.clone()),
            }
        }
        report.invalid_backups = list.invalid;
        let garbage = select_garbage(&chunks, &referenced, now, grace);
        report.backups = list.backups.len() as u64;
        report.chunks_total = chunks.len() as u64;
        report.chunks_referenced =
            chunks.iter().filter(|c| referenced.contains(&c.id)).count() as u64;
        report.chunks_recent =
            report.chunks_total - report.chunks_referenced - garbage.len() as u64;
        if !report.ingests_running.is_empty() || !report.unreadable_backups.is_empty() {
            return Ok(report);
        }
        report.chunks_deleted = garbage.len() as u64;
        report.bytes_deleted = garbage.iter().map(|c| c.size).sum();
        if dry_run {
            return Ok(report);
        }
        // Collected, not chained lazily: a closure held across the awaits below would keep
        // the future from being `Send` in a controller.
        let doomed: Vec<Path> = garbage
            .iter()
            .map(|c| c.path.clone())
            .chain(stale.into_iter().map(|m| m.location))
            .collect();
        futures::stream::iter(doomed)
            .map(|path| async move {
                match self.store().delete(&path).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(self.store_err(&path, e)),
                }
            })
            .buffer_unordered(DELETE_CONCURRENCY)
            .try_collect::<()>()
            .await?;
        Ok(report)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<object_store::ObjectMeta>, RepoError> {
        let prefix = Path::from(prefix);
        self.store()
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| self.store_err(&prefix, e))
    }
}

/// Every chunk id an invalid manifest still names, read leniently (any `chunks` list of
/// strings anywhere): its chunks may be all that is left of that backup. `None` when it is not
/// even JSON.
fn scavenge_references(json: &[u8]) -> Option<HashSet<ChunkId>> {
    let value: serde_json::Value = serde_json::from_slice(json).ok()?;
    let mut ids = HashSet::new();
    let mut stack = vec![&value];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::Array(chunks)) = map.get("chunks") {
                    ids.extend(
                        chunks
                            .iter()
                            .filter_map(|c| c.as_str()?.parse::<ChunkId>().ok()),
                    );
                }
                stack.extend(map.values());
            }
            serde_json::Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    Some(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(n: u8, modified: i64) -> StoredChunk {
        let id = ChunkId([n; 32]);
        StoredChunk {
            id,
            path: crate::repo::chunk_path(&id),
            size: 100,
            modified,
        }
    }

    #[test]
    fn invalid_manifests_keep_the_chunks_they_name() {
        let id = ChunkId([7; 32]);
        let json = format!(
            r#"{{"format_version":1,"chunk_size":0,"entries":[{{"path":"../x","type":"file","chunks":["{id}",null,"zz"]}}]}}"#
        );
        assert_eq!(
            scavenge_references(json.as_bytes()),
            Some(HashSet::from([id]))
        );
        assert_eq!(scavenge_references(b"not json"), None);
    }

    #[test]
    fn selects_old_unreferenced_chunks() {
        let now = 10_000;
        let chunks = vec![
            chunk(1, now - 7200), // referenced, old
            chunk(2, now - 7200), // unreferenced, old: garbage
            chunk(3, now - 60),   // unreferenced, recent: kept
            chunk(4, now - 3600), // unreferenced, exactly at the grace limit: garbage
        ];
        let referenced: HashSet<ChunkId> = [ChunkId([1; 32])].into();
        let picked: Vec<u8> = select_garbage(&chunks, &referenced, now, Duration::from_secs(3600))
            .iter()
            .map(|c| c.id.0[0])
            .collect();
        assert_eq!(picked, [2, 4]);
        let all: Vec<u8> = select_garbage(&chunks, &referenced, now, Duration::ZERO)
            .iter()
            .map(|c| c.id.0[0])
            .collect();
        assert_eq!(all, [2, 3, 4]);
    }
}
