//! Retries: transient failures waited out up to the limit, permanent ones, manual retries.

use super::*;

/// Fails the mount again and again under `policy`: `limit` retries `interval` apart, then
/// Failed on the failure after the last retry.
fn retries_then_fails(policy: &Policy, limit: u32, interval: Duration) {
    let failing = Observed {
        mount: Step::Failed(transient()),
        ..Default::default()
    };
    let retrying = Observed::default();
    let mut status = status_in(Phase::Mounting);
    let mut now = t(0);
    for attempt in 1..=limit {
        let d = reconcile(policy, &status, &failing, now);
        assert_eq!(d.status.phase, Phase::Waiting);
        assert_eq!(d.status.retry.attempt, attempt);
        assert_eq!(d.status.retry.next_attempt_at, Some(now + interval));
        assert_eq!(d.requeue_after, Some(interval));
        assert!(d.actions.is_empty(), "waiting keeps what it has");
        assert!(
            d.status
                .message
                .as_deref()
                .unwrap()
                .contains(&format!("retry {attempt} of {limit}"))
        );
        assert_eq!(
            d.status.condition(ConditionType::Mounted).unwrap().status,
            ConditionStatus::False
        );

        // Too early: still waiting, asks to be woken at the attempt time.
        let early = reconcile(policy, &d.status, &failing, now + Duration::from_secs(10));
        assert_eq!(early.status.phase, Phase::Waiting);
        assert_eq!(
            early.requeue_after,
            Some(interval - Duration::from_secs(10))
        );

        // Due: resumes the interrupted phase and acts, ignoring the failure seen before.
        now += interval;
        let resumed = reconcile(policy, &d.status, &failing, now);
        assert_eq!(resumed.status.phase, Phase::Mounting);
        assert_eq!(resumed.status.reason.as_deref(), Some("Retrying"));
        assert_eq!(resumed.actions, MOUNT);
        status = reconcile(policy, &resumed.status, &retrying, now).status;
        assert_eq!(status.phase, Phase::Mounting);
    }
    let d = reconcile(policy, &status, &failing, now);
    assert_eq!(d.status.phase, Phase::Failed);
    assert_eq!(d.status.reason.as_deref(), Some("RetriesExhausted"));
    assert_eq!(d.status.resume_phase, Some(Phase::Mounting));
    assert_eq!(d.status.retry.attempt, limit);
    assert_eq!(
        d.status.retry.last_error.as_deref(),
        Some("RepositoryUnavailable: s3://b/p: connection refused")
    );
    assert!(
        d.status
            .message
            .as_deref()
            .unwrap()
            .contains("connection refused")
    );
    assert_eq!(d.requeue_after, None);
}

#[test]
fn transient_failures_wait_then_fail_after_the_limit() {
    let policy = Policy {
        retry: RetryPolicy {
            limit: 3,
            interval: GoDuration(Duration::from_secs(30)),
        },
        ..Default::default()
    };
    retries_then_fails(&policy, 3, Duration::from_secs(30));
}

#[test]
fn by_default_ten_retries_five_minutes_apart() {
    retries_then_fails(&Policy::default(), 10, Duration::from_secs(300));
}

#[test]
fn a_permanent_failure_is_the_last_error() {
    let d = reconcile(
        &Policy::default(),
        &status_in(Phase::Validating),
        &Observed {
            validation: Step::Failed(permanent()),
            ..Default::default()
        },
        t(5),
    );
    assert_eq!(d.status.phase, Phase::Failed);
    assert_eq!(d.status.retry.attempt, 0);
    assert_eq!(
        d.status.retry.last_error.as_deref(),
        Some("BackupNotFound: backup x is not in the repository")
    );
}

#[test]
fn progress_resets_the_retry_count() {
    let mut status = status_in(Phase::Mounting);
    status.retry.attempt = 4;
    let observed = Observed {
        mount: Step::Ready(()),
        ..Default::default()
    };
    let d = reconcile(&Policy::default(), &status, &observed, t(1));
    assert_eq!(d.status.phase, Phase::Publishing);
    assert_eq!(d.status.retry.attempt, 0);
}

#[test]
fn manual_retry_starts_a_new_round_where_it_stopped() {
    let mut failed = status_in(Phase::Failed);
    failed.resume_phase = Some(Phase::Syncing);
    failed.retry.attempt = 10;
    failed.reason = Some("RetriesExhausted".into());
    let request = Observed {
        manual_retry: Some("2026-11-25T10:00:00Z".into()),
        // A stale failure must not count against the new round.
        standby: Standby::Failed(transient()),
        ..Default::default()
    };
    let d = reconcile(&Policy::default(), &failed, &request, t(100));
    assert_eq!(d.status.phase, Phase::Syncing);
    assert_eq!(d.status.retry.attempt, 0);
    assert_eq!(d.status.reason.as_deref(), Some("ManualRetry"));
    assert_eq!(d.actions, SYNC);
    assert_eq!(d.events.len(), 1);

    // The same request again is not a new retry.
    let mut failed_again = d.status.clone();
    failed_again.phase = Phase::Failed;
    let again = reconcile(&Policy::default(), &failed_again, &request, t(200));
    assert_eq!(again.status.phase, Phase::Failed);

    // From Waiting, a manual retry does not wait for the next attempt time.
    let mut waiting = status_in(Phase::Waiting);
    waiting.resume_phase = Some(Phase::Mounting);
    waiting.retry.attempt = 2;
    waiting.retry.next_attempt_at = Some(t(10_000));
    let d = reconcile(&Policy::default(), &waiting, &request, t(100));
    assert_eq!(
        (d.status.phase, d.status.retry.attempt),
        (Phase::Mounting, 0)
    );
    assert_eq!(d.status.retry.next_attempt_at, None);
}

#[test]
fn a_manual_retry_sent_while_running_waits_until_the_recovery_stops() {
    let mut running = status_in(Phase::Syncing);
    running.retry.attempt = 3;
    let copying = Observed {
        standby: Standby::Copying {
            copied_bytes: 10,
            total_bytes: 100,
        },
        manual_retry: Some("r1".into()),
        ..streaming(0)
    };
    let d = reconcile(&Policy::default(), &running, &copying, t(10));
    assert_eq!(d.status.phase, Phase::Syncing);
    assert_eq!(
        d.status.retry.attempt, 3,
        "the running round keeps its count"
    );
    assert_eq!(d.status.retry.last_manual_request, None);
    assert!(d.events.is_empty(), "{:?}", d.events);

    // The round goes on and counts its next failure...
    let failing = Observed {
        standby: Standby::Failed(transient()),
        ..copying.clone()
    };
    let waiting = reconcile(&Policy::default(), &d.status, &failing, t(20)).status;
    assert_eq!((waiting.phase, waiting.retry.attempt), (Phase::Waiting, 4));

    // ...and the pending request then starts a new round at once, only once.
    let d = reconcile(&Policy::default(), &waiting, &failing, t(21));
    assert_eq!(d.status.phase, Phase::Syncing);
    assert_eq!(d.status.reason.as_deref(), Some("ManualRetry"));
    assert_eq!(d.status.retry.attempt, 0);
    assert_eq!(d.status.retry.last_manual_request.as_deref(), Some("r1"));
    let mut waiting_again = d.status;
    waiting_again.phase = Phase::Waiting;
    waiting_again.retry.next_attempt_at = Some(t(1000));
    let d = reconcile(&Policy::default(), &waiting_again, &failing, t(22));
    assert_eq!(d.status.phase, Phase::Waiting);
}
