use super::*;
use ir_api::GoDuration;
use ir_api::Reason;

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).unwrap()
}

fn info() -> BackupInfo {
    BackupInfo {
        id: "20260101T000000Z".into(),
        pg_major: 15,
        size_bytes: 1 << 30,
    }
}

fn status_in(phase: Phase) -> RecoveryStatus {
    let mut status = RecoveryStatus {
        phase,
        ..Default::default()
    };
    status.timings.started_at = Some(t(0));
    status
}

fn transient() -> Failure {
    Failure::new(
        Reason::RepositoryUnavailable,
        "s3://b/p: connection refused",
    )
}

fn permanent() -> Failure {
    Failure::new(Reason::BackupNotFound, "backup x is not in the repository")
}

fn streaming(lag_bytes: u64) -> Observed {
    Observed {
        mount: Step::Ready(()),
        published: Step::Ready(t(1)),
        standby: Standby::Streaming { lag_bytes },
        ..Default::default()
    }
}

fn policy_with(mode: SwitchoverMode) -> Policy {
    Policy {
        switchover: SwitchoverPolicy {
            mode,
            ..Default::default()
        },
        ..Default::default()
    }
}

// What each phase ensures, written out here so that a wrong table in the code fails the tests.
const VALIDATE: &[Action] = &[Action::Validate];
const MOUNT: &[Action] = &[Action::EnsureMount];
const PUBLISH: &[Action] = &[Action::EnsureMount, Action::EnsurePublished];
const SYNC: &[Action] = &[
    Action::EnsureMount,
    Action::EnsurePublished,
    Action::EnsureStandby,
];
const SWITCH: &[Action] = &[Action::Switchover];
const CLEANUP: &[Action] = &[Action::Cleanup];
const NOTHING: &[Action] = &[];

struct Case {
    name: &'static str,
    policy: Policy,
    phase: Phase,
    setup: fn(&mut RecoveryStatus),
    observed: Observed,
    phase_after: Phase,
    actions: &'static [Action],
    reason: &'static str,
    resume: Option<Phase>,
}

fn case(
    name: &'static str,
    phase: Phase,
    observed: Observed,
    phase_after: Phase,
    actions: &'static [Action],
) -> Case {
    Case {
        name,
        policy: Policy::default(),
        phase,
        setup: |_| {},
        observed,
        phase_after,
        actions,
        reason: "",
        resume: None,
    }
}

impl Case {
    fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Changes the status the case starts from.
    fn setup(mut self, setup: fn(&mut RecoveryStatus)) -> Self {
        self.setup = setup;
        self
    }

    fn reason(mut self, reason: &'static str) -> Self {
        self.reason = reason;
        self
    }

    /// The phase a Waiting or Failed status resumes.
    fn resume(mut self, phase: Phase) -> Self {
        self.resume = Some(phase);
        self
    }
}

