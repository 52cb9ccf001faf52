//! The IRCache behind a real FUSE mount: a full cache disk is ENOSPC where it applies and heals
//! without a remount, every file of a cache is its owner's alone, and a `file://` repository on
//! a file system that stops answering fails reads at the read deadline instead of hanging.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, LockOwner, OpenFlags,
    ReplyAttr, ReplyData, ReplyEntry, ReplyOpen, Request,
};

use ir_e2e::s3::S3Server;
use ir_e2e::tmpfs::Tmpfs;
use ir_e2e::{pattern, require_fuse, shared_tempdir};
use ir_fuse::{MountOptions, Mounted, mount_backup};
use ir_repository::{
    BackupManifest, Credentials, Progress, RepoLocation, Repository, S3Credentials,
};

/// The user a local attacker would be.
const NOBODY: u32 = 65534;

/// A cleanly shut down pg_control: system identifier, state 1 (shut down), checkpoint, timeline.
fn pg_control() -> Vec<u8> {
    let mut b = vec![0u8; 8192];
    b[0..8].copy_from_slice(&7_311_234_567_890_123_456u64.to_le_bytes());
    b[16..20].copy_from_slice(&1u32.to_le_bytes());
    b[32..40].copy_from_slice(&0x1_0000_0028u64.to_le_bytes());
    b[48..52].copy_from_slice(&1u32.to_le_bytes());
    b
}

/// A repository at `location` with one backup of a small data directory written under `dir`.
async fn backup(dir: &Path, location: &RepoLocation) -> (Repository, BackupManifest) {
    let data = dir.join("data");
    let files = BTreeMap::from([
        ("PG_VERSION", b"16\n".to_vec()),
        ("global/pg_control", pg_control()),
        ("base/1/1259", pattern(300_000, 1)),
    ]);
    for (path, content) in files {
        let path = data.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }
    let repo = Repository::init(location, 64 * 1024)
        .await
        .expect("init repository");
    let manifest = repo
        .ingest_dir(&data, Arc::new(Progress::default()))
        .await
        .expect("ingest the data directory");
    (repo, manifest)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn mount(repo: Repository, manifest: BackupManifest, cache: &Path, mnt: &Path) -> Mounted {
    let rt = RUNTIME.get_or_init(runtime);
    let opts = MountOptions::new(mnt.to_path_buf(), cache.to_path_buf());
    mount_backup(repo, manifest, &opts, rt.handle().clone()).expect("mount the backup")
}

static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

/// What the process logged, for every test of this binary.
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        #[derive(Clone)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl Write for Buffer {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer(Arc::default());
        let logs = buffer.0.clone();
        tracing_subscriber::fmt()
            .with_writer(move || buffer.clone())
            .with_ansi(false)
            .init();
        logs
    })
    .clone()
}

#[track_caller]
fn assert_enospc<T: std::fmt::Debug>(result: std::io::Result<T>, what: &str) {
    let err = result.expect_err(&format!("{what} on a full cache disk"));
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{what}: {err}");
}

