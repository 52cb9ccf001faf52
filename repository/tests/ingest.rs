//! Ingest from generated tar streams and directories into a file:// repository.

mod common;

use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use common::{
    CHUNK, cluster_files, control, count_files, entry, label_and_manifest, noise, read_back,
    tar_of, temp_repo,
};
use ir_repository::{ChunkId, EntryKind, Progress, RepoError, RestoreOwner};

fn progress() -> Arc<Progress> {
    Arc::new(Progress::default())
}

/// A repository under `dir` with one backup of [`cluster_files`], ingested from a tar.
async fn cluster_backup(
    dir: &std::path::Path,
) -> (
    ir_repository::Repository,
    std::collections::BTreeMap<&'static str, Vec<u8>>,
    ir_repository::BackupManifest,
) {
    let repo = temp_repo(dir).await;
    let files = cluster_files();
    let m = repo
        .ingest_tar(
            io::Cursor::new(tar_of(&files, &label_and_manifest())),
            progress(),
        )
        .await
        .unwrap();
    (repo, files, m)
}

/// Each file is finished (attributes, fsync) by the writer of its last chunk, while the rest of
/// the restore goes on: every file still ends with its bytes, holes, mode, owner and mtime.
#[tokio::test]
async fn a_restore_gives_every_file_its_bytes_and_attributes() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let (repo, files, m) = cluster_backup(dir.path()).await;
    let target = dir.path().join("restored");
    repo.restore(&m.id, &target, RestoreOwner::default(), progress())
        .await
        .unwrap();
    for (path, data) in &files {
        let meta = std::fs::metadata(target.join(path)).unwrap();
        assert_eq!(&std::fs::read(target.join(path)).unwrap(), data, "{path}");
        assert_eq!(
            (meta.mode() & 0o7777, meta.uid(), meta.gid(), meta.mtime()),
            (0o600, 26, 27, 1_700_000_000),
            "{path}"
        );
    }
    // The zero chunk of base/1/1259 stays a hole.
    let rel = std::fs::metadata(target.join("base/1/1259")).unwrap();
    assert!(rel.blocks() * 512 < rel.size(), "{rel:?}");
}

#[tokio::test]
async fn tar_ingest_reads_back_and_dedups() {
    let dir = tempfile::tempdir().unwrap();
    let repo = temp_repo(dir.path()).await;
    let files = cluster_files();
    let tar = tar_of(&files, &label_and_manifest());
    let p = progress();
    let m = repo
        .ingest_tar(io::Cursor::new(tar.clone()), p.clone())
        .await
        .unwrap();

    assert_eq!(m.pg_version, "15");
    assert_eq!(m.system_identifier, "7311234567890123456");
    assert_eq!(m.start_lsn, "0/2000028");
    assert_eq!(m.stop_lsn.as_deref(), Some("0/2000100"));
    assert_eq!(m.timeline, 1);
    assert_eq!((m.root_mode, m.root_uid, m.root_gid), (0o700, 26, 27));
    let label_len: u64 = label_and_manifest()
        .iter()
        .map(|(_, d)| d.len() as u64)
        .sum();
    let files_len: u64 = files.values().map(|d| d.len() as u64).sum();
    assert_eq!(m.total_size, files_len + label_len);
    for (path, data) in &files {
        let e = entry(&m, path);
        assert_eq!(
            (e.mode, e.uid, e.gid, e.mtime),
            (0o600, 26, 27, 1_700_000_000),
            "{path}"
        );
        assert_eq!(&read_back(&repo, &m, e).await, data, "{path}");
    }
    let EntryKind::File { chunks } = &entry(&m, "base/1/1259").kind else {
        panic!()
    };
    assert_eq!(chunks.len(), 4);
    assert_eq!(chunks[1], None, "zero chunk is not stored");
    assert!(
        matches!(&entry(&m, "pg_log").kind, EntryKind::Symlink { target } if target == "/var/log/postgresql")
    );
    assert!(matches!(entry(&m, "pg_tblspc").kind, EntryKind::Dir));
    // Parents before children.
    for (i, e) in m.entries.iter().enumerate() {
        if let Some((parent, _)) = e.path.rsplit_once('/') {
            assert!(
                m.entries[..i].iter().any(|p| p.path == parent),
                "{} before its parent",
                e.path
            );
        }
    }
    let s = p.snapshot();
    assert_eq!(s.bytes_read, m.total_size);
    assert_eq!(s.chunks_zero, 1);
    assert!(s.chunks_new > 0 && s.bytes_uploaded > 0);

    // The repository lists it, `latest` finds it, and the manifest round-trips.
    assert_eq!(repo.resolve_backup("latest").await.unwrap(), m.id);
    assert_eq!(repo.load_manifest(&m.id).await.unwrap(), m);

    // Same data again: no new chunk objects.
    let chunks_dir = dir.path().join("repo/chunks");
    let before = count_files(&chunks_dir);
    assert_eq!(before as u64, s.chunks_new);
    let p2 = progress();
    let m2 = repo
        .ingest_tar(io::Cursor::new(tar), p2.clone())
        .await
        .unwrap();
    assert_ne!(m2.id, m.id);
    assert_eq!(count_files(&chunks_dir), before);
    assert_eq!(p2.snapshot().chunks_new, 0);
    assert_eq!(p2.snapshot().bytes_uploaded, 0);
    let ids: Vec<String> = repo
        .list_backups()
        .await
        .unwrap()
        .backups
        .into_iter()
        .map(|b| b.id)
        .collect();
    assert_eq!(ids, [m.id.clone(), m2.id.clone()], "oldest first");
    assert_eq!(repo.resolve_backup("latest").await.unwrap(), m2.id);
}

