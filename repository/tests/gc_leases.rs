//! Retention and gc together: a leased backup survives a delete and a prune's gc, a deleted
//! backup's chunks that a concurrent ingest reuses survive a gc run while it writes, and every
//! kept backup reads back whole afterwards.

mod common;

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use common::{CHUNK, cluster_files, label_and_manifest, noise, read_back, tar_of, temp_repo};
use ir_repository::{BackupManifest, Progress, RepoError, Repository};

/// The sample cluster plus `unique` (a file of its own) and, when given, `borrowed` (the
/// unique file of another backup).
fn backup_tar(unique: u64, borrowed: Option<u64>) -> Vec<u8> {
    let mut extra = label_and_manifest();
    extra.push(("base/1/unique", noise(6 * CHUNK as usize, unique)));
    if let Some(seed) = borrowed {
        extra.push(("base/1/borrowed", noise(6 * CHUNK as usize, seed)));
    }
    // Enough of its own that the ingest is still writing while gc runs.
    extra.push((
        "base/1/bulk",
        noise(
            if borrowed.is_some() { 400 } else { 1 } * CHUNK as usize,
            unique + 1000,
        ),
    ));
    tar_of(&cluster_files(), &extra)
}

async fn ingest(repo: &Repository, tar: Vec<u8>) -> BackupManifest {
    repo.ingest_tar(io::Cursor::new(tar), Arc::new(Progress::default()))
        .await
        .expect("ingest")
}

/// Every file of `m` reads back as `expected` says.
async fn reads_back(repo: &Repository, m: &BackupManifest, expected: &BTreeMap<&str, Vec<u8>>) {
    let m = repo
        .load_manifest(&m.id)
        .await
        .expect("the manifest is kept");
    for (path, bytes) in expected {
        let entry = common::entry(&m, path);
        assert_eq!(
            &read_back(repo, &m, entry).await,
            bytes,
            "{} of {}",
            path,
            m.id
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn gc_keeps_every_chunk_of_kept_and_leased_backups_under_a_concurrent_ingest() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = temp_repo(tmp.path()).await;
    let leased = ingest(&repo, backup_tar(1, None)).await;
    let doomed = ingest(&repo, backup_tar(2, None)).await;
    let kept = ingest(&repo, backup_tar(3, None)).await;

    repo.take_lease(&leased.id, "recovery-on-node-1", Duration::from_secs(900))
        .await
        .unwrap();
    let refused = repo.delete_backup(&leased.id).await.unwrap_err();
    assert!(
        matches!(refused, RepoError::BackupLeased { .. }),
        "{refused}"
    );
    repo.delete_backup(&doomed.id).await.unwrap();

    // An ingest that reuses the deleted backup's unique chunks, and gc (no grace) while it
    // writes: nothing it may reuse goes.
    let writer = {
        let repo = repo.clone();
        tokio::spawn(async move { ingest(&repo, backup_tar(4, Some(2))).await })
    };
    let (mut runs, mut during, mut deleted) = (0, 0, 0);
    while !writer.is_finished() {
        let report = repo.gc(Duration::ZERO, false).await.unwrap();
        if !report.ingests_running.is_empty() {
            assert_eq!(report.chunks_deleted, 0, "{report:?}");
            during += 1;
        }
        deleted += report.chunks_deleted;
        runs += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        during > 0,
        "gc never ran while the ingest wrote ({runs} runs)"
    );
    let reuser = writer.await.unwrap();

    // Once no ingest runs (or before the first began), gc deletes what no backup needs: at
    // least the deleted backup's bulk.
    let report = repo.gc(Duration::ZERO, false).await.unwrap();
    assert!(report.ingests_running.is_empty(), "{report:?}");
    assert!(deleted + report.chunks_deleted >= 1, "{report:?}");
    assert_eq!(report.backups, 3, "{report:?}");

    let verified = repo
        .verify_repository(Arc::new(Progress::default()))
        .await
        .unwrap();
    assert!(verified.damaged.is_empty(), "{verified:?}");
    let unique = |seed| noise(6 * CHUNK as usize, seed);
    for (m, seed) in [(&leased, 1), (&kept, 3)] {
        reads_back(&repo, m, &BTreeMap::from([("base/1/unique", unique(seed))])).await;
    }
    reads_back(
        &repo,
        &reuser,
        &BTreeMap::from([("base/1/unique", unique(4)), ("base/1/borrowed", unique(2))]),
    )
    .await;
}
