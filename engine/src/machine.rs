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
//!
//! Here: the machine's inputs and outputs and the dispatch on the phase. By job: `plan`
//! (what a phase ensures, entering one), `phases`, `switchover`, `publish` (mode Publish
//! and ending a recovery), `retries` and `conditions` (the status a phase leaves).

mod conditions;
mod phases;
mod plan;
mod publish;
mod retries;
mod switchover;
#[cfg(test)]
mod tests;

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
pub use switchover::APPROVED_MAX_LAG_BYTES;

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

fn step_failure<T>(step: &Step<T>) -> Option<&Failure> {
    match step {
        Step::Failed(f) => Some(f),
        _ => None,
    }
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
}
