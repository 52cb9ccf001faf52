//! Continuous WAL archiving: the files PostgreSQL's `archive_command` hands over, stored
//! compressed and checksummed per system identifier and timeline, fetched back by
//! `restore_command`, verified, listed and pruned.
//!
//! Layout under the repository (the system identifier in decimal, as manifests write it):
//!
//! ```text
//! wal/<sysid>/<TTTTTTTT>/<segment>.zst                    complete segments
//! wal/<sysid>/<TTTTTTTT>/<segment>.partial.zst            partial segments archived at promotion
//! wal/<sysid>/<TTTTTTTT>/<segment>.XXXXXXXX.backup.zst    backup history files
//! wal/<sysid>/history/<TTTTTTTT>.history.zst              timeline history files
//! restore-points/<sysid>/<TTTTTTTT><LSN, 16 hex>.json     restore points found in segments
//! ```
//!
//! Every object is a header (plain length and BLAKE3 hash) and a zstd frame (see `object.rs`),
//! sealed whole in an encrypted repository, with the object's path as associated data.
//! Names are parsed before any path is built from them, and everything read back is checked:
//! bounded decompression, the hash, and for segments the page header against the name.

mod listing;
mod name;
mod object;
mod records;
mod restore_points;
mod segment;

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::Serialize;
use time::OffsetDateTime;

use crate::error::RepoError;
use crate::manifest::BackupManifest;
use crate::repo::Repository;

use listing::parse_history;
pub use listing::{Gap, StoredWal, TimelineWal, WalListing, Window};
pub use name::{SegmentName, WalFileName};
pub use records::{RestorePointRecord, last_transaction_end, restore_points};
pub use restore_points::RestorePoint;
pub use segment::{MAX_SEGMENT_SIZE, MAX_SMALL_FILE, MIN_SEGMENT_SIZE, SegmentHeader};

const WAL_DIR: &str = "wal";
const HISTORY_DIR: &str = "history";
const SUFFIX: &str = ".zst";
/// Segment headers tried when listing before the segment size is called unknown.
const SIZE_PROBES: usize = 4;
/// Memory that verification may hold in segments being checked at once.
const VERIFY_MEMORY: u64 = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("invalid WAL file name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },

    /// Refused before it was stored: the bytes are not the file the name says.
    #[error("{name} is not a valid WAL file: {reason}")]
    Invalid { name: String, reason: String },

    #[error("WAL file {name} is not in the archive")]
    Missing { name: String },

    #[error(
        "WAL file {name} of system {system_identifier} is already archived in {url} with other \
         content; refusing to replace it (two clusters with the same system identifier archive \
         to one repository, or the file changed after it was archived)"
    )]
    Conflict {
        name: String,
        system_identifier: u64,
        url: String,
    },

    #[error("archived WAL file {name} in {url} is damaged: {reason}")]
    Corrupt {
        name: String,
        url: String,
        reason: String,
    },

    #[error("backup {id} is of system {backup}, this WAL archive of system {archive}")]
    OtherSystem {
        id: String,
        backup: String,
        archive: u64,
    },

    #[error(transparent)]
    Repo(#[from] RepoError),
}

impl WalError {
    /// Whether trying again later may succeed (the repository did not answer).
    pub fn is_transient(&self) -> bool {
        matches!(self, WalError::Repo(e) if e.is_transient())
    }
}

/// What [`WalArchive::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    Stored,
    /// The same bytes were already stored under that name (a push repeated after a crash).
    AlreadyStored,
}

/// The system identifier of a cluster from its `global/pg_control`.
pub fn system_identifier_from_pg_control(bytes: &[u8]) -> Result<u64, String> {
    crate::pgmeta::parse_pg_control(bytes).map(|c| c.system_identifier)
}

/// Checks that `bytes` is the segment (or partial segment) `name` says, and returns its page
/// header, which names the system it belongs to.
pub fn check_segment(name: &str, bytes: &[u8]) -> Result<SegmentHeader, WalError> {
    let parsed = WalFileName::parse(name)?;
    let segment = parsed.segment().ok_or_else(|| WalError::Invalid {
        name: name.to_string(),
        reason: "not a WAL segment".to_string(),
    })?;
    segment::check_segment(&segment, bytes).map_err(|reason| WalError::Invalid {
        name: name.to_string(),
        reason,
    })
}

