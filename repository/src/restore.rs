//! Full restore of a backup to a local directory: the classic way to recover, and the baseline
//! instant recovery is measured against.
//!
//! A restore runs as root on whatever the repository holds, so it never resolves a path it did
//! not make itself: the target is opened once (refused if it is a symlink), and every entry is
//! created relative to its opened parent directory with `O_NOFOLLOW`/`O_EXCL`, attributes are
//! set through the entries' own descriptors. Even a manifest that slipped past validation (an
//! entry below a symlink, say) fails there instead of writing anywhere else.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::{self, File};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::{StreamExt, TryStreamExt};
use rustix::fs::{AtFlags, Gid, Mode, OFlags, Timespec, Timestamps, Uid};

use crate::chunk_id::ChunkId;
use crate::error::RepoError;
use crate::ingest::Progress;
use crate::manifest::{BackupManifest, EntryKind};
use crate::repo::Repository;

/// Files written at once. Each has one writer that writes its chunks in order: concurrent
/// writers of one file would contend for its lock in the kernel, and in-order writes give the
/// filesystem sequential extents.
const FILES_AT_ONCE: usize = 4;
/// Chunks of one file downloaded ahead of its writer.
const CHUNKS_AHEAD: usize = 8;

thread_local! {
    /// Each writer thread's buffer for a decoded chunk, reused from chunk to chunk.
    static PLAIN: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Set-user-ID and set-group-ID bits are never restored on files: a data directory has no use
/// for them, and a hostile backup must not plant a set-uid file for whoever owns it.
const FILE_MODE_MASK: u32 = 0o1777;

/// Owner override for restored files (the user PostgreSQL will run as).
#[derive(Debug, Clone, Copy, Default)]
pub struct RestoreOwner {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// A file being written, and what it gets once its last chunk is in.
struct OpenFile {
    file: File,
    path: String,
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: i64,
}

impl OpenFile {
    /// Attributes, then fsync, so that they are durable too.
    fn finish(&self) -> Result<(), RepoError> {
        set_attrs(self.file.as_fd(), self.uid, self.gid, self.mode, self.mtime)
            .and_then(|()| self.file.sync_all())
            .map_err(|e| RepoError::io(self.path.clone(), e))
    }
}

/// A file's chunks to download, in order, and where each goes.
struct FileWork {
    file: OpenFile,
    chunks: Vec<(u64, ChunkId, usize)>,
}

impl Repository {
    /// Writes every file of backup `id` under `target`, which must be an empty directory (not a
    /// symlink to one) or absent. Zero chunks stay holes. Returns the manifest restored.
    pub async fn restore(
        &self,
        id: &str,
        target: &Path,
        owner: RestoreOwner,
        progress: Arc<Progress>,
    ) -> Result<BackupManifest, RepoError> {
        let manifest = self.load_manifest(id).await?;
        self.restore_manifest(&manifest, target, owner, progress)
            .await?;
        Ok(manifest)
    }

    pub(crate) async fn restore_manifest(
        &self,
        manifest: &BackupManifest,
        target: &Path,
        owner: RestoreOwner,
        progress: Arc<Progress>,
    ) -> Result<(), RepoError> {
        let shown = target.display().to_string();
        let io = |what: &str, e: std::io::Error| RepoError::io(format!("{shown}/{what}"), e);
        let root = open_target(target)?;

        // Directories by entry path, kept open: every child is made relative to one of them.
        let mut dirs: HashMap<&str, OwnedFd> = HashMap::new();
        // Files without data to write: they are finished with the directories.
        let mut empty_files: Vec<Option<OpenFile>> = Vec::new();
        empty_files.resize_with(manifest.entries.len(), || None);
        let mut work = Vec::new();
        for (index, e) in manifest.entries.iter().enumerate() {
            let parent = match e.path.parent() {
                None => &root,
                Some(p) => dirs.get(p).ok_or_else(|| {
                    RepoError::unsupported(
                        format!("{shown}/{}", e.path),
                        "its directory is not a directory of the backup",
                    )
                })?,
            };
            let name = e.path.name();
            match &e.kind {
                EntryKind::Dir => {
                    rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700))
                        .map_err(|err| io(&e.path, err.into()))?;
                    let fd = open_beneath(parent, name, OFlags::DIRECTORY | OFlags::RDONLY)
                        .map_err(|err| io(&e.path, err))?;
                    dirs.insert(&e.path, fd);
                }
                EntryKind::Symlink { target: t } => rustix::fs::symlinkat(t.as_str(), parent, name)
                    .map_err(|err| io(&e.path, err.into()))?,
                EntryKind::File { chunks } => {
                    let fd = rustix::fs::openat(
                        parent,
                        name,
                        OFlags::WRONLY
                            | OFlags::CREATE
                            | OFlags::EXCL
                            | OFlags::NOFOLLOW
                            | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o600),
                    )
                    .map_err(|err| io(&e.path, err.into()))?;
                    let file = File::from(fd);
                    file.set_len(e.size).map_err(|err| io(&e.path, err))?;
                    let f = OpenFile {
                        file,
                        path: format!("{shown}/{}", e.path),
                        uid: owner.uid.unwrap_or(e.uid),
                        gid: owner.gid.unwrap_or(e.gid),
                        mode: e.mode & FILE_MODE_MASK,
                        mtime: e.mtime,
                    };
                    let chunks: Vec<_> = chunks
                        .iter()
                        .enumerate()
                        .filter_map(|(i, c)| {
                            let offset = i as u64 * manifest.chunk_size;
                            c.map(|c| (offset, c, manifest.chunk_len(e.size, i as u64)))
                        })
                        .collect();
                    if chunks.is_empty() {
                        empty_files[index] = Some(f);
                    } else {
                        work.push(FileWork { file: f, chunks });
                    }
                }
            }
        }

        futures::stream::iter(work)
            .map(|w| self.restore_file(w, progress.clone()))
            .buffer_unordered(FILES_AT_ONCE)
            .try_collect::<()>()
            .await?;

        // Directories' attributes last: they may be read-only, and their mtimes would move.
        for (e, file) in manifest.entries.iter().zip(empty_files).rev() {
            let uid = owner.uid.unwrap_or(e.uid);
            let gid = owner.gid.unwrap_or(e.gid);
            let attrs = match (&e.kind, &file) {
                (EntryKind::File { .. }, Some(f)) => f.finish(),
                // Finished by its writer.
                (EntryKind::File { .. }, None) => Ok(()),
                (EntryKind::Symlink { .. }, _) => {
                    let parent = e.path.parent().map_or(&root, |p| &dirs[p]);
                    rustix::fs::chownat(
                        parent,
                        e.path.name(),
                        Some(Uid::from_raw_unchecked(uid)),
                        Some(Gid::from_raw_unchecked(gid)),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .map_err(|err| io(&e.path, err.into()))
                }
                (EntryKind::Dir, _) => set_attrs(dirs[&*e.path].as_fd(), uid, gid, e.mode, e.mtime)
                    .map_err(|err| io(&e.path, err)),
            };
            attrs?;
        }
        let uid = owner.uid.unwrap_or(manifest.root_uid);
        let gid = owner.gid.unwrap_or(manifest.root_gid);
        fchown(root.as_fd(), uid, gid)
            .and_then(|()| {
                rustix::fs::fchmod(&root, Mode::from_raw_mode(manifest.root_mode & 0o7777))
                    .map_err(Into::into)
            })
            .and_then(|()| rustix::fs::fsync(&root).map_err(Into::into))
            .map_err(|e| RepoError::io(shown, e))
    }

    /// Downloads a file's chunks, `CHUNKS_AHEAD` at a time, decodes and writes them in order on
    /// one thread (a chunk is written while it is still in that core's cache), then finishes the
    /// file (attributes, fsync) while other files still download.
    async fn restore_file(&self, work: FileWork, progress: Arc<Progress>) -> Result<(), RepoError> {
        let file = Arc::new(work.file);
        let joined = |e: tokio::task::JoinError| RepoError::io("restore", std::io::Error::other(e));
        // Tasks, so that downloads go on while the writer is busy.
        let mut fetched = futures::stream::iter(work.chunks)
            .map(|(offset, chunk, len)| {
                let repo = self.clone();
                tokio::spawn(async move {
                    let stored = repo.fetch_chunk_retrying(&chunk).await?;
                    Ok::<_, RepoError>((offset, chunk, len, stored))
                })
            })
            .buffered(CHUNKS_AHEAD);
        while let Some(next) = fetched.next().await {
            let (offset, chunk, len, stored) = next.map_err(joined)??;
            let (repo, file) = (self.clone(), file.clone());
            tokio::task::spawn_blocking(move || {
                PLAIN.with_borrow_mut(|plain| {
                    repo.decode_chunk_into(&chunk, stored, len, plain)?;
                    file.file
                        .write_all_at(plain, offset)
                        .map_err(|e| RepoError::io(file.path.clone(), e))
                })
            })
            .await
            .map_err(joined)??;
            progress.bytes_read.fetch_add(len as u64, Ordering::Relaxed);
        }
        tokio::task::spawn_blocking(move || file.finish())
            .await
            .map_err(joined)?
    }
}

