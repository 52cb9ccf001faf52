//! Table tests of the recovery state machine, one file per topic. Shared here: the status and
//! observation builders, and what each phase ensures written out as literal actions.

use super::*;
use ir_api::GoDuration;
use ir_api::Reason;

mod conditions;
mod phases;
mod progress;
mod publish;
mod retries;
mod switchover;

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
