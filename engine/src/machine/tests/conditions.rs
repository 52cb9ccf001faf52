//! Conditions: Ready, Reconciling and Stalled as kstatus reads them.

use super::*;

#[test]
fn ready_condition_follows_the_reason_until_completion() {
    let d = reconcile(
        &Policy::default(),
        &status_in(Phase::Mounting),
        &Observed {
            mount: Step::Failed(transient()),
            ..Default::default()
        },
        t(5),
    );
    let ready = d.status.condition(ConditionType::Ready).unwrap();
    assert_eq!(ready.status, ConditionStatus::False);
    assert_eq!(ready.reason, "RepositoryUnavailable");
}

#[test]
fn kstatus_sees_a_retry_as_progress_and_a_failure_as_stalled() {
    let policy = Policy {
        retry: RetryPolicy {
            limit: 1,
            interval: GoDuration(Duration::from_secs(30)),
        },
        ..Default::default()
    };
    let failing = Observed {
        mount: Step::Failed(transient()),
        ..Default::default()
    };
    let waiting = reconcile(&policy, &status_in(Phase::Mounting), &failing, t(5)).status;
    assert_eq!(waiting.phase, Phase::Waiting);
    let reconciling = waiting.condition(ConditionType::Reconciling).unwrap();
    assert_eq!(
        (reconciling.status, reconciling.reason.as_str()),
        (ConditionStatus::True, "RepositoryUnavailable")
    );
    assert_eq!(waiting.condition(ConditionType::Stalled), None);

    let mut status = waiting;
    for at in [t(40), t(41)] {
        status = reconcile(&policy, &status, &failing, at).status;
    }
    assert_eq!(status.phase, Phase::Failed);
    let stalled = status.condition(ConditionType::Stalled).unwrap();
    assert_eq!(
        (
            stalled.status,
            stalled.reason.as_str(),
            stalled.last_transition_time
        ),
        (ConditionStatus::True, "RetriesExhausted", t(41))
    );
    assert!(
        stalled.message.contains("connection refused"),
        "{stalled:?}"
    );
    assert_eq!(status.condition(ConditionType::Reconciling), None);

    let retried = reconcile(
        &policy,
        &status,
        &Observed {
            manual_retry: Some("1".into()),
            ..Default::default()
        },
        t(50),
    )
    .status;
    assert_eq!(retried.phase, Phase::Mounting);
    assert_eq!(retried.condition(ConditionType::Stalled), None);
    let reconciling = retried.condition(ConditionType::Reconciling).unwrap();
    assert_eq!(
        (
            reconciling.reason.as_str(),
            reconciling.last_transition_time
        ),
        ("ManualRetry", t(50))
    );
}
