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

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions, Permissions};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ir_repository::{BackupManifest, ChunkId, Entry, EntryKind};

use crate::blockmap::{BLOCK_SIZE, BlockMap};
use crate::error::{FsError, FsResult};
use crate::meta::{Batch, Binding, InodeRecord, MetaStore, NodeKind};
use crate::stats::MountStats;

pub const ROOT_INO: u64 = 1;
const META_FILE: &str = "ircache.redb";
const DATA_DIR: &str = "data";
const TMP_DIR: &str = "tmp";
const RESERVE_FILE: &str = "reserve";

/// Room kept back for the commits of operations that free space on a full cache disk: a
/// commit writes a few pages, so this covers hundreds of them.
const RESERVE_BYTES: u64 = 4 << 20;
/// Free space, besides a whole reserve, before a full cache disk takes writes again.
const HEADROOM_BYTES: u64 = 1 << 20;
/// How often a full cache disk is looked at again while operations are refused.
const RECHECK_MILLIS: u64 = 100;

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
    /// Chunks read ahead on sequential access.
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

struct Namespace {
    nodes: HashMap<u64, Arc<Node>>,
    children: HashMap<u64, BTreeMap<Vec<u8>, u64>>,
    next_ino: u64,
}

struct OpenFile {
    node: Arc<Node>,
    /// End of the previous read, to detect sequential access.
    read_end: AtomicU64,
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

/// Whether a commit needs room on the cache disk or is part of freeing some.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Room {
    Takes,
    Frees,
}

/// Room on the cache disk. A full disk must not wedge the cache: a reserve file keeps room for
/// the commits of operations that free space (unlink, rmdir, shrinking truncate, rename over a
/// file), and once an operation met ENOSPC the others are refused up front, without touching
/// the store, until the reserve is whole again with room left besides.
struct Space {
    cache_dir: PathBuf,
    reserve: PathBuf,
    full: AtomicBool,
    /// When free space was last looked at while full, in ms since `since`: refused writes cost
    /// no syscall between two looks.
    looked: AtomicU64,
    since: Instant,
    stats: Arc<MountStats>,
}

impl Space {
    fn new(cache_dir: &Path, stats: Arc<MountStats>) -> Self {
        Space {
            cache_dir: cache_dir.to_path_buf(),
            reserve: cache_dir.join(RESERVE_FILE),
            full: AtomicBool::new(false),
            looked: AtomicU64::new(0),
            since: Instant::now(),
            stats,
        }
    }

    fn is_full(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }

    /// Refuses an operation that needs room while the disk is known to be full.
    fn check(&self) -> FsResult<()> {
        if !self.is_full() || self.room_is_back(false) {
            return Ok(());
        }
        Err(FsError::CacheFull(self.cache_dir.clone()))
    }

    /// Whether a full disk has room again: the reserve could be made whole and headroom is
    /// left. Looks at most every `RECHECK_MILLIS` unless `now`.
    fn room_is_back(&self, now: bool) -> bool {
        let at = self.since.elapsed().as_millis() as u64;
        let last = self.looked.load(Ordering::Relaxed);
        if !now
            && (at.saturating_sub(last) < RECHECK_MILLIS
                || self
                    .looked
                    .compare_exchange(last, at, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err())
        {
            return false;
        }
        if self.fill_reserve().is_err() {
            return false;
        }
        match free_bytes(&self.cache_dir) {
            Ok(free) if free >= HEADROOM_BYTES => {}
            _ => return false,
        }
        if self.full.swap(false, Ordering::Relaxed) {
            tracing::info!(cache = %self.cache_dir.display(), "the cache disk has room again: writes are accepted");
        }
        true
    }

    /// After an operation freed space: writes may resume at once.
    fn freed(&self) {
        if self.is_full() {
            self.room_is_back(true);
        }
    }

    /// Passes `result` on; an ENOSPC marks the disk full and is counted.
    fn note<T>(&self, result: FsResult<T>) -> FsResult<T> {
        if let Err(e) = &result
            && e.errno() == libc::ENOSPC
        {
            self.stats.enospc_refusals.fetch_add(1, Ordering::Relaxed);
            self.mark_full();
        }
        result
    }

    fn mark_full(&self) {
        if !self.full.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                cache = %self.cache_dir.display(),
                "the cache disk is full: operations that need room get ENOSPC until some is made; unlink, rmdir, shrinking truncate and rename over a file still work"
            );
        }
    }

    /// Gives the reserve file its whole size.
    fn fill_reserve(&self) -> std::io::Result<()> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&self.reserve)?;
        // SAFETY: plain syscall on an fd we own for the duration of the call.
        let ret = unsafe {
            libc::posix_fallocate(
                std::os::fd::AsRawFd::as_raw_fd(&file),
                0,
                RESERVE_BYTES as libc::off_t,
            )
        };
        match ret {
            0 => Ok(()),
            errno => Err(std::io::Error::from_raw_os_error(errno)),
        }
    }

    /// Hands the reserve's room over to the commit that follows; whether there was any.
    fn release_reserve(&self) -> bool {
        let released = OpenOptions::new()
            .write(true)
            .open(&self.reserve)
            .and_then(|f| {
                let had = f.metadata()?.len() > 0;
                f.set_len(0)?;
                Ok(had)
            });
        match released {
            Ok(had) => had,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => {
                tracing::warn!(path = %self.reserve.display(), error = %e, "could not release the cache's reserve");
                false
            }
        }
    }

    /// Runs `work` (a commit that must not fail for lack of room); on ENOSPC, once more with
    /// the reserve's room.
    fn with_reserve<T>(&self, work: impl Fn() -> FsResult<T>) -> FsResult<T> {
        if self.is_full() {
            self.release_reserve();
        }
        match work() {
            Err(e) if e.errno() == libc::ENOSPC && self.release_reserve() => {
                self.mark_full();
                work()
            }
            result => result,
        }
    }
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

fn split_path(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("", path),
    }
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

fn is_empty_dir(dir: &Path) -> std::io::Result<bool> {
    match fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e),
    }
}

/// The path of `ino` in the namespace, for messages.
fn path_of(dentries: &[(u64, Vec<u8>, u64)], ino: u64) -> String {
    let mut names = Vec::new();
    let mut at = ino;
    while at != ROOT_INO && names.len() < 256 {
        let Some((parent, name, _)) = dentries.iter().find(|d| d.2 == at) else {
            break;
        };
        names.push(String::from_utf8_lossy(name).into_owned());
        at = *parent;
    }
    names.reverse();
    names.join("/")
}

/// Refuses a cache made for another backup, cluster or repository.
fn check_binding(cache_dir: &Path, found: &Binding, wanted: &Binding) -> FsResult<()> {
    let mut differs = Vec::new();
    if found.backup_id != wanted.backup_id {
        differs.push("backup id");
    }
    if found.system_identifier != wanted.system_identifier {
        differs.push("system identifier");
    }
    // Caches made before the repository's identity was recorded can only be checked on the rest.
    if found
        .repository_id
        .as_ref()
        .is_some_and(|id| Some(id) != wanted.repository_id.as_ref())
    {
        differs.push("repository");
    }
    if differs.is_empty() {
        return Ok(());
    }
    let describe = |b: &Binding| {
        format!(
            "backup {} (system identifier {}, repository {} at {})",
            b.backup_id,
            b.system_identifier,
            b.repository_id
                .as_deref()
                .unwrap_or("of unrecorded identity"),
            b.repository
        )
    };
    Err(FsError::Foreign {
        cache: cache_dir.to_path_buf(),
        found: describe(found),
        wanted: describe(wanted),
        differs: differs.join(", "),
    })
}

