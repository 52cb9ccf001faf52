//! The repository handle: config, manifests and chunk reads. Longer than most files for its
//! tests: the stand-in S3 endpoints sit next to the retry, size and listing rules they drive.

use std::cell::RefCell;
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use rustix::buffer::spare_capacity;
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use time::OffsetDateTime;

use crate::bounded::{Budget, Fetched, chunk_object_limit, get_bounded, manifest_json_permit};
use crate::chunk_id::ChunkId;
use crate::crypto::{self, ObjectCodec, UnlockError};
use crate::error::{RepoError, summarize_store_error};
use crate::location::RepoLocation;
use crate::manifest::{
    BackupManifest, ENCRYPTED_FORMAT_VERSION, FORMAT_VERSION, MAX_MANIFEST_OBJECT_BYTES,
    ManifestError, RepoConfig, decompress_bounded, decompressed_limit, is_backup_id,
};
use crate::size::validate_chunk_size;
use crate::store::{OpenedStore, open_store};
use serde::Serialize;

pub(crate) const CONFIG_PATH: &str = "ir-repo.json";
pub(crate) const BACKUPS_DIR: &str = "backups";
pub(crate) const CHUNKS_DIR: &str = "chunks";
const MANIFEST_SUFFIX: &str = ".json.zst";
/// Parallel manifest loads when listing backups: for the latency of a remote store. What they
/// may hold in memory is bounded by bytes, in [`crate::bounded`].
const LIST_CONCURRENCY: usize = 8;
/// Largest `ir-repo.json`: a few hundred bytes of settings.
const MAX_CONFIG_BYTES: u64 = 64 * 1024;

/// The backups of a repository, as [`Repository::list_backups`] finds them.
#[derive(Debug, Clone, Default)]
pub struct BackupList {
    /// Valid backups, oldest first.
    pub backups: Vec<BackupManifest>,
    /// Backups whose manifest cannot be used, by id.
    pub invalid: Vec<InvalidBackup>,
}

/// A stored manifest that failed to read or validate, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InvalidBackup {
    pub id: String,
    pub reason: String,
}

/// A backup repository on a local directory or in an S3 bucket. Cheap to clone.
#[derive(Clone)]
pub struct Repository {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    store: Arc<dyn ObjectStore>,
    local_dir: Option<PathBuf>,
    config: RepoConfig,
    /// Total retry budget for one chunk read.
    read_deadline: Duration,
    /// Seals and opens chunks, manifests and WAL; names chunks.
    codec: ObjectCodec,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("url", &self.inner.url)
            .field("config", &self.inner.config)
            .finish()
    }
}

pub(crate) fn chunk_path(id: &ChunkId) -> Path {
    let hex = id.to_hex();
    Path::from(format!("{CHUNKS_DIR}/{}/{hex}", &hex[..2]))
}

pub(crate) fn manifest_path(id: &str) -> Path {
    Path::from(format!("{BACKUPS_DIR}/{id}{MANIFEST_SUFFIX}"))
}

pub(crate) fn check_backup_id(id: &str) -> Result<(), RepoError> {
    if !is_backup_id(id) {
        return Err(RepoError::InvalidBackupId { id: id.to_string() });
    }
    Ok(())
}

impl Repository {
    fn assemble(
        opened: OpenedStore,
        config: RepoConfig,
        codec: ObjectCodec,
        location: &RepoLocation,
    ) -> Repository {
        Repository {
            inner: Arc::new(Inner {
                url: opened.url,
                store: opened.store,
                local_dir: opened.local_dir,
                config,
                read_deadline: location.read_deadline,
                codec,
            }),
        }
    }

    /// Creates an unencrypted repository. Refuses if `ir-repo.json` already exists, and if
    /// `location` carries a key (whoever gives one expects encryption).
    pub async fn init(location: &RepoLocation, chunk_size: u64) -> Result<Repository, RepoError> {
        if location.key.secret()?.is_some() {
            return Err(RepoError::InvalidKey {
                reason: "a key was given (IR_REPO_PASSWORD or --key-file) for a repository \
                         made without encryption (irctl repo init --encryption)"
                    .to_string(),
            });
        }
        Repository::create(location, chunk_size, None).await
    }

    /// Creates a repository whose chunks, manifests and WAL are encrypted with new keys,
    /// which `location`'s key unwraps. Refuses if `ir-repo.json` already exists.
    pub async fn init_encrypted(
        location: &RepoLocation,
        chunk_size: u64,
    ) -> Result<Repository, RepoError> {
        let secret = location
            .key
            .secret()?
            .ok_or_else(|| RepoError::InvalidKey {
                reason: "an encrypted repository needs a password (IR_REPO_PASSWORD) or a key \
                     file (--key-file)"
                    .to_string(),
            })?;
        Repository::create(location, chunk_size, Some(secret)).await
    }

