//! PostgreSQL control: binaries, configuration of the instances the engine runs, readiness,
//! standby creation and progress, and the switchover.
//!
//! The engine connects over each instance's private unix socket as the database superuser,
//! authenticated by `peer` with an ident map that admits only the engine's own OS users. The
//! backup's own `pg_hba.conf` follows those lines unchanged, so clients keep the rules they had.

use std::fmt::Write as _;
use std::io::Read as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ir_api::Reason;
use jiff::Timestamp;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

use crate::process::{self, OsUser};

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error(
        "PostgreSQL {major} server binaries not found (looked in {searched}); install \
         postgresql-{major} or point --pg-bindir at them"
    )]
    BinariesMissing { major: u32, searched: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {detail}")]
    Db {
        what: String,
        /// The server's message when there is one (the error's own text is only "db error").
        detail: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("{what} did not happen within {timeout:?}")]
    Timeout { what: String, timeout: Duration },
    #[error("PostgreSQL on {datadir} exited while starting; its log ends with:\n{log}")]
    Exited { datadir: PathBuf, log: String },
    #[error("{0}")]
    Rejected(Rejection),
    #[error("{0}")]
    Unexpected(String),
}

impl PgError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        PgError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub fn db(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Self {
        let what = what.into();
        move |source| PgError::Db {
            what,
            detail: describe(&source),
            source,
        }
    }
}

/// A database error as the server worded it, else the client's description.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut text = format!("{}: {}", db.severity(), db.message());
            if let Some(detail) = db.detail() {
                text.push_str(&format!(" ({detail})"));
            }
            text
        }
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(cause) = source {
                text.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            text
        }
    }
}

/// The server binaries of one PostgreSQL major version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBinaries {
    pub bindir: PathBuf,
}

impl PgBinaries {
    /// Finds the binaries of `major`: in `explicit` when given, else in the usual Debian and
    /// RPM locations. The version `postgres --version` reports must match.
    pub fn find(major: u32, explicit: Option<&Path>) -> Result<PgBinaries, PgError> {
        let candidates: Vec<PathBuf> = match explicit {
            Some(dir) => vec![dir.to_path_buf()],
            None => vec![
                PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")),
                PathBuf::from(format!("/usr/pgsql-{major}/bin")),
            ],
        };
        for dir in &candidates {
            let required = ["postgres", "pg_basebackup", "pg_controldata"];
            if !required.iter().all(|b| dir.join(b).is_file()) {
                continue;
            }
            let out = Command::new(dir.join("postgres")).arg("--version").output();
            let found = out
                .ok()
                .and_then(|o| parse_major(&String::from_utf8_lossy(&o.stdout)));
            if found == Some(major) {
                return Ok(PgBinaries {
                    bindir: dir.clone(),
                });
            }
        }
        let searched = candidates
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        Err(PgError::BinariesMissing { major, searched })
    }

    pub fn path(&self, program: &str) -> PathBuf {
        self.bindir.join(program)
    }
}

/// `postgres (PostgreSQL) 15.14 (Debian 15.14-1)` -> 15.
fn parse_major(version: &str) -> Option<u32> {
    let number = version
        .split_whitespace()
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))?;
    number.split(['.', 'b', 'r']).next()?.parse().ok()
}

/// The server turned a connection down for good: the credentials or the database name are
/// wrong, and waiting will not change that.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Rejection {
    /// [`Reason::AuthenticationFailed`] or [`Reason::DatabaseMissing`].
    pub reason: Reason,
    /// The server's words.
    pub message: String,
}

/// Sorts out a failed connection attempt to a server that may still be coming up: `None` when
/// trying again may succeed (refused, not listening yet, starting up, too many connections),
/// the rejection when the server answered and refused the user, its password or the database.
pub fn rejection(e: &tokio_postgres::Error) -> Option<Rejection> {
    let db = e.as_db_error()?;
    let code = db.code();
    let reason = if *code == SqlState::INVALID_PASSWORD
        || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
    {
        // 28000 also covers a role that does not exist and a missing pg_hba.conf line.
        Reason::AuthenticationFailed
    } else if *code == SqlState::UNDEFINED_DATABASE {
        Reason::DatabaseMissing
    } else {
        return None;
    };
    Some(Rejection {
        reason,
        message: db.message().to_owned(),
    })
}

/// How the engine reaches an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: Host,
    pub port: u16,
    pub user: String,
    /// For TCP; a unix socket authenticates by peer.
    pub password: Option<String>,
    pub dbname: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// The directory of the instance's unix socket (local driver).
    Socket(PathBuf),
    /// Name or address (in a cluster: the Pod IP).
    Tcp(String),
}

