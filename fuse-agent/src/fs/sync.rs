//! Getting changes into the metadata store: commits that respect the room on the cache disk,
//! and fsync, which persists dirty bits only once the data they cover is on disk.

use std::sync::Arc;

use super::space::Room;
use super::{IrFs, Node};
use crate::error::{FsError, FsResult};
use crate::meta::{Batch, InodeRecord};

impl IrFs {
    /// Commits `batch` plus the current records of `nodes`, durably. Records are read under the
    /// commit lock, so the last commit always carries the newest record. A commit that takes
    /// room is refused while the disk is full; one that frees room may use the reserve.
    pub(super) fn persist(
        &self,
        nodes: &[&Arc<Node>],
        mut batch: Batch,
        room: Room,
    ) -> FsResult<()> {
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
    pub(super) fn persist_lazy(
        &self,
        nodes: &[&Arc<Node>],
        removed: &[u64],
        room: Room,
    ) -> FsResult<()> {
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

    pub fn fsync(&self, fh: u64, datasync: bool) -> FsResult<()> {
        let of = self.handle(fh)?;
        let _sync = of.node.sync_lock.lock().expect("sync lock");
        self.space
            .note(self.sync_node(&of.node, datasync, Room::Takes))
    }

    /// Makes everything written to `node` so far durable. Caller holds `node.sync_lock`.
    pub(super) fn sync_node(&self, node: &Arc<Node>, datasync: bool, room: Room) -> FsResult<()> {
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

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use crate::fs::ROOT_INO;
    use crate::fs::fixture::{fixture, path_ino, read_all};

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
}