    async fn create(
        location: &RepoLocation,
        chunk_size: u64,
        secret: Option<zeroize::Zeroizing<Vec<u8>>>,
    ) -> Result<Repository, RepoError> {
        validate_chunk_size(chunk_size)?;
        let opened = open_store(location, true)?;
        let repository_id = crate::random::hex_id();
        let (encryption, codec) = match secret {
            Some(secret) => {
                let id = repository_id.clone();
                let (config, keys) =
                    tokio::task::spawn_blocking(move || crypto::create(&secret, &id))
                        .await
                        .map_err(|e| RepoError::io("key derivation", std::io::Error::other(e)))?;
                (Some(config), ObjectCodec::encrypted(keys))
            }
            None => (None, ObjectCodec::default()),
        };
        let config = RepoConfig {
            format_version: if encryption.is_some() {
                ENCRYPTED_FORMAT_VERSION
            } else {
                FORMAT_VERSION
            },
            chunk_size,
            hash: "blake3".to_string(),
            compression: "zstd".to_string(),
            created: OffsetDateTime::now_utc(),
            repository_id: Some(repository_id),
            encryption,
        };
        let repo = Repository::assemble(opened, config, codec, location);
        let path = Path::from(CONFIG_PATH);
        match repo.inner.store.head(&path).await {
            Ok(_) => return Err(repo.already_exists()),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(repo.store_err(&path, e)),
        }
        let body = serde_json::to_vec_pretty(&repo.inner.config).expect("config serialises");
        let create = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match repo
            .inner
            .store
            .put_opts(&path, PutPayload::from(body.clone()), create)
            .await
        {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => return Err(repo.already_exists()),
            // Stores without conditional writes: the head above is the best we can do.
            Err(object_store::Error::NotImplemented { .. }) => repo
                .inner
                .store
                .put(&path, PutPayload::from(body))
                .await
                .map(|_| ())
                .map_err(|e| repo.store_err(&path, e))?,
            Err(e) => return Err(repo.store_err(&path, e)),
        }
        Ok(repo)
    }

