//! Mounting a backup: cache lock, stale-mount recovery, the FUSE session and its teardown.

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fuser::{BackgroundSession, Config, MountOption, SessionACL};
use ir_repository::{BackupManifest, Repository};
use tokio::runtime::Handle;

use crate::error::FsError;
use crate::fs::{CacheOptions, IrFs, private_dir, tighten};
use crate::fuse::FuseAdapter;
use crate::lease::BackupLease;
use crate::source::{RepoSource, SourceConfig};
use crate::stats::MountStats;

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mount point {0}: {1}")]
    MountPoint(PathBuf, std::io::Error),
    #[error("cache {0} is in use by another mount")]
    CacheBusy(PathBuf),
    #[error("cache {0}: {1}")]
    Cache(PathBuf, std::io::Error),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(
        "mounting FUSE at {0}: {1} (is /dev/fuse available and are we root or allowed to use fusermount3?)"
    )]
    Fuse(PathBuf, std::io::Error),
}

/// The largest in-memory chunk cache a mount takes, MiB (1 TiB): more is a mistake, and the
/// flags that set it in MiB refuse it rather than overflow its size in bytes.
pub const MAX_MEMORY_CACHE_MIB: u64 = 1 << 20;

#[derive(Debug, Clone)]
pub struct MountOptions {
    pub mountpoint: PathBuf,
    pub cache_dir: PathBuf,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// FUSE worker threads.
    pub threads: usize,
    pub memory_cache_bytes: u64,
    /// Size limit of the on-disk chunk cache, used for remote repositories only.
    pub disk_cache_bytes: u64,
    pub readahead_chunks: usize,
}

impl MountOptions {
    pub fn new(mountpoint: PathBuf, cache_dir: PathBuf) -> Self {
        MountOptions {
            mountpoint,
            cache_dir,
            uid: None,
            gid: None,
            threads: 4,
            memory_cache_bytes: 256 << 20,
            disk_cache_bytes: 4 << 30,
            readahead_chunks: 8,
        }
    }
}

/// A mounted backup. Unmounts when `unmount` is called or when dropped.
pub struct Mounted {
    session: Option<BackgroundSession>,
    fs: Arc<IrFs>,
    stats: Arc<MountStats>,
    mountpoint: PathBuf,
    lease: Option<Box<BackupLease>>,
    _lock: File,
}

impl Mounted {
    /// Bytes read from the repository since the mount: see [`MountStats::fetched_bytes`].
    pub fn bytes_fetched(&self) -> u64 {
        self.stats.fetched_bytes.load(Ordering::Relaxed)
    }

    /// What the mount has counted since it was mounted.
    pub fn stats(&self) -> &Arc<MountStats> {
        &self.stats
    }

    /// Makes everything written through the mount so far durable in the cache, as if each
    /// file had been fsynced, and stays mounted.
    pub fn flush(&self) -> Result<(), MountError> {
        Ok(self.fs.flush_all()?)
    }

    /// Unmounts (lazily, so open files keep working until closed) and waits up to `wait` for
    /// the session to end. Everything written is flushed to the cache either way.
    pub fn unmount(mut self, wait: Duration) -> Result<(), MountError> {
        let session = self.session.take().expect("session present until unmount");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(session.umount_and_join());
        });
        match rx.recv_timeout(wait) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "FUSE session ended with an error"),
            Err(_) => tracing::warn!(
                mountpoint = %self.mountpoint.display(),
                "the FUSE session did not end in time"
            ),
        }
        // The session's own unmount is not lazy: with a file still open it fails (EBUSY) and
        // would leave a dead mount behind once we exit.
        if is_fuse_mount(&self.mountpoint) {
            lazy_unmount(&self.mountpoint)
                .map_err(|e| MountError::MountPoint(self.mountpoint.clone(), e))?;
            tracing::warn!(
                mountpoint = %self.mountpoint.display(),
                "files on the mount are still open: detached it; they fail once we exit"
            );
        }
        self.fs.flush_all()?;
        if let Some(lease) = self.lease.take() {
            lease.release();
        }
        Ok(())
    }
}

