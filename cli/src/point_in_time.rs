//! Recovery to a point in time on this host: the `--target-*` flags of `irctl recover` and
//! `irctl mount`, and what makes PostgreSQL on a mounted backup replay the repository's WAL
//! through `irctl wal fetch` and promote at the target.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use clap::Args;
use ir_api::point_in_time::PointInTime;

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
        })
    }
}

/// What PostgreSQL logs when the WAL ran out before the target (then it exits).
const ENDED_SHORT: &str = "recovery ended before configured recovery target was reached";

/// The published instance's recovery settings: `restore_command` runs `program` (this irctl)
/// against the repository, as PostgreSQL's user, from the data directory (whose pg_control
/// names the system whose WAL it fetches).
pub fn settings(point: &PointInTime, program: &Path, repo: &RepoSpec) -> Vec<(String, String)> {
    let mut words = vec![program.as_os_str().to_owned(), "wal".into(), "fetch".into()];
    words.extend(repo.args());
    let mut command: Vec<String> = words
        .iter()
        .map(|w| restore_command_word(&w.to_string_lossy()))
        .collect();
    command.extend(["%f".to_owned(), "%p".to_owned()]);
    let mut settings = vec![
        ("restore_command".to_owned(), command.join(" ")),
        ("hot_standby".to_owned(), "on".to_owned()),
    ];
    // Validation checked the target already.
    settings.extend(point.settings().unwrap_or_default());
    settings
}

/// One word of `restore_command`: quoted for the shell PostgreSQL runs it with, `%` doubled
/// so that PostgreSQL replaces only the `%f` and `%p` it adds itself.
fn restore_command_word(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''").replace('%', "%%"))
}

/// Puts `recovery.signal` in the data directory (on the mount), owned by PostgreSQL's user
/// (`owner`: uid and gid) when given.
pub fn signal_recovery(datadir: &Path, owner: Option<(u32, u32)>) -> std::io::Result<()> {
    let path = datadir.join("recovery.signal");
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
    f.write_all(b"# instant-recovery: replay to the point in time, then promote.\n")?;
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

/// Whether a log says the replay ended before its target.
pub fn ended_short(log: &str) -> bool {
    log.contains(ENDED_SHORT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_command_quotes_every_word_for_the_shell_and_for_postgres() {
        let repo = RepoSpec {
            url: "file:///srv/it's 100%".into(),
            s3_endpoint: None,
            s3_region: None,
            allow_http: None,
            read_deadline_secs: 30,
        };
        let point = PointInTime {
            name: Some("before".into()),
            ..Default::default()
        };
        let settings = settings(&point, Path::new("/usr/bin/irctl"), &repo);
        let command = &settings[0].1;
        assert!(
            command.starts_with("'/usr/bin/irctl' 'wal' 'fetch' "),
            "{command}"
        );
        assert!(command.contains(r"it'\''s 100%%"), "{command}");
        assert!(command.ends_with(" %f %p"), "{command}");
        assert!(settings.contains(&("recovery_target_name".into(), "before".into())));
        assert!(settings.contains(&("recovery_target_action".into(), "promote".into())));
    }

    #[test]
    fn configuration_values_keep_backslashes_and_quotes() {
        assert_eq!(conf_value(r"'a'\''b'"), r"''a''\\''''b''");
    }

    #[test]
    fn a_replay_that_ended_short_is_told_from_its_log() {
        assert!(ended_short(
            "FATAL:  recovery ended before configured recovery target was reached\n"
        ));
        assert!(!ended_short(
            "LOG:  database system is ready to accept connections\n"
        ));
    }
}
