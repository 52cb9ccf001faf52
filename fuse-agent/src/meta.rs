//! Crash-safe metadata of an IRCache: inodes, directory entries, dirty-block bitmaps and the
//! binding to a backup, in one redb database. Every commit is atomic; durable commits (fsync,
//! namespace changes) survive a crash, and a crash rolls back to the last durable commit.

use std::path::Path;

use redb::{Database, Durability, ReadableTable, TableDefinition};
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
}

/// What a cache belongs to. Mounting a cache with another backup is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    pub backup_id: String,
    pub system_identifier: String,
    pub repository: String,
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

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.inodes.is_empty()
            && self.removed_inodes.is_empty()
            && self.dentries.is_empty()
            && self.removed_dentries.is_empty()
            && self.block_groups.is_empty()
            && self.next_ino.is_none()
            && self.binding.is_none()
    }
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
    db: Database,
}

impl MetaStore {
    pub fn open(path: &Path) -> FsResult<Self> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(INODES)?;
        txn.open_table(DENTRIES)?;
        txn.open_table(BLOCKS)?;
        txn.open_table(SETTINGS)?;
        txn.commit()?;
        Ok(MetaStore { db })
    }

    pub fn load(&self) -> FsResult<Snapshot> {
        let txn = self.db.begin_write()?;
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

    pub fn commit(&self, batch: &Batch, durable: bool) -> FsResult<()> {
        if batch.is_empty() && !durable {
            return Ok(());
        }
        let mut txn = self.db.begin_write()?;
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })?;
        {
            let mut inodes = txn.open_table(INODES)?;
            for (ino, rec) in &batch.inodes {
                inodes.insert(*ino, encode(rec)?.as_slice())?;
            }
            let mut blocks = txn.open_table(BLOCKS)?;
            for ino in &batch.removed_inodes {
                inodes.remove(*ino)?;
                blocks.retain_in((*ino, 0u64)..=(*ino, u64::MAX), |_, _| false)?;
            }
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
        }
        txn.commit()?;
        Ok(())
    }
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
        }
    }

    #[test]
    fn batch_round_trip_and_removal() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open(&dir.path().join("m.redb")).unwrap();
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
        });
        store.commit(&b, true).unwrap();

        let mut b2 = Batch::default();
        b2.removed_inodes.push(2);
        b2.removed_dentries.push((1, b"a".to_vec()));
        store.commit(&b2, true).unwrap();
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
}