/// Detaches the mount at `path` from the namespace now; the kernel ends it when the last
/// open file goes. Only root may unmount directly: a user unmounts its own FUSE mounts
/// through the setuid `fusermount3`, as libfuse does.
fn lazy_unmount(path: &Path) -> std::io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: valid C string; MNT_DETACH only detaches.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    let error = std::io::Error::last_os_error();
    if error.raw_os_error() != Some(libc::EPERM) {
        return Err(error);
    }
    let out = std::process::Command::new(FUSERMOUNT)
        .args(["-u", "-q", "-z", "--"])
        .arg(path)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| std::io::Error::new(e.kind(), format!("running {FUSERMOUNT}: {e}")))?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "{FUSERMOUNT} -u -z: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// The setuid helper through which users other than root mount and unmount FUSE.
const FUSERMOUNT: &str = "fusermount3";

/// Why a user other than root could not mount here, if it could not: like libfuse, FUSE
/// then needs `/dev/fuse` open for reading and writing, and `fusermount3` to mount and unmount.
pub fn unprivileged_mount_unsupported() -> Option<String> {
    if let Err(e) = OpenOptions::new().read(true).write(true).open("/dev/fuse") {
        return Some(format!(
            "/dev/fuse: {e}: users other than root need read and write access to it \
             (mode 0666, as udev sets it)"
        ));
    }
    let on_path = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(FUSERMOUNT).is_file()));
    (!on_path).then(|| format!("{FUSERMOUNT} not found on PATH (install fuse3)"))
}

/// Who may use the mount. Only its owner, FUSE's default, unless the mount serves another
/// user: root mounts for PostgreSQL's user or for a pod, which takes `allow_other` (for a
/// user other than root, only with `user_allow_other` in /etc/fuse.conf).
fn session_acl(mounting_uid: u32, files_uid: Option<u32>) -> SessionACL {
    if mounting_uid == 0 || files_uid.is_some_and(|uid| uid != mounting_uid) {
        SessionACL::All
    } else {
        SessionACL::Owner
    }
}