/// Opens (or makes) the restore target: an empty directory, never through a symlink at its path.
fn open_target(target: &Path) -> Result<OwnedFd, RepoError> {
    let shown = target.display().to_string();
    let io = |e: std::io::Error| RepoError::io(shown.clone(), e);
    match fs::symlink_metadata(target) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(RepoError::unsupported(
                shown,
                "the restore target is a symbolic link; name the directory itself",
            ));
        }
        Ok(m) if !m.is_dir() => {
            return Err(RepoError::unsupported(
                shown,
                "the restore target is not a directory",
            ));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent).map_err(io)?;
            }
            // The data directory is PostgreSQL's alone; its mode is set from the backup at the end.
            rustix::fs::mkdir(target, Mode::from_raw_mode(0o700)).map_err(|e| io(e.into()))?;
        }
        Err(e) => return Err(io(e)),
    }
    let fd = rustix::fs::open(
        target,
        OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io(e.into()))?;
    let mut entries = rustix::fs::Dir::read_from(&fd).map_err(|e| io(e.into()))?;
    for entry in &mut entries {
        let entry = entry.map_err(|e| io(e.into()))?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            return Err(RepoError::unsupported(
                shown,
                "the restore target is not empty",
            ));
        }
    }
    Ok(fd)
}

/// Opens `name` in `dir` without following a symlink there.
fn open_beneath(dir: &OwnedFd, name: &str, flags: OFlags) -> std::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(Into::into)
}

