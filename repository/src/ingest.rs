//! Ingest: turn a tar stream, a directory or a live server into a backup.
//!
//! A blocking thread walks the source, cuts each file into fixed-size chunks as its data arrives,
//! hashes them and passes the ones not yet seen in this backup to the async side through a bounded
//! channel. The async side compresses (blocking pool) and uploads a bounded number of chunks at a
//! time, skipping those the repository already has. The manifest is written last, only when every
//! chunk is stored: an interrupted ingest leaves orphan chunks for `gc`, never a half backup.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path as FsPath, PathBuf};
use std::process::{Command, Stdio};
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

use crate::error::RepoError;
use crate::manifest::{BackupManifest, ChunkId, Entry, EntryKind, EntryPath, FORMAT_VERSION};
use crate::pgmeta::{Captured, check_cold_copy, format_lsn, parse_pg_control};
use crate::repo::{Repository, chunk_path};

/// Marker objects of ingests in progress (`ingests/<backup id>`), refreshed while they run so
/// that `gc` leaves their chunks alone.
pub(crate) const MARKERS_DIR: &str = "ingests";
pub(crate) const MARKER_REFRESH: Duration = Duration::from_secs(300);
/// Memory allowed for chunks between the reader and the store, in plain bytes.
const IN_FLIGHT_BYTES: u64 = 128 * 1024 * 1024;
const ZSTD_LEVEL: i32 = 3;
/// Root directory mode when the source does not carry one (what initdb creates).
const DEFAULT_ROOT_MODE: u32 = 0o700;

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

#[derive(Debug, Clone, Copy)]
struct Attrs {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
}

/// Where an entry of the source goes.
#[derive(Debug, PartialEq, Eq)]
enum Placement {
    Root,
    Skip,
    Entry(String),
}

/// Normalises a source path and decides whether it is backed up.
fn place(raw: &str) -> Result<Placement, RepoError> {
    let mut p = raw;
    while let Some(rest) = p.strip_prefix("./") {
        p = rest;
    }
    let p = p.trim_end_matches('/');
    if p.is_empty() || p == "." {
        return Ok(Placement::Root);
    }
    if p.starts_with('/') {
        return Err(RepoError::unsupported(
            raw,
            "absolute paths are not allowed",
        ));
    }
    if p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(RepoError::unsupported(
            raw,
            "path has '..', '.' or empty parts",
        ));
    }
    if p == "postmaster.pid" || p == "postmaster.opts" {
        return Ok(Placement::Skip);
    }
    if p.starts_with("pg_tblspc/") {
        return Err(RepoError::unsupported(
            raw,
            "tablespaces other than the default ones are not supported",
        ));
    }
    Ok(Placement::Entry(p.to_string()))
}

/// Reads `r` to its end in pieces of `buf.len()` bytes (all full but the last) and hands each to
/// `f`. Returns the number of bytes read.
fn read_chunks(
    r: &mut dyn Read,
    buf: &mut [u8],
    path: &str,
    mut f: impl FnMut(&[u8]) -> Result<(), RepoError>,
) -> Result<u64, RepoError> {
    let mut total = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match r.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(RepoError::io(path, e)),
            }
        }
        if filled == 0 {
            return Ok(total);
        }
        total += filled as u64;
        f(&buf[..filled])?;
        if filled < buf.len() {
            return Ok(total);
        }
    }
}

/// The source-walking side of an ingest (runs on a blocking thread).
struct Walker {
    url: String,
    buf: Vec<u8>,
    tx: mpsc::Sender<PendingChunk>,
    progress: Arc<Progress>,
    /// Chunks already passed on by this ingest: each is stored once.
    seen: HashSet<ChunkId>,
    /// Sorted by path, which puts parents before their children.
    entries: BTreeMap<String, Entry>,
    root: Option<Attrs>,
    captured: Captured,
}

struct Walked {
    entries: Vec<Entry>,
    root: Attrs,
    captured: Captured,
    total_size: u64,
}

