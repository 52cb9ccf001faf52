//! PostgreSQL clusters for tests, run as the `postgres` user when the test runs as root.
//!
//! The postmaster is a child of the test process rather than of `pg_ctl`: the test reaps it, so
//! no zombie keeps `postmaster.pid` looking alive (PID 1 in a sandbox may never reap orphans),
//! and it can be signalled by its own pid.

use std::ffi::CString;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Directory of the PostgreSQL server binaries (`IR_PG_BINDIR`, default PostgreSQL 15's).
pub fn bindir() -> PathBuf {
    let dir = std::env::var_os("IR_PG_BINDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"));
    assert!(
        dir.join("postgres").exists(),
        "PostgreSQL server binaries not found in {} (install postgresql-15 with \
         scripts/setup-test-deps.sh, or set IR_PG_BINDIR)",
        dir.display()
    );
    dir
}

/// uid and gid of the unprivileged user PostgreSQL runs as.
pub fn pg_user() -> (u32, u32) {
    let name = CString::new("postgres").expect("static name");
    // SAFETY: getpwnam with a valid C string; the result is read at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !pw.is_null(),
        "user postgres does not exist (install postgresql-15 with scripts/setup-test-deps.sh)"
    );
    // SAFETY: non-null pointer returned by getpwnam.
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A command run as the PostgreSQL user (PostgreSQL refuses to run as root).
pub fn as_pg(program: &Path) -> Command {
    let mut c = Command::new(program);
    if is_root() {
        let (uid, gid) = pg_user();
        // The test's working directory may not be readable by postgres.
        c.uid(uid).gid(gid).current_dir("/");
    }
    c
}

/// Gives a file or directory to the PostgreSQL user (when running as root).
pub fn chown_to_pg(path: &Path) {
    if is_root() {
        let (uid, gid) = pg_user();
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {} to postgres: {e}", path.display()));
    }
}