#[test]
fn full_cache_disk_is_enospc_where_it_applies_and_heals_without_remount() {
    require_fuse();
    let logs = logs();
    let tmp = shared_tempdir();
    let url = format!("file://{}", tmp.path().join("repo").display());
    let (repo, manifest) = RUNTIME
        .get_or_init(runtime)
        .block_on(backup(tmp.path(), &RepoLocation::new(url)));
    let disk = tmp.path().join("disk");
    let _tmpfs = Tmpfs::mount(&disk, "16m");
    let cache = disk.join("cache");
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let mounted = mount(repo.clone(), manifest.clone(), &cache, &mnt);

    let kept = pattern(100_000, 5);
    let keep = File::create(mnt.join("keep")).unwrap();
    keep.write_all_at(&kept, 0).unwrap();
    keep.sync_all().unwrap();
    // Together these free less than the headroom a full disk needs to take writes again.
    for (name, len) in [("old", 64 << 10), ("victim", 64 << 10), ("gone", 128 << 10)] {
        fs::write(mnt.join(name), pattern(len, len as u64)).unwrap();
    }
    fs::write(mnt.join("long"), pattern(512 << 10, 9)).unwrap();
    fs::create_dir(mnt.join("empty")).unwrap();
    // Another program's file on the same disk; deleting it is how room comes back.
    let outside = disk.join("outside");
    fs::write(&outside, vec![1u8; 6 << 20]).unwrap();

    let mut filler = File::create(mnt.join("filler")).unwrap();
    let chunk = vec![7u8; 64 << 10];
    let err = loop {
        if let Err(e) = filler.write_all(&chunk) {
            break e;
        }
    };
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");

    assert_enospc(fs::create_dir(mnt.join("dir")), "mkdir");
    assert_enospc(File::create(mnt.join("new")), "create");
    assert_enospc(
        std::os::unix::fs::symlink("keep", mnt.join("sym")),
        "symlink",
    );
    assert_enospc(fs::hard_link(mnt.join("keep"), mnt.join("keep2")), "link");
    assert_enospc(
        fs::rename(mnt.join("keep"), mnt.join("moved")),
        "rename to a new name",
    );
    assert_enospc(keep.write_at(b"x", 0), "write");
    assert_enospc(keep.set_len(4 << 20), "truncate growing");
    assert_enospc(filler.sync_all(), "fsync");
    assert_eq!(keep.metadata().unwrap().len(), kept.len() as u64);
    let refusals = mounted
        .stats()
        .enospc_refusals
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(refusals >= 9, "{refusals} refusals counted");
    let logged = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    assert!(
        logged.lines().any(|l| l.contains("WARN")
            && l.contains("disk is full")
            && l.contains(&cache.display().to_string())),
        "{logged}"
    );

    // What frees room works on the full disk.
    fs::remove_file(mnt.join("gone")).unwrap();
    fs::remove_dir(mnt.join("empty")).unwrap();
    fs::rename(mnt.join("old"), mnt.join("victim")).unwrap();
    File::options()
        .write(true)
        .open(mnt.join("long"))
        .unwrap()
        .set_len(8192)
        .unwrap();
    assert_enospc(fs::create_dir(mnt.join("dir")), "mkdir while still full");

    // Room comes back: the same mount takes writes again.
    fs::remove_file(&outside).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    fs::create_dir(mnt.join("after")).unwrap();
    keep.write_all_at(b"again", 0).unwrap();
    keep.sync_all().unwrap();
    drop((keep, filler));
    mounted.unmount(Duration::from_secs(10)).unwrap();

    let mounted = mount(repo, manifest, &cache, &mnt);
    let mut want = kept;
    want[..5].copy_from_slice(b"again");
    assert_eq!(fs::read(mnt.join("keep")).unwrap(), want);
    assert_eq!(
        fs::read(mnt.join("victim")).unwrap(),
        pattern(64 << 10, 64 << 10)
    );
    assert_eq!(fs::metadata(mnt.join("long")).unwrap().len(), 8192);
    assert!(mnt.join("after").is_dir());
    for gone in [
        "gone", "empty", "old", "dir", "new", "sym", "keep2", "moved",
    ] {
        assert!(!mnt.join(gone).exists(), "{gone}");
    }
    mounted.unmount(Duration::from_secs(10)).unwrap();
}

/// Whether `nobody` can read `path` (a file) or list it (a directory).
fn nobody_reads(path: &Path) -> bool {
    let program = if path.is_dir() { "ls" } else { "cat" };
    Command::new(program)
        .arg(path)
        .uid(NOBODY)
        .gid(NOBODY)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("run {program} as nobody: {e}"))
        .success()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            walk(&path, out);
        }
        out.push(path);
    }
}

#[test]
fn cache_files_are_their_owners_alone_whatever_the_umask() {
    require_fuse();
    let tmp = shared_tempdir();
    let mut s3 = S3Server::start();
    let env: BTreeMap<_, _> = s3.env().into_iter().collect();
    let location = RepoLocation {
        s3_endpoint: Some(s3.endpoint()),
        s3_region: Some("us-east-1".into()),
        allow_http: Some(true),
        credentials: Credentials::Keys(S3Credentials {
            access_key_id: env["AWS_ACCESS_KEY_ID"].clone(),
            secret_access_key: env["AWS_SECRET_ACCESS_KEY"].clone(),
        }),
        ..RepoLocation::new(s3.url("isolation"))
    };
    let (repo, manifest) = RUNTIME
        .get_or_init(runtime)
        .block_on(backup(tmp.path(), &location));
    // A cache as older versions left it: open to every local user.
    let cache = tmp.path().join("cache");
    fs::create_dir_all(cache.join("chunks")).unwrap();
    fs::write(cache.join("lock"), b"").unwrap();
    for dir in [&cache, &cache.join("chunks")] {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    }
    fs::set_permissions(cache.join("lock"), fs::Permissions::from_mode(0o644)).unwrap();
    // SAFETY: umask has no preconditions; the only other test here creates nothing it checks.
    let umask = unsafe { libc::umask(0) };
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let mounted = mount(repo, manifest, &cache, &mnt);
    // Remote reads fill the chunk cache; writes fill the IRCache.
    assert_eq!(
        fs::read(mnt.join("base/1/1259")).unwrap(),
        pattern(300_000, 1)
    );
    let rel = File::options()
        .write(true)
        .open(mnt.join("base/1/1259"))
        .unwrap();
    rel.write_all_at(&[9u8; 8192], 8192).unwrap();
    rel.sync_all().unwrap();
    drop(rel);
    fs::write(mnt.join("new"), b"new file").unwrap();
    mounted.unmount(Duration::from_secs(10)).unwrap();
    // SAFETY: as above.
    unsafe { libc::umask(umask) };
    s3.stop();

    let mut entries = Vec::new();
    walk(&cache, &mut entries);
    entries.push(cache.clone());
    for sub in ["data", "chunks", "ircache.redb", "lock", "reserve"] {
        assert!(entries.contains(&cache.join(sub)), "{sub} in {entries:?}");
    }
    assert!(
        fs::read_dir(cache.join("chunks")).unwrap().count() > 0,
        "the chunk cache was used"
    );
    assert!(
        fs::read_dir(cache.join("data")).unwrap().count() >= 2,
        "the writes reached the cache"
    );
    for path in &entries {
        let meta = fs::symlink_metadata(path).unwrap();
        let mode = meta.mode() & 0o7777;
        let want = if meta.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode, want, "{} is {mode:o}", path.display());
        assert!(!nobody_reads(path), "nobody reads {}", path.display());
    }
    assert!(
        nobody_reads(tmp.path()),
        "only the cache's own modes keep nobody out"
    );
}

