//! The local driver: one recovery on this host, the engine behind `irctl recover`.
//!
//! Everything lives in the workdir: `recovery.json` (what was asked, the status, the processes),
//! the mount point and IRCache, sockets, generated configuration and logs. The mount, PostgreSQL
//! and `pg_basebackup` run in their own sessions, so the driver can be killed at any moment: a
//! rerun reads `recovery.json`, finds them by pid and continues.

pub(crate) mod dir;
pub(crate) mod validate;

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ir_api::recovery::{Phase, RecoveryStatus, RetryPolicy, SwitchoverPolicy};
use ir_repository::{Credentials, RepoLocation};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use dir::{Ancestors, Dir, FileId, WalkError};
use ir_api::Reason;
use ir_engine::machine::{
    Action, Decision, Event, Failure, Policy, Standby, Step, SwitchoverReport,
};
use ir_engine::postgres::{
    self, Endpoint, Instance, LocalPublished, PgBinaries, Switchover, SwitchoverTimeouts,
};
use ir_engine::process::{self, OsUser, ProcState};
use ir_engine::round::{self, CopyAttempt, Driver, Found, Interruption, RoundInfo};
use ir_fuse::is_fuse_mount;

/// Exit code of `irctl mount` when the repository could not be reached (EX_TEMPFAIL).
pub const MOUNT_EXIT_TRANSIENT: i32 = 75;
/// How long a postmaster that died by itself may take to be reaped before a new one starts.
const STALE_POSTMASTER_WAIT: Duration = Duration::from_secs(10);
/// `cluster_name` of the standby: the application name it streams under.
const STANDBY_NAME: &str = "instant-recovery-target";

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid recovery state: {source}")]
    State {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("no recovery in {0} (recovery.json not found)")]
    NoRecovery(PathBuf),
    #[error("another irctl recover is running on {0}")]
    Busy(PathBuf),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Postgres(#[from] postgres::PgError),
    #[error("validation failed: {message}")]
    Invalid { reason: String, message: String },
    #[error("recovery failed ({reason}): {message}")]
    Failed { reason: String, message: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LocalError + '_ {
    move |source| LocalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where the backup is, as the command line names a repository (its flags, `irctl repo`,
/// `backup` and `mount` alike) and `irctl recover` records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RepoSpec {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_http: Option<bool>,
    pub read_deadline_secs: u64,
}

impl RepoSpec {
    /// How the command line reaches the repository: with its user's own AWS settings and
    /// credentials, anywhere on the file system.
    pub fn location(&self) -> RepoLocation {
        RepoLocation {
            url: self.url.clone(),
            s3_endpoint: self.s3_endpoint.clone(),
            s3_region: self.s3_region.clone(),
            allow_http: self.allow_http,
            credentials: Credentials::Ambient,
            file_roots: None,
            read_deadline: Duration::from_secs(self.read_deadline_secs),
        }
    }
}

/// What `irctl recover` was asked to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalSpec {
    pub repo: RepoSpec,
    /// Backup id or `latest` (resolved once, at validation).
    pub backup: String,
    pub target_pgdata: PathBuf,
    pub published_port: u16,
    pub target_port: u16,
    /// `listen_addresses` of both instances.
    pub listen_addresses: String,
    /// OS user PostgreSQL runs as (and owner of the mounted files).
    pub pg_user: String,
    /// Database superuser the engine connects as.
    pub db_user: String,
    pub db_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pg_bindir: Option<PathBuf>,
    pub switchover: SwitchoverPolicy,
    pub retry: RetryPolicy,
    /// Free space the IRCache's file system must have at the start.
    pub cache_min_free_bytes: u64,
    /// How long PostgreSQL may take to answer its first query (recovery from the backup).
    pub start_timeout_secs: u64,
    /// Time allowed for the standby to replay the last LSN during the switchover.
    pub catch_up_timeout_secs: u64,
}

/// Where the state is written before it replaces `recovery.json`.
const STATE_TMP_FILE: &str = "recovery.json.tmp";

/// Settings given again when a recorded recovery is run again; `None` keeps what the workdir
/// records, so that a default never overwrites a choice made on the first run.
///
/// What the mount, the instances and the target were made with is the recovery's identity and
/// must match what the workdir records when given. Policies, the login and the engine's waits
/// may change between runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rerun {
    pub repo: Option<String>,
    /// `latest` matches the backup pinned at validation.
    pub backup: Option<String>,
    pub target_pgdata: Option<PathBuf>,
    pub pg_user: Option<String>,
    pub listen_addresses: Option<String>,
    pub pg_bindir: Option<PathBuf>,
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
    /// `Some(true)` when `--s3-allow-http` is given.
    pub s3_allow_http: Option<bool>,
    /// The running mount was started with it.
    pub read_deadline_secs: Option<u64>,
    /// Checked once, at validation.
    pub cache_min_free_bytes: Option<u64>,
    pub published_port: Option<u16>,
    pub target_port: Option<u16>,
    /// Policies may change between runs (approve, reschedule, retry settings).
    pub switchover: Option<SwitchoverPolicy>,
    pub retry_limit: Option<u32>,
    pub retry_interval: Option<ir_api::GoDuration>,
    /// The login may change, so that a rerun can correct an AuthenticationFailed.
    pub db_user: Option<String>,
    pub db_name: Option<String>,
    /// Waits of the engine, used from the next start or switchover on.
    pub start_timeout_secs: Option<u64>,
    pub catch_up_timeout_secs: Option<u64>,
}

