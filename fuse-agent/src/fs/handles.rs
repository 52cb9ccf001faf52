//! Open files: file handles, the close that may purge an unlinked file, and readahead for
//! handles that read sequentially.

use std::ffi::OsStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ir_repository::EntryKind;

use super::space::Room;
use super::{Attr, IrFs, NodeState, OpenFile};
use crate::error::{FsError, FsResult};
use crate::meta::NodeKind;

impl IrFs {
    /// Creates a file and opens it.
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
                window: AtomicU64::new(0),
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

    /// Notes a read of `offset..end` through `of`, reading ahead when the handle reads
    /// sequentially. Sequential enough: this read starts in or next to the chunk where the last
    /// one ended (the kernel's own readahead reorders requests, so an exact match is too
    /// strict). Reads ahead once per chunk the reader enters, not on every read within it, and
    /// further each time: the window doubles from [`READAHEAD_START`] chunks to
    /// `readahead_chunks`, so a long scan keeps enough fetches in flight to hide a remote
    /// store's latency while a short run of reads does not fetch far past what it wants. A
    /// read elsewhere starts the window again.
    pub(super) fn note_read(&self, of: &OpenFile, st: &NodeState, offset: u64, end: u64) {
        let previous_end = of.read_end.swap(end, Ordering::Relaxed);
        let cs = self.manifest.chunk_size;
        let sequential = offset == 0 || (previous_end / cs).abs_diff(offset / cs) <= 1;
        let enters_chunk = previous_end.saturating_sub(1) / cs != (end - 1) / cs;
        if !sequential {
            of.window.store(0, Ordering::Relaxed);
        } else if enters_chunk {
            let window = next_window(of.window.load(Ordering::Relaxed), self.readahead_chunks);
            of.window.store(window, Ordering::Relaxed);
            self.readahead(st, end, window);
        }
    }

    fn readahead(&self, st: &NodeState, from: u64, n: u64) {
        let Some(origin) = st.rec.origin else {
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
        let last = (st.rec.base_len.div_ceil(cs)).min(first + n);
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
}

/// Chunks read ahead when a handle first reads sequentially.
const READAHEAD_START: u64 = 4;

/// The readahead window after `window` (0: none yet), at most `max` chunks.
fn next_window(window: u64, max: usize) -> u64 {
    let max = max as u64;
    if window == 0 {
        READAHEAD_START.min(max)
    } else {
        window.saturating_mul(2).min(max)
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::fs;

    use crate::error::FsError;
    use crate::fs::ROOT_INO;
    use crate::fs::fixture::fixture;

    use super::next_window;

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
    fn the_readahead_window_doubles_up_to_its_limit() {
        let grown: Vec<u64> = std::iter::successors(Some(0), |w| Some(next_window(*w, 32)))
            .skip(1)
            .take(6)
            .collect();
        assert_eq!(grown, [4, 8, 16, 32, 32, 32]);
        assert_eq!(next_window(0, 2), 2, "never past the limit");
        assert_eq!(next_window(0, 0), 0, "readahead off");
        assert_eq!(next_window(8, 12), 12);
    }
}