impl Endpoint {
    pub async fn connect(&self) -> Result<Client, tokio_postgres::Error> {
        let mut config = tokio_postgres::Config::new();
        match &self.host {
            Host::Socket(dir) => config.host_path(dir),
            Host::Tcp(host) => config.host(host),
        };
        config
            .port(self.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name("instant-recovery")
            .connect_timeout(Duration::from_secs(5));
        if let Some(password) = &self.password {
            config.password(password);
        }
        let (client, connection) = config.connect(NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection closed");
            }
        });
        Ok(client)
    }

    /// One attempt at a first query: the client once the server answers, `None` while it is not
    /// up yet, the rejection when it will not let us in.
    pub async fn probe(&self) -> Result<Option<Client>, Rejection> {
        match self.connect().await {
            Ok(client) => Ok(client
                .simple_query("SELECT 1")
                .await
                .is_ok()
                .then_some(client)),
            Err(e) => rejection(&e).map_or(Ok(None), Err),
        }
    }
}

/// One PostgreSQL instance the engine runs: its data directory and the files and settings the
/// engine gives it.
#[derive(Debug, Clone)]
pub struct Instance {
    pub datadir: PathBuf,
    /// Generated `postgresql.conf`, `pg_hba.conf` and `pg_ident.conf`.
    pub conf_dir: PathBuf,
    pub socket_dir: PathBuf,
    pub port: u16,
    pub listen_addresses: String,
    pub log: PathBuf,
    /// Further settings, given on the command line so that nothing in the backup overrides them.
    pub settings: Vec<(String, String)>,
}

const IDENT_MAP: &str = "instant-recovery";

impl Instance {
    pub fn endpoint(&self, user: &str, dbname: &str) -> Endpoint {
        Endpoint {
            host: Host::Socket(self.socket_dir.clone()),
            port: self.port,
            user: user.to_owned(),
            password: None,
            dbname: dbname.to_owned(),
        }
    }

    /// The configuration files for `conf_dir`, by name: a `postgresql.conf` that includes the
    /// data directory's own (a Debian-style backup has none), and hba and ident files that put
    /// the engine's access for `engine_users` (OS users) as `db_user` in front of the backup's
    /// rules.
    pub fn config_files(
        &self,
        engine_users: &[&str],
        db_user: &str,
    ) -> [(&'static str, String); 3] {
        // Never through a link: the files written from these may be read by PostgreSQL's user.
        let own = |name: &str| {
            let mut text = String::new();
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(self.datadir.join(name))
                .and_then(|mut f| f.read_to_string(&mut text))
                .ok()
                .map(|_| text)
        };

        let conf = format!(
            "# Written by instant-recovery: the data directory's settings, with the engine's\n\
             # overrides on the command line.\ninclude_if_exists '{}'\n",
            quote_conf(&self.datadir.join("postgresql.conf"))
        );

        let user = quote_hba(db_user);
        let mut hba = format!(
            "# instant-recovery: the engine's own connections (unix socket, mapped OS users).\n\
             local all {user} peer map={IDENT_MAP}\n\
             local replication {user} peer map={IDENT_MAP}\n"
        );
        match own("pg_hba.conf") {
            Some(text) => {
                hba.push_str("# The backup's pg_hba.conf:\n");
                hba.push_str(&text);
            }
            None => hba.push_str(
                "# The backup has no pg_hba.conf: password access on loopback.\n\
                 host all all 127.0.0.1/32 scram-sha-256\nhost all all ::1/128 scram-sha-256\n",
            ),
        }
        let mut ident = String::from("# instant-recovery: OS users the engine runs as.\n");
        let mut seen = Vec::new();
        for os_user in engine_users {
            if !seen.contains(os_user) {
                seen.push(*os_user);
                let _ = writeln!(ident, "{IDENT_MAP} {} {user}", quote_hba(os_user));
            }
        }
        if let Some(text) = own("pg_ident.conf") {
            ident.push_str("# The backup's pg_ident.conf:\n");
            ident.push_str(&text);
        }
        [
            ("postgresql.conf", conf),
            ("pg_hba.conf", hba),
            ("pg_ident.conf", ident),
        ]
    }

    fn command(&self, bins: &PgBinaries) -> Command {
        let mut c = Command::new(bins.path("postgres"));
        c.arg("-D").arg(&self.datadir);
        let conf = |name: &str| self.conf_dir.join(name).display().to_string();
        let mut settings = vec![
            ("config_file".to_owned(), conf("postgresql.conf")),
            ("hba_file".to_owned(), conf("pg_hba.conf")),
            ("ident_file".to_owned(), conf("pg_ident.conf")),
            (
                "data_directory".to_owned(),
                self.datadir.display().to_string(),
            ),
            ("port".to_owned(), self.port.to_string()),
            ("listen_addresses".to_owned(), self.listen_addresses.clone()),
            (
                "unix_socket_directories".to_owned(),
                self.socket_dir.display().to_string(),
            ),
            // Errors must reach our log, not a collector file inside the data directory.
            ("logging_collector".to_owned(), "off".to_owned()),
        ];
        settings.extend(self.settings.iter().cloned());
        for (name, value) in settings {
            c.arg("-c").arg(format!("{name}={value}"));
        }
        c
    }

    /// Starts the postmaster in its own session, as `user`. Returns its pid.
    /// Its socket directory and log directory must exist.
    pub fn start(&self, bins: &PgBinaries, user: &OsUser) -> Result<u32, PgError> {
        process::spawn_detached(self.command(bins), user, &self.log)
            .map_err(|e| PgError::io(&bins.path("postgres"), e))
    }

    /// The running postmaster's pid, from `postmaster.pid`.
    pub fn running_pid(&self) -> Option<u32> {
        self.postmaster_pid().filter(|pid| process::is_alive(*pid))
    }

    /// Removes `postmaster.pid` of a postmaster that died but was never reaped (a zombie whose
    /// parent is gone, where nothing adopts orphans): PostgreSQL's own lock check would take it
    /// for a live server forever.
    pub fn remove_stale_lock(&self) -> Result<(), PgError> {
        let path = self.datadir.join("postmaster.pid");
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(PgError::io(&path, e)),
            _ => Ok(()),
        }
    }

