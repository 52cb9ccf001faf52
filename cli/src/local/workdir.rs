//! The workdir: its paths, `recovery.json` ([`LocalState`]) and how it is saved, the requests
//! other commands leave there, the lock of a running `irctl recover`, and who may enter it.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ir_api::Reason;
use ir_api::recovery::RecoveryStatus;
use ir_engine::machine::EndRequest;
use ir_engine::process::OsUser;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::dir::{Ancestors, Dir, FileId, WalkError};
use super::error::{LocalError, io_err};
use super::spec::LocalSpec;

/// Where the state is written before it replaces `recovery.json`.
pub(super) const STATE_TMP_FILE: &str = "recovery.json.tmp";

/// The processes and facts the driver keeps between runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Resources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) mount_pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) published_pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) target_pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) base_backup_pid: Option<u32>,
    /// Why the last copy failed, until the engine has it made again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) base_backup_failure: Option<String>,
    /// The target directory made (or found empty) at validation: `--target-pgdata` must lead
    /// to it, and nowhere else, whenever root empties it or hands it to PostgreSQL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) target_id: Option<FileId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) first_query_at: Option<Timestamp>,
    /// A switchover was attempted: the published instance may have been left read-only.
    #[serde(default)]
    pub(super) switchover_attempted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) switchover_downtime_ms: Option<u64>,
    /// A recovery to a point in time: `recovery.signal` was put on the mount (PostgreSQL
    /// removes it once it promoted at the target; it must never come back).
    #[serde(default)]
    pub(super) recovery_signal_written: bool,
    /// The published instance ended its recovery to a point in time (promoted), after it may
    /// have been paused at the target.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(super) promoted: bool,
    /// A read-only publish: `standby.signal` was put on the mount.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(super) standby_signal_written: bool,
}

/// `recovery.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalState {
    pub spec: LocalSpec,
    pub status: RecoveryStatus,
    #[serde(default)]
    pub(super) resources: Resources,
    /// What tearing down an unpublished or aborted recovery did, one line each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub torn_down: Vec<String>,
}

/// The paths of a workdir.
#[derive(Debug, Clone)]
pub struct Workdir {
    pub root: PathBuf,
}

