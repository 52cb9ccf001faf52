//! The fixture of the filesystem's tests: a small backup whose chunks come from memory.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use ir_e2e::pattern;
use ir_repository::{BackupManifest, ChunkId, Entry, EntryKind, EntryPath};
use time::OffsetDateTime;

use super::open::META_FILE;
use super::{CacheOptions, ChunkSource, FetchError, IrFs, ROOT_INO};
use crate::error::FsResult;
use crate::meta::MetaStore;

pub(super) const CS: u64 = 64 * 1024;

/// Test double: chunks from memory instead of a repository; `broken` chunks fail.
#[derive(Default)]
pub(super) struct MemSource {
    chunks: HashMap<ChunkId, Bytes>,
    pub(super) broken: HashSet<ChunkId>,
    pub(super) fetches: AtomicUsize,
}

impl ChunkSource for MemSource {
    fn fetch(&self, id: &ChunkId, len: usize) -> Result<Bytes, FetchError> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        if self.broken.contains(id) {
            return Err(Arc::from(Box::<dyn std::error::Error + Send + Sync>::from(
                "hash mismatch",
            )));
        }
        let b = self.chunks.get(id).cloned().expect("fixture chunk");
        assert_eq!(b.len(), len);
        Ok(b)
    }
    fn prefetch(&self, _chunks: &[(ChunkId, usize)]) {}
}

pub(super) struct Fixture {
    pub(super) dir: tempfile::TempDir,
    pub(super) manifest: Arc<BackupManifest>,
    pub(super) source: Arc<MemSource>,
    pub(super) rel: Vec<u8>,
}

fn file_entry(path: &str, data: &[u8], source: &mut MemSource) -> Entry {
    let chunks = data
        .chunks(CS as usize)
        .map(|c| {
            if c.iter().all(|b| *b == 0) {
                return None;
            }
            let id = ChunkId::of(c);
            source.chunks.insert(id, Bytes::copy_from_slice(c));
            Some(id)
        })
        .collect();
    Entry {
        path: EntryPath::new(path).unwrap(),
        kind: EntryKind::File { chunks },
        mode: 0o600,
        uid: 0,
        gid: 0,
        size: data.len() as u64,
        mtime: 1_700_000_000,
    }
}

fn dir_entry(path: &str) -> Entry {
    Entry {
        path: EntryPath::new(path).unwrap(),
        kind: EntryKind::Dir,
        mode: 0o700,
        uid: 0,
        gid: 0,
        size: 0,
        mtime: 1_700_000_000,
    }
}

/// base/1/rel: 3.5 chunks, the second all zeros; PG_VERSION; a symlink.
pub(super) fn fixture() -> Fixture {
    let mut source = MemSource::default();
    let mut rel = pattern((CS * 3 + CS / 2) as usize, 7);
    rel[CS as usize..(2 * CS) as usize].fill(0);
    let entries = vec![
        file_entry("PG_VERSION", b"15\n", &mut source),
        dir_entry("base"),
        dir_entry("base/1"),
        file_entry("base/1/rel", &rel, &mut source),
        Entry {
            path: EntryPath::new("link").unwrap(),
            kind: EntryKind::Symlink {
                target: "base/1".into(),
            },
            mode: 0o777,
            uid: 0,
            gid: 0,
            size: 6,
            mtime: 1_700_000_000,
        },
    ];
    let manifest = BackupManifest {
        format_version: 1,
        id: "20261125T000000Z-test".into(),
        created: OffsetDateTime::UNIX_EPOCH,
        ended: None,
        pg_version: "15".into(),
        system_identifier: "42".into(),
        start_lsn: "0/2000028".into(),
        stop_lsn: None,
        timeline: 1,
        total_size: rel.len() as u64 + 3,
        chunk_size: CS,
        root_mode: 0o700,
        root_uid: 0,
        root_gid: 0,
        labels: Default::default(),
        entries,
    };
    Fixture {
        dir: tempfile::tempdir().unwrap(),
        manifest: Arc::new(manifest),
        source: Arc::new(source),
        rel,
    }
}

impl Fixture {
    pub(super) fn options(&self) -> CacheOptions {
        CacheOptions {
            uid: Some(101),
            gid: Some(104),
            repository: "file:///test".into(),
            repository_id: "test-repository".into(),
            readahead_chunks: 0,
            stats: Arc::default(),
        }
    }

    pub(super) fn open(&self) -> FsResult<IrFs> {
        self.open_with(self.dir.path(), &self.options())
    }

    pub(super) fn open_with(&self, dir: &Path, opts: &CacheOptions) -> FsResult<IrFs> {
        IrFs::open_cache(dir, self.manifest.clone(), self.source.clone(), opts)
    }

    pub(super) fn open_for(&self, manifest: BackupManifest, repository_id: &str) -> FsResult<IrFs> {
        let opts = CacheOptions {
            repository_id: repository_id.into(),
            ..self.options()
        };
        IrFs::open_cache(
            self.dir.path(),
            Arc::new(manifest),
            self.source.clone(),
            &opts,
        )
    }

    pub(super) fn store(&self) -> MetaStore {
        MetaStore::open(&self.dir.path().join(META_FILE)).unwrap()
    }
}

pub(super) fn path_ino(fs: &IrFs, path: &str) -> u64 {
    path.split('/').fold(ROOT_INO, |dir, name| {
        fs.lookup(dir, OsStr::new(name)).unwrap().ino
    })
}

pub(super) fn read_all(fs: &IrFs, ino: u64) -> Vec<u8> {
    let fh = fs.open_file(ino).unwrap();
    let size = fs.getattr(ino).unwrap().size;
    let out = fs.read(fh, 0, size as u32 + 100).unwrap();
    fs.release(fh).unwrap();
    out.to_vec()
}
