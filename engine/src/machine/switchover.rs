//! When the switchover starts (policy Automatic, Manual or Scheduled, and how far behind the
//! standby may be), and what its outcome leads to.

use super::*;

/// An approved switchover starts once the standby is this close: little is left to replay while
/// read-only, and under a steady write load the lag seldom reads 0, which would hold back a
/// switchover someone asked for.
pub const APPROVED_MAX_LAG_BYTES: u64 = 16 << 20;

/// Scheduled without a time could never switch over.
pub(super) fn switchover_time_missing() -> Failure {
    Failure::new(
        Reason::SwitchoverTimeMissing,
        "switchover.mode is Scheduled but switchover.at is not set: give the time (RFC 3339) \
         of the switchover",
    )
}

impl Machine<'_> {
    pub(super) fn ready_for_switchover(&mut self) {
        if self.check_parts(&[Part::Mount, Part::Published, Part::Standby]) {
            return;
        }
        let lag_bytes = match self.observed.standby {
            Standby::Streaming { lag_bytes } => lag_bytes,
            Standby::Copying {
                copied_bytes,
                total_bytes,
            } => return self.sync_again(copied_bytes, total_bytes),
            Standby::Absent => return self.sync_again(0, 0),
            Standby::Unknown => return self.keep(Phase::ReadyForSwitchover),
            // A full copy that is only reconnecting is no reason to sync again, nor to start a
            // switchover without knowing its lag.
            Standby::Connecting => {
                self.status().progress.lag_bytes = None;
                self.keep(Phase::ReadyForSwitchover);
                self.set_reason(
                    Reason::StandbyNotStreaming,
                    "the standby holds a full copy but does not stream (it starts or \
                     reconnects); the switchover waits until it does",
                );
                return;
            }
            // check_parts failed the recovery.
            Standby::Failed(_) => return,
        };
        self.record_lag(lag_bytes);
        let policy = &self.policy.switchover;
        // Why the switchover may start, once the standby has caught up.
        let cleared = match policy.mode {
            SwitchoverMode::Automatic => None,
            SwitchoverMode::Manual if !policy.approved => {
                self.keep(Phase::ReadyForSwitchover);
                self.set_reason(
                    Reason::AwaitingApproval,
                    "waiting for the switchover to be approved",
                );
                return;
            }
            SwitchoverMode::Manual => Some("the switchover is approved"),
            SwitchoverMode::Scheduled => match policy.at {
                None => {
                    self.fail(ConditionType::SwitchedOver, &switchover_time_missing());
                    return;
                }
                Some(at) if self.now < at => {
                    self.keep(Phase::ReadyForSwitchover);
                    let until = self.now.duration_until(at).unsigned_abs();
                    self.d.requeue_after = Some(until.min(PROGRESS_POLL));
                    let message = format!("switchover scheduled at {at}");
                    self.set_reason(Reason::AwaitingSchedule, &message);
                    return;
                }
                Some(_) => Some("the scheduled time has passed"),
            },
        };
        // Starting behind would keep the database read-only for the whole catch-up.
        let max_lag_bytes = match policy.mode {
            SwitchoverMode::Manual => policy.max_lag_bytes.max(APPROVED_MAX_LAG_BYTES),
            _ => policy.max_lag_bytes,
        };
        if lag_bytes > max_lag_bytes {
            let waiting = format!(
                "waiting for the standby to catch up ({lag_bytes} bytes of WAL behind, at most \
                 {max_lag_bytes} allowed)"
            );
            let message = match cleared {
                Some(why) => format!("{why}; {waiting}"),
                None => waiting,
            };
            self.keep(Phase::ReadyForSwitchover);
            self.set_reason(Reason::CatchingUp, &message);
            return;
        }
        self.status().timings.switchover_started_at = Some(self.now);
        self.enter(
            Phase::SwitchingOver,
            Reason::SwitchoverStarted,
            "making the published instance read-only and promoting the standby",
        );
    }

    /// The standby no longer streams (it is copied again after a failure, or reconnects): sync
    /// until it streams again rather than decide on the last lag it had.
    pub(super) fn sync_again(&mut self, copied_bytes: u64, total_bytes: u64) {
        const MESSAGE: &str =
            "the standby does not stream (it is copied again); syncing until it does";
        self.record_copy(copied_bytes, total_bytes);
        let now = self.now;
        let status = self.status();
        status.set_condition(
            ConditionType::Synced,
            ConditionStatus::False,
            Reason::StandbyNotStreaming,
            MESSAGE,
            now,
        );
        self.enter(Phase::Syncing, Reason::StandbyNotStreaming, MESSAGE);
    }

    pub(super) fn switching_over(&mut self) {
        match &self.observed.switchover {
            Step::Ready(report) => {
                let downtime = report.downtime;
                let status = self.status();
                status.timings.switchover_downtime_ms = Some(downtime.as_millis() as u64);
                status.progress.lag_bytes = Some(0);
                let message = format!(
                    "the standby is the primary; writes were refused for {} ms",
                    downtime.as_millis()
                );
                self.advance(
                    Phase::Completed,
                    ConditionType::SwitchedOver,
                    Reason::Promoted,
                    &message,
                );
            }
            Step::Failed(f) => self.fail(ConditionType::SwitchedOver, &f.clone()),
            Step::Unknown | Step::InProgress => self.keep(Phase::SwitchingOver),
        }
    }
}
