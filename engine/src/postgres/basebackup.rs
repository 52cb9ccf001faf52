//! Making a standby: `pg_basebackup` from the published instance, and how far it got.

use std::path::Path;
use std::process::Command;

use tokio_postgres::Client;

use super::binaries::PgBinaries;
use super::{Endpoint, Host, PgError};
use crate::process::{self, OsUser};

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
