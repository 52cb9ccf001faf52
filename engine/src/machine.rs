//! The recovery state machine: a pure function from (policy, status, what the driver observed,
//! now) to (actions, new status, events, when to look again).
//!
//! Drivers (the local one behind `irctl recover`, the Kubernetes one in the operator) observe the
//! world, call [`reconcile`], carry out the actions and persist the status. Nothing here does
//! I/O or reads a clock, so every transition is covered by table tests.
//!
//! Actions are idempotent "ensure" requests and cumulative: a phase keeps ensuring what earlier
//! phases built (Syncing ensures the mount and the published instance too), so resuming a phase
//! after a retry or a restart rebuilds whatever went missing.

use std::time::Duration;

use ir_api::point_in_time::PointInTimeStatus;
use ir_api::recovery::{
    BackupInfo, ConditionStatus, ConditionType, Phase, RecoveryMode, RecoveryStatus, RetryPolicy,
    SwitchoverMode, SwitchoverPolicy,
};
use jiff::Timestamp;

/// How often to look again while a step is in progress.
pub const STEP_POLL: Duration = Duration::from_secs(1);
/// How often to refresh sync progress and lag.
pub const PROGRESS_POLL: Duration = Duration::from_secs(2);
/// How often to look at a published backup that only serves (mode Publish).
pub const PUBLISHED_POLL: Duration = Duration::from_secs(10);

/// The user's choices the machine needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub switchover: SwitchoverPolicy,
    pub retry: RetryPolicy,
    pub mode: RecoveryMode,
    /// Mode Publish: how long the backup stays published after its first query.
    pub publish_ttl: Option<Duration>,
}

/// A request to give a recovery up and tear down what it made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndRequest {
    /// End a publish (`irctl unpublish`).
    Unpublish,
    /// Give the recovery up, whatever its mode (`irctl abort`).
    Abort,
}

pub use ir_api::{Failure, Reason};

/// What the driver knows about one part of the recovery.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Step<T = ()> {
    /// Not attempted yet, or nothing known.
    #[default]
    Unknown,
    InProgress,
    Ready(T),
    Failed(Failure),
}

/// The standby on production storage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Standby {
    /// Not looked at in this round.
    #[default]
    Unknown,
    /// There is none: it was never made, or is being made again.
    Absent,
    /// The base backup is being copied.
    Copying {
        copied_bytes: u64,
        total_bytes: u64,
    },
    /// The base backup is complete but the standby does not stream: it is starting, or it
    /// reconnects to a published instance that restarted.
    Connecting,
    /// The base backup is complete and the standby streams WAL.
    Streaming {
        lag_bytes: u64,
    },
    Failed(Failure),
}

/// Outcome of a switchover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SwitchoverReport {
    /// Writes were refused from read-only to promoted.
    pub downtime: Duration,
}

/// Everything the driver observed since the last reconcile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub validation: Step<BackupInfo>,
    pub mount: Step,
    /// Ready carries when the published instance first answered a query.
    pub published: Step<Timestamp>,
    pub standby: Standby,
    pub switchover: Step<SwitchoverReport>,
    /// Unmount and drop the IRCache after the switchover.
    pub cleanup: Step,
    /// Everything the recovery made torn down, after an unpublish, an expiry or an abort.
    pub teardown: Step,
    /// A pending request to end the recovery.
    pub end: Option<EndRequest>,
    /// A manual retry request (any token; a new token starts a new round once the recovery is
    /// Waiting or Failed).
    pub manual_retry: Option<String>,
    /// A recovery to a point in time: the target and window once validated, then the replay's
    /// progress while publishing.
    pub point_in_time: Option<PointInTimeStatus>,
}

impl Observed {
    /// Whether the actions after `done` in this round still make sense: nothing runs on a
    /// mount that is not there yet, or against a published instance that does not answer.
    pub fn round_continues_after(&self, done: Action) -> bool {
        match done {
            Action::EnsureMount => Part::Mount.is_ready(self),
            Action::EnsurePublished => Part::Published.is_ready(self),
            _ => true,
        }
    }
}