/// A stored damaged or misplaced object, found by [`WalArchive::verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DamagedWal {
    /// The WAL file's name, or the object's path when it has no valid one.
    pub name: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WalVerifyReport {
    pub system_identifier: u64,
    pub segment_size: Option<u64>,
    pub objects_checked: u64,
    /// Plain bytes of the objects read back.
    pub bytes_checked: u64,
    pub damaged: Vec<DamagedWal>,
    pub gaps: Vec<Gap>,
}

impl WalVerifyReport {
    pub fn is_ok(&self) -> bool {
        self.damaged.is_empty() && self.gaps.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    pub backup_id: String,
    pub system_identifier: u64,
    /// Segments (and partial segments) before this one on timelines up to the backup's are
    /// removed.
    pub keep_from: Option<String>,
    /// Removed (or, in a dry run, to be removed), oldest first.
    pub removed: Vec<String>,
    pub bytes_removed: u64,
}

impl Repository {
    /// The WAL archive of the cluster with `system_identifier`.
    pub fn wal(&self, system_identifier: u64) -> WalArchive<'_> {
        WalArchive {
            repo: self,
            system_identifier,
        }
    }

    /// The system identifiers that have WAL archived here, in increasing order.
    pub async fn wal_systems(&self) -> Result<Vec<u64>, WalError> {
        let prefix = Path::from(WAL_DIR);
        let listed = self
            .store()
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(|e| self.store_err(&prefix, e))?;
        let mut systems: Vec<u64> = listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename()?.parse::<u64>().ok())
            .collect();
        systems.sort_unstable();
        Ok(systems)
    }
}

/// One system identifier's WAL in one repository.
#[derive(Debug, Clone, Copy)]
pub struct WalArchive<'a> {
    repo: &'a Repository,
    system_identifier: u64,
}

/// How a stored object's name is read back from a listing.
#[derive(Clone, Copy)]
enum Listed {
    File(WalFileName),
    /// Not a WAL object name, or in the wrong place.
    Stray,
}