    /// The pid `postmaster.pid` names, whether that process still runs or not.
    pub fn postmaster_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.datadir.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// Waits until the instance answers a query; returns when it first did. Fails at once when
    /// the postmaster `pid` exits or the server rejects the endpoint's user or database.
    pub async fn wait_ready(
        &self,
        endpoint: &Endpoint,
        pid: u32,
        timeout: Duration,
    ) -> Result<Timestamp, PgError> {
        let deadline = Instant::now() + timeout;
        loop {
            if endpoint.probe().await.map_err(PgError::Rejected)?.is_some() {
                return Ok(Timestamp::now());
            }
            if !process::is_alive(pid) {
                return Err(PgError::Exited {
                    datadir: self.datadir.clone(),
                    log: process::log_tail(&self.log, 2000),
                });
            }
            if Instant::now() >= deadline {
                return Err(PgError::Timeout {
                    what: format!("PostgreSQL on {} answering queries", self.datadir.display()),
                    timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the instance: fast shutdown (SIGINT), immediate (SIGQUIT) after `grace`.
    pub async fn stop(&self, pid: u32, grace: Duration) -> Result<(), PgError> {
        process::signal(pid, libc::SIGINT).map_err(|e| PgError::io(&self.datadir, e))?;
        if process::wait_gone(pid, grace).await {
            return Ok(());
        }
        process::terminate(pid, libc::SIGQUIT, Duration::from_secs(10))
            .await
            .map_err(|e| PgError::io(&self.datadir, e))
    }
}

fn quote_conf(path: &Path) -> String {
    path.display().to_string().replace('\'', "''")
}

fn quote_hba(name: &str) -> String {
    if name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
    {
        name.to_owned()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// Starts `pg_basebackup -X stream -R` from `source` into `target`, in its own session, as
/// `user`. Returns its pid. The standby it writes connects back the same way.
pub fn start_base_backup(
    bins: &PgBinaries,
    source: &Endpoint,
    target: &Path,
    user: &OsUser,
    log: &Path,
) -> Result<u32, PgError> {
    let mut c = Command::new(bins.path("pg_basebackup"));
    c.arg("--pgdata")
        .arg(target)
        .args([
            "--wal-method=stream",
            "--write-recovery-conf",
            "--checkpoint=fast",
        ])
        // --progress makes the server estimate the total, which the progress view reports.
        .args(["--progress", "--no-password"])
        .arg("--host")
        .arg(match &source.host {
            Host::Socket(dir) => dir.as_os_str(),
            Host::Tcp(host) => host.as_ref(),
        })
        .args([
            "--port",
            &source.port.to_string(),
            "--username",
            &source.user,
        ]);
    process::spawn_detached(c, user, log).map_err(|e| PgError::io(&bins.path("pg_basebackup"), e))
}

/// Whether `target` holds a finished base backup: pg_basebackup renames `backup_manifest` into
/// place only after everything else is written and synced.
pub fn base_backup_complete(target: &Path) -> bool {
    target.join("backup_manifest").is_file() && target.join("standby.signal").is_file()
}

/// (bytes streamed, bytes total) of the running base backup, from the source's progress view.
pub async fn base_backup_progress(client: &Client) -> Result<Option<(u64, u64)>, PgError> {
    let row = client
        .query_opt(
            "SELECT backup_streamed, coalesce(backup_total, 0) FROM pg_stat_progress_basebackup \
             LIMIT 1",
            &[],
        )
        .await
        .map_err(PgError::db("reading pg_stat_progress_basebackup"))?;
    Ok(row.map(|r| (r.get::<_, i64>(0) as u64, r.get::<_, i64>(1) as u64)))
}

/// Bytes of WAL the standby named `application_name` has still to replay; `None` while it does
/// not stream.
pub async fn replication_lag(
    client: &Client,
    application_name: &str,
) -> Result<Option<u64>, PgError> {
    let row = client
        .query_opt(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint \
             FROM pg_stat_replication \
             WHERE application_name = $1 AND state = 'streaming' AND replay_lsn IS NOT NULL \
             LIMIT 1",
            &[&application_name],
        )
        .await
        .map_err(PgError::db("reading pg_stat_replication"))?;
    Ok(row.map(|r| r.get::<_, i64>(0).max(0) as u64))
}

/// The fields of `pg_controldata` the switchover needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlData {
    /// State: "shut down", "in production", ...
    pub state: String,
    pub checkpoint_lsn: u64,
    pub timeline: u32,
}

pub fn control_data(bins: &PgBinaries, datadir: &Path) -> Result<ControlData, PgError> {
    let out = Command::new(bins.path("pg_controldata"))
        .arg(datadir)
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| PgError::io(&bins.path("pg_controldata"), e))?;
    if !out.status.success() {
        return Err(PgError::Unexpected(format!(
            "pg_controldata {}: {}",
            datadir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    parse_control_data(&String::from_utf8_lossy(&out.stdout)).ok_or_else(|| {
        PgError::Unexpected(format!(
            "cannot read pg_controldata output for {}",
            datadir.display()
        ))
    })
}

fn parse_control_data(text: &str) -> Option<ControlData> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(str::trim))
    };
    Some(ControlData {
        state: field("Database cluster state")?.to_owned(),
        checkpoint_lsn: ir_repository::parse_lsn(field("Latest checkpoint location")?)?,
        timeline: field("Latest checkpoint's TimeLineID")?.parse().ok()?,
    })
}

async fn lsn(client: &Client, query: &str, what: &str) -> Result<u64, PgError> {
    let row = client
        .query_one(query, &[])
        .await
        .map_err(PgError::db(what))?;
    let text: Option<String> = row.get(0);
    let text = text.ok_or_else(|| PgError::Unexpected(format!("{what}: no LSN")))?;
    ir_repository::parse_lsn(&text)
        .ok_or_else(|| PgError::Unexpected(format!("{what}: unexpected LSN {text:?}")))
}

/// Time limits of the switchover steps.
#[derive(Debug, Clone, Copy)]
pub struct SwitchoverTimeouts {
    /// The checkpoint before read-only (not downtime: writes still flow).
    pub checkpoint: Duration,
    /// Ending open sessions after read-only.
    pub drain: Duration,
    /// The standby replaying the last LSN, before and after the published instance stops.
    pub catch_up: Duration,
    pub stop: Duration,
    pub promote: Duration,
}

impl Default for SwitchoverTimeouts {
    fn default() -> Self {
        SwitchoverTimeouts {
            checkpoint: Duration::from_secs(300),
            drain: Duration::from_secs(10),
            catch_up: Duration::from_secs(60),
            stop: Duration::from_secs(60),
            promote: Duration::from_secs(60),
        }
    }
}

/// Where a failed switchover left things.
#[derive(Debug, thiserror::Error)]
#[error("switchover failed while {stage}: {source}")]
pub struct SwitchoverError {
    pub stage: &'static str,
    pub reached: Reached,
    #[source]
    pub source: PgError,
}

/// How far a failed switchover got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reached {
    /// The published instance was not stopped; it serves writes again.
    BeforeStop,
    /// This call stopped the published instance (so no attempt asked the standby to promote)
    /// and did not ask either: nothing serves until the driver starts it again.
    Stopped,
    /// The standby may be a primary, or become one: it was asked to promote, or the published
    /// instance was stopped before this call (an earlier attempt may have asked). The published
    /// instance must stay stopped.
    MaybePromoted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SwitchoverOutcome {
    /// Read-only to promoted, as measured by this call.
    pub downtime: Duration,
    pub old_timeline: u32,
    pub new_timeline: u32,
}

/// How a driver stops the published instance and reads what it wrote last.
pub trait PublishedControl {
    /// Whether the published instance still runs (or is still stopping).
    fn is_running(&self) -> impl Future<Output = Result<bool, PgError>> + Send;
    /// Stops it with a fast shutdown and returns once it is gone.
    fn stop(&self) -> impl Future<Output = Result<(), PgError>> + Send;
    /// The control file of the stopped instance where the driver can read it. `None`: the
    /// standby's flushed WAL is the measure instead, since on a clean shutdown the walsender
    /// exits only once the standby has flushed everything up to the shutdown checkpoint.
    fn final_checkpoint(&self) -> Result<Option<ControlData>, PgError>;
}

/// The published instance of the local driver: a postmaster this host runs.
pub struct LocalPublished<'a> {
    pub bins: &'a PgBinaries,
    pub instance: &'a Instance,
    pub stop_timeout: Duration,
}

impl PublishedControl for LocalPublished<'_> {
    async fn is_running(&self) -> Result<bool, PgError> {
        Ok(self.instance.running_pid().is_some())
    }

    async fn stop(&self) -> Result<(), PgError> {
        match self.instance.running_pid() {
            Some(pid) => self.instance.stop(pid, self.stop_timeout).await,
            None => Ok(()),
        }
    }

    fn final_checkpoint(&self) -> Result<Option<ControlData>, PgError> {
        control_data(self.bins, &self.instance.datadir).map(Some)
    }
}

/// The parts of a switchover.
pub struct Switchover<'a, P> {
    pub published: &'a P,
    pub published_endpoint: &'a Endpoint,
    pub standby_endpoint: &'a Endpoint,
    pub timeouts: SwitchoverTimeouts,
}

impl<P: PublishedControl + Sync> Switchover<'_, P> {
    /// Read-only, drain, catch up, stop, promote, check. Safe to call again after a failure or a
    /// crash of the caller: a promoted standby is recognised, a stopped published instance is
    /// checked against the standby from its control file.
    pub async fn run(&self) -> Result<SwitchoverOutcome, SwitchoverError> {
        // Downtime starts at read-only; when resuming after the stop, at this call.
        let mut read_only_since = Instant::now();
        let standby = self
            .standby_endpoint
            .connect()
            .await
            .map_err(PgError::db("connecting to the standby"))
            .map_err(|e| fail("connecting to the standby", Reached::BeforeStop, e))?;
        let running = self
            .published
            .is_running()
            .await
            .map_err(|e| fail("looking at the published instance", Reached::BeforeStop, e))?;
        let old_timeline = if running {
            let (timeline, since) = self.stop_published_cleanly(&standby).await?;
            read_only_since = since;
            timeline
        } else {
            // Stopped earlier (a previous attempt): what it wrote last must be on the standby.
            // That attempt may have asked the standby to promote just before it ended.
            let control = self.published.final_checkpoint().map_err(|e| {
                fail(
                    "reading the published instance's control file",
                    Reached::MaybePromoted,
                    e,
                )
            })?;
            if !in_recovery(&standby)
                .await
                .map_err(|e| fail("checking the standby", Reached::MaybePromoted, e))?
            {
                let new_timeline = current_timeline(&standby).await.map_err(|e| {
                    fail("checking the promoted standby", Reached::MaybePromoted, e)
                })?;
                return Ok(SwitchoverOutcome {
                    downtime: read_only_since.elapsed(),
                    old_timeline: control.map_or(new_timeline.saturating_sub(1), |c| c.timeline),
                    new_timeline,
                });
            }
            match control {
                Some(control) => {
                    if control.state != "shut down" {
                        return Err(fail(
                            "checking the stopped published instance",
                            Reached::MaybePromoted,
                            PgError::Unexpected(format!(
                                "the published instance is not running and was not shut down \
                                 cleanly (state {:?}); it must be started again before a \
                                 switchover",
                                control.state
                            )),
                        ));
                    }
                    self.wait_replayed(&standby, control.checkpoint_lsn, Reached::MaybePromoted)
                        .await?;
                    control.timeline
                }
                None => {
                    self.wait_flushed_replayed(&standby, Reached::MaybePromoted)
                        .await?;
                    checkpoint_timeline(&standby)
                        .await
                        .map_err(|e| fail("checking the standby", Reached::MaybePromoted, e))?
                }
            }
        };
        self.promote(&standby, old_timeline, read_only_since).await
    }

    /// Steps up to and including the stop; returns the published instance's timeline and when
    /// it became read-only.
    async fn stop_published_cleanly(
        &self,
        standby: &Client,
    ) -> Result<(u32, Instant), SwitchoverError> {
        let published = self
            .published_endpoint
            .connect()
            .await
            .map_err(PgError::db("connecting to the published instance"))
            .map_err(|e| {
                fail(
                    "connecting to the published instance",
                    Reached::BeforeStop,
                    e,
                )
            })?;
        // Flush dirty buffers while writes still flow, so that the shutdown checkpoint, which
        // counts as downtime, has little left to write through the mount.
        match tokio::time::timeout(
            self.timeouts.checkpoint,
            published.batch_execute("CHECKPOINT"),
        )
        .await
        {
            Ok(done) => done.map_err(PgError::db("checkpoint before the switchover")),
            Err(_) => Err(PgError::Timeout {
                what: "the checkpoint before the switchover".into(),
                timeout: self.timeouts.checkpoint,
            }),
        }
        .map_err(|e| {
            fail(
                "checkpointing the published instance",
                Reached::BeforeStop,
                e,
            )
        })?;
        let read_only_since = Instant::now();
        let ready_to_stop = async {
            set_read_only(&published, true).await.map_err(|e| {
                fail(
                    "making the published instance read-only",
                    Reached::BeforeStop,
                    e,
                )
            })?;
            self.drain(&published).await?;
            let final_lsn = lsn(
                &published,
                "SELECT pg_current_wal_lsn()::text",
                "reading the final LSN",
            )
            .await
            .map_err(|e| fail("reading the final LSN", Reached::BeforeStop, e))?;
            self.wait_replayed(standby, final_lsn, Reached::BeforeStop)
                .await?;
            checkpoint_timeline(&published).await.map_err(|e| {
                fail(
                    "reading the published instance's timeline",
                    Reached::BeforeStop,
                    e,
                )
            })
        }
        .await;
        let timeline = match ready_to_stop {
            Ok(timeline) => timeline,
            Err(e) => {
                // Serve writes again: the switchover is off. Also after a failed or timed-out
                // read-only change, which may have taken effect anyway.
                if let Err(undo) = set_read_only(&published, false).await {
                    tracing::warn!(error = %undo, "could not make the published instance writable again");
                }
                return Err(e);
            }
        };
        drop(published);
        self.published
            .stop()
            .await
            .map_err(|e| fail("stopping the published instance", Reached::Stopped, e))?;
        // A clean shutdown ends with a checkpoint record the standby must have as well.
        match self.published.final_checkpoint().map_err(|e| {
            fail(
                "reading the published instance's control file",
                Reached::Stopped,
                e,
            )
        })? {
            Some(control) => {
                self.wait_replayed(standby, control.checkpoint_lsn, Reached::Stopped)
                    .await?
            }
            None => {
                self.wait_flushed_replayed(standby, Reached::Stopped)
                    .await?
            }
        }
        Ok((timeline, read_only_since))
    }

    /// Ends the client sessions that started before read-only: they may hold a write
    /// transaction. Sessions opened since start read-only and may stay; anything one of them
    /// still commits by overriding the setting is caught by the check after the stop.
    async fn drain(&self, published: &Client) -> Result<(), SwitchoverError> {
        let stage = "ending client sessions";
        let rows = published
            .query(
                "SELECT pid FROM pg_stat_activity \
                 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .map_err(PgError::db(stage))
            .map_err(|e| fail(stage, Reached::BeforeStop, e))?;
        let pids: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
        let deadline = Instant::now() + self.timeouts.drain;
        loop {
            let left: i64 = published
                .query_one(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE pid = ANY($1)",
                    &[&pids],
                )
                .await
                .map_err(PgError::db(stage))
                .map_err(|e| fail(stage, Reached::BeforeStop, e))?
                .get(0);
            if left == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(fail(
                    stage,
                    Reached::BeforeStop,
                    PgError::Timeout {
                        what: format!("{left} client sessions ending"),
                        timeout: self.timeouts.drain,
                    },
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn wait_replayed(
        &self,
        standby: &Client,
        target: u64,
        reached: Reached,
    ) -> Result<(), SwitchoverError> {
        let stage = "waiting for the standby to replay the last LSN";
        let deadline = Instant::now() + self.timeouts.catch_up;
        loop {
            let replayed = lsn(
                standby,
                "SELECT pg_last_wal_replay_lsn()::text",
                "reading the standby's replay LSN",
            )
            .await
            .map_err(|e| fail(stage, reached, e))?;
            if replayed >= target {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(fail(
                    stage,
                    reached,
                    PgError::Timeout {
                        what: format!(
                            "the standby replaying up to {} (it is at {})",
                            ir_repository::format_lsn(target),
                            ir_repository::format_lsn(replayed)
                        ),
                        timeout: self.timeouts.catch_up,
                    },
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until the standby has replayed all the WAL it flushed.
    async fn wait_flushed_replayed(
        &self,
        standby: &Client,
        reached: Reached,
    ) -> Result<(), SwitchoverError> {
        let flushed = lsn(
            standby,
            "SELECT pg_last_wal_receive_lsn()::text",
            "reading the standby's flushed LSN",
        )
        .await
        .map_err(|e| fail("waiting for the standby to replay the last LSN", reached, e))?;
        self.wait_replayed(standby, flushed, reached).await
    }

    async fn promote(
        &self,
        standby: &Client,
        old_timeline: u32,
        started: Instant,
    ) -> Result<SwitchoverOutcome, SwitchoverError> {
        let stage = "promoting the standby";
        let wait = self.timeouts.promote.as_secs().clamp(1, i32::MAX as u64) as i32;
        let promoted: bool = standby
            .query_one("SELECT pg_promote(true, $1)", &[&wait])
            .await
            .map_err(PgError::db("pg_promote"))
            .map_err(|e| fail(stage, Reached::MaybePromoted, e))?
            .get(0);
        if !promoted {
            return Err(fail(
                stage,
                Reached::MaybePromoted,
                PgError::Timeout {
                    what: "pg_promote".into(),
                    timeout: self.timeouts.promote,
                },
            ));
        }
        let downtime = started.elapsed();
        let check = "checking the promoted standby";
        let new_timeline = current_timeline(standby)
            .await
            .map_err(|e| fail(check, Reached::MaybePromoted, e))?;
        let read_only: String = standby
            .query_one("SHOW transaction_read_only", &[])
            .await
            .map_err(PgError::db("SHOW transaction_read_only"))
            .map_err(|e| fail(check, Reached::MaybePromoted, e))?
            .get(0);
        if in_recovery(standby)
            .await
            .map_err(|e| fail(check, Reached::MaybePromoted, e))?
            || read_only != "off"
            || new_timeline <= old_timeline
        {
            return Err(fail(
                check,
                Reached::MaybePromoted,
                PgError::Unexpected(format!(
                    "after promotion the standby is not a read-write primary on a new timeline \
                     (timeline {new_timeline}, was {old_timeline}; transaction_read_only {read_only})"
                )),
            ));
        }
        // A standalone primary: it no longer follows anyone.
        alter_system(
            standby,
            "ALTER SYSTEM RESET primary_conninfo",
            "resetting primary_conninfo",
        )
        .await
        .map_err(|e| fail(check, Reached::MaybePromoted, e))?;
        Ok(SwitchoverOutcome {
            downtime,
            old_timeline,
            new_timeline,
        })
    }
}

fn fail(stage: &'static str, reached: Reached, source: PgError) -> SwitchoverError {
    SwitchoverError {
        stage,
        reached,
        source,
    }
}

/// Runs one `ALTER SYSTEM` statement and reloads the configuration. Two calls: ALTER SYSTEM
/// refuses to run in a (multi-statement) transaction block.
pub async fn alter_system(client: &Client, statement: &str, what: &str) -> Result<(), PgError> {
    client
        .batch_execute(statement)
        .await
        .map_err(PgError::db(what))?;
    client
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .map_err(PgError::db(format!("{what}: reloading the configuration")))?;
    Ok(())
}

/// Sets or resets `default_transaction_read_only` for the whole instance and waits until the
/// postmaster applies it, so that new sessions start read-only.
pub async fn set_read_only(client: &Client, on: bool) -> Result<(), PgError> {
    let statement = if on {
        "ALTER SYSTEM SET default_transaction_read_only = on"
    } else {
        "ALTER SYSTEM RESET default_transaction_read_only"
    };
    alter_system(client, statement, "changing default_transaction_read_only").await?;
    // The postmaster and each backend apply a reload asynchronously; ours shows when it has.
    let want = if on { "on" } else { "off" };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now: String = client
            .query_one("SHOW default_transaction_read_only", &[])
            .await
            .map_err(PgError::db("SHOW default_transaction_read_only"))?
            .get(0);
        if now == want {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(PgError::Timeout {
                what: format!("default_transaction_read_only becoming {want}"),
                timeout: Duration::from_secs(5),
            });
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub async fn in_recovery(client: &Client) -> Result<bool, PgError> {
    Ok(client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .map_err(PgError::db("pg_is_in_recovery()"))?
        .get(0))
}

/// The timeline of the instance's latest checkpoint (restartpoint on a standby).
async fn checkpoint_timeline(client: &Client) -> Result<u32, PgError> {
    let timeline: i32 = client
        .query_one("SELECT timeline_id FROM pg_control_checkpoint()", &[])
        .await
        .map_err(PgError::db("reading pg_control_checkpoint()"))?
        .get(0);
    Ok(timeline as u32)
}

/// The timeline the instance writes WAL on, from the name of its current WAL file.
async fn current_timeline(client: &Client) -> Result<u32, PgError> {
    let name: String = client
        .query_one("SELECT pg_walfile_name(pg_current_wal_lsn())", &[])
        .await
        .map_err(PgError::db("reading the current WAL file"))?
        .get(0);
    u32::from_str_radix(name.get(..8).unwrap_or(""), 16)
        .map_err(|_| PgError::Unexpected(format!("unexpected WAL file name {name:?}")))
}

pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// `CREATE` or `ALTER` (`verb`) a login role for replication. Its password goes as a SCRAM
/// verifier computed here: the plain password never reaches the server, its logs or
/// `pg_stat_activity`, and the stored verifier is SCRAM whatever `password_encryption` says.
pub fn replication_role_sql(verb: &str, user: &str, password: &str) -> String {
    format!(
        "{verb} ROLE {} WITH REPLICATION LOGIN PASSWORD {}",
        quote_ident(user),
        quote_literal(&postgres_protocol::password::scram_sha_256(
            password.as_bytes()
        ))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn major_version_from_version_string() {
        assert_eq!(
            parse_major("postgres (PostgreSQL) 15.14 (Debian 15.14-1.pgdg13+1)\n"),
            Some(15)
        );
        assert_eq!(parse_major("postgres (PostgreSQL) 17beta2"), Some(17));
        assert_eq!(parse_major("postgres (PostgreSQL) 9.6.24"), Some(9));
        assert_eq!(parse_major("nonsense"), None);
    }

    #[test]
    fn control_data_fields() {
        let text = "pg_control version number:            1300\n\
                    Database cluster state:               shut down\n\
                    Latest checkpoint location:           0/3000028\n\
                    Latest checkpoint's REDO location:    0/3000028\n\
                    Latest checkpoint's TimeLineID:       1\n";
        assert_eq!(
            parse_control_data(text),
            Some(ControlData {
                state: "shut down".into(),
                checkpoint_lsn: 0x3000028,
                timeline: 1
            })
        );
    }

    /// A real server with password authentication on TCP and `postgres`'s password `right`.
    fn password_server(root: &Path) -> ir_e2e::pg::PgCluster {
        ir_e2e::require_root();
        let mut server = ir_e2e::pg::PgCluster::init(root);
        std::fs::write(
            server.datadir.join("pg_hba.conf"),
            "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n",
        )
        .unwrap();
        server.start(&[]);
        server.psql("ALTER ROLE postgres PASSWORD 'right'");
        server
    }

    /// The replication role's password never reaches the server in clear: not in its statement
    /// log, not in the catalog; the SCRAM verifier computed here logs the role in.
    #[tokio::test]
    async fn a_role_gets_a_scram_verifier_never_the_password() {
        ir_e2e::require_root();
        let root = ir_e2e::shared_tempdir();
        let mut server = ir_e2e::pg::PgCluster::init(root.path());
        std::fs::write(
            server.datadir.join("pg_hba.conf"),
            "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n",
        )
        .unwrap();
        // md5 would be used for a plain password; the verifier is SCRAM whatever this says.
        server.start(&["log_statement=all", "password_encryption=md5"]);
        let secret = "plain-text-never-seen";
        server.psql(&replication_role_sql("CREATE", "repl \"x\"", secret));
        let stored = server.psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'repl \"x\"'");
        assert!(stored.starts_with("SCRAM-SHA-256$4096:"), "{stored}");
        let login = tcp(server.port, "repl \"x\"", secret, "postgres");
        assert!(
            login.probe().await.unwrap().is_some(),
            "the verifier logs the role in"
        );
        let log = std::fs::read_to_string(root.path().join("postgres.log")).unwrap();
        assert!(log.contains("CREATE ROLE"), "statements are logged");
        assert!(
            !log.contains(secret),
            "the password reached the server's log"
        );
    }

    fn tcp(port: u16, user: &str, password: &str, dbname: &str) -> Endpoint {
        Endpoint {
            host: Host::Tcp("127.0.0.1".into()),
            port,
            user: user.into(),
            password: Some(password.into()),
            dbname: dbname.into(),
        }
    }

    #[tokio::test]
    async fn a_server_that_turns_us_down_is_told_from_one_not_up_yet() {
        let root = ir_e2e::shared_tempdir();
        let server = password_server(root.path());
        let port = server.port;

        let wrong = tcp(port, "postgres", "wrong", "postgres");
        let rejected = wrong.probe().await.unwrap_err();
        assert_eq!(rejected.reason, "AuthenticationFailed");
        assert_eq!(
            rejected.message,
            "password authentication failed for user \"postgres\""
        );
        let nobody = tcp(port, "nobody", "right", "postgres").probe().await;
        assert_eq!(nobody.unwrap_err().reason, "AuthenticationFailed");
        let no_db = tcp(port, "postgres", "right", "gone").probe().await;
        let no_db = no_db.unwrap_err();
        assert_eq!(no_db.reason, "DatabaseMissing");
        assert!(no_db.message.contains("\"gone\""), "{}", no_db.message);
        assert!(
            tcp(port, "postgres", "right", "postgres")
                .probe()
                .await
                .unwrap()
                .is_some()
        );

        // Nothing listening yet: wait.
        let closed = tcp(ir_e2e::free_port(), "postgres", "right", "postgres");
        assert!(closed.probe().await.unwrap().is_none());

        // Waiting for the first answer gives up at once, well before its timeout.
        let instance = Instance {
            datadir: server.datadir.clone(),
            conf_dir: root.path().join("conf"),
            socket_dir: server.socket.clone(),
            port,
            listen_addresses: "127.0.0.1".into(),
            log: root.path().join("postgres.log"),
            settings: Vec::new(),
        };
        let pid = instance.running_pid().expect("the server runs");
        let started = Instant::now();
        let err = instance
            .wait_ready(&wrong, pid, Duration::from_secs(60))
            .await
            .unwrap_err();
        assert!(matches!(&err, PgError::Rejected(r) if r.reason == "AuthenticationFailed"));
        assert!(started.elapsed() < Duration::from_secs(30), "{err}");
    }

    #[test]
    fn names_are_quoted_for_hba() {
        assert_eq!(quote_hba("postgres"), "postgres");
        assert_eq!(quote_hba("app user"), "\"app user\"");
        assert_eq!(quote_conf(Path::new("/it's")), "/it''s");
    }
}
