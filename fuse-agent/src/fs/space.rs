//! A full cache disk: ENOSPC, never EIO, for what needs room; what frees room still works; and
//! the mount heals by itself once room comes back.

use std::fs::OpenOptions;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use super::{IrFs, StatFs};
use crate::error::{FsError, FsResult};
use crate::stats::MountStats;

const RESERVE_FILE: &str = "reserve";
/// Room kept back for the commits of operations that free space on a full cache disk: a
/// commit writes a few pages, so this covers hundreds of them.
const RESERVE_BYTES: u64 = 4 << 20;
/// Free space, besides a whole reserve, before a full cache disk takes writes again.
const HEADROOM_BYTES: u64 = 1 << 20;
/// How often a full cache disk is looked at again while operations are refused.
const RECHECK_MILLIS: u64 = 100;

/// Whether a commit needs room on the cache disk or is part of freeing some.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Room {
    Takes,
    Frees,
}

/// Room on the cache disk. A full disk must not wedge the cache: a reserve file keeps room for
/// the commits of operations that free space (unlink, rmdir, shrinking truncate, rename over a
/// file), and once an operation met ENOSPC the others are refused up front, without touching
/// the store, until the reserve is whole again with room left besides.
pub(super) struct Space {
    cache_dir: PathBuf,
    reserve: PathBuf,
    full: AtomicBool,
    /// When free space was last looked at while full, in ms since `since`: refused writes cost
    /// no syscall between two looks.
    looked: AtomicU64,
    since: Instant,
    stats: Arc<MountStats>,
}

impl Space {
    pub(super) fn new(cache_dir: &Path, stats: Arc<MountStats>) -> Self {
        Space {
            cache_dir: cache_dir.to_path_buf(),
            reserve: cache_dir.join(RESERVE_FILE),
            full: AtomicBool::new(false),
            looked: AtomicU64::new(0),
            since: Instant::now(),
            stats,
        }
    }

    fn is_full(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }

    /// Refuses an operation that needs room while the disk is known to be full.
    pub(super) fn check(&self) -> FsResult<()> {
        if !self.is_full() || self.room_is_back(false) {
            return Ok(());
        }
        Err(FsError::CacheFull(self.cache_dir.clone()))
    }

    /// Whether a full disk has room again: the reserve could be made whole and headroom is
    /// left. Looks at most every `RECHECK_MILLIS` unless `now`.
    fn room_is_back(&self, now: bool) -> bool {
        let at = self.since.elapsed().as_millis() as u64;
        let last = self.looked.load(Ordering::Relaxed);
        if !now
            && (at.saturating_sub(last) < RECHECK_MILLIS
                || self
                    .looked
                    .compare_exchange(last, at, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err())
        {
            return false;
        }
        if self.fill_reserve().is_err() {
            return false;
        }
        match free_bytes(&self.cache_dir) {
            Ok(free) if free >= HEADROOM_BYTES => {}
            _ => return false,
        }
        if self.full.swap(false, Ordering::Relaxed) {
            tracing::info!(cache = %self.cache_dir.display(), "the cache disk has room again: writes are accepted");
        }
        true
    }

    /// After an operation freed space: writes may resume at once.
    pub(super) fn freed(&self) {
        if self.is_full() {
            self.room_is_back(true);
        }
    }

    /// Passes `result` on; an ENOSPC marks the disk full and is counted.
    pub(super) fn note<T>(&self, result: FsResult<T>) -> FsResult<T> {
        if let Err(e) = &result
            && e.errno() == libc::ENOSPC
        {
            self.stats.enospc_refusals.fetch_add(1, Ordering::Relaxed);
            self.mark_full();
        }
        result
    }

    pub(super) fn mark_full(&self) {
        if !self.full.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                cache = %self.cache_dir.display(),
                "the cache disk is full: operations that need room get ENOSPC until some is made; unlink, rmdir, shrinking truncate and rename over a file still work"
            );
        }
    }

    /// Gives the reserve file its whole size.
    pub(super) fn fill_reserve(&self) -> std::io::Result<()> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&self.reserve)?;
        // SAFETY: plain syscall on an fd we own for the duration of the call.
        let ret = unsafe {
            libc::posix_fallocate(
                std::os::fd::AsRawFd::as_raw_fd(&file),
                0,
                RESERVE_BYTES as libc::off_t,
            )
        };
        match ret {
            0 => Ok(()),
            errno => Err(std::io::Error::from_raw_os_error(errno)),
        }
    }

    /// Hands the reserve's room over to the commit that follows; whether there was any.
    fn release_reserve(&self) -> bool {
        let released = OpenOptions::new()
            .write(true)
            .open(&self.reserve)
            .and_then(|f| {
                let had = f.metadata()?.len() > 0;
                f.set_len(0)?;
                Ok(had)
            });
        match released {
            Ok(had) => had,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => {
                tracing::warn!(path = %self.reserve.display(), error = %e, "could not release the cache's reserve");
                false
            }
        }
    }

    /// Runs `work` (a commit that must not fail for lack of room); on ENOSPC, once more with
    /// the reserve's room.
    pub(super) fn with_reserve<T>(&self, work: impl Fn() -> FsResult<T>) -> FsResult<T> {
        if self.is_full() {
            self.release_reserve();
        }
        match work() {
            Err(e) if e.errno() == libc::ENOSPC && self.release_reserve() => {
                self.mark_full();
                work()
            }
            result => result,
        }
    }
}

