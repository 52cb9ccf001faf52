//! One round of the engine, the same for both drivers: plan with the machine, have the driver
//! carry out the actions, judge what it found, persist the status and report what happened.
//!
//! A driver only looks and acts ([`Driver`]); every decision is made here or in the machine,
//! including the two a driver is tempted to make itself: what a switchover that failed halfway
//! leaves behind ([`after_interrupted_switchover`]), and when a standby's copy is thrown away
//! and made again ([`judge_copy`]).

use std::future::Future;

use ir_api::point_in_time::PointInTimeStatus;
use ir_api::recovery::{BackupInfo, Phase, RecoveryStatus};
use ir_api::{Failure, Reason};
use jiff::Timestamp;

use crate::machine::{
    self, Action, Decision, Event, EventKind, Observed, Policy, Standby, Step, SwitchoverReport,
};
use crate::postgres::{self, Endpoint, Reached, SwitchoverError};

/// What waits for the recovery besides its spec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requests {
    /// A manual retry token (any new token starts a new round of attempts).
    pub retry: Option<String>,
    /// The switchover was approved outside the policy (`irctl switchover`).
    pub approved: bool,
    /// A request to end the recovery (`irctl unpublish`, `irctl abort`).
    pub end: Option<machine::EndRequest>,
}

/// What a round tells the driver besides the action.
#[derive(Debug, Clone, Copy)]
pub struct RoundInfo<'a> {
    /// The status the actions were planned from.
    pub status: &'a RecoveryStatus,
    /// The recovery has just left Waiting or Failed: failed parts get a fresh attempt.
    pub retrying: bool,
}

/// What a driver found when it carried out an action.
#[derive(Debug, Clone, PartialEq)]
pub enum Found {
    Validation(Step<BackupInfo>),
    Mount(Step),
    /// Ready carries when the published instance first answered a query.
    Published(Step<Timestamp>),
    Standby(Standby),
    /// The standby's copy is not complete; the round judges it ([`judge_copy`]).
    Copy(CopyAttempt),
    Switchover(Step<SwitchoverReport>),
    /// The switchover failed after it began; the round decides what that leaves.
    SwitchoverInterrupted(Interruption),
    Cleanup(Step),
    Teardown(Step),
    /// [`Action::RestartPublished`]: it serves again, or why not (a phrase).
    Restarted(Result<(), String>),
    /// A validation or a publish of a recovery to a point in time, with the target, the window
    /// and the replay's progress.
    ToPoint(Box<Found>, PointInTimeStatus),
}

/// A standby copy in progress or failed, as the driver sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyAttempt {
    pub copied_bytes: u64,
    pub total_bytes: u64,
    /// How often this copy failed so far (a Pod's restarts of its copy, a copy process that
    /// died).
    pub failures: u32,
    /// Failures after which the copy counts as failed: what the driver's copy mechanism retries
    /// by itself before giving up (the kubelet restarts a copy container; a local process is
    /// not restarted).
    pub gives_up_after: u32,
    /// The copy reads from where the published instance no longer is.
    pub source_moved: bool,
    /// Where to read about the failures, for the failure's message.
    pub failure_detail: String,
}

/// A switchover that failed once it began, and the facts the round needs to decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interruption {
    /// The failure if nothing is left to undo (its reason: SwitchoverFailed, or
    /// StandbyUnavailable when the standby could not even be reached).
    pub failure: Failure,
    pub reached: Reached,
    /// The published instance (its Pod, its process) is still there.
    pub published_present: bool,
    /// What the standby answered when asked whether it is still in recovery; `None` when it
    /// could not be asked.
    pub standby_in_recovery: Option<bool>,
}

impl Interruption {
    /// The facts once a switchover failed after it began; the standby gets the last word on
    /// whether it was promoted.
    pub async fn after(
        error: &SwitchoverError,
        standby: &Endpoint,
        published_present: bool,
    ) -> Self {
        Interruption {
            failure: Failure::new(Reason::SwitchoverFailed, error.to_string()),
            reached: error.reached,
            published_present,
            standby_in_recovery: postgres::answers_in_recovery(standby).await,
        }
    }
}

