//! The transition table: from each phase, what is observed, the phase after, the actions
//! ensured and the resume phase, all written out.

use super::*;

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
