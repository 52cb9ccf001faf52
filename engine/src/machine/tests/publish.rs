//! Mode Publish (stop at Published, TTL, change to Recover) and the ends on request (unpublish,
//! abort), written out.

use super::*;

const TEARDOWN: &[Action] = &[Action::Teardown];

fn publish(ttl_secs: Option<u64>) -> Policy {
    Policy {
        mode: RecoveryMode::Publish,
        publish_ttl: ttl_secs.map(Duration::from_secs),
        ..Default::default()
    }
}

fn serving() -> Observed {
    Observed {
        mount: Step::Ready(()),
        published: Step::Ready(t(1)),
        ..Default::default()
    }
}

fn published_status() -> RecoveryStatus {
    let mut status = status_in(Phase::Published);
    status.timings.published_at = Some(t(1));
    status
}

struct Case {
    name: &'static str,
    policy: Policy,
    status: RecoveryStatus,
    observed: Observed,
    now: Timestamp,
    phase_after: Phase,
    actions: &'static [Action],
    reason: &'static str,
    expires_at: Option<Timestamp>,
    requeue_after: Option<Duration>,
}

#[test]
fn publish_transitions() {
    use Phase::*;
    let cases = [
        Case {
            name: "published in mode Publish stops there, with its expiry",
            policy: publish(Some(3600)),
            status: status_in(Publishing),
            observed: serving(),
            now: t(2),
            phase_after: Published,
            actions: PUBLISH,
            reason: "PublishReady",
            expires_at: Some(t(3601)),
            requeue_after: Some(PUBLISHED_POLL),
        },
        Case {
            name: "published in mode Recover goes on to sync",
            policy: Policy::default(),
            status: status_in(Publishing),
            observed: serving(),
            now: t(2),
            phase_after: Syncing,
            actions: SYNC,
            reason: "Published",
            expires_at: None,
            requeue_after: Some(PROGRESS_POLL),
        },
        Case {
            name: "without a TTL a publish serves until unpublished",
            policy: publish(None),
            status: published_status(),
            observed: serving(),
            now: t(100_000),
            phase_after: Published,
            actions: PUBLISH,
            reason: "PublishReady",
            expires_at: None,
            requeue_after: Some(PUBLISHED_POLL),
        },
        Case {
            name: "close to its expiry it looks again at the expiry",
            policy: publish(Some(60)),
            status: published_status(),
            observed: serving(),
            now: t(58),
            phase_after: Published,
            actions: PUBLISH,
            reason: "PublishReady",
            expires_at: Some(t(61)),
            requeue_after: Some(Duration::from_secs(3)),
        },
        Case {
            name: "an expired publish is torn down",
            policy: publish(Some(60)),
            status: published_status(),
            observed: serving(),
            now: t(61),
            phase_after: Unpublished,
            actions: TEARDOWN,
            reason: "PublishExpired",
            expires_at: None,
            requeue_after: Some(STEP_POLL),
        },
        Case {
            name: "a shorter TTL set later ends it sooner",
            policy: publish(Some(10)),
            status: {
                let mut s = published_status();
                s.expires_at = Some(t(3601));
                s
            },
            observed: serving(),
            now: t(20),
            phase_after: Unpublished,
            actions: TEARDOWN,
            reason: "PublishExpired",
            expires_at: None,
            requeue_after: Some(STEP_POLL),
        },
        Case {
            name: "a change to Recover goes on to sync and drops the expiry",
            policy: Policy::default(),
            status: {
                let mut s = published_status();
                s.expires_at = Some(t(3601));
                s
            },
            observed: serving(),
            now: t(30),
            phase_after: Syncing,
            actions: SYNC,
            reason: "ModeChanged",
            expires_at: None,
            requeue_after: Some(PROGRESS_POLL),
        },
        Case {
            name: "a change to Recover waits for a replay paused at its target to promote",
            policy: Policy::default(),
            status: published_status(),
            observed: Observed {
                published: Step::InProgress,
                ..serving()
            },
            now: t(30),
            phase_after: Published,
            actions: &[Action::EnsureMount, Action::EnsurePublished],
            reason: "ModeChanged",
            expires_at: None,
            requeue_after: Some(STEP_POLL),
        },
        Case {
            name: "a publish whose mount failed waits to retry it",
            policy: publish(Some(3600)),
            status: published_status(),
            observed: Observed {
                mount: Step::Failed(transient()),
                ..serving()
            },
            now: t(30),
            phase_after: Waiting,
            actions: NOTHING,
            reason: "RepositoryUnavailable",
            expires_at: None,
            requeue_after: Some(RetryPolicy::DEFAULT_INTERVAL),
        },
        Case {
            name: "teardown running",
            policy: publish(Some(60)),
            status: status_in(Unpublished),
            observed: Observed::default(),
            now: t(70),
            phase_after: Unpublished,
            actions: TEARDOWN,
            reason: "",
            expires_at: None,
            requeue_after: Some(STEP_POLL),
        },
        Case {
            name: "teardown done: at rest",
            policy: publish(Some(60)),
            status: status_in(Unpublished),
            observed: Observed {
                teardown: Step::Ready(()),
                ..Default::default()
            },
            now: t(70),
            phase_after: Unpublished,
            actions: NOTHING,
            reason: "Unpublished",
            expires_at: None,
            requeue_after: None,
        },
        Case {
            name: "teardown failed: retried after the retry interval",
            policy: publish(Some(60)),
            status: status_in(Aborted),
            observed: Observed {
                teardown: Step::Failed(Failure::new(Reason::TeardownFailed, "mnt is busy")),
                ..Default::default()
            },
            now: t(70),
            phase_after: Aborted,
            actions: TEARDOWN,
            reason: "TeardownFailed",
            expires_at: None,
            requeue_after: Some(RetryPolicy::DEFAULT_INTERVAL),
        },
    ];
    for c in cases {
        let d = reconcile(&c.policy, &c.status, &c.observed, c.now);
        assert_eq!(d.status.phase, c.phase_after, "{}: phase", c.name);
        assert_eq!(d.actions, c.actions, "{}: actions", c.name);
        if !c.reason.is_empty() {
            assert_eq!(d.status.reason.as_deref(), Some(c.reason), "{}", c.name);
        }
        if c.phase_after != Waiting {
            assert_eq!(d.status.expires_at, c.expires_at, "{}: expiry", c.name);
        }
        assert_eq!(d.requeue_after, c.requeue_after, "{}: requeue", c.name);
        let ready = d.status.condition(ConditionType::Ready).unwrap().status;
        let serves = c.phase_after == Published;
        assert_eq!(ready == ConditionStatus::True, serves, "{}: Ready", c.name);
        let reconciling = d.status.condition(ConditionType::Reconciling).is_some();
        let at_rest = serves || d.requeue_after.is_none();
        assert_eq!(reconciling, !at_rest, "{}: Reconciling", c.name);
    }
}