/// Whether `path` is a FUSE mount point right now.
pub fn is_fuse_mount(path: &Path) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let wanted = path.display().to_string();
    table.lines().any(|line| {
        let mut halves = line.splitn(2, " - ");
        let (Some(left), Some(right)) = (halves.next(), halves.next()) else {
            return false;
        };
        let mount_point = left.split(' ').nth(4).map(unescape_mountinfo);
        mount_point.as_deref() == Some(wanted.as_str()) && right.starts_with("fuse")
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mountinfo(field: &str) -> String {
    let mut out = Vec::with_capacity(field.len());
    let bytes = field.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && let Ok(v) = u8::from_str_radix(&field[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Lazily unmounts the FUSE mounts at `path` whose server died ("transport endpoint is not
/// connected"). Returns whether there was one. Asks statfs(2), which always reaches the server:
/// stat(2) is answered from the kernel's attribute cache for a while after the server died.
pub fn clear_stale_mount(path: &Path) -> std::io::Result<bool> {
    let mut cleared = false;
    // Mounts may be stacked (several dead ones after repeated crashes): clear down to the
    // first live one or the directory below. A failed unmount ends the loop.
    while is_dead_mount(path)? {
        lazy_unmount(path)?;
        tracing::info!(mountpoint = %path.display(), "cleared a stale mount");
        cleared = true;
    }
    Ok(cleared)
}

fn is_dead_mount(path: &Path) -> std::io::Result<bool> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: all-zero is a valid statfs; it is only an out-parameter.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `st` a properly sized out-parameter.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0 {
        return Ok(false);
    }
    Ok(std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOTCONN))
}

fn lock_cache(dir: &Path) -> Result<File, MountError> {
    let cache_err = |e| MountError::Cache(dir.to_path_buf(), e);
    private_dir(dir).map_err(cache_err)?;
    let path = dir.join("lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(cache_err)?;
    let mode = lock.metadata().map_err(cache_err)?.permissions().mode();
    tighten(&path, mode, 0o600).map_err(cache_err)?;
    // SAFETY: flock on a file descriptor we own; released when the process dies.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(MountError::CacheBusy(dir.to_path_buf()));
    }
    Ok(lock)
}

/// Opens the cache and mounts the backup at `opts.mountpoint`.
pub fn mount_backup(
    repo: Repository,
    manifest: BackupManifest,
    opts: &MountOptions,
    runtime: Handle,
) -> Result<Mounted, MountError> {
    let lock = lock_cache(&opts.cache_dir)?;
    clear_stale_mount(&opts.mountpoint)
        .map_err(|e| MountError::MountPoint(opts.mountpoint.clone(), e))?;
    let meta = fs::metadata(&opts.mountpoint)
        .map_err(|e| MountError::MountPoint(opts.mountpoint.clone(), e))?;
    if !meta.is_dir() {
        return Err(MountError::MountPoint(
            opts.mountpoint.clone(),
            std::io::Error::from_raw_os_error(libc::ENOTDIR),
        ));
    }
    raise_fd_limit();

    let lease_repo = repo.clone();
    let lease_runtime = runtime.clone();
    let disk = (!repo.is_local()).then(|| (opts.cache_dir.join("chunks"), opts.disk_cache_bytes));
    let repository = repo.url().to_string();
    let repository_id = repo.identity().to_string();
    let stats = Arc::new(MountStats::default());
    let source = Arc::new(
        RepoSource::new(
            repo,
            runtime,
            SourceConfig {
                memory_bytes: opts.memory_cache_bytes,
                disk,
                max_fetches: 16,
            },
            stats.clone(),
        )
        .map_err(|e| MountError::Cache(opts.cache_dir.clone(), e))?,
    );
    let fs = Arc::new(IrFs::open_cache(
        &opts.cache_dir,
        Arc::new(manifest),
        source,
        &CacheOptions {
            uid: opts.uid,
            gid: opts.gid,
            repository,
            repository_id,
            readahead_chunks: opts.readahead_chunks,
            stats: stats.clone(),
        },
    )?);

    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(format!("instant-recovery:{}", fs.manifest().id)),
        MountOption::Subtype("instant-recovery".into()),
        MountOption::DefaultPermissions,
        MountOption::RW,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    // SAFETY: geteuid has no preconditions.
    config.acl = session_acl(unsafe { libc::geteuid() }, opts.uid);
    config.n_threads = Some(opts.threads.max(1));
    config.clone_fd = true;
    let session = fuser::spawn_mount(
        FuseAdapter::new(fs.clone(), stats.clone()),
        &opts.mountpoint,
        &config,
    )
    .map_err(|e| MountError::Fuse(opts.mountpoint.clone(), e))?;
    let lease = BackupLease::take(
        lease_repo,
        &fs.manifest().id,
        &opts.cache_dir,
        lease_runtime,
    );
    Ok(Mounted {
        session: Some(session),
        fs,
        stats,
        mountpoint: opts.mountpoint.clone(),
        lease: Some(Box::new(lease)),
        _lock: lock,
    })
}

/// Each file PostgreSQL touches keeps a data file open in the cache.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid out-parameter.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape_mountinfo(r"/a\040b"), "/a b");
        assert_eq!(unescape_mountinfo(r"/a\134b"), r"/a\b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert!(!is_fuse_mount(Path::new("/")), "/ is not FUSE here");
    }

    #[test]
    fn only_a_mount_for_another_user_is_open_to_others() {
        assert_eq!(session_acl(0, Some(101)), SessionACL::All);
        assert_eq!(
            session_acl(0, None),
            SessionACL::All,
            "root mounts for pods"
        );
        assert_eq!(session_acl(101, Some(101)), SessionACL::Owner);
        assert_eq!(session_acl(101, None), SessionACL::Owner);
        assert_eq!(session_acl(101, Some(102)), SessionACL::All);
    }

    #[test]
    fn only_dead_mounts_are_cleared() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!clear_stale_mount(dir.path()).unwrap());
        assert!(!clear_stale_mount(&dir.path().join("missing")).unwrap());
    }
}