impl Workdir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Workdir { root: root.into() }
    }
    pub fn state_file(&self) -> PathBuf {
        self.root.join("recovery.json")
    }
    pub fn mountpoint(&self) -> PathBuf {
        self.root.join("mnt")
    }
    pub fn cache(&self) -> PathBuf {
        self.root.join("ircache")
    }
    pub fn sockets(&self) -> PathBuf {
        self.root.join("run")
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub(super) fn conf(&self, instance: &str) -> PathBuf {
        self.root.join("conf").join(instance)
    }
    fn requests_dir(&self) -> PathBuf {
        self.root.join("requests")
    }
    fn approval_file(&self) -> PathBuf {
        self.requests_dir().join("approve-switchover")
    }
    fn retry_file(&self) -> PathBuf {
        self.requests_dir().join("retry")
    }
    fn end_file(&self) -> PathBuf {
        self.requests_dir().join("end")
    }

    /// The recorded state, if a recovery was started here.
    pub fn load(&self) -> Result<Option<LocalState>, LocalError> {
        let path = self.state_file();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| LocalError::State { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// The workdir, opened: a directory of the user running irctl on a path no other user can
    /// change (root reads its state and acts on it); `None` when it does not exist yet.
    pub(super) fn open_root(&self) -> Result<Option<Dir>, LocalError> {
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        let refuse = |why: String| LocalError::Invalid {
            reason: Reason::WorkdirUnsafe.to_string(),
            message: format!("--workdir {}: {why}", self.root.display()),
        };
        let dir = match Dir::open(&self.root, Ancestors::OwnedBy(me)) {
            Ok(dir) => dir,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(WalkError::Io(path, source)) => return Err(LocalError::Io { path, source }),
            Err(e) => return Err(refuse(e.to_string())),
        };
        let owner = dir.owner().map_err(io_err(&self.root))?;
        if owner != me {
            return Err(refuse(format!(
                "belongs to uid {owner}, not to the user running irctl: run irctl as its owner"
            )));
        }
        Ok(Some(dir))
    }

    pub(super) fn save(&self, state: &LocalState) -> Result<(), LocalError> {
        let path = self.state_file();
        let tmp = self.root.join(STATE_TMP_FILE);
        let json = serde_json::to_vec_pretty(state).expect("state serialises");
        let mut f = private_file(&tmp).map_err(io_err(&tmp))?;
        f.write_all(&json).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))
    }

    /// Approves a manual switchover; the running (or next) `irctl recover` sees it.
    pub fn approve_switchover(&self) -> Result<(), LocalError> {
        self.require_recovery()?;
        self.write_request(&self.approval_file(), &Timestamp::now().to_string())
    }

    /// Starts a new round of retries (from Waiting or Failed).
    pub fn request_retry(&self) -> Result<(), LocalError> {
        self.require_recovery()?;
        self.write_request(&self.retry_file(), &Timestamp::now().to_string())
    }

    /// Asks the running (or next) driver to end the recovery and tear it down.
    pub fn request_end(&self, request: EndRequest) -> Result<(), LocalError> {
        self.require_recovery()?;
        let word = match request {
            EndRequest::Unpublish => "unpublish",
            EndRequest::Abort => "abort",
        };
        self.write_request(&self.end_file(), word)
    }

    /// Drops an end request the engine has taken up or refused.
    pub(super) fn clear_end_request(&self) -> Result<(), LocalError> {
        let path = self.end_file();
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(&path)(e)),
            _ => Ok(()),
        }
    }

    fn require_recovery(&self) -> Result<(), LocalError> {
        self.open_root()?;
        if !self.state_file().exists() {
            return Err(LocalError::NoRecovery(self.root.clone()));
        }
        Ok(())
    }

    fn write_request(&self, path: &Path, token: &str) -> Result<(), LocalError> {
        let dir = self.requests_dir();
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(io_err(&dir)(e));
            }
            _ => {}
        }
        private_file(path)
            .and_then(|mut f| f.write_all(token.as_bytes()))
            .map_err(io_err(path))
    }

    /// The pending requests: switchover approved, and the latest manual retry token.
    pub(super) fn pending_requests(&self) -> Requests {
        Requests {
            approved: self.approval_file().exists(),
            retry: std::fs::read_to_string(self.retry_file()).ok(),
            end: match std::fs::read_to_string(self.end_file()).as_deref() {
                Ok("unpublish") => Some(EndRequest::Unpublish),
                Ok("abort") => Some(EndRequest::Abort),
                _ => None,
            },
        }
    }

    /// Whether an `irctl recover` holds this workdir.
    pub fn is_running(&self) -> bool {
        match OpenOptions::new().read(true).open(self.root.join("lock")) {
            // SAFETY: flock on a descriptor we own, released at once.
            Ok(f) => unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) != 0 },
            Err(_) => false,
        }
    }

    /// The pid of the process that holds the workdir, while one does.
    pub fn holder(&self) -> Option<u32> {
        if !self.is_running() {
            return None;
        }
        std::fs::read_to_string(self.root.join("lock"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    pub(super) fn lock(&self) -> Result<File, LocalError> {
        let path = self.root.join("lock");
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io_err(&path))?;
        // SAFETY: flock on a descriptor we own; released when the process exits.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(LocalError::Busy(self.root.clone()));
        }
        // Who holds it, for the commands that ask it to stop.
        f.set_len(0)
            .and_then(|()| write!(f, "{}", std::process::id()))
            .map_err(io_err(&path))?;
        Ok(f)
    }
}

/// Creates or truncates `path` for writing, readable by its owner alone; never through a link.
fn private_file(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::PermissionsExt;
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    // O_CREAT leaves an existing file's mode as it was.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(f)
}

/// Requests other commands leave in the workdir for a running (or the next) `irctl recover`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Requests {
    pub(super) approved: bool,
    pub(super) retry: Option<String>,
    pub(super) end: Option<EndRequest>,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Which {
    Published,
    Target,
}

impl Which {
    /// Its directory in `conf`.
    pub(super) fn name(self) -> &'static str {
        match self {
            Which::Published => "published",
            Which::Target => "target",
        }
    }
}

/// Who may enter the workdir. Run as root for another `--pg-user`, the workdir and its `conf`
/// directories are root's with mode 0710 and that user's group: PostgreSQL passes through to
/// its data directory on the mount, its socket directory `run` (its own, 0700) and its
/// configuration (0640, which it cannot change). Mode 0711 would do for PostgreSQL too, but
/// would let every user look up names it guesses. All else is its owner's alone: directories
/// 0700, files 0600. Run as the pg user, everything is that user's alone.
#[derive(Debug, Clone, Copy)]
pub(super) struct Access {
    /// The group PostgreSQL runs with, when it is not the user running irctl.
    pub(super) group: Option<u32>,
}

impl Access {
    pub(super) fn new(pg_user: &OsUser) -> Access {
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        Access {
            group: (me == 0 && pg_user.uid != 0).then_some(pg_user.gid),
        }
    }

    /// Makes `dir` one PostgreSQL may pass through, and no one else.
    pub(super) fn pass(&self, dir: &Dir) -> std::io::Result<()> {
        match self.group {
            Some(gid) => {
                dir.set_owner(None, Some(gid))?;
                dir.set_mode(0o710)
            }
            None => dir.set_mode(0o700),
        }
    }

    pub(super) fn conf_mode(&self) -> u32 {
        if self.group.is_some() { 0o640 } else { 0o600 }
    }
}
