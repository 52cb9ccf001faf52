//! SQL the engine runs and the quoting it builds statements with.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::{Endpoint, PgError, describe};

pub(super) async fn lsn(client: &Client, query: &str, what: &str) -> Result<u64, PgError> {
    let row = client
        .query_one(query, &[])
        .await
        .map_err(PgError::db(what))?;
    let text: Option<String> = row.get(0);
    let text = text.ok_or_else(|| PgError::Unexpected(format!("{what}: no LSN")))?;
    ir_repository::parse_lsn(&text)
        .ok_or_else(|| PgError::Unexpected(format!("{what}: unexpected LSN {text:?}")))
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

/// Where an instance replaying WAL stands: `Some(replayed LSN)` while it is still in recovery,
/// `None` once it was promoted.
pub async fn replay_position(client: &Client) -> Result<Option<u64>, PgError> {
    let what = "pg_last_wal_replay_lsn()";
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text",
            &[],
        )
        .await
        .map_err(PgError::db(what))?;
    if !row.get::<_, bool>(0) {
        return Ok(None);
    }
    // Nothing replayed yet reads as the start.
    let text: Option<String> = row.get(1);
    match text {
        None => Ok(Some(0)),
        Some(text) => ir_repository::parse_lsn(&text)
            .map(Some)
            .ok_or_else(|| PgError::Unexpected(format!("{what}: unexpected LSN {text:?}"))),
    }
}

/// Where a recovery to a point in time stands on the published instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// Still replaying; the LSN replayed so far.
    Replaying(u64),
    /// At the target, paused there (`recovery_target_action = pause`), read-only.
    Paused(u64),
    /// Recovery ended: a primary on a new timeline.
    Promoted,
}

/// Where the published instance's replay stands. A replay paused at its target is resumed
/// unless `hold` (a Publish that looks at the point): resuming a replay paused by
/// `recovery_target_action` ends recovery, which promotes it.
pub async fn replay_progress(client: &Client, hold: bool) -> Result<Replay, PgError> {
    let what = "pg_is_wal_replay_paused()";
    let Some(replayed) = replay_position(client).await? else {
        return Ok(Replay::Promoted);
    };
    let paused: bool = client
        .query_one("SELECT pg_is_wal_replay_paused()", &[])
        .await
        .map_err(PgError::db(what))?
        .get(0);
    if !paused {
        return Ok(Replay::Replaying(replayed));
    }
    if hold {
        return Ok(Replay::Paused(replayed));
    }
    client
        .batch_execute("SELECT pg_wal_replay_resume()")
        .await
        .map_err(PgError::db("pg_wal_replay_resume()"))?;
    Ok(Replay::Replaying(replayed))
}

/// What the instance at `endpoint` answers when asked whether it is in recovery; `None` when it
/// cannot be asked. After a failed switchover the standby gets the last word on whether it was
/// promoted.
pub async fn answers_in_recovery(endpoint: &Endpoint) -> Option<bool> {
    let client = endpoint.connect().await.ok()?;
    in_recovery(&client).await.ok()
}

/// The timeline of the instance's latest checkpoint (restartpoint on a standby).
pub(super) async fn checkpoint_timeline(client: &Client) -> Result<u32, PgError> {
    let timeline: i32 = client
        .query_one("SELECT timeline_id FROM pg_control_checkpoint()", &[])
        .await
        .map_err(PgError::db("reading pg_control_checkpoint()"))?
        .get(0);
    Ok(timeline as u32)
}

/// The timeline the instance writes WAL on, from the name of its current WAL file.
pub(super) async fn current_timeline(client: &Client) -> Result<u32, PgError> {
    let name: String = client
        .query_one("SELECT pg_walfile_name(pg_current_wal_lsn())", &[])
        .await
        .map_err(PgError::db("reading the current WAL file"))?
        .get(0);
    u32::from_str_radix(name.get(..8).unwrap_or(""), 16)
        .map_err(|_| PgError::Unexpected(format!("unexpected WAL file name {name:?}")))
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A value in a libpq keyword/value connection string: quoted, so that no value can add
/// keywords of its own.
pub fn quote_conninfo_value(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// `CREATE` or `ALTER` (`verb`) a login role for replication. Its password goes as a SCRAM
/// verifier computed here: the plain password never reaches the server, its logs or
/// `pg_stat_activity`, and the stored verifier is SCRAM whatever `password_encryption` says.
fn replication_role_sql(verb: &str, user: &str, password: &str) -> String {
    format!(
        "{verb} ROLE {} WITH REPLICATION LOGIN PASSWORD {}",
        quote_ident(user),
        quote_literal(&postgres_protocol::password::scram_sha_256(
            password.as_bytes()
        ))
    )
}

/// Why the replication role is not ready.
#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    #[error("looking up the replication role: {}", describe(.0))]
    Query(#[source] tokio_postgres::Error),
    #[error("role {user:?} does not exist or cannot log in for replication")]
    Missing { user: String },
}

/// Makes `user` a role that can log in for replication. With `manage` (its password is ours to
/// set) it is created or repaired; otherwise it must be so already.
pub async fn ensure_replication_role(
    client: &Client,
    user: &str,
    password: &str,
    manage: bool,
) -> Result<(), RoleError> {
    let row = client
        .query_opt(
            "SELECT rolreplication AND rolcanlogin FROM pg_roles WHERE rolname = $1",
            &[&user],
        )
        .await
        .map_err(RoleError::Query)?;
    match (row.map(|r| r.get::<_, bool>(0)), manage) {
        (Some(true), _) => Ok(()),
        (state, true) => {
            let verb = if state.is_some() { "ALTER" } else { "CREATE" };
            client
                .batch_execute(&replication_role_sql(verb, user, password))
                .await
                .map_err(RoleError::Query)
        }
        (_, false) => Err(RoleError::Missing {
            user: user.to_owned(),
        }),
    }
}

pub async fn drop_role(client: &Client, name: &str) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(&format!("DROP ROLE IF EXISTS {}", quote_ident(name)))
        .await
}

/// Where a standby streams from.
#[derive(Debug, Clone, Copy)]
pub struct Primary<'a> {
    pub host: &'a str,
    pub port: u16,
    pub user: &'a str,
    pub password: &'a str,
    pub application_name: &'a str,
}