fn check(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// libpq connection string to `port` on 127.0.0.1, user and database `postgres`.
pub fn tcp_conninfo(port: u16) -> String {
    format!("host=127.0.0.1 port={port} user=postgres dbname=postgres")
}

/// `psql -At` of `sql` as user `postgres` on database `postgres`, over the unix socket in
/// `socket_dir` and `port`; the error is psql's stderr.
pub fn psql_at(socket_dir: &Path, port: u16, sql: &str) -> Result<String, String> {
    let out = as_pg(&bindir().join("psql"))
        .args([
            "-X",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-h",
        ])
        .arg(socket_dir)
        .args(["-p", &port.to_string(), "-c", sql])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// One PostgreSQL server: its data directory, a private socket directory and a loopback TCP
/// port. Stopped (immediate mode) when dropped, also when the test panics.
pub struct PgCluster {
    pub datadir: PathBuf,
    /// Unix socket directory, private to this cluster's root.
    pub socket: PathBuf,
    /// Port of both the unix socket and the listener on 127.0.0.1.
    pub port: u16,
    log: PathBuf,
    bindir: PathBuf,
    postmaster: Option<Child>,
}

impl PgCluster {
    /// `initdb` in `root/data`: trust authentication, fsync left on (durability is under test).
    pub fn init(root: &Path) -> PgCluster {
        let datadir = root.join("data");
        std::fs::create_dir_all(&datadir).expect("create data dir");
        chown_to_pg(&datadir);
        let cluster = PgCluster::on_existing(&datadir, root);
        check(
            "initdb",
            as_pg(&cluster.bindir.join("initdb"))
                .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "-D"])
                .arg(&datadir)
                .output()
                .expect("run initdb"),
        );
        cluster
    }

    /// A cluster for an existing data directory (a restored backup, a FUSE mount). Its socket
    /// directory and log live under `root`; nothing runs until [`PgCluster::start`].
    pub fn on_existing(datadir: &Path, root: &Path) -> PgCluster {
        let socket = root.join("sock");
        std::fs::create_dir_all(&socket).expect("create socket dir");
        chown_to_pg(&socket);
        PgCluster {
            datadir: datadir.to_path_buf(),
            log: root.join("postgres.log"),
            socket,
            port: crate::free_port(),
            bindir: bindir(),
            postmaster: None,
        }
    }

    /// Starts the server and waits until it accepts queries (crash or backup recovery
    /// included). `settings` are extra `-c name=value` settings.
    pub fn start(&mut self, settings: &[&str]) {
        assert!(!self.is_running(), "PostgreSQL is already running");
        self.postmaster = None;
        // free_port() can race with another process taking the port: try a few.
        for attempt in 1..=3 {
            match self.try_start(settings) {
                Ok(()) => return,
                Err(log) if attempt < 3 && log.contains("could not bind") => {
                    self.port = crate::free_port();
                }
                Err(log) => panic!(
                    "PostgreSQL on {} did not start; log {}:\n{log}",
                    self.datadir.display(),
                    self.log.display()
                ),
            }
        }
    }

    fn try_start(&mut self, settings: &[&str]) -> Result<(), String> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("open {}: {e}", self.log.display()));
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let mut cmd = as_pg(&self.bindir.join("postgres"));
        cmd.arg("-D")
            .arg(&self.datadir)
            .args(["-p", &self.port.to_string()])
            .arg("-k")
            .arg(&self.socket)
            .args(["-c", "listen_addresses=127.0.0.1"]);
        for s in settings {
            cmd.args(["-c", s]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn postgres");
        self.postmaster = Some(child);
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if self.try_psql("select 1").is_ok() {
                return Ok(());
            }
            let exited = self
                .postmaster
                .as_mut()
                .and_then(|c| c.try_wait().expect("wait for postgres"));
            if let Some(status) = exited {
                self.postmaster = None;
                let log = std::fs::read(&self.log).unwrap_or_default();
                let tail = String::from_utf8_lossy(&log[log_start as usize..]);
                return Err(format!("postgres exited ({status}):\n{tail}"));
            }
            if Instant::now() > deadline {
                self.stop_immediate();
                return Err("not ready after 180 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the server, which must exit while starting: its log of that start.
    pub fn start_fails(&mut self, settings: &[&str]) -> String {
        assert!(!self.is_running(), "PostgreSQL is already running");
        match self.try_start(settings) {
            Ok(()) => panic!("PostgreSQL on {} started", self.datadir.display()),
            Err(log) => log,
        }
    }

    /// Fast shutdown: sessions ended, checkpoint written.
    pub fn stop(&mut self) {
        self.shutdown(libc::SIGINT);
    }

    /// Like a crash: no checkpoint, recovery at the next start.
    pub fn stop_immediate(&mut self) {
        self.shutdown(libc::SIGQUIT);
    }

    fn shutdown(&mut self, signal: i32) {
        let Some(mut child) = self.postmaster.take() else {
            return;
        };
        signal_pid(child.id(), signal);
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().expect("wait for postgres").is_none() {
            if Instant::now() > deadline {
                eprintln!("PostgreSQL on port {} did not stop: killing it", self.port);
                self.postmaster = Some(child);
                return self.kill_all();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL to the postmaster and its children, for a server whose filesystem went away.
    pub fn kill_all(&mut self) {
        let Some(mut child) = self.postmaster.take() else {
            return;
        };
        let pid = child.id();
        // Children first looked up, then the postmaster killed, so none is missed in between.
        let children = children_of(pid);
        signal_pid(pid, libc::SIGKILL);
        for c in children {
            signal_pid(c, libc::SIGKILL);
        }
        let _ = child.wait();
    }

    /// Whether the postmaster is still running.
    pub fn is_running(&mut self) -> bool {
        match &mut self.postmaster {
            Some(c) => c.try_wait().expect("wait for postgres").is_none(),
            None => false,
        }
    }

    /// libpq connection string over the unix socket, user `postgres`, database `postgres`.
    pub fn conninfo(&self) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres",
            self.socket.display(),
            self.port
        )
    }

    /// libpq connection string over TCP on 127.0.0.1.
    pub fn tcp_conninfo(&self) -> String {
        tcp_conninfo(self.port)
    }

    /// `psql -At` of `sql`; the error is psql's stderr.
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        psql_at(&self.socket, self.port, sql)
    }

    /// `psql -At` of `sql`, trimmed output; panics on error.
    pub fn psql(&self, sql: &str) -> String {
        self.try_psql(sql)
            .unwrap_or_else(|e| panic!("psql {sql:?} on port {}: {e}", self.port))
    }

    /// Switches to the next WAL segment and waits (up to a minute) until `archive_command` has
    /// archived the one written until then.
    pub fn archive_current_segment(&self) {
        let last = self.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
        self.psql("SELECT pg_switch_wal()");
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") < last {
            assert!(
                Instant::now() < deadline,
                "{last} not archived: {}",
                self.psql("SELECT * FROM pg_stat_archiver")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `pgbench args... postgres`; panics on failure, returns its output.
    pub fn pgbench(&self, args: &[&str]) -> String {
        check(
            "pgbench",
            as_pg(&self.bindir.join("pgbench"))
                .arg("-h")
                .arg(&self.socket)
                .args(["-p", &self.port.to_string()])
                .args(args)
                .arg("postgres")
                .output()
                .expect("run pgbench"),
        )
    }
}

/// A base backup whose recovery was stopped before the backup's end, as PostgreSQL leaves it:
/// `backup_label` renamed to `backup_label.old`, pg_control still recovering from the backup.
/// All of its WAL is back in `pg_wal`, yet PostgreSQL alone refuses to start on it in crash
/// recovery ("WAL ends before end of online backup").
pub struct CutShortBackup {
    pub datadir: PathBuf,
    /// The `backup_label` text.
    pub label: String,
    /// Rows of table `t` once the backup is recovered (some written while it was taken).
    pub rows: u32,
}

/// The message of PostgreSQL's refusal to start on a [`CutShortBackup`].
pub const WAL_ENDS_BEFORE_BACKUP_END: &str = "WAL ends before end of online backup";

/// Makes a [`CutShortBackup`] in `root/backup`: a backup whose WAL spans segments (files copied
/// between pg_backup_start and pg_backup_stop while rows are written, then the WAL up to the
/// backup's end); a first start without the segment holding the backup's end, as when the
/// mount under a recovering server went away; the segment put back.
pub async fn backup_recovery_cut_short(root: &Path) -> CutShortBackup {
    let mut source = PgCluster::init(&root.join("source"));
    source.start(&[]);
    source.psql("CREATE TABLE t(id int); INSERT INTO t SELECT generate_series(1, 1000)");
    let (session, connection) = tokio_postgres::connect(&source.conninfo(), tokio_postgres::NoTls)
        .await
        .expect("connect to the source");
    tokio::spawn(connection);
    let first_row = async |sql: &str| -> Vec<String> {
        let messages = session.simple_query(sql).await.expect(sql);
        messages
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                    (0..r.len())
                        .map(|i| r.get(i).unwrap_or_default().to_owned())
                        .collect(),
                ),
                _ => None,
            })
            .expect(sql)
    };
    first_row("SELECT pg_backup_start('cut short', true)").await;
    let datadir = root.join("backup");
    std::fs::create_dir(&datadir).expect("create the backup directory");
    chown_to_pg(&datadir);
    let copy = |script: &str| {
        check(
            script,
            as_pg(Path::new("/bin/sh"))
                .args(["-c", script, "sh"])
                .arg(&source.datadir)
                .arg(&datadir)
                .output()
                .expect("run sh"),
        );
    };
    copy("cp -a \"$1\"/. \"$2\" && rm -f \"$2\"/postmaster.pid \"$2\"/pg_wal/0*");
    for rows in ["1001, 2000", "2001, 3000"] {
        source.psql(&format!(
            "INSERT INTO t SELECT generate_series({rows}); SELECT pg_switch_wal()"
        ));
    }
    let stopped =
        first_row("SELECT labelfile, pg_walfile_name(lsn) FROM pg_backup_stop(false)").await;
    let (label, end_segment) = (stopped[0].clone(), stopped[1].clone());
    std::fs::write(datadir.join("backup_label"), &label).expect("write backup_label");
    chown_to_pg(&datadir.join("backup_label"));
    copy("cp \"$1\"/pg_wal/0* \"$2\"/pg_wal/");
    drop(session);
    source.stop();

    let end = datadir.join("pg_wal").join(&end_segment);
    let aside = root.join(&end_segment);
    std::fs::rename(&end, &aside).expect("set the last segment aside");
    let mut server = PgCluster::on_existing(&datadir, &root.join("cut-short"));
    let log = server.start_fails(&[]);
    assert!(log.contains(WAL_ENDS_BEFORE_BACKUP_END), "{log}");
    assert!(
        datadir.join("backup_label.old").is_file() && !datadir.join("backup_label").exists(),
        "PostgreSQL did not rename backup_label"
    );
    std::fs::rename(&aside, &end).expect("put the last segment back");
    let log = server.start_fails(&[]);
    assert!(log.contains(WAL_ENDS_BEFORE_BACKUP_END), "{log}");
    CutShortBackup {
        datadir,
        label,
        rows: 3000,
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop_immediate();
    }
}

fn signal_pid(pid: u32, signal: i32) {
    // SAFETY: kill has no memory preconditions; the pid is one we spawned or its child.
    unsafe { libc::kill(pid as libc::pid_t, signal) };
}

/// Pids whose parent is `pid` (PostgreSQL's backends and auxiliary processes).
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    // Fields after the command name, which may hold spaces and parentheses.
                    let rest = s.rsplit_once(')')?.1.to_string();
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}
