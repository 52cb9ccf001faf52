//! Crash-safe metadata of an IRCache: inodes, directory entries, dirty-block bitmaps and the
//! binding to a backup, in one redb database. Every commit is atomic; durable commits (fsync,
//! namespace changes) survive a crash, and a crash rolls back to the last durable commit.
//!
//! redb refuses all work after an I/O error in a commit (a full disk) until the database is
//! opened again, so a failed commit closes it and the next one reopens it: the store recovers by
//! itself once the cause is gone, without a remount.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use redb::{Database, Durability, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::error::{FsError, FsResult};

const INODES: TableDefinition<u64, &[u8]> = TableDefinition::new("inodes");
const DENTRIES: TableDefinition<(u64, &[u8]), u64> = TableDefinition::new("dentries");
const BLOCKS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("blocks");
const SETTINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("settings");

const BINDING_KEY: &str = "binding";
const NEXT_INO_KEY: &str = "next_ino";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    Dir,
    File,
    Symlink,
}

/// Persistent attributes of one inode. A regular file's content is its base (the backup file
/// `origin`, first `base_len` bytes) overlaid with its data file in the cache, when it has one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InodeRecord {
    pub kind: NodeKind,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub mtime: (i64, u32),
    pub ctime: (i64, u32),
    /// Index of the backup manifest entry this file started as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<u32>,
    /// Bytes of the base content still visible (shrinks on truncate); 0 for new files.
    #[serde(default)]
    pub base_len: u64,
    /// Directories only: the containing directory (for `..`).
    #[serde(default)]
    pub parent: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Whether the file's data file was made durable: once true, a missing data file is lost
    /// data, not an empty overlay. `None` in records of caches made before this was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub has_data: Option<bool>,
}

/// What a cache belongs to. Mounting a cache with another backup is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    pub backup_id: String,
    pub system_identifier: String,
    /// URL the repository was reached at when the cache was made (for messages).
    pub repository: String,
    /// `Repository::identity()`; `None` in caches made before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_id: Option<String>,
}

/// One atomic change to the store.
#[derive(Debug, Default)]
pub struct Batch {
    pub inodes: Vec<(u64, InodeRecord)>,
    pub removed_inodes: Vec<u64>,
    pub dentries: Vec<(u64, Vec<u8>, u64)>,
    pub removed_dentries: Vec<(u64, Vec<u8>)>,
    /// `None` removes the group.
    pub block_groups: Vec<(u64, u64, Option<Vec<u8>>)>,
    pub next_ino: Option<u64>,
    pub binding: Option<Binding>,
}

/// Everything the store holds, read once at mount.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub binding: Option<Binding>,
    pub next_ino: u64,
    pub inodes: Vec<(u64, InodeRecord)>,
    pub dentries: Vec<(u64, Vec<u8>, u64)>,
    pub block_groups: Vec<(u64, u64, Vec<u8>)>,
}

pub struct MetaStore {
    path: PathBuf,
    state: Mutex<State>,
}

struct State {
    /// `None` once a commit failed: reopened by the next one.
    db: Option<Database>,
    /// Inode changes committed without durability since the last durable commit (`None`: the
    /// inode was removed). Reopening after a failure loses them, so the first commit on a
    /// reopened database carries them again and memory never runs ahead of the store.
    volatile: BTreeMap<u64, Option<InodeRecord>>,
}

impl MetaStore {
    /// Makes a new store at `path` (absent or empty), readable by its owner only.
    pub fn create(path: &Path) -> FsResult<Self> {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        // redb initialises an empty file.
        Self::with_db(path, Database::create(path)?)
    }

    /// Opens the existing store at `path`, checking every page first: a file damaged outside
    /// redb is an error, not a crash.
    pub fn open(path: &Path) -> FsResult<Self> {
        Self::with_db(path, open_db(path)?)
    }

    fn with_db(path: &Path, db: Database) -> FsResult<Self> {
        // Caches made before files were owner-only.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        let txn = db.begin_write()?;
        txn.open_table(INODES)?;
        txn.open_table(DENTRIES)?;
        txn.open_table(BLOCKS)?;
        txn.open_table(SETTINGS)?;
        txn.commit()?;
        Ok(MetaStore {
            path: path.to_path_buf(),
            state: Mutex::new(State {
                db: Some(db),
                volatile: BTreeMap::new(),
            }),
        })
    }

