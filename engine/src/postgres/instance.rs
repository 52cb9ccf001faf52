//! One PostgreSQL instance the engine runs: its configuration files, start, readiness, stop and
//! lock file.

use std::fmt::Write as _;
use std::io::Read as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use jiff::Timestamp;

use super::backup_recovery::{BackupRecovery, resume_cut_short_backup_recovery};
use super::binaries::PgBinaries;
use super::{Endpoint, Host, PgError};
use crate::process::{self, OsUser};

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
    /// Its socket directory and log directory must exist. A recovery from the backup that an
    /// earlier start left before the backup's end starts over.
    pub fn start(&self, bins: &PgBinaries, user: &OsUser) -> Result<u32, PgError> {
        if let BackupRecovery::Restarted { start_lsn } =
            resume_cut_short_backup_recovery(bins, &self.datadir)?
        {
            tracing::warn!(
                datadir = %self.datadir.display(),
                backup_start = %ir_repository::format_lsn(start_lsn),
                "the recovery from the backup stopped before the backup's end: it starts over from backup_label"
            );
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_quoted_for_hba() {
        assert_eq!(quote_hba("postgres"), "postgres");
        assert_eq!(quote_hba("app user"), "\"app user\"");
        assert_eq!(quote_conf(Path::new("/it's")), "/it''s");
    }
}
