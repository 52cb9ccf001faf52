//! Processes that outlive the command that started them: PostgreSQL, `pg_basebackup` and the
//! mount run in their own sessions, so a killed or interrupted `irctl recover` leaves them
//! running and a rerun picks them up by pid.

use std::ffi::{CStr, CString, OsStr};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// An operating-system account processes run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl OsUser {
    pub fn by_name(name: &str) -> Option<OsUser> {
        let c = CString::new(name).ok()?;
        // SAFETY: getpwnam with a valid C string; the fields are copied out at once.
        let pw = unsafe { libc::getpwnam(c.as_ptr()) };
        if pw.is_null() {
            return None;
        }
        // SAFETY: non-null result of getpwnam.
        unsafe {
            Some(OsUser {
                name: name.to_owned(),
                uid: (*pw).pw_uid,
                gid: (*pw).pw_gid,
            })
        }
    }

    /// The user this process runs as.
    pub fn current() -> Option<OsUser> {
        // SAFETY: geteuid has no preconditions; getpwuid's result is copied out at once.
        let pw = unsafe { libc::getpwuid(libc::geteuid()) };
        if pw.is_null() {
            return None;
        }
        // SAFETY: non-null result of getpwuid; pw_name is a NUL-terminated string.
        unsafe {
            Some(OsUser {
                name: CStr::from_ptr((*pw).pw_name).to_string_lossy().into_owned(),
                uid: (*pw).pw_uid,
                gid: (*pw).pw_gid,
            })
        }
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The OS user PostgreSQL runs as unless told otherwise: `postgres` for root, else whoever runs
/// us, the only user we can start processes as.
pub fn default_pg_user() -> String {
    match OsUser::current() {
        Some(me) if !is_root() => me.name,
        _ => "postgres".to_owned(),
    }
}

/// Starts `command` as `user` in a new session, with stdout and stderr appended to `log`.
/// Returns its pid. Only root may start it as another user than itself.
pub fn spawn_detached(mut command: Command, user: &OsUser, log: &Path) -> std::io::Result<u32> {
    // SAFETY: geteuid has no preconditions.
    may_start_as(unsafe { libc::geteuid() }, user)?;
    // Readable by its owner alone: logs hold queries and connection details.
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(log)?;
    if is_root() {
        std::os::unix::fs::fchown(&out, Some(user.uid), Some(user.gid))?;
        command.uid(user.uid).gid(user.gid);
    }
    command
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .current_dir("/");
    // SAFETY: setsid is async-signal-safe and touches no state of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn()?;
    // Reaped by `is_alive` (waitpid) while we live; by whoever inherits it otherwise.
    Ok(child.id())
}

fn may_start_as(my_uid: u32, user: &OsUser) -> std::io::Result<()> {
    if my_uid == 0 || my_uid == user.uid {
        return Ok(());
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::PermissionDenied,
        format!(
            "cannot start a process as {}: only root may start one as another user",
            user.name
        ),
    ))
}

/// What became of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcState {
    Running,
    /// Gone; with its exit code when it was our child and exited normally.
    Exited(Option<i32>),
}

/// Whether `pid` still runs. Reaps it when it is our exited child; a zombie (an orphan nobody
/// reaps) counts as gone.
pub fn poll(pid: u32) -> ProcState {
    let Ok(raw) = i32::try_from(pid) else {
        return ProcState::Exited(None);
    };
    let mut wstatus = 0;
    // SAFETY: non-blocking waitpid on one pid; ECHILD when it is not our child.
    if unsafe { libc::waitpid(raw, &mut wstatus, libc::WNOHANG) } == raw {
        let code = libc::WIFEXITED(wstatus).then(|| libc::WEXITSTATUS(wstatus));
        return ProcState::Exited(code);
    }
    // SAFETY: signal 0 only checks existence and permission.
    if unsafe { libc::kill(raw, 0) } != 0
        && std::io::Error::last_os_error().raw_os_error() != Some(libc::EPERM)
    {
        return ProcState::Exited(None);
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself hold spaces.
        Ok(stat)
            if stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')) =>
        {
            ProcState::Running
        }
        _ => ProcState::Exited(None),
    }
}

pub fn is_alive(pid: u32) -> bool {
    poll(pid) == ProcState::Running
}

/// Sends `signal` to `pid`; a process already gone is not an error.
pub fn signal(pid: u32, signal: i32) -> std::io::Result<()> {
    let raw = i32::try_from(pid).map_err(|_| std::io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: plain kill(2).
    if unsafe { libc::kill(raw, signal) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            return Err(e);
        }
    }
    Ok(())
}

/// Waits until `pid` is gone; false on timeout.
pub async fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while is_alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

/// Signals `pid` and waits for it to go, escalating to SIGKILL after `grace`.
pub async fn terminate(pid: u32, first: i32, grace: Duration) -> std::io::Result<()> {
    signal(pid, first)?;
    if !wait_gone(pid, grace).await {
        signal(pid, libc::SIGKILL)?;
        wait_gone(pid, Duration::from_secs(10)).await;
    }
    Ok(())
}

/// Kills `pid` and every process of its process group (a session leader started by
/// [`spawn_detached`] leads one), and waits for `pid` to go and be reaped: until its parent
/// reaps it, a dead process keeps its pid, which PostgreSQL's lock file check takes for a
/// postmaster still running.
pub async fn kill_group(pid: u32) -> std::io::Result<()> {
    let raw = i32::try_from(pid).map_err(|_| std::io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: kill(2) of a process group we created.
    if unsafe { libc::kill(-raw, libc::SIGKILL) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            return Err(e);
        }
    }
    wait_reaped(pid, Duration::from_secs(10)).await;
    Ok(())
}

