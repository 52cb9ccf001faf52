//! A recovery's status for people, as `irctl status` and `kubectl ir status` print it.

use std::fmt;

use ir_api::Reason;
use ir_api::recovery::{ConditionStatus, Phase, RecoveryStatus};
use ir_repository::size::format_size;

/// Characters of the sync progress bar.
const BAR_WIDTH: usize = 20;

/// The status as labelled lines: `about` (which recovery, where) first, then phase, reason,
/// backup, progress, retries, timings, what to do next and the conditions.
pub struct StatusView<'a> {
    pub about: Vec<(&'static str, String)>,
    pub status: &'a RecoveryStatus,
    pub retry_limit: u32,
    /// The command that approves a Manual switchover.
    pub switchover_command: String,
    /// The command that starts a new round of retries.
    pub retry_command: String,
}

fn field(f: &mut fmt::Formatter<'_>, label: &str, value: &str) -> fmt::Result {
    writeln!(f, "{:<13}{value}", format!("{label}:"))
}

impl fmt::Display for StatusView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.status;
        for (label, value) in &self.about {
            field(f, label, value)?;
        }
        let mut phase = status.phase.to_string();
        if let Some(resume) = status.resume_phase {
            phase.push_str(&format!(" (resumes in {resume})"));
        }
        field(f, "phase", &phase)?;
        if let (Some(reason), Some(message)) = (&status.reason, &status.message) {
            field(f, "reason", &format!("{reason}: {message}"))?;
        }
        if let Some(b) = &status.backup {
            let backup = format!(
                "{} (PostgreSQL {}, {})",
                b.id,
                b.pg_major,
                format_size(b.size_bytes)
            );
            field(f, "backup", &backup)?;
        }
        if let Some(p) = &status.point_in_time {
            let state = match (p.reached_at, &p.replayed_lsn, &p.end_lsn) {
                (Some(at), _, _) => format!("reached at {at}"),
                (None, Some(replayed), Some(end)) => format!("replayed {replayed} of {end}"),
                (None, Some(replayed), None) => format!("replayed {replayed}"),
                (None, None, _) => "not replaying yet".to_owned(),
            };
            field(f, "to", &format!("{}: {state}", p.target))?;
            if let Some(window) = &p.window {
                field(f, "window", &window.to_string())?;
            }
        }
        if status.progress.total_bytes > 0 || status.progress.lag_bytes.is_some() {
            field(f, "progress", &progress_with_bar(status))?;
        }
        if status.retry.attempt > 0 || status.retry.next_attempt_at.is_some() {
            let next = status
                .retry
                .next_attempt_at
                .map(|t| format!(", next at {t}"))
                .unwrap_or_default();
            let retries = format!("{} of {}{next}", status.retry.attempt, self.retry_limit);
            field(f, "retries", &retries)?;
        }
        let timings = timings(status);
        if !timings.is_empty() {
            field(f, "timings", &timings.join(", "))?;
        }
        if let Some(next) = self.next_step() {
            field(f, "next", &next)?;
        }
        writeln!(f, "conditions:")?;
        for c in &status.conditions {
            let mark = match c.status {
                ConditionStatus::True => "True ",
                ConditionStatus::False => "False",
                ConditionStatus::Unknown => "?    ",
            };
            writeln!(
                f,
                "  {:<13} {mark} {:<22} {}",
                format!("{:?}", c.type_),
                c.reason,
                c.message
            )?;
        }
        Ok(())
    }
}

impl StatusView<'_> {
    /// What a person may do now, when the recovery waits for one.
    fn next_step(&self) -> Option<String> {
        let status = self.status;
        match status.phase {
            Phase::ReadyForSwitchover
                if status.reason.as_deref() == Some(Reason::AwaitingApproval.as_str()) =>
            {
                Some(format!(
                    "approve the switchover with `{}`",
                    self.switchover_command
                ))
            }
            Phase::Waiting => Some(format!(
                "retries on its own; to retry now: `{}`",
                self.retry_command
            )),
            Phase::Failed => Some(format!(
                "fix the cause, then start a new round of retries with `{}`",
                self.retry_command
            )),
            _ => None,
        }
    }
}

