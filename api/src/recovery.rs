//! The parts of a recovery that every driver shares: how to switch over, how to retry, and the
//! status the recovery engine keeps.

use jiff::Timestamp;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::GoDuration;
use crate::Reason;

/// When the published instance hands over to the standby on production storage.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.mode != 'Scheduled' || has(self.at)")
    .message("switchover.at is required when switchover.mode is Scheduled"))]
pub struct SwitchoverPolicy {
    /// `Automatic` switches over as soon as the standby has caught up; `Manual` waits until
    /// `approved` is true and the standby is within 16 MiB of WAL (or `maxLagBytes`, if
    /// larger); `Scheduled` waits for `at`, and never starts before the standby has caught up.
    #[serde(default)]
    pub mode: SwitchoverMode,
    /// Manual mode: set to true to let the switchover start.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub approved: bool,
    /// Scheduled mode: the earliest time (RFC 3339) at which the switchover may start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub at: Option<Timestamp>,
    /// The standby counts as caught up when it is at most this many bytes of WAL behind the
    /// published instance. The switchover itself always waits for every committed transaction.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_lag_bytes: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SwitchoverMode {
    #[default]
    Automatic,
    Manual,
    Scheduled,
}

/// What a recovery is for. `Recover` brings the backup online and goes on to production storage
/// and a switchover. `Publish` brings it online to look at (query it, export tables) and stops
/// there, until its TTL ends or it is deleted; changing a Publish to Recover goes on from the
/// published instance to sync and switchover.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RecoveryMode {
    #[default]
    Recover,
    Publish,
}

impl RecoveryMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RecoveryMode::Recover => "Recover",
            RecoveryMode::Publish => "Publish",
        }
    }
}

/// How a published backup (mode Publish) ends.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PublishPolicy {
    /// How long the backup stays published after it first answered a query (Go notation:
    /// `30m`, `2h`); then it is torn down: the instance stops, the mount ends, the IRCache is
    /// wiped. Unset: until deleted (or `irctl unpublish`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<GoDuration>,
}

impl PublishPolicy {
    pub fn is_default(&self) -> bool {
        *self == PublishPolicy::default()
    }
}

/// How a step that failed for a transient reason (repository unreachable, a process that died)
/// is retried before the recovery is marked Failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Retries after the first failure of a step, per round; a manual retry starts a new round.
    #[serde(default = "RetryPolicy::default_limit")]
    #[schemars(range(max = 1000))]
    pub limit: u32,
    /// Time between two attempts, in Go notation (`30s`, `5m`, `1h`).
    #[serde(default = "RetryPolicy::default_interval")]
    pub interval: GoDuration,
}

impl RetryPolicy {
    pub const DEFAULT_LIMIT: u32 = 10;
    pub const DEFAULT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(300);

    fn default_limit() -> u32 {
        Self::DEFAULT_LIMIT
    }

    fn default_interval() -> GoDuration {
        GoDuration(Self::DEFAULT_INTERVAL)
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            limit: Self::DEFAULT_LIMIT,
            interval: Self::default_interval(),
        }
    }
}

/// Where a recovery stands. `Waiting` and `Failed` keep the phase they interrupted in
/// `status.resumePhase`.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
)]
pub enum Phase {
    #[default]
    Pending,
    Validating,
    Mounting,
    Publishing,
    Syncing,
    ReadyForSwitchover,
    SwitchingOver,
    Completed,
    Waiting,
    Failed,
    /// Mode Publish: the backup serves from the mount and the recovery stops there.
    Published,
    /// A publish that ended (TTL or unpublish): everything it made is torn down.
    Unpublished,
    /// Given up on request (`irctl abort`): everything it made is torn down.
    Aborted,
}

impl Phase {
    pub const ALL: [Phase; 13] = [
        Phase::Pending,
        Phase::Validating,
        Phase::Mounting,
        Phase::Publishing,
        Phase::Syncing,
        Phase::ReadyForSwitchover,
        Phase::SwitchingOver,
        Phase::Completed,
        Phase::Waiting,
        Phase::Failed,
        Phase::Published,
        Phase::Unpublished,
        Phase::Aborted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Validating => "Validating",
            Phase::Mounting => "Mounting",
            Phase::Publishing => "Publishing",
            Phase::Syncing => "Syncing",
            Phase::ReadyForSwitchover => "ReadyForSwitchover",
            Phase::SwitchingOver => "SwitchingOver",
            Phase::Completed => "Completed",
            Phase::Waiting => "Waiting",
            Phase::Failed => "Failed",
            Phase::Published => "Published",
            Phase::Unpublished => "Unpublished",
            Phase::Aborted => "Aborted",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The condition types a recovery reports: the milestones in the order it reaches them, then the
/// summary (`Ready`, and kstatus' abnormal-true `Reconciling` and `Stalled`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ConditionType {
    Validated,
    Mounted,
    Published,
    Synced,
    SwitchedOver,
    Ready,
    Reconciling,
    Stalled,
    /// Only for a recovery to a point in time: True once the published instance reached it.
    PointInTime,
}

impl ConditionType {
    pub const ALL: [ConditionType; 9] = [
        ConditionType::Validated,
        ConditionType::Mounted,
        ConditionType::Published,
        ConditionType::PointInTime,
        ConditionType::Synced,
        ConditionType::SwitchedOver,
        ConditionType::Ready,
        ConditionType::Reconciling,
        ConditionType::Stalled,
    ];
}

/// Whether the condition holds: `True`, `False`, or `Unknown` when it cannot be told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

/// One observation about the recovery, in the shape of Kubernetes' `metav1.Condition`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: ConditionType,
    pub status: ConditionStatus,
    // CamelCase word a program can match on; the schema lists every reason.
    #[schemars(schema_with = "condition_reason_schema")]
    pub reason: String,
    /// What happened, for people.
    #[serde(default)]
    pub message: String,
    /// When `status` last changed.
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub last_transition_time: Timestamp,
    /// The `metadata.generation` the condition was set for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The backup being recovered, as validation found it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupInfo {
    /// The resolved backup id (never `latest`).
    pub id: String,
    /// PostgreSQL major version of the backup.
    pub pg_major: u32,
    /// Size of the data directory, bytes.
    pub size_bytes: u64,
}

