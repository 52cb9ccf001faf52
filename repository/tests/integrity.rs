//! Damaged stored chunks: dedup never builds on one, a later ingest or a repair writes it
//! again, and a repository-wide verify names every backup file one hurts.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{cluster_dir, cluster_tar, temp_repo};
use ir_repository::{BackupManifest, ChunkId, EntryKind, Progress, Source};

fn chunk_file(repo_dir: &Path, id: &ChunkId) -> PathBuf {
    let hex = id.to_hex();
    repo_dir.join("repo/chunks").join(&hex[..2]).join(hex)
}

/// The largest stored chunk of `m` (its first use's file), so that damage is easy to see.
fn some_chunk(m: &BackupManifest) -> (ChunkId, String) {
    m.entries
        .iter()
        .find_map(|e| match &e.kind {
            EntryKind::File { chunks } => chunks
                .iter()
                .flatten()
                .next()
                .map(|c| (*c, e.path.to_string())),
            _ => None,
        })
        .expect("a stored chunk")
}

/// Valid zstd, wrong content: only reading it back and hashing finds it.
fn damage(repo_dir: &Path, id: &ChunkId) {
    std::fs::write(
        chunk_file(repo_dir, id),
        zstd::bulk::compress(b"not the chunk", 3).unwrap(),
    )
    .unwrap();
}

#[tokio::test]
async fn a_new_backup_never_reuses_a_damaged_chunk_and_mends_it() {
    let dir = tempfile::tempdir().unwrap();
    let repo = temp_repo(dir.path()).await;
    let first = repo
        .ingest_tar(std::io::Cursor::new(cluster_tar()), Arc::default())
        .await
        .unwrap();
    let (chunk, path) = some_chunk(&first);
    damage(dir.path(), &chunk);

    let report = repo.verify_repository(Arc::default()).await.unwrap();
    assert_eq!(report.damaged.len(), 1, "{report:?}");
    assert_eq!(report.damaged[0].chunk, chunk);
    assert!(
        report.damaged[0]
            .uses
            .iter()
            .any(|u| u.backup_id == first.id && u.path == path),
        "{report:?}"
    );

    // The same data again: the damaged object is written again instead of referenced.
    let progress = Arc::new(Progress::default());
    let second = repo
        .ingest_tar(std::io::Cursor::new(cluster_tar()), progress.clone())
        .await
        .unwrap();
    assert_eq!(progress.snapshot().chunks_replaced, 1);
    assert!(
        repo.verify(&second.id, Arc::default())
            .await
            .unwrap()
            .is_ok()
    );
    assert!(
        repo.verify(&first.id, Arc::default())
            .await
            .unwrap()
            .is_ok(),
        "mended for all"
    );
    assert!(
        repo.verify_repository(Arc::default())
            .await
            .unwrap()
            .is_ok()
    );
}

#[tokio::test]
async fn repair_writes_damaged_and_missing_chunks_from_a_source() {
    let dir = tempfile::tempdir().unwrap();
    let repo = temp_repo(dir.path()).await;
    let data = cluster_dir(dir.path());
    let m = repo.ingest_dir(&data, Arc::default()).await.unwrap();
    let stored: Vec<ChunkId> = {
        let mut all: Vec<ChunkId> = m
            .entries
            .iter()
            .filter_map(|e| match &e.kind {
                EntryKind::File { chunks } => Some(chunks.iter().flatten().copied()),
                _ => None,
            })
            .flatten()
            .collect();
        all.sort();
        all.dedup();
        all
    };
    damage(dir.path(), &stored[0]);
    std::fs::remove_file(chunk_file(dir.path(), &stored[1])).unwrap();

    // A source without that data mends nothing, and says so.
    let other = dir.path().join("other");
    std::fs::create_dir_all(other.join("global")).unwrap();
    std::fs::write(other.join("PG_VERSION"), b"15\n").unwrap();
    std::fs::write(other.join("global/pg_control"), common::control(1, 0x28, 1)).unwrap();
    let report = repo
        .repair(Source::Dir(other), Arc::new(Progress::default()))
        .await
        .unwrap();
    assert_eq!(report.damaged, 2);
    assert!(report.replaced.is_empty());
    assert_eq!(report.still_damaged.len(), 2);

    let report = repo
        .repair(Source::Dir(data), Arc::new(Progress::default()))
        .await
        .unwrap();
    assert_eq!(report.damaged, 2);
    let mut want = vec![stored[0], stored[1]];
    want.sort();
    assert_eq!(report.replaced, want);
    assert!(report.still_damaged.is_empty(), "{report:?}");
    assert!(repo.verify(&m.id, Arc::default()).await.unwrap().is_ok());
    assert_eq!(
        repo.list_backups().await.unwrap().backups,
        [m],
        "repair writes no backup"
    );
}
