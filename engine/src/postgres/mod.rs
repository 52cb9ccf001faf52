//! PostgreSQL control: binaries, configuration of the instances the engine runs, readiness,
//! standby creation and progress, and the switchover.
//!
//! The engine connects over each instance's private unix socket as the database superuser,
//! authenticated by `peer` with an ident map that admits only the engine's own OS users. The
//! backup's own `pg_hba.conf` follows those lines unchanged, so clients keep the rules they had.

mod backup_recovery;
mod basebackup;
mod binaries;
mod instance;
mod sql;
mod switchover;

use std::path::{Path, PathBuf};
use std::time::Duration;

use ir_api::Reason;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

pub use backup_recovery::{BackupRecovery, resume_cut_short_backup_recovery};
pub use basebackup::{
    base_backup_complete, base_backup_progress, replication_lag, start_base_backup,
};
pub use binaries::{ControlData, PgBinaries, control_data};
pub use instance::Instance;
pub use sql::{
    Primary, Replay, RoleError, alter_system, answers_in_recovery, drop_role,
    ensure_replication_role, follow, in_recovery, quote_conninfo_value, replay_position,
    replay_progress, set_read_only,
};
pub use switchover::{
    LocalPublished, PublishedControl, Reached, Switchover, SwitchoverError, SwitchoverOutcome,
    SwitchoverTimeouts,
};

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

/// The server could not reach its own files: the storage under its data directory failed (a
/// FUSE mount whose daemon died answers ECONNABORTED, a detached one ENOTCONN). The fault is the
/// mount's, not the query's, and is reported by whoever watches the mount.
pub fn storage_failed(e: &tokio_postgres::Error) -> bool {
    e.as_db_error()
        .is_some_and(|db| storage_fault(db.code(), db.message()))
}

fn storage_fault(code: &SqlState, message: &str) -> bool {
    // PostgreSQL maps errnos it has no class for to XX000, so the errno's text is what tells.
    const MOUNT_ERRNOS: [&str; 3] = [
        "Software caused connection abort",
        "Transport endpoint is not connected",
        "Input/output error",
    ];
    *code == SqlState::IO_ERROR || MOUNT_ERRNOS.iter().any(|text| message.ends_with(text))
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

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// A real server with password authentication on TCP and `postgres`'s password `right`.
    pub(super) fn password_server(root: &Path) -> ir_e2e::pg::PgCluster {
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

    #[test]
    fn an_error_from_a_dead_mount_is_a_storage_fault_and_others_are_not() {
        let fault = |code: &SqlState, message: &str| storage_fault(code, message);
        assert!(fault(
            &SqlState::INTERNAL_ERROR,
            "could not open file \"global/1260\": Software caused connection abort"
        ));
        assert!(fault(
            &SqlState::INTERNAL_ERROR,
            "could not read block 0 in file \"base/5/16384\": Transport endpoint is not connected"
        ));
        assert!(fault(&SqlState::IO_ERROR, "could not read block 7"));
        assert!(!fault(
            &SqlState::UNDEFINED_TABLE,
            "relation \"Software caused connection abort\" does not exist"
        ));
        assert!(!fault(
            &SqlState::QUERY_CANCELED,
            "canceling statement due to user request"
        ));
    }

    pub(super) fn tcp(port: u16, user: &str, password: &str, dbname: &str) -> Endpoint {
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
}
