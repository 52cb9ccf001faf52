//! Moving between phases: what each phase keeps ensuring, and entering or staying in one.

use super::*;

/// What a phase keeps ensuring while it runs (or when a retry resumes it).
fn ensure_actions(phase: Phase) -> &'static [Action] {
    use Action::*;
    match phase {
        Phase::Pending | Phase::Validating => &[Validate],
        Phase::Mounting => &[EnsureMount],
        Phase::Publishing => &[EnsureMount, EnsurePublished],
        Phase::Syncing | Phase::ReadyForSwitchover => {
            &[EnsureMount, EnsurePublished, EnsureStandby]
        }
        Phase::SwitchingOver => &[Switchover],
        Phase::Completed => &[Cleanup],
        Phase::Published => &[EnsureMount, EnsurePublished],
        Phase::Unpublished | Phase::Aborted => &[Teardown],
        Phase::Waiting | Phase::Failed => &[],
    }
}

impl Machine<'_> {
    /// Moves to `phase`, asks for what it ensures, and tells about it.
    pub(super) fn enter(&mut self, phase: Phase, reason: Reason, message: &str) {
        let from = self.d.status.phase;
        let status = self.status();
        status.phase = phase;
        status.reason = Some(reason.to_string());
        status.message = Some(message.to_owned());
        if !matches!(phase, Phase::Waiting | Phase::Failed) {
            status.resume_phase = None;
        }
        self.d.events.push(Event {
            kind: if matches!(phase, Phase::Waiting | Phase::Failed) {
                EventKind::Warning
            } else {
                EventKind::Normal
            },
            reason,
            message: format!("{from} -> {phase}: {message}"),
        });
        self.keep(phase);
    }

    /// Stays in (or has entered) `phase`: ensure its parts and look again soon.
    pub(super) fn keep(&mut self, phase: Phase) {
        self.d.actions = ensure_actions(phase).to_vec();
        self.d.requeue_after = Some(match phase {
            Phase::Syncing | Phase::ReadyForSwitchover => PROGRESS_POLL,
            Phase::Published => PUBLISHED_POLL,
            _ => STEP_POLL,
        });
    }

    /// A step made progress: the next failure starts a fresh count.
    pub(super) fn advance(
        &mut self,
        phase: Phase,
        condition: ConditionType,
        reason: Reason,
        message: &str,
    ) {
        let now = self.now;
        let status = self.status();
        status.set_condition(condition, ConditionStatus::True, reason, message, now);
        status.retry.attempt = 0;
        status.retry.next_attempt_at = None;
        self.enter(phase, reason, message);
    }

    /// `part` is ready: its condition turns True and the recovery moves on to `next`.
    pub(super) fn part_done(&mut self, next: Phase, part: Part) {
        let (reason, message) = part.ready_reason();
        self.advance(next, part.condition(), reason, message);
    }
}