impl Walker {
    fn insert(
        &mut self,
        path: String,
        kind: EntryKind,
        size: u64,
        a: Attrs,
    ) -> Result<(), RepoError> {
        let path = EntryPath::new(path).map_err(|e| RepoError::unsupported(e.path, e.reason))?;
        if self.entries.contains_key(path.as_str()) {
            return Err(RepoError::unsupported(path, "appears twice in the source"));
        }
        // Nothing may lie below a symlink or a file: a restore would write through the symlink.
        for ancestor in path.ancestors() {
            if let Some(e) = self.entries.get(ancestor)
                && !matches!(e.kind, EntryKind::Dir)
            {
                return Err(RepoError::unsupported(
                    path.as_str(),
                    format!("{ancestor} is not a directory in the source"),
                ));
            }
        }
        if !matches!(kind, EntryKind::Dir) {
            let below = format!("{path}/");
            if let Some((child, _)) = self.entries.range(below.clone()..).next()
                && child.starts_with(&below)
            {
                return Err(RepoError::unsupported(
                    child.as_str(),
                    format!("{path} is not a directory in the source"),
                ));
            }
        }
        let entry = Entry {
            path: path.clone(),
            kind,
            mode: a.mode & 0o7777,
            uid: a.uid,
            gid: a.gid,
            size,
            mtime: a.mtime,
        };
        self.entries.insert(path.into(), entry);
        Ok(())
    }

    fn add_dir(&mut self, raw: &str, a: Attrs) -> Result<(), RepoError> {
        match place(raw)? {
            Placement::Root => self.root = Some(a),
            Placement::Skip => {}
            Placement::Entry(path) => self.insert(path, EntryKind::Dir, 0, a)?,
        }
        Ok(())
    }

    fn add_symlink(&mut self, raw: &str, target: String, a: Attrs) -> Result<(), RepoError> {
        match place(raw)? {
            Placement::Root => Err(RepoError::unsupported(
                raw,
                "the data directory is a symlink",
            )),
            Placement::Skip => Ok(()),
            Placement::Entry(path) => {
                let size = target.len() as u64;
                self.insert(path, EntryKind::Symlink { target }, size, a)
            }
        }
    }

    fn add_file(&mut self, raw: &str, a: Attrs, r: &mut dyn Read) -> Result<(), RepoError> {
        let path = match place(raw)? {
            Placement::Root => {
                return Err(RepoError::unsupported(raw, "the data directory is a file"));
            }
            Placement::Skip => return Ok(()),
            Placement::Entry(path) => path,
        };
        let capture = Captured::wants(&path);
        if capture {
            self.captured.seen(&path);
        }
        let mut chunks = Vec::new();
        let mut buf = std::mem::take(&mut self.buf);
        let size = read_chunks(r, &mut buf, &path, |data| {
            Progress::add(&self.progress.bytes_read, data.len() as u64);
            if capture {
                self.captured.feed(&path, data);
            }
            chunks.push(self.chunk(data)?);
            Ok(())
        });
        self.buf = buf;
        let size = size?;
        self.insert(path, EntryKind::File { chunks }, size, a)
    }

    /// The chunk list slot for `data`, handing it to the store the first time it is seen.
    fn chunk(&mut self, data: &[u8]) -> Result<Option<ChunkId>, RepoError> {
        if data.iter().all(|&b| b == 0) {
            Progress::add(&self.progress.chunks_zero, 1);
            return Ok(None);
        }
        let id = ChunkId::of(data);
        if self.seen.insert(id) {
            let pending = PendingChunk {
                id,
                data: data.to_vec(),
            };
            self.tx
                .blocking_send(pending)
                .map_err(|_| RepoError::Aborted {
                    url: self.url.clone(),
                    reason: "chunk uploads stopped".to_string(),
                })?;
        } else {
            Progress::add(&self.progress.chunks_deduped, 1);
        }
        Ok(Some(id))
    }

    fn finish(mut self) -> Walked {
        let root = self.root.unwrap_or_else(|| {
            // Tar streams from pg_basebackup have no root entry: take the owner of PG_VERSION.
            let owner = self.entries.get("PG_VERSION");
            Attrs {
                mode: DEFAULT_ROOT_MODE,
                uid: owner.map_or(0, |e| e.uid),
                gid: owner.map_or(0, |e| e.gid),
                mtime: owner.map_or(0, |e| e.mtime),
            }
        });
        // A tar stream need not list every directory; give missing parents the root's attributes.
        let missing: Vec<String> = self
            .entries
            .keys()
            .flat_map(|p| p.match_indices('/').map(move |(i, _)| p[..i].to_string()))
            .filter(|parent| !self.entries.contains_key(parent))
            .collect();
        for parent in missing {
            let path = EntryPath::new(parent.clone()).expect("the parent of a valid path is valid");
            self.entries.entry(parent).or_insert(Entry {
                path,
                kind: EntryKind::Dir,
                mode: root.mode,
                uid: root.uid,
                gid: root.gid,
                size: 0,
                mtime: root.mtime,
            });
        }
        let entries: Vec<Entry> = self.entries.into_values().collect();
        let total_size = entries
            .iter()
            .filter(|e| matches!(e.kind, EntryKind::File { .. }))
            .map(|e| e.size)
            .sum();
        Walked {
            entries,
            root,
            captured: self.captured,
            total_size,
        }
    }
}