    pub fn load(&self) -> FsResult<Snapshot> {
        let state = self.state.lock().expect("store lock");
        let Some(db) = &state.db else {
            return Err(FsError::Meta(
                "the store is closed after a failed commit".into(),
            ));
        };
        let txn = db.begin_write()?;
        let mut snap = Snapshot::default();
        {
            let settings = txn.open_table(SETTINGS)?;
            if let Some(v) = settings.get(BINDING_KEY)? {
                snap.binding = Some(decode(v.value())?);
            }
            if let Some(v) = settings.get(NEXT_INO_KEY)? {
                snap.next_ino = decode(v.value())?;
            }
            let inodes = txn.open_table(INODES)?;
            for row in inodes.range::<u64>(..)? {
                let (k, v) = row?;
                snap.inodes.push((k.value(), decode(v.value())?));
            }
            let dentries = txn.open_table(DENTRIES)?;
            for row in dentries.range::<(u64, &[u8])>(..)? {
                let (k, v) = row?;
                let (parent, name) = k.value();
                snap.dentries.push((parent, name.to_vec(), v.value()));
            }
            let blocks = txn.open_table(BLOCKS)?;
            for row in blocks.range::<(u64, u64)>(..)? {
                let (k, v) = row?;
                let (ino, group) = k.value();
                snap.block_groups.push((ino, group, v.value().to_vec()));
            }
        }
        txn.abort()?;
        Ok(snap)
    }

    /// Commits `batch` durably.
    pub fn commit(&self, batch: &Batch) -> FsResult<()> {
        self.transact(Change::Durable(batch))
    }

    /// Commits inode records and removals without waiting for the disk: they become durable
    /// with the next durable commit, and a crash before it rolls them back.
    pub fn commit_lazy(&self, records: &[(u64, InodeRecord)], removed: &[u64]) -> FsResult<()> {
        let changes = records
            .iter()
            .map(|(ino, rec)| (*ino, Some(rec.clone())))
            .chain(removed.iter().map(|ino| (*ino, None)))
            .collect();
        self.transact(Change::Lazy(changes))
    }

    /// Whether lazy commits wait for a durable one.
    pub fn has_lazy(&self) -> bool {
        !self.state.lock().expect("store lock").volatile.is_empty()
    }

    fn transact(&self, change: Change) -> FsResult<()> {
        let mut state = self.state.lock().expect("store lock");
        let State { db, volatile } = &mut *state;
        let reopened = db.is_none();
        let open = match db {
            Some(open) => open,
            None => {
                let fresh = db.insert(open_db(&self.path)?);
                tracing::info!(path = %self.path.display(), "reopened the cache metadata store after a failed commit");
                fresh
            }
        };
        let result = (|| {
            let mut txn = open.begin_write()?;
            txn.set_durability(match change {
                Change::Durable(_) => Durability::Immediate,
                Change::Lazy(_) => Durability::None,
            })?;
            if reopened {
                write_inodes(&txn, volatile.iter().map(|(ino, rec)| (*ino, rec.as_ref())))?;
            }
            match &change {
                Change::Durable(batch) => write_batch(&txn, batch)?,
                Change::Lazy(changes) => {
                    write_inodes(&txn, changes.iter().map(|(ino, rec)| (*ino, rec.as_ref())))?
                }
            }
            txn.commit()?;
            Ok(())
        })();
        match result {
            Ok(()) => {
                match change {
                    Change::Durable(_) => volatile.clear(),
                    Change::Lazy(changes) => volatile.extend(changes),
                }
                Ok(())
            }
            Err(e) => {
                // redb fails every later call after an I/O error until it is opened again.
                *db = None;
                Err(e)
            }
        }
    }
}

enum Change<'a> {
    Durable(&'a Batch),
    /// Inode records (`None`: removed), committed without durability.
    Lazy(Vec<(u64, Option<InodeRecord>)>),
}

fn open_db(path: &Path) -> FsResult<Database> {
    Ok(Database::builder()
        .set_check_integrity_on_open(true)
        .open(path)?)
}

fn write_inodes<'a>(
    txn: &WriteTransaction,
    changes: impl Iterator<Item = (u64, Option<&'a InodeRecord>)>,
) -> FsResult<()> {
    let mut inodes = txn.open_table(INODES)?;
    let mut blocks = txn.open_table(BLOCKS)?;
    for (ino, rec) in changes {
        match rec {
            Some(rec) => {
                inodes.insert(ino, encode(rec)?.as_slice())?;
            }
            None => {
                inodes.remove(ino)?;
                blocks.retain_in((ino, 0u64)..=(ino, u64::MAX), |_, _| false)?;
            }
        }
    }
    Ok(())
}

