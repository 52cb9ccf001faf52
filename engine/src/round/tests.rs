//! The round function driven by a test double of a driver ([`World`]): a scripted world that
//! answers every action, perfectly unless a test scripted otherwise, and records what the round
//! asked of it. The machine itself has its table tests in `machine/tests/`.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::time::Duration;

use ir_api::recovery::{
    BackupInfo, ConditionStatus, ConditionType, Phase, RecoveryStatus, SwitchoverMode,
    SwitchoverPolicy,
};

use super::*;

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

const COPY_TOTAL: u64 = 1000;

/// Test double of a driver: every action succeeds unless `script` holds a finding for it; a
/// standby is copied in four looks, connects, then streams caught up.
#[derive(Default)]
struct World {
    requests: Requests,
    script: HashMap<Action, VecDeque<Found>>,
    /// Every action asked, and whether its round was a retry.
    executed: Vec<(Action, bool)>,
    /// The phase last persisted when each action was asked.
    persisted_when_asked: Vec<(Action, Option<Phase>)>,
    persisted: Vec<RecoveryStatus>,
    events: Vec<Event>,
    now: Option<Timestamp>,
    published_at: Option<Timestamp>,
    copied: Option<u64>,
    streaming: bool,
}

impl World {
    fn then(&mut self, action: Action, found: Found) -> &mut Self {
        self.script.entry(action).or_default().push_back(found);
        self
    }

    fn perfect(&mut self, action: Action) -> Found {
        let now = self.now.expect("a clock");
        match action {
            Action::Validate => Found::Validation(Step::Ready(info())),
            Action::EnsureMount => Found::Mount(Step::Ready(())),
            Action::EnsurePublished => {
                Found::Published(Step::Ready(*self.published_at.get_or_insert(now)))
            }
            Action::EnsureStandby => match self.copied {
                Some(copied) if copied >= COPY_TOTAL => {
                    let standby = if self.streaming {
                        Standby::Streaming { lag_bytes: 0 }
                    } else {
                        self.streaming = true;
                        Standby::Connecting
                    };
                    Found::Standby(standby)
                }
                _ => {
                    let copied = self.copied.map_or(0, |c| c + 250);
                    self.copied = Some(copied);
                    Found::Copy(copy(copied, 0))
                }
            },
            Action::Switchover => Found::Switchover(Step::Ready(SwitchoverReport {
                downtime: Duration::from_millis(700),
            })),
            Action::Cleanup => Found::Cleanup(Step::Ready(())),
            Action::Teardown => Found::Teardown(Step::Ready(())),
            Action::RestartPublished => Found::Restarted(Ok(())),
            Action::RestartCopy => {
                self.copied = Some(0);
                self.streaming = false;
                Found::Standby(Standby::Copying {
                    copied_bytes: 0,
                    total_bytes: COPY_TOTAL,
                })
            }
        }
    }

    fn asked(&self, action: Action) -> usize {
        self.executed.iter().filter(|(a, _)| *a == action).count()
    }
}

fn copy(copied_bytes: u64, failures: u32) -> CopyAttempt {
    CopyAttempt {
        copied_bytes,
        total_bytes: COPY_TOTAL,
        failures,
        gives_up_after: 3,
        source_moved: false,
        failure_detail: "pg_basebackup failed; see its log".into(),
    }
}

impl Driver for World {
    type Error = Infallible;

    async fn requests(&mut self) -> Result<Requests, Infallible> {
        Ok(self.requests.clone())
    }

    async fn execute(&mut self, action: Action, round: RoundInfo<'_>) -> Result<Found, Infallible> {
        self.executed.push((action, round.retrying));
        let last = self.persisted.last().map(|s| s.phase);
        self.persisted_when_asked.push((action, last));
        let scripted = self.script.get_mut(&action).and_then(VecDeque::pop_front);
        Ok(scripted.unwrap_or_else(|| self.perfect(action)))
    }

