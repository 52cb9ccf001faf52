//! `irctl recover` run by the user PostgreSQL runs as, not root, on a host as a fresh one is
//! for that user: it mounts through fusermount3 without `allow_other`, and clears the dead mount
//! a killed mount process leaves.

mod common;

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::recovery::{Recovery, accounts_checksum, assert_switched_over, sample_setup};
use ir_e2e::pg::{chown_to_pg, pg_user};

const RUN_TIMEOUT: Duration = Duration::from_secs(240);

fn check(result: libc::c_int) -> std::io::Result<libc::c_int> {
    if result < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(result)
}

fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("no NUL in paths")
}

/// This host as a fresh one is to users other than root, in a mount namespace of its own:
/// `/dev/fuse` open to everyone (mode 0666, as udev makes it; a container's may be root's
/// only) and no `user_allow_other` in /etc/fuse.conf (which this machine may have).
struct FreshHost {
    /// Holds the namespace; whatever runs in it is gone with the namespace's last process.
    holder: Child,
    namespace: File,
}

impl FreshHost {
    fn new(scratch: &Path) -> FreshHost {
        let dir = scratch.join("fresh-host");
        std::fs::create_dir(&dir).expect("create the fresh host's directory");
        let device = std::fs::metadata("/dev/fuse")
            .expect("this test needs /dev/fuse")
            .rdev();
        let fuse_conf = Path::new("/etc/fuse.conf");
        let hide_fuse_conf = fuse_conf.exists();
        let (dir_c, dev_c) = (c_path(&dir), c_path(&dir.join("fuse")));
        let conf_c = c_path(&dir.join("fuse.conf"));
        let (tmpfs, root) = (c"tmpfs", c"/");
        let mut c = Command::new("sleep");
        c.arg("infinity");
        // SAFETY: only system calls on strings prepared before the fork.
        unsafe {
            c.pre_exec(move || {
                let null = std::ptr::null();
                check(libc::unshare(libc::CLONE_NEWNS))?;
                check(libc::mount(
                    null,
                    root.as_ptr(),
                    null,
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                check(libc::mount(
                    tmpfs.as_ptr(),
                    dir_c.as_ptr(),
                    tmpfs.as_ptr(),
                    0,
                    std::ptr::null(),
                ))?;
                check(libc::mknod(dev_c.as_ptr(), libc::S_IFCHR | 0o666, device))?;
                check(libc::chmod(dev_c.as_ptr(), 0o666))?;
                check(libc::mount(
                    dev_c.as_ptr(),
                    c"/dev/fuse".as_ptr(),
                    null,
                    libc::MS_BIND,
                    std::ptr::null(),
                ))?;
                if hide_fuse_conf {
                    let fd = check(libc::open(
                        conf_c.as_ptr(),
                        libc::O_CREAT | libc::O_WRONLY,
                        0o644,
                    ))?;
                    libc::close(fd);
                    check(libc::mount(
                        conf_c.as_ptr(),
                        c"/etc/fuse.conf".as_ptr(),
                        null,
                        libc::MS_BIND,
                        std::ptr::null(),
                    ))?;
                }
                Ok(())
            });
        }
        let holder = c
            .spawn()
            .expect("set up a mount namespace with a fresh host's /dev/fuse and fuse.conf");
        let namespace = File::open(format!("/proc/{}/ns/mnt", holder.id()))
            .expect("open the fresh host's mount namespace");
        FreshHost { holder, namespace }
    }

    /// `program`, run in the namespace as the user PostgreSQL runs as.
    fn as_postgres(&self, program: &Path) -> Command {
        let (uid, gid) = pg_user();
        let namespace = self.namespace.as_raw_fd();
        let mut c = Command::new(program);
        c.env("RUST_LOG", "info").current_dir("/");
        // SAFETY: only system calls; setns before giving up root, which it needs.
        unsafe {
            c.pre_exec(move || {
                check(libc::setns(namespace, libc::CLONE_NEWNS))?;
                check(libc::setgroups(0, std::ptr::null()))?;
                check(libc::setgid(gid))?;
                check(libc::setuid(uid))?;
                Ok(())
            });
        }
        c
    }

    /// The file system type and super options of what is mounted at `path` in the namespace.
    fn mount_at(&self, path: &Path) -> Option<(String, String)> {
        let table = std::fs::read_to_string(format!("/proc/{}/mountinfo", self.holder.id()))
            .expect("read the fresh host's mount table");
        let wanted = path.display().to_string();
        table.lines().rev().find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            if left.split(' ').nth(4)? != wanted {
                return None;
            }
            let mut fields = right.split(' ');
            let fs_type = fields.next()?.to_owned();
            Some((fs_type, fields.nth(1)?.to_owned()))
        })
    }
}