#[test]
fn transitions() {
    use Phase::*;
    let mounted = || Observed {
        mount: Step::Ready(()),
        ..Default::default()
    };
    let published = || Observed {
        published: Step::Ready(t(1)),
        ..mounted()
    };
    let approved = || {
        let mut p = policy_with(SwitchoverMode::Manual);
        p.switchover.approved = true;
        p
    };
    let scheduled = |at: Option<Timestamp>| {
        let mut p = policy_with(SwitchoverMode::Scheduled);
        p.switchover.at = at;
        p
    };
    let tolerant = |mut p: Policy| {
        p.switchover.max_lag_bytes = 1000;
        p
    };
    let no_retries = || Policy {
        retry: RetryPolicy {
            limit: 0,
            ..Default::default()
        },
        ..Default::default()
    };
    let cases = [
        case("start", Pending, Observed::default(), Validating, VALIDATE).reason("Started"),
        case(
            "validation running",
            Validating,
            Observed::default(),
            Validating,
            VALIDATE,
        ),
        case(
            "validation passed",
            Validating,
            Observed {
                validation: Step::Ready(info()),
                ..Default::default()
            },
            Mounting,
            MOUNT,
        )
        .reason("BackupValid"),
        case(
            "validation refused",
            Validating,
            Observed {
                validation: Step::Failed(permanent()),
                ..Default::default()
            },
            Failed,
            NOTHING,
        )
        .reason("BackupNotFound")
        .resume(Validating),
        case(
            "repository down while validating",
            Validating,
            Observed {
                validation: Step::Failed(transient()),
                ..Default::default()
            },
            Waiting,
            NOTHING,
        )
        .reason("RepositoryUnavailable")
        .resume(Validating),
        case(
            "scheduled without a time is refused before anything is built",
            Validating,
            Observed::default(),
            Failed,
            NOTHING,
        )
        .policy(scheduled(None))
        .reason("SwitchoverTimeMissing")
        .resume(Validating),
        case(
            "mount in progress",
            Mounting,
            Observed {
                mount: Step::InProgress,
                ..Default::default()
            },
            Mounting,
            MOUNT,
        ),
        case("mounted", Mounting, mounted(), Publishing, PUBLISH).reason("Mounted"),
        case(
            "repository down while mounting",
            Mounting,
            Observed {
                mount: Step::Failed(transient()),
                ..Default::default()
            },
            Waiting,
            NOTHING,
        )
        .resume(Mounting),
        case(
            "no retries allowed",
            Mounting,
            Observed {
                mount: Step::Failed(transient()),
                ..Default::default()
            },
            Failed,
            NOTHING,
        )
        .policy(no_retries())
        .reason("RetriesExhausted")
        .resume(Mounting),
        case(
            "backup gone while mounting",
            Mounting,
            Observed {
                mount: Step::Failed(permanent()),
                ..Default::default()
            },
            Failed,
            NOTHING,
        )
        .reason("BackupNotFound")
        .resume(Mounting),
        case(
            "mount lost while publishing",
            Publishing,
            Observed {
                mount: Step::Failed(transient()),
                published: Step::Ready(t(1)),
                ..Default::default()
            },
            Waiting,
            NOTHING,
        )
        .resume(Publishing),
        case("publishing", Publishing, mounted(), Publishing, PUBLISH),
        case("published", Publishing, published(), Syncing, SYNC).reason("Published"),
        case(
            "publish refused",
            Publishing,
            Observed {
                published: Step::Failed(Failure::new(Reason::StartFailed, "bad setting")),
                ..mounted()
            },
            Failed,
            NOTHING,
        )
        .resume(Publishing),
        case("no standby yet", Syncing, published(), Syncing, SYNC),
        case(
            "copying",
            Syncing,
            Observed {
                standby: Standby::Copying {
                    copied_bytes: 10,
                    total_bytes: 100,
                },
                ..published()
            },
            Syncing,
            SYNC,
        ),
        case(
            "standby streams",
            Syncing,
            streaming(4096),
            ReadyForSwitchover,
            SYNC,
        )
        .reason("CatchingUp"),
        case(
            "standby streams, caught up",
            Syncing,
            streaming(0),
            SwitchingOver,
            SWITCH,
        )
        .reason("SwitchoverStarted"),
        case(
            "base backup failed",
            Syncing,
            Observed {
                standby: Standby::Failed(Failure::new(Reason::BaseBackupFailed, "x")),
                ..published()
            },
            Waiting,
            NOTHING,
        )
        .resume(Syncing),
        case(
            "replication refused",
            Syncing,
            Observed {
                standby: Standby::Failed(Failure::new(Reason::ReplicationRoleMissing, "x")),
                ..published()
            },
            Failed,
            NOTHING,
        )
        .reason("ReplicationRoleMissing")
        .resume(Syncing),
        case(
            "published instance died while syncing",
            Syncing,
            Observed {
                published: Step::Failed(Failure::new(Reason::PublishedInstanceExited, "x")),
                ..mounted()
            },
            Waiting,
            NOTHING,
        )
        .resume(Syncing),
        case(
            "automatic, caught up",
            ReadyForSwitchover,
            streaming(0),
            SwitchingOver,
            SWITCH,
        )
        .reason("SwitchoverStarted"),
        case(
            "automatic, lagging",
            ReadyForSwitchover,
            streaming(100),
            ReadyForSwitchover,
            SYNC,
        )
        .reason("CatchingUp"),
        case(
            "automatic, within max lag",
            ReadyForSwitchover,
            streaming(100),
            SwitchingOver,
            SWITCH,
        )
        .policy(tolerant(policy_with(SwitchoverMode::Automatic))),
        case(
            "automatic, standby copied again",
            ReadyForSwitchover,
            Observed {
                standby: Standby::Copying {
                    copied_bytes: 10,
                    total_bytes: 100,
                },
                ..published()
            },
            Syncing,
            SYNC,
        )
        .reason("StandbyNotStreaming"),
        case(
            "manual, not approved",
            ReadyForSwitchover,
            streaming(0),
            ReadyForSwitchover,
            SYNC,
        )
        .policy(policy_with(SwitchoverMode::Manual))
        .reason("AwaitingApproval"),
        case(
            "manual, approved while far behind",
            ReadyForSwitchover,
            streaming(APPROVED_MAX_LAG_BYTES + 1),
            ReadyForSwitchover,
            SYNC,
        )
        .policy(approved())
        .reason("CatchingUp"),
        case(
            "manual, approved and caught up",
            ReadyForSwitchover,
            streaming(0),
            SwitchingOver,
            SWITCH,
        )
        .policy(approved())
        .reason("SwitchoverStarted"),
        case(
            "manual, approved, close behind",
            ReadyForSwitchover,
            streaming(APPROVED_MAX_LAG_BYTES),
            SwitchingOver,
            SWITCH,
        )
        .policy(approved()),
        case(
            "manual, approved, standby reconnecting",
            ReadyForSwitchover,
            Observed {
                standby: Standby::Connecting,
                ..published()
            },
            ReadyForSwitchover,
            SYNC,
        )
        .policy(approved())
        .reason("StandbyNotStreaming"),
        case(
            "automatic, standby reconnecting",
            ReadyForSwitchover,
            Observed {
                standby: Standby::Connecting,
                ..published()
            },
            ReadyForSwitchover,
            SYNC,
        )
        .reason("StandbyNotStreaming"),
        case(
            "manual, approved, standby not looked at",
            ReadyForSwitchover,
            published(),
            ReadyForSwitchover,
            SYNC,
        )
        .policy(approved()),
        case(
            "standby copied, not streaming yet",
            Syncing,
            Observed {
                standby: Standby::Connecting,
                ..published()
            },
            Syncing,
            SYNC,
        ),
        case(
            "manual, approved, standby gone",
            ReadyForSwitchover,
            Observed {
                standby: Standby::Absent,
                ..published()
            },
            Syncing,
            SYNC,
        )
        .policy(approved())
        .reason("StandbyNotStreaming"),
        case(
            "scheduled, too early",
            ReadyForSwitchover,
            streaming(0),
            ReadyForSwitchover,
            SYNC,
        )
        .policy(scheduled(Some(t(3600))))
        .reason("AwaitingSchedule"),
        case(
            "scheduled, time reached",
            ReadyForSwitchover,
            streaming(0),
            SwitchingOver,
            SWITCH,
        )
        .policy(scheduled(Some(t(10)))),
        case(
            "scheduled, time reached but lagging",
            ReadyForSwitchover,
            streaming(500),
            ReadyForSwitchover,
            SYNC,
        )
        .policy(scheduled(Some(t(10))))
        .reason("CatchingUp"),
        case(
            "scheduled, time reached, standby copied again",
            ReadyForSwitchover,
            Observed {
                standby: Standby::Copying {
                    copied_bytes: 100,
                    total_bytes: 100,
                },
                ..published()
            },
            Syncing,
            SYNC,
        )
        .policy(scheduled(Some(t(10))))
        .reason("StandbyNotStreaming"),
        case(
            "scheduled without a time",
            ReadyForSwitchover,
            streaming(0),
            Failed,
            NOTHING,
        )
        .policy(scheduled(None))
        .reason("SwitchoverTimeMissing")
        .resume(ReadyForSwitchover),
        case(
            "standby lost before switchover",
            ReadyForSwitchover,
            Observed {
                standby: Standby::Failed(Failure::new(Reason::PostgresUnavailable, "x")),
                ..published()
            },
            Waiting,
            NOTHING,
        )
        .resume(ReadyForSwitchover),
        case(
            "mount lost before switchover",
            ReadyForSwitchover,
            Observed {
                mount: Step::Failed(Failure::new(Reason::MountLost, "x")),
                ..streaming(0)
            },
            Waiting,
            NOTHING,
        )
        .reason("MountLost")
        .resume(ReadyForSwitchover),
        case(
            "published instance died before switchover",
            ReadyForSwitchover,
            Observed {
                published: Step::Failed(Failure::new(Reason::PublishedInstanceExited, "x")),
                ..streaming(0)
            },
            Waiting,
            NOTHING,
        )
        .reason("PublishedInstanceExited")
        .resume(ReadyForSwitchover),
        case(
            "switching over",
            SwitchingOver,
            Observed {
                switchover: Step::InProgress,
                ..streaming(0)
            },
            SwitchingOver,
            SWITCH,
        ),
        case(
            "promoted",
            SwitchingOver,
            Observed {
                switchover: Step::Ready(SwitchoverReport {
                    downtime: Duration::from_millis(800),
                }),
                ..streaming(0)
            },
            Completed,
            CLEANUP,
        )
        .reason("Promoted"),
        case(
            "switchover timed out",
            SwitchingOver,
            Observed {
                switchover: Step::Failed(Failure::new(Reason::SwitchoverFailed, "x")),
                ..streaming(0)
            },
            Waiting,
            NOTHING,
        )
        .resume(ReadyForSwitchover),
        case(
            "switchover refused",
            SwitchingOver,
            Observed {
                switchover: Step::Failed(Failure::new(Reason::AuthenticationFailed, "x")),
                ..streaming(0)
            },
            Failed,
            NOTHING,
        )
        .reason("AuthenticationFailed")
        .resume(ReadyForSwitchover),
        case(
            "switchover failed once the standby may have been promoted",
            SwitchingOver,
            Observed {
                switchover: Step::Failed(Failure::new(Reason::PromotionUnconfirmed, "x")),
                ..streaming(0)
            },
            Waiting,
            NOTHING,
        )
        .resume(SwitchingOver),
        case(
            "cleaning up",
            Completed,
            Observed::default(),
            Completed,
            CLEANUP,
        ),
        case(
            "cleaned up",
            Completed,
            Observed {
                cleanup: Step::Ready(()),
                ..Default::default()
            },
            Completed,
            NOTHING,
        )
        .reason("Completed"),
        case(
            "cleanup failed",
            Completed,
            Observed {
                cleanup: Step::Failed(Failure::new(Reason::CleanupFailed, "busy")),
                ..Default::default()
            },
            Completed,
            CLEANUP,
        )
        .reason("CleanupFailed"),
        case(
            "waiting, not due yet",
            Waiting,
            Observed::default(),
            Waiting,
            NOTHING,
        )
        .setup(|s| {
            s.resume_phase = Some(Phase::Mounting);
            s.retry.attempt = 1;
            s.retry.next_attempt_at = Some(t(3600));
        })
        .resume(Mounting),
        case(
            "waiting, due after a switchover failure",
            Waiting,
            streaming(0),
            ReadyForSwitchover,
            SYNC,
        )
        .setup(|s| {
            s.resume_phase = Some(Phase::ReadyForSwitchover);
            s.retry.attempt = 1;
            s.retry.next_attempt_at = Some(t(30));
        })
        .reason("Retrying"),
        case(
            "waiting without an attempt time",
            Waiting,
            Observed::default(),
            Mounting,
            MOUNT,
        )
        .setup(|s| {
            s.resume_phase = Some(Phase::Mounting);
            s.retry.attempt = 1;
        })
        .reason("Retrying"),
        case(
            "waiting without a phase to resume",
            Waiting,
            Observed::default(),
            Validating,
            VALIDATE,
        )
        .reason("Retrying"),
        case("failed stays failed", Failed, streaming(0), Failed, NOTHING),
    ];
    for c in cases {
        let mut status = status_in(c.phase);
        (c.setup)(&mut status);
        let d = reconcile(&c.policy, &status, &c.observed, t(60));
        assert_eq!(d.status.phase, c.phase_after, "{}: phase", c.name);
        assert_eq!(d.actions, c.actions, "{}: actions", c.name);
        if !c.reason.is_empty() {
            assert_eq!(
                d.status.reason.as_deref(),
                Some(c.reason),
                "{}: reason",
                c.name
            );
        }
        let moved = c.phase != c.phase_after;
        assert_eq!(
            !d.events.is_empty(),
            moved,
            "{}: an event exactly on transitions",
            c.name
        );
        let at_rest =
            c.phase_after == Failed || (c.phase_after == Completed && d.actions.is_empty());
        let expect_requeue = !at_rest;
        assert_eq!(
            d.requeue_after.is_some(),
            expect_requeue,
            "{}: requeue",
            c.name
        );
        // kstatus: in progress until at rest, then Stalled on failure and nothing on success.
        let summary = |type_| {
            d.status
                .condition(type_)
                .map(|c| (c.status, c.reason.clone()))
        };
        let reason = (d.status.reason.clone()).unwrap_or_else(|| d.status.phase.to_string());
        let true_with_reason = Some((ConditionStatus::True, reason));
        let (reconciling, stalled) = match c.phase_after {
            Failed => (None, true_with_reason),
            _ if at_rest => (None, None),
            _ => (true_with_reason, None),
        };
        assert_eq!(
            summary(ConditionType::Reconciling),
            reconciling,
            "{}: Reconciling",
            c.name
        );
        assert_eq!(
            summary(ConditionType::Stalled),
            stalled,
            "{}: Stalled",
            c.name
        );
        assert_eq!(d.status.resume_phase, c.resume, "{}: resume phase", c.name);
        if moved && matches!(c.phase_after, Waiting | Failed) {
            // The milestone that failed carries the failure, and so does the retry status.
            let failed = (d.status.conditions.iter())
                .find(|cond| {
                    cond.type_ != ConditionType::Ready && cond.status == ConditionStatus::False
                })
                .unwrap_or_else(|| panic!("{}: no failed condition", c.name));
            let last_error = d.status.retry.last_error.as_deref().unwrap_or_default();
            assert!(
                last_error.starts_with(&format!("{}: ", failed.reason)),
                "{}: last error {last_error:?}",
                c.name
            );
        }
    }
}

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
fn a_standby_that_stops_streaming_is_synced_again() {
    let mut ready = status_in(Phase::ReadyForSwitchover);
    ready.backup = Some(info());
    let d = reconcile(&Policy::default(), &ready, &streaming(42), t(10));
    assert_eq!(d.status.phase, Phase::ReadyForSwitchover);
    let mut ready = d.status;
    ready.set_condition(
        ConditionType::Synced,
        ConditionStatus::True,
        "StandbyStreaming",
        "",
        t(1),
    );
    assert_eq!(
        (ready.progress.percent_copied, ready.progress.lag_bytes),
        (Some(100), Some(42))
    );

    let copied_again = Observed {
        standby: Standby::Copying {
            copied_bytes: 100,
            total_bytes: 1000,
        },
        ..streaming(0)
    };
    let gone = Observed {
        standby: Standby::Absent,
        ..streaming(0)
    };
    for (observed, copied_bytes, percent) in [(copied_again, 100, 10), (gone, 0, 0)] {
        let d = reconcile(&Policy::default(), &ready, &observed, t(20));
        assert_eq!(d.status.phase, Phase::Syncing, "{observed:?}");
        assert_eq!(d.status.reason.as_deref(), Some("StandbyNotStreaming"));
        let synced = d.status.condition(ConditionType::Synced).unwrap();
        assert_eq!(
            (synced.status, synced.reason.as_str()),
            (ConditionStatus::False, "StandbyNotStreaming")
        );
        let progress = &d.status.progress;
        assert_eq!(progress.copied_bytes, copied_bytes, "{observed:?}");
        assert_eq!(progress.percent_copied, Some(percent), "{observed:?}");
        assert_eq!(progress.lag_bytes, None, "{observed:?}");
        assert_eq!(progress.rate_bytes_per_second, None, "{observed:?}");
    }
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

#[test]
fn sync_progress_and_rate() {
    let copying = |copied_bytes| Observed {
        standby: Standby::Copying {
            copied_bytes,
            total_bytes: 1000,
        },
        ..streaming(0)
    };
    let d = reconcile(
        &Policy::default(),
        &status_in(Phase::Syncing),
        &copying(100),
        t(10),
    );
    assert_eq!(d.status.progress.copied_bytes, 100);
    assert_eq!(d.status.progress.percent(), Some(10.0));
    assert_eq!(d.status.progress.rate_bytes_per_second, None);
    let d = reconcile(&Policy::default(), &d.status, &copying(500), t(12));
    assert_eq!(d.status.progress.rate_bytes_per_second, Some(200));
    // The copy started over: no rate until there are two figures of the new one.
    let restarted = reconcile(&Policy::default(), &d.status, &copying(100), t(14));
    assert_eq!(restarted.status.progress.copied_bytes, 100);
    assert_eq!(restarted.status.progress.rate_bytes_per_second, None);
    let d = reconcile(&Policy::default(), &restarted.status, &copying(500), t(16));
    assert_eq!(d.status.progress.rate_bytes_per_second, Some(200));
    let d = reconcile(&Policy::default(), &d.status, &streaming(42), t(18));
    assert_eq!(d.status.phase, Phase::ReadyForSwitchover);
    assert_eq!(d.status.progress.lag_bytes, Some(42));
    assert_eq!(d.status.progress.copied_bytes, 1000);
    assert_eq!(d.status.timings.synced_at, Some(t(18)));
}

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

#[test]
fn a_round_stops_after_a_mount_or_a_published_instance_that_is_not_ready() {
    let pending = Observed::default();
    assert!(!pending.round_continues_after(Action::EnsureMount));
    assert!(!pending.round_continues_after(Action::EnsurePublished));
    for action in [
        Action::Validate,
        Action::EnsureStandby,
        Action::Switchover,
        Action::Cleanup,
    ] {
        assert!(pending.round_continues_after(action), "{action:?}");
    }
    let ready = Observed {
        mount: Step::Ready(()),
        published: Step::Ready(Timestamp::UNIX_EPOCH),
        ..Observed::default()
    };
    assert!(ready.round_continues_after(Action::EnsureMount));
    assert!(ready.round_continues_after(Action::EnsurePublished));
}