#[tokio::test]
async fn dir_ingest_of_a_cold_copy() {
    let dir = tempfile::tempdir().unwrap();
    let repo = temp_repo(dir.path()).await;
    let data = dir.path().join("data");
    let files = cluster_files();
    for (path, content) in &files {
        let p = data.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
    }
    std::fs::write(data.join("postmaster.opts"), b"skipped").unwrap();
    std::os::unix::fs::symlink("/elsewhere", data.join("link")).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o750)).unwrap();

    let m = repo.ingest_dir(&data, progress()).await.unwrap();
    assert_eq!(m.start_lsn, "1/28");
    assert_eq!(m.stop_lsn.as_deref(), Some("1/28"));
    assert_eq!(m.root_mode, 0o750);
    for (path, content) in &files {
        assert_eq!(
            &read_back(&repo, &m, entry(&m, path)).await,
            content,
            "{path}"
        );
    }
    assert!(m.entries.iter().all(|e| e.path != "postmaster.opts"));
    assert!(
        matches!(&entry(&m, "link").kind, EntryKind::Symlink { target } if target == "/elsewhere")
    );

    // A running cluster's directory is refused, and no backup appears.
    std::fs::write(data.join("global/pg_control"), control(6, 0x28, 1)).unwrap();
    let err = repo.ingest_dir(&data, progress()).await.unwrap_err();
    assert!(err.to_string().contains("not shut down cleanly"), "{err}");
    assert_eq!(repo.list_backups().await.unwrap().backups.len(), 1);

    let err = repo
        .ingest_dir(&dir.path().join("missing"), progress())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
}

#[tokio::test]
async fn unsupported_sources_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let repo = temp_repo(dir.path()).await;
    let files = cluster_files();

    let tblspc = tar_of(
        &files,
        &[("pg_tblspc/16384/PG_15_202209061/5/1", vec![1; 10])],
    );
    let err = repo
        .ingest_tar(io::Cursor::new(tblspc), progress())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("pg_tblspc/16384"), "{err}");

    let mut no_version = files.clone();
    no_version.remove("PG_VERSION");
    let err = repo
        .ingest_tar(io::Cursor::new(tar_of(&no_version, &[])), progress())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("PG_VERSION"), "{err}");

    let mut no_control = files.clone();
    no_control.remove("global/pg_control");
    let err = repo
        .ingest_tar(io::Cursor::new(tar_of(&no_control, &[])), progress())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("global/pg_control"), "{err}");

    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Link);
    h.set_mode(0o600);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(0);
    b.append_link(&mut h, "base/1/hard", "base/1/1259").unwrap();
    let err = repo
        .ingest_tar(io::Cursor::new(b.into_inner().unwrap()), progress())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("base/1/hard") && err.to_string().contains("hard link"),
        "{err}"
    );

    // tar::Builder refuses `..`, so write the header by hand.
    let mut h = tar::Header::new_old();
    h.as_old_mut().name[..13].copy_from_slice(b"../etc/passwd");
    h.set_mode(0o600);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(0);
    h.set_cksum();
    let mut raw = h.as_bytes().to_vec();
    raw.extend_from_slice(&[0; 1024]);
    let err = repo
        .ingest_tar(io::Cursor::new(raw), progress())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("../etc/passwd"), "{err}");

    assert!(repo.list_backups().await.unwrap().backups.is_empty());
}

/// Yields `data`, then fails.
struct FailingReader {
    data: io::Cursor<Vec<u8>>,
}

impl Read for FailingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.data.read(buf)? {
            0 => Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "source went away",
            )),
            n => Ok(n),
        }
    }
}