impl IrFs {
    /// Opens the IRCache in `cache_dir` for `manifest`, creating it on first use. A cache made for
    /// another backup is refused, and so is a cache that lost its metadata store or a data file:
    /// its writes would read back as the backup's bytes or as zeros.
    pub fn open_cache(
        cache_dir: &Path,
        manifest: Arc<BackupManifest>,
        source: Arc<dyn ChunkSource>,
        opts: &CacheOptions,
    ) -> FsResult<IrFs> {
        let data_dir = cache_dir.join(DATA_DIR);
        let tmp_dir = cache_dir.join(TMP_DIR);
        let meta_path = cache_dir.join(META_FILE);
        private_dir(cache_dir)?;
        let lost = |reason: &str| FsError::Lost {
            cache: cache_dir.to_path_buf(),
            missing: meta_path.clone(),
            reason: reason.to_string(),
        };
        // `data/` is made only once the store holds the binding, so it never exists without one.
        let has_store = match fs::metadata(&meta_path) {
            // Empty: its creation was cut short.
            Ok(m) => m.len() > 0,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(e.into()),
        };
        if !has_store && data_dir.try_exists()? {
            return Err(lost(
                "the metadata store is gone while data/ shows the cache was in use",
            ));
        }
        if tmp_dir.exists() {
            fs::remove_dir_all(&tmp_dir)?;
        }
        private_dir(&tmp_dir)?;
        let space = Space::new(cache_dir, opts.stats.clone());
        if let Err(e) = space.fill_reserve() {
            if e.raw_os_error() != Some(libc::ENOSPC) {
                return Err(e.into());
            }
            space.mark_full();
        }
        // Opening checks the file and commits: on a full disk, with the reserve's room.
        let meta = if has_store {
            space.with_reserve(|| MetaStore::open(&meta_path))?
        } else {
            MetaStore::create(&meta_path)?
        };
        let mut snap = meta.load()?;
        let wanted = Binding {
            backup_id: manifest.id.clone(),
            system_identifier: manifest.system_identifier.clone(),
            repository: opts.repository.clone(),
            repository_id: Some(opts.repository_id.clone()),
        };
        match &snap.binding {
            Some(found) => {
                check_binding(cache_dir, found, &wanted)?;
                if found.repository_id.is_none() {
                    let batch = Batch {
                        binding: Some(wanted),
                        ..Default::default()
                    };
                    space.with_reserve(|| meta.commit(&batch))?;
                }
            }
            None => {
                if !is_empty_dir(&data_dir)? {
                    return Err(lost(
                        "the metadata store was made anew (it holds no binding) while data/ holds data files",
                    ));
                }
                // New (or never completed) cache: the whole namespace of the backup, in one commit.
                meta.commit(&populate(&manifest, opts, wanted))?;
                snap = meta.load()?;
            }
        }
        private_dir(&data_dir)?;
        fsync_dir(cache_dir)?;

        let mut blocks: HashMap<u64, BlockMap> = HashMap::new();
        for (ino, group, bytes) in &snap.block_groups {
            if !blocks.entry(*ino).or_default().load_group(*group, bytes) {
                return Err(FsError::Meta(format!(
                    "corrupt record: dirty-block bitmap {group} of inode {ino} is {} bytes long",
                    bytes.len()
                )));
            }
        }
        if let Some(last) = snap.inodes.iter().map(|(ino, _)| *ino).max()
            && snap.next_ino <= last
        {
            return Err(FsError::Meta(format!(
                "corrupt record: next inode number {} is not past inode {last}",
                snap.next_ino
            )));
        }
        let mut ns = Namespace {
            nodes: HashMap::new(),
            children: HashMap::new(),
            next_ino: snap.next_ino,
        };
        let mut orphans = Vec::new();
        for (ino, mut rec) in snap.inodes {
            if rec.nlink == 0 {
                // Unlinked while open when the previous mount ended.
                let _ = fs::remove_file(data_dir.join(ino.to_string()));
                orphans.push(ino);
                continue;
            }
            let base_size = match rec.origin {
                Some(i) => match manifest.entries.get(i as usize) {
                    Some(e) if matches!(e.kind, EntryKind::File { .. }) => Some(e.size),
                    _ => {
                        return Err(FsError::Meta(format!(
                            "corrupt record: inode {ino} ({}) starts as entry {i} of backup {}, which has no such file",
                            path_of(&snap.dentries, ino),
                            manifest.id
                        )));
                    }
                },
                None => None,
            };
            let data_path = data_dir.join(ino.to_string());
            let data = match OpenOptions::new().read(true).write(true).open(&data_path) {
                Ok(f) => {
                    let m = f.metadata()?;
                    if m.permissions().mode() & 0o077 != 0 {
                        f.set_permissions(Permissions::from_mode(0o600))?;
                    }
                    Some((Arc::new(f), m.len()))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    // Dirty bits are persisted only after their data was synced, so they also
                    // tell of a data file in caches older than `has_data`.
                    if rec.has_data == Some(true) || blocks.contains_key(&ino) {
                        return Err(FsError::Lost {
                            cache: cache_dir.to_path_buf(),
                            missing: data_path,
                            reason: format!(
                                "the data file of {} (inode {ino}), which holds its writes, is gone",
                                path_of(&snap.dentries, ino)
                            ),
                        });
                    }
                    None
                }
                Err(e) => return Err(e.into()),
            };
            let size = match &data {
                Some((_, len)) => *len,
                None => base_size.unwrap_or(0),
            };
            // A data file in data/ was made durable before it got there; records of older
            // caches learn it with their next commit.
            let attrs_dirty = data.is_some() && rec.has_data != Some(true);
            if attrs_dirty {
                rec.has_data = Some(true);
            }
            if rec.kind == NodeKind::Dir {
                ns.children.entry(ino).or_default();
            }
            let node = Node {
                ino,
                sync_lock: Mutex::new(()),
                st: RwLock::new(NodeState {
                    blocks: blocks.remove(&ino).unwrap_or_default(),
                    rec,
                    data: data.map(|(f, _)| f),
                    size,
                    open: 0,
                    attrs_dirty,
                }),
            };
            ns.nodes.insert(ino, Arc::new(node));
        }
        for (parent, name, ino) in snap.dentries {
            if ns.nodes.contains_key(&ino) {
                ns.children.entry(parent).or_default().insert(name, ino);
            }
        }
        // Data files whose inode never became durable.
        for f in fs::read_dir(&data_dir)? {
            let f = f?;
            let known = f
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|ino| ns.nodes.contains_key(&ino));
            if !known {
                fs::remove_file(f.path())?;
            }
        }
        if !orphans.is_empty() {
            let batch = Batch {
                removed_inodes: orphans,
                ..Default::default()
            };
            space.with_reserve(|| meta.commit(&batch))?;
        }
        if !ns.nodes.contains_key(&ROOT_INO) {
            return Err(FsError::Meta("cache has no root directory".into()));
        }