/// The driver's side of a round: it looks and acts; the engine decides.
pub trait Driver {
    type Error;

    /// Requests waiting for the recovery.
    fn requests(&mut self) -> impl Future<Output = Result<Requests, Self::Error>> + Send;

    /// Carries out one action and says what it found. Every action is idempotent.
    fn execute(
        &mut self,
        action: Action,
        round: RoundInfo<'_>,
    ) -> impl Future<Output = Result<Found, Self::Error>> + Send;

    /// Stores the status: the engine's only memory.
    fn persist(
        &mut self,
        status: &RecoveryStatus,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Tells people what happened this round.
    fn report(
        &mut self,
        events: &[Event],
        status: &RecoveryStatus,
    ) -> impl Future<Output = ()> + Send;
}

/// What a round decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Round {
    pub decision: Decision,
    /// What the actions found moved the recovery to another phase: look again at once.
    pub moved_on: bool,
}

/// Runs one round: plan, act, judge, persist, report. A plan that changes the status (a phase
/// entered, a retry started) is persisted and told before anything is carried out: a driver
/// killed in the middle of a switchover finds SwitchingOver when it comes back, never the phase
/// before it, and so never starts the published instance again next to a promoted standby.
/// `now` is asked when planning and when judging, so that a round that acts for long judges at
/// the time it ends.
pub async fn round<D: Driver + Send>(
    driver: &mut D,
    policy: &Policy,
    status: &RecoveryStatus,
    now: impl Fn() -> Timestamp + Send,
) -> Result<Round, D::Error> {
    let requests = driver.requests().await?;
    let mut policy = policy.clone();
    policy.switchover.approved |= requests.approved;
    let mut observed = Observed {
        manual_retry: requests.retry,
        end: requests.end,
        ..Default::default()
    };
    let plan = machine::reconcile(&policy, status, &observed, now());
    // Taken up (or refused) by the plan: the judgement must not tell about it again.
    observed.end = None;
    if plan.status != *status {
        driver.persist(&plan.status).await?;
    }
    driver.report(&plan.events, &plan.status).await;
    let info = RoundInfo {
        status: &plan.status,
        retrying: matches!(status.phase, Phase::Waiting | Phase::Failed)
            && !matches!(plan.status.phase, Phase::Waiting | Phase::Failed),
    };
    let mut events = Vec::new();
    for &action in &plan.actions {
        let found = driver.execute(action, info).await?;
        record(driver, info, found, &mut observed, &mut events).await?;
        if !observed.round_continues_after(action) {
            break;
        }
    }
    let decision = machine::reconcile(&policy, &plan.status, &observed, now());
    events.extend(decision.events.iter().cloned());
    driver.persist(&decision.status).await?;
    driver.report(&events, &decision.status).await;
    Ok(Round {
        moved_on: decision.status.phase != plan.status.phase,
        decision,
    })
}

