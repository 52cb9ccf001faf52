//! Switchover: approved, scheduled, and retried after a failure.

use super::*;

#[test]
fn an_approved_switchover_that_failed_runs_again_under_the_same_approval() {
    let mut policy = policy_with(SwitchoverMode::Manual);
    policy.switchover.approved = true;
    let failed = Observed {
        switchover: Step::Failed(Failure::new(Reason::SwitchoverFailed, "catch-up timed out")),
        ..streaming(0)
    };
    let d = reconcile(&policy, &status_in(Phase::SwitchingOver), &failed, t(60));
    assert_eq!(d.status.phase, Phase::Waiting);
    assert_eq!(d.status.resume_phase, Some(Phase::ReadyForSwitchover));
    let next = d.status.retry.next_attempt_at.expect("a retry is planned");
    let retry = reconcile(&policy, &d.status, &failed, next);
    assert_eq!(retry.status.phase, Phase::ReadyForSwitchover);
    assert_eq!(retry.actions, SYNC);
    let again = reconcile(&policy, &retry.status, &streaming(0), next);
    assert_eq!(again.status.phase, Phase::SwitchingOver);
    assert_eq!(again.actions, SWITCH);
}

#[test]
fn a_switchover_that_may_have_promoted_is_retried_without_publishing_again() {
    let policy = policy_with(SwitchoverMode::Manual);
    let failed = Observed {
        switchover: Step::Failed(Failure::new(Reason::PromotionUnconfirmed, "pg_promote")),
        ..Default::default()
    };
    let d = reconcile(&policy, &status_in(Phase::SwitchingOver), &failed, t(60));
    assert_eq!(d.status.phase, Phase::Waiting);
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    let next = d.status.retry.next_attempt_at.expect("a retry is planned");

    // The retry resumes the switchover itself: no EnsurePublished, no new approval needed.
    let retry = reconcile(&policy, &d.status, &Observed::default(), next);
    assert_eq!(retry.status.phase, Phase::SwitchingOver);
    assert_eq!(retry.actions, [Action::Switchover]);
}

#[test]
fn scheduled_switchover_wakes_up_at_its_time() {
    let mut policy = policy_with(SwitchoverMode::Scheduled);
    policy.switchover.at = Some(t(61));
    let d = reconcile(
        &policy,
        &status_in(Phase::ReadyForSwitchover),
        &streaming(0),
        t(60),
    );
    assert_eq!(d.status.phase, Phase::ReadyForSwitchover);
    assert_eq!(d.requeue_after, Some(Duration::from_secs(1)));
    let d = reconcile(&policy, &d.status, &streaming(0), t(61));
    assert_eq!(d.status.phase, Phase::SwitchingOver);
    assert_eq!(d.status.timings.switchover_started_at, Some(t(61)));
}