impl Rerun {
    fn apply(self, spec: &mut LocalSpec) -> Result<(), LocalError> {
        let text = |s: &String| s.clone();
        let path = |p: &PathBuf| p.display().to_string();
        let unset = |s: Option<String>| s.unwrap_or_else(|| "not given".into());
        let repo = &spec.repo;
        unchanged("--repo", &repo.url, self.repo, text)?;
        unchanged(
            "--backup",
            &spec.backup,
            self.backup.filter(|b| b != "latest"),
            text,
        )?;
        unchanged(
            "--target-pgdata",
            &spec.target_pgdata,
            self.target_pgdata,
            path,
        )?;
        unchanged("--pg-user", &spec.pg_user, self.pg_user, text)?;
        let listen = self.listen_addresses;
        unchanged("--listen-addresses", &spec.listen_addresses, listen, text)?;
        let bindir = |p: &Option<PathBuf>| unset(p.as_ref().map(path));
        unchanged(
            "--pg-bindir",
            &spec.pg_bindir,
            self.pg_bindir.map(Some),
            bindir,
        )?;
        let given = |s: &Option<String>| unset(s.clone());
        unchanged(
            "--s3-endpoint",
            &repo.s3_endpoint,
            self.s3_endpoint.map(Some),
            given,
        )?;
        unchanged(
            "--s3-region",
            &repo.s3_region,
            self.s3_region.map(Some),
            given,
        )?;
        let allow_http = repo.allow_http.unwrap_or(false);
        unchanged(
            "--s3-allow-http",
            &allow_http,
            self.s3_allow_http,
            bool::to_string,
        )?;
        let deadline = self.read_deadline_secs;
        unchanged(
            "--read-deadline",
            &repo.read_deadline_secs,
            deadline,
            u64::to_string,
        )?;
        let cache = self.cache_min_free_bytes;
        unchanged("--cache-min-free", &spec.cache_min_free_bytes, cache, |b| {
            format!("{b} bytes")
        })?;
        let port = u16::to_string;
        unchanged(
            "--published-port",
            &spec.published_port,
            self.published_port,
            port,
        )?;
        unchanged("--target-port", &spec.target_port, self.target_port, port)?;
        if let Some(switchover) = self.switchover {
            spec.switchover = switchover;
        }
        if let Some(limit) = self.retry_limit {
            spec.retry.limit = limit;
        }
        if let Some(interval) = self.retry_interval {
            spec.retry.interval = interval;
        }
        if let Some(db_user) = self.db_user {
            spec.db_user = db_user;
        }
        if let Some(db_name) = self.db_name {
            spec.db_name = db_name;
        }
        if let Some(secs) = self.start_timeout_secs {
            spec.start_timeout_secs = secs;
        }
        if let Some(secs) = self.catch_up_timeout_secs {
            spec.catch_up_timeout_secs = secs;
        }
        Ok(())
    }
}

/// The processes and facts the driver keeps between runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Resources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mount_pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    published_pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target_pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    base_backup_pid: Option<u32>,
    /// Why the last copy failed, until the engine has it made again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    base_backup_failure: Option<String>,
    /// The target directory made (or found empty) at validation: `--target-pgdata` must lead
    /// to it, and nowhere else, whenever root empties it or hands it to PostgreSQL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target_id: Option<FileId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    first_query_at: Option<Timestamp>,
    /// A switchover was attempted: the published instance may have been left read-only.
    #[serde(default)]
    switchover_attempted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    switchover_downtime_ms: Option<u64>,
}