impl IrFs {
    pub fn statfs(&self) -> FsResult<StatFs> {
        let st = nix_statvfs(&self.cache_dir)?;
        let files = self.ns.read().expect("namespace lock").nodes.len() as u64;
        Ok(StatFs {
            blocks: st.0,
            bfree: st.1,
            bavail: st.2,
            files: files + st.3,
            ffree: st.3,
            bsize: st.4,
        })
    }
}

/// Bytes an unprivileged user may still write on the filesystem holding `path`.
fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let (_, _, bavail, _, bsize) = nix_statvfs(path)?;
    Ok(bavail.saturating_mul(u64::from(bsize)))
}

/// (blocks, bfree, bavail, ffree, bsize) of the filesystem holding `path`.
fn nix_statvfs(path: &Path) -> std::io::Result<(u64, u64, u64, u64, u32)> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `s` a properly sized out-parameter.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((
        s.f_blocks,
        s.f_bfree,
        s.f_bavail,
        s.f_ffree,
        s.f_frsize as u32,
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::ffi::{OsStr, OsString};
    use std::fs::{self, File};
    use std::time::Duration;

    use ir_e2e::pattern;
    use ir_e2e::tmpfs::Tmpfs;

    use super::*;
    use crate::fs::fixture::{fixture, path_ino, read_all};
    use crate::fs::{ROOT_INO, SetAttr};

    /// Fills the disk under `path` with a plain file, as another program would.
    fn fill_from_outside(path: &Path) {
        let mut file = File::create(path).unwrap();
        let chunk = vec![3u8; 64 << 10];
        loop {
            match std::io::Write::write_all(&mut file, &chunk) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
    }

    #[track_caller]
    fn assert_enospc<T>(result: FsResult<T>, what: &str) {
        match result {
            Ok(_) => panic!("{what} succeeded on a full disk"),
            Err(e) => assert_eq!(e.errno(), libc::ENOSPC, "{what}: {e}"),
        }
    }

    fn size(n: u64) -> SetAttr {
        SetAttr {
            size: Some(n),
            ..Default::default()
        }
    }

    #[test]
    fn full_cache_disk_is_enospc_frees_and_recovers_without_remount() {
        let f = fixture();
        let disk = f.dir.path().join("disk");
        let _tmpfs = Tmpfs::mount(&disk, "16m");
        let cache = disk.join("cache");
        let opts = f.options();
        let fs = f.open_with(&cache, &opts).unwrap();
        let file = |name: &str, len: usize| {
            let (a, fh) = fs
                .create(ROOT_INO, OsStr::new(name), 0o600, 101, 104)
                .unwrap();
            fs.write(fh, 0, &pattern(len, a.ino)).unwrap();
            fs.fsync(fh, false).unwrap();
            (a.ino, fh)
        };
        let kept = pattern(100_000, 5);
        let (keep, keep_fh) = file("keep", 0);
        fs.write(keep_fh, 0, &kept).unwrap();
        fs.fsync(keep_fh, false).unwrap();
        let (old, _) = file("old", 64 << 10);
        // Together they free less than the headroom a full disk needs to take writes again.
        let (long, _) = file("long", 512 << 10);
        file("victim", 64 << 10);
        file("gone", 128 << 10);
        fs.mkdir(ROOT_INO, OsStr::new("empty"), 0o700, 101, 104)
            .unwrap();
        // Another program's file on the same disk; deleting it is how room comes back.
        let outside = disk.join("outside");
        fs::write(&outside, vec![1u8; 6 << 20]).unwrap();

        let (_, filler) = file("filler", 0);
        let chunk = vec![7u8; 64 << 10];
        let mut offset = 0;
        let err = loop {
            match fs.write(filler, offset, &chunk) {
                Ok(n) => offset += n as u64,
                Err(e) => break e,
            }
            assert!(offset < 16 << 20, "the disk never filled");
        };
        assert_eq!(err.errno(), libc::ENOSPC, "{err}");

        // What needs room is refused with ENOSPC (never EIO) and changes nothing.
        let name = OsStr::new;
        assert_enospc(fs.create(ROOT_INO, name("new"), 0o600, 0, 0), "create");
        assert_enospc(fs.mkdir(ROOT_INO, name("dir"), 0o700, 0, 0), "mkdir");
        assert_enospc(
            fs.symlink(ROOT_INO, name("sym"), Path::new("keep"), 0, 0),
            "symlink",
        );
        assert_enospc(fs.link(keep, ROOT_INO, name("keep2")), "link");
        assert_enospc(
            fs.rename(ROOT_INO, name("keep"), ROOT_INO, name("moved"), false),
            "rename to a new name",
        );
        assert_enospc(fs.write(keep_fh, 0, b"x"), "write");
        assert_enospc(fs.setattr(keep, &size(4 << 20)), "truncate growing");
        assert_enospc(fs.fsync(filler, false), "fsync");
        assert_eq!(fs.getattr(keep).unwrap().size, kept.len() as u64);
        for gone in ["new", "dir", "sym", "keep2", "moved"] {
            assert!(matches!(
                fs.lookup(ROOT_INO, name(gone)),
                Err(FsError::NotFound)
            ));
        }
        assert!(opts.stats.enospc_refusals.load(Ordering::Relaxed) >= 9);

        // What frees room works on the full disk.
        fs.unlink(ROOT_INO, name("gone")).unwrap();
        fs.rmdir(ROOT_INO, name("empty")).unwrap();
        fs.rename(ROOT_INO, name("old"), ROOT_INO, name("victim"), false)
            .unwrap();
        fs.setattr(long, &size(8192)).unwrap();
        assert_enospc(fs.mkdir(ROOT_INO, name("dir"), 0o700, 0, 0), "still full");

        // Room comes back: the same mount takes writes again.
        fs::remove_file(&outside).unwrap();
        std::thread::sleep(Duration::from_millis(3 * RECHECK_MILLIS));
        fs.mkdir(ROOT_INO, name("after"), 0o700, 101, 104).unwrap();
        fs.write(keep_fh, 0, b"again").unwrap();
        fs.fsync(keep_fh, false).unwrap();
        assert!(cache.join(RESERVE_FILE).metadata().unwrap().len() == RESERVE_BYTES);

        // After a crash the store holds exactly what was acknowledged.
        drop(fs);
        let fs = f.open_with(&cache, &opts).unwrap();
        let mut want = kept.clone();
        want[..5].copy_from_slice(b"again");
        assert_eq!(read_all(&fs, path_ino(&fs, "keep")), want);
        assert_eq!(
            read_all(&fs, path_ino(&fs, "victim")),
            pattern(64 << 10, old)
        );
        assert_eq!(fs.getattr(long).unwrap().size, 8192);
        path_ino(&fs, "after");
        for gone in ["gone", "empty", "old", "dir", "new", "moved"] {
            assert!(matches!(
                fs.lookup(ROOT_INO, name(gone)),
                Err(FsError::NotFound)
            ));
        }
    }

    #[test]
    fn store_failing_for_room_recovers_without_remount() {
        let f = fixture();
        let disk = f.dir.path().join("disk");
        let _tmpfs = Tmpfs::mount(&disk, "8m");
        let cache = disk.join("cache");
        let opts = f.options();
        let fs = f.open_with(&cache, &opts).unwrap();
        fs.mkdir(ROOT_INO, OsStr::new("early"), 0o700, 101, 104)
            .unwrap();
        // Its attributes at close are committed without durability, then the store fails.
        let (lazy, fh) = fs
            .create(ROOT_INO, OsStr::new("lazy"), 0o600, 101, 104)
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
        fs.write(fh, 0, b"written").unwrap();
        fs.release(fh).unwrap();
        let lazy_mtime = fs.getattr(lazy.ino).unwrap().mtime;
        assert_ne!(lazy_mtime, lazy.mtime);
        let outside = disk.join("outside");
        fill_from_outside(&outside);

        // Namespace changes until the store itself cannot commit for lack of room.
        let name = |i: usize| OsString::from(format!("d{i}"));
        let mut made = 0;
        let err = loop {
            match fs.mkdir(ROOT_INO, &name(made), 0o700, 101, 104) {
                Ok(_) => made += 1,
                Err(e) => break e,
            }
            assert!(made < 50_000, "the store never ran out of room");
        };
        assert_eq!(err.errno(), libc::ENOSPC, "{err}");
        assert_enospc(fs.mkdir(ROOT_INO, OsStr::new("x"), 0o700, 0, 0), "mkdir");
        // The reserve gives the store the room to reopen and to commit a removal.
        fs.rmdir(ROOT_INO, OsStr::new("early")).unwrap();

        fs::remove_file(&outside).unwrap();
        std::thread::sleep(Duration::from_millis(3 * RECHECK_MILLIS));
        fs.mkdir(ROOT_INO, OsStr::new("after"), 0o700, 101, 104)
            .unwrap();

        drop(fs);
        let fs = f.open_with(&cache, &opts).unwrap();
        let names: HashSet<OsString> = fs
            .readdir(ROOT_INO)
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert!(names.contains(OsStr::new("after")));
        for gone in ["early", "x"] {
            assert!(!names.contains(OsStr::new(gone)), "{gone}");
        }
        assert!((0..made).all(|i| names.contains(&name(i))));
        assert!(!names.contains(&name(made)));
        // The reopened store got the commit it lost again: the store never fell behind memory.
        assert_eq!(fs.getattr(lazy.ino).unwrap().mtime, lazy_mtime);
    }
}
