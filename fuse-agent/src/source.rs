//! Base content of a backup: chunks from the repository behind a bounded in-memory cache, an
//! optional on-disk cache (for remote repositories), single-flight fetches and readahead.

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::io::Write;
use std::num::NonZeroUsize;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use ir_repository::{ChunkId, RepoError, Repository};
use lru::LruCache;
use tokio::runtime::Handle;
use tokio::sync::Semaphore;

pub use crate::fs::{ChunkSource, FetchError};
use crate::fs::{private_dir, tighten};
use crate::stats::MountStats;

#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Bytes of plain chunks kept in memory.
    pub memory_bytes: u64,
    /// On-disk chunk cache directory and its size limit; `None` reads the repository directly.
    pub disk: Option<(PathBuf, u64)>,
    /// Repository fetches in flight at once.
    pub max_fetches: usize,
}

type SharedFetch = Shared<BoxFuture<'static, Result<Bytes, Arc<RepoError>>>>;

struct Inner {
    repo: Repository,
    memory: Mutex<LruCache<ChunkId, Bytes>>,
    disk: Option<Arc<DiskCache>>,
    inflight: Mutex<HashMap<ChunkId, SharedFetch>>,
    permits: Semaphore,
    /// Chunk cache writes not yet done, at most as many as fetches: a disk slower than the
    /// repository skips caching rather than queueing chunks in memory without bound.
    pending_puts: Arc<Semaphore>,
    stats: Arc<MountStats>,
}

pub struct RepoSource {
    inner: Arc<Inner>,
    runtime: Handle,
}

impl RepoSource {
    /// Counts its chunk reads into `stats`.
    pub fn new(
        repo: Repository,
        runtime: Handle,
        cfg: SourceConfig,
        stats: Arc<MountStats>,
    ) -> std::io::Result<Self> {
        let chunk = repo.config().chunk_size.max(1);
        let slots = NonZeroUsize::new((cfg.memory_bytes / chunk).max(4) as usize).expect("> 0");
        let disk = match cfg.disk {
            Some((dir, limit)) => Some(Arc::new(DiskCache::open(dir, limit)?)),
            None => None,
        };
        Ok(RepoSource {
            inner: Arc::new(Inner {
                repo,
                memory: Mutex::new(LruCache::new(slots)),
                disk,
                inflight: Mutex::new(HashMap::new()),
                permits: Semaphore::new(cfg.max_fetches.max(1)),
                pending_puts: Arc::new(Semaphore::new(cfg.max_fetches.max(1))),
                stats,
            }),
            runtime,
        })
    }
}

impl Inner {
    fn cached(&self, id: &ChunkId) -> Option<Bytes> {
        let hit = self
            .memory
            .lock()
            .expect("memory cache lock")
            .get(id)
            .cloned();
        if hit.is_some() {
            self.stats.memory_hits.fetch_add(1, Ordering::Relaxed);
        }
        hit
    }

    fn fetch_shared(self: &Arc<Self>, id: ChunkId, len: usize) -> SharedFetch {
        let mut inflight = self.inflight.lock().expect("inflight lock");
        if let Some(f) = inflight.get(&id) {
            return f.clone();
        }
        let this = self.clone();
        let fut = async move {
            let result = this.load(id, len).await;
            if let Ok(bytes) = &result {
                this.memory
                    .lock()
                    .expect("memory cache lock")
                    .put(id, bytes.clone());
            }
            this.inflight.lock().expect("inflight lock").remove(&id);
            result
        }
        .boxed()
        .shared();
        inflight.insert(id, fut.clone());
        fut
    }