#[test]
fn an_abort_tears_down_from_every_phase_before_the_switchover() {
    use Phase::*;
    // (phase, resume phase, torn down)
    let table = [
        (Pending, None, true),
        (Validating, None, true),
        (Mounting, None, true),
        (Publishing, None, true),
        (Published, None, true),
        (Syncing, None, true),
        (ReadyForSwitchover, None, true),
        (Waiting, Some(Mounting), true),
        (Waiting, Some(ReadyForSwitchover), true),
        (Failed, Some(Syncing), true),
        (SwitchingOver, None, false),
        (Waiting, Some(SwitchingOver), false),
        (Failed, Some(SwitchingOver), false),
        (Completed, None, false),
    ];
    for (phase, resume, torn_down) in table {
        for (request, ends_in, reason) in [
            (EndRequest::Abort, Aborted, "Aborted"),
            (EndRequest::Unpublish, Unpublished, "Unpublished"),
        ] {
            let mut status = status_in(phase);
            status.resume_phase = resume;
            status.retry.next_attempt_at = resume.map(|_| t(300));
            let observed = Observed {
                end: Some(request),
                ..streaming(0)
            };
            let d = reconcile(&Policy::default(), &status, &observed, t(60));
            let name = format!("{request:?} in {phase} (resume {resume:?})");
            if torn_down {
                assert_eq!(d.status.phase, ends_in, "{name}");
                assert_eq!(d.actions, TEARDOWN, "{name}");
                assert_eq!(d.status.reason.as_deref(), Some(reason), "{name}");
                assert_eq!(d.status.retry.next_attempt_at, None, "{name}");
                assert_eq!(d.status.resume_phase, None, "{name}");
            } else {
                assert_ne!(d.status.phase, ends_in, "{name}");
                assert!(!d.actions.contains(&Action::Teardown), "{name}");
                let refused = d.events.iter().find(|e| e.reason == Reason::AbortRefused);
                assert_eq!(
                    refused.map(|e| e.kind),
                    Some(EventKind::Warning),
                    "{name}: {:?}",
                    d.events
                );
            }
        }
    }
}

#[test]
fn an_end_request_does_not_restart_a_teardown_under_way_or_done() {
    for phase in [Phase::Unpublished, Phase::Aborted] {
        let mut status = status_in(phase);
        status.timings.ended_at = Some(t(5));
        let observed = Observed {
            end: Some(EndRequest::Abort),
            teardown: Step::Ready(()),
            ..Default::default()
        };
        let d = reconcile(&Policy::default(), &status, &observed, t(60));
        assert_eq!(d.status.phase, phase);
        assert!(d.events.is_empty(), "{:?}", d.events);
        assert_eq!(d.status.timings.ended_at, Some(t(5)));
        assert_eq!(d.actions, NOTHING);
    }
}
