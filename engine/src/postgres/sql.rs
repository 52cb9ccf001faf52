//! SQL the engine runs and the quoting it builds statements with.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::{Endpoint, PgError};

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
    use super::super::tests::tcp;
    use super::*;

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