/// `recovery.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalState {
    pub spec: LocalSpec,
    pub status: RecoveryStatus,
    #[serde(default)]
    resources: Resources,
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
    fn conf(&self, instance: &str) -> PathBuf {
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
    fn open_root(&self) -> Result<Option<Dir>, LocalError> {
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

    fn save(&self, state: &LocalState) -> Result<(), LocalError> {
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
    fn pending_requests(&self) -> Requests {
        Requests {
            approved: self.approval_file().exists(),
            retry: std::fs::read_to_string(self.retry_file()).ok(),
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

    fn lock(&self) -> Result<File, LocalError> {
        let path = self.root.join("lock");
        let f = OpenOptions::new()
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
struct Requests {
    approved: bool,
    retry: Option<String>,
}

/// The local driver for one run: the recovery and where its reports go.
struct Session<'a> {
    recovery: &'a mut LocalRecovery,
    report: &'a mut (dyn FnMut(Report<'_>) + Send),
}

impl Driver for Session<'_> {
    type Error = LocalError;

    async fn requests(&mut self) -> Result<round::Requests, LocalError> {
        let pending = self.recovery.workdir.pending_requests();
        Ok(round::Requests {
            retry: pending.retry,
            approved: pending.approved,
        })
    }

    async fn execute(&mut self, action: Action, _: RoundInfo<'_>) -> Result<Found, LocalError> {
        self.recovery.execute(action).await
    }

    async fn persist(&mut self, status: &RecoveryStatus) -> Result<(), LocalError> {
        let recovery = &mut *self.recovery;
        recovery.state.status = status.clone();
        if recovery.persisted {
            recovery.workdir.save(&recovery.state)?;
        }
        Ok(())
    }

    async fn report(&mut self, events: &[Event], status: &RecoveryStatus) {
        for event in events {
            (self.report)(Report::Event(event, status));
        }
        (self.report)(Report::Status(status));
    }
}

/// What the driver reports while it runs.
#[derive(Debug, Clone)]
pub enum Report<'a> {
    /// A transition or a notable failure.
    Event(&'a Event, &'a RecoveryStatus),
    /// Status after a reconcile (progress, lag).
    Status(&'a RecoveryStatus),
}

/// One local recovery in progress.
pub struct LocalRecovery {
    workdir: Workdir,
    state: LocalState,
    /// Whether `state` is in the workdir yet (only after validation passed).
    persisted: bool,
    /// The `irctl` binary, which runs the mount.
    mount_program: PathBuf,
    pg_user: OsUser,
    bins: Option<PgBinaries>,
    _lock: Option<File>,
}

impl LocalRecovery {
    /// A new recovery of `spec` in `workdir` (nothing is created before validation passes), or
    /// the one already recorded there, changed by `rerun` (which must not contradict it).
    pub fn open(
        workdir: Workdir,
        spec: Option<LocalSpec>,
        rerun: Rerun,
        mount_program: PathBuf,
    ) -> Result<Self, LocalError> {
        workdir.open_root()?;
        let (state, persisted, lock) = match workdir.load()? {
            Some(mut state) => {
                rerun.apply(&mut state.spec)?;
                let lock = workdir.lock()?;
                (state, true, Some(lock))
            }
            None => {
                let spec = spec.ok_or_else(|| LocalError::NoRecovery(workdir.root.clone()))?;
                let state = LocalState {
                    spec,
                    status: RecoveryStatus::default(),
                    resources: Resources::default(),
                };
                (state, false, None)
            }
        };
        let pg_user = OsUser::by_name(&state.spec.pg_user).ok_or_else(|| LocalError::Invalid {
            reason: Reason::UnknownUser.to_string(),
            message: format!("--pg-user: no such OS user {:?}", state.spec.pg_user),
        })?;
        Ok(LocalRecovery {
            workdir,
            state,
            persisted,
            mount_program,
            pg_user,
            bins: None,
            _lock: lock,
        })
    }

    pub fn status(&self) -> &RecoveryStatus {
        &self.state.status
    }

    pub fn spec(&self) -> &LocalSpec {
        &self.state.spec
    }

    /// The published instance's connection string for clients.
    pub fn published_conninfo(&self) -> String {
        let host = match self
            .state
            .spec
            .listen_addresses
            .split(',')
            .next()
            .map(str::trim)
        {
            Some("" | "*") | None => "localhost".to_owned(),
            Some(first) => first.to_owned(),
        };
        format!(
            "host={host} port={} dbname={}",
            self.state.spec.published_port, self.state.spec.db_name
        )
    }

    /// Runs the recovery until it completes, fails, or `stop` is set (between rounds: a step
    /// such as the switchover is never abandoned halfway).
    pub async fn run(
        &mut self,
        stop: Arc<AtomicBool>,
        report: &mut (dyn FnMut(Report<'_>) + Send),
    ) -> Result<(), LocalError> {
        if self.persisted {
            let status = &self.state.status;
            self.lay_out(status.backup.is_some() && status.phase != Phase::Completed)?;
        }
        if self.state.status.phase == Phase::Failed && self.persisted {
            // Running again after a failure is a manual retry.
            self.workdir.request_retry()?;
        }
        loop {
            let spec = &self.state.spec;
            let policy = Policy {
                switchover: spec.switchover.clone(),
                retry: spec.retry.clone(),
            };
            let status = self.state.status.clone();
            let round = round::round(
                &mut Session {
                    recovery: self,
                    report: &mut *report,
                },
                &policy,
                &status,
                Timestamp::now,
            )
            .await?;
            match round.decision.status.phase {
                Phase::Failed => return Err(self.failure()),
                Phase::Completed if round.decision.requeue_after.is_none() => return Ok(()),
                _ => {}
            }
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            if !round.moved_on {
                self.pause(&round.decision, &stop).await;
            }
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
        }
    }

    /// The error for a Failed status: before anything was created it is a validation error.
    fn failure(&self) -> LocalError {
        let status = &self.state.status;
        let reason = status.reason.clone().unwrap_or_default();
        let message = status.message.clone().unwrap_or_default();
        if self.persisted {
            LocalError::Failed { reason, message }
        } else {
            LocalError::Invalid { reason, message }
        }
    }

    /// Sleeps until the requested requeue, waking early for a stop or a new request.
    async fn pause(&self, decision: &Decision, stop: &AtomicBool) {
        let Some(wait) = decision.requeue_after else {
            return;
        };
        let deadline = Instant::now() + wait;
        let before = self.workdir.pending_requests();
        // The end of the base backup is worth looking at at once: the standby can start.
        let base_backup = self.state.resources.base_backup_pid;
        let copying = || base_backup.is_some_and(process::is_alive);
        let was_copying = copying();
        while Instant::now() < deadline
            && !stop.load(Ordering::Relaxed)
            && self.workdir.pending_requests() == before
            && copying() == was_copying
        {
            tokio::time::sleep(Duration::from_millis(100).min(deadline - Instant::now())).await;
        }
    }

    /// Carries out one action and says what it found.
    async fn execute(&mut self, action: Action) -> Result<Found, LocalError> {
        let found = match action {
            Action::Validate => Found::Validation(self.validate().await?),
            Action::EnsureMount => Found::Mount(self.ensure_mount().await?),
            Action::EnsurePublished => Found::Published(self.ensure_published().await?),
            Action::EnsureStandby => self.ensure_standby().await?,
            Action::Switchover => self.switchover().await?,
            Action::Cleanup => Found::Cleanup(self.cleanup().await),
            Action::RestartPublished => Found::Restarted(self.restart_published().await?),
            Action::RestartCopy => Found::Standby(self.copy_again().await?),
        };
        if self.persisted {
            self.workdir.save(&self.state)?;
        }
        Ok(found)
    }

    async fn validate(&mut self) -> Result<Step<ir_api::recovery::BackupInfo>, LocalError> {
        let checked =
            validate::validate(&self.state.spec, &self.workdir.root, self.persisted).await;
        match checked {
            Ok(info) => {
                // The pinned backup, not `latest`: a rerun must not switch backups under the
                // cache.
                self.state.spec.backup = info.id.clone();
                self.persist()?;
                self.lay_out(true)?;
                if let Err(failure) = self.make_target() {
                    return Ok(Step::Failed(failure));
                }
                Ok(Step::Ready(info))
            }
            // A recovery that waits for its repository exists: `irctl status` and `irctl retry`
            // need its workdir. Only a permanent refusal creates nothing.
            Err(failure) if failure.transient => {
                self.persist()?;
                Ok(Step::Failed(failure))
            }
            Err(failure) => Ok(Step::Failed(failure)),
        }
    }

    /// Makes the workdir with the state as its first file, so that from here on a killed
    /// command leaves a recovery to resume, never a workdir it refuses as foreign.
    fn persist(&mut self) -> Result<(), LocalError> {
        if self.persisted {
            return Ok(());
        }
        let root = &self.workdir.root;
        if let Some(parent) = root.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        match std::fs::DirBuilder::new().mode(0o700).create(root) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(io_err(root)(e)),
            _ => {}
        }
        let dir = self.open_root()?;
        self.access().pass(&dir).map_err(io_err(root))?;
        self.workdir.save(&self.state)?;
        self._lock = Some(self.workdir.lock()?);
        self.persisted = true;
        Ok(())
    }

    fn open_root(&self) -> Result<Dir, LocalError> {
        self.workdir
            .open_root()?
            .ok_or_else(|| LocalError::NoRecovery(self.workdir.root.clone()))
    }

    fn access(&self) -> Access {
        Access::new(&self.pg_user)
    }

    /// Makes the workdir's directories (`create`), or gives those there the modes and owners
    /// they must have (a workdir of an older irctl had them open to everyone).
    fn lay_out(&self, create: bool) -> Result<(), LocalError> {
        let access = self.access();
        let root = self.open_root()?;
        access.pass(&root).map_err(io_err(&self.workdir.root))?;
        let sub = |parent: &Dir, name: &str| -> Result<Option<Dir>, LocalError> {
            let name = OsStr::new(name);
            let found = if create {
                parent.make_dir(name, 0o700)
            } else {
                parent.open_dir(name)
            };
            match found {
                Ok(dir) => Ok(Some(dir)),
                Err(e) if !create && e.is_not_found() => Ok(None),
                Err(e) => Err(e.into()),
            }
        };
        if create {
            // Never chmodded: once mounted, the backup's own root shows here.
            root.mkdir(OsStr::new("mnt"), 0o700)?;
        }
        for name in ["ircache", "logs", "requests", "run"] {
            if let Some(dir) = sub(&root, name)? {
                dir.set_mode(0o700).map_err(io_err(dir.path()))?;
                // PostgreSQL makes its sockets there.
                if name == "run" && process::is_root() {
                    let user = &self.pg_user;
                    dir.set_owner(Some(user.uid), Some(user.gid))
                        .map_err(io_err(dir.path()))?;
                }
            }
        }
        if let Some(conf) = sub(&root, "conf")? {
            access.pass(&conf).map_err(io_err(conf.path()))?;
            for name in [Which::Published.name(), Which::Target.name()] {
                if let Some(dir) = sub(&conf, name)? {
                    access.pass(&dir).map_err(io_err(dir.path()))?;
                }
            }
        }
        Ok(())
    }

    /// Writes `instance`'s configuration files into its directory of `conf`.
    fn write_config(&self, instance: &Instance, which: Which) -> Result<(), LocalError> {
        let access = self.access();
        let conf = self.open_root()?.make_dir(OsStr::new("conf"), 0o700)?;
        access.pass(&conf).map_err(io_err(conf.path()))?;
        let dir = conf.make_dir(OsStr::new(which.name()), 0o700)?;
        access.pass(&dir).map_err(io_err(dir.path()))?;
        let users = self.engine_users();
        let users: Vec<&str> = users.iter().map(String::as_str).collect();
        for (name, text) in instance.config_files(&users, &self.state.spec.db_user) {
            let path = dir.path().join(name);
            let mut f = dir
                .create_file(OsStr::new(name), access.conf_mode())
                .map_err(io_err(&path))?;
            if let Some(gid) = access.group {
                std::os::unix::fs::fchown(&f, None, Some(gid)).map_err(io_err(&path))?;
            }
            f.write_all(text.as_bytes()).map_err(io_err(&path))?;
        }
        Ok(())
    }

    /// Makes the target directory (or takes the empty one validation found), PostgreSQL's
    /// alone, and records which directory it is.
    fn make_target(&mut self) -> Result<(), Failure> {
        let target = &self.state.spec.target_pgdata;
        let unsafe_target = |e: &dyn std::fmt::Display| {
            Failure::new(
                Reason::TargetUnsafe,
                format!("--target-pgdata {}: {e}", target.display()),
            )
        };
        let (parent, name) =
            Dir::open_parent(target, Ancestors::Any).map_err(|e| unsafe_target(&e))?;
        let dir = parent
            .make_dir(&name, 0o700)
            .map_err(|e| unsafe_target(&e))?;
        self.own_target(&dir).map_err(|e| unsafe_target(&e))?;
        let id = dir.id().map_err(|e| unsafe_target(&e))?;
        self.state.resources.target_id = Some(id);
        Ok(())
    }

    fn own_target(&self, dir: &Dir) -> std::io::Result<()> {
        dir.set_mode(0o700)?;
        if process::is_root() {
            dir.set_owner(Some(self.pg_user.uid), Some(self.pg_user.gid))?;
        }
        Ok(())
    }

    /// The target directory, opened: `--target-pgdata` must still lead, without a symbolic
    /// link, to the directory recorded at validation.
    fn target_dir(&mut self) -> Result<Dir, Failure> {
        let target = &self.state.spec.target_pgdata;
        let replaced = |why: String| {
            Failure::new(
                Reason::TargetReplaced,
                format!(
                    "--target-pgdata {}: {why}; it is no longer the directory this recovery \
                     made, and nothing was changed in what it leads to now",
                    target.display()
                ),
            )
        };
        let dir = Dir::open(target, Ancestors::Any).map_err(|e| replaced(e.to_string()))?;
        let id = dir.id().map_err(|e| replaced(e.to_string()))?;
        match self.state.resources.target_id {
            Some(recorded) if recorded != id => Err(replaced(
                "another directory is there now (moved or replaced since validation)".into(),
            )),
            Some(_) => Ok(dir),
            // Recorded by an older irctl: the directory there now is taken as the one.
            None => {
                self.state.resources.target_id = Some(id);
                Ok(dir)
            }
        }
    }

    fn bins(&mut self) -> Result<PgBinaries, Failure> {
        if let Some(bins) = &self.bins {
            return Ok(bins.clone());
        }
        let major = self.state.status.backup.as_ref().map_or(0, |b| b.pg_major);
        let bins = PgBinaries::find(major, self.state.spec.pg_bindir.as_deref())
            .map_err(|e| Failure::new(Reason::PostgresBinariesMissing, e.to_string()))?;
        self.bins = Some(bins.clone());
        Ok(bins)
    }

    // ---- mount ----

    async fn ensure_mount(&mut self) -> Result<Step, LocalError> {
        let mountpoint = self.workdir.mountpoint();
        if let Some(pid) = self.state.resources.mount_pid {
            if process::is_alive(pid) && is_fuse_mount(&mountpoint) {
                return Ok(Step::Ready(()));
            }
            // A mount process that lost its mount (or hangs) is replaced.
            process::terminate(pid, libc::SIGTERM, Duration::from_secs(10))
                .await
                .map_err(io_err(&mountpoint))?;
        }
        // PostgreSQL on a lost mount can never recover (its working directory is the dead
        // mount): end it with all its processes, so that it restarts on the new mount.
        if let Some(pid) = self.state.resources.published_pid.take()
            && process::is_alive(pid)
        {
            tracing::warn!(pid, "stopping the published instance of the lost mount");
            process::kill_group(pid)
                .await
                .map_err(io_err(&mountpoint))?;
        }
        // The kernel keeps a dead server's mount ("transport endpoint is not connected").
        ir_fuse::clear_stale_mount(&mountpoint).map_err(io_err(&mountpoint))?;
        let spec = &self.state.spec;
        let backup = self
            .state
            .status
            .backup
            .as_ref()
            .map_or(&spec.backup, |b| &b.id);
        let mut c = Command::new(&self.mount_program);
        c.arg("mount")
            .args(["--repo", &spec.repo.url, "--backup", backup])
            .arg("--cache")
            .arg(self.workdir.cache())
            .args(["--uid", &self.pg_user.uid.to_string()])
            .args(["--gid", &self.pg_user.gid.to_string()])
            .args(["--read-deadline", &spec.repo.read_deadline_secs.to_string()]);
        if let Some(endpoint) = &spec.repo.s3_endpoint {
            c.args(["--s3-endpoint", endpoint]);
        }
        if let Some(region) = &spec.repo.s3_region {
            c.args(["--s3-region", region]);
        }
        if spec.repo.allow_http == Some(true) {
            c.arg("--s3-allow-http");
        }
        c.arg(&mountpoint);
        let log = self.workdir.logs().join("mount.log");
        let me = OsUser::current().unwrap_or_else(|| self.pg_user.clone());
        let pid = process::spawn_detached(c, &me, &log).map_err(io_err(&self.mount_program))?;
        self.state.resources.mount_pid = Some(pid);
        self.workdir.save(&self.state)?;

        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if is_fuse_mount(&mountpoint) {
                return Ok(Step::Ready(()));
            }
            if let ProcState::Exited(code) = process::poll(pid) {
                self.state.resources.mount_pid = None;
                let tail = process::log_tail(&log, 4000);
                // Its own error line says it best; log lines before it are context.
                let message = match tail.lines().rev().find_map(|l| l.strip_prefix("irctl: ")) {
                    Some(error) => format!("mounting the backup: {error}"),
                    None => format!("irctl mount exited: {tail}"),
                };
                return Ok(Step::Failed(if code == Some(MOUNT_EXIT_TRANSIENT) {
                    Failure::new(Reason::RepositoryUnavailable, message)
                } else {
                    Failure::new(Reason::MountFailed, message)
                }));
            }
            if Instant::now() >= deadline {
                return Ok(Step::Failed(Failure::new(
                    Reason::MountTimeout,
                    format!(
                        "the backup was not mounted at {} within 60 s",
                        mountpoint.display()
                    ),
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    // ---- published instance ----

    fn published_instance(&self) -> Instance {
        let spec = &self.state.spec;
        Instance {
            datadir: self.workdir.mountpoint(),
            conf_dir: self.workdir.conf("published"),
            socket_dir: self.workdir.sockets(),
            port: spec.published_port,
            listen_addresses: spec.listen_addresses.clone(),
            log: self.workdir.logs().join("published.log"),
            settings: vec![
                // Its WAL continues the original's timeline: never into the original's archive.
                ("archive_mode".into(), "off".into()),
                ("cluster_name".into(), "instant-recovery-published".into()),
            ],
        }
    }

    fn target_instance(&self) -> Instance {
        let spec = &self.state.spec;
        Instance {
            datadir: spec.target_pgdata.clone(),
            conf_dir: self.workdir.conf("target"),
            socket_dir: self.workdir.sockets(),
            port: spec.target_port,
            listen_addresses: spec.listen_addresses.clone(),
            log: self.workdir.logs().join("target.log"),
            settings: vec![
                ("cluster_name".into(), STANDBY_NAME.into()),
                ("hot_standby".into(), "on".into()),
            ],
        }
    }

    fn endpoint(&self, instance: &Instance) -> Endpoint {
        instance.endpoint(&self.state.spec.db_user, &self.state.spec.db_name)
    }

    fn engine_users(&self) -> Vec<String> {
        let mut users = vec![self.pg_user.name.clone()];
        users.extend(OsUser::current().map(|u| u.name));
        users
    }

    /// Starts `instance` unless it runs, and waits until it answers.
    async fn ensure_running(
        &mut self,
        instance: &Instance,
        which: Which,
    ) -> Result<Result<Timestamp, Failure>, LocalError> {
        let bins = match self.bins() {
            Ok(b) => b,
            Err(f) => return Ok(Err(f)),
        };
        // Its postmaster.pid too must be read from the directory this recovery made.
        if let Which::Target = which
            && let Err(f) = self.target_dir()
        {
            return Ok(Err(f));
        }
        let endpoint = self.endpoint(instance);
        let timeout = Duration::from_secs(self.state.spec.start_timeout_secs);
        let recorded = match which {
            Which::Published => &mut self.state.resources.published_pid,
            Which::Target => &mut self.state.resources.target_pid,
        };
        let running = recorded
            .filter(|pid| process::is_alive(*pid))
            .or_else(|| instance.running_pid());
        let pid = match running {
            Some(pid) => pid,
            None => {
                // A postmaster that just died by itself (its mount went away under it) keeps
                // its pid until it is reaped, and the new one would refuse to start over it.
                if let Some(stale) = instance.postmaster_pid()
                    && !process::wait_reaped(stale, STALE_POSTMASTER_WAIT).await
                {
                    tracing::warn!(
                        pid = stale,
                        "a dead postmaster was never reaped; removing its lock file"
                    );
                    instance.remove_stale_lock()?;
                }
                self.write_config(instance, which)?;
                match instance.start(&bins, &self.pg_user) {
                    Ok(pid) => pid,
                    Err(e) => return Ok(Err(Failure::new(Reason::StartFailed, e.to_string()))),
                }
            }
        };
        match which {
            Which::Published => self.state.resources.published_pid = Some(pid),
            Which::Target => self.state.resources.target_pid = Some(pid),
        }
        self.workdir.save(&self.state)?;
        Ok(match instance.wait_ready(&endpoint, pid, timeout).await {
            Ok(at) => Ok(at),
            Err(e @ postgres::PgError::Timeout { .. }) => {
                Err(Failure::new(Reason::StartTimeout, e.to_string()))
            }
            Err(postgres::PgError::Rejected(rejection)) => Err(Failure::new(
                rejection.reason,
                format!(
                    "--db-user {} --db-name {}: {}",
                    endpoint.user, endpoint.dbname, rejection.message
                ),
            )),
            Err(e) => {
                // Through a lost mount PostgreSQL cannot start: that is the mount's failure.
                if !is_fuse_mount(&self.workdir.mountpoint()) {
                    Err(Failure::new(Reason::MountLost, e.to_string()))
                } else {
                    Err(Failure::new(Reason::StartFailed, e.to_string()))
                }
            }
        })
    }

    async fn ensure_published(&mut self) -> Result<Step<Timestamp>, LocalError> {
        let instance = self.published_instance();
        let ready_at = match self.ensure_running(&instance, Which::Published).await? {
            Ok(at) => at,
            Err(f) => return Ok(Step::Failed(f)),
        };
        // A switchover that did not complete may have left it read-only: serve writes again.
        if self.state.resources.switchover_attempted
            && self.state.status.phase != Phase::SwitchingOver
            && let Err(e) = self.serve_writes_again(&instance).await
        {
            return Ok(Step::Failed(Failure::new(
                Reason::ReadWriteRestoreFailed,
                e,
            )));
        }
        let first = *self.state.resources.first_query_at.get_or_insert(ready_at);
        Ok(Step::Ready(first))
    }

    /// A switchover that did not complete left `instance` read-only in its configuration,
    /// which a restart keeps: serve writes again.
    async fn serve_writes_again(&mut self, instance: &Instance) -> Result<(), String> {
        let client = self
            .endpoint(instance)
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        postgres::set_read_only(&client, false)
            .await
            .map_err(|e| e.to_string())?;
        self.state.resources.switchover_attempted = false;
        Ok(())
    }

    // ---- standby ----

    async fn ensure_standby(&mut self) -> Result<Found, LocalError> {
        let target = self.state.spec.target_pgdata.clone();
        let published = self.endpoint(&self.published_instance());
        if let Err(f) = self.bins() {
            return Ok(Found::Standby(Standby::Failed(f)));
        }
        if let Some(pid) = self.state.resources.base_backup_pid {
            if let ProcState::Running = process::poll(pid) {
                let progress = match published.connect().await {
                    Ok(client) => postgres::base_backup_progress(&client).await,
                    Err(e) => Err(postgres::PgError::Unexpected(postgres::describe(&e))),
                };
                let progress = progress.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "cannot read the base backup's progress");
                    None
                });
                // The view's row goes before pg_basebackup exits: keep the last figures.
                let last = &self.state.status.progress;
                let (copied_bytes, total_bytes) =
                    progress.unwrap_or((last.copied_bytes, last.total_bytes));
                return Ok(Found::Copy(self.copy_attempt(copied_bytes, total_bytes)));
            }
            self.state.resources.base_backup_pid = None;
            if !postgres::base_backup_complete(&target) {
                let log = self.workdir.logs().join("basebackup.log");
                self.state.resources.base_backup_failure = Some(format!(
                    "pg_basebackup did not finish: {}",
                    process::log_tail(&log, 1000)
                ));
            }
        }
        if self.state.resources.base_backup_failure.is_some() {
            // Kept until the engine decides to copy again (on a retry).
            let last = &self.state.status.progress;
            return Ok(Found::Copy(
                self.copy_attempt(last.copied_bytes, last.total_bytes),
            ));
        }
        if postgres::base_backup_complete(&target) {
            let instance = self.target_instance();
            if let Err(f) = self.ensure_running(&instance, Which::Target).await? {
                return Ok(Found::Standby(Standby::Failed(f)));
            }
            // A standby just started connects within moments: wait for that rather than a poll.
            let mut lag = None;
            let deadline = Instant::now() + Duration::from_secs(3);
            if let Ok(client) = published.connect().await {
                while lag.is_none() && Instant::now() < deadline {
                    lag = postgres::replication_lag(&client, STANDBY_NAME)
                        .await
                        .ok()
                        .flatten();
                    if lag.is_none() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            return Ok(Found::Standby(match lag {
                Some(lag_bytes) => Standby::Streaming { lag_bytes },
                // Connecting to the published instance: the copy is done, streaming not yet.
                None => Standby::Connecting,
            }));
        }
        Ok(Found::Standby(self.start_copy().await?))
    }

    /// The copy as the engine judges it: a local `pg_basebackup` is not restarted by anyone, so
    /// one failure fails it.
    fn copy_attempt(&self, copied_bytes: u64, total_bytes: u64) -> CopyAttempt {
        let failure = self.state.resources.base_backup_failure.clone();
        CopyAttempt {
            copied_bytes,
            total_bytes,
            failures: u32::from(failure.is_some()),
            gives_up_after: 1,
            source_moved: false,
            failure_detail: failure.unwrap_or_default(),
        }
    }

    /// Throws a failed copy away and starts another.
    async fn copy_again(&mut self) -> Result<Standby, LocalError> {
        if let Some(pid) = self.state.resources.base_backup_pid.take() {
            process::kill_group(pid)
                .await
                .map_err(io_err(&self.state.spec.target_pgdata))?;
        }
        self.state.resources.base_backup_failure = None;
        self.start_copy().await
    }

    /// Starts `pg_basebackup` into the target. The target was empty at validation, so anything
    /// in it is ours: root empties and owns it through the handle, and hands on its path only
    /// while that path still leads to it.
    async fn start_copy(&mut self) -> Result<Standby, LocalError> {
        let target = self.state.spec.target_pgdata.clone();
        let published = self.endpoint(&self.published_instance());
        let bins = match self.bins() {
            Ok(b) => b,
            Err(f) => return Ok(Standby::Failed(f)),
        };
        let dir = match self.target_dir() {
            Ok(dir) => dir,
            Err(f) => return Ok(Standby::Failed(f)),
        };
        dir.clear().map_err(io_err(&target))?;
        self.own_target(&dir).map_err(io_err(&target))?;
        if let Err(f) = self.target_dir() {
            return Ok(Standby::Failed(f));
        }
        let log = self.workdir.logs().join("basebackup.log");
        match postgres::start_base_backup(&bins, &published, &target, &self.pg_user, &log) {
            Ok(pid) => {
                self.state.resources.base_backup_pid = Some(pid);
                Ok(Standby::Copying {
                    copied_bytes: 0,
                    total_bytes: 0,
                })
            }
            Err(e) => Ok(Standby::Failed(Failure::new(
                Reason::BaseBackupFailed,
                e.to_string(),
            ))),
        }
    }

    // ---- switchover ----

    async fn switchover(&mut self) -> Result<Found, LocalError> {
        if let Some(ms) = self.state.resources.switchover_downtime_ms {
            return Ok(Found::Switchover(Step::Ready(SwitchoverReport {
                downtime: Duration::from_millis(ms),
            })));
        }
        let bins = match self.bins() {
            Ok(b) => b,
            Err(f) => return Ok(Found::Switchover(Step::Failed(f))),
        };
        self.state.resources.switchover_attempted = true;
        self.workdir.save(&self.state)?;
        let published = self.published_instance();
        let published_endpoint = self.endpoint(&published);
        let standby_endpoint = self.endpoint(&self.target_instance());
        let timeouts = SwitchoverTimeouts {
            catch_up: Duration::from_secs(self.state.spec.catch_up_timeout_secs),
            ..Default::default()
        };
        let local = LocalPublished {
            bins: &bins,
            instance: &published,
            stop_timeout: timeouts.stop,
        };
        let switchover = Switchover {
            published: &local,
            published_endpoint: &published_endpoint,
            standby_endpoint: &standby_endpoint,
            timeouts,
        };
        match switchover.run().await {
            Ok(outcome) => {
                tracing::info!(
                    downtime_ms = outcome.downtime.as_millis() as u64,
                    old_timeline = outcome.old_timeline,
                    new_timeline = outcome.new_timeline,
                    "switched over"
                );
                self.state.resources.switchover_downtime_ms =
                    Some(outcome.downtime.as_millis() as u64);
                self.state.resources.switchover_attempted = false;
                Ok(Found::Switchover(Step::Ready(SwitchoverReport {
                    downtime: outcome.downtime,
                })))
            }
            Err(e) => {
                let standby_in_recovery = match standby_endpoint.connect().await {
                    Ok(client) => postgres::in_recovery(&client).await.ok(),
                    Err(_) => None,
                };
                Ok(Found::SwitchoverInterrupted(Interruption {
                    failure: Failure::new(Reason::SwitchoverFailed, e.to_string()),
                    reached: e.reached,
                    published_present: published.running_pid().is_some(),
                    standby_in_recovery,
                }))
            }
        }
    }

    /// Starts the published instance again after a switchover stopped it, writable; says why
    /// not when it does not serve again.
    async fn restart_published(&mut self) -> Result<Result<(), String>, LocalError> {
        let published = self.published_instance();
        if let Err(f) = self.ensure_running(&published, Which::Published).await? {
            return Ok(Err(format!(
                "the published instance did not start again: {}",
                f.message
            )));
        }
        if let Err(e) = self.serve_writes_again(&published).await {
            return Ok(Err(format!(
                "the published instance serves again, read-only: {e}"
            )));
        }
        self.workdir.save(&self.state)?;
        Ok(Ok(()))
    }

    // ---- cleanup ----

    async fn cleanup(&mut self) -> Step {
        match self.try_cleanup().await {
            Ok(()) => Step::Ready(()),
            Err(e) => Step::Failed(Failure::new(Reason::CleanupFailed, e.to_string())),
        }
    }

    async fn try_cleanup(&mut self) -> Result<(), LocalError> {
        let published = self.published_instance();
        let mountpoint = self.workdir.mountpoint();
        if let Some(pid) = published.running_pid() {
            published.stop(pid, Duration::from_secs(60)).await?;
        }
        if let Some(pid) = self.state.resources.mount_pid {
            process::terminate(pid, libc::SIGTERM, Duration::from_secs(30))
                .await
                .map_err(io_err(&mountpoint))?;
            self.state.resources.mount_pid = None;
        }
        ir_fuse::clear_stale_mount(&mountpoint).map_err(io_err(&mountpoint))?;
        if is_fuse_mount(&mountpoint) {
            return Err(LocalError::Conflict(format!(
                "{} is still mounted",
                mountpoint.display()
            )));
        }
        for dir in [
            self.workdir.cache(),
            mountpoint,
            self.workdir.conf("published"),
        ] {
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(&dir)(e)),
                _ => {}
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
enum Which {
    Published,
    Target,
}

impl Which {
    /// Its directory in `conf`.
    fn name(self) -> &'static str {
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
struct Access {
    /// The group PostgreSQL runs with, when it is not the user running irctl.
    group: Option<u32>,
}

impl Access {
    fn new(pg_user: &OsUser) -> Access {
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        Access {
            group: (me == 0 && pg_user.uid != 0).then_some(pg_user.gid),
        }
    }

    /// Makes `dir` one PostgreSQL may pass through, and no one else.
    fn pass(&self, dir: &Dir) -> std::io::Result<()> {
        match self.group {
            Some(gid) => {
                dir.set_owner(None, Some(gid))?;
                dir.set_mode(0o710)
            }
            None => dir.set_mode(0o700),
        }
    }

    fn conf_mode(&self) -> u32 {
        if self.group.is_some() { 0o640 } else { 0o600 }
    }
}

impl From<WalkError> for LocalError {
    fn from(e: WalkError) -> Self {
        match e {
            WalkError::Io(path, source) => LocalError::Io { path, source },
            other => LocalError::Conflict(other.to_string()),
        }
    }
}

/// Refuses a `given` value of `flag` other than the `recorded` one.
fn unchanged<T: PartialEq>(
    flag: &str,
    recorded: &T,
    given: Option<T>,
    show: impl Fn(&T) -> String,
) -> Result<(), LocalError> {
    match given {
        Some(given) if given != *recorded => Err(LocalError::Conflict(format!(
            "{flag} {} differs from the recovery recorded in the workdir ({}); it cannot \
             change on a rerun: leave it out, or use another --workdir for another recovery",
            show(&given),
            show(recorded)
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded() -> LocalSpec {
        LocalSpec {
            repo: RepoSpec {
                url: "s3://bucket/prefix".into(),
                s3_endpoint: Some("http://127.0.0.1:9000".into()),
                s3_region: None,
                allow_http: Some(true),
                read_deadline_secs: 30,
            },
            backup: "20260101T000000Z-abcd".into(),
            target_pgdata: "/srv/pg/main".into(),
            published_port: 5433,
            target_port: 5434,
            listen_addresses: "localhost".into(),
            pg_user: "postgres".into(),
            db_user: "postgres".into(),
            db_name: "postgres".into(),
            pg_bindir: None,
            switchover: SwitchoverPolicy::default(),
            retry: RetryPolicy::default(),
            cache_min_free_bytes: 1 << 30,
            start_timeout_secs: 600,
            catch_up_timeout_secs: 60,
        }
    }

    #[test]
    fn a_rerun_may_not_change_what_the_recovery_was_made_with() {
        let cases: Vec<(&str, Rerun, &str, &str)> = vec![
            (
                "--repo",
                Rerun {
                    repo: Some("s3://other".into()),
                    ..Default::default()
                },
                "s3://other",
                "s3://bucket/prefix",
            ),
            (
                "--backup",
                Rerun {
                    backup: Some("20260202T000000Z-ef01".into()),
                    ..Default::default()
                },
                "20260202T000000Z-ef01",
                "20260101T000000Z-abcd",
            ),
            (
                "--target-pgdata",
                Rerun {
                    target_pgdata: Some("/srv/other".into()),
                    ..Default::default()
                },
                "/srv/other",
                "/srv/pg/main",
            ),
            (
                "--pg-user",
                Rerun {
                    pg_user: Some("alice".into()),
                    ..Default::default()
                },
                "alice",
                "postgres",
            ),
            (
                "--listen-addresses",
                Rerun {
                    listen_addresses: Some("*".into()),
                    ..Default::default()
                },
                "*",
                "localhost",
            ),
            (
                "--pg-bindir",
                Rerun {
                    pg_bindir: Some("/opt/pg/bin".into()),
                    ..Default::default()
                },
                "/opt/pg/bin",
                "not given",
            ),
            (
                "--s3-endpoint",
                Rerun {
                    s3_endpoint: Some("http://evil:9000".into()),
                    ..Default::default()
                },
                "http://evil:9000",
                "http://127.0.0.1:9000",
            ),
            (
                "--s3-region",
                Rerun {
                    s3_region: Some("eu-west-1".into()),
                    ..Default::default()
                },
                "eu-west-1",
                "not given",
            ),
            (
                "--read-deadline",
                Rerun {
                    read_deadline_secs: Some(5),
                    ..Default::default()
                },
                "5",
                "30",
            ),
            (
                "--cache-min-free",
                Rerun {
                    cache_min_free_bytes: Some(1),
                    ..Default::default()
                },
                "1 bytes",
                "1073741824 bytes",
            ),
            (
                "--published-port",
                Rerun {
                    published_port: Some(6000),
                    ..Default::default()
                },
                "6000",
                "5433",
            ),
        ];
        for (flag, rerun, given, was) in cases {
            let mut spec = recorded();
            let err = rerun.apply(&mut spec).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("{flag} {given} differs"))
                    && err.contains(&format!("({was})")),
                "{err}"
            );
            assert_eq!(spec, recorded(), "{flag}: the recorded spec changed");
        }
    }

    #[test]
    fn a_rerun_may_repeat_the_identity_and_change_policies_and_waits() {
        let mut spec = recorded();
        let rerun = Rerun {
            repo: Some("s3://bucket/prefix".into()),
            backup: Some("latest".into()),
            target_pgdata: Some("/srv/pg/main/".into()),
            s3_allow_http: Some(true),
            read_deadline_secs: Some(30),
            retry_limit: Some(3),
            db_user: Some("admin".into()),
            start_timeout_secs: Some(1200),
            catch_up_timeout_secs: Some(5),
            ..Default::default()
        };
        rerun.apply(&mut spec).unwrap();
        let expected = LocalSpec {
            retry: RetryPolicy {
                limit: 3,
                ..RetryPolicy::default()
            },
            db_user: "admin".into(),
            start_timeout_secs: 1200,
            catch_up_timeout_secs: 5,
            ..recorded()
        };
        assert_eq!(spec, expected);
    }
}
