use super::*;
use ir_api::GoDuration;

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
    Failure::transient("RepositoryUnavailable", "s3://b/p: connection refused")
}

fn permanent() -> Failure {
    Failure::permanent("BackupNotFound", "backup x is not in the repository")
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

struct Case {
    name: &'static str,
    policy: Policy,
    phase: Phase,
    observed: Observed,
    phase_after: Phase,
    actions: &'static [Action],
    reason: &'static str,
}

fn case(name: &'static str, phase: Phase, observed: Observed, phase_after: Phase) -> Case {
    Case {
        name,
        policy: Policy::default(),
        phase,
        observed,
        phase_after,
        actions: ensure_actions(phase_after),
        reason: "",
    }
}

impl Case {
    fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    fn actions(mut self, actions: &'static [Action]) -> Self {
        self.actions = actions;
        self
    }

    fn reason(mut self, reason: &'static str) -> Self {
        self.reason = reason;
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
    let tolerant = || {
        let mut p = Policy::default();
        p.switchover.max_lag_bytes = 1000;
        p
    };
    let cases = [
        case("start", Pending, Observed::default(), Validating).reason("Started"),
        case(
            "validation running",
            Validating,
            Observed::default(),
            Validating,
        ),
        case(
            "validation passed",
            Validating,
            Observed {
                validation: Step::Ready(info()),
                ..Default::default()
            },
            Mounting,
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
        )
        .reason("BackupNotFound"),
        case(
            "repository down while validating",
            Validating,
            Observed {
                validation: Step::Failed(transient()),
                ..Default::default()
            },
            Waiting,
        )
        .reason("RepositoryUnavailable"),
        case(
            "mount in progress",
            Mounting,
            Observed {
                mount: Step::InProgress,
                ..Default::default()
            },
            Mounting,
        ),
        case("mounted", Mounting, mounted(), Publishing).reason("Mounted"),
        case(
            "repository down while mounting",
            Mounting,
            Observed {
                mount: Step::Failed(transient()),
                ..Default::default()
            },
            Waiting,
        ),
        case(
            "mount lost while publishing",
            Publishing,
            Observed {
                mount: Step::Failed(transient()),
                published: Step::Ready(t(1)),
                ..Default::default()
            },
            Waiting,
        ),
        case("publishing", Publishing, mounted(), Publishing),
        case("published", Publishing, published(), Syncing).reason("Published"),
        case(
            "publish refused",
            Publishing,
            Observed {
                published: Step::Failed(Failure::permanent("PublishFailed", "bad setting")),
                ..mounted()
            },
            Failed,
        ),
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
        ),
        case(
            "standby streams",
            Syncing,
            streaming(4096),
            ReadyForSwitchover,
        )
        .reason("CatchingUp"),
        case(
            "standby streams, caught up",
            Syncing,
            streaming(0),
            SwitchingOver,
        )
        .reason("SwitchoverStarted"),
        case(
            "base backup failed",
            Syncing,
            Observed {
                standby: Standby::Failed(Failure::transient("BaseBackupFailed", "x")),
                ..published()
            },
            Waiting,
        ),
        case(
            "published instance died while syncing",
            Syncing,
            Observed {
                published: Step::Failed(Failure::transient("PublishedInstanceDown", "x")),
                ..mounted()
            },
            Waiting,
        ),
        case(
            "automatic, caught up",
            ReadyForSwitchover,
            streaming(0),
            SwitchingOver,
        )
        .reason("SwitchoverStarted"),
        case(
            "automatic, lagging",
            ReadyForSwitchover,
            streaming(100),
            ReadyForSwitchover,
        )
        .reason("CatchingUp"),
        case(
            "automatic, within max lag",
            ReadyForSwitchover,
            streaming(100),
            SwitchingOver,
        )
        .policy(tolerant()),
        case(
            "manual, not approved",
            ReadyForSwitchover,
            streaming(0),
            ReadyForSwitchover,
        )
        .policy(policy_with(SwitchoverMode::Manual))
        .reason("AwaitingApproval"),
        case(
            "manual, approved while lagging",
            ReadyForSwitchover,
            streaming(100),
            SwitchingOver,
        )
        .policy(approved()),
        case(
            "scheduled, too early",
            ReadyForSwitchover,
            streaming(0),
            ReadyForSwitchover,
        )
        .policy(scheduled(Some(t(3600))))
        .reason("AwaitingSchedule"),
        case(
            "scheduled, time reached",
            ReadyForSwitchover,
            streaming(0),
            SwitchingOver,
        )
        .policy(scheduled(Some(t(10)))),
        case(
            "scheduled, time reached but lagging",
            ReadyForSwitchover,
            streaming(500),
            ReadyForSwitchover,
        )
        .policy(scheduled(Some(t(10))))
        .reason("CatchingUp"),
        case(
            "scheduled without a time",
            ReadyForSwitchover,
            streaming(0),
            Failed,
        )
        .policy(scheduled(None))
        .reason("SwitchoverTimeMissing"),
        case(
            "standby lost before switchover",
            ReadyForSwitchover,
            Observed {
                standby: Standby::Failed(Failure::transient("StandbyDown", "x")),
                ..published()
            },
            Waiting,
        ),
        case(
            "switching over",
            SwitchingOver,
            Observed {
                switchover: Step::InProgress,
                ..streaming(0)
            },
            SwitchingOver,
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
        )
        .reason("Promoted"),
        case(
            "switchover timed out",
            SwitchingOver,
            Observed {
                switchover: Step::Failed(Failure::transient("SwitchoverTimeout", "x")),
                ..streaming(0)
            },
            Waiting,
        ),
        case(
            "switchover failed once the standby may have been promoted",
            SwitchingOver,
            Observed {
                switchover: Step::Failed(Failure::transient(PROMOTION_UNCONFIRMED, "x")),
                ..streaming(0)
            },
            Waiting,
        ),
        case("cleaning up", Completed, Observed::default(), Completed),
        case(
            "cleaned up",
            Completed,
            Observed {
                cleanup: Step::Ready(()),
                ..Default::default()
            },
            Completed,
        )
        .actions(&[])
        .reason("Completed"),
        case(
            "cleanup failed",
            Completed,
            Observed {
                cleanup: Step::Failed(Failure::transient("UnmountFailed", "busy")),
                ..Default::default()
            },
            Completed,
        )
        .reason("CleanupFailed"),
        case("failed stays failed", Failed, streaming(0), Failed),
    ];
    for c in cases {
        let d = reconcile(&c.policy, &status_in(c.phase), &c.observed, t(60));
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
        if c.phase_after == Waiting {
            assert_eq!(
                d.status.resume_phase,
                Some(match (c.phase, &c.observed.switchover) {
                    (SwitchingOver, Step::Failed(f)) if f.reason == PROMOTION_UNCONFIRMED => {
                        SwitchingOver
                    }
                    (SwitchingOver, _) => ReadyForSwitchover,
                    (p, _) => p,
                }),
                "{}: resume phase",
                c.name
            );
        }
    }
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
    let failing = Observed {
        mount: Step::Failed(transient()),
        ..Default::default()
    };
    let retrying = Observed::default();
    let mut status = status_in(Phase::Mounting);
    let mut now = t(0);
    for attempt in 1..=3 {
        let d = reconcile(&policy, &status, &failing, now);
        assert_eq!(d.status.phase, Phase::Waiting);
        assert_eq!(d.status.retry.attempt, attempt);
        assert_eq!(
            d.status.retry.next_attempt_at,
            Some(now + Duration::from_secs(30))
        );
        assert_eq!(d.requeue_after, Some(Duration::from_secs(30)));
        assert!(d.actions.is_empty(), "waiting keeps what it has");
        assert!(
            d.status
                .message
                .as_deref()
                .unwrap()
                .contains(&format!("retry {attempt} of 3"))
        );
        assert_eq!(
            d.status.condition(ConditionType::Mounted).unwrap().status,
            ConditionStatus::False
        );

        // Too early: still waiting, asks to be woken at the attempt time.
        let early = reconcile(&policy, &d.status, &failing, now + Duration::from_secs(10));
        assert_eq!(early.status.phase, Phase::Waiting);
        assert_eq!(early.requeue_after, Some(Duration::from_secs(20)));

        // Due: resumes the interrupted phase and acts, ignoring the failure seen before.
        now += Duration::from_secs(30);
        let resumed = reconcile(&policy, &d.status, &failing, now);
        assert_eq!(resumed.status.phase, Phase::Mounting);
        assert_eq!(resumed.status.reason.as_deref(), Some("Retrying"));
        assert_eq!(resumed.actions, [Action::EnsureMount]);
        status = reconcile(&policy, &resumed.status, &retrying, now).status;
        assert_eq!(status.phase, Phase::Mounting);
    }
    let d = reconcile(&policy, &status, &failing, now);
    assert_eq!(d.status.phase, Phase::Failed);
    assert_eq!(d.status.reason.as_deref(), Some("RetriesExhausted"));
    assert_eq!(d.status.resume_phase, Some(Phase::Mounting));
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
    assert_eq!(d.actions, ensure_actions(Phase::Syncing));
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
fn a_switchover_that_may_have_promoted_is_retried_without_publishing_again() {
    let policy = policy_with(SwitchoverMode::Manual);
    let failed = Observed {
        switchover: Step::Failed(Failure::transient(PROMOTION_UNCONFIRMED, "pg_promote")),
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
    let d = reconcile(&Policy::default(), &d.status, &streaming(42), t(14));
    assert_eq!(d.status.phase, Phase::ReadyForSwitchover);
    assert_eq!(d.status.progress.lag_bytes, Some(42));
    assert_eq!(d.status.progress.copied_bytes, 1000);
    assert_eq!(d.status.timings.synced_at, Some(t(14)));
}

#[test]
fn happy_path_end_to_end() {
    let policy = Policy::default();
    let mut status = RecoveryStatus::default();
    let mut observed = Observed::default();
    let mut phases = vec![];
    let mut now = t(0);
    for step in 0..20 {
        let d = reconcile(&policy, &status, &observed, now);
        status = d.status;
        for event in &d.events {
            let to = event
                .message
                .split(" -> ")
                .nth(1)
                .and_then(|m| m.split(':').next());
            phases.push(to.expect("event names the transition").to_owned());
        }
        // A perfect driver: every action succeeds by the next look.
        for action in d.actions {
            match action {
                Action::Validate => observed.validation = Step::Ready(info()),
                Action::EnsureMount => observed.mount = Step::Ready(()),
                Action::EnsurePublished => observed.published = Step::Ready(now),
                Action::EnsureStandby => {
                    observed.standby = if step < 6 {
                        Standby::Copying {
                            copied_bytes: step * 100,
                            total_bytes: 1000,
                        }
                    } else {
                        Standby::Streaming { lag_bytes: 0 }
                    }
                }
                Action::Switchover => {
                    observed.switchover = Step::Ready(SwitchoverReport {
                        downtime: Duration::from_millis(700),
                    })
                }
                Action::Cleanup => observed.cleanup = Step::Ready(()),
            }
        }
        now += Duration::from_millis(500);
    }
    use Phase::*;
    let expected = [
        Validating,
        Mounting,
        Publishing,
        Syncing,
        ReadyForSwitchover,
        SwitchingOver,
        Completed,
    ];
    assert_eq!(phases, expected.map(|p| p.to_string()));
    assert!(status.is_true(ConditionType::Ready));
    for c in ConditionType::ALL {
        match c {
            ConditionType::Reconciling | ConditionType::Stalled => {
                assert_eq!(status.condition(c), None, "{c:?} should be gone at the end")
            }
            _ => assert!(status.is_true(c), "{c:?} should be true at the end"),
        }
    }
    assert_eq!(status.timings.time_to_first_query_ms, Some(1000));
    assert_eq!(status.timings.switchover_downtime_ms, Some(700));
    assert!(status.timings.completed_at.is_some());
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
