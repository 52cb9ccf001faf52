//! Full restore of a backup to a local directory: the classic way to recover, and the baseline
//! instant recovery is measured against.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, UNIX_EPOCH};

use futures::{StreamExt, TryStreamExt};

use crate::error::RepoError;
use crate::ingest::Progress;
use crate::manifest::{BackupManifest, EntryKind};
use crate::repo::Repository;

/// Chunk downloads in flight during a restore.
const RESTORE_CONCURRENCY: usize = 16;

/// Owner override for restored files (the user PostgreSQL will run as).
#[derive(Debug, Clone, Copy, Default)]
pub struct RestoreOwner {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

impl Repository {
    /// Writes every file of backup `id` under `target`, which must be empty or absent. Zero
    /// chunks stay holes. Returns the manifest restored.
    pub async fn restore(
        &self,
        id: &str,
        target: &Path,
        owner: RestoreOwner,
        progress: Arc<Progress>,
    ) -> Result<BackupManifest, RepoError> {
        let manifest = self.load_manifest(id).await?;
        let io = |path: &Path, e| RepoError::io(path.display().to_string(), e);
        if target.exists()
            && fs::read_dir(target)
                .map_err(|e| io(target, e))?
                .next()
                .is_some()
        {
            return Err(RepoError::unsupported(
                target.display().to_string(),
                "the restore target is not empty",
            ));
        }
        fs::create_dir_all(target).map_err(|e| io(target, e))?;

        let cs = manifest.chunk_size;
        let mut work: Vec<(Arc<File>, PathBuf, u64, crate::ChunkId, usize)> = Vec::new();
        // Kept open for the attributes and the final fsync.
        let mut files: Vec<Option<Arc<File>>> = vec![None; manifest.entries.len()];
        for (index, e) in manifest.entries.iter().enumerate() {
            let path = target.join(&e.path);
            match &e.kind {
                EntryKind::Dir => fs::create_dir_all(&path).map_err(|err| io(&path, err))?,
                EntryKind::Symlink { target: t } => {
                    std::os::unix::fs::symlink(t, &path).map_err(|err| io(&path, err))?
                }
                EntryKind::File { chunks } => {
                    let f = OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&path)
                        .map_err(|err| io(&path, err))?;
                    f.set_len(e.size).map_err(|err| io(&path, err))?;
                    let f = Arc::new(f);
                    files[index] = Some(f.clone());
                    for (i, c) in chunks.iter().enumerate() {
                        if let Some(c) = c {
                            work.push((
                                f.clone(),
                                path.clone(),
                                i as u64 * cs,
                                *c,
                                manifest.chunk_len(e.size, i as u64),
                            ));
                        }
                    }
                }
            }
        }

        futures::stream::iter(work)
            .map(|(file, path, off, chunk, len)| {
                let progress = progress.clone();
                async move {
                    let data = self.read_chunk(&chunk, len).await?;
                    progress.bytes_read.fetch_add(len as u64, Ordering::Relaxed);
                    tokio::task::spawn_blocking(move || {
                        file.write_all_at(&data, off)
                            .map_err(|e| RepoError::io(path.display().to_string(), e))
                    })
                    .await
                    .map_err(|e| RepoError::io("restore", std::io::Error::other(e)))?
                }
            })
            .buffer_unordered(RESTORE_CONCURRENCY)
            .try_collect::<()>()
            .await?;

        // Attributes last: directories may be read-only, and their mtimes would move. A file's
        // fsync comes after its attributes, so that they are durable too.
        for (e, file) in manifest.entries.iter().zip(files).rev() {
            let path = target.join(&e.path);
            let (uid, gid) = (owner.uid.unwrap_or(e.uid), owner.gid.unwrap_or(e.gid));
            let mode = fs::Permissions::from_mode(e.mode & 0o7777);
            let mtime = UNIX_EPOCH + Duration::from_secs(e.mtime.max(0) as u64);
            match (&e.kind, file) {
                (EntryKind::Symlink { .. }, _) => {
                    std::os::unix::fs::lchown(&path, Some(uid), Some(gid))
                        .map_err(|err| io(&path, err))?
                }
                (_, Some(f)) => std::os::unix::fs::fchown(&*f, Some(uid), Some(gid))
                    .and_then(|()| f.set_permissions(mode))
                    .and_then(|()| f.set_modified(mtime))
                    .and_then(|()| f.sync_all())
                    .map_err(|err| io(&path, err))?,
                (_, None) => std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                    .and_then(|()| fs::set_permissions(&path, mode))
                    .and_then(|()| File::open(&path)?.set_modified(mtime))
                    .map_err(|err| io(&path, err))?,
            }
        }
        let (uid, gid) = (
            owner.uid.unwrap_or(manifest.root_uid),
            owner.gid.unwrap_or(manifest.root_gid),
        );
        std::os::unix::fs::chown(target, Some(uid), Some(gid)).map_err(|e| io(target, e))?;
        fs::set_permissions(
            target,
            fs::Permissions::from_mode(manifest.root_mode & 0o7777),
        )
        .map_err(|e| io(target, e))?;
        File::open(target)
            .and_then(|d| d.sync_all())
            .map_err(|e| io(target, e))?;
        Ok(manifest)
    }
}