fn write_batch(txn: &WriteTransaction, batch: &Batch) -> FsResult<()> {
    let records = batch.inodes.iter().map(|(ino, rec)| (*ino, Some(rec)));
    let removed = batch.removed_inodes.iter().map(|ino| (*ino, None));
    write_inodes(txn, records.chain(removed))?;
    let mut blocks = txn.open_table(BLOCKS)?;
    for (ino, group, bytes) in &batch.block_groups {
        match bytes {
            Some(b) => blocks.insert((*ino, *group), b.as_slice())?,
            None => blocks.remove((*ino, *group))?,
        };
    }
    let mut dentries = txn.open_table(DENTRIES)?;
    for (parent, name) in &batch.removed_dentries {
        dentries.remove((*parent, name.as_slice()))?;
    }
    for (parent, name, ino) in &batch.dentries {
        dentries.insert((*parent, name.as_slice()), *ino)?;
    }
    let mut settings = txn.open_table(SETTINGS)?;
    if let Some(n) = batch.next_ino {
        settings.insert(NEXT_INO_KEY, encode(&n)?.as_slice())?;
    }
    if let Some(b) = &batch.binding {
        settings.insert(BINDING_KEY, encode(b)?.as_slice())?;
    }
    Ok(())
}

fn encode<T: Serialize>(v: &T) -> FsResult<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| FsError::Meta(e.to_string()))
}

fn decode<T: for<'a> Deserialize<'a>>(b: &[u8]) -> FsResult<T> {
    serde_json::from_slice(b).map_err(|e| FsError::Meta(format!("corrupt record: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(kind: NodeKind) -> InodeRecord {
        InodeRecord {
            kind,
            perm: 0o600,
            uid: 1,
            gid: 2,
            nlink: 1,
            mtime: (1, 2),
            ctime: (3, 4),
            origin: Some(7),
            base_len: 100,
            parent: 1,
            target: None,
            has_data: Some(true),
        }
    }

    #[test]
    fn batch_round_trip_and_removal() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::create(&dir.path().join("m.redb")).unwrap();
        let mut b = Batch::default();
        b.inodes.push((2, rec(NodeKind::File)));
        b.inodes.push((3, rec(NodeKind::File)));
        b.dentries.push((1, b"a".to_vec(), 2));
        b.dentries.push((1, b"b".to_vec(), 3));
        b.block_groups.push((2, 0, Some(vec![1; 512])));
        b.block_groups.push((2, 5, Some(vec![2; 512])));
        b.next_ino = Some(4);
        b.binding = Some(Binding {
            backup_id: "x".into(),
            system_identifier: "1".into(),
            repository: "file:///r".into(),
            repository_id: Some("r-id".into()),
        });
        store.commit(&b).unwrap();

        let mut b2 = Batch::default();
        b2.removed_inodes.push(2);
        b2.removed_dentries.push((1, b"a".to_vec()));
        store.commit(&b2).unwrap();
        drop(store);

        let store = MetaStore::open(&dir.path().join("m.redb")).unwrap();
        let snap = store.load().unwrap();
        assert_eq!(snap.next_ino, 4);
        assert_eq!(snap.binding.unwrap().backup_id, "x");
        assert_eq!(snap.inodes, vec![(3, rec(NodeKind::File))]);
        assert_eq!(snap.dentries, vec![(1, b"b".to_vec(), 3)]);
        assert!(
            snap.block_groups.is_empty(),
            "removed inode takes its bitmap along"
        );
    }

    #[test]
    fn damaged_records_and_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.redb");
        let store = MetaStore::create(&path).unwrap();
        store
            .commit(&Batch {
                inodes: (1..2000).map(|ino| (ino, rec(NodeKind::File))).collect(),
                ..Default::default()
            })
            .unwrap();
        drop(store);
        {
            let db = Database::open(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(INODES)
                .unwrap()
                .insert(7, b"{not json".as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let err = MetaStore::open(&path).unwrap().load().unwrap_err();
        assert!(err.to_string().contains("corrupt record"), "{err}");

        // Bytes changed behind redb's back: refused by the check at open.
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        for b in &mut bytes[middle..middle + 4096] {
            *b ^= 0x5a;
        }
        std::fs::write(&path, bytes).unwrap();
        assert!(MetaStore::open(&path).is_err());
    }
}
