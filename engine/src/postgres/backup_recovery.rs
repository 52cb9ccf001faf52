//! A recovery from a base backup that was stopped before the backup's end.
//!
//! PostgreSQL renames `backup_label` to `backup_label.old` as soon as it starts recovering from
//! it and relies on pg_control from then on. Without a signal file (crash recovery, how a
//! published instance starts) it cannot recognise the backup's end again, so a server stopped
//! before replaying it (its mount went away, its Pod was replaced) refuses every later start
//! with "WAL ends before end of online backup". Putting the label back makes the next start
//! recover from the backup's checkpoint again, as the first one did: the files then hold the
//! backup's bytes or changes replayed from its WAL, which replaying again from the start
//! brings to the same state.

use std::io::Read as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use super::PgError;
use super::binaries::{PgBinaries, control_data};

/// The longest `backup_label` read: PostgreSQL writes a few hundred bytes.
const MAX_LABEL_BYTES: u64 = 64 << 10;

/// What [`resume_cut_short_backup_recovery`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupRecovery {
    /// Nothing to resume: no recovery from a backup was cut short in crash recovery.
    Untouched,
    /// `backup_label.old` (and `tablespace_map.old`) were put back: the recovery from the
    /// backup that began at this LSN starts over.
    Restarted { start_lsn: u64 },
}

/// Puts `backup_label.old` back as `backup_label` when pg_control says the recovery from that
/// very backup has not reached its end and no signal file asks for archive recovery (which
/// resumes on its own). Run before each start of a server on a restored backup.
pub fn resume_cut_short_backup_recovery(
    bins: &PgBinaries,
    datadir: &Path,
) -> Result<BackupRecovery, PgError> {
    let present = |name: &str| datadir.join(name).symlink_metadata().is_ok();
    if present("recovery.signal") || present("standby.signal") || present("backup_label") {
        return Ok(BackupRecovery::Untouched);
    }
    let old = datadir.join("backup_label.old");
    let Some(text) = read_label(&old)? else {
        return Ok(BackupRecovery::Untouched);
    };
    let label = match ir_repository::parse_backup_label(&text) {
        Ok(label) => label,
        Err(e) => {
            tracing::warn!(file = %old.display(), error = %e, "not a backup label, left as it is");
            return Ok(BackupRecovery::Untouched);
        }
    };
    if control_data(bins, datadir)?.backup_start_lsn != Some(label.start_lsn) {
        return Ok(BackupRecovery::Untouched);
    }
    if present("tablespace_map.old") && !present("tablespace_map") {
        rename(datadir, "tablespace_map.old", "tablespace_map")?;
    }
    rename(datadir, "backup_label.old", "backup_label")?;
    std::fs::File::open(datadir)
        .and_then(|d| d.sync_all())
        .map_err(|e| PgError::io(datadir, e))?;
    Ok(BackupRecovery::Restarted {
        start_lsn: label.start_lsn,
    })
}

/// The label's text, or `None` when there is no regular file by that name (a symbolic link
/// is not followed).
fn read_label(path: &Path) -> Result<Option<String>, PgError> {
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(None),
        Err(e) => return Err(PgError::io(path, e)),
    };
    if !file.metadata().map_err(|e| PgError::io(path, e))?.is_file() {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    file.take(MAX_LABEL_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|e| PgError::io(path, e))?;
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

fn rename(datadir: &Path, from: &str, to: &str) -> Result<(), PgError> {
    let from = datadir.join(from);
    std::fs::rename(&from, datadir.join(to)).map_err(|e| PgError::io(&from, e))
}