/// What the driver should do now. Every action is idempotent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Check the backup, binaries, space, ports and target; report [`Observed::validation`].
    Validate,
    /// Mount the backup with its IRCache (remount after a lost mount).
    EnsureMount,
    /// Run PostgreSQL on the mount and keep it running.
    EnsurePublished,
    /// Build the standby from the published instance and keep it streaming.
    EnsureStandby,
    /// Hand over from the published instance to the standby.
    Switchover,
    /// Stop using the mount: unmount, drop the IRCache.
    Cleanup,
    /// Tear down everything the recovery made: stop its processes, unmount, drop the IRCache,
    /// remove a target that was never promoted.
    Teardown,
    /// Start the published instance again, writable, after a switchover stopped it and failed
    /// before any promotion. Asked by the round, never planned.
    RestartPublished,
    /// Throw the standby's copy away and copy again from the published instance. Asked by the
    /// round, never planned.
    RestartCopy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Normal,
    Warning,
}

/// Something worth telling people about (a Kubernetes Event, a line on the terminal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub reason: Reason,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub status: RecoveryStatus,
    pub actions: Vec<Action>,
    pub events: Vec<Event>,
    /// Reconcile again after this long; `None` waits for a change.
    pub requeue_after: Option<Duration>,
}

/// One step of the machine.
pub fn reconcile(
    policy: &Policy,
    status: &RecoveryStatus,
    observed: &Observed,
    now: Timestamp,
) -> Decision {
    let mut m = Machine {
        policy,
        observed,
        now,
        d: Decision {
            status: status.clone(),
            actions: Vec::new(),
            events: Vec::new(),
            requeue_after: None,
        },
    };
    if !m.end() && !m.manual_retry() {
        m.step();
    }
    m.update_summary();
    m.d
}

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

/// An approved switchover starts once the standby is this close: little is left to replay while
/// read-only, and under a steady write load the lag seldom reads 0, which would hold back a
/// switchover someone asked for.
pub const APPROVED_MAX_LAG_BYTES: u64 = 16 << 20;

/// A part that a phase builds and later phases keep.
#[derive(Debug, Clone, Copy)]
enum Part {
    Mount,
    Published,
    Standby,
}

impl Part {
    fn condition(self) -> ConditionType {
        match self {
            Part::Mount => ConditionType::Mounted,
            Part::Published => ConditionType::Published,
            Part::Standby => ConditionType::Synced,
        }
    }

    /// Reason and message of its condition while it is ready.
    fn ready_reason(self) -> (Reason, &'static str) {
        match self {
            Part::Mount => (
                Reason::Mounted,
                "the backup is mounted read-write over its IRCache",
            ),
            Part::Published => (
                Reason::Published,
                "PostgreSQL serves the backup from the mount",
            ),
            Part::Standby => (
                Reason::StandbyStreaming,
                "the standby holds a full copy and streams WAL from the published instance",
            ),
        }
    }

    fn failure(self, observed: &Observed) -> Option<&Failure> {
        match self {
            Part::Mount => step_failure(&observed.mount),
            Part::Published => step_failure(&observed.published),
            Part::Standby => match &observed.standby {
                Standby::Failed(f) => Some(f),
                _ => None,
            },
        }
    }

    fn is_ready(self, observed: &Observed) -> bool {
        match self {
            Part::Mount => matches!(observed.mount, Step::Ready(())),
            Part::Published => matches!(observed.published, Step::Ready(_)),
            Part::Standby => matches!(observed.standby, Standby::Streaming { .. }),
        }
    }
}

/// Scheduled without a time could never switch over.
fn switchover_time_missing() -> Failure {
    Failure::new(
        Reason::SwitchoverTimeMissing,
        "switchover.mode is Scheduled but switchover.at is not set: give the time (RFC 3339) \
         of the switchover",
    )
}

struct Machine<'a> {
    policy: &'a Policy,
    observed: &'a Observed,
    now: Timestamp,
    d: Decision,
}