    async fn load(&self, id: ChunkId, len: usize) -> Result<Bytes, Arc<RepoError>> {
        // The chunk cache's reads, hashing and writes run on the blocking pool: they would stall
        // the runtime's workers, and with them every other fetch in flight.
        if let Some(disk) = &self.disk {
            let (disk, repo) = (disk.clone(), self.repo.clone());
            let hit = tokio::task::spawn_blocking(move || disk.get(&repo, &id, len))
                .await
                .ok()
                .flatten();
            if let Some(bytes) = hit {
                self.stats.disk_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(bytes);
            }
        }
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("semaphore never closed");
        match self.repo.read_chunk(&id, len).await {
            Ok(bytes) => {
                self.stats
                    .fetched_bytes
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                if let Some(disk) = &self.disk
                    && let Ok(pending) = self.pending_puts.clone().try_acquire_owned()
                {
                    let (disk, bytes) = (disk.clone(), bytes.clone());
                    // Not awaited: the reader needs the bytes, not their copy on disk.
                    tokio::task::spawn_blocking(move || {
                        disk.put(&id, &bytes);
                        drop(pending);
                    });
                }
                Ok(bytes)
            }
            Err(e) => {
                self.stats.repository_errors.fetch_add(1, Ordering::Relaxed);
                Err(Arc::new(e))
            }
        }
    }
}

impl ChunkSource for RepoSource {
    fn fetch(&self, id: &ChunkId, len: usize) -> Result<Bytes, FetchError> {
        if let Some(b) = self.inner.cached(id) {
            return Ok(b);
        }
        let fut = self.inner.fetch_shared(*id, len);
        self.runtime.block_on(fut).map_err(|e| e as FetchError)
    }

    fn prefetch(&self, chunks: &[(ChunkId, usize)]) {
        for (id, len) in chunks {
            if self
                .inner
                .memory
                .lock()
                .expect("memory cache lock")
                .contains(id)
            {
                continue;
            }
            let fut = self.inner.fetch_shared(*id, *len);
            self.runtime.spawn(async move {
                // Errors surface when the chunk is really read.
                let _ = fut.await;
            });
        }
    }
}

/// Plain chunks on local disk, named by hash, checked on every read, evicted oldest first;
/// readable by their owner only, as they are the database's pages.
struct DiskCache {
    dir: PathBuf,
    limit: u64,
    order: Mutex<(VecDeque<(ChunkId, u64)>, u64)>,
}

impl DiskCache {
    fn open(dir: PathBuf, limit: u64) -> std::io::Result<Self> {
        private_dir(&dir)?;
        let mut entries = Vec::new();
        for e in fs::read_dir(&dir)? {
            let e = e?;
            let name = e.file_name();
            match name.to_str().and_then(|n| n.parse::<ChunkId>().ok()) {
                Some(id) => {
                    let meta = e.metadata()?;
                    tighten(&e.path(), meta.permissions().mode(), 0o600)?;
                    entries.push((meta.modified()?, id, meta.len()));
                }
                None => fs::remove_file(e.path())?,
            }
        }
        entries.sort();
        let total = entries.iter().map(|e| e.2).sum();
        let order = entries.into_iter().map(|(_, id, len)| (id, len)).collect();
        Ok(DiskCache {
            dir,
            limit,
            order: Mutex::new((order, total)),
        })
    }

    /// A cached chunk of `repo`, checked against its id as `repo` names chunks.
    fn get(&self, repo: &Repository, id: &ChunkId, len: usize) -> Option<Bytes> {
        let path = self.dir.join(id.to_hex());
        let data = fs::read(&path).ok()?;
        if data.len() == len && repo.chunk_id(&data) == *id {
            Some(Bytes::from(data))
        } else {
            tracing::warn!(chunk = %id, path = %path.display(), "damaged chunk in the disk cache; fetching it again");
            let _ = fs::remove_file(path);
            None
        }
    }

    /// Best effort: a failure to cache only costs a later fetch.
    fn put(&self, id: &ChunkId, data: &[u8]) {
        let tmp = self.dir.join(format!(".{}.tmp", id.to_hex()));
        let stored = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(data))
            .and_then(|_| fs::rename(&tmp, self.dir.join(id.to_hex())));
        if stored.is_err() {
            let _ = fs::remove_file(&tmp);
            return;
        }
        let mut guard = self.order.lock().expect("disk cache lock");
        let (order, total) = &mut *guard;
        order.push_back((*id, data.len() as u64));
        *total += data.len() as u64;
        while *total > self.limit {
            let Some((old, len)) = order.pop_front() else {
                break;
            };
            let _ = fs::remove_file(self.dir.join(old.to_hex()));
            *total -= len;
        }
    }
}