/// Copy and replication progress of the standby.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncProgress {
    /// Bytes of the base backup copied to the standby so far.
    pub copied_bytes: u64,
    /// Bytes the base backup will copy (an estimate from the published instance).
    pub total_bytes: u64,
    /// Percent of the base backup copied (0 to 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent_copied: Option<u32>,
    /// Copy rate over the last observation interval, bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_bytes_per_second: Option<u64>,
    /// Bytes of WAL the standby has still to replay, once it streams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_bytes: Option<u64>,
    /// When these numbers were observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub observed_at: Option<Timestamp>,
}

impl SyncProgress {
    /// Percent of the base backup copied, 0 to 100.
    pub fn percent(&self) -> Option<f64> {
        (self.total_bytes > 0)
            .then(|| (self.copied_bytes as f64 * 100.0 / self.total_bytes as f64).min(100.0))
    }
}

/// Attempts of the current round of retries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryStatus {
    /// Retries used in this round (0 before the first transient failure).
    pub attempt: u32,
    /// When the next attempt starts, while Waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub next_attempt_at: Option<Timestamp>,
    /// The last failure, transient or permanent: `Reason: message`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The last manual retry request acted on, so that one request starts one round.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_manual_request: Option<String>,
}

/// Milestones of the recovery.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Timings {
    /// When the operator started the recovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub started_at: Option<Timestamp>,
    /// When the published instance answered its first query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub published_at: Option<Timestamp>,
    /// From the start of the recovery to the first query answered by the published instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_to_first_query_ms: Option<u64>,
    /// When the standby first caught up with the published instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub synced_at: Option<Timestamp>,
    /// When the switchover began (the published instance turned read-only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub switchover_started_at: Option<Timestamp>,
    /// Writes were refused for this long: from read-only on the published instance to the
    /// promoted standby accepting writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switchover_downtime_ms: Option<u64>,
    /// When the recovery completed: the promoted standby serves and the rest is cleaned up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub completed_at: Option<Timestamp>,
    /// When an unpublished or aborted recovery had torn down all it made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub ended_at: Option<Timestamp>,
}

fn condition_reason_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    crate::reason::reason_schema("CamelCase word a program can match on.", false)
}

fn status_reason_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    crate::reason::reason_schema(
        "CamelCase cause of the current phase (a failure reason while Waiting or Failed).",
        true,
    )
}

/// Everything the recovery engine knows about one recovery; the engine's only memory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryStatus {
    pub phase: Phase,
    // CamelCase cause of the current phase (a failure reason while Waiting or Failed); the
    // schema lists every reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "status_reason_schema")]
    pub reason: Option<String>,
    /// What happened, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The phase a retry resumes in, while Waiting or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_phase: Option<Phase>,
    /// The `metadata.generation` this status is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Milestones reached (Validated, Mounted, Published, Synced, SwitchedOver) and `Ready`;
    /// `Reconciling` while the recovery works towards its goal (retries included), `Stalled`
    /// once it failed and waits for a manual retry; neither once it completed.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupInfo>,
    #[serde(default)]
    pub progress: SyncProgress,
    #[serde(default)]
    pub retry: RetryStatus,
    #[serde(default)]
    pub timings: Timings,
    /// Only for a recovery to a point in time: the target, the backup's recoverable window and
    /// the replay's progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point_in_time: Option<crate::point_in_time::PointInTimeStatus>,
    /// Mode Publish with a TTL: when the published backup is torn down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub expires_at: Option<Timestamp>,
}

impl RecoveryStatus {
    /// The switchover began (and may have promoted the target): from here on the recovery is
    /// never torn down.
    pub fn switchover_began(&self) -> bool {
        match self.phase {
            Phase::SwitchingOver | Phase::Completed => true,
            Phase::Waiting | Phase::Failed => self.resume_phase == Some(Phase::SwitchingOver),
            _ => false,
        }
    }

