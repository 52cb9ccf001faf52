//! File content: the base (backup bytes) overlaid with the cache's blocks, writes that mark
//! blocks dirty, truncation that hides base bytes, and the data files the writes land in.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use ir_repository::{ChunkId, Entry, EntryKind};

use super::space::Room;
use super::{Attr, IrFs, NodeState, SetAttr, fsync_dir, now, to_ts};
use crate::blockmap::BLOCK_SIZE;
use crate::error::{FsError, FsResult};
use crate::meta::{InodeRecord, NodeKind};

impl IrFs {
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Bytes> {
        let of = self.handle(fh)?;
        let st = of.node.st.read().expect("node lock");
        let end = offset.saturating_add(size as u64).min(st.size);
        if offset >= end {
            return Ok(Bytes::new());
        }
        self.note_read(&of, &st, offset, end);
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

#[cfg(test)]
mod tests {
    use ir_e2e::pattern;

    use super::*;
    use crate::fs::ROOT_INO;
    use crate::fs::fixture::{CS, fixture, path_ino, read_all};

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
