//! The namespace: lookups, and the changes to directory entries and inodes (mknod, mkdir,
//! symlink, link, unlink, rmdir, rename), each one commit, undone in memory if it fails.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use super::space::Room;
use super::{Attr, DirEntry, IrFs, Namespace, Node, NodeState, ROOT_INO, now};
use crate::blockmap::BlockMap;
use crate::error::{FsError, FsResult};
use crate::meta::{Batch, InodeRecord, NodeKind};

impl IrFs {
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
        let is_dir = node.is_dir();
        ns.removable(ino, is_dir, want_dir)?;
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

    pub(super) fn remove_data(&self, ino: u64) {
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
        let is_dir = node.is_dir();
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
            let old_is_dir = old_node.is_dir();
            ns.removable(old, old_is_dir, is_dir)?;
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
}

impl Namespace {
    /// Refuses to remove entry `ino` (a directory if `is_dir`) where a directory (`want_dir`) or
    /// a non-directory is asked for, and a directory that is not empty.
    fn removable(&self, ino: u64, is_dir: bool, want_dir: bool) -> FsResult<()> {
        match (want_dir, is_dir) {
            (true, false) => Err(FsError::NotDir),
            (false, true) => Err(FsError::IsDir),
            (true, true) if self.children.get(&ino).is_some_and(|c| !c.is_empty()) => {
                Err(FsError::NotEmpty)
            }
            _ => Ok(()),
        }
    }
}

impl Node {
    fn is_dir(&self) -> bool {
        self.st.read().expect("node lock").rec.kind == NodeKind::Dir
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::fixture::{fixture, path_ino, read_all};

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
}