    async fn persist(&mut self, status: &RecoveryStatus) -> Result<(), Infallible> {
        self.persisted.push(status.clone());
        Ok(())
    }

    async fn report(&mut self, events: &[Event], _status: &RecoveryStatus) {
        self.events.extend_from_slice(events);
    }
}

fn run_round(world: &mut World, policy: &Policy, status: &RecoveryStatus, at: Timestamp) -> Round {
    world.now = Some(at);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let Ok(round) = runtime.block_on(round(world, policy, status, move || at));
    round
}

/// Rounds every 500 ms (or at the next attempt while Waiting) until `until` holds; returns the
/// phases entered on the way, as the events tell them.
fn drive(
    policy: &Policy,
    status: &mut RecoveryStatus,
    world: &mut World,
    now: &mut Timestamp,
    until: impl Fn(&RecoveryStatus) -> bool,
) -> Vec<Phase> {
    let mut phases = vec![];
    for _ in 0..50 {
        if until(status) {
            return phases;
        }
        let seen = world.events.len();
        let round = run_round(world, policy, status, *now);
        for event in &world.events[seen..] {
            if let Some(to) = (event.message.split(" -> ").nth(1)).and_then(|m| m.split(':').next())
            {
                phases.push(*Phase::ALL.iter().find(|p| p.as_str() == to).unwrap());
            }
        }
        *status = round.decision.status;
        assert_eq!(
            world.persisted.last(),
            Some(&*status),
            "every round persists"
        );
        *now += Duration::from_millis(500);
        if status.phase == Phase::Waiting
            && let Some(next) = status.retry.next_attempt_at
        {
            *now = next.max(*now);
        }
    }
    panic!("the recovery did not get there: {status:?}");
}

