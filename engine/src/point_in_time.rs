//! What makes PostgreSQL on a mounted backup replay the repository's WAL and promote at a
//! point in time, the same for both drivers: whether it holds at a paused target, the recovery settings with `restore_command`
//! running `irctl wal fetch`, and the log line of a replay that ran out of WAL.

use ir_api::point_in_time::{PointInTime, PointInTimeStatus, TargetAction};
use ir_api::recovery::RecoveryMode;
use ir_api::{Failure, Reason};

/// What PostgreSQL logs when the WAL ran out before the target (then it exits).
const ENDED_SHORT: &str = "recovery ended before configured recovery target was reached";

/// The published instance's recovery settings: `restore_command` runs `fetch` (the words of an
/// `irctl wal fetch` command line naming the repository) with the segment's name and path, as
/// PostgreSQL's user, from the data directory (whose pg_control names the system whose WAL it
/// fetches). Hot standby, so that the replay's progress can be read while it goes on.
pub fn recovery_settings(point: &PointInTime, fetch: &[String]) -> Vec<(String, String)> {
    let mut command: Vec<String> = fetch.iter().map(|w| restore_command_word(w)).collect();
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

/// Whether the published instance stays paused at its target: its action is Pause and the
/// recovery is a Publish. A Recover resumes it, which promotes it.
pub fn holds_at_target(point: &PointInTime, mode: RecoveryMode) -> bool {
    point.action == Some(TargetAction::Pause) && mode == RecoveryMode::Publish
}

/// The failure of a replay that ran out of WAL before its target: a segment missing from the
/// window (WAL beyond it is archived) is named; otherwise the target is not in the WAL there
/// is (a restore point name or a transaction it does not hold). `replayed` says who replayed,
/// `log` is the end of its log.
pub fn unreached(point: Option<&PointInTimeStatus>, replayed: &str, log: &str) -> Failure {
    let target = point.map_or("the target", |p| p.target.as_str());
    let missing = point
        .and_then(|p| p.window.as_ref())
        .and_then(|w| w.first_missing_segment.as_deref());
    match missing {
        Some(segment) => Failure::new(
            Reason::WalSegmentMissing,
            format!(
                "{replayed} stopped at WAL segment {segment}, which the repository lacks, \
                 without reaching {target}; its log ends with:\n{log}"
            ),
        ),
        None => Failure::new(
            Reason::PointInTimeUnreached,
            format!(
                "{replayed} replayed all the WAL the repository holds without reaching \
                 {target}; its log ends with:\n{log}"
            ),
        ),
    }
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
        let point = PointInTime {
            name: Some("before".into()),
            ..Default::default()
        };
        let fetch = [
            "/usr/bin/irctl",
            "wal",
            "fetch",
            "--repo",
            "file:///srv/it's 100%",
        ]
        .map(String::from);
        let settings = recovery_settings(&point, &fetch);
        let command = &settings[0].1;
        assert!(
            command.starts_with("'/usr/bin/irctl' 'wal' 'fetch' "),
            "{command}"
        );
        assert!(command.contains(r"it'\''s 100%%"), "{command}");
        assert!(command.ends_with(" %f %p"), "{command}");
        assert!(settings.contains(&("hot_standby".into(), "on".into())));
        assert!(settings.contains(&("recovery_target_name".into(), "before".into())));
        assert!(settings.contains(&("recovery_target_action".into(), "promote".into())));
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