fn timings(status: &RecoveryStatus) -> Vec<String> {
    let t = &status.timings;
    let mut timings = Vec::new();
    if let Some(at) = t.started_at {
        timings.push(format!("started {at}"));
    }
    if let Some(ms) = t.time_to_first_query_ms {
        timings.push(format!("first query after {ms} ms"));
    }
    if let (Some(start), Some(synced)) = (t.started_at, t.synced_at) {
        timings.push(format!(
            "standby streaming after {:.1} s",
            synced.duration_since(start).as_secs_f64()
        ));
    }
    if let Some(ms) = t.switchover_downtime_ms {
        timings.push(format!("switchover downtime {ms} ms"));
    }
    if let Some(at) = t.completed_at {
        timings.push(format!("completed {at}"));
    }
    timings
}

/// Copy progress, rate and lag of the standby: `sync 42.0% (1.1 GiB of 2.6 GiB), 80 MiB/s`.
pub fn progress_text(status: &RecoveryStatus) -> String {
    let p = &status.progress;
    let mut text = match p.percent() {
        Some(pct) => format!(
            "sync {pct:.1}% ({} of {})",
            format_size(p.copied_bytes),
            format_size(p.total_bytes)
        ),
        None => format!("sync {} copied", format_size(p.copied_bytes)),
    };
    if let Some(rate) = p.rate_bytes_per_second {
        text.push_str(&format!(", {}/s", format_size(rate)));
    }
    if let Some(lag) = p.lag_bytes {
        text.push_str(&format!(", lag {}", format_size(lag)));
    }
    text
}

/// [`progress_text`] after a bar of the part copied: `[########............] sync 42.0% ...`.
fn progress_with_bar(status: &RecoveryStatus) -> String {
    match status.progress.percent() {
        Some(pct) => {
            let filled = ((pct / 100.0 * BAR_WIDTH as f64).round() as usize).min(BAR_WIDTH);
            format!(
                "[{}{}] {}",
                "#".repeat(filled),
                ".".repeat(BAR_WIDTH - filled),
                progress_text(status)
            )
        }
        None => progress_text(status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ir_api::recovery::{BackupInfo, ConditionType};

    fn view(status: &RecoveryStatus) -> String {
        StatusView {
            about: vec![("recovery", "demo/pg1".to_owned())],
            status,
            retry_limit: 10,
            switchover_command: "approve-it".to_owned(),
            retry_command: "retry-it".to_owned(),
        }
        .to_string()
    }

    #[test]
    fn syncing_shows_a_bar_and_the_backup() {
        let t0 = "2026-01-01T00:00:00Z".parse().unwrap();
        let mut status = RecoveryStatus {
            phase: Phase::Syncing,
            backup: Some(BackupInfo {
                id: "20260101T000000Z-00ff".to_owned(),
                pg_major: 17,
                size_bytes: 4 << 30,
            }),
            ..Default::default()
        };
        status.progress.copied_bytes = 1 << 30;
        status.progress.total_bytes = 4 << 30;
        status.progress.rate_bytes_per_second = Some(50 << 20);
        status.set_condition(
            ConditionType::Ready,
            ConditionStatus::False,
            Reason::Published,
            "copying",
            t0,
        );
        let text = view(&status);
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines[0], "recovery:    demo/pg1");
        assert_eq!(lines[1], "phase:       Syncing");
        assert!(lines[2].starts_with("backup:      20260101T000000Z-00ff (PostgreSQL 17, "));
        assert!(
            lines[3].starts_with("progress:    [#####...............] sync 25.0% ("),
            "{text}"
        );
        assert_eq!(
            lines[4..],
            [
                "conditions:",
                "  Ready         False Published              copying"
            ]
        );
    }

    #[test]
    fn stopped_recoveries_say_what_to_do() {
        let approval = RecoveryStatus {
            phase: Phase::ReadyForSwitchover,
            reason: Some("AwaitingApproval".to_owned()),
            message: Some("waiting for the switchover to be approved".to_owned()),
            ..Default::default()
        };
        assert!(view(&approval).contains("next:        approve the switchover with `approve-it`"));
        let mut failed = RecoveryStatus {
            phase: Phase::Failed,
            resume_phase: Some(Phase::Mounting),
            ..Default::default()
        };
        failed.retry.attempt = 10;
        let text = view(&failed);
        assert!(
            text.contains("phase:       Failed (resumes in Mounting)"),
            "{text}"
        );
        assert!(text.contains("retries:     10 of 10\n"), "{text}");
        assert!(text.contains("`retry-it`"), "{text}");
    }
}