impl Drop for FreshHost {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// fusermount3, setuid root: how users other than root mount and unmount FUSE.
fn require_fusermount3() {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .map(|dir| dir.join("fusermount3"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("this test needs fusermount3 on PATH: install fuse3"));
    let meta = std::fs::metadata(&found).unwrap();
    assert!(
        meta.uid() == 0 && meta.mode() & libc::S_ISUID != 0,
        "{} must be setuid root, as fuse3 installs it",
        found.display()
    );
}

fn uid_of(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|id| id.parse().ok())
        .expect("effective uid in /proc/<pid>/status")
}

#[test]
fn run_as_postgres_it_mounts_as_postgres_and_clears_a_dead_mount_on_rerun() {
    let (root, repo, id, checksum) = sample_setup(2);
    require_fusermount3();
    let (uid, gid) = pg_user();
    let home: PathBuf = root.path().join("postgres");
    std::fs::create_dir(&home).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).unwrap();
    chown_to_pg(&home);
    let host = FreshHost::new(root.path());
    let irctl = Path::new(env!("CARGO_BIN_EXE_irctl"));
    let mut r = Recovery::new(&home, &repo, &id, &[]);
    let mnt = r.workdir.join("mnt");

    // Another --pg-user than itself is refused, and nothing is created.
    let out = host
        .as_postgres(irctl)
        .args(r.args(&["--pg-user", "root"]))
        .output()
        .expect("run irctl as postgres (its binary must be reachable by postgres)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted --pg-user root as postgres");
    assert!(stderr.contains("irctl runs as postgres"), "{stderr}");
    assert!(
        !r.workdir.exists(),
        "the workdir was created for a refused request"
    );

    // No --pg-user: the user running irctl.
    r.spawn_with(host.as_postgres(irctl), &["--switchover", "manual"]);
    r.wait_phase_reason("ReadyForSwitchover", Some("AwaitingApproval"), RUN_TIMEOUT);
    let (fs_type, options) = host.mount_at(&mnt).expect("the backup is mounted");
    assert_eq!(fs_type, "fuse.instant-recovery");
    let options: Vec<&str> = options.split(',').collect();
    assert!(
        options.contains(&format!("user_id={uid}").as_str())
            && options.contains(&format!("group_id={gid}").as_str()),
        "the mount must be postgres's, not root's: {options:?}"
    );
    assert!(
        !options.contains(&"allow_other"),
        "only its owner uses the mount: {options:?}"
    );
    for key in ["mountPid", "publishedPid", "targetPid"] {
        let pid = r.recorded_pid(key).expect(key);
        assert_eq!(uid_of(pid), uid, "{key} {pid} runs as postgres");
    }
    // Its workdir is its own alone.
    for (path, mode) in [
        (r.workdir.clone(), 0o700),
        (r.workdir.join("recovery.json"), 0o600),
    ] {
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(
            (meta.uid(), meta.mode() & 0o7777),
            (uid, mode),
            "{}",
            path.display()
        );
    }
    let target_owner = std::fs::metadata(r.target.join("PG_VERSION")).unwrap();
    assert_eq!((target_owner.uid(), target_owner.gid()), (uid, gid));
    r.published("INSERT INTO marker VALUES ('written before the mount died')");

    // The command and then the mount process die: the kernel keeps a dead mount, which only
    // fusermount3 may remove for postgres.
    r.kill();
    let mount = r.recorded_pid("mountPid").unwrap();
    // SAFETY: SIGKILL of the mount process the recovery started.
    unsafe { libc::kill(mount as i32, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while ir_engine::process::is_alive(mount) {
        assert!(Instant::now() < deadline, "mount process {mount} lives on");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        host.mount_at(&mnt).is_some(),
        "the dead mount is left behind"
    );

    r.spawn_with(
        host.as_postgres(irctl),
        &["--switchover", "automatic", "--retry-interval", "1s"],
    );
    let exit = r.wait_exit(RUN_TIMEOUT);
    assert!(exit.success(), "the rerun failed ({exit}):\n{}", r.output());
    assert_switched_over(&r);
    assert_eq!(host.mount_at(&mnt), None, "the backup is still mounted");
    assert_eq!(accounts_checksum(&|sql| r.target(sql)), checksum);
    assert_eq!(
        r.target("SELECT count(*) FROM marker WHERE note = 'written before the mount died'"),
        "1"
    );
    let postmaster = std::fs::read_to_string(r.target.join("postmaster.pid")).unwrap();
    let primary = postmaster.lines().next().unwrap().parse().unwrap();
    assert_eq!(uid_of(primary), uid, "the new primary runs as postgres");
}
