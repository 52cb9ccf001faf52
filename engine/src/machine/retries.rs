//! Failures and retries: a failed step waits for its retry (or fails for good), a retry
//! resumes where it stopped, and a manual retry starts a new round.

use super::*;

impl Machine<'_> {
    pub(super) fn fail(&mut self, component: ConditionType, failure: &Failure) {
        let interrupted = self.d.status.phase;
        // A failed switchover leaves the published instance serving: resume by deciding again.
        // Unless the standby may have been promoted: then only the switchover may go on, since
        // the published instance must not run again.
        let resume = match interrupted {
            Phase::SwitchingOver if failure.reason == Reason::PromotionUnconfirmed => {
                Phase::SwitchingOver
            }
            Phase::SwitchingOver => Phase::ReadyForSwitchover,
            other => other,
        };
        let (now, limit, interval) = (
            self.now,
            self.policy.retry.limit,
            self.policy.retry.interval,
        );
        let status = self.status();
        status.set_condition(
            component,
            ConditionStatus::False,
            failure.reason,
            &failure.message,
            now,
        );
        status.resume_phase = Some(resume);
        status.retry.last_error = Some(format!("{}: {}", failure.reason, failure.message));
        if !failure.transient {
            self.enter(Phase::Failed, failure.reason, &failure.message);
            self.d.requeue_after = None;
            return;
        }
        let attempt = status.retry.attempt + 1;
        if attempt > limit {
            status.retry.next_attempt_at = None;
            let message = format!(
                "{} (gave up after {limit} retries; a manual retry starts a new round)",
                failure.message
            );
            self.enter(Phase::Failed, Reason::RetriesExhausted, &message);
            self.d.requeue_after = None;
            return;
        }
        let next = now + interval.0;
        status.retry.attempt = attempt;
        status.retry.next_attempt_at = Some(next);
        let message = format!(
            "{}; retry {attempt} of {limit} at {}",
            failure.message,
            next.strftime("%Y-%m-%dT%H:%M:%SZ")
        );
        self.enter(Phase::Waiting, failure.reason, &message);
        self.d.requeue_after = Some(interval.0);
    }

    pub(super) fn waiting(&mut self) {
        let next = self.d.status.retry.next_attempt_at.unwrap_or(self.now);
        if self.now < next {
            self.d.requeue_after = Some(self.now.duration_until(next).unsigned_abs());
            return;
        }
        let resume = self.d.status.resume_phase.unwrap_or(Phase::Validating);
        let message = format!(
            "retry {} of {}",
            self.d.status.retry.attempt, self.policy.retry.limit
        );
        self.status().retry.next_attempt_at = None;
        // Failures observed before this attempt are stale: act first, judge on the next look.
        self.enter(resume, Reason::Retrying, &message);
    }

    /// Applies a new manual retry request to a stopped (Waiting or Failed) recovery; returns
    /// true when it restarted it. A request that arrives while the recovery runs stays pending:
    /// it neither resets the count of the running round nor is lost if the recovery stops.
    pub(super) fn manual_retry(&mut self) -> bool {
        let Some(request) = &self.observed.manual_retry else {
            return false;
        };
        let status = self.status();
        if !matches!(status.phase, Phase::Waiting | Phase::Failed)
            || status.retry.last_manual_request.as_ref() == Some(request)
        {
            return false;
        }
        status.retry.last_manual_request = Some(request.clone());
        status.retry.attempt = 0;
        status.retry.next_attempt_at = None;
        let resume = status.resume_phase.unwrap_or(Phase::Validating);
        self.enter(
            resume,
            Reason::ManualRetry,
            "a manual retry started a new round of attempts",
        );
        true
    }
}