impl Primary<'_> {
    fn conninfo(&self) -> String {
        format!(
            "host={} port={} user={} password={} application_name={}",
            self.host,
            self.port,
            quote_conninfo_value(self.user),
            quote_conninfo_value(self.password),
            quote_conninfo_value(self.application_name)
        )
    }
}

/// Whether a standby's `primary_conninfo` names `host`.
fn follows_host(conninfo: &str, host: &str) -> bool {
    conninfo
        .split_whitespace()
        .any(|kv| kv == format!("host={host}"))
}

/// Points a standby at `primary` unless it streams from that host already (a primary's address
/// changes when it moves).
pub async fn follow(standby: &Client, primary: &Primary<'_>) -> Result<(), PgError> {
    let current: String = standby
        .query_one("SHOW primary_conninfo", &[])
        .await
        .map_err(PgError::db("SHOW primary_conninfo"))?
        .get(0);
    if follows_host(&current, primary.host) {
        return Ok(());
    }
    alter_system(
        standby,
        &format!(
            "ALTER SYSTEM SET primary_conninfo = {}",
            quote_literal(&primary.conninfo())
        ),
        "setting primary_conninfo",
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::super::tests::{password_server, tcp};
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident(r#"a "b""#), r#""a ""b""""#);
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_conninfo_value(r"a'b\c d"), r"'a\'b\\c d'");
    }

    #[test]
    fn a_standby_follows_the_host_its_conninfo_names() {
        let primary = Primary {
            host: "10.0.0.7",
            port: 5432,
            user: "repl",
            password: "p w'",
            application_name: "x-target",
        };
        let conninfo = primary.conninfo();
        assert_eq!(
            conninfo,
            r"host=10.0.0.7 port=5432 user='repl' password='p w\'' application_name='x-target'"
        );
        assert!(follows_host(&conninfo, "10.0.0.7"));
        assert!(!follows_host(&conninfo, "10.0.0.70"));
        assert!(!follows_host("", "10.0.0.7"));
    }

    /// A role of a generated Secret is created, then repaired once it cannot replicate; a role
    /// of a given Secret is only checked.
    #[tokio::test]
    async fn the_replication_role_is_created_repaired_or_found_missing() {
        let root = ir_e2e::shared_tempdir();
        let server = password_server(root.path());
        let client = tcp(server.port, "postgres", "right", "postgres")
            .connect()
            .await
            .unwrap();
        let can_replicate = |role: &str| {
            server.psql(&format!(
                "SELECT rolreplication AND rolcanlogin FROM pg_roles WHERE rolname = '{role}'"
            ))
        };

        ensure_replication_role(&client, "repl", "first", true)
            .await
            .unwrap();
        assert_eq!(can_replicate("repl"), "t");
        let login = |password: &'static str| async move {
            tcp(server.port, "repl", password, "postgres").probe().await
        };
        assert!(login("first").await.unwrap().is_some());

        server.psql("ALTER ROLE repl NOREPLICATION");
        ensure_replication_role(&client, "repl", "second", true)
            .await
            .unwrap();
        assert_eq!(can_replicate("repl"), "t");
        assert!(
            login("second").await.unwrap().is_some(),
            "the password was set again"
        );
        assert!(login("first").await.is_err());

        // A given Secret's role is never created or changed.
        ensure_replication_role(&client, "repl", "second", false)
            .await
            .unwrap();
        let missing = ensure_replication_role(&client, "given", "x", false).await;
        assert!(
            matches!(&missing, Err(RoleError::Missing { user }) if user == "given"),
            "{missing:?}"
        );
        assert_eq!(can_replicate("given"), "");
        server.psql("ALTER ROLE repl NOLOGIN");
        let cannot_login = ensure_replication_role(&client, "repl", "second", false).await;
        assert!(matches!(cannot_login, Err(RoleError::Missing { .. })));

        drop_role(&client, "repl").await.unwrap();
        assert_eq!(can_replicate("repl"), "");
        drop_role(&client, "repl").await.unwrap();
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
}