impl Machine<'_> {
    fn status(&mut self) -> &mut RecoveryStatus {
        &mut self.d.status
    }

    fn step(&mut self) {
        match self.d.status.phase {
            Phase::Pending => {
                self.status().timings.started_at = Some(self.now);
                self.enter(
                    Phase::Validating,
                    Reason::Started,
                    "checking the backup and the host",
                );
            }
            Phase::Validating => self.validating(),
            Phase::Mounting => self.mounting(),
            Phase::Publishing => self.publishing(),
            Phase::Syncing => self.syncing(),
            Phase::ReadyForSwitchover => self.ready_for_switchover(),
            Phase::SwitchingOver => self.switching_over(),
            Phase::Completed => self.completed(),
            Phase::Published => self.published(),
            Phase::Unpublished | Phase::Aborted => self.ended(),
            Phase::Waiting => self.waiting(),
            Phase::Failed => {}
        }
    }

    /// Moves to `phase`, asks for what it ensures, and tells about it.
    fn enter(&mut self, phase: Phase, reason: Reason, message: &str) {
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
    fn keep(&mut self, phase: Phase) {
        self.d.actions = ensure_actions(phase).to_vec();
        self.d.requeue_after = Some(match phase {
            Phase::Syncing | Phase::ReadyForSwitchover => PROGRESS_POLL,
            Phase::Published => PUBLISHED_POLL,
            _ => STEP_POLL,
        });
    }

    /// A step made progress: the next failure starts a fresh count.
    fn advance(&mut self, phase: Phase, condition: ConditionType, reason: Reason, message: &str) {
        let now = self.now;
        let status = self.status();
        status.set_condition(
            condition,
            ConditionStatus::True,
            reason.as_str(),
            message,
            now,
        );
        status.retry.attempt = 0;
        status.retry.next_attempt_at = None;
        self.enter(phase, reason, message);
    }

    /// `part` is ready: its condition turns True and the recovery moves on to `next`.
    fn part_done(&mut self, next: Phase, part: Part) {
        let (reason, message) = part.ready_reason();
        self.advance(next, part.condition(), reason, message);
    }

    fn fail(&mut self, component: ConditionType, failure: &Failure) {
        let interrupted = self.d.status.phase;
        // A failed switchover leaves the published instance serving: resume by deciding again.
        // Unless the standby may have been promoted: then only the switchover may go on, since
        // the published instance must not run again.
        let resume = match interrupted {
            Phase::SwitchingOver if failure.reason == Reason::PromotionUnconfirmed => {
                Phase::SwitchingOver
            }
            Phase::SwitchingOver => Phase::ReadyForSwitchover,
            other => other,
        };
        let (now, limit, interval) = (
            self.now,
            self.policy.retry.limit,
            self.policy.retry.interval,
        );
        let status = self.status();
        status.set_condition(
            component,
            ConditionStatus::False,
            failure.reason.as_str(),
            &failure.message,
            now,
        );
        status.resume_phase = Some(resume);
        status.retry.last_error = Some(format!("{}: {}", failure.reason, failure.message));
        if !failure.transient {
            self.enter(Phase::Failed, failure.reason, &failure.message);
            self.d.requeue_after = None;
            return;
        }
        let attempt = status.retry.attempt + 1;
        if attempt > limit {
            status.retry.next_attempt_at = None;
            let message = format!(
                "{} (gave up after {limit} retries; a manual retry starts a new round)",
                failure.message
            );
            self.enter(Phase::Failed, Reason::RetriesExhausted, &message);
            self.d.requeue_after = None;
            return;
        }
        let next = now + interval.0;
        status.retry.attempt = attempt;
        status.retry.next_attempt_at = Some(next);
        let message = format!(
            "{}; retry {attempt} of {limit} at {}",
            failure.message,
            next.strftime("%Y-%m-%dT%H:%M:%SZ")
        );
        self.enter(Phase::Waiting, failure.reason, &message);
        self.d.requeue_after = Some(interval.0);
    }

    /// Checks the parts built earlier: fails on the first one that failed (returns true), and
    /// turns the condition of each one that is ready True again, since a failure seen later
    /// (and retried) set it False and no phase that sets it runs again.
    fn check_parts(&mut self, parts: &[Part]) -> bool {
        for part in parts {
            if let Some(f) = part.failure(self.observed) {
                self.fail(part.condition(), &f.clone());
                return true;
            }
        }
        let now = self.now;
        for part in parts {
            if part.is_ready(self.observed) && !self.d.status.is_true(part.condition()) {
                let (reason, message) = part.ready_reason();
                let status = self.status();
                status.set_condition(
                    part.condition(),
                    ConditionStatus::True,
                    reason.as_str(),
                    message,
                    now,
                );
            }
        }
        false
    }

    fn validating(&mut self) {
        let switchover = &self.policy.switchover;
        if switchover.mode == SwitchoverMode::Scheduled && switchover.at.is_none() {
            self.fail(ConditionType::Validated, &switchover_time_missing());
            return;
        }
        self.note_point_in_time();
        match &self.observed.validation {
            Step::Ready(info) => {
                let message = format!(
                    "backup {} (PostgreSQL {}, {} bytes)",
                    info.id, info.pg_major, info.size_bytes
                );
                self.status().backup = Some(info.clone());
                self.advance(
                    Phase::Mounting,
                    ConditionType::Validated,
                    Reason::BackupValid,
                    &message,
                );
            }
            Step::Failed(f) => self.fail(ConditionType::Validated, &f.clone()),
            Step::Unknown | Step::InProgress => self.keep(Phase::Validating),
        }
    }

    fn mounting(&mut self) {
        match &self.observed.mount {
            Step::Ready(()) => self.part_done(Phase::Publishing, Part::Mount),
            Step::Failed(f) => self.fail(ConditionType::Mounted, &f.clone()),
            Step::Unknown | Step::InProgress => self.keep(Phase::Mounting),
        }
    }

    fn publishing(&mut self) {
        if self.check_parts(&[Part::Mount]) {
            return;
        }
        self.note_point_in_time();
        match &self.observed.published {
            Step::Ready(first_query_at) => {
                let first_query_at = *first_query_at;
                self.point_in_time_condition(true);
                let status = self.status();
                status.timings.published_at = Some(first_query_at);
                status.timings.time_to_first_query_ms = status
                    .timings
                    .started_at
                    .and_then(|start| first_query_at.duration_since(start).try_into().ok())
                    .map(|d: Duration| d.as_millis() as u64);
                match self.policy.mode {
                    RecoveryMode::Recover => self.part_done(Phase::Syncing, Part::Published),
                    RecoveryMode::Publish => {
                        self.part_done(Phase::Published, Part::Published);
                        self.published();
                    }
                }
            }
            Step::Failed(f) => self.fail(ConditionType::Published, &f.clone()),
            Step::Unknown | Step::InProgress => {
                self.point_in_time_condition(false);
                self.keep(Phase::Publishing)
            }
        }
    }

    /// Takes over what the driver observed of a recovery to a point in time; a window seen at
    /// validation stays.
    fn note_point_in_time(&mut self) {
        let Some(observed) = self.observed.point_in_time.clone() else {
            return;
        };
        let status = self.status();
        let window = status.point_in_time.take().and_then(|p| p.window);
        status.point_in_time = Some(PointInTimeStatus {
            window: observed.window.or(window),
            ..observed
        });
    }

    /// The PointInTime condition of a recovery to a point in time: reached once the published
    /// instance answers as a primary, replaying until then.
    fn point_in_time_condition(&mut self, reached: bool) {
        let now = self.now;
        let status = self.status();
        let Some(p) = &status.point_in_time else {
            return;
        };
        let (condition, reason, message) = if reached {
            let at = p.reached_at.unwrap_or(now);
            (
                ConditionStatus::True,
                Reason::TargetReached,
                format!("reached {} at {at}", p.target),
            )
        } else {
            let progress = match (&p.replayed_lsn, &p.end_lsn) {
                (Some(replayed), Some(end)) => format!(": replayed {replayed} of {end}"),
                (Some(replayed), None) => format!(": replayed {replayed}"),
                _ => String::new(),
            };
            (
                ConditionStatus::False,
                Reason::Replaying,
                format!("replaying WAL up to {}{progress}", p.target),
            )
        };
        status.set_condition(
            ConditionType::PointInTime,
            condition,
            reason.as_str(),
            message,
            now,
        );
    }

    fn syncing(&mut self) {
        if self.check_parts(&[Part::Mount, Part::Published]) {
            return;
        }
        match self.observed.standby.clone() {
            Standby::Copying {
                copied_bytes,
                total_bytes,
            } => {
                self.record_copy(copied_bytes, total_bytes);
                self.keep(Phase::Syncing);
            }
            Standby::Streaming { lag_bytes } => {
                self.record_lag(lag_bytes);
                self.status().timings.synced_at = Some(self.now);
                self.part_done(Phase::ReadyForSwitchover, Part::Standby);
                // Say at once what the switchover waits for (or start it).
                self.ready_for_switchover();
            }
            Standby::Failed(f) => self.fail(ConditionType::Synced, &f),
            Standby::Connecting => {
                self.status().progress.lag_bytes = None;
                self.keep(Phase::Syncing);
            }
            Standby::Unknown | Standby::Absent => self.keep(Phase::Syncing),
        }
    }

    fn record_copy(&mut self, copied_bytes: u64, total_bytes: u64) {
        let now = self.now;
        // Before the server's estimate arrives, the backup's size is the best one.
        let total_bytes = match total_bytes {
            0 => self.d.status.backup.as_ref().map_or(0, |b| b.size_bytes),
            n => n,
        };
        let progress = &mut self.status().progress;
        if copied_bytes < progress.copied_bytes {
            // The copy started over: the old rate says nothing about this one.
            progress.rate_bytes_per_second = None;
        } else if let Some(before) = progress.observed_at {
            let elapsed = now.duration_since(before).as_secs_f64();
            if elapsed > 0.0 {
                progress.rate_bytes_per_second =
                    Some(((copied_bytes - progress.copied_bytes) as f64 / elapsed) as u64);
            }
        }
        // A standby being copied has no replay lag yet.
        progress.lag_bytes = None;
        progress.copied_bytes = copied_bytes;
        progress.total_bytes = total_bytes;
        progress.percent_copied = progress.percent().map(|p| p as u32);
        progress.observed_at = Some(now);
    }

    fn record_lag(&mut self, lag_bytes: u64) {
        let now = self.now;
        let size = self.d.status.backup.as_ref().map_or(0, |b| b.size_bytes);
        let progress = &mut self.status().progress;
        if progress.total_bytes == 0 {
            progress.total_bytes = size;
        }
        progress.copied_bytes = progress.total_bytes.max(progress.copied_bytes);
        progress.percent_copied = Some(100);
        progress.rate_bytes_per_second = None;
        progress.lag_bytes = Some(lag_bytes);
        progress.observed_at = Some(now);
    }

    fn ready_for_switchover(&mut self) {
        if self.check_parts(&[Part::Mount, Part::Published, Part::Standby]) {
            return;
        }
        let lag_bytes = match self.observed.standby {
            Standby::Streaming { lag_bytes } => lag_bytes,
            Standby::Copying {
                copied_bytes,
                total_bytes,
            } => return self.sync_again(copied_bytes, total_bytes),
            Standby::Absent => return self.sync_again(0, 0),
            Standby::Unknown => return self.keep(Phase::ReadyForSwitchover),
            // A full copy that is only reconnecting is no reason to sync again, nor to start a
            // switchover without knowing its lag.
            Standby::Connecting => {
                self.status().progress.lag_bytes = None;
                self.keep(Phase::ReadyForSwitchover);
                self.set_reason(
                    Reason::StandbyNotStreaming,
                    "the standby holds a full copy but does not stream (it starts or \
                     reconnects); the switchover waits until it does",
                );
                return;
            }
            // check_parts failed the recovery.
            Standby::Failed(_) => return,
        };
        self.record_lag(lag_bytes);
        let policy = &self.policy.switchover;
        // Why the switchover may start, once the standby has caught up.
        let cleared = match policy.mode {
            SwitchoverMode::Automatic => None,
            SwitchoverMode::Manual if !policy.approved => {
                self.keep(Phase::ReadyForSwitchover);
                self.set_reason(
                    Reason::AwaitingApproval,
                    "waiting for the switchover to be approved",
                );
                return;
            }
            SwitchoverMode::Manual => Some("the switchover is approved"),
            SwitchoverMode::Scheduled => match policy.at {
                None => {
                    self.fail(ConditionType::SwitchedOver, &switchover_time_missing());
                    return;
                }
                Some(at) if self.now < at => {
                    self.keep(Phase::ReadyForSwitchover);
                    let until = self.now.duration_until(at).unsigned_abs();
                    self.d.requeue_after = Some(until.min(PROGRESS_POLL));
                    let message = format!("switchover scheduled at {at}");
                    self.set_reason(Reason::AwaitingSchedule, &message);
                    return;
                }
                Some(_) => Some("the scheduled time has passed"),
            },
        };
        // Starting behind would keep the database read-only for the whole catch-up.
        let max_lag_bytes = match policy.mode {
            SwitchoverMode::Manual => policy.max_lag_bytes.max(APPROVED_MAX_LAG_BYTES),
            _ => policy.max_lag_bytes,
        };
        if lag_bytes > max_lag_bytes {
            let waiting = format!(
                "waiting for the standby to catch up ({lag_bytes} bytes of WAL behind, at most \
                 {max_lag_bytes} allowed)"
            );
            let message = match cleared {
                Some(why) => format!("{why}; {waiting}"),
                None => waiting,
            };
            self.keep(Phase::ReadyForSwitchover);
            self.set_reason(Reason::CatchingUp, &message);
            return;
        }
        self.status().timings.switchover_started_at = Some(self.now);
        self.enter(
            Phase::SwitchingOver,
            Reason::SwitchoverStarted,
            "making the published instance read-only and promoting the standby",
        );
    }

    /// The standby no longer streams (it is copied again after a failure, or reconnects): sync
    /// until it streams again rather than decide on the last lag it had.
    fn sync_again(&mut self, copied_bytes: u64, total_bytes: u64) {
        const MESSAGE: &str =
            "the standby does not stream (it is copied again); syncing until it does";
        self.record_copy(copied_bytes, total_bytes);
        let now = self.now;
        let status = self.status();
        status.set_condition(
            ConditionType::Synced,
            ConditionStatus::False,
            Reason::StandbyNotStreaming.as_str(),
            MESSAGE,
            now,
        );
        self.enter(Phase::Syncing, Reason::StandbyNotStreaming, MESSAGE);
    }

    fn set_reason(&mut self, reason: Reason, message: &str) {
        let status = self.status();
        status.reason = Some(reason.to_string());
        status.message = Some(message.to_owned());
    }

    fn switching_over(&mut self) {
        match &self.observed.switchover {
            Step::Ready(report) => {
                let downtime = report.downtime;
                let status = self.status();
                status.timings.switchover_downtime_ms = Some(downtime.as_millis() as u64);
                status.progress.lag_bytes = Some(0);
                let message = format!(
                    "the standby is the primary; writes were refused for {} ms",
                    downtime.as_millis()
                );
                self.advance(
                    Phase::Completed,
                    ConditionType::SwitchedOver,
                    Reason::Promoted,
                    &message,
                );
            }
            Step::Failed(f) => self.fail(ConditionType::SwitchedOver, &f.clone()),
            Step::Unknown | Step::InProgress => self.keep(Phase::SwitchingOver),
        }
    }

    fn completed(&mut self) {
        match &self.observed.cleanup {
            Step::Ready(()) => {
                if self.d.status.timings.completed_at.is_none() {
                    self.status().timings.completed_at = Some(self.now);
                    self.set_reason(
                        Reason::Completed,
                        "the target runs as the primary; the mount and IRCache are gone",
                    );
                }
                self.d.actions.clear();
                self.d.requeue_after = None;
            }
            Step::Failed(f) => {
                // The database is switched over; only housekeeping is left, so no Failed phase.
                let message = format!("cleanup failed, will retry: {}", f.message);
                self.keep(Phase::Completed);
                self.d.requeue_after = Some(self.policy.retry.interval.0);
                self.set_reason(Reason::CleanupFailed, &message);
            }
            Step::Unknown | Step::InProgress => self.keep(Phase::Completed),
        }
    }

    /// Mode Publish: the backup serves until its TTL ends; a change to Recover goes on to sync.
    fn published(&mut self) {
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
    fn end(&mut self) -> bool {
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
    fn ended(&mut self) {
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

    fn waiting(&mut self) {
        let next = self.d.status.retry.next_attempt_at.unwrap_or(self.now);
        if self.now < next {
            self.d.requeue_after = Some(self.now.duration_until(next).unsigned_abs());
            return;
        }
        let resume = self.d.status.resume_phase.unwrap_or(Phase::Validating);
        let message = format!(
            "retry {} of {}",
            self.d.status.retry.attempt, self.policy.retry.limit
        );
        self.status().retry.next_attempt_at = None;
        // Failures observed before this attempt are stale: act first, judge on the next look.
        self.enter(resume, Reason::Retrying, &message);
    }

    /// Applies a new manual retry request to a stopped (Waiting or Failed) recovery; returns
    /// true when it restarted it. A request that arrives while the recovery runs stays pending:
    /// it neither resets the count of the running round nor is lost if the recovery stops.
    fn manual_retry(&mut self) -> bool {
        let Some(request) = &self.observed.manual_retry else {
            return false;
        };
        let status = self.status();
        if !matches!(status.phase, Phase::Waiting | Phase::Failed)
            || status.retry.last_manual_request.as_ref() == Some(request)
        {
            return false;
        }
        status.retry.last_manual_request = Some(request.clone());
        status.retry.attempt = 0;
        status.retry.next_attempt_at = None;
        let resume = status.resume_phase.unwrap_or(Phase::Validating);
        self.enter(
            resume,
            Reason::ManualRetry,
            "a manual retry started a new round of attempts",
        );
        true
    }

    /// The summary conditions. `Ready` says whether the recovery reached its goal: the target
    /// runs as the primary (mode Publish: the backup serves). kstatus (Flux, kpt, Config Sync) reads the abnormal-true pair:
    /// `Reconciling` while the recovery works towards the goal (waiting for a retry included),
    /// `Stalled` once it failed and waits for a person; both absent at the goal.
    fn update_summary(&mut self) {
        let now = self.now;
        let status = self.status();
        let reason = status
            .reason
            .clone()
            .unwrap_or_else(|| status.phase.to_string());
        let message = status.message.clone().unwrap_or_default();
        let (ready, abnormal) = match status.phase {
            Phase::Completed if status.timings.completed_at.is_some() => (
                Some((Reason::Completed, "the target runs as the primary")),
                None,
            ),
            Phase::Published => (
                Some((Reason::PublishReady, "the backup serves from the mount")),
                None,
            ),
            Phase::Unpublished | Phase::Aborted if status.timings.ended_at.is_some() => {
                (None, None)
            }
            Phase::Failed => (None, Some(ConditionType::Stalled)),
            _ => (None, Some(ConditionType::Reconciling)),
        };
        if let Some((reason, message)) = ready {
            status.set_condition(
                ConditionType::Ready,
                ConditionStatus::True,
                reason.as_str(),
                message,
                now,
            );
        } else {
            status.set_condition(
                ConditionType::Ready,
                ConditionStatus::False,
                &reason,
                message.clone(),
                now,
            );
        }
        for type_ in [ConditionType::Reconciling, ConditionType::Stalled] {
            if abnormal == Some(type_) {
                status.set_condition(type_, ConditionStatus::True, &reason, message.clone(), now);
            } else {
                status.remove_condition(type_);
            }
        }
    }
}

fn step_failure<T>(step: &Step<T>) -> Option<&Failure> {
    match step {
        Step::Failed(f) => Some(f),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
