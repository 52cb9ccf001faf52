//! Opening a cache: the checks that refuse a cache made for another backup or one that lost
//! its store or a data file, the reclaiming of what a previous mount left behind, and the
//! population of a new cache from the backup's manifest.

use std::collections::HashMap;
use std::fs::{self, OpenOptions, Permissions};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};

use ir_repository::{BackupManifest, EntryKind};

use super::space::Space;
use super::{
    CacheOptions, ChunkSource, IrFs, Namespace, Node, NodeState, ROOT_INO, fsync_dir, now,
    private_dir,
};
use crate::blockmap::BlockMap;
use crate::error::{FsError, FsResult};
use crate::meta::{Batch, Binding, InodeRecord, MetaStore, NodeKind, Snapshot};

pub(super) const META_FILE: &str = "ircache.redb";
const DATA_DIR: &str = "data";
const TMP_DIR: &str = "tmp";

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
        let (ns, orphans) = Namespace::load(snap, &manifest, cache_dir, &data_dir)?;
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
}

impl Namespace {
    /// The namespace `snap` holds, checked against the backup and the data files: a record that
    /// does not fit is a refusal naming it, and a data file that holds writes must be there.
    /// Data files of unlinked or never durable inodes are deleted; returns the unlinked inodes,
    /// whose records are still to be removed.
    fn load(
        snap: Snapshot,
        manifest: &BackupManifest,
        cache_dir: &Path,
        data_dir: &Path,
    ) -> FsResult<(Namespace, Vec<u64>)> {
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
        for f in fs::read_dir(data_dir)? {
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
        Ok((ns, orphans))
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

fn is_empty_dir(dir: &Path) -> std::io::Result<bool> {
    match fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e),
    }
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

fn split_path(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("", path),
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::*;
    use crate::fs::fixture::{Fixture, fixture, path_ino, read_all};

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
}