fn fchown(fd: std::os::fd::BorrowedFd<'_>, uid: u32, gid: u32) -> std::io::Result<()> {
    rustix::fs::fchown(
        fd,
        Some(Uid::from_raw_unchecked(uid)),
        Some(Gid::from_raw_unchecked(gid)),
    )
    .map_err(Into::into)
}

/// Owner, then mode (chown clears set-id bits), then mtime, all through `fd`.
fn set_attrs(
    fd: std::os::fd::BorrowedFd<'_>,
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: i64,
) -> std::io::Result<()> {
    fchown(fd, uid, gid)?;
    rustix::fs::fchmod(fd, Mode::from_raw_mode(mode & 0o7777))?;
    let at = Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    rustix::fs::futimens(
        fd,
        &Timestamps {
            last_access: at,
            last_modification: at,
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::location::RepoLocation;
    use crate::manifest::{Entry, EntryPath, FORMAT_VERSION};

    fn entry(path: &str, kind: EntryKind) -> Entry {
        let size = match &kind {
            EntryKind::Symlink { target } => target.len() as u64,
            _ => 0,
        };
        Entry {
            path: EntryPath::new(path).unwrap(),
            kind,
            mode: 0o6755,
            uid: 0,
            gid: 0,
            size,
            mtime: 1_700_000_000,
        }
    }

    fn manifest(entries: Vec<Entry>) -> BackupManifest {
        BackupManifest {
            format_version: FORMAT_VERSION,
            id: "20261125T063512Z-3fa2".into(),
            created: time::OffsetDateTime::UNIX_EPOCH,
            ended: None,
            pg_version: "15".into(),
            system_identifier: "1".into(),
            start_lsn: "0/1".into(),
            stop_lsn: None,
            timeline: 1,
            total_size: 0,
            chunk_size: 64 * 1024,
            root_mode: 0o700,
            root_uid: 0,
            root_gid: 0,
            labels: Default::default(),
            entries,
        }
    }

    /// Every path below `dir` with its type, mode, owner and content, for before/after
    /// comparisons.
    fn snapshot(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let m = fs::symlink_metadata(&p).unwrap();
                use std::os::unix::fs::MetadataExt;
                let content = if m.is_file() {
                    fs::read(&p).unwrap().len().to_string()
                } else if m.file_type().is_symlink() {
                    fs::read_link(&p).unwrap().display().to_string()
                } else {
                    stack.push(p.clone());
                    String::new()
                };
                out.push(format!(
                    "{} {:o} {}:{} {content}",
                    p.display(),
                    m.mode(),
                    m.uid(),
                    m.gid()
                ));
            }
        }
        out.sort();
        out
    }

    /// Manifests that validation refuses reach the writer anyway here: the writer alone must
    /// keep everything inside the target.
    #[tokio::test]
    async fn a_hostile_manifest_writes_nothing_outside() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().join("repo").display());
        let repo = Repository::init(&RepoLocation::new(&url), 64 * 1024)
            .await
            .unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("canary"), b"keep").unwrap();
        let file = || EntryKind::File { chunks: vec![] };
        let link = |t: &Path| EntryKind::Symlink {
            target: t.display().to_string(),
        };
        let cases = vec![
            // A symlink to a directory outside, then a file "inside" it.
            vec![entry("lnk", link(&outside)), entry("lnk/f", file())],
            // A symlink, then a directory through it.
            vec![entry("lnk", link(&outside)), entry("lnk/d", EntryKind::Dir)],
            // A symlink to an outside file, then the same name as a file: O_EXCL|O_NOFOLLOW.
            vec![
                entry("lnk", link(&outside.join("canary"))),
                entry("lnk", file()),
            ],
            // A symlink to an outside directory, then the same name as a directory whose mode
            // and owner would be set through it.
            vec![entry("lnk", link(&outside)), entry("lnk", EntryKind::Dir)],
        ];
        for (i, entries) in cases.into_iter().enumerate() {
            let before = snapshot(dir.path());
            let target = dir.path().join(format!("target{i}"));
            let result = repo
                .restore_manifest(
                    &manifest(entries),
                    &target,
                    RestoreOwner::default(),
                    Arc::default(),
                )
                .await;
            assert!(result.is_err(), "case {i} was restored");
            let after: Vec<String> = snapshot(dir.path())
                .into_iter()
                .filter(|p| !p.starts_with(&target.display().to_string()))
                .collect();
            assert_eq!(
                after, before,
                "case {i} touched something outside its target"
            );
        }
    }

    #[tokio::test]
    async fn a_symlink_target_or_a_full_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        fs::create_dir(&real).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = open_target(&link).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        fs::write(real.join("x"), b"").unwrap();
        let err = open_target(&real).unwrap_err();
        assert!(err.to_string().contains("not empty"), "{err}");
        assert!(open_target(&dir.path().join("new/target")).is_ok());
    }

    #[tokio::test]
    async fn set_id_bits_are_dropped_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().join("repo").display());
        let repo = Repository::init(&RepoLocation::new(&url), 64 * 1024)
            .await
            .unwrap();
        let target = dir.path().join("t");
        let m = manifest(vec![
            entry("d", EntryKind::Dir),
            entry("d/f", EntryKind::File { chunks: vec![] }),
        ]);
        repo.restore_manifest(&m, &target, RestoreOwner::default(), Arc::default())
            .await
            .unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &str| fs::metadata(target.join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode("d/f"), 0o755);
        assert_eq!(mode("d"), 0o6755);
    }
}
