//! Recovery to a point in time on this host: the `--target-*` flags of `irctl recover` and
//! `irctl mount`, and what makes PostgreSQL on a mounted backup replay the repository's WAL
//! through `irctl wal fetch` and promote at the target.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use clap::Args;
use ir_api::point_in_time::{PointInTime, TargetAction};

use crate::repo_args::RepoSpec;

/// Where to stop replaying WAL: `--target-time`, `--target-lsn`, `--target-xid`,
/// `--target-name` or `--target-immediate`.
#[derive(Debug, Clone, Default, Args)]
pub struct TargetArgs {
    /// Recover to the transactions committed up to this time (RFC 3339): the published
    /// instance replays the repository's WAL (`irctl wal push`) up to it. With a target and no
    /// --backup, the newest backup that ends before the target. Fixed for the workdir's
    /// recovery, like the other --target-* flags.
    #[arg(long, value_name = "RFC3339", group = "point_in_time")]
    pub target_time: Option<jiff::Timestamp>,
    /// Recover up to this WAL location (`X/Y`).
    #[arg(long, value_name = "LSN", group = "point_in_time")]
    pub target_lsn: Option<String>,
    /// Recover up to the commit of this transaction.
    #[arg(long, value_name = "XID", group = "point_in_time")]
    pub target_xid: Option<u64>,
    /// Recover up to this restore point (`pg_create_restore_point`).
    #[arg(long, value_name = "NAME", group = "point_in_time")]
    pub target_name: Option<String>,
    /// Recover only until the backup is consistent.
    #[arg(long, group = "point_in_time")]
    pub target_immediate: bool,
    /// With a target: stop just after it (true, the default) or just before it.
    #[arg(long, value_name = "BOOL", requires = "point_in_time")]
    pub target_inclusive: Option<bool>,
    /// With a target: the timeline to follow, `latest` (the default), `current` or a number.
    #[arg(long, value_name = "TIMELINE", requires = "point_in_time")]
    pub target_timeline: Option<String>,
    /// With a target: `promote` there (the default), or `pause` there, still in recovery and
    /// read-only, to look at the point (irctl publish); going on to a recovery promotes it.
    #[arg(long, value_name = "ACTION", requires = "point_in_time", value_parser = parse_action)]
    pub target_action: Option<TargetAction>,
}

fn parse_action(s: &str) -> Result<TargetAction, String> {
    match s {
        "promote" => Ok(TargetAction::Promote),
        "pause" => Ok(TargetAction::Pause),
        _ => Err(format!("{s:?}: expected promote or pause")),
    }
}

impl TargetArgs {
    /// The point in time of `--target-*`, if one is given.
    pub fn point_in_time(&self) -> Option<PointInTime> {
        let given = self.target_time.is_some()
            || self.target_lsn.is_some()
            || self.target_xid.is_some()
            || self.target_name.is_some()
            || self.target_immediate;
        given.then(|| PointInTime {
            time: self.target_time,
            lsn: self.target_lsn.clone(),
            xid: self.target_xid,
            name: self.target_name.clone(),
            immediate: self.target_immediate,
            inclusive: self.target_inclusive,
            timeline: self.target_timeline.clone(),
            action: self.target_action,
        })
    }
}

/// The published instance's recovery settings: `restore_command` runs `program` (this irctl)
/// against the repository.
pub fn settings(point: &PointInTime, program: &Path, repo: &RepoSpec) -> Vec<(String, String)> {
    let mut fetch = vec![
        program.to_string_lossy().into_owned(),
        "wal".into(),
        "fetch".into(),
    ];
    fetch.extend(repo.location().cli_args());
    ir_engine::point_in_time::recovery_settings(point, &fetch)
}

/// Puts `recovery.signal` in the data directory (on the mount), owned by PostgreSQL's user
/// (`owner`: uid and gid) when given.
pub fn signal_recovery(datadir: &Path, owner: Option<(u32, u32)>) -> std::io::Result<()> {
    signal(
        datadir,
        "recovery.signal",
        "replay to the point in time, then promote",
        owner,
    )
}

/// Puts `standby.signal` in the data directory: PostgreSQL runs as a hot standby, which
/// refuses every write (a read-only publish).
pub fn signal_standby(datadir: &Path, owner: Option<(u32, u32)>) -> std::io::Result<()> {
    signal(datadir, "standby.signal", "read-only publish", owner)
}

fn signal(datadir: &Path, name: &str, why: &str, owner: Option<(u32, u32)>) -> std::io::Result<()> {
    let path = datadir.join(name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
    }
    f.write_all(format!("# instant-recovery: {why}.\n").as_bytes())?;
    f.sync_all()
}

/// Appends `settings` to the data directory's `postgresql.auto.conf` (on the mount), for a
/// PostgreSQL started by hand on it.
pub fn append_settings(datadir: &Path, settings: &[(String, String)]) -> std::io::Result<()> {
    let mut text = String::from("# instant-recovery: replay to the point in time, then promote.\n");
    for (name, value) in settings {
        text.push_str(&format!("{name} = '{}'\n", conf_value(value)));
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(datadir.join("postgresql.auto.conf"))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

/// A value quoted for a PostgreSQL configuration file (backslashes escape there).
fn conf_value(value: &str) -> String {
    value.replace('\\', "\\\\").replace('\'', "''")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_command_names_the_repository_as_irctl_reads_it() {
        let repo = RepoSpec {
            url: "file:///srv/repo".into(),
            s3_endpoint: None,
            s3_region: None,
            allow_http: None,
            read_deadline_secs: 30,
            key_file: None,
        };
        let point = PointInTime {
            name: Some("before".into()),
            ..Default::default()
        };
        let settings = settings(&point, Path::new("/usr/bin/irctl"), &repo);
        let command = &settings[0].1;
        assert!(
            command.starts_with("'/usr/bin/irctl' 'wal' 'fetch' '--repo=file:///srv/repo' "),
            "{command}"
        );
    }

    #[test]
    fn configuration_values_keep_backslashes_and_quotes() {
        assert_eq!(conf_value(r"'a'\''b'"), r"''a''\\''''b''");
    }
}