fn walk_tar(reader: impl Read, source: &str, w: &mut Walker) -> Result<(), RepoError> {
    let stream_err = |e: io::Error| RepoError::io(source, e);
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(stream_err)? {
        let mut entry = entry.map_err(stream_err)?;
        let path = entry.path().map_err(stream_err)?;
        let path = path
            .to_str()
            .ok_or_else(|| RepoError::unsupported(path.display().to_string(), "path is not UTF-8"))?
            .to_string();
        let h = entry.header();
        let ty = h.entry_type();
        let attrs = Attrs {
            mode: h.mode().map_err(stream_err)?,
            uid: h.uid().map_err(stream_err)? as u32,
            gid: h.gid().map_err(stream_err)? as u32,
            mtime: h.mtime().map_err(stream_err)? as i64,
        };
        if ty.is_file() || ty.is_contiguous() {
            w.add_file(&path, attrs, &mut entry)?;
        } else if ty.is_dir() {
            w.add_dir(&path, attrs)?;
        } else if ty.is_symlink() {
            let target = entry
                .link_name()
                .map_err(stream_err)?
                .and_then(|t| t.to_str().map(str::to_string))
                .ok_or_else(|| RepoError::unsupported(&path, "symlink without a UTF-8 target"))?;
            w.add_symlink(&path, target, attrs)?;
        } else if ty.is_pax_global_extensions() {
            continue;
        } else if ty.is_hard_link() {
            return Err(RepoError::unsupported(path, "hard links are not supported"));
        } else {
            return Err(RepoError::unsupported(
                path,
                format!("tar entry type {ty:?} is not supported"),
            ));
        }
    }
    // Read what follows the end-of-archive marker so the writer does not die of a broken pipe.
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(stream_err)?;
    Ok(())
}

fn fs_attrs(m: &std::fs::Metadata) -> Attrs {
    Attrs {
        mode: m.mode(),
        uid: m.uid(),
        gid: m.gid(),
        mtime: m.mtime(),
    }
}

fn walk_dir(root: &FsPath, w: &mut Walker) -> Result<(), RepoError> {
    let shown = |p: &FsPath| p.display().to_string();
    let meta = std::fs::metadata(root).map_err(|e| RepoError::io(shown(root), e))?;
    if !meta.is_dir() {
        return Err(RepoError::unsupported(shown(root), "not a directory"));
    }
    // Refuse a running cluster before reading anything.
    if !root.join("backup_label").exists() {
        let control_path = root.join("global/pg_control");
        match std::fs::read(&control_path) {
            Ok(bytes) => {
                let control = parse_pg_control(&bytes)
                    .map_err(|e| RepoError::unsupported(shown(&control_path), e))?;
                check_cold_copy(&control)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(RepoError::unsupported(
                    shown(root),
                    "no global/pg_control: not a PostgreSQL data directory",
                ));
            }
            Err(e) => return Err(RepoError::io(shown(&control_path), e)),
        }
    }
    w.add_dir(".", fs_attrs(&meta))?;
    walk_dir_at(root, "", w)
}

