//! PostgreSQL clusters for tests, run as the `postgres` user when the test runs as root.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Directory of the PostgreSQL server binaries (`IR_PG_BINDIR`, default PostgreSQL 15's).
pub fn bindir() -> PathBuf {
    let dir = std::env::var_os("IR_PG_BINDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"));
    assert!(
        dir.join("postgres").exists(),
        "PostgreSQL server binaries not found in {} (install postgresql-15, or set IR_PG_BINDIR)",
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
        "user postgres does not exist (install postgresql-15)"
    );
    // SAFETY: non-null pointer returned by getpwnam.
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A command run as the PostgreSQL user.
pub fn as_pg(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// Gives a directory to the PostgreSQL user.
pub fn chown_to_pg(path: &Path) {
    if is_root() {
        let (uid, gid) = pg_user();
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to postgres");
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

/// One PostgreSQL server: its data directory, a private socket directory and a loopback port.
/// Stopped (immediately) when dropped.
pub struct PgCluster {
    pub datadir: PathBuf,
    pub socket: PathBuf,
    pub port: u16,
    bindir: PathBuf,
    running: bool,
}

impl PgCluster {
    /// `initdb` in `root/data` (trust auth for local connections; fsync stays on).
    pub fn init(root: &Path) -> PgCluster {
        let datadir = root.join("data");
        std::fs::create_dir_all(&datadir).expect("create data dir");
        chown_to_pg(&datadir);
        let cluster = PgCluster::on_existing(&datadir, root);
        check(
            "initdb",
            as_pg(&cluster.bindir.join("initdb"))
                .args(["-A", "trust", "-U", "postgres", "-D"])
                .arg(&datadir)
                .output()
                .expect("run initdb"),
        );
        cluster
    }

    /// A server for an existing data directory (a backup, a mount); its socket lives in
    /// `root/sock`.
    pub fn on_existing(datadir: &Path, root: &Path) -> PgCluster {
        let socket = root.join("sock");
        std::fs::create_dir_all(&socket).expect("create socket dir");
        chown_to_pg(&socket);
        PgCluster {
            datadir: datadir.to_path_buf(),
            socket,
            port: crate::free_port(),
            bindir: bindir(),
            running: false,
        }
    }

    /// A postmaster orphaned by pg_ctl is reparented to PID 1, which may never reap it here;
    /// its zombie would keep `postmaster.pid` and the socket lock looking alive to the next start.
    fn clear_stale_lock_files(&self) {
        clear_stale_lock(&self.datadir.join("postmaster.pid"));
        clear_stale_lock(&self.socket.join(format!(".s.PGSQL.{}.lock", self.port)));
    }

    /// Starts the server and waits until it accepts queries. `settings` are extra `-c` values.
    pub fn start(&mut self, settings: &[&str]) {
        self.clear_stale_lock_files();
        let mut opts = format!(
            "-p {} -k {} -c listen_addresses=''",
            self.port,
            self.socket.display()
        );
        for s in settings {
            opts.push_str(" -c ");
            opts.push_str(s);
        }
        let log = self.socket.join(format!("postgres-{}.log", self.port));
        let out = as_pg(&self.bindir.join("pg_ctl"))
            .arg("-D")
            .arg(&self.datadir)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "120", "-o", &opts, "start"])
            .output()
            .expect("run pg_ctl start");
        if !out.status.success() {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("pg_ctl start failed ({}):\n{log}", out.status);
        }
        self.running = true;
        self.wait_ready(Duration::from_secs(60));
    }

    pub fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.try_psql("select 1").is_err() {
            assert!(
                Instant::now() < deadline,
                "PostgreSQL on port {} is not ready",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop(&mut self) {
        self.pg_ctl_stop("fast");
    }

    /// Like a crash: no checkpoint, recovery at the next start.
    pub fn stop_immediate(&mut self) {
        self.pg_ctl_stop("immediate");
    }

    fn pg_ctl_stop(&mut self, mode: &str) {
        if !self.running {
            return;
        }
        let _ = as_pg(&self.bindir.join("pg_ctl"))
            .arg("-D")
            .arg(&self.datadir)
            .args(["-m", mode, "-w", "-t", "60", "stop"])
            .output();
        self.running = false;
    }

    /// Forgets a server that died with its filesystem; kills what is left of it.
    pub fn kill_all(&mut self) {
        let pattern = format!("postgres -D {}", self.datadir.display());
        let _ = Command::new("pkill").args(["-9", "-f", &pattern]).status();
        std::thread::sleep(Duration::from_millis(300));
        self.running = false;
    }

    pub fn conninfo(&self) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres",
            self.socket.display(),
            self.port
        )
    }

    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        let out = as_pg(&self.bindir.join("psql"))
            .args([
                "-X",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                &self.conninfo(),
                "-c",
                sql,
            ])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    pub fn psql(&self, sql: &str) -> String {
        self.try_psql(sql)
            .unwrap_or_else(|e| panic!("psql {sql:?} on port {}: {e}", self.port))
    }

    pub fn pgbench(&self, args: &[&str]) -> String {
        check(
            "pgbench",
            as_pg(&self.bindir.join("pgbench"))
                .args([
                    "-h",
                    &self.socket.display().to_string(),
                    "-p",
                    &self.port.to_string(),
                ])
                .args(args)
                .arg("postgres")
                .output()
                .expect("run pgbench"),
        )
    }
}

fn clear_stale_lock(lock: &Path) {
    let Some(pid) = std::fs::read_to_string(lock)
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
    else {
        return;
    };
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let zombie = state
        .rsplit(')')
        .next()
        .is_some_and(|rest| rest.trim_start().starts_with('Z'));
    if state.is_empty() || zombie {
        let _ = std::fs::remove_file(lock);
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop_immediate();
    }
}