    /// The recovery was unpublished or aborted.
    pub fn ended(&self) -> bool {
        matches!(self.phase, Phase::Unpublished | Phase::Aborted)
    }

    pub fn condition(&self, type_: ConditionType) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    pub fn is_true(&self, type_: ConditionType) -> bool {
        self.condition(type_)
            .is_some_and(|c| c.status == ConditionStatus::True)
    }

    /// Sets a condition; `lastTransitionTime` moves only when the status changes.
    pub fn set_condition(
        &mut self,
        type_: ConditionType,
        status: ConditionStatus,
        reason: Reason,
        message: impl Into<String>,
        now: Timestamp,
    ) {
        self.put_condition(type_, status, reason.to_string(), message.into(), now);
    }

    /// Sets a condition to what the status itself says: its reason and message, or its phase
    /// when it has no reason. A reason is kept as it reads, even one this version no longer
    /// knows (a status written by an earlier one).
    pub fn set_condition_as_status(
        &mut self,
        type_: ConditionType,
        status: ConditionStatus,
        now: Timestamp,
    ) {
        let reason = self
            .reason
            .clone()
            .unwrap_or_else(|| self.phase.to_string());
        let message = self.message.clone().unwrap_or_default();
        self.put_condition(type_, status, reason, message, now);
    }

    fn put_condition(
        &mut self,
        type_: ConditionType,
        status: ConditionStatus,
        reason: String,
        message: String,
        now: Timestamp,
    ) {
        let observed_generation = self.observed_generation;
        match self.conditions.iter_mut().find(|c| c.type_ == type_) {
            Some(c) => {
                if c.status != status {
                    c.last_transition_time = now;
                }
                c.status = status;
                c.reason = reason;
                c.message = message;
                c.observed_generation = observed_generation;
            }
            None => {
                self.conditions.push(Condition {
                    type_,
                    status,
                    reason,
                    message,
                    last_transition_time: now,
                    observed_generation,
                });
                let order = |c: &Condition| ConditionType::ALL.iter().position(|t| *t == c.type_);
                self.conditions.sort_by_key(order);
            }
        }
    }

    /// Drops a condition: the abnormal-true ones are absent while they do not hold.
    pub fn remove_condition(&mut self, type_: ConditionType) {
        self.conditions.retain(|c| c.type_ != type_);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_design() {
        let retry: RetryPolicy = serde_json::from_str("{}").unwrap();
        assert_eq!(retry.limit, 10);
        assert_eq!(retry.interval.0, std::time::Duration::from_secs(300));
        let switchover: SwitchoverPolicy = serde_json::from_str("{}").unwrap();
        assert_eq!(switchover.mode, SwitchoverMode::Automatic);
    }

    #[test]
    fn condition_transition_time_moves_only_on_change() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
        let mut status = RecoveryStatus::default();
        status.set_condition(
            ConditionType::Ready,
            ConditionStatus::False,
            Reason::Started,
            "",
            t0,
        );
        status.set_condition(
            ConditionType::Ready,
            ConditionStatus::False,
            Reason::Retrying,
            "",
            t1,
        );
        assert_eq!(
            status
                .condition(ConditionType::Ready)
                .unwrap()
                .last_transition_time,
            t0
        );
        status.set_condition(
            ConditionType::Ready,
            ConditionStatus::True,
            Reason::Completed,
            "",
            t1,
        );
        let ready = status.condition(ConditionType::Ready).unwrap();
        assert_eq!(
            (ready.last_transition_time, ready.reason.as_str()),
            (t1, "Completed")
        );
    }

    #[test]
    fn conditions_stay_in_milestone_order() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let mut status = RecoveryStatus::default();
        status.set_condition(
            ConditionType::Ready,
            ConditionStatus::False,
            Reason::Started,
            "",
            t0,
        );
        status.set_condition(
            ConditionType::Validated,
            ConditionStatus::True,
            Reason::BackupValid,
            "",
            t0,
        );
        let types: Vec<_> = status.conditions.iter().map(|c| c.type_).collect();
        assert_eq!(types, [ConditionType::Validated, ConditionType::Ready]);
    }

    #[test]
    fn status_round_trips_through_json() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let mut status = RecoveryStatus {
            phase: Phase::Waiting,
            resume_phase: Some(Phase::Mounting),
            ..Default::default()
        };
        status.retry.next_attempt_at = Some(t0);
        status.set_condition(
            ConditionType::Mounted,
            ConditionStatus::False,
            Reason::RepositoryUnavailable,
            "x",
            t0,
        );
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["phase"], "Waiting");
        assert_eq!(json["resumePhase"], "Mounting");
        assert_eq!(json["retry"]["nextAttemptAt"], "2026-01-01T00:00:00Z");
        assert_eq!(
            json["conditions"][0]["lastTransitionTime"],
            "2026-01-01T00:00:00Z"
        );
        let back: RecoveryStatus = serde_json::from_value(json).unwrap();
        assert_eq!(back, status);
    }
}