fn completed(status: &RecoveryStatus) -> bool {
    status.timings.completed_at.is_some()
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

fn assert_all_conditions_true(status: &RecoveryStatus, case: &str) {
    for c in ConditionType::ALL {
        match c {
            ConditionType::Reconciling | ConditionType::Stalled => {
                assert_eq!(
                    status.condition(c),
                    None,
                    "{case}: {c:?} is gone at the end"
                )
            }
            ConditionType::PointInTime => assert_eq!(
                status.condition(c),
                None,
                "{case}: no point in time was asked for"
            ),
            _ => assert!(
                status.is_true(c),
                "{case}: {c:?} is true at the end: {:?}",
                status.condition(c)
            ),
        }
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

#[test]
fn happy_path_end_to_end() {
    let mut status = RecoveryStatus::default();
    let mut now = t(0);
    let mut world = World::default();
    let phases = drive(
        &Policy::default(),
        &mut status,
        &mut world,
        &mut now,
        completed,
    );
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
    assert_eq!(phases, expected);
    assert_all_conditions_true(&status, "happy path");
    assert_eq!(status.timings.switchover_downtime_ms, Some(700));
    assert!(status.timings.time_to_first_query_ms.is_some());
    assert!(world.executed.iter().all(|(_, retrying)| !retrying));
}

#[test]
fn a_round_stops_at_a_mount_that_is_not_ready_and_reports_plan_and_verdict() {
    let mut world = World::default();
    world.then(Action::EnsureMount, Found::Mount(Step::InProgress));
    let round = run_round(
        &mut world,
        &Policy::default(),
        &status_in(Phase::Publishing),
        t(5),
    );
    assert_eq!(
        world.executed,
        [(Action::EnsureMount, false)],
        "nothing runs on no mount"
    );
    assert_eq!(round.decision.status.phase, Phase::Publishing);
    assert!(!round.moved_on);

    // Found ready: the next phase at once, told in the events, and a look again at once.
    let mut world = World::default();
    let round = run_round(
        &mut world,
        &Policy::default(),
        &status_in(Phase::Mounting),
        t(5),
    );
    assert_eq!(round.decision.status.phase, Phase::Publishing);
    assert!(round.moved_on);
    assert!(
        world
            .events
            .iter()
            .any(|e| e.message.contains("Mounting -> Publishing")),
        "{:?}",
        world.events
    );
}

/// A retry that resumes the switchover is on disk before the switchover runs: a driver killed
/// in the middle comes back to SwitchingOver, never to a phase that starts the published
/// instance again.
#[test]
fn a_plan_that_changes_the_status_is_persisted_before_it_is_carried_out() {
    let mut waiting = status_in(Phase::Waiting);
    waiting.resume_phase = Some(Phase::SwitchingOver);
    waiting.retry.attempt = 1;
    waiting.retry.next_attempt_at = Some(t(1));
    let mut world = World::default();
    let round = run_round(&mut world, &Policy::default(), &waiting, t(5));
    assert_eq!(
        world.persisted_when_asked,
        [(Action::Switchover, Some(Phase::SwitchingOver))]
    );
    assert_eq!(round.decision.status.phase, Phase::Completed);
    assert!(
        world
            .events
            .iter()
            .position(|e| e.reason == Reason::Retrying)
            < world
                .events
                .iter()
                .position(|e| e.reason == Reason::Promoted),
        "the plan is told first: {:?}",
        world.events
    );
}

#[test]
fn requests_reach_the_machine() {
    // An approval outside the policy starts a Manual switchover.
    let mut world = World {
        requests: Requests {
            approved: true,
            ..Default::default()
        },
        ..Default::default()
    };
    world.streaming = true;
    world.copied = Some(COPY_TOTAL);
    let round = run_round(
        &mut world,
        &policy_with(SwitchoverMode::Manual),
        &status_in(Phase::ReadyForSwitchover),
        t(5),
    );
    assert_eq!(round.decision.status.phase, Phase::SwitchingOver);

    // A retry token starts a new round of a failed recovery: its actions run as a retry.
    let mut failed = status_in(Phase::Failed);
    failed.resume_phase = Some(Phase::Mounting);
    let mut world = World {
        requests: Requests {
            retry: Some("1".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let round = run_round(&mut world, &Policy::default(), &failed, t(5));
    assert_eq!(world.executed, [(Action::EnsureMount, true)]);
    assert_eq!(round.decision.status.phase, Phase::Publishing);

    // An abort tears down in the round that takes it up, and is told once.
    let mut world = World {
        requests: Requests {
            end: Some(machine::EndRequest::Abort),
            ..Default::default()
        },
        ..Default::default()
    };
    let round = run_round(
        &mut world,
        &Policy::default(),
        &status_in(Phase::Syncing),
        t(5),
    );
    assert_eq!(world.executed, [(Action::Teardown, false)]);
    assert_eq!(round.decision.status.phase, Phase::Aborted);
    assert_eq!(round.decision.status.timings.ended_at, Some(t(5)));
    let aborted = |e: &&Event| e.reason == Reason::Aborted && e.message.contains("->");
    assert_eq!(
        world.events.iter().filter(aborted).count(),
        1,
        "{:?}",
        world.events
    );

    // One refused after the switchover began is told once too, and nothing is torn down.
    let mut world = World {
        requests: Requests {
            end: Some(machine::EndRequest::Abort),
            ..Default::default()
        },
        ..Default::default()
    };
    run_round(
        &mut world,
        &Policy::default(),
        &status_in(Phase::Completed),
        t(5),
    );
    assert_eq!(world.executed, [(Action::Cleanup, false)]);
    let refused = |e: &&Event| e.reason == Reason::AbortRefused;
    assert_eq!(
        world.events.iter().filter(refused).count(),
        1,
        "{:?}",
        world.events
    );
}

fn interrupted(reached: Reached, published_present: bool, in_recovery: Option<bool>) -> Found {
    Found::SwitchoverInterrupted(Interruption {
        failure: Failure::new(
            Reason::SwitchoverFailed,
            "switchover failed while waiting for the standby: timed out",
        ),
        reached,
        published_present,
        standby_in_recovery: in_recovery,
    })
}

/// What a switchover that failed halfway leaves: the engine decides, the driver only reports
/// how far it got and carries out a restart when asked.
#[test]
fn an_interrupted_switchover_restarts_the_published_instance_only_before_any_promotion() {
    type Case = (
        &'static str,
        Found,
        Option<Found>,
        Reason,
        &'static str,
        usize,
    );
    let cases: [Case; 6] = [
        (
            "failed before the stop",
            interrupted(Reached::BeforeStop, true, None),
            None,
            Reason::SwitchoverFailed,
            "timed out",
            0,
        ),
        (
            "the published instance was already gone",
            interrupted(Reached::BeforeStop, false, None),
            None,
            Reason::PromotionUnconfirmed,
            "an earlier attempt stopped it",
            0,
        ),
        (
            "promotion asked",
            interrupted(Reached::MaybePromoted, false, Some(true)),
            None,
            Reason::PromotionUnconfirmed,
            "may have been promoted",
            0,
        ),
        (
            "stopped, and the standby left recovery anyway",
            interrupted(Reached::Stopped, false, Some(false)),
            None,
            Reason::PromotionUnconfirmed,
            "no longer in recovery",
            0,
        ),
        (
            "stopped, still a standby: served again",
            interrupted(Reached::Stopped, false, Some(true)),
            Some(Found::Restarted(Ok(()))),
            Reason::SwitchoverFailed,
            "timed out; the published instance serves again",
            1,
        ),
        (
            "stopped, the standby could not be asked, the restart failed",
            interrupted(Reached::Stopped, false, None),
            Some(Found::Restarted(Err(
                "the published instance did not start again: no mount".into(),
            ))),
            Reason::SwitchoverFailed,
            "timed out; the published instance did not start again: no mount",
            1,
        ),
    ];
    for (name, found, restart, reason, message, restarts) in cases {
        let mut world = World::default();
        world.then(Action::Switchover, found);
        if let Some(restart) = restart {
            world.then(Action::RestartPublished, restart);
        }
        let round = run_round(
            &mut world,
            &Policy::default(),
            &status_in(Phase::SwitchingOver),
            t(5),
        );
        let status = &round.decision.status;
        assert_eq!(status.phase, Phase::Waiting, "{name}");
        assert_eq!(status.reason.as_deref(), Some(reason.as_str()), "{name}");
        assert!(
            status
                .message
                .as_deref()
                .is_some_and(|m| m.contains(message)),
            "{name}: {:?}",
            status.message
        );
        assert_eq!(world.asked(Action::RestartPublished), restarts, "{name}");
        let told = world
            .events
            .iter()
            .any(|e| e.reason == Reason::PublishedRestarted);
        assert_eq!(told, name.ends_with("served again"), "{name}");
        // Resumed where it is safe: the switchover again once the standby may be a primary.
        let resume = if reason == Reason::PromotionUnconfirmed {
            Phase::SwitchingOver
        } else {
            Phase::ReadyForSwitchover
        };
        assert_eq!(status.resume_phase, Some(resume), "{name}");
    }
}

/// When a standby copy is thrown away and made again, and when it has failed.
#[test]
fn a_copy_is_made_again_when_its_source_moved_or_on_a_retry_after_failures() {
    let moved = CopyAttempt {
        source_moved: true,
        ..copy(500, 0)
    };
    let cases: [(&str, CopyAttempt, bool, usize, Phase); 5] = [
        ("copying", copy(500, 1), false, 0, Phase::Syncing),
        (
            "the published instance moved",
            moved,
            false,
            1,
            Phase::Syncing,
        ),
        (
            "failed as often as it retries itself",
            copy(500, 3),
            false,
            0,
            Phase::Waiting,
        ),
        (
            "failed once, then a retry",
            copy(500, 1),
            true,
            1,
            Phase::Syncing,
        ),
        (
            "a retry of a healthy copy",
            copy(500, 0),
            true,
            0,
            Phase::Syncing,
        ),
    ];
    for (name, attempt, retrying, copies_again, phase) in cases {
        let mut world = World::default();
        world.then(Action::EnsureStandby, Found::Copy(attempt));
        let status = if retrying {
            let mut waiting = status_in(Phase::Waiting);
            waiting.resume_phase = Some(Phase::Syncing);
            waiting.retry.next_attempt_at = Some(t(1));
            waiting
        } else {
            status_in(Phase::Syncing)
        };
        let round = run_round(&mut world, &Policy::default(), &status, t(5));
        assert_eq!(world.asked(Action::RestartCopy), copies_again, "{name}");
        assert_eq!(round.decision.status.phase, phase, "{name}");
        if phase == Phase::Waiting {
            assert_eq!(
                round.decision.status.reason.as_deref(),
                Some("BaseBackupFailed"),
                "{name}"
            );
        }
    }
}

#[test]
fn conditions_turn_true_again_once_a_failed_part_is_back() {
    use Phase::*;
    let cases: [(&str, Phase, ConditionType, Action, Found); 5] = [
        (
            "mount lost while syncing",
            Syncing,
            ConditionType::Mounted,
            Action::EnsureMount,
            Found::Mount(Step::Failed(Failure::new(Reason::MountLost, "x"))),
        ),
        (
            "published instance died while syncing",
            Syncing,
            ConditionType::Published,
            Action::EnsurePublished,
            Found::Published(Step::Failed(Failure::new(
                Reason::PublishedInstanceExited,
                "x",
            ))),
        ),
        (
            "mount lost before switchover",
            ReadyForSwitchover,
            ConditionType::Mounted,
            Action::EnsureMount,
            Found::Mount(Step::Failed(Failure::new(Reason::MountLost, "x"))),
        ),
        (
            "published instance died before switchover",
            ReadyForSwitchover,
            ConditionType::Published,
            Action::EnsurePublished,
            Found::Published(Step::Failed(Failure::new(
                Reason::PublishedInstanceExited,
                "x",
            ))),
        ),
        (
            "standby lost before switchover",
            ReadyForSwitchover,
            ConditionType::Synced,
            Action::EnsureStandby,
            Found::Standby(Standby::Failed(Failure::new(
                Reason::PostgresUnavailable,
                "x",
            ))),
        ),
    ];
    for (name, phase, condition, action, failure) in cases {
        // Manual, so that the recovery stops in ReadyForSwitchover until approved.
        let mut policy = policy_with(SwitchoverMode::Manual);
        let (mut status, mut world, mut now) = (RecoveryStatus::default(), World::default(), t(0));
        drive(&policy, &mut status, &mut world, &mut now, |s| {
            s.phase == phase
        });
        world.then(action, failure);
        if action == Action::EnsureStandby {
            // Failed: the copy is made again.
            world.copied = None;
            world.streaming = false;
        }
        let round = run_round(&mut world, &policy, &status, now);
        status = round.decision.status;
        assert_eq!(status.phase, Waiting, "{name}");
        assert_eq!(
            status.condition(condition).map(|c| c.status),
            Some(ConditionStatus::False),
            "{name}"
        );
        let awaiting_approval = |s: &RecoveryStatus| {
            s.phase == ReadyForSwitchover && s.reason.as_deref() == Some("AwaitingApproval")
        };
        let phases = drive(
            &policy,
            &mut status,
            &mut world,
            &mut now,
            awaiting_approval,
        );
        if condition == ConditionType::Synced {
            // The standby is copied again: syncing, not deciding on its old lag.
            assert_eq!(
                phases,
                [ReadyForSwitchover, Syncing, ReadyForSwitchover],
                "{name}"
            );
        }
        assert!(
            status.is_true(condition),
            "{name}: {:?}",
            status.condition(condition)
        );
        policy.switchover.approved = true;
        drive(&policy, &mut status, &mut world, &mut now, completed);
        assert_all_conditions_true(&status, name);
    }
}