impl WalArchive<'_> {
    pub fn system_identifier(&self) -> u64 {
        self.system_identifier
    }

    fn root(&self) -> String {
        format!("{WAL_DIR}/{}", self.system_identifier)
    }

    /// Where `file` is stored. Built only from a parsed name, so it stays inside `wal/<sysid>/`.
    fn path(&self, file: &WalFileName) -> Path {
        Path::from(format!("{}/{}/{file}{SUFFIX}", self.root(), dir_of(file)))
    }

    /// What a listed object path under this archive names.
    fn parse_path(&self, path: &Path) -> Listed {
        let rest = path
            .as_ref()
            .strip_prefix(&self.root())
            .and_then(|r| r.strip_prefix('/'));
        let Some((dir, file)) = rest.and_then(|r| r.split_once('/')) else {
            return Listed::Stray;
        };
        let Some(parsed) = file
            .strip_suffix(SUFFIX)
            .and_then(|f| WalFileName::parse(f).ok())
        else {
            return Listed::Stray;
        };
        if dir == dir_of(&parsed) {
            Listed::File(parsed)
        } else {
            Listed::Stray
        }
    }

    /// Validates and stores `bytes` as WAL file `name` (a segment, a `.partial` segment, a
    /// `.history` or a `.backup` file), durably before it returns: the object is written with a
    /// create-only put, so two pushes racing never overwrite each other. `AlreadyStored` when
    /// identical bytes are there; [`WalError::Conflict`] when different bytes are stored under
    /// that name. A stored object that is damaged is written again.
    pub async fn push(&self, name: &str, bytes: &[u8]) -> Result<PushOutcome, WalError> {
        let file = WalFileName::parse(name)?;
        check_content(&file, self.system_identifier, bytes).map_err(|reason| {
            WalError::Invalid {
                name: name.to_string(),
                reason,
            }
        })?;
        // Indexed first: a push that fails after it is retried, one that fails before it is
        // never reported done.
        if let Some(segment) = file.segment() {
            self.index_restore_points(segment.timeline, bytes).await?;
        }
        let path = self.path(&file);
        let codec = self.repo.codec();
        let (stored, hash) = cpu_bound(|| {
            object::encode(bytes).map(|(stored, hash)| (codec.seal(path.as_ref(), stored), hash))
        })
        .map_err(|e| RepoError::io(path.to_string(), e))?;
        let payload = PutPayload::from(stored);
        // A second round only when the stored object vanished in between (a prune).
        for _ in 0..2 {
            if self.create(&path, payload.clone()).await? {
                return Ok(PushOutcome::Stored);
            }
            // Something is stored under that name: the same file pushed again (PostgreSQL
            // retries a push whose success it did not see), another file, or a damaged object.
            match self.fetch_file(name, &file).await {
                Ok(existing) if *blake3::hash(&existing).as_bytes() == hash => {
                    return Ok(PushOutcome::AlreadyStored);
                }
                Ok(_) => {
                    return Err(WalError::Conflict {
                        name: name.to_string(),
                        system_identifier: self.system_identifier,
                        url: self.repo.url().to_string(),
                    });
                }
                Err(WalError::Corrupt { reason, .. }) => {
                    tracing::warn!(wal = name, %reason, "archived copy is damaged: writing it again");
                    self.repo
                        .store()
                        .put(&path, payload)
                        .await
                        .map_err(|e| self.repo.store_err(&path, e))?;
                    return Ok(PushOutcome::Stored);
                }
                Err(WalError::Missing { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(WalError::Missing {
            name: name.to_string(),
        })
    }

    /// Writes `payload` at `path` unless something is stored there; whether it wrote.
    async fn create(&self, path: &Path, payload: PutPayload) -> Result<bool, WalError> {
        let store = self.repo.store();
        let create = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match store.put_opts(path, payload.clone(), create).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(false),
            // Stores without conditional writes: a look first is the best there is.
            Err(object_store::Error::NotImplemented { .. }) => match store.head(path).await {
                Ok(_) => Ok(false),
                Err(object_store::Error::NotFound { .. }) => {
                    store
                        .put(path, payload)
                        .await
                        .map_err(|e| self.repo.store_err(path, e))?;
                    Ok(true)
                }
                Err(e) => Err(self.repo.store_err(path, e).into()),
            },
            Err(e) => Err(self.repo.store_err(path, e).into()),
        }
    }

    /// The plain, checksum-verified bytes of WAL file `name`; [`WalError::Missing`] when it is
    /// not archived. A segment's page header is checked against its name and system too, so an
    /// object stored under another name is damage, not WAL.
    pub async fn fetch(&self, name: &str) -> Result<Vec<u8>, WalError> {
        let file = WalFileName::parse(name)?;
        self.fetch_file(name, &file).await
    }

    async fn fetch_file(&self, name: &str, file: &WalFileName) -> Result<Vec<u8>, WalError> {
        let path = self.path(file);
        let corrupt = |reason: String| WalError::Corrupt {
            name: name.to_string(),
            url: self.repo.url().to_string(),
            reason,
        };
        let max_plain = match file {
            WalFileName::Segment(_) | WalFileName::Partial(_) => MAX_SEGMENT_SIZE,
            _ => MAX_SMALL_FILE,
        };
        let got = match self.repo.store().get(&path).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(WalError::Missing {
                    name: name.to_string(),
                });
            }
            Err(e) => return Err(self.repo.store_err(&path, e).into()),
        };
        // Looked at before the body is read: a planted object may be of any size.
        let limit = self
            .repo
            .codec()
            .max_stored(object::max_stored_len(max_plain));
        if got.meta.size > limit {
            return Err(corrupt(format!(
                "{} bytes stored, more than the {limit} such a file can take",
                got.meta.size
            )));
        }
        let stored = got
            .bytes()
            .await
            .map_err(|e| self.repo.store_err(&path, e))?;
        let (file, system) = (*file, self.system_identifier);
        let (codec, at) = (self.repo.codec().clone(), path.clone());
        tokio::task::spawn_blocking(move || {
            let stored = codec.open(at.as_ref(), stored)?;
            let plain = object::decode(&stored, max_plain)?;
            check_content(&file, system, &plain)?;
            Ok(plain)
        })
        .await
        .map_err(|e| RepoError::io(path.to_string(), std::io::Error::other(e)))?
        .map_err(corrupt)
    }

    /// The listing of every object under `prefix`.
    async fn list_under(&self, prefix: String) -> Result<Vec<object_store::ObjectMeta>, WalError> {
        let prefix = Path::from(prefix);
        self.repo
            .store()
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| self.repo.store_err(&prefix, e).into())
    }

    /// Every object stored for this system, as named, with its listing.
    async fn objects(&self) -> Result<Vec<(Listed, object_store::ObjectMeta)>, WalError> {
        let metas = self.list_under(self.root()).await?;
        Ok(metas
            .into_iter()
            .map(|m| (self.parse_path(&m.location), m))
            .collect())
    }

    /// The segment size, from the object header of the first stored segment (or partial
    /// segment) that has a plausible one: one small read; [`WalArchive::verify`] checks every
    /// segment's length. The header of an encrypted object is sealed with the rest: the first
    /// segment that reads back whole says it.
    async fn probe_segment_size(&self, segments: &[WalFileName]) -> Result<Option<u64>, WalError> {
        if self.repo.is_encrypted() {
            for file in segments.iter().take(SIZE_PROBES) {
                match self.fetch_file(&file.to_string(), file).await {
                    Ok(plain) => return Ok(Some(plain.len() as u64)),
                    Err(e) if e.is_transient() => return Err(e),
                    Err(e) => tracing::warn!(wal = %file, error = %e, "segment size not read"),
                }
            }
            return Ok(None);
        }
        for file in segments.iter().take(SIZE_PROBES) {
            let path = self.path(file);
            let head = match self
                .repo
                .store()
                .get_range(&path, 0..object::HEADER_LEN as u64)
                .await
            {
                Ok(head) => head,
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => {
                    let e = self.repo.store_err(&path, e);
                    if e.is_transient() {
                        return Err(e.into());
                    }
                    // Too short to hold a header, say: damage for verify to report.
                    tracing::warn!(wal = %file, error = %e, "cannot read the object header");
                    continue;
                }
            };
            match object::decode_header(&head) {
                Ok(h)
                    if h.len.is_power_of_two()
                        && (MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&h.len) =>
                {
                    return Ok(Some(h.len));
                }
                _ => tracing::warn!(wal = %file, "damaged object header: segment size not read"),
            }
        }
        Ok(None)
    }

    /// What is archived for this system: per timeline the stored segments with the time each
    /// was archived, the timelines with a history file, and the segment size. Reads one
    /// segment to learn the segment size; damage elsewhere is for [`WalArchive::verify`].
    pub async fn list(&self) -> Result<WalListing, WalError> {
        let objects = self.objects().await?;
        self.listing(&objects).await
    }

    async fn listing(
        &self,
        objects: &[(Listed, object_store::ObjectMeta)],
    ) -> Result<WalListing, WalError> {
        // Complete segments first: partial ones are only there after a promotion.
        let mut segment_files: Vec<WalFileName> = objects
            .iter()
            .filter_map(|(l, _)| match l {
                Listed::File(f) if f.segment().is_some() => Some(*f),
                _ => None,
            })
            .collect();
        segment_files.sort_by_key(|f| (matches!(f, WalFileName::Partial(_)), *f));
        let segment_size = self.probe_segment_size(&segment_files).await?;
        let mut listing = WalListing {
            system_identifier: self.system_identifier,
            segment_size,
            timelines: Default::default(),
            history: Default::default(),
            ancestors: Default::default(),
            unreadable: Vec::new(),
        };
        for (listed, meta) in objects {
            let Listed::File(file) = *listed else {
                listing.unreadable.push(meta.location.to_string());
                continue;
            };
            let stored = StoredWal {
                name: file.to_string(),
                archived: OffsetDateTime::from_unix_timestamp_nanos(
                    i128::from(meta.last_modified.timestamp()) * 1_000_000_000
                        + i128::from(meta.last_modified.timestamp_subsec_nanos()),
                )
                .unwrap_or(OffsetDateTime::UNIX_EPOCH),
                stored_size: meta.size,
            };
            let timeline = file.timeline();
            match (file, segment_size) {
                (WalFileName::History { timeline }, _) => {
                    listing.history.insert(timeline);
                }
                (WalFileName::Backup { .. }, _) => listing
                    .timelines
                    .entry(timeline)
                    .or_default()
                    .backup_files
                    .push(stored),
                (WalFileName::Segment(s), Some(size)) => {
                    listing
                        .timelines
                        .entry(timeline)
                        .or_default()
                        .segments
                        .insert(s.segno(size), stored);
                }
                (WalFileName::Partial(s), Some(size)) => {
                    listing
                        .timelines
                        .entry(timeline)
                        .or_default()
                        .partial
                        .insert(s.segno(size), stored);
                }
                (_, None) => listing.unreadable.push(meta.location.to_string()),
            }
        }
        for tl in listing.timelines.values_mut() {
            tl.backup_files.sort_by(|a, b| a.name.cmp(&b.name));
        }
        // Where the timelines branched: a history file that cannot be read or parsed only
        // leaves its timeline out of the windows (verify reports the damage).
        for &timeline in &listing.history {
            let file = WalFileName::History { timeline };
            match self.fetch_file(&file.to_string(), &file).await {
                Ok(bytes) => match parse_history(&String::from_utf8_lossy(&bytes), timeline) {
                    Ok(ancestors) => {
                        listing.ancestors.insert(timeline, ancestors);
                    }
                    Err(e) => tracing::warn!(timeline, error = %e, "unparsable timeline history"),
                },
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => tracing::warn!(timeline, error = %e, "unreadable timeline history"),
            }
        }
        listing.unreadable.sort();
        Ok(listing)
    }

    /// Reads back every stored object of this system and checks it (length, checksum, and a
    /// segment's header against its name), and reports the gaps between the first and the last
    /// segment of each timeline. Fails only when the storage does.
    pub async fn verify(&self) -> Result<WalVerifyReport, WalError> {
        let objects = self.objects().await?;
        let listing = self.listing(&objects).await?;
        let mut damaged: Vec<DamagedWal> = Vec::new();
        let mut files = Vec::new();
        for (listed, meta) in objects {
            match listed {
                Listed::File(f) => files.push(f),
                Listed::Stray => damaged.push(DamagedWal {
                    name: meta.location.to_string(),
                    reason: "not a WAL file name, or under another timeline's directory"
                        .to_string(),
                }),
            }
        }
        files.sort();
        let concurrency = (VERIFY_MEMORY / listing.segment_size.unwrap_or(MAX_SEGMENT_SIZE))
            .clamp(1, 16) as usize;
        let results: Vec<(WalFileName, Result<u64, WalError>)> = futures::stream::iter(files)
            .map(|f| async move {
                let r = self
                    .fetch_file(&f.to_string(), &f)
                    .await
                    .map(|p| p.len() as u64);
                (f, r)
            })
            .buffered(concurrency)
            .collect()
            .await;
        let mut report = WalVerifyReport {
            system_identifier: self.system_identifier,
            segment_size: listing.segment_size,
            objects_checked: 0,
            bytes_checked: 0,
            damaged: Vec::new(),
            gaps: listing.gaps(),
        };
        for (file, result) in results {
            report.objects_checked += 1;
            match result {
                Ok(len) => {
                    report.bytes_checked += len;
                    if file.segment().is_some() && Some(len) != listing.segment_size {
                        report.damaged.push(DamagedWal {
                            name: file.to_string(),
                            reason: format!(
                                "{len} bytes, where this system's other segments have {}",
                                listing.segment_size.unwrap_or_default()
                            ),
                        });
                    }
                }
                Err(WalError::Corrupt { reason, .. }) => report.damaged.push(DamagedWal {
                    name: file.to_string(),
                    reason,
                }),
                // Pruned between the listing and the read.
                Err(WalError::Missing { .. }) => report.objects_checked -= 1,
                Err(e) => return Err(e),
            }
        }
        damaged.sort_by(|a, b| a.name.cmp(&b.name));
        report.damaged.extend(damaged);
        Ok(report)
    }

    /// Deletes the segments and partial segments that end at or before the start of `backup`'s
    /// start segment, on its timeline and every earlier one; history and backup history files
    /// are kept. Oldest first, so an interrupted prune leaves no gap behind. With `dry_run`,
    /// only says what it would delete.
    pub async fn prune(
        &self,
        backup: &BackupManifest,
        dry_run: bool,
    ) -> Result<PruneReport, WalError> {
        if backup.system_identifier != self.system_identifier.to_string() {
            return Err(WalError::OtherSystem {
                id: backup.id.clone(),
                backup: backup.system_identifier.clone(),
                archive: self.system_identifier,
            });
        }
        let listing = self.list().await?;
        let mut report = PruneReport {
            dry_run,
            backup_id: backup.id.clone(),
            system_identifier: self.system_identifier,
            keep_from: None,
            removed: Vec::new(),
            bytes_removed: 0,
        };
        let (Some(size), Some(start)) = (listing.segment_size, crate::parse_lsn(&backup.start_lsn))
        else {
            return Ok(report);
        };
        let first_kept = start / size;
        report.keep_from = listing.segment_of(backup.timeline, start);
        let mut doomed: Vec<(u64, u32, &StoredWal)> = listing
            .timelines
            .range(..=backup.timeline)
            .flat_map(|(&tli, tl)| {
                tl.segments
                    .range(..first_kept)
                    .chain(tl.partial.range(..first_kept))
                    .map(move |(&segno, s)| (segno, tli, s))
            })
            .collect();
        doomed.sort_by_key(|&(segno, tli, s)| (segno, tli, s.name.clone()));
        for (_, _, stored) in doomed {
            if !dry_run {
                let file = WalFileName::parse(&stored.name)?;
                let path = self.path(&file);
                match self.repo.store().delete(&path).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(self.repo.store_err(&path, e).into()),
                }
            }
            report.removed.push(stored.name.clone());
            report.bytes_removed += stored.stored_size;
        }
        // The restore points in what was pruned can no longer be recovered to.
        self.prune_restore_points(
            backup.timeline,
            first_kept.saturating_mul(size),
            dry_run,
            &mut report,
        )
        .await?;
        Ok(report)
    }
}