/// How long the hung file system keeps a read waiting at most.
const HUNG_FOR: Duration = Duration::from_secs(30);

/// Test double of a network file system whose server stopped answering: it mirrors a
/// directory, but every read waits until the test lets it go (or [`HUNG_FOR`] passed).
struct HungFs {
    /// Index + 1 is the inode; the first is the root.
    paths: Mutex<Vec<PathBuf>>,
    answering: Arc<(Mutex<bool>, Condvar)>,
}

impl HungFs {
    fn path(&self, ino: INodeNo) -> Option<PathBuf> {
        let paths = self.paths.lock().unwrap();
        paths.get((ino.0 as usize).checked_sub(1)?).cloned()
    }

    fn attr(&self, path: PathBuf) -> Option<FileAttr> {
        let meta = fs::symlink_metadata(&path).ok()?;
        let mut paths = self.paths.lock().unwrap();
        let ino = match paths.iter().position(|p| *p == path) {
            Some(i) => i + 1,
            None => {
                paths.push(path);
                paths.len()
            }
        };
        Some(FileAttr {
            ino: INodeNo(ino as u64),
            size: meta.len(),
            blocks: meta.blocks(),
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind: if meta.is_dir() {
                FileType::Directory
            } else {
                FileType::RegularFile
            },
            perm: meta.permissions().mode() as u16 & 0o7777,
            nlink: 1,
            uid: meta.uid(),
            gid: meta.gid(),
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }
}

impl fuser::Filesystem for HungFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.path(parent).and_then(|dir| self.attr(dir.join(name))) {
            Some(attr) => reply.entry(&Duration::ZERO, &attr, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.path(ino).and_then(|path| self.attr(path)) {
            Some(attr) => reply.attr(&Duration::ZERO, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO)
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        // Not forever: a read the repository fails to give up on makes the test fail, not hang.
        let (answering, changed) = &*self.answering;
        let _answering = changed
            .wait_timeout_while(answering.lock().unwrap(), HUNG_FOR, |answering| !*answering)
            .unwrap();
        let mut data = vec![0; size as usize];
        let read = self
            .path(ino)
            .and_then(|path| File::open(path).ok())
            .and_then(|file| file.read_at(&mut data, offset).ok());
        match read {
            Some(n) => reply.data(&data[..n]),
            None => reply.error(Errno::EIO),
        }
    }
}

/// A `file://` repository on a file system that stops answering (an NFS server gone): a read of
/// the mount fails with EIO once the repository's read deadline has passed, rather than
/// hanging PostgreSQL with it, and reads whole once the file system answers again.
#[test]
fn a_file_repository_on_a_hung_file_system_fails_reads_at_the_read_deadline() {
    require_fuse();
    let logs = logs();
    let tmp = shared_tempdir();
    let repo_dir = tmp.path().join("repo");
    let location = RepoLocation {
        read_deadline: Duration::from_secs(1),
        ..RepoLocation::new(format!("file://{}", repo_dir.display()))
    };
    let (repo, manifest) = RUNTIME
        .get_or_init(runtime)
        .block_on(backup(tmp.path(), &location));
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let mounted = mount(repo, manifest, &tmp.path().join("cache"), &mnt);

    // The repository's chunks move behind the hung file system.
    let served = tmp.path().join("served");
    fs::rename(repo_dir.join("chunks"), &served).unwrap();
    let hung_mnt = tmp.path().join("hung");
    fs::create_dir(&hung_mnt).unwrap();
    let answering = Arc::new((Mutex::new(false), Condvar::new()));
    let mut config = fuser::Config::default();
    config.n_threads = Some(4);
    let hung = fuser::spawn_mount(
        HungFs {
            paths: Mutex::new(vec![served]),
            answering: answering.clone(),
        },
        &hung_mnt,
        &config,
    )
    .expect("mount the hung file system");
    std::os::unix::fs::symlink(&hung_mnt, repo_dir.join("chunks")).unwrap();

    let started = Instant::now();
    let err = fs::read(mnt.join("base/1/1259")).expect_err("a read through a hung repository");
    let took = started.elapsed();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        (Duration::from_secs(1)..Duration::from_secs(20)).contains(&took),
        "the read failed after {took:?}"
    );
    let logged = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(
        logged.contains("cannot read backup data") && logged.contains("no answer within"),
        "{logged}"
    );

    let (flag, changed) = &*answering;
    *flag.lock().unwrap() = true;
    changed.notify_all();
    assert_eq!(
        fs::read(mnt.join("base/1/1259")).unwrap(),
        pattern(300_000, 1)
    );
    drop(mounted);
    drop(hung);
}