#[tokio::test]
async fn interrupted_ingest_leaves_no_backup_and_gc_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let repo = temp_repo(dir.path()).await;
    let tar = tar_of(&cluster_files(), &label_and_manifest());
    let chunks_dir = dir.path().join("repo/chunks");

    // A source failing half-way.
    let half = FailingReader {
        data: io::Cursor::new(tar[..tar.len() / 2].to_vec()),
    };
    let err = repo.ingest_tar(half, progress()).await.unwrap_err();
    assert!(err.to_string().contains("source went away"), "{err}");
    assert!(repo.list_backups().await.unwrap().backups.is_empty());
    let orphans = count_files(&chunks_dir);
    assert!(orphans > 0);

    // An ingest whose future is dropped part-way: its source never ends.
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    struct ChannelReader(std::sync::mpsc::Receiver<Vec<u8>>, io::Cursor<Vec<u8>>);
    impl Read for ChannelReader {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            loop {
                let n = self.1.read(buf)?;
                if n > 0 {
                    return Ok(n);
                }
                match self.0.recv() {
                    Ok(next) => self.1 = io::Cursor::new(next),
                    Err(_) => return Ok(0),
                }
            }
        }
    }
    tx.send(tar[..tar.len() - 2048].to_vec()).unwrap();
    let stalled = repo.ingest_tar(ChannelReader(rx, io::Cursor::new(Vec::new())), progress());
    assert!(
        tokio::time::timeout(Duration::from_millis(500), stalled)
            .await
            .is_err()
    );
    drop(tx);
    assert!(repo.list_backups().await.unwrap().backups.is_empty());

    // The default grace keeps them (and the dropped ingest's marker holds gc back).
    let r = repo.gc(Duration::from_secs(3600), false).await.unwrap();
    assert_eq!(r.chunks_deleted, 0);
    assert_eq!(r.ingests_running.len(), 1);
    let all = count_files(&chunks_dir);
    assert!(all >= orphans);
    assert_eq!(r.chunks_total as usize, all);

    // A marker refreshed within the refresh interval means a live ingest, whatever the grace.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = repo.gc(Duration::ZERO, false).await.unwrap();
    assert_eq!((r.chunks_deleted, r.ingests_running.len()), (0, 1));
    assert_eq!(count_files(&chunks_dir), all);

    // Once its marker is older than that, the ingest is dead: grace 0 takes every orphan.
    let markers = dir.path().join("repo/ingests");
    for marker in std::fs::read_dir(&markers).unwrap() {
        let file = std::fs::File::options()
            .write(true)
            .open(marker.unwrap().path())
            .unwrap();
        let long_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
        file.set_modified(long_ago).unwrap();
    }
    let dry = repo.gc(Duration::ZERO, true).await.unwrap();
    assert_eq!(dry.chunks_deleted as usize, all);
    assert_eq!(count_files(&chunks_dir), all);
    let r = repo.gc(Duration::ZERO, false).await.unwrap();
    assert!(r.ingests_running.is_empty());
    assert_eq!(r.chunks_deleted as usize, all);
    assert!(r.bytes_deleted > 0);
    assert_eq!(count_files(&chunks_dir), 0);
    assert_eq!(count_files(&markers), 0);

    // A complete backup's chunks survive gc.
    let m = repo
        .ingest_tar(io::Cursor::new(tar), progress())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = repo.gc(Duration::ZERO, false).await.unwrap();
    assert_eq!(r.chunks_deleted, 0);
    assert!(repo.verify(&m.id, progress()).await.unwrap().is_ok());
}

#[tokio::test]
async fn verify_finds_damaged_and_missing_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, _, m) = cluster_backup(dir.path()).await;
    let p = progress();
    let ok = repo.verify(&m.id, p.clone()).await.unwrap();
    assert!(ok.is_ok());
    assert_eq!(p.snapshot().bytes_read, ok.bytes_checked);

    let chunk_file = |id: &ChunkId| {
        let hex = id.to_hex();
        dir.path().join(format!("repo/chunks/{}/{hex}", &hex[..2]))
    };
    let EntryKind::File { chunks } = &entry(&m, "base/1/1259").kind else {
        panic!()
    };
    let damaged = chunks[2].unwrap();
    std::fs::write(
        chunk_file(&damaged),
        zstd::bulk::compress(&noise(CHUNK as usize, 9), 3).unwrap(),
    )
    .unwrap();
    let EntryKind::File { chunks } = &entry(&m, "base/1/1249").kind else {
        panic!()
    };
    let missing = chunks[0].unwrap();
    std::fs::remove_file(chunk_file(&missing)).unwrap();

    let report = repo.verify(&m.id, progress()).await.unwrap();
    assert!(!report.is_ok());
    assert_eq!(report.damaged.len(), 2, "{report:?}");
    let d = report
        .damaged
        .iter()
        .find(|d| d.path == "base/1/1259")
        .unwrap();
    assert_eq!((d.chunk_index, d.offset, d.chunk), (2, 2 * CHUNK, damaged));
    assert!(d.reason.contains("corrupt"), "{}", d.reason);
    let d = report
        .damaged
        .iter()
        .find(|d| d.path == "base/1/1249")
        .unwrap();
    assert_eq!((d.chunk_index, d.offset), (0, 0));
    assert!(d.reason.contains("missing"), "{}", d.reason);

    // Reading the damaged chunk never returns data.
    let err = repo.read_chunk(&damaged, CHUNK as usize).await.unwrap_err();
    assert!(matches!(err, RepoError::CorruptChunk { .. }), "{err:?}");
}