/// Puts what the driver found where the machine looks, deciding (and carrying out) what a
/// failed copy or an interrupted switchover calls for.
async fn record<D: Driver + Send>(
    driver: &mut D,
    info: RoundInfo<'_>,
    found: Found,
    observed: &mut Observed,
    events: &mut Vec<Event>,
) -> Result<(), D::Error> {
    match found {
        Found::Validation(step) => observed.validation = step,
        Found::Mount(step) => observed.mount = step,
        Found::Published(step) => observed.published = step,
        Found::Standby(standby) => observed.standby = standby,
        Found::Copy(copy) => {
            observed.standby = match judge_copy(&copy, info.retrying) {
                CopyVerdict::Going => Standby::Copying {
                    copied_bytes: copy.copied_bytes,
                    total_bytes: copy.total_bytes,
                },
                CopyVerdict::Failed(failure) => Standby::Failed(failure),
                CopyVerdict::CopyAgain => match driver.execute(Action::RestartCopy, info).await? {
                    Found::Standby(standby) => standby,
                    other => unexpected(Action::RestartCopy, other),
                },
            }
        }
        Found::Switchover(step) => observed.switchover = step,
        Found::SwitchoverInterrupted(interruption) => {
            observed.switchover = Step::Failed(match after_interrupted_switchover(&interruption) {
                AfterSwitchover::Fail(failure) => failure,
                AfterSwitchover::RestartPublished => {
                    let outcome = match driver.execute(Action::RestartPublished, info).await? {
                        Found::Restarted(Ok(())) => {
                            events.push(Event {
                                kind: EventKind::Normal,
                                reason: Reason::PublishedRestarted,
                                message: "the switchover failed before the promotion: the \
                                          published instance serves again"
                                    .to_owned(),
                            });
                            "the published instance serves again".to_owned()
                        }
                        Found::Restarted(Err(why)) => why,
                        other => unexpected(Action::RestartPublished, other),
                    };
                    Failure::new(
                        Reason::SwitchoverFailed,
                        format!("{}; {outcome}", interruption.failure.message),
                    )
                }
            })
        }
        Found::Cleanup(step) => observed.cleanup = step,
        Found::Teardown(step) => observed.teardown = step,
        Found::Restarted(_) => {}
        Found::ToPoint(found, point) => {
            observed.point_in_time = Some(point);
            match *found {
                Found::Validation(step) => observed.validation = step,
                Found::Published(step) => observed.published = step,
                other => {
                    unreachable!("a point in time comes with validation or publishing: {other:?}")
                }
            }
        }
    }
    Ok(())
}

/// A driver that answers an action with another's finding has a bug no input can cause.
fn unexpected(action: Action, found: Found) -> ! {
    unreachable!("{action:?} found {found:?}")
}

/// What a standby copy that is not complete calls for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyVerdict {
    /// Let it go on.
    Going,
    /// Throw it away and copy again from where the published instance is now.
    CopyAgain,
    Failed(Failure),
}

/// A copy from where the published instance no longer is, or one that failed before this
/// retry, is made again; one that failed as often as its mechanism retries by itself has failed.
pub fn judge_copy(copy: &CopyAttempt, retrying: bool) -> CopyVerdict {
    if copy.source_moved || (retrying && copy.failures > 0) {
        CopyVerdict::CopyAgain
    } else if copy.failures >= copy.gives_up_after {
        CopyVerdict::Failed(Failure::new(
            Reason::BaseBackupFailed,
            copy.failure_detail.clone(),
        ))
    } else {
        CopyVerdict::Going
    }
}

/// What an interrupted switchover calls for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterSwitchover {
    Fail(Failure),
    /// This attempt stopped the published instance and nothing was promoted: start it again
    /// now, writable, rather than only at the retry.
    RestartPublished,
}

/// Why the published instance stays stopped when an earlier attempt stopped it.
const STOPPED_EARLIER: &str =
    "an earlier attempt stopped it and may have asked the standby to promote";

/// Once the standby may have been promoted the published instance stays stopped, since two
/// primaries must never run, and the retry resumes the switchover; a stop this attempt made
/// before any promotion is undone at once.
pub fn after_interrupted_switchover(i: &Interruption) -> AfterSwitchover {
    let message = &i.failure.message;
    let unconfirmed = |why| AfterSwitchover::Fail(Failure::promotion_unconfirmed(message, why));
    match i.reached {
        Reached::BeforeStop if i.published_present => AfterSwitchover::Fail(i.failure.clone()),
        Reached::BeforeStop => unconfirmed(STOPPED_EARLIER),
        Reached::MaybePromoted => unconfirmed("the standby may have been promoted"),
        Reached::Stopped if i.standby_in_recovery == Some(false) => {
            unconfirmed("the standby is no longer in recovery")
        }
        Reached::Stopped => AfterSwitchover::RestartPublished,
    }
}

#[cfg(test)]
mod tests;
