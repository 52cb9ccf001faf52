//! The source-walking side of an ingest: paths checked and placed, files cut into chunks, tar
//! streams and directories walked into the entries of a manifest.

use std::collections::{BTreeMap, HashSet};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::Path as FsPath;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::{PendingChunk, Progress};
use crate::chunk_id::ChunkId;
use crate::crypto::ObjectCodec;
use crate::error::RepoError;
use crate::manifest::{Entry, EntryKind, EntryPath};
use crate::pgmeta::{Captured, check_cold_copy, parse_pg_control};

/// Root directory mode when the source does not carry one (what initdb creates).
const DEFAULT_ROOT_MODE: u32 = 0o700;

#[derive(Debug, Clone, Copy)]
pub(super) struct Attrs {
    pub(super) mode: u32,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) mtime: i64,
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
pub(super) struct Walker {
    pub(super) url: String,
    /// Names the chunks as the repository does.
    pub(super) codec: ObjectCodec,
    pub(super) buf: Vec<u8>,
    pub(super) tx: mpsc::Sender<PendingChunk>,
    pub(super) progress: Arc<Progress>,
    /// Chunks already passed on by this ingest: each is stored once.
    pub(super) seen: HashSet<ChunkId>,
    /// Sorted by path, which puts parents before their children.
    pub(super) entries: BTreeMap<String, Entry>,
    pub(super) root: Option<Attrs>,
    pub(super) captured: Captured,
}

pub(super) struct Walked {
    pub(super) entries: Vec<Entry>,
    pub(super) root: Attrs,
    pub(super) captured: Captured,
    pub(super) total_size: u64,
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
        let id = self.codec.chunk_id(data);
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

    pub(super) fn finish(mut self) -> Walked {
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

pub(super) fn walk_tar(reader: impl Read, source: &str, w: &mut Walker) -> Result<(), RepoError> {
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

pub(super) fn walk_dir(root: &FsPath, w: &mut Walker) -> Result<(), RepoError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn walker(chunk_size: usize) -> (Walker, mpsc::Receiver<PendingChunk>) {
        let (tx, rx) = mpsc::channel(64);
        let w = Walker {
            url: "file:///test".to_string(),
            codec: ObjectCodec::default(),
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
}