        Ok(IrFs {
            manifest,
            source,
            readahead_chunks: opts.readahead_chunks,
            meta,
            cache_dir: cache_dir.to_path_buf(),
            data_dir,
            tmp_dir,
            ns: RwLock::new(ns),
            handles: RwLock::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            commit_lock: Mutex::new(()),
            tmp_seq: AtomicU64::new(0),
            space,
        })
    }

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

    /// Commits `batch` plus the current records of `nodes`, durably. Records are read under the
    /// commit lock, so the last commit always carries the newest record. A commit that takes
    /// room is refused while the disk is full; one that frees room may use the reserve.
    fn persist(&self, nodes: &[&Arc<Node>], mut batch: Batch, room: Room) -> FsResult<()> {
        if room == Room::Takes {
            self.space.check()?;
        }
        let _g = self.commit_lock.lock().expect("commit lock");
        batch.inodes.extend(Self::records(nodes));
        match room {
            Room::Takes => self.meta.commit(&batch),
            Room::Frees => self.space.with_reserve(|| self.meta.commit(&batch)),
        }
    }

    /// Like `persist`, without waiting for the disk: records and removals at close.
    fn persist_lazy(&self, nodes: &[&Arc<Node>], removed: &[u64], room: Room) -> FsResult<()> {
        if room == Room::Takes {
            self.space.check()?;
        }
        let _g = self.commit_lock.lock().expect("commit lock");
        self.meta.commit_lazy(&Self::records(nodes), removed)
    }

    fn records(nodes: &[&Arc<Node>]) -> Vec<(u64, InodeRecord)> {
        nodes
            .iter()
            .map(|n| (n.ino, n.st.read().expect("node lock").rec.clone()))
            .collect()
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<Attr> {
        let ns = self.ns.read().expect("namespace lock");
        let dir = ns.children.get(&parent).ok_or(FsError::NotDir)?;
        let ino = dir.get(name.as_bytes()).ok_or(FsError::NotFound)?;
        let node = ns.nodes.get(ino).ok_or(FsError::NotFound)?;
        Ok(Self::attr(node))
    }

    pub fn getattr(&self, ino: u64) -> FsResult<Attr> {
        Ok(Self::attr(&*self.node(ino)?))
    }

    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        let node = self.node(ino)?;
        let st = node.st.read().expect("node lock");
        st.rec
            .target
            .as_ref()
            .map(|t| t.as_bytes().to_vec())
            .ok_or(FsError::Invalid("not a symbolic link"))
    }

    pub fn readdir(&self, ino: u64) -> FsResult<Vec<DirEntry>> {
        let ns = self.ns.read().expect("namespace lock");
        let children = ns.children.get(&ino).ok_or(FsError::NotDir)?;
        let parent = ns
            .nodes
            .get(&ino)
            .map(|n| n.st.read().expect("node lock").rec.parent)
            .unwrap_or(ROOT_INO);
        let mut out = vec![
            DirEntry {
                ino,
                kind: NodeKind::Dir,
                name: ".".into(),
            },
            DirEntry {
                ino: parent.max(ROOT_INO),
                kind: NodeKind::Dir,
                name: "..".into(),
            },
        ];
        for (name, child) in children {
            if let Some(n) = ns.nodes.get(child) {
                out.push(DirEntry {
                    ino: *child,
                    kind: n.st.read().expect("node lock").rec.kind,
                    name: OsString::from_vec(name.clone()),
                });
            }
        }
        Ok(out)
    }

    fn new_node(&self, parent: u64, name: &OsStr, rec: InodeRecord) -> FsResult<Arc<Node>> {
        let mut ns = self.ns.write().expect("namespace lock");
        let dir = ns.children.get(&parent).ok_or(FsError::NotDir)?;
        if dir.contains_key(name.as_bytes()) {
            return Err(FsError::Exists);
        }
        let ino = ns.next_ino;
        let kind = rec.kind;
        let node = Arc::new(Node {
            ino,
            sync_lock: Mutex::new(()),
            st: RwLock::new(NodeState {
                rec,
                data: None,
                size: 0,
                blocks: BlockMap::default(),
                open: 0,
                attrs_dirty: false,
            }),
        });
        let parent_node = ns.nodes.get(&parent).cloned().ok_or(FsError::NotFound)?;
        let parent_times = touch(&parent_node);
        let batch = Batch {
            dentries: vec![(parent, name.as_bytes().to_vec(), ino)],
            next_ino: Some(ino + 1),
            ..Default::default()
        };
        if let Err(e) = self.persist(&[&node, &parent_node], batch, Room::Takes) {
            untouch(&parent_node, parent_times);
            return Err(e);
        }
        ns.next_ino = ino + 1;
        ns.nodes.insert(ino, node.clone());
        ns.children
            .get_mut(&parent)
            .expect("checked above")
            .insert(name.as_bytes().to_vec(), ino);
        if kind == NodeKind::Dir {
            ns.children.insert(ino, BTreeMap::new());
        }
        Ok(node)
    }

    fn record(kind: NodeKind, perm: u32, uid: u32, gid: u32, parent: u64) -> InodeRecord {
        let t = now();
        InodeRecord {
            kind,
            perm: perm & 0o7777,
            uid,
            gid,
            nlink: 1,
            mtime: t,
            ctime: t,
            origin: None,
            base_len: 0,
            parent,
            target: None,
            has_data: Some(false),
        }
    }

    pub fn mkdir(
        &self,
        parent: u64,
        name: &OsStr,
        perm: u32,
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        let rec = Self::record(NodeKind::Dir, perm, uid, gid, parent);
        let node = self.space.note(self.new_node(parent, name, rec))?;
        Ok(Self::attr(&node))
    }

    pub fn mknod(
        &self,
        parent: u64,
        name: &OsStr,
        perm: u32,
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        let rec = Self::record(NodeKind::File, perm, uid, gid, 0);
        let node = self.space.note(self.new_node(parent, name, rec))?;
        Ok(Self::attr(&node))
    }

    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        perm: u32,
        uid: u32,
        gid: u32,
    ) -> FsResult<(Attr, u64)> {
        let attr = self.mknod(parent, name, perm, uid, gid)?;
        let fh = self.open_file(attr.ino)?;
        Ok((attr, fh))
    }

    pub fn symlink(
        &self,
        parent: u64,
        name: &OsStr,
        target: &Path,
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        let mut rec = Self::record(NodeKind::Symlink, 0o777, uid, gid, 0);
        rec.target = Some(
            target
                .to_str()
                .ok_or(FsError::Invalid("symlink target is not UTF-8"))?
                .to_string(),
        );
        let node = self.space.note(self.new_node(parent, name, rec))?;
        Ok(Self::attr(&node))
    }

    pub fn link(&self, ino: u64, newparent: u64, newname: &OsStr) -> FsResult<Attr> {
        self.space.note(self.link_inner(ino, newparent, newname))
    }

    fn link_inner(&self, ino: u64, newparent: u64, newname: &OsStr) -> FsResult<Attr> {
        let mut ns = self.ns.write().expect("namespace lock");
        let node = ns.nodes.get(&ino).cloned().ok_or(FsError::NotFound)?;
        let dir_node = ns.nodes.get(&newparent).cloned().ok_or(FsError::NotFound)?;
        let dir = ns.children.get(&newparent).ok_or(FsError::NotDir)?;
        if dir.contains_key(newname.as_bytes()) {
            return Err(FsError::Exists);
        }
        let ctime = {
            let mut st = node.st.write().expect("node lock");
            if st.rec.kind == NodeKind::Dir {
                return Err(FsError::Unsupported("hard link to a directory"));
            }
            st.rec.nlink += 1;
            std::mem::replace(&mut st.rec.ctime, now())
        };
        let dir_times = touch(&dir_node);
        let batch = Batch {
            dentries: vec![(newparent, newname.as_bytes().to_vec(), ino)],
            ..Default::default()
        };
        if let Err(e) = self.persist(&[&node, &dir_node], batch, Room::Takes) {
            let mut st = node.st.write().expect("node lock");
            st.rec.nlink -= 1;
            st.rec.ctime = ctime;
            drop(st);
            untouch(&dir_node, dir_times);
            return Err(e);
        }
        ns.children
            .get_mut(&newparent)
            .expect("checked above")
            .insert(newname.as_bytes().to_vec(), ino);
        Ok(Self::attr(&node))
    }

    /// Drops one link of `node`; returns whether it is gone for good and can be purged now, and
    /// what undoes the change.
    fn drop_link(node: &Arc<Node>) -> (bool, Undo) {
        let mut st = node.st.write().expect("node lock");
        let undo = Undo {
            nlink: st.rec.nlink,
            ctime: st.rec.ctime,
        };
        st.rec.nlink = st.rec.nlink.saturating_sub(1);
        st.rec.ctime = now();
        (st.rec.nlink == 0 && st.open == 0, undo)
    }

    fn remove_entry(&self, parent: u64, name: &OsStr, want_dir: bool) -> FsResult<()> {
        let mut ns = self.ns.write().expect("namespace lock");
        let dir = ns.children.get(&parent).ok_or(FsError::NotDir)?;
        let ino = *dir.get(name.as_bytes()).ok_or(FsError::NotFound)?;
        let node = ns.nodes.get(&ino).cloned().ok_or(FsError::NotFound)?;
        let parent_node = ns.nodes.get(&parent).cloned().ok_or(FsError::NotFound)?;
        let is_dir = node.st.read().expect("node lock").rec.kind == NodeKind::Dir;
        match (want_dir, is_dir) {
            (true, false) => return Err(FsError::NotDir),
            (false, true) => return Err(FsError::IsDir),
            (true, true) if ns.children.get(&ino).is_some_and(|c| !c.is_empty()) => {
                return Err(FsError::NotEmpty);
            }
            _ => {}
        }
        let (purge, undo) = Self::drop_link(&node);
        let gone = purge || is_dir;
        let parent_times = touch(&parent_node);
        let mut batch = Batch {
            removed_dentries: vec![(parent, name.as_bytes().to_vec())],
            ..Default::default()
        };
        let result = if gone {
            batch.removed_inodes.push(ino);
            self.persist(&[&parent_node], batch, Room::Frees)
        } else {
            self.persist(&[&node, &parent_node], batch, Room::Frees)
        };
        if let Err(e) = result {
            undo.apply(&node);
            untouch(&parent_node, parent_times);
            return Err(e);
        }
        ns.children
            .get_mut(&parent)
            .expect("checked")
            .remove(name.as_bytes());
        if gone {
            ns.nodes.remove(&ino);
            ns.children.remove(&ino);
            drop(ns);
            self.remove_data(ino);
        }
        self.space.freed();
        Ok(())
    }

    fn remove_data(&self, ino: u64) {
        let path = self.data_dir.join(ino.to_string());
        if let Err(e) = fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "could not remove a data file; it is reclaimed at the next mount");
        }
    }

    pub fn unlink(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        self.space.note(self.remove_entry(parent, name, false))
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        self.space.note(self.remove_entry(parent, name, true))
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        noreplace: bool,
    ) -> FsResult<()> {
        self.space
            .note(self.rename_inner(parent, name, newparent, newname, noreplace))
    }

    fn rename_inner(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        noreplace: bool,
    ) -> FsResult<()> {
        let mut ns = self.ns.write().expect("namespace lock");
        let src_dir = ns.children.get(&parent).ok_or(FsError::NotDir)?;
        let ino = *src_dir.get(name.as_bytes()).ok_or(FsError::NotFound)?;
        let dst_dir = ns.children.get(&newparent).ok_or(FsError::NotDir)?;
        let existing = dst_dir.get(newname.as_bytes()).copied();
        if existing == Some(ino) {
            return Ok(());
        }
        let node = ns.nodes.get(&ino).cloned().ok_or(FsError::NotFound)?;
        let is_dir = node.st.read().expect("node lock").rec.kind == NodeKind::Dir;
        if is_dir {
            // A directory may not move below itself.
            let mut p = newparent;
            while p != ROOT_INO {
                if p == ino {
                    return Err(FsError::Invalid("cannot move a directory into itself"));
                }
                p = ns
                    .nodes
                    .get(&p)
                    .map_or(ROOT_INO, |n| n.st.read().expect("node lock").rec.parent);
            }
        }
        let mut victim = None;
        if let Some(old) = existing {
            if noreplace {
                return Err(FsError::Exists);
            }
            let old_node = ns.nodes.get(&old).cloned().ok_or(FsError::NotFound)?;
            let old_is_dir = old_node.st.read().expect("node lock").rec.kind == NodeKind::Dir;
            match (is_dir, old_is_dir) {
                (true, false) => return Err(FsError::NotDir),
                (false, true) => return Err(FsError::IsDir),
                (true, true) if ns.children.get(&old).is_some_and(|c| !c.is_empty()) => {
                    return Err(FsError::NotEmpty);
                }
                _ => {}
            }
            let (purge, undo) = Self::drop_link(&old_node);
            victim = Some((old_node.clone(), purge || old_is_dir, undo));
        }
        let (old_parent_of_dir, ctime) = {
            let mut st = node.st.write().expect("node lock");
            let ctime = std::mem::replace(&mut st.rec.ctime, now());
            let p = st.rec.parent;
            if is_dir {
                st.rec.parent = newparent;
            }
            (p, ctime)
        };
        let parent_node = ns.nodes.get(&parent).cloned().ok_or(FsError::NotFound)?;
        let newparent_node = ns.nodes.get(&newparent).cloned().ok_or(FsError::NotFound)?;
        let parent_times = touch(&parent_node);
        let newparent_times = touch(&newparent_node);
        let mut batch = Batch {
            removed_dentries: vec![(parent, name.as_bytes().to_vec())],
            dentries: vec![(newparent, newname.as_bytes().to_vec(), ino)],
            ..Default::default()
        };
        let mut nodes = vec![&node, &parent_node, &newparent_node];
        if let Some((v, gone, _)) = &victim {
            if *gone {
                batch.removed_inodes.push(v.ino);
            } else {
                nodes.push(v);
            }
        }
        // Replacing a file is how a file's space is given back, so it works on a full disk.
        let room = if victim.is_some() {
            Room::Frees
        } else {
            Room::Takes
        };
        if let Err(e) = self.persist(&nodes, batch, room) {
            if let Some((v, _, undo)) = &victim {
                undo.apply(v);
            }
            {
                let mut st = node.st.write().expect("node lock");
                st.rec.ctime = ctime;
                st.rec.parent = old_parent_of_dir;
            }
            untouch(&newparent_node, newparent_times);
            untouch(&parent_node, parent_times);
            return Err(e);
        }
        ns.children
            .get_mut(&parent)
            .expect("checked")
            .remove(name.as_bytes());
        ns.children
            .get_mut(&newparent)
            .expect("checked")
            .insert(newname.as_bytes().to_vec(), ino);
        if let Some((v, gone, _)) = victim {
            if gone {
                ns.nodes.remove(&v.ino);
                ns.children.remove(&v.ino);
                drop(ns);
                self.remove_data(v.ino);
            }
            self.space.freed();
        }
        Ok(())
    }

    pub fn open_file(&self, ino: u64) -> FsResult<u64> {
        let node = self.node(ino)?;
        {
            let mut st = node.st.write().expect("node lock");
            match st.rec.kind {
                NodeKind::Dir => return Err(FsError::IsDir),
                NodeKind::Symlink => return Err(FsError::Invalid("cannot open a symbolic link")),
                NodeKind::File => st.open += 1,
            }
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.write().expect("handles lock").insert(
            fh,
            Arc::new(OpenFile {
                node,
                read_end: AtomicU64::new(u64::MAX),
            }),
        );
        Ok(fh)
    }

    pub fn release(&self, fh: u64) -> FsResult<()> {
        self.space.note(self.release_inner(fh))
    }

    fn release_inner(&self, fh: u64) -> FsResult<()> {
        let Some(of) = self.handles.write().expect("handles lock").remove(&fh) else {
            return Err(FsError::BadHandle);
        };
        let node = of.node.clone();
        let (purge, attrs_dirty) = {
            let mut st = node.st.write().expect("node lock");
            st.open = st.open.saturating_sub(1);
            let dirty = std::mem::take(&mut st.attrs_dirty);
            (st.rec.nlink == 0 && st.open == 0, dirty)
        };
        if purge {
            self.ns
                .write()
                .expect("namespace lock")
                .nodes
                .remove(&node.ino);
            // Its unlink made nlink 0 durable, so the data file can go first: on a full disk
            // that gives the room back even if the removal of the record cannot be committed
            // (the next mount reclaims it).
            self.remove_data(node.ino);
            self.space.freed();
            self.persist_lazy(&[], &[node.ino], Room::Frees)?;
        } else if attrs_dirty && let Err(e) = self.persist_lazy(&[&node], &[], Room::Takes) {
            node.st.write().expect("node lock").attrs_dirty = true;
            return Err(e);
        }
        Ok(())
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Bytes> {
        let of = self.handle(fh)?;
        let st = of.node.st.read().expect("node lock");
        let end = offset.saturating_add(size as u64).min(st.size);
        if offset >= end {
            return Ok(Bytes::new());
        }
        // Sequential enough: this read starts in or next to the chunk where the last one ended
        // (the kernel's own readahead reorders requests, so an exact match is too strict). Read
        // ahead once per chunk the reader enters, not on every read within it.
        let previous_end = of.read_end.swap(end, Ordering::Relaxed);
        let cs = self.manifest.chunk_size;
        let sequential = offset == 0 || (previous_end / cs).abs_diff(offset / cs) <= 1;
        let enters_chunk = previous_end.saturating_sub(1) / cs != (end - 1) / cs;
        if sequential && enters_chunk {
            self.readahead(&st, end);
        }
        if let Some(bytes) = self.read_within_chunk(&st, offset, end)? {
            return Ok(bytes);
        }
        let mut buf = vec![0u8; (end - offset) as usize];
        self.read_into(&st, offset, &mut buf)?;
        Ok(Bytes::from(buf))
    }

    /// The common cold read: unchanged backup bytes inside one stored chunk are answered with a
    /// slice of the cached chunk, without copying them.
    fn read_within_chunk(&self, st: &NodeState, offset: u64, end: u64) -> FsResult<Option<Bytes>> {
        let cs = self.manifest.chunk_size;
        let Some(origin) = st.rec.origin else {
            return Ok(None);
        };
        if end > st.rec.base_len
            || offset / cs != (end - 1) / cs
            || (offset / BLOCK_SIZE..=(end - 1) / BLOCK_SIZE).any(|b| st.blocks.is_dirty(b))
        {
            return Ok(None);
        }
        let entry = self.base_entry(origin)?;
        let EntryKind::File { chunks } = &entry.kind else {
            return Ok(None);
        };
        let ci = offset / cs;
        let Some(id) = chunks.get(ci as usize).copied().flatten() else {
            return Ok(None);
        };
        let chunk_len = self.manifest.chunk_len(entry.size, ci);
        let bytes = self.fetch_chunk(entry, offset, id, chunk_len)?;
        let within = (offset - ci * cs) as usize;
        Ok(Some(bytes.slice(within..within + (end - offset) as usize)))
    }

    /// The backup entry a file started as; checked at mount, so never missing here.
    fn base_entry(&self, origin: u32) -> FsResult<&Entry> {
        self.manifest
            .entries
            .get(origin as usize)
            .ok_or_else(|| FsError::Meta(format!("no backup entry {origin}")))
    }

    fn fetch_chunk(&self, entry: &Entry, offset: u64, id: ChunkId, len: usize) -> FsResult<Bytes> {
        self.source.fetch(&id, len).map_err(|e| {
            tracing::error!(file = %entry.path, offset, chunk = %id, error = %e, "cannot read backup data");
            FsError::Chunk {
                path: entry.path.to_string(),
                offset,
                chunk: id,
                reason: e.to_string(),
            }
        })
    }

    fn readahead(&self, st: &NodeState, from: u64) {
        let (Some(origin), n) = (st.rec.origin, self.readahead_chunks) else {
            return;
        };
        if n == 0 || from >= st.rec.base_len {
            return;
        }
        let Ok(entry) = self.base_entry(origin) else {
            return;
        };
        let EntryKind::File { chunks } = &entry.kind else {
            return;
        };
        let cs = self.manifest.chunk_size;
        let first = from / cs;
        let last = (st.rec.base_len.div_ceil(cs)).min(first + n as u64);
        let wanted: Vec<_> = (first..last)
            .filter_map(|ci| {
                let len = self.manifest.chunk_len(entry.size, ci);
                chunks
                    .get(ci as usize)
                    .copied()
                    .flatten()
                    .map(|id| (id, len))
            })
            .collect();
        if !wanted.is_empty() {
            self.source.prefetch(&wanted);
        }
    }

    /// Fills `buf` with the file's bytes from `offset`; `buf` must end within the file.
    fn read_into(&self, st: &NodeState, offset: u64, buf: &mut [u8]) -> FsResult<()> {
        let end = offset + buf.len() as u64;
        let base_len = st.rec.base_len;
        let Some(origin) = st.rec.origin.filter(|_| offset < base_len) else {
            return read_data(st, offset, buf);
        };
        let from_base = |pos: u64| pos < base_len && !st.blocks.is_dirty(pos / BLOCK_SIZE);
        let mut pos = offset;
        while pos < end {
            let base = from_base(pos);
            let mut run_end = ((pos / BLOCK_SIZE + 1) * BLOCK_SIZE).min(end);
            while run_end < end && from_base(run_end) == base {
                run_end = ((run_end / BLOCK_SIZE + 1) * BLOCK_SIZE).min(end);
            }
            let slice = &mut buf[(pos - offset) as usize..(run_end - offset) as usize];
            if base {
                let base_stop = run_end.min(base_len);
                let (b, d) = slice.split_at_mut((base_stop - pos) as usize);
                self.read_base(origin, pos, b)?;
                read_data(st, base_stop, d)?;
            } else {
                read_data(st, pos, slice)?;
            }
            pos = run_end;
        }
        Ok(())
    }

    fn read_base(&self, origin: u32, offset: u64, buf: &mut [u8]) -> FsResult<()> {
        let entry = self.base_entry(origin)?;
        let EntryKind::File { chunks } = &entry.kind else {
            return Err(FsError::Invalid("base entry is not a file"));
        };
        let cs = self.manifest.chunk_size;
        let mut pos = offset;
        let mut filled = 0usize;
        while filled < buf.len() {
            let ci = pos / cs;
            let chunk_start = ci * cs;
            let chunk_len = self.manifest.chunk_len(entry.size, ci);
            let within = (pos - chunk_start) as usize;
            let n = (buf.len() - filled).min(chunk_len - within);
            match chunks.get(ci as usize).copied().flatten() {
                None => buf[filled..filled + n].fill(0),
                Some(id) => {
                    let bytes = self.fetch_chunk(entry, pos, id, chunk_len)?;
                    buf[filled..filled + n].copy_from_slice(&bytes[within..within + n]);
                }
            }
            pos += n as u64;
            filled += n;
        }
        Ok(())
    }

    /// Gives a file its data file, sized like the file, made durable before first use. The
    /// record then says so, so that a data file lost later is an error, not zeros.
    fn materialize(&self, ino: u64, st: &mut NodeState) -> FsResult<Arc<File>> {
        if let Some(f) = &st.data {
            return Ok(f.clone());
        }
        let tmp = self.tmp_dir.join(format!(
            "{ino}.{}",
            self.tmp_seq.fetch_add(1, Ordering::Relaxed)
        ));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.set_len(st.size)?;
        file.sync_all()?;
        fs::rename(&tmp, self.data_dir.join(ino.to_string()))?;
        fsync_dir(&self.data_dir)?;
        let file = Arc::new(file);
        st.data = Some(file.clone());
        st.rec.has_data = Some(true);
        st.attrs_dirty = true;
        Ok(file)
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<usize> {
        self.space.note(self.write_inner(fh, offset, data))
    }

    fn write_inner(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<usize> {
        self.space.check()?;
        let of = self.handle(fh)?;
        let mut st = of.node.st.write().expect("node lock");
        let file = self.materialize(of.node.ino, &mut st)?;
        let written = self.write_blocks(&mut st, &file, offset, data);
        if written.is_err() {
            // A write cut short may have grown the data file, whose length is the file's size.
            let _ = file.set_len(st.size);
        }
        written?;
        let end = offset + data.len() as u64;
        st.size = st.size.max(end);
        let t = now();
        st.rec.mtime = t;
        st.rec.ctime = t;
        st.attrs_dirty = true;
        Ok(data.len())
    }

    fn write_blocks(
        &self,
        st: &mut NodeState,
        file: &File,
        offset: u64,
        data: &[u8],
    ) -> FsResult<()> {
        let end = offset + data.len() as u64;
        let base_len = st.rec.base_len;
        if !data.is_empty() && offset < base_len {
            // Blocks partly covered by the write keep their other bytes: copy those from the
            // current content first, so the whole block can then be read from the cache.
            let head = offset / BLOCK_SIZE;
            if !offset.is_multiple_of(BLOCK_SIZE) && !st.blocks.is_dirty(head) {
                let start = head * BLOCK_SIZE;
                let mut keep = vec![0u8; (offset - start) as usize];
                self.read_into(st, start, &mut keep)?;
                file.write_all_at(&keep, start)?;
            }
            let tail = (end - 1) / BLOCK_SIZE;
            let tail_stop = ((tail + 1) * BLOCK_SIZE).min(st.size);
            if end < tail_stop && tail * BLOCK_SIZE < base_len && !st.blocks.is_dirty(tail) {
                let mut keep = vec![0u8; (tail_stop - end) as usize];
                self.read_into(st, end, &mut keep)?;
                file.write_all_at(&keep, end)?;
            }
            file.write_all_at(data, offset)?;
            let last_base_block = (base_len - 1) / BLOCK_SIZE;
            st.blocks.mark_range(head, tail.min(last_base_block));
        } else {
            file.write_all_at(data, offset)?;
        }
        Ok(())
    }

    pub fn setattr(&self, ino: u64, set: &SetAttr) -> FsResult<Attr> {
        self.space.note(self.setattr_inner(ino, set))
    }

    fn setattr_inner(&self, ino: u64, set: &SetAttr) -> FsResult<Attr> {
        let node = self.node(ino)?;
        let _sync = node.sync_lock.lock().expect("sync lock");
        let (old_rec, old_size) = {
            let st = node.st.read().expect("node lock");
            (st.rec.clone(), st.size)
        };
        // Shrinking gives room back, so it works on a full disk; anything else needs room.
        let room = if set.size.is_some_and(|size| size < old_size) {
            Room::Frees
        } else {
            Room::Takes
        };
        if room == Room::Takes {
            self.space.check()?;
        }
        {
            let mut st = node.st.write().expect("node lock");
            if let Some(size) = set.size {
                if st.rec.kind != NodeKind::File {
                    return Err(FsError::IsDir);
                }
                let file = self.materialize(ino, &mut st)?;
                file.set_len(size)?;
                st.size = size;
                if size < st.rec.base_len {
                    st.rec.base_len = size;
                    st.blocks.clear_from(size.div_ceil(BLOCK_SIZE));
                }
                st.rec.mtime = now();
            }
            if let Some(mode) = set.mode {
                st.rec.perm = mode & 0o7777;
            }
            if let Some(uid) = set.uid {
                st.rec.uid = uid;
            }
            if let Some(gid) = set.gid {
                st.rec.gid = gid;
            }
            if let Some(m) = set.mtime {
                st.rec.mtime = to_ts(m);
            }
            st.rec.ctime = now();
            st.attrs_dirty = true;
        }
        if let Err(e) = self.sync_node(&node, false, room) {
            // Undone unless it shrank the file, whose cut bytes are gone.
            if room == Room::Takes {
                let mut st = node.st.write().expect("node lock");
                if let Some(f) = st.data.as_ref().filter(|_| st.size != old_size) {
                    let _ = f.set_len(old_size);
                }
                let has_data = st.rec.has_data;
                st.rec = InodeRecord {
                    has_data,
                    ..old_rec
                };
                st.size = old_size;
            }
            return Err(e);
        }
        if room == Room::Frees {
            self.space.freed();
        }
        Ok(Self::attr(&node))
    }

    pub fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> FsResult<()> {
        self.space
            .note(self.fallocate_inner(fh, offset, length, mode))
    }

    fn fallocate_inner(&self, fh: u64, offset: u64, length: u64, mode: i32) -> FsResult<()> {
        if mode & !libc::FALLOC_FL_KEEP_SIZE != 0 {
            return Err(FsError::Unsupported("fallocate mode"));
        }
        self.space.check()?;
        let of = self.handle(fh)?;
        let mut st = of.node.st.write().expect("node lock");
        let file = self.materialize(of.node.ino, &mut st)?;
        let ret = unsafe {
            // SAFETY: plain syscall on an fd we own for the duration of the call.
            libc::fallocate(
                std::os::fd::AsRawFd::as_raw_fd(&*file),
                mode,
                offset as libc::off_t,
                length as libc::off_t,
            )
        };
        if ret != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        if mode & libc::FALLOC_FL_KEEP_SIZE == 0 {
            st.size = st.size.max(offset + length);
            st.attrs_dirty = true;
        }
        Ok(())
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> FsResult<()> {
        let of = self.handle(fh)?;
        let _sync = of.node.sync_lock.lock().expect("sync lock");
        self.space
            .note(self.sync_node(&of.node, datasync, Room::Takes))
    }

    /// Makes everything written to `node` so far durable. Caller holds `node.sync_lock`.
    fn sync_node(&self, node: &Arc<Node>, datasync: bool, room: Room) -> FsResult<()> {
        let (file, groups, attrs_dirty) = {
            let mut st = node.st.write().expect("node lock");
            let groups = st.blocks.take_unsynced();
            (st.data.clone(), groups, std::mem::take(&mut st.attrs_dirty))
        };
        let restore = |e: FsError| {
            let mut st = node.st.write().expect("node lock");
            st.blocks.restore_unsynced(groups.iter().map(|g| g.0));
            st.attrs_dirty |= attrs_dirty;
            e
        };
        if let Some(f) = &file {
            let synced = if datasync {
                f.sync_data()
            } else {
                f.sync_all()
            };
            synced.map_err(|e| restore(e.into()))?;
        }
        if groups.is_empty() && !attrs_dirty {
            return Ok(());
        }
        let batch = Batch {
            block_groups: groups
                .iter()
                .map(|(g, b)| (node.ino, *g, b.clone()))
                .collect(),
            ..Default::default()
        };
        self.persist(&[node], batch, room).map_err(restore)
    }

    /// Directory entries are committed durably when they change, so this only flushes what
    /// non-durable commits (attributes at close) left behind, if any.
    pub fn fsyncdir(&self) -> FsResult<()> {
        if !self.meta.has_lazy() {
            return Ok(());
        }
        self.space
            .note(self.persist(&[], Batch::default(), Room::Takes))
    }

    pub fn statfs(&self) -> FsResult<StatFs> {
        let st = nix_statvfs(&self.cache_dir)?;
        let files = self.ns.read().expect("namespace lock").nodes.len() as u64;
        Ok(StatFs {
            blocks: st.0,
            bfree: st.1,
            bavail: st.2,
            files: files + st.3,
            ffree: st.3,
            bsize: st.4,
        })
    }

    /// Writes every attribute change to disk (at unmount).
    pub fn flush_all(&self) -> FsResult<()> {
        let nodes: Vec<_> = self
            .ns
            .read()
            .expect("namespace lock")
            .nodes
            .values()
            .cloned()
            .collect();
        // Every node, even after a failure: one full disk should not cost the others.
        let mut first_error = None;
        for node in nodes {
            let _sync = node.sync_lock.lock().expect("sync lock");
            if let Err(e) = self.space.note(self.sync_node(&node, false, Room::Takes)) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Times of a directory before an entry changed, to undo a change that could not be committed.
type Times = ((i64, u32), (i64, u32));

fn touch(dir: &Node) -> Times {
    let mut st = dir.st.write().expect("node lock");
    let t = now();
    (
        std::mem::replace(&mut st.rec.mtime, t),
        std::mem::replace(&mut st.rec.ctime, t),
    )
}

fn untouch(dir: &Node, (mtime, ctime): Times) {
    let mut st = dir.st.write().expect("node lock");
    st.rec.mtime = mtime;
    st.rec.ctime = ctime;
}

/// What `drop_link` changed.
struct Undo {
    nlink: u32,
    ctime: (i64, u32),
}

impl Undo {
    fn apply(&self, node: &Node) {
        let mut st = node.st.write().expect("node lock");
        st.rec.nlink = self.nlink;
        st.rec.ctime = self.ctime;
    }
}

fn read_data(st: &NodeState, offset: u64, buf: &mut [u8]) -> FsResult<()> {
    let Some(file) = &st.data else {
        buf.fill(0);
        return Ok(());
    };
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => {
                // Past the end of the data file: a hole.
                buf[done..].fill(0);
                break;
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Bytes an unprivileged user may still write on the filesystem holding `path`.
fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let (_, _, bavail, _, bsize) = nix_statvfs(path)?;
    Ok(bavail.saturating_mul(u64::from(bsize)))
}

/// (blocks, bfree, bavail, ffree, bsize) of the filesystem holding `path`.
fn nix_statvfs(path: &Path) -> std::io::Result<(u64, u64, u64, u64, u32)> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `s` a properly sized out-parameter.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((
        s.f_blocks,
        s.f_bfree,
        s.f_bavail,
        s.f_ffree,
        s.f_frsize as u32,
    ))
}

/// The backup's whole namespace as the first commit of a new cache. Inode numbers follow the
/// manifest order (root 1, entry i is i + 2), so they are stable for a given backup.
fn populate(manifest: &BackupManifest, opts: &CacheOptions, binding: Binding) -> Batch {
    let owner = |uid: u32, gid: u32| (opts.uid.unwrap_or(uid), opts.gid.unwrap_or(gid));
    let (ruid, rgid) = owner(manifest.root_uid, manifest.root_gid);
    let created = now();
    let mut batch = Batch {
        binding: Some(binding),
        next_ino: Some(manifest.entries.len() as u64 + 2),
        ..Default::default()
    };
    batch.inodes.push((
        ROOT_INO,
        InodeRecord {
            kind: NodeKind::Dir,
            perm: manifest.root_mode & 0o7777,
            uid: ruid,
            gid: rgid,
            nlink: 1,
            mtime: created,
            ctime: created,
            origin: None,
            base_len: 0,
            parent: ROOT_INO,
            target: None,
            has_data: Some(false),
        },
    ));
    let mut dirs: HashMap<&str, u64> = HashMap::from([("", ROOT_INO)]);
    for (i, e) in manifest.entries.iter().enumerate() {
        let ino = i as u64 + 2;
        let (parent_path, name) = split_path(&e.path);
        let Some(&parent) = dirs.get(parent_path) else {
            tracing::warn!(path = %e.path, "backup entry without a parent directory; left out");
            continue;
        };
        let (uid, gid) = owner(e.uid, e.gid);
        let (kind, origin, base_len, target) = match &e.kind {
            EntryKind::Dir => {
                dirs.insert(e.path.as_str(), ino);
                (NodeKind::Dir, None, 0, None)
            }
            EntryKind::File { .. } => (NodeKind::File, Some(i as u32), e.size, None),
            EntryKind::Symlink { target } => (NodeKind::Symlink, None, 0, Some(target.clone())),
        };
        batch.inodes.push((
            ino,
            InodeRecord {
                kind,
                perm: e.mode & 0o7777,
                uid,
                gid,
                nlink: 1,
                mtime: (e.mtime, 0),
                ctime: (e.mtime, 0),
                origin,
                base_len,
                parent: if kind == NodeKind::Dir { parent } else { 0 },
                target,
                has_data: Some(false),
            },
        ));
        batch.dentries.push((parent, name.as_bytes().to_vec(), ino));
    }
    batch
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::atomic::AtomicUsize;

    use time::OffsetDateTime;

    use super::*;
    use ir_repository::EntryPath;

    const CS: u64 = 64 * 1024;

    /// Test double: chunks from memory instead of a repository; `broken` chunks fail.
    #[derive(Default)]
    struct MemSource {
        chunks: HashMap<ChunkId, Bytes>,
        broken: HashSet<ChunkId>,
        fetches: AtomicUsize,
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

    fn pattern(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    struct Fixture {
        dir: tempfile::TempDir,
        manifest: Arc<BackupManifest>,
        source: Arc<MemSource>,
        rel: Vec<u8>,
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
    fn fixture() -> Fixture {
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
        fn options(&self) -> CacheOptions {
            CacheOptions {
                uid: Some(101),
                gid: Some(104),
                repository: "file:///test".into(),
                repository_id: "test-repository".into(),
                readahead_chunks: 0,
                stats: Arc::default(),
            }
        }

        fn open(&self) -> FsResult<IrFs> {
            self.open_with(self.dir.path(), &self.options())
        }

        fn open_with(&self, dir: &Path, opts: &CacheOptions) -> FsResult<IrFs> {
            IrFs::open_cache(dir, self.manifest.clone(), self.source.clone(), opts)
        }

        fn open_for(&self, manifest: BackupManifest, repository_id: &str) -> FsResult<IrFs> {
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

        fn store(&self) -> MetaStore {
            MetaStore::open(&self.dir.path().join(META_FILE)).unwrap()
        }
    }

    fn path_ino(fs: &IrFs, path: &str) -> u64 {
        path.split('/').fold(ROOT_INO, |dir, name| {
            fs.lookup(dir, OsStr::new(name)).unwrap().ino
        })
    }

    fn read_all(fs: &IrFs, ino: u64) -> Vec<u8> {
        let fh = fs.open_file(ino).unwrap();
        let size = fs.getattr(ino).unwrap().size;
        let out = fs.read(fh, 0, size as u32 + 100).unwrap();
        fs.release(fh).unwrap();
        out.to_vec()
    }

    #[test]
    fn presents_the_backup() {
        let f = fixture();
        let fs = f.open().unwrap();
        let root = fs.getattr(ROOT_INO).unwrap();
        assert_eq!(
            (root.kind, root.uid, root.gid, root.perm),
            (NodeKind::Dir, 101, 104, 0o700)
        );
        let rel = path_ino(&fs, "base/1/rel");
        assert_eq!(read_all(&fs, rel), f.rel);
        assert_eq!(fs.readlink(path_ino(&fs, "link")).unwrap(), b"base/1");
        let names: Vec<_> = fs
            .readdir(ROOT_INO)
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, [".", "..", "PG_VERSION", "base", "link"]);
        // Unaligned read across the zero chunk and two stored chunks.
        let fh = fs.open_file(rel).unwrap();
        let got = fs.read(fh, CS - 100, (CS + 200) as u32).unwrap();
        assert_eq!(got, f.rel[(CS - 100) as usize..(2 * CS + 100) as usize]);
        // Reads past the end are short.
        assert!(fs.read(fh, f.rel.len() as u64, 10).unwrap().is_empty());
    }

    #[test]
    fn partial_block_write_keeps_the_rest_of_the_block() {
        let f = fixture();
        let fs = f.open().unwrap();
        let rel = path_ino(&fs, "base/1/rel");
        let fh = fs.open_file(rel).unwrap();
        fs.write(fh, 8192 + 100, b"hello").unwrap();
        let mut want = f.rel.clone();
        want[8292..8297].copy_from_slice(b"hello");
        assert_eq!(read_all(&fs, rel), want);
        let node = fs.node(rel).unwrap();
        let st = node.st.read().unwrap();
        assert_eq!(st.blocks.dirty_count(), 1);
        assert!(st.blocks.is_dirty(1));
    }

    #[test]
    fn write_spanning_blocks_and_extending_the_file() {
        let f = fixture();
        let fs = f.open().unwrap();
        let rel = path_ino(&fs, "base/1/rel");
        let fh = fs.open_file(rel).unwrap();
        let len = f.rel.len() as u64;
        let data = pattern(20_000, 99);
        fs.write(fh, len - 10_000, &data).unwrap();
        let mut want = f.rel.clone();
        want.truncate((len - 10_000) as usize);
        want.extend_from_slice(&data);
        assert_eq!(read_all(&fs, rel), want);
        assert_eq!(fs.getattr(rel).unwrap().size, len + 10_000);
    }

    #[test]
    fn truncate_hides_base_content() {
        let f = fixture();
        let fs = f.open().unwrap();
        let rel = path_ino(&fs, "base/1/rel");
        fs.setattr(
            rel,
            &SetAttr {
                size: Some(10_000),
                ..Default::default()
            },
        )
        .unwrap();
        fs.setattr(
            rel,
            &SetAttr {
                size: Some(30_000),
                ..Default::default()
            },
        )
        .unwrap();
        let got = read_all(&fs, rel);
        assert_eq!(got.len(), 30_000);
        assert_eq!(got[..10_000], f.rel[..10_000]);
        assert!(
            got[10_000..].iter().all(|b| *b == 0),
            "bytes past a truncation read as zeros"
        );
    }

    #[test]
    fn namespace_operations() {
        let f = fixture();
        let fs = f.open().unwrap();
        let base = path_ino(&fs, "base");
        let (a, fh) = fs.create(base, OsStr::new("new"), 0o600, 101, 104).unwrap();
        fs.write(fh, 0, b"new file").unwrap();
        fs.release(fh).unwrap();
        assert!(matches!(
            fs.create(base, OsStr::new("new"), 0o600, 0, 0),
            Err(FsError::Exists)
        ));

        // Rename over an existing file replaces it.
        let one = path_ino(&fs, "base/1");
        fs.rename(base, OsStr::new("new"), one, OsStr::new("rel"), false)
            .unwrap();
        assert_eq!(read_all(&fs, path_ino(&fs, "base/1/rel")), b"new file");
        assert!(matches!(
            fs.lookup(base, OsStr::new("new")),
            Err(FsError::NotFound)
        ));
        assert_eq!(path_ino(&fs, "base/1/rel"), a.ino);

        assert!(matches!(
            fs.rmdir(ROOT_INO, OsStr::new("base")),
            Err(FsError::NotEmpty)
        ));
        assert!(matches!(
            fs.unlink(ROOT_INO, OsStr::new("base")),
            Err(FsError::IsDir)
        ));
        assert!(matches!(
            fs.rename(ROOT_INO, OsStr::new("base"), one, OsStr::new("x"), false),
            Err(FsError::Invalid(_))
        ));

        let l = fs.link(a.ino, ROOT_INO, OsStr::new("hard")).unwrap();
        assert_eq!(l.nlink, 2);
        fs.unlink(one, OsStr::new("rel")).unwrap();
        assert_eq!(fs.getattr(a.ino).unwrap().nlink, 1);
        assert_eq!(read_all(&fs, a.ino), b"new file");

        let d = fs
            .mkdir(ROOT_INO, OsStr::new("d"), 0o700, 101, 104)
            .unwrap();
        fs.rename(ROOT_INO, OsStr::new("d"), base, OsStr::new("d2"), false)
            .unwrap();
        let entries = fs.readdir(d.ino).unwrap();
        assert_eq!(entries[1].ino, base, "'..' follows the move");
        fs.rmdir(base, OsStr::new("d2")).unwrap();
    }

    #[test]
    fn fsynced_writes_survive_and_unsynced_bitmaps_do_not() {
        let f = fixture();
        let rel_content = {
            let fs = f.open().unwrap();
            let rel = path_ino(&fs, "base/1/rel");
            let fh = fs.open_file(rel).unwrap();
            fs.write(fh, 0, &[1u8; 8192]).unwrap();
            fs.fsync(fh, true).unwrap();
            // Written but never fsynced: after a crash the block reads its base again.
            fs.write(fh, 3 * 8192, &[2u8; 8192]).unwrap();
            let (c, cfh) = fs
                .create(ROOT_INO, OsStr::new("wal"), 0o600, 101, 104)
                .unwrap();
            fs.write(cfh, 0, b"committed").unwrap();
            fs.fsync(cfh, true).unwrap();
            assert_eq!(path_ino(&fs, "wal"), c.ino);
            read_all(&fs, rel)
            // Dropped without unmount or flush: like a SIGKILL.
        };
        let fs = f.open().unwrap();
        let rel = path_ino(&fs, "base/1/rel");
        let after = read_all(&fs, rel);
        assert_eq!(after[..8192], [1u8; 8192]);
        assert_eq!(after[3 * 8192..4 * 8192], f.rel[3 * 8192..4 * 8192]);
        assert_eq!(after[8192..3 * 8192], rel_content[8192..3 * 8192]);
        assert_eq!(read_all(&fs, path_ino(&fs, "wal")), b"committed");
    }

    #[test]
    fn unlinked_open_file_lives_until_release_and_is_reclaimed_after_crash() {
        let f = fixture();
        {
            let fs = f.open().unwrap();
            let (a, fh) = fs.create(ROOT_INO, OsStr::new("tmp"), 0o600, 0, 0).unwrap();
            fs.write(fh, 0, b"still here").unwrap();
            fs.unlink(ROOT_INO, OsStr::new("tmp")).unwrap();
            assert_eq!(fs.read(fh, 0, 100).unwrap(), &b"still here"[..]);
            assert!(f.dir.path().join("data").join(a.ino.to_string()).exists());
            // Crash while still open.
        }
        let fs = f.open().unwrap();
        assert!(matches!(
            fs.lookup(ROOT_INO, OsStr::new("tmp")),
            Err(FsError::NotFound)
        ));
        assert_eq!(fs::read_dir(f.dir.path().join("data")).unwrap().count(), 0);
    }

    #[test]
    fn cache_is_bound_to_its_backup_cluster_and_repository() {
        let f = fixture();
        drop(f.open().unwrap());
        let cache = f.dir.path().display().to_string();
        let refused = |manifest: BackupManifest, repository_id: &str| {
            let err = f
                .open_for(manifest, repository_id)
                .err()
                .expect("another backup, cluster or repository is refused");
            err.to_string()
        };

        let mut other = (*f.manifest).clone();
        other.id = "20261125T000000Z-othr".into();
        let msg = refused(other, "test-repository");
        assert!(
            msg.contains(&cache)
                && msg.contains("belongs to backup 20261125T000000Z-test")
                && msg.contains("(backup id differ)"),
            "{msg}"
        );

        // The same backup id in another repository is another backup.
        let msg = refused((*f.manifest).clone(), "other-repository");
        assert!(
            msg.contains(&cache)
                && msg.contains("repository test-repository")
                && msg.contains("repository other-repository")
                && msg.contains("(repository differ)"),
            "{msg}"
        );

        let mut other = (*f.manifest).clone();
        other.system_identifier = "43".into();
        let msg = refused(other, "test-repository");
        assert!(
            msg.contains("system identifier 42") && msg.contains("(system identifier differ)"),
            "{msg}"
        );
        f.open().expect("its own backup still opens");
    }

    #[test]
    fn binding_of_an_older_cache_is_checked_on_what_it_has_and_completed() {
        let f = fixture();
        drop(f.open().unwrap());
        // As caches recorded it before the repository identity.
        let older = Binding {
            backup_id: f.manifest.id.clone(),
            system_identifier: f.manifest.system_identifier.clone(),
            repository: "file:///test".into(),
            repository_id: None,
        };
        f.store()
            .commit(&Batch {
                binding: Some(older),
                ..Default::default()
            })
            .unwrap();
        let mut other = (*f.manifest).clone();
        other.system_identifier = "43".into();
        assert!(f.open_for(other, "test-repository").is_err());

        drop(f.open().expect("the identity cannot be compared yet"));
        let binding = f.store().load().unwrap().binding.unwrap();
        assert_eq!(binding.repository_id.as_deref(), Some("test-repository"));
        assert!(
            f.open_for((*f.manifest).clone(), "other-repository")
                .is_err(),
            "the identity recorded at that mount is checked from then on"
        );
    }

    /// Writes a block of base/1/rel and a new file `wal`, both fsynced; returns their inodes.
    fn write_two_files(f: &Fixture) -> (u64, u64) {
        let fs = f.open().unwrap();
        let rel = path_ino(&fs, "base/1/rel");
        let fh = fs.open_file(rel).unwrap();
        fs.write(fh, 0, &[1u8; 8192]).unwrap();
        fs.fsync(fh, true).unwrap();
        fs.release(fh).unwrap();
        let (wal, fh) = fs
            .create(ROOT_INO, OsStr::new("wal"), 0o600, 101, 104)
            .unwrap();
        fs.write(fh, 0, b"committed").unwrap();
        fs.fsync(fh, false).unwrap();
        fs.release(fh).unwrap();
        (rel, wal.ino)
    }

    #[test]
    fn lost_data_file_is_refused_naming_it() {
        let f = fixture();
        let (rel, wal) = write_two_files(&f);
        for (ino, path) in [(rel, "base/1/rel"), (wal, "wal")] {
            let data = f.dir.path().join(DATA_DIR).join(ino.to_string());
            let saved = fs::read(&data).unwrap();
            fs::remove_file(&data).unwrap();
            let err = f
                .open()
                .err()
                .expect("a cache that lost a data file is refused");
            let msg = err.to_string();
            assert!(
                msg.contains(&data.display().to_string()) && msg.contains(path),
                "{msg}"
            );
            assert_eq!(err.errno(), libc::EIO);
            fs::write(&data, saved).unwrap();
        }
        let fs = f.open().expect("the data files are back");
        assert_eq!(read_all(&fs, wal), b"committed");
        assert_eq!(read_all(&fs, rel)[..8192], [1u8; 8192]);
    }

    #[test]
    fn older_records_without_has_data_learn_it_and_dirty_bits_need_a_data_file() {
        let f = fixture();
        let (rel, wal) = write_two_files(&f);
        // Records as caches wrote them before `has_data`.
        let store = f.store();
        let inodes = store
            .load()
            .unwrap()
            .inodes
            .into_iter()
            .map(|(ino, rec)| {
                (
                    ino,
                    InodeRecord {
                        has_data: None,
                        ..rec
                    },
                )
            })
            .collect();
        store
            .commit(&Batch {
                inodes,
                ..Default::default()
            })
            .unwrap();
        drop(store);
        let data = f.dir.path().join(DATA_DIR).join(rel.to_string());
        let saved = fs::read(&data).unwrap();
        fs::remove_file(&data).unwrap();
        let msg = f
            .open()
            .err()
            .expect("dirty bits need a data file")
            .to_string();
        assert!(msg.contains(&data.display().to_string()), "{msg}");
        fs::write(&data, saved).unwrap();

        // Without dirty bits nothing tells a lost data file from none: it reads as before.
        fs::remove_file(f.dir.path().join(DATA_DIR).join(wal.to_string())).unwrap();
        let fs = f.open().unwrap();
        assert_eq!(fs.getattr(wal).unwrap().size, 0);
        // The records of files whose data file is there learn it.
        fs.flush_all().unwrap();
        drop(fs);
        let has_data = |ino| {
            let inodes = f.store().load().unwrap().inodes;
            inodes
                .into_iter()
                .find(|(i, _)| *i == ino)
                .unwrap()
                .1
                .has_data
        };
        assert_eq!((has_data(rel), has_data(wal)), (Some(true), None));
    }

    #[test]
    fn lost_metadata_store_is_refused_and_data_files_kept() {
        let f = fixture();
        write_two_files(&f);
        let data_dir = f.dir.path().join(DATA_DIR);
        let data_files = || {
            let mut files: Vec<_> = fs::read_dir(&data_dir)
                .unwrap()
                .map(|e| {
                    let path = e.unwrap().path();
                    (path.clone(), fs::read(path).unwrap())
                })
                .collect();
            files.sort();
            files
        };
        let before = data_files();
        assert_eq!(before.len(), 2);
        let meta = f.dir.path().join(META_FILE);
        fs::remove_file(&meta).unwrap();
        let err = f
            .open()
            .err()
            .expect("a cache without its store is refused");
        assert!(
            err.to_string().contains(&meta.display().to_string()),
            "{err}"
        );
        assert!(!meta.exists(), "no new store was made");
        assert_eq!(data_files(), before);

        // A store made anew beside the data files is no better.
        drop(MetaStore::create(&meta).unwrap());
        let msg = f.open().err().expect("refused").to_string();
        assert!(
            msg.contains(&meta.display().to_string()) && msg.contains("made anew"),
            "{msg}"
        );
        assert_eq!(data_files(), before);
    }

    #[test]
    fn records_pointing_outside_the_backup_are_errors_not_panics() {
        let f = fixture();
        let (rel, _) = write_two_files(&f);
        let rel_rec = f
            .store()
            .load()
            .unwrap()
            .inodes
            .into_iter()
            .find(|(ino, _)| *ino == rel)
            .unwrap()
            .1;
        let corrupt = |batch: Batch| {
            f.store().commit(&batch).unwrap();
            f.open()
                .err()
                .expect("a corrupt record is refused")
                .to_string()
        };
        for (origin, what) in [(99, "no entry"), (1, "a directory")] {
            let rec = InodeRecord {
                origin: Some(origin),
                ..rel_rec.clone()
            };
            let msg = corrupt(Batch {
                inodes: vec![(rel, rec)],
                ..Default::default()
            });
            assert!(
                msg.contains(&format!("entry {origin}")) && msg.contains("base/1/rel"),
                "{what}: {msg}"
            );
        }
        let msg = corrupt(Batch {
            inodes: vec![(rel, rel_rec)],
            block_groups: vec![(rel, 0, Some(vec![0xff; 3]))],
            ..Default::default()
        });
        assert!(msg.contains("bitmap"), "{msg}");
        let msg = corrupt(Batch {
            block_groups: vec![(rel, 0, None)],
            next_ino: Some(3),
            ..Default::default()
        });
        assert!(msg.contains("next inode number 3"), "{msg}");
    }

    /// A tmpfs of `size` mounted at `dir` while this lives: a disk that really fills up.
    struct Tmpfs(PathBuf);

    impl Tmpfs {
        fn mount(dir: &Path, size: &str) -> Tmpfs {
            // SAFETY: geteuid has no preconditions.
            assert_eq!(
                unsafe { libc::geteuid() },
                0,
                "this test mounts a tmpfs: run it as root"
            );
            fs::create_dir_all(dir).unwrap();
            let c = |s: &[u8]| std::ffi::CString::new(s).unwrap();
            let (tmpfs, target, data) = (
                c(b"tmpfs"),
                c(dir.as_os_str().as_bytes()),
                c(format!("size={size}").as_bytes()),
            );
            // SAFETY: valid C strings for the duration of the call.
            let ret = unsafe {
                libc::mount(
                    tmpfs.as_ptr(),
                    target.as_ptr(),
                    tmpfs.as_ptr(),
                    0,
                    data.as_ptr().cast(),
                )
            };
            assert_eq!(
                ret,
                0,
                "mount a tmpfs at {}: {}",
                dir.display(),
                std::io::Error::last_os_error()
            );
            Tmpfs(dir.to_path_buf())
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let target = std::ffi::CString::new(self.0.as_os_str().as_bytes()).unwrap();
            // SAFETY: valid C string; MNT_DETACH only detaches.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }

    /// Fills the disk under `path` with a plain file, as another program would.
    fn fill_from_outside(path: &Path) {
        let mut file = File::create(path).unwrap();
        let chunk = vec![3u8; 64 << 10];
        loop {
            match std::io::Write::write_all(&mut file, &chunk) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
    }

    #[track_caller]
    fn assert_enospc<T>(result: FsResult<T>, what: &str) {
        match result {
            Ok(_) => panic!("{what} succeeded on a full disk"),
            Err(e) => assert_eq!(e.errno(), libc::ENOSPC, "{what}: {e}"),
        }
    }

    fn size(n: u64) -> SetAttr {
        SetAttr {
            size: Some(n),
            ..Default::default()
        }
    }

    #[test]
    fn full_cache_disk_is_enospc_frees_and_recovers_without_remount() {
        let f = fixture();
        let disk = f.dir.path().join("disk");
        let _tmpfs = Tmpfs::mount(&disk, "16m");
        let cache = disk.join("cache");
        let opts = f.options();
        let fs = f.open_with(&cache, &opts).unwrap();
        let file = |name: &str, len: usize| {
            let (a, fh) = fs
                .create(ROOT_INO, OsStr::new(name), 0o600, 101, 104)
                .unwrap();
            fs.write(fh, 0, &pattern(len, a.ino)).unwrap();
            fs.fsync(fh, false).unwrap();
            (a.ino, fh)
        };
        let kept = pattern(100_000, 5);
        let (keep, keep_fh) = file("keep", 0);
        fs.write(keep_fh, 0, &kept).unwrap();
        fs.fsync(keep_fh, false).unwrap();
        let (old, _) = file("old", 64 << 10);
        // Together they free less than the headroom a full disk needs to take writes again.
        let (long, _) = file("long", 512 << 10);
        file("victim", 64 << 10);
        file("gone", 128 << 10);
        fs.mkdir(ROOT_INO, OsStr::new("empty"), 0o700, 101, 104)
            .unwrap();
        // Another program's file on the same disk; deleting it is how room comes back.
        let outside = disk.join("outside");
        fs::write(&outside, vec![1u8; 6 << 20]).unwrap();

        let (_, filler) = file("filler", 0);
        let chunk = vec![7u8; 64 << 10];
        let mut offset = 0;
        let err = loop {
            match fs.write(filler, offset, &chunk) {
                Ok(n) => offset += n as u64,
                Err(e) => break e,
            }
            assert!(offset < 16 << 20, "the disk never filled");
        };
        assert_eq!(err.errno(), libc::ENOSPC, "{err}");

        // What needs room is refused with ENOSPC (never EIO) and changes nothing.
        let name = OsStr::new;
        assert_enospc(fs.create(ROOT_INO, name("new"), 0o600, 0, 0), "create");
        assert_enospc(fs.mkdir(ROOT_INO, name("dir"), 0o700, 0, 0), "mkdir");
        assert_enospc(
            fs.symlink(ROOT_INO, name("sym"), Path::new("keep"), 0, 0),
            "symlink",
        );
        assert_enospc(fs.link(keep, ROOT_INO, name("keep2")), "link");
        assert_enospc(
            fs.rename(ROOT_INO, name("keep"), ROOT_INO, name("moved"), false),
            "rename to a new name",
        );
        assert_enospc(fs.write(keep_fh, 0, b"x"), "write");
        assert_enospc(fs.setattr(keep, &size(4 << 20)), "truncate growing");
        assert_enospc(fs.fsync(filler, false), "fsync");
        assert_eq!(fs.getattr(keep).unwrap().size, kept.len() as u64);
        for gone in ["new", "dir", "sym", "keep2", "moved"] {
            assert!(matches!(
                fs.lookup(ROOT_INO, name(gone)),
                Err(FsError::NotFound)
            ));
        }
        assert!(opts.stats.enospc_refusals.load(Ordering::Relaxed) >= 9);

        // What frees room works on the full disk.
        fs.unlink(ROOT_INO, name("gone")).unwrap();
        fs.rmdir(ROOT_INO, name("empty")).unwrap();
        fs.rename(ROOT_INO, name("old"), ROOT_INO, name("victim"), false)
            .unwrap();
        fs.setattr(long, &size(8192)).unwrap();
        assert_enospc(fs.mkdir(ROOT_INO, name("dir"), 0o700, 0, 0), "still full");

        // Room comes back: the same mount takes writes again.
        fs::remove_file(&outside).unwrap();
        std::thread::sleep(Duration::from_millis(3 * RECHECK_MILLIS));
        fs.mkdir(ROOT_INO, name("after"), 0o700, 101, 104).unwrap();
        fs.write(keep_fh, 0, b"again").unwrap();
        fs.fsync(keep_fh, false).unwrap();
        assert!(cache.join(RESERVE_FILE).metadata().unwrap().len() == RESERVE_BYTES);

        // After a crash the store holds exactly what was acknowledged.
        drop(fs);
        let fs = f.open_with(&cache, &opts).unwrap();
        let mut want = kept.clone();
        want[..5].copy_from_slice(b"again");
        assert_eq!(read_all(&fs, path_ino(&fs, "keep")), want);
        assert_eq!(
            read_all(&fs, path_ino(&fs, "victim")),
            pattern(64 << 10, old)
        );
        assert_eq!(fs.getattr(long).unwrap().size, 8192);
        path_ino(&fs, "after");
        for gone in ["gone", "empty", "old", "dir", "new", "moved"] {
            assert!(matches!(
                fs.lookup(ROOT_INO, name(gone)),
                Err(FsError::NotFound)
            ));
        }
    }

    #[test]
    fn store_failing_for_room_recovers_without_remount() {
        let f = fixture();
        let disk = f.dir.path().join("disk");
        let _tmpfs = Tmpfs::mount(&disk, "8m");
        let cache = disk.join("cache");
        let opts = f.options();
        let fs = f.open_with(&cache, &opts).unwrap();
        fs.mkdir(ROOT_INO, OsStr::new("early"), 0o700, 101, 104)
            .unwrap();
        // Its attributes at close are committed without durability, then the store fails.
        let (lazy, fh) = fs
            .create(ROOT_INO, OsStr::new("lazy"), 0o600, 101, 104)
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
        fs.write(fh, 0, b"written").unwrap();
        fs.release(fh).unwrap();
        let lazy_mtime = fs.getattr(lazy.ino).unwrap().mtime;
        assert_ne!(lazy_mtime, lazy.mtime);
        let outside = disk.join("outside");
        fill_from_outside(&outside);

        // Namespace changes until the store itself cannot commit for lack of room.
        let name = |i: usize| OsString::from(format!("d{i}"));
        let mut made = 0;
        let err = loop {
            match fs.mkdir(ROOT_INO, &name(made), 0o700, 101, 104) {
                Ok(_) => made += 1,
                Err(e) => break e,
            }
            assert!(made < 50_000, "the store never ran out of room");
        };
        assert_eq!(err.errno(), libc::ENOSPC, "{err}");
        assert_enospc(fs.mkdir(ROOT_INO, OsStr::new("x"), 0o700, 0, 0), "mkdir");
        // The reserve gives the store the room to reopen and to commit a removal.
        fs.rmdir(ROOT_INO, OsStr::new("early")).unwrap();

        fs::remove_file(&outside).unwrap();
        std::thread::sleep(Duration::from_millis(3 * RECHECK_MILLIS));
        fs.mkdir(ROOT_INO, OsStr::new("after"), 0o700, 101, 104)
            .unwrap();

        drop(fs);
        let fs = f.open_with(&cache, &opts).unwrap();
        let names: HashSet<OsString> = fs
            .readdir(ROOT_INO)
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert!(names.contains(OsStr::new("after")));
        for gone in ["early", "x"] {
            assert!(!names.contains(OsStr::new(gone)), "{gone}");
        }
        assert!((0..made).all(|i| names.contains(&name(i))));
        assert!(!names.contains(&name(made)));
        // The reopened store got the commit it lost again: the store never fell behind memory.
        assert_eq!(fs.getattr(lazy.ino).unwrap().mtime, lazy_mtime);
    }

    #[test]
    fn broken_chunk_is_eio_naming_file_and_offset() {
        let mut f = fixture();
        let EntryKind::File { chunks } = &f.manifest.entries[3].kind else {
            unreachable!()
        };
        let third = chunks[2].unwrap();
        Arc::get_mut(&mut f.source).unwrap().broken.insert(third);
        let fs = f.open().unwrap();
        let rel = path_ino(&fs, "base/1/rel");
        let fh = fs.open_file(rel).unwrap();
        assert_eq!(fs.read(fh, 0, 100).unwrap(), f.rel[..100]);
        let err = fs.read(fh, 2 * CS + 5, 10).unwrap_err();
        assert_eq!(err.errno(), libc::EIO);
        let msg = err.to_string();
        assert!(
            msg.contains("base/1/rel") && msg.contains(&third.to_hex()) && msg.contains("131077"),
            "{msg}"
        );
    }

    #[test]
    fn rewritten_blocks_are_not_fetched_again() {
        let f = fixture();
        let fs = f.open().unwrap();
        let rel = path_ino(&fs, "base/1/rel");
        let fh = fs.open_file(rel).unwrap();
        fs.write(fh, 0, &vec![9u8; CS as usize]).unwrap();
        let before = f.source.fetches.load(Ordering::Relaxed);
        assert_eq!(fs.read(fh, 0, CS as u32).unwrap(), vec![9u8; CS as usize]);
        assert_eq!(f.source.fetches.load(Ordering::Relaxed), before);
    }
}
