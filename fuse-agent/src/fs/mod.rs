//! The filesystem core: a backup's data directory, read-write, over an IRCache. Independent of
//! FUSE so that its logic is tested directly; `fuse.rs` is a thin adapter.
//!
//! A regular file's bytes are its base (the first `base_len` bytes of the backup file it started
//! as) overlaid with its data file in the cache (`data/<ino>`, same logical size, sparse). A block
//! below `base_len` comes from the data file once its bit is set in the file's `BlockMap`; every
//! byte at or past `base_len` comes from the data file. New files therefore live whole in the
//! cache, and a rewritten 8 KiB page of a backup file costs 8 KiB of cache.
//!
//! Durability: a dirty bit is persisted only after the data it covers was synced, so after a
//! crash a block reads either its last fsynced content or its base, never unsynced garbage.
//!
//! This module holds the state every part shares (nodes, the namespace, open files); each
//! submodule adds one job's operations and uses only those listed before it: `space` (a full
//! cache disk), `sync` (commits and fsync), `namespace` (directory entries and inodes), `handles`
//! (open files, readahead), `overlay` (file content: base and cache blocks, writes, truncation),
//! `open` (opening and checking a cache, populating a new one).

#[cfg(test)]
mod fixture;
mod handles;
mod namespace;
mod open;
mod overlay;
mod space;
mod sync;

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs::{self, File, Permissions};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ir_repository::{BackupManifest, ChunkId, Entry};

use crate::blockmap::BlockMap;
use crate::error::{FsError, FsResult};
use crate::meta::{InodeRecord, MetaStore, NodeKind};
use crate::stats::MountStats;

use space::Space;

pub const ROOT_INO: u64 = 1;

/// Attributes as the kernel sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: NodeKind,
    pub size: u64,
    /// 512-byte blocks the file takes in the cache (what `du` shows of the mount).
    pub blocks: u64,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
}

#[derive(Debug, Default, Clone)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub mtime: Option<SystemTime>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: NodeKind,
    pub name: OsString,
}

#[derive(Debug, Clone, Copy)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
}

/// Options for opening a cache.
#[derive(Debug, Clone, Default)]
pub struct CacheOptions {
    /// Owner given to the backup's files (the unprivileged PostgreSQL user).
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// URL of the repository, for messages.
    pub repository: String,
    /// `Repository::identity()`: a cache serves one repository's backup only.
    pub repository_id: String,
    /// The most chunks read ahead of a sequential reader.
    pub readahead_chunks: usize,
    /// Where the cache counts its ENOSPC refusals.
    pub stats: Arc<MountStats>,
}

/// Where the base content of a backup comes from. The filesystem only sees this trait, so its
/// logic can be tested against an in-memory source.
pub trait ChunkSource: Send + Sync {
    /// The plain bytes of chunk `id`, `len` bytes long, checked against its hash.
    fn fetch(&self, id: &ChunkId, len: usize) -> Result<Bytes, FetchError>;
    /// Starts fetching chunks likely to be read soon; returns at once.
    fn prefetch(&self, chunks: &[(ChunkId, usize)]);
}

/// Why a chunk could not be had (shared by every reader waiting on the same fetch).
pub type FetchError = Arc<dyn std::error::Error + Send + Sync>;

struct NodeState {
    rec: InodeRecord,
    data: Option<Arc<File>>,
    size: u64,
    blocks: BlockMap,
    open: u32,
    attrs_dirty: bool,
}

struct Node {
    ino: u64,
    /// Serialises snapshot-sync-commit of this node so bitmaps are persisted in order.
    sync_lock: Mutex<()>,
    st: RwLock<NodeState>,
}

/// The inode table and the directory entries, changed only once their commit succeeded.
struct Namespace {
    nodes: HashMap<u64, Arc<Node>>,
    children: HashMap<u64, BTreeMap<Vec<u8>, u64>>,
    next_ino: u64,
}

/// An open file: its node, where its last read ended (to tell sequential reads), and its
/// readahead window in chunks.
struct OpenFile {
    node: Arc<Node>,
    read_end: AtomicU64,
    window: AtomicU64,
}

pub struct IrFs {
    manifest: Arc<BackupManifest>,
    source: Arc<dyn ChunkSource>,
    readahead_chunks: usize,
    meta: MetaStore,
    cache_dir: PathBuf,
    data_dir: PathBuf,
    tmp_dir: PathBuf,
    ns: RwLock<Namespace>,
    handles: RwLock<HashMap<u64, Arc<OpenFile>>>,
    next_fh: AtomicU64,
    commit_lock: Mutex<()>,
    tmp_seq: AtomicU64,
    space: Space,
}

fn now() -> (i64, u32) {
    to_ts(SystemTime::now())
}

fn to_ts(t: SystemTime) -> (i64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => (-(e.duration().as_secs() as i64), 0),
    }
}

fn from_ts((s, n): (i64, u32)) -> SystemTime {
    if s >= 0 {
        UNIX_EPOCH + Duration::new(s as u64, n)
    } else {
        UNIX_EPOCH - Duration::from_secs(s.unsigned_abs())
    }
}

fn fsync_dir(path: &Path) -> std::io::Result<()> {
    File::open(path)?.sync_all()
}

/// Creates `dir` (and missing parents) readable by its owner only, or makes an existing one so:
/// the cache holds the database's pages, and other local users have no business there.
pub(crate) fn private_dir(dir: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    tighten(dir, fs::metadata(dir)?.permissions().mode(), 0o700)
}

/// Drops group and other permissions from `path` if it has any (caches made before files were
/// owner-only).
pub(crate) fn tighten(path: &Path, mode: u32, private: u32) -> std::io::Result<()> {
    if mode & 0o077 == 0 {
        return Ok(());
    }
    fs::set_permissions(path, Permissions::from_mode(private))
}

impl IrFs {
    pub fn manifest(&self) -> &BackupManifest {
        &self.manifest
    }

    fn node(&self, ino: u64) -> FsResult<Arc<Node>> {
        self.ns
            .read()
            .expect("namespace lock")
            .nodes
            .get(&ino)
            .cloned()
            .ok_or(FsError::NotFound)
    }

    fn handle(&self, fh: u64) -> FsResult<Arc<OpenFile>> {
        self.handles
            .read()
            .expect("handles lock")
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle)
    }

    /// The backup entry a file started as; checked at mount, so never missing here.
    fn base_entry(&self, origin: u32) -> FsResult<&Entry> {
        self.manifest
            .entries
            .get(origin as usize)
            .ok_or_else(|| FsError::Meta(format!("no backup entry {origin}")))
    }

    fn attr_of(ino: u64, st: &NodeState) -> Attr {
        let size = match st.rec.kind {
            NodeKind::Dir => 4096,
            NodeKind::Symlink => st.rec.target.as_ref().map_or(0, |t| t.len() as u64),
            NodeKind::File => st.size,
        };
        let blocks = match &st.data {
            Some(f) => f
                .metadata()
                .map(|m| std::os::unix::fs::MetadataExt::blocks(&m))
                .unwrap_or(0),
            None => size.div_ceil(512),
        };
        Attr {
            ino,
            kind: st.rec.kind,
            size,
            blocks,
            perm: st.rec.perm & 0o7777,
            uid: st.rec.uid,
            gid: st.rec.gid,
            nlink: st.rec.nlink,
            mtime: from_ts(st.rec.mtime),
            ctime: from_ts(st.rec.ctime),
        }
    }

    fn attr(node: &Node) -> Attr {
        Self::attr_of(node.ino, &node.st.read().expect("node lock"))
    }
}