/// The processes running `program` (their first argument, as [`spawn_detached`] was given it)
/// with `args` among their arguments, one after the other. A recovery killed between starting
/// a process and recording its pid leaves one nobody tracks; this finds it by what it does.
/// A child it forked (`pg_basebackup`'s WAL streamer) has the same arguments and is found too.
pub fn running_with_args(program: &Path, args: &[&OsStr]) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let argv: Vec<&OsStr> = cmdline.split(|&b| b == 0).map(OsStr::from_bytes).collect();
            argv.first() == Some(&program.as_os_str())
                && (args.is_empty() || argv.windows(args.len()).any(|w| w == args))
                && is_alive(pid)
        })
        .collect()
}

/// Waits until `pid` is reaped, not only dead: until then it keeps its pid, which PostgreSQL's
/// lock file check takes for a live postmaster. False on timeout.
pub async fn wait_reaped(pid: u32, timeout: Duration) -> bool {
    // Running or a zombie, a process has its /proc entry until it is reaped.
    let proc_entry = PathBuf::from(format!("/proc/{pid}"));
    let deadline = Instant::now() + timeout;
    while proc_entry.exists() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

/// The last `max` bytes of a log, for error messages.
pub fn log_tail(log: &Path, max: u64) -> String {
    let Ok(mut f) = File::open(log) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut text = String::new();
    let _ = f.read_to_string(&mut text);
    // Start at a line boundary and drop pg_basebackup's carriage-return progress updates.
    let text = match text.find('\n') {
        Some(i) if len > max => &text[i + 1..],
        _ => &text,
    };
    text.lines()
        .map(|l| l.rsplit('\r').next().unwrap_or(l).trim_end())
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_nobody_tracks_is_found_by_its_arguments() {
        let dir = tempfile::tempdir().unwrap();
        let me = OsUser::current().unwrap();
        let marker = dir.path().join("marker");
        // tail -f runs until killed, without forking: one process with these arguments.
        std::fs::write(&marker, b"").unwrap();
        let tail = Path::new("/usr/bin/tail");
        let follow = OsStr::new("-f");
        let mut c = Command::new(tail);
        c.arg(follow).arg(&marker);
        let pid = spawn_detached(c, &me, &dir.path().join("log")).unwrap();
        // Until the child has executed tail, its command line is still ours.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut found = Vec::new();
        while found.is_empty() && Instant::now() < deadline {
            assert!(is_alive(pid), "tail ended early");
            found = running_with_args(tail, &[follow, marker.as_os_str()]);
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(found, [pid]);
        assert!(running_with_args(tail, &[marker.as_os_str(), follow]).is_empty());
        assert!(running_with_args(Path::new("/bin/true"), &[marker.as_os_str()]).is_empty());
        signal(pid, libc::SIGKILL).unwrap();
        // Our child: reaped by the look that finds it gone.
        while is_alive(pid) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(running_with_args(tail, &[marker.as_os_str()]).is_empty());
    }

    #[test]
    fn tracks_a_detached_child_until_it_exits() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let me = OsUser::current().unwrap();
        let mut c = Command::new("sh");
        c.args(["-c", "echo started; exec sleep 30"]);
        let pid = spawn_detached(c, &me, &log).unwrap();
        assert!(is_alive(pid));
        // Its own session: a terminal's Ctrl-C to our group does not reach it.
        // SAFETY: getsid on a pid.
        assert_eq!(unsafe { libc::getsid(pid as i32) }, pid as i32);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(log_tail(&log, 1000), "started");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(terminate(pid, libc::SIGTERM, Duration::from_secs(5)))
            .unwrap();
        assert!(!is_alive(pid));
        signal(pid, libc::SIGTERM).expect("signalling a gone process is fine");
    }

    #[test]
    fn a_killed_group_is_gone_and_reaped_also_when_not_our_child() {
        // An orphan in a session of its own, as a postmaster whose irctl was killed.
        let out = Command::new("sh")
            .args(["-c", "setsid sleep 30 >/dev/null 2>&1 & echo $!"])
            .output()
            .unwrap();
        let pid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        // SAFETY: getsid on a pid.
        while unsafe { libc::getsid(pid as i32) } != pid as i32 {
            std::thread::sleep(Duration::from_millis(10));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(kill_group(pid)).unwrap();
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "{pid} is still a zombie"
        );
    }

    #[test]
    fn log_tail_keeps_the_last_lines_and_the_final_progress_update() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        std::fs::write(
            &log,
            "old line\n10/100 kB\r50/100 kB\r100/100 kB\nerror: boom\n",
        )
        .unwrap();
        assert_eq!(log_tail(&log, 1000), "old line\n100/100 kB\nerror: boom");
        assert_eq!(log_tail(&log, 14), "error: boom");
    }

    #[test]
    fn users_resolve() {
        let me = OsUser::current().unwrap();
        assert_eq!(OsUser::by_name(&me.name), Some(me.clone()));
        assert_eq!(OsUser::by_name("no-such-user-here"), None);
        let expected = if is_root() { "postgres" } else { &me.name };
        assert_eq!(default_pg_user(), expected);
    }

    #[test]
    fn only_root_starts_processes_as_another_user() {
        let postgres = OsUser {
            name: "postgres".into(),
            uid: 101,
            gid: 104,
        };
        assert!(may_start_as(0, &postgres).is_ok());
        assert!(may_start_as(101, &postgres).is_ok());
        let err = may_start_as(1000, &postgres).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
        assert!(err.to_string().contains("postgres"), "{err}");
    }
}