/// Runs `work`, tens of milliseconds of CPU on borrowed bytes, off the runtime's other tasks
/// where the runtime can do without this thread meanwhile (copying a segment to hand it to the
/// blocking pool would cost more than it saves); a single-threaded runtime runs it in place.
fn cpu_bound<T>(work: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

/// The directory of a file under `wal/<sysid>/`: its timeline's, or the history files'.
fn dir_of(file: &WalFileName) -> String {
    match file {
        WalFileName::History { .. } => HISTORY_DIR.to_string(),
        other => format!("{:08X}", other.timeline()),
    }
}

/// What a file must be, checked before it is stored and again, beyond its checksum, when it is
/// read back (an object copied under another name has a valid checksum too): a segment's size
/// and page header against its name and this system, a history file's lines, the size of the
/// small files.
fn check_content(file: &WalFileName, system: u64, plain: &[u8]) -> Result<(), String> {
    match file {
        WalFileName::Segment(s) | WalFileName::Partial(s) => {
            let h = segment::check_segment(s, plain)?;
            if h.system_identifier != system {
                return Err(format!(
                    "it belongs to system {}, not {system}",
                    h.system_identifier
                ));
            }
            Ok(())
        }
        WalFileName::History { timeline } => segment::check_history(*timeline, plain),
        WalFileName::Backup { .. } => segment::check_small(plain),
    }
}