fn walk_dir_at(dir: &FsPath, rel: &str, w: &mut Walker) -> Result<(), RepoError> {
    let shown = |p: &FsPath| p.display().to_string();
    let mut names = std::fs::read_dir(dir)
        .and_then(|it| {
            it.map(|e| e.map(|e| e.file_name()))
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(|e| RepoError::io(shown(dir), e))?;
    names.sort();
    for name in names {
        let fs_path = dir.join(&name);
        let name = name
            .to_str()
            .ok_or_else(|| RepoError::unsupported(shown(&fs_path), "name is not UTF-8"))?;
        let rel_path = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        let mut meta =
            std::fs::symlink_metadata(&fs_path).map_err(|e| RepoError::io(shown(&fs_path), e))?;
        // `initdb -X` puts WAL elsewhere behind a pg_wal symlink; the backup needs its contents.
        if meta.file_type().is_symlink() && rel_path == "pg_wal" {
            meta = std::fs::metadata(&fs_path).map_err(|e| RepoError::io(shown(&fs_path), e))?;
        }
        let attrs = fs_attrs(&meta);
        let ft = meta.file_type();
        if ft.is_dir() {
            w.add_dir(&rel_path, attrs)?;
            walk_dir_at(&fs_path, &rel_path, w)?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&fs_path)
                .map_err(|e| RepoError::io(shown(&fs_path), e))?
                .to_str()
                .ok_or_else(|| RepoError::unsupported(shown(&fs_path), "target is not UTF-8"))?
                .to_string();
            w.add_symlink(&rel_path, target, attrs)?;
        } else if ft.is_file() {
            if place(&rel_path)? == Placement::Skip {
                continue;
            }
            let mut f =
                std::fs::File::open(&fs_path).map_err(|e| RepoError::io(shown(&fs_path), e))?;
            w.add_file(&rel_path, attrs, &mut f)?;
        } else {
            return Err(RepoError::unsupported(
                shown(&fs_path),
                "not a regular file, directory or symlink",
            ));
        }
    }
    Ok(())
}

/// `pg_basebackup` from `bindir` when given, else `PATH`, else the newest
/// `/usr/lib/postgresql/*/bin` (a newer pg_basebackup can copy an older server).
fn find_pg_basebackup(bindir: Option<&FsPath>) -> Result<PathBuf, RepoError> {
    const NAME: &str = "pg_basebackup";
    if let Some(dir) = bindir {
        let p = dir.join(NAME);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(RepoError::Spawn {
                program: p.display().to_string(),
                source: io::Error::new(io::ErrorKind::NotFound, "not found"),
            })
        };
    }
    let on_path = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join(NAME))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let mut versioned: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|it| {
            it.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let v = e.file_name().to_str()?.parse().ok()?;
                    Some((v, e.path().join("bin").join(NAME)))
                })
                .collect()
        })
        .unwrap_or_default();
    versioned.sort();
    on_path
        .into_iter()
        .chain(versioned.into_iter().rev().map(|(_, p)| p))
        .find(|p| p.is_file())
        .ok_or_else(|| RepoError::Spawn {
            program: NAME.to_string(),
            source: io::Error::new(
                io::ErrorKind::NotFound,
                "not on PATH nor in /usr/lib/postgresql/*/bin; name the directory (--pg-bindir)",
            ),
        })
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

/// What an ingest (or a repair) reads.
pub enum Source {
    /// A tar stream, e.g. the output of `pg_basebackup -Ft -X fetch -D -`.
    Tar(Box<dyn Read + Send>),
    /// A plain-format `pg_basebackup` directory or a cleanly shut down data directory.
    Dir(PathBuf),
    /// A live server, through `pg_basebackup`.
    Pg {
        conninfo: String,
        checkpoint: Checkpoint,
        /// Holds `pg_basebackup`; by default it is found on `PATH` or under /usr/lib/postgresql.
        pg_bindir: Option<PathBuf>,
    },
}

type Walk = Box<dyn FnOnce(&mut Walker) -> Result<(), RepoError> + Send>;

impl Source {
    fn into_walk(self) -> Result<Walk, RepoError> {
        Ok(match self {
            Source::Tar(reader) => Box::new(move |w| walk_tar(reader, "tar stream", w)),
            Source::Dir(dir) => Box::new(move |w| walk_dir(&dir, w)),
            Source::Pg {
                conninfo,
                checkpoint,
                pg_bindir,
            } => pg_walk(&conninfo, checkpoint, pg_bindir.as_deref())?,
        })
    }
}

