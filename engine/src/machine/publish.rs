//! Mode Publish and the end of a recovery: a publish serving until its TTL, a request to
//! unpublish or abort, and the teardown after it.

use super::*;

impl Machine<'_> {
    /// Mode Publish: the backup serves until its TTL ends; a change to Recover goes on to sync.
    pub(super) fn published(&mut self) {
        if self.check_parts(&[Part::Mount, Part::Published]) {
            return;
        }
        if self.policy.mode == RecoveryMode::Recover {
            if !Part::Published.is_ready(self.observed) {
                // A replay paused at its target is resumed first, which promotes it.
                self.keep(Phase::Published);
                self.set_reason(
                    Reason::ModeChanged,
                    "mode Recover: the published instance ends its recovery at the target \
                     before the copy starts",
                );
                self.d.requeue_after = Some(STEP_POLL);
                return;
            }
            self.status().expires_at = None;
            self.enter(
                Phase::Syncing,
                Reason::ModeChanged,
                "mode Recover: copying the published backup to production storage",
            );
            return;
        }
        let expires_at = self.policy.publish_ttl.and_then(|ttl| {
            let published_at = self.d.status.timings.published_at.unwrap_or(self.now);
            published_at.checked_add(ttl).ok()
        });
        self.status().expires_at = expires_at;
        if let Some(at) = expires_at.filter(|at| *at <= self.now) {
            self.status().expires_at = None;
            let message = format!("the publish expired at {at}; tearing it down");
            self.enter(Phase::Unpublished, Reason::PublishExpired, &message);
            return;
        }
        self.keep(Phase::Published);
        let message = match expires_at {
            Some(at) => {
                let until = self.now.duration_until(at).unsigned_abs();
                self.d.requeue_after = Some(until.min(PUBLISHED_POLL));
                format!("the backup serves from the mount until {at}")
            }
            None => "the backup serves from the mount until it is unpublished".to_owned(),
        };
        self.set_reason(Reason::PublishReady, &message);
    }

    /// Takes up a request to end the recovery; returns true when it did. After the switchover
    /// began the target may be the primary: nothing is torn down then.
    pub(super) fn end(&mut self) -> bool {
        let Some(request) = self.observed.end else {
            return false;
        };
        let status = &self.d.status;
        if status.ended() {
            return false;
        }
        if status.switchover_began() {
            self.d.events.push(Event {
                kind: EventKind::Warning,
                reason: Reason::AbortRefused,
                message: format!(
                    "refused to tear down in phase {}: the switchover began, the target may be the \
                     primary",
                    status.phase
                ),
            });
            return false;
        }
        let (phase, reason, message) = match request {
            EndRequest::Unpublish => (
                Phase::Unpublished,
                Reason::Unpublished,
                "unpublished on request; tearing down",
            ),
            EndRequest::Abort => (
                Phase::Aborted,
                Reason::Aborted,
                "aborted on request; tearing down",
            ),
        };
        let status = self.status();
        status.expires_at = None;
        status.retry.next_attempt_at = None;
        self.enter(phase, reason, message);
        true
    }

    /// Unpublished or Aborted: tear down until nothing is left.
    pub(super) fn ended(&mut self) {
        let phase = self.d.status.phase;
        match &self.observed.teardown {
            Step::Ready(()) => {
                if self.d.status.timings.ended_at.is_none() {
                    self.status().timings.ended_at = Some(self.now);
                    let reason = match phase {
                        Phase::Aborted => Reason::Aborted,
                        _ => Reason::Unpublished,
                    };
                    self.set_reason(reason, "torn down: no process, mount or IRCache is left");
                }
                self.d.actions.clear();
                self.d.requeue_after = None;
            }
            Step::Failed(f) => {
                let message = format!("tearing down failed, will retry: {}", f.message);
                self.keep(phase);
                self.d.requeue_after = Some(self.policy.retry.interval.0);
                self.set_reason(Reason::TeardownFailed, &message);
            }
            Step::Unknown | Step::InProgress => self.keep(phase),
        }
    }
}
