//! The phases up to a full standby and after the switchover: validate, mount, publish (with
//! a point in time), sync with its progress, and clean up once completed.

use super::switchover::switchover_time_missing;
use super::*;

impl Machine<'_> {
    pub(super) fn validating(&mut self) {
        let switchover = &self.policy.switchover;
        if switchover.mode == SwitchoverMode::Scheduled && switchover.at.is_none() {
            self.fail(ConditionType::Validated, &switchover_time_missing());
            return;
        }
        self.note_point_in_time();
        match &self.observed.validation {
            Step::Ready(info) => {
                let message = format!(
                    "backup {} (PostgreSQL {}, {} bytes)",
                    info.id, info.pg_major, info.size_bytes
                );
                self.status().backup = Some(info.clone());
                self.advance(
                    Phase::Mounting,
                    ConditionType::Validated,
                    Reason::BackupValid,
                    &message,
                );
            }
            Step::Failed(f) => self.fail(ConditionType::Validated, &f.clone()),
            Step::Unknown | Step::InProgress => self.keep(Phase::Validating),
        }
    }

    pub(super) fn mounting(&mut self) {
        match &self.observed.mount {
            Step::Ready(()) => self.part_done(Phase::Publishing, Part::Mount),
            Step::Failed(f) => self.fail(ConditionType::Mounted, &f.clone()),
            Step::Unknown | Step::InProgress => self.keep(Phase::Mounting),
        }
    }

    pub(super) fn publishing(&mut self) {
        if self.check_parts(&[Part::Mount]) {
            return;
        }
        self.note_point_in_time();
        match &self.observed.published {
            Step::Ready(first_query_at) => {
                let first_query_at = *first_query_at;
                self.point_in_time_condition(true);
                let status = self.status();
                status.timings.published_at = Some(first_query_at);
                status.timings.time_to_first_query_ms = status
                    .timings
                    .started_at
                    .and_then(|start| first_query_at.duration_since(start).try_into().ok())
                    .map(|d: Duration| d.as_millis() as u64);
                match self.policy.mode {
                    RecoveryMode::Recover => self.part_done(Phase::Syncing, Part::Published),
                    RecoveryMode::Publish => {
                        self.part_done(Phase::Published, Part::Published);
                        self.published();
                    }
                }
            }
            Step::Failed(f) => self.fail(ConditionType::Published, &f.clone()),
            Step::Unknown | Step::InProgress => {
                self.point_in_time_condition(false);
                self.keep(Phase::Publishing)
            }
        }
    }

    /// Takes over what the driver observed of a recovery to a point in time; a window seen at
    /// validation stays.
    pub(super) fn note_point_in_time(&mut self) {
        let Some(observed) = self.observed.point_in_time.clone() else {
            return;
        };
        let status = self.status();
        let window = status.point_in_time.take().and_then(|p| p.window);
        status.point_in_time = Some(PointInTimeStatus {
            window: observed.window.or(window),
            ..observed
        });
    }

    /// The PointInTime condition of a recovery to a point in time: reached once the published
    /// instance answers as a primary, replaying until then.
    pub(super) fn point_in_time_condition(&mut self, reached: bool) {
        let now = self.now;
        let status = self.status();
        let Some(p) = &status.point_in_time else {
            return;
        };
        let (condition, reason, message) = if reached {
            let at = p.reached_at.unwrap_or(now);
            (
                ConditionStatus::True,
                Reason::TargetReached,
                format!("reached {} at {at}", p.target),
            )
        } else {
            let progress = match (&p.replayed_lsn, &p.end_lsn) {
                (Some(replayed), Some(end)) => format!(": replayed {replayed} of {end}"),
                (Some(replayed), None) => format!(": replayed {replayed}"),
                _ => String::new(),
            };
            (
                ConditionStatus::False,
                Reason::Replaying,
                format!("replaying WAL up to {}{progress}", p.target),
            )
        };
        status.set_condition(ConditionType::PointInTime, condition, reason, message, now);
    }

    pub(super) fn syncing(&mut self) {
        if self.check_parts(&[Part::Mount, Part::Published]) {
            return;
        }
        match self.observed.standby.clone() {
            Standby::Copying {
                copied_bytes,
                total_bytes,
            } => {
                self.record_copy(copied_bytes, total_bytes);
                self.keep(Phase::Syncing);
            }
            Standby::Streaming { lag_bytes } => {
                self.record_lag(lag_bytes);
                self.status().timings.synced_at = Some(self.now);
                self.part_done(Phase::ReadyForSwitchover, Part::Standby);
                // Say at once what the switchover waits for (or start it).
                self.ready_for_switchover();
            }
            Standby::Failed(f) => self.fail(ConditionType::Synced, &f),
            Standby::Connecting => {
                self.status().progress.lag_bytes = None;
                self.keep(Phase::Syncing);
            }
            Standby::Unknown | Standby::Absent => self.keep(Phase::Syncing),
        }
    }

    pub(super) fn record_copy(&mut self, copied_bytes: u64, total_bytes: u64) {
        let now = self.now;
        // Before the server's estimate arrives, the backup's size is the best one.
        let total_bytes = match total_bytes {
            0 => self.d.status.backup.as_ref().map_or(0, |b| b.size_bytes),
            n => n,
        };
        let progress = &mut self.status().progress;
        if copied_bytes < progress.copied_bytes {
            // The copy started over: the old rate says nothing about this one.
            progress.rate_bytes_per_second = None;
        } else if let Some(before) = progress.observed_at {
            let elapsed = now.duration_since(before).as_secs_f64();
            if elapsed > 0.0 {
                progress.rate_bytes_per_second =
                    Some(((copied_bytes - progress.copied_bytes) as f64 / elapsed) as u64);
            }
        }
        // A standby being copied has no replay lag yet.
        progress.lag_bytes = None;
        progress.copied_bytes = copied_bytes;
        progress.total_bytes = total_bytes;
        progress.percent_copied = progress.percent().map(|p| p as u32);
        progress.observed_at = Some(now);
    }

    pub(super) fn record_lag(&mut self, lag_bytes: u64) {
        let now = self.now;
        let size = self.d.status.backup.as_ref().map_or(0, |b| b.size_bytes);
        let progress = &mut self.status().progress;
        if progress.total_bytes == 0 {
            progress.total_bytes = size;
        }
        progress.copied_bytes = progress.total_bytes.max(progress.copied_bytes);
        progress.percent_copied = Some(100);
        progress.rate_bytes_per_second = None;
        progress.lag_bytes = Some(lag_bytes);
        progress.observed_at = Some(now);
    }

    pub(super) fn completed(&mut self) {
        match &self.observed.cleanup {
            Step::Ready(()) => {
                if self.d.status.timings.completed_at.is_none() {
                    self.status().timings.completed_at = Some(self.now);
                    self.set_reason(
                        Reason::Completed,
                        "the target runs as the primary; the mount and IRCache are gone",
                    );
                }
                self.d.actions.clear();
                self.d.requeue_after = None;
            }
            Step::Failed(f) => {
                // The database is switched over; only housekeeping is left, so no Failed phase.
                let message = format!("cleanup failed, will retry: {}", f.message);
                self.keep(Phase::Completed);
                self.d.requeue_after = Some(self.policy.retry.interval.0);
                self.set_reason(Reason::CleanupFailed, &message);
            }
            Step::Unknown | Step::InProgress => self.keep(Phase::Completed),
        }
    }
}