/// Runs `pg_basebackup` against a live server and walks its output. `checkpoint` is
/// pg_basebackup's `-c`: `fast` starts at once, `spread` waits for a paced checkpoint (up to
/// `checkpoint_timeout * checkpoint_completion_target`, minutes by default). A password in
/// `conninfo` goes to `pg_basebackup` through its environment, never its arguments, which
/// every local user can read.
fn pg_walk(
    conninfo: &str,
    checkpoint: Checkpoint,
    pg_bindir: Option<&FsPath>,
) -> Result<Walk, RepoError> {
    let program = find_pg_basebackup(pg_bindir)?;
    let spawn_err = |source| RepoError::Spawn {
        program: program.display().to_string(),
        source,
    };
    let (conninfo, password) = crate::conninfo::take_password(conninfo)
        .map_err(|reason| RepoError::unsupported("--from-pg", reason))?;
    let mut command = Command::new(&program);
    command
        .args([
            "-Ft",
            "-X",
            "fetch",
            "-D",
            "-",
            "-c",
            checkpoint.as_arg(),
            "-d",
            &conninfo,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(password) = password {
        command.env("PGPASSWORD", password);
    }
    let mut child = command.spawn().map_err(spawn_err)?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text.trim().to_string()
    });
    Ok(Box::new(move |w| {
        let walked = walk_tar(stdout, "pg_basebackup output", w);
        // A broken stream is most likely pg_basebackup failing: its message is the useful
        // one. Any other error is ours, and pg_basebackup has to stop.
        if matches!(walked, Err(ref e) if !matches!(e, RepoError::Io { .. })) {
            let _ = child.kill();
        }
        let status = child.wait();
        let stderr = stderr_reader.join().unwrap_or_default();
        match status {
            Ok(s) if s.success() => walked,
            Ok(s) if walked.is_ok() || matches!(walked, Err(RepoError::Io { .. })) => {
                Err(RepoError::PgBasebackup {
                    status: s.to_string(),
                    stderr,
                })
            }
            Ok(_) => walked,
            Err(e) => Err(RepoError::io("pg_basebackup", e)),
        }
    }))
}

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
    /// Ingests a tar stream, e.g. the output of `pg_basebackup -Ft -X fetch -D -`.
    pub async fn ingest_tar<R: Read + Send + 'static>(
        &self,
        reader: R,
        progress: Arc<Progress>,
    ) -> Result<BackupManifest, RepoError> {
        self.ingest(Source::Tar(Box::new(reader)), progress).await
    }

    /// Ingests a plain-format `pg_basebackup` directory or a cleanly shut down data directory.
    pub async fn ingest_dir(
        &self,
        dir: &FsPath,
        progress: Arc<Progress>,
    ) -> Result<BackupManifest, RepoError> {
        self.ingest(Source::Dir(dir.to_path_buf()), progress).await
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
        self.ingest(source, progress).await
    }

    /// Makes a new backup of `source`.
    pub async fn ingest(
        &self,
        source: Source,
        progress: Arc<Progress>,
    ) -> Result<BackupManifest, RepoError> {
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
        let result = self.ingest_run(&id, created, walk, progress).await;
        drop(refresher);
        if let Err(e) = self.store().delete(&marker).await {
            tracing::warn!("cannot remove ingest marker {marker}: {e}");
        }
        result
    }

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

    /// Stores a chunk of this ingest. One already stored is reused only once it reads back as
    /// these very bytes: dedup must never make a new backup depend on a damaged object, and a
    /// damaged one is replaced on the way.
    async fn store_chunk(&self, c: PendingChunk, progress: &Progress) -> Result<(), RepoError> {
        let c = match self.fetch_chunk(&c.id).await {
            Ok(stored) => {
                let (c, verdict) = tokio::task::spawn_blocking(move || {
                    let verdict = decodes_to(&stored, &c.data);
                    (c, verdict)
                })
                .await
                .map_err(|e| RepoError::io("ingest", io::Error::other(e)))?;
                match verdict {
                    Ok(()) => {
                        Progress::add(&progress.chunks_deduped, 1);
                        return Ok(());
                    }
                    Err(reason) => {
                        tracing::warn!(chunk = %c.id, url = %self.url(), %reason, "a stored chunk is damaged; writing it again");
                        Progress::add(&progress.chunks_replaced, 1);
                        c
                    }
                }
            }
            Err(RepoError::MissingChunk { .. }) => c,
            Err(e) => return Err(e),
        };
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
            Err(RepoError::MissingChunk { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Compresses and writes a chunk, replacing whatever object has its name.
    pub(crate) async fn put_chunk(
        &self,
        c: PendingChunk,
        progress: &Progress,
    ) -> Result<(), RepoError> {
        let path = chunk_path(&c.id);
        let compressed =
            tokio::task::spawn_blocking(move || zstd::bulk::compress(&c.data, ZSTD_LEVEL))
                .await
                .map_err(|e| RepoError::io(path.to_string(), io::Error::other(e)))?
                .map_err(|e| RepoError::io(path.to_string(), e))?;
        let len = compressed.len() as u64;
        self.store()
            .put(&path, PutPayload::from(compressed))
            .await
            .map_err(|e| self.store_err(&path, e))?;
        Progress::add(&progress.chunks_new, 1);
        Progress::add(&progress.bytes_uploaded, len);
        Ok(())
    }
}

/// Whether a stored chunk object decompresses to exactly `plain`. Equal bytes have equal hashes,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn walker(chunk_size: usize) -> (Walker, mpsc::Receiver<PendingChunk>) {
        let (tx, rx) = mpsc::channel(64);
        let w = Walker {
            url: "file:///test".to_string(),
            buf: vec![0; chunk_size],
            tx,
            progress: Arc::new(Progress::default()),
            seen: HashSet::new(),
            entries: BTreeMap::new(),
            root: None,
            captured: Captured::default(),
        };
        (w, rx)
    }

    const A: Attrs = Attrs {
        mode: 0o100600,
        uid: 26,
        gid: 26,
        mtime: 1_700_000_000,
    };

    fn chunk_sizes(len: usize, chunk: usize) -> Vec<usize> {
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut sizes = Vec::new();
        let mut buf = vec![0; chunk];
        let total = read_chunks(&mut &data[..], &mut buf, "f", |c| {
            sizes.push(c.len());
            Ok(())
        })
        .unwrap();
        assert_eq!(total, len as u64);
        sizes
    }

    #[test]
    fn chunk_boundaries() {
        assert_eq!(chunk_sizes(0, 8), Vec::<usize>::new());
        assert_eq!(chunk_sizes(8, 8), vec![8]);
        assert_eq!(chunk_sizes(9, 8), vec![8, 1]);
        assert_eq!(chunk_sizes(20, 8), vec![8, 8, 4]);
        assert_eq!(chunk_sizes(16, 8), vec![8, 8]);
    }

    /// A reader that returns a few bytes at a time, as pipes do.
    struct Trickle<'a>(&'a [u8]);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.0.len()).min(3);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn file_chunks_zero_and_dedup() {
        let (mut w, mut rx) = walker(8);
        // chunk 0: data, chunk 1: zeros, chunk 2: same as 0, chunk 3: partial.
        let mut data = b"abcdefgh".to_vec();
        data.extend_from_slice(&[0; 8]);
        data.extend_from_slice(b"abcdefgh");
        data.extend_from_slice(b"xyz");
        w.add_file("./base/1/1234", A, &mut Trickle(&data)).unwrap();
        let walked = w.finish();
        let file = walked
            .entries
            .iter()
            .find(|e| e.path == "base/1/1234")
            .unwrap();
        let EntryKind::File { chunks } = &file.kind else {
            panic!("not a file")
        };
        let a = ChunkId::of(b"abcdefgh");
        assert_eq!(
            chunks,
            &vec![Some(a), None, Some(a), Some(ChunkId::of(b"xyz"))]
        );
        assert_eq!(file.size, 27);
        assert_eq!(file.mode, 0o600);
        assert_eq!(walked.total_size, 27);
        // Each distinct chunk is passed on once.
        assert_eq!(rx.try_recv().unwrap().data, b"abcdefgh");
        assert_eq!(rx.try_recv().unwrap().data, b"xyz");
        assert!(rx.try_recv().is_err());
        // Missing parents are made up, before their children.
        let paths: Vec<&str> = walked.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["base", "base/1", "base/1/1234"]);
    }

    #[test]
    fn placement() {
        assert_eq!(place("./").unwrap(), Placement::Root);
        assert_eq!(place(".").unwrap(), Placement::Root);
        assert_eq!(
            place("./base/1/").unwrap(),
            Placement::Entry("base/1".into())
        );
        assert_eq!(place("postmaster.pid").unwrap(), Placement::Skip);
        assert_eq!(
            place("pg_tblspc").unwrap(),
            Placement::Entry("pg_tblspc".into())
        );
        assert!(place("pg_tblspc/16384").is_err());
        assert!(place("base/../../etc").is_err());
        assert!(place("/etc/passwd").is_err());
        assert!(place("base//1").is_err());
    }

    #[test]
    fn duplicate_entries_are_refused() {
        let (mut w, _rx) = walker(8);
        w.add_dir("base", A).unwrap();
        assert!(w.add_dir("./base/", A).is_err());
    }

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

/// How the source server starts the backup's checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Checkpoint {
    #[default]
    Fast,
    Spread,
}

impl Checkpoint {
    fn as_arg(self) -> &'static str {
        match self {
            Checkpoint::Fast => "fast",
            Checkpoint::Spread => "spread",
        }
    }
}
