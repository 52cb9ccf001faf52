//! The status a phase leaves: the conditions of the parts built so far, the reason and
//! message, and the summary conditions (Ready, Reconciling, Stalled).

use super::*;

impl Machine<'_> {
    /// Checks the parts built earlier: fails on the first one that failed (returns true), and
    /// turns the condition of each one that is ready True again, since a failure seen later
    /// (and retried) set it False and no phase that sets it runs again.
    pub(super) fn check_parts(&mut self, parts: &[Part]) -> bool {
        for part in parts {
            if let Some(f) = part.failure(self.observed) {
                self.fail(part.condition(), &f.clone());
                return true;
            }
        }
        let now = self.now;
        for part in parts {
            if part.is_ready(self.observed) && !self.d.status.is_true(part.condition()) {
                let (reason, message) = part.ready_reason();
                let status = self.status();
                status.set_condition(
                    part.condition(),
                    ConditionStatus::True,
                    reason,
                    message,
                    now,
                );
            }
        }
        false
    }

    pub(super) fn set_reason(&mut self, reason: Reason, message: &str) {
        let status = self.status();
        status.reason = Some(reason.to_string());
        status.message = Some(message.to_owned());
    }

    /// The summary conditions. `Ready` says whether the recovery reached its goal: the target
    /// runs as the primary (mode Publish: the backup serves). kstatus (Flux, kpt, Config Sync) reads the abnormal-true pair:
    /// `Reconciling` while the recovery works towards the goal (waiting for a retry included),
    /// `Stalled` once it failed and waits for a person; both absent at the goal.
    pub(super) fn update_summary(&mut self) {
        let now = self.now;
        let status = self.status();
        let (ready, abnormal) = match status.phase {
            Phase::Completed if status.timings.completed_at.is_some() => (
                Some((Reason::Completed, "the target runs as the primary")),
                None,
            ),
            Phase::Published => (
                Some((Reason::PublishReady, "the backup serves from the mount")),
                None,
            ),
            Phase::Unpublished | Phase::Aborted if status.timings.ended_at.is_some() => {
                (None, None)
            }
            Phase::Failed => (None, Some(ConditionType::Stalled)),
            _ => (None, Some(ConditionType::Reconciling)),
        };
        match ready {
            Some((reason, message)) => status.set_condition(
                ConditionType::Ready,
                ConditionStatus::True,
                reason,
                message,
                now,
            ),
            None => {
                status.set_condition_as_status(ConditionType::Ready, ConditionStatus::False, now)
            }
        }
        for type_ in [ConditionType::Reconciling, ConditionType::Stalled] {
            if abnormal == Some(type_) {
                status.set_condition_as_status(type_, ConditionStatus::True, now);
            } else {
                status.remove_condition(type_);
            }
        }
    }
}