    /// Opens an existing repository.
    pub async fn open(location: &RepoLocation) -> Result<Repository, RepoError> {
        let opened = open_store(location, false)?;
        let path = Path::from(CONFIG_PATH);
        let not_repo = || RepoError::NotARepository {
            url: opened.url.clone(),
        };
        let invalid = |reason: String| RepoError::InvalidObject {
            url: opened.url.clone(),
            path: CONFIG_PATH.to_string(),
            reason,
        };
        let body = match get_bounded(&*opened.store, &path, MAX_CONFIG_BYTES, Budget::None).await {
            Ok(Fetched::Body(b, _)) => b,
            Ok(Fetched::TooLarge(reason)) => return Err(invalid(reason)),
            Err(object_store::Error::NotFound { .. }) => return Err(not_repo()),
            Err(source) => {
                tracing::debug!(url = %opened.url, error = %source, "reading {CONFIG_PATH}");
                return Err(RepoError::Store {
                    url: opened.url.clone(),
                    path: CONFIG_PATH.to_string(),
                    transient: is_transient(&source, opened.local_dir.is_some()),
                    detail: summarize_store_error(&source),
                });
            }
        };
        let value: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| invalid(e.to_string()))?;
        // Check the version before the shape: a newer format may have changed the fields.
        let found = value
            .get("format_version")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| invalid("no format_version".to_string()))?;
        if found != u64::from(FORMAT_VERSION) && found != u64::from(ENCRYPTED_FORMAT_VERSION) {
            return Err(RepoError::UnsupportedFormat {
                url: opened.url.clone(),
                found: u32::try_from(found).unwrap_or(u32::MAX),
                supported: ENCRYPTED_FORMAT_VERSION,
            });
        }
        let config: RepoConfig =
            serde_json::from_value(value).map_err(|e| invalid(e.to_string()))?;
        if config.hash != "blake3" || config.compression != "zstd" {
            return Err(invalid(format!(
                "unsupported hash {:?} or compression {:?}",
                config.hash, config.compression
            )));
        }
        validate_chunk_size(config.chunk_size).map_err(|e| invalid(e.to_string()))?;
        if (config.format_version == ENCRYPTED_FORMAT_VERSION) != config.encryption.is_some() {
            return Err(invalid(format!(
                "format version {} {} an encryption section",
                config.format_version,
                if config.encryption.is_some() {
                    "does not take"
                } else {
                    "needs"
                }
            )));
        }
        // The key is checked here, before the caller can write anything.
        let secret = location.key.secret()?;
        let codec = match (&config.encryption, secret) {
            (None, None) => ObjectCodec::default(),
            (None, Some(_)) => return Err(RepoError::NotEncrypted { url: opened.url }),
            (Some(_), None) => return Err(RepoError::KeyRequired { url: opened.url }),
            (Some(encryption), Some(secret)) => {
                let encryption = encryption.clone();
                let id = config.repository_id.clone().unwrap_or_default();
                let unlocked =
                    tokio::task::spawn_blocking(move || crypto::unlock(&encryption, &secret, &id))
                        .await
                        .map_err(|e| RepoError::io("key derivation", std::io::Error::other(e)))?;
                match unlocked {
                    Ok(keys) => ObjectCodec::encrypted(keys),
                    Err(UnlockError::WrongKey) => {
                        return Err(RepoError::WrongKey { url: opened.url });
                    }
                    Err(UnlockError::Invalid(reason)) => return Err(invalid(reason)),
                }
            }
        };
        Ok(Repository::assemble(opened, config, codec, location))
    }

    pub fn url(&self) -> &str {
        &self.inner.url
    }

    pub fn config(&self) -> &RepoConfig {
        &self.inner.config
    }

    /// What tells this repository from any other: its `repository_id`, or for a repository made
    /// before those existed, its URL.
    pub fn identity(&self) -> &str {
        self.inner
            .config
            .repository_id
            .as_deref()
            .unwrap_or(&self.inner.url)
    }

    /// A `file://` repository: reads are as fast as a local cache would be.
    pub fn is_local(&self) -> bool {
        self.inner.local_dir.is_some()
    }

    pub(crate) fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.inner.store
    }

    /// Whether chunks, manifests and WAL are encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.inner.codec.is_encrypted()
    }

    pub(crate) fn codec(&self) -> &ObjectCodec {
        &self.inner.codec
    }

    /// The id of a chunk with these plain bytes in this repository: their BLAKE3 hash, keyed
    /// with the repository's id key when it is encrypted.
    pub fn chunk_id(&self, data: &[u8]) -> ChunkId {
        self.inner.codec.chunk_id(data)
    }

    /// Ids of all stored manifests, sorted.
    pub async fn backup_ids(&self) -> Result<Vec<String>, RepoError> {
        let prefix = Path::from(BACKUPS_DIR);
        let metas: Vec<_> = self
            .inner
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| self.store_err(&prefix, e))?;
        let mut ids: Vec<String> = metas
            .iter()
            .filter_map(|m| m.location.filename()?.strip_suffix(MANIFEST_SUFFIX))
            .filter(|id| is_backup_id(id))
            .map(str::to_string)
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Every backup, oldest first, and apart the ones whose manifest is invalid or cannot be
    /// read: one bad manifest never hides the others. Fails when listing the manifests does, or
    /// when reading one fails for a transient reason (it may be the newest backup: `latest`
    /// must not quietly mean an older one; the caller retries).
    pub async fn list_backups(&self) -> Result<BackupList, RepoError> {
        let ids = self.backup_ids().await?;
        let loaded: Vec<(String, Result<BackupManifest, RepoError>)> = futures::stream::iter(ids)
            .map(|id| async move {
                let m = self.load_manifest(&id).await;
                (id, m)
            })
            .buffer_unordered(LIST_CONCURRENCY)
            .collect()
            .await;
        let mut list = BackupList::default();
        for (id, result) in loaded {
            match result {
                Ok(m) => list.backups.push(m),
                Err(RepoError::InvalidManifest { reason, .. }) => {
                    list.invalid.push(InvalidBackup { id, reason })
                }
                Err(e @ RepoError::Store { .. }) if !e.is_transient() => {
                    list.invalid.push(InvalidBackup {
                        id,
                        reason: format!("cannot be read: {e}"),
                    })
                }
                // Gone between the listing and the read: not a backup any more.
                Err(RepoError::BackupNotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        list.backups
            .sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        list.invalid.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(list)
    }

    /// Turns `latest` into the id of the newest valid backup (by the manifests' creation time);
    /// any other id is checked for its form only: every caller loads the manifest next, which
    /// says whether it exists (one request, not two).
    pub async fn resolve_backup(&self, id_or_latest: &str) -> Result<String, RepoError> {
        if id_or_latest == "latest" {
            let list = self.list_backups().await?;
            return list
                .backups
                .last()
                .map(|m| m.id.clone())
                .ok_or_else(|| RepoError::NoBackups {
                    url: self.inner.url.clone(),
                    invalid: list.invalid.len(),
                });
        }
        check_backup_id(id_or_latest)?;
        Ok(id_or_latest.to_string())
    }

    /// The stored bytes of a manifest, refused past [`MAX_MANIFEST_OBJECT_BYTES`], and the
    /// share of the process's manifest budget they hold.
    async fn manifest_object(
        &self,
        id: &str,
    ) -> Result<(Bytes, Option<tokio::sync::SemaphorePermit<'static>>), RepoError> {
        check_backup_id(id)?;
        let path = manifest_path(id);
        match get_bounded(
            &*self.inner.store,
            &path,
            self.inner.codec.max_stored(MAX_MANIFEST_OBJECT_BYTES),
            Budget::ManifestObjects,
        )
        .await
        {
            Ok(Fetched::Body(body, held)) => Ok((body, held)),
            Ok(Fetched::TooLarge(reason)) => Err(RepoError::InvalidManifest {
                id: id.to_string(),
                url: self.inner.url.clone(),
                reason: format!("{path}: {reason}"),
            }),
            Err(object_store::Error::NotFound { .. }) => Err(self.not_found(id)),
            Err(e) => Err(self.store_err(&path, e)),
        }
    }

    /// Backup `id`'s manifest decompressed, within the process's manifest budgets, and handed to
    /// `use_json` on a blocking thread.
    pub(crate) async fn with_manifest_json<T: Send + 'static>(
        &self,
        id: &str,
        use_json: impl FnOnce(Result<Vec<u8>, ManifestError>) -> T + Send + 'static,
    ) -> Result<T, RepoError> {
        let (stored, _held) = self.manifest_object(id).await?;
        // Sealed in an encrypted repository: opened (and authenticated) before zstd sees it.
        let (codec, path) = (self.inner.codec.clone(), manifest_path(id));
        let body = tokio::task::spawn_blocking(move || codec.open(path.as_ref(), stored))
            .await
            .map_err(|e| RepoError::io("manifest decoding", std::io::Error::other(e)))?
            .map_err(|reason| RepoError::InvalidManifest {
                id: id.to_string(),
                url: self.inner.url.clone(),
                reason,
            })?;
        // A refused header is refused again below, without needing any budget.
        let _json = manifest_json_permit(decompressed_limit(&body).unwrap_or(0)).await;
        tokio::task::spawn_blocking(move || use_json(decompress_bounded(&body)))
            .await
            .map_err(|e| RepoError::io("manifest decoding", std::io::Error::other(e)))
    }

    /// Reads and validates backup `id`'s manifest (see [`BackupManifest::decode`]).
    pub async fn load_manifest(&self, id: &str) -> Result<BackupManifest, RepoError> {
        let chunk_size = self.inner.config.chunk_size;
        let expected = id.to_string();
        self.with_manifest_json(id, move |json| {
            BackupManifest::from_json(&json?, &expected, chunk_size)
        })
        .await?
        .map_err(|e| RepoError::InvalidManifest {
            id: id.to_string(),
            url: self.inner.url.clone(),
            reason: e.to_string(),
        })
    }

    /// Writing the manifest is what makes a backup exist, so it is the last step of an ingest.
    /// It never replaces another backup's manifest.
    pub(crate) async fn write_manifest(&self, m: &BackupManifest) -> Result<(), RepoError> {
        let path = manifest_path(&m.id);
        let manifest = m.clone();
        let (codec, at) = (self.inner.codec.clone(), path.clone());
        let body = tokio::task::spawn_blocking(move || {
            manifest.encode().map(|zstd| codec.seal(at.as_ref(), zstd))
        })
        .await
        .map_err(|e| RepoError::io(path.to_string(), std::io::Error::other(e)))?
        .map_err(|e| RepoError::InvalidManifest {
            id: m.id.clone(),
            url: self.inner.url.clone(),
            reason: e.to_string(),
        })?;
        let exists = || RepoError::BackupExists {
            id: m.id.clone(),
            url: self.inner.url.clone(),
        };
        let create = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .inner
            .store
            .put_opts(&path, PutPayload::from(body.clone()), create)
            .await
        {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Err(exists()),
            // Stores without conditional writes: a look first is the best there is.
            Err(object_store::Error::NotImplemented { .. }) => {
                match self.inner.store.head(&path).await {
                    Ok(_) => return Err(exists()),
                    Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(self.store_err(&path, e)),
                }
                self.inner
                    .store
                    .put(&path, PutPayload::from(body))
                    .await
                    .map(|_| ())
                    .map_err(|e| self.store_err(&path, e))
            }
            Err(e) => Err(self.store_err(&path, e)),
        }
    }

    /// Fetches, decompresses and checks one chunk (see the crate docs for the retry policy).
    pub async fn read_chunk(&self, id: &ChunkId, expected_len: usize) -> Result<Bytes, RepoError> {
        if self.is_local() {
            // One trip to the blocking pool for the read and the decoding, where the object
            // store would take two for the read alone. A local error is never worth a retry,
            // but a hung file system (NFS) still fails at the read deadline.
            let (repo, chunk) = (self.clone(), *id);
            let read = tokio::task::spawn_blocking(move || {
                let stored = repo.read_local_chunk(&chunk)?;
                repo.decode_chunk_here(&chunk, stored, expected_len)
            });
            let deadline = self.inner.read_deadline;
            return match tokio::time::timeout(deadline, read).await {
                Ok(done) => {
                    done.map_err(|e| RepoError::io("chunk decoding", std::io::Error::other(e)))?
                }
                Err(_) => Err(RepoError::Unavailable {
                    id: *id,
                    url: self.inner.url.clone(),
                    waited: deadline,
                    last: format!("no answer within {deadline:?}"),
                }),
            };
        }
        let stored = self.fetch_chunk_retrying(id).await?;
        self.decode_chunk(id, stored, expected_len).await
    }

    /// The stored object of a chunk, fetched again after transient errors until the read
    /// deadline.
    pub(crate) async fn fetch_chunk_retrying(&self, id: &ChunkId) -> Result<Bytes, RepoError> {
        let start = Instant::now();
        let deadline = self.inner.read_deadline;
        let mut backoff = Duration::from_millis(100);
        loop {
            // Each attempt gets what is left of the budget, so a hung request cannot outlive it.
            let remaining = deadline.saturating_sub(start.elapsed());
            let last = match tokio::time::timeout(remaining, self.fetch_chunk(id)).await {
                Ok(Ok(stored)) => return Ok(stored),
                Ok(Err(e)) if e.is_transient() => e.to_string(),
                Ok(Err(e)) => return Err(e),
                Err(_) => format!("no answer within {remaining:?}"),
            };
            let waited = start.elapsed();
            if waited + backoff >= deadline {
                return Err(RepoError::Unavailable {
                    id: *id,
                    url: self.inner.url.clone(),
                    waited,
                    last,
                });
            }
            tracing::debug!(chunk = %id, error = %last, "chunk read failed, retrying in {backoff:?}");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// The stored object of a chunk, refused as corrupt past what zstd can make of a chunk of
    /// the repository's size.
    pub(crate) async fn fetch_chunk(&self, id: &ChunkId) -> Result<Bytes, RepoError> {
        if self.is_local() {
            let (repo, id) = (self.clone(), *id);
            return tokio::task::spawn_blocking(move || repo.read_local_chunk(&id))
                .await
                .map_err(|e| RepoError::io("chunk read", std::io::Error::other(e)))?;
        }
        let path = chunk_path(id);
        match get_bounded(
            &*self.inner.store,
            &path,
            self.max_stored_chunk(),
            Budget::None,
        )
        .await
        {
            Ok(Fetched::Body(b, _)) => Ok(b),
            Ok(Fetched::TooLarge(reason)) => Err(RepoError::CorruptChunk {
                id: *id,
                url: self.inner.url.clone(),
                reason,
            }),
            Err(object_store::Error::NotFound { .. }) => Err(RepoError::MissingChunk {
                id: *id,
                url: self.inner.url.clone(),
            }),
            Err(e) => Err(self.store_err(&path, e)),
        }
    }

    /// Largest stored object a chunk of this repository can be.
    fn max_stored_chunk(&self) -> u64 {
        self.inner
            .codec
            .max_stored(chunk_object_limit(self.inner.config.chunk_size))
    }

    /// The stored object of a chunk of a `file://` repository, read on the calling thread. Only a
    /// regular file is read (not a link, a FIFO or a device the repository's directory may hold
    /// instead), for the length its metadata gave, into memory that is not zeroed first.
    fn read_local_chunk(&self, id: &ChunkId) -> Result<Bytes, RepoError> {
        let dir = self.inner.local_dir.as_ref().expect("a local repository");
        let path = chunk_path(id);
        let corrupt = |reason: String| RepoError::CorruptChunk {
            id: *id,
            url: self.inner.url.clone(),
            reason,
        };
        let failed = |e: std::io::Error| RepoError::Store {
            url: self.inner.url.clone(),
            path: path.to_string(),
            transient: false,
            detail: e.to_string(),
        };
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let file = match rustix::fs::open(dir.join(path.as_ref()), flags, Mode::empty()) {
            Ok(fd) => File::from(fd),
            Err(Errno::NOENT) => {
                return Err(RepoError::MissingChunk {
                    id: *id,
                    url: self.inner.url.clone(),
                });
            }
            Err(Errno::LOOP) => return Err(corrupt("the object is a symbolic link".to_string())),
            Err(e) => return Err(failed(e.into())),
        };
        let meta = file.metadata().map_err(failed)?;
        if !meta.is_file() {
            return Err(corrupt("the object is not a regular file".to_string()));
        }
        let (size, limit) = (meta.len(), self.max_stored_chunk());
        if size > limit {
            return Err(corrupt(format!(
                "the object is {size} bytes, more than the {limit} it can be"
            )));
        }
        // Whole-object reads, as the object store's: a cold object in one request to the disk.
        let mut stored = Vec::with_capacity(size as usize);
        while (stored.len() as u64) < size {
            let offset = stored.len() as u64;
            match rustix::io::pread(&file, spare_capacity(&mut stored), offset) {
                Ok(0) => break,
                Ok(_) | Err(Errno::INTR) => {}
                Err(e) => return Err(failed(e.into())),
            }
        }
        Ok(Bytes::from(stored))
    }

    /// The plain bytes of a chunk from its stored object, checked against its id, decoded on
    /// the blocking pool.
    pub(crate) async fn decode_chunk(
        &self,
        id: &ChunkId,
        stored: Bytes,
        expected_len: usize,
    ) -> Result<Bytes, RepoError> {
        let repo = self.clone();
        let id = *id;
        tokio::task::spawn_blocking(move || repo.decode_chunk_here(&id, stored, expected_len))
            .await
            .map_err(|e| RepoError::io("chunk decoding", std::io::Error::other(e)))?
    }

    /// [`Repository::decode_chunk`] on the calling thread, which it keeps busy for a while.
    pub(crate) fn decode_chunk_here(
        &self,
        id: &ChunkId,
        stored: Bytes,
        expected_len: usize,
    ) -> Result<Bytes, RepoError> {
        let mut plain = Vec::new();
        self.decode_chunk_into(id, stored, expected_len, &mut plain)?;
        Ok(Bytes::from(plain))
    }

    /// [`Repository::decode_chunk_here`] into `plain`, whose allocation is kept: a thread that
    /// decodes chunk after chunk reuses one buffer, warm in its cache, instead of faulting in a
    /// new one each time.
    pub(crate) fn decode_chunk_into(
        &self,
        id: &ChunkId,
        stored: Bytes,
        expected_len: usize,
        plain: &mut Vec<u8>,
    ) -> Result<(), RepoError> {
        let corrupt = |reason: String| RepoError::CorruptChunk {
            id: *id,
            url: self.inner.url.clone(),
            reason,
        };
        let codec = &self.inner.codec;
        let compressed = codec
            .open(chunk_path(id).as_ref(), stored)
            .map_err(corrupt)?;
        // The bound holds after decryption too: never more than the chunk's length.
        decompress_into(&compressed, expected_len, plain)
            .map_err(|e| corrupt(format!("cannot decompress: {e}")))?;
        if plain.len() != expected_len {
            return Err(corrupt(format!(
                "{} bytes after decompression, expected {expected_len}",
                plain.len()
            )));
        }
        if codec.chunk_id(plain) != *id {
            return Err(corrupt("content does not match its hash".to_string()));
        }
        Ok(())
    }

    pub(crate) fn store_err(&self, path: &Path, source: object_store::Error) -> RepoError {
        tracing::debug!(url = %self.inner.url, %path, error = %source, "storage error");
        RepoError::Store {
            url: self.inner.url.clone(),
            path: path.to_string(),
            transient: is_transient(&source, self.is_local()),
            detail: summarize_store_error(&source),
        }
    }

    fn not_found(&self, id: &str) -> RepoError {
        RepoError::BackupNotFound {
            id: id.to_string(),
            url: self.inner.url.clone(),
        }
    }

    fn already_exists(&self) -> RepoError {
        RepoError::AlreadyExists {
            url: self.inner.url.clone(),
        }
    }
}

/// Remote `Generic` errors are what object_store reports for network trouble and server errors
/// once its own retries are spent; local ones are filesystem errors that waiting will not fix.
fn is_transient(e: &object_store::Error, local: bool) -> bool {
    !local && matches!(e, object_store::Error::Generic { .. })
}

thread_local! {
    /// One decompression context per blocking-pool thread, reused: making one per chunk cost
    /// about 2% of a cold read's CPU.
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

/// `compressed` decompressed into `out`, replacing its content, never to more than `limit`
/// bytes: zstd writes up to the buffer's capacity, so the buffer is reused only when that is
/// the limit (chunk after full chunk), and allocated again otherwise.
fn decompress_into(compressed: &[u8], limit: usize, out: &mut Vec<u8>) -> std::io::Result<()> {
    if out.capacity() == limit {
        out.clear();
    } else {
        *out = Vec::with_capacity(limit);
    }
    DECOMPRESSOR.with_borrow_mut(|slot| {
        let decompressor = match slot {
            Some(d) => d,
            None => slot.insert(zstd::bulk::Decompressor::new()?),
        };
        decompressor.decompress_to_buffer(compressed, out).map(drop)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn temp_repo() -> (tempfile::TempDir, Repository) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().join("repo").display());
        let repo = Repository::init(&RepoLocation::new(&url), 64 * 1024)
            .await
            .unwrap();
        (dir, repo)
    }

    fn chunk_file(repo_dir: &std::path::Path, id: &ChunkId) -> std::path::PathBuf {
        repo_dir.join("repo").join(chunk_path(id).to_string())
    }

    fn write_chunk(repo_dir: &std::path::Path, id: &ChunkId, content: &[u8]) {
        let path = chunk_file(repo_dir, id);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, zstd::bulk::compress(content, 3).unwrap()).unwrap();
    }

    #[test]
    fn a_reused_decompression_context_survives_hostile_frames() {
        let good = zstd::bulk::compress(&[7u8; 4096], 1).unwrap();
        let other = zstd::bulk::compress(&[9u8; 100], 1).unwrap();
        let mut out = Vec::new();
        let mut decompress =
            |frame: &[u8], limit| decompress_into(frame, limit, &mut out).map(|()| out.clone());
        assert_eq!(decompress(&good, 4096).unwrap(), vec![7u8; 4096]);
        // A truncated frame and garbage fail...
        assert!(decompress(&good[..good.len() / 2], 4096).is_err());
        assert!(decompress(b"not a zstd frame at all", 4096).is_err());
        // ...and the same thread's context and buffer decode the next frames whole.
        assert_eq!(decompress(&other, 4096).unwrap(), vec![9u8; 100]);
        assert_eq!(decompress(&good, 4096).unwrap(), vec![7u8; 4096]);
        // A frame larger than the limit fails, in a fresh buffer and in a reused larger one.
        assert!(decompress_into(&good, 4095, &mut Vec::new()).is_err());
        assert!(decompress(&good, 100).is_err());
        assert_eq!(decompress(&good, 4096).unwrap(), vec![7u8; 4096]);
    }

    #[tokio::test]
    async fn init_then_open() {
        let (dir, repo) = temp_repo().await;
        assert!(repo.is_local());
        let again = Repository::init(&RepoLocation::new(repo.url()), 1 << 20).await;
        assert!(
            matches!(again, Err(RepoError::AlreadyExists { .. })),
            "{again:?}"
        );
        let opened = Repository::open(&RepoLocation::new(repo.url()))
            .await
            .unwrap();
        assert_eq!(opened.config(), repo.config());
        assert!(repo.list_backups().await.unwrap().backups.is_empty());
        let latest = repo.resolve_backup("latest").await;
        assert!(
            matches!(latest, Err(RepoError::NoBackups { .. })),
            "{latest:?}"
        );
        let missing = repo
            .load_manifest("20260101T000000Z-abcd")
            .await
            .unwrap_err();
        assert!(
            missing.to_string().contains("20260101T000000Z-abcd"),
            "{missing}"
        );
        assert!(missing.to_string().contains(repo.url()), "{missing}");
        let bad = repo.load_manifest("../ir-repo").await;
        assert!(
            matches!(bad, Err(RepoError::InvalidBackupId { .. })),
            "{bad:?}"
        );

        let nothing = format!("file://{}", dir.path().join("nothing").display());
        let err = Repository::open(&RepoLocation::new(&nothing)).await;
        assert!(
            matches!(err, Err(RepoError::NotARepository { .. })),
            "{err:?}"
        );
    }

    fn empty_backup(id: &str, created: OffsetDateTime) -> BackupManifest {
        BackupManifest {
            format_version: FORMAT_VERSION,
            id: id.into(),
            created,
            ended: None,
            pg_version: "15".into(),
            system_identifier: "1".into(),
            start_lsn: "0/1".into(),
            stop_lsn: None,
            timeline: 1,
            total_size: 0,
            chunk_size: 64 * 1024,
            root_mode: 0o700,
            root_uid: 26,
            root_gid: 26,
            labels: Default::default(),
            entries: vec![],
        }
    }

    #[tokio::test]
    async fn a_manifest_never_replaces_another_and_latest_is_the_newest() {
        let (_dir, repo) = temp_repo().await;
        let t = time::macros::datetime!(2026-11-25 06:35:12 UTC);
        let older = empty_backup("20261125T063512Z-ffff", t);
        repo.write_manifest(&older).await.unwrap();
        let again = repo.write_manifest(&empty_backup(&older.id, t)).await;
        assert!(
            matches!(again, Err(RepoError::BackupExists { .. })),
            "{again:?}"
        );
        // The newest by time, not by text: an id that sorts first but was made later.
        let newer = empty_backup("00000000T000000Z-0000", t + Duration::from_secs(1));
        repo.write_manifest(&newer).await.unwrap();
        assert_eq!(repo.resolve_backup("latest").await.unwrap(), newer.id);
        let ids: Vec<String> = repo
            .list_backups()
            .await
            .unwrap()
            .backups
            .into_iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(ids, [older.id, newer.id]);
    }

    #[tokio::test]
    async fn repositories_have_distinct_identities() {
        let (_a, one) = temp_repo().await;
        let (_b, two) = temp_repo().await;
        assert_ne!(one.identity(), two.identity());
        assert_eq!(one.identity().len(), 32);
        let reopened = Repository::open(&RepoLocation::new(one.url()))
            .await
            .unwrap();
        assert_eq!(reopened.identity(), one.identity());
    }

    #[tokio::test]
    async fn open_refuses_unknown_format() {
        let (dir, repo) = temp_repo().await;
        let config = dir.path().join("repo/ir-repo.json");
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(
            &config,
            text.replace("\"format_version\": 1", "\"format_version\": 99"),
        )
        .unwrap();
        let err = Repository::open(&RepoLocation::new(repo.url())).await;
        assert!(
            matches!(err, Err(RepoError::UnsupportedFormat { found: 99, .. })),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn invalid_urls_and_sizes() {
        for url in ["ftp://x/y", "file://relative", "not a url"] {
            let err = Repository::open(&RepoLocation::new(url)).await;
            assert!(
                matches!(err, Err(RepoError::InvalidUrl { .. })),
                "{url}: {err:?}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let err = Repository::init(&RepoLocation::new(dir.path().to_str().unwrap()), 1000).await;
        assert!(
            matches!(err, Err(RepoError::InvalidChunkSize { .. })),
            "{err:?}"
        );
    }

    /// An S3 endpoint on loopback that drops the first `drop_first` connections, then answers
    /// every request with `body`. Returns its URL and the number of connections seen.
    fn flaky_s3(drop_first: usize, body: Vec<u8>) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if n < drop_first {
                    continue; // dropped: the client sees the connection closed
                }
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => req.extend_from_slice(&buf[..k]),
                    }
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: \"1\"\r\n\
                     Last-Modified: Wed, 25 Nov 2026 07:00:00 GMT\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes());
                let _ = conn.write_all(&body);
            }
        });
        (url, seen)
    }

    fn s3_repo(endpoint: String, read_deadline: Duration) -> Repository {
        // SAFETY: no other test of this binary reads the environment concurrently.
        unsafe {
            std::env::set_var("AWS_ACCESS_KEY_ID", "test");
            std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
            std::env::set_var("AWS_REGION", "us-east-1");
        }
        let location = RepoLocation {
            s3_endpoint: Some(endpoint),
            allow_http: Some(true),
            credentials: crate::location::Credentials::Ambient,
            read_deadline,
            ..RepoLocation::new("s3://bucket/prefix")
        };
        let opened = open_store(&location, false).unwrap();
        assert!(opened.local_dir.is_none());
        Repository {
            inner: Arc::new(Inner {
                url: opened.url,
                store: opened.store,
                local_dir: None,
                config: RepoConfig {
                    format_version: FORMAT_VERSION,
                    chunk_size: 64 * 1024,
                    hash: "blake3".to_string(),
                    compression: "zstd".to_string(),
                    created: OffsetDateTime::UNIX_EPOCH,
                    repository_id: None,
                    encryption: None,
                },
                read_deadline,
                codec: ObjectCodec::default(),
            }),
        }
    }

    #[tokio::test]
    async fn read_chunk_retries_transient_errors() {
        let content = b"chunk".repeat(1000);
        let id = ChunkId::of(&content);
        let body = zstd::bulk::compress(&content, 3).unwrap();

        // Reachable again after a few failures: the data arrives.
        let (url, seen) = flaky_s3(5, body);
        let repo = s3_repo(url, Duration::from_secs(20));
        assert_eq!(repo.read_chunk(&id, content.len()).await.unwrap(), content);
        assert!(seen.load(std::sync::atomic::Ordering::SeqCst) > 5);

        // Never reachable: Unavailable once the read deadline is spent.
        let (url, _) = flaky_s3(usize::MAX, Vec::new());
        let repo = s3_repo(url, Duration::from_millis(1500));
        let started = Instant::now();
        let err = repo.read_chunk(&id, content.len()).await.unwrap_err();
        assert!(matches!(err, RepoError::Unavailable { .. }), "{err:?}");
        assert!(err.is_transient());
        assert!(err.to_string().contains("s3://bucket/prefix"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    /// One manifest the store refuses to hand out (403, which waiting will not mend) is listed
    /// apart as unreadable, naming it; the other backups are listed as usual.
    #[tokio::test]
    async fn a_manifest_the_store_refuses_is_listed_as_unreadable() {
        use std::io::{Read, Write};
        let good = empty_backup("20261125T063512Z-0001", OffsetDateTime::UNIX_EPOCH);
        let body = good.encode().unwrap();
        let denied = "20261125T063512Z-0002";
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let size = body.len();
        let good_id = good.id.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => req.extend_from_slice(&buf[..k]),
                    }
                }
                let line = String::from_utf8_lossy(&req)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string();
                let (status, answer) = if line.contains("list-type=2") {
                    let key = |id: &str| {
                        format!(
                            "<Contents><Key>prefix/backups/{id}.json.zst</Key>\
                             <LastModified>2026-11-25T07:00:00.000Z</LastModified>\
                             <ETag>\"1\"</ETag><Size>{size}</Size></Contents>"
                        )
                    };
                    let xml = format!(
                        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult>\
                         <Name>bucket</Name><Prefix>prefix/backups/</Prefix>\
                         <IsTruncated>false</IsTruncated>{}{}</ListBucketResult>",
                        key(&good_id),
                        key(denied)
                    );
                    ("200 OK", xml.into_bytes())
                } else if line.contains(denied) {
                    let xml = "<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code></Error>";
                    ("403 Forbidden", xml.as_bytes().to_vec())
                } else {
                    ("200 OK", body.clone())
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nETag: \"1\"\r\n\
                     Last-Modified: Wed, 25 Nov 2026 07:00:00 GMT\r\nConnection: close\r\n\r\n",
                    answer.len()
                );
                let _ = conn.write_all(head.as_bytes());
                let _ = conn.write_all(&answer);
            }
        });
        let repo = s3_repo(url, Duration::from_secs(5));
        let list = repo.list_backups().await.unwrap();
        assert_eq!(list.backups, [good]);
        assert_eq!(list.invalid.len(), 1, "{list:?}");
        assert_eq!(list.invalid[0].id, denied);
        assert!(
            list.invalid[0].reason.contains("cannot be read")
                && list.invalid[0].reason.contains("AccessDenied"),
            "{list:?}"
        );
    }

    /// A store that announces an object past what a chunk can be is refused from its size,
    /// as corrupt (not retried as if the store were away).
    #[tokio::test]
    async fn an_oversized_remote_chunk_is_corrupt() {
        let content = b"chunk".repeat(1000);
        let id = ChunkId::of(&content);
        let mut body = zstd::bulk::compress(&content, 3).unwrap();
        body.resize(chunk_object_limit(64 * 1024) as usize + 1, 0);
        let (url, seen) = flaky_s3(0, body);
        let repo = s3_repo(url, Duration::from_secs(20));
        let err = repo.read_chunk(&id, content.len()).await.unwrap_err();
        assert!(
            matches!(&err, RepoError::CorruptChunk { reason, .. } if reason.contains("more than the")),
            "{err:?}"
        );
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn read_chunk_detects_damage() {
        let (dir, repo) = temp_repo().await;
        let content = b"some page bytes".repeat(100);
        let id = ChunkId::of(&content);
        write_chunk(dir.path(), &id, &content);
        assert_eq!(repo.read_chunk(&id, content.len()).await.unwrap(), content);

        // Wrong expected length.
        let err = repo.read_chunk(&id, content.len() - 1).await.unwrap_err();
        assert!(matches!(err, RepoError::CorruptChunk { .. }), "{err:?}");
        let err = repo.read_chunk(&id, content.len() + 1).await.unwrap_err();
        assert!(matches!(err, RepoError::CorruptChunk { .. }), "{err:?}");

        // Valid zstd, other content.
        let mut other = content.clone();
        other[7] ^= 1;
        write_chunk(dir.path(), &id, &other);
        let err = repo.read_chunk(&id, content.len()).await.unwrap_err();
        assert!(matches!(err, RepoError::CorruptChunk { .. }), "{err:?}");
        assert!(!err.is_transient());
        assert!(err.to_string().contains(&id.to_hex()), "{err}");

        // Garbage instead of zstd.
        std::fs::write(chunk_file(dir.path(), &id), b"not zstd at all").unwrap();
        let err = repo.read_chunk(&id, content.len()).await.unwrap_err();
        assert!(matches!(err, RepoError::CorruptChunk { .. }), "{err:?}");

        let absent = ChunkId::of(b"absent");
        let err = repo.read_chunk(&absent, 6).await.unwrap_err();
        assert!(matches!(err, RepoError::MissingChunk { .. }), "{err:?}");
    }
}
