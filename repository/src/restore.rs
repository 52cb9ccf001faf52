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
        for e in &manifest.entries {
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
                    for (i, c) in chunks.iter().enumerate() {
                        if let Some(c) = c {
                            let off = i as u64 * cs;
                            work.push((
                                f.clone(),
                                path.clone(),
                                off,
                                *c,
                                (e.size - off).min(cs) as usize,
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

        // Attributes last: directories may be read-only, and their mtimes would move.
        for e in manifest.entries.iter().rev() {
            let path = target.join(&e.path);
            let is_link = matches!(e.kind, EntryKind::Symlink { .. });
            if let EntryKind::File { .. } = e.kind {
                File::open(&path)
                    .and_then(|f| f.sync_all())
                    .map_err(|err| io(&path, err))?;
            }
            let (uid, gid) = (owner.uid.unwrap_or(e.uid), owner.gid.unwrap_or(e.gid));
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid)).map_err(|err| io(&path, err))?;
            if !is_link {
                fs::set_permissions(&path, fs::Permissions::from_mode(e.mode & 0o7777))
                    .map_err(|err| io(&path, err))?;
                let mtime = UNIX_EPOCH + Duration::from_secs(e.mtime.max(0) as u64);
                File::options()
                    .read(true)
                    .open(&path)
                    .and_then(|f| f.set_modified(mtime))
                    .map_err(|err| io(&path, err))?;
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
