//! Backups made from Kubernetes: a one-off `Backup`, a `ScheduledBackup` that makes them on a
//! cron schedule and prunes what it made, and what a BackupRepository reports of its last
//! retention run. A Backup runs as a Job: `irctl backup create --from-pg` against the cluster,
//! into the repository.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::GoDuration;
use crate::crd::LocalRef;

/// Label each backup a Backup makes carries in its manifest: the Backup's uid. The operator
/// finds the backup by it once the Job has ended.
pub const BACKUP_UID_LABEL: &str = "instantrecovery.dev/backup-uid";
/// Of a ScheduledBackup: label of the Backups it creates (its name), and of the backups they
/// make, in their manifests (`<namespace>/<name>`): its retention prunes only those.
pub const SCHEDULED_BACKUP_LABEL: &str = "instantrecovery.dev/scheduled-backup";

/// CEL rule of a cluster: a host or a Service, not both.
const HOST_OR_SERVICE: &str = "has(self.host) != has(self.service)";
/// CEL rules on the names: a Backup's name is a label value of its Job and Pods (at most 63
/// characters), and a ScheduledBackup's Backups are `<name>-<YYYYMMDDHHMMSS>`.
const BACKUP_NAME_FITS: &str = "self.metadata.name.size() <= 63";
const SCHEDULE_NAME_FITS: &str = "self.metadata.name.size() <= 48";

/// One backup of a PostgreSQL cluster into a BackupRepository, taken once.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[kube(
    group = "instantrecovery.dev",
    version = "v1alpha1",
    kind = "Backup",
    doc = "One backup of a PostgreSQL cluster into a BackupRepository, taken once by a Job that runs `irctl backup create --from-pg`.",
    namespaced,
    status = "BackupStatus",
    shortname = "irbackup",
    category = "instantrecovery",
    printcolumn = r#"{"name": "Phase", "type": "string", "jsonPath": ".status.phase"}"#,
    printcolumn = r#"{"name": "Backup", "type": "string", "jsonPath": ".status.backupId"}"#,
    printcolumn = r#"{"name": "Size", "type": "integer", "jsonPath": ".status.sizeBytes"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#,
    validation = Rule::new(BACKUP_NAME_FITS).message("a Backup's name is at most 63 characters: its Job and Pods carry it as a label")
)]
#[x_kube(validation = Rule::new("self == oldSelf").message("a Backup's spec cannot change: create another Backup"))]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    /// The BackupRepository (same namespace) the backup is written to.
    pub repository_ref: LocalRef,
    /// The PostgreSQL server to back up.
    pub cluster: ClusterRef,
}

/// Where the server is and how to connect to it.
#[derive(Serialize, Deserialize, KubeSchema, Debug, Clone, PartialEq)]
#[x_kube(validation = Rule::new(HOST_OR_SERVICE).message("give exactly one of host and service"))]
#[serde(rename_all = "camelCase")]
pub struct ClusterRef {
    /// Host name or address of the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub host: Option<String>,
    /// A Service of the same namespace in front of the server (its cluster DNS name is used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<LocalRef>,
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// Secret with `username` and `password` of a role with the REPLICATION attribute (or a
    /// superuser), which `pg_basebackup` connects as.
    pub credentials_secret: LocalRef,
    /// PostgreSQL major version of the server: the Job runs `pg_basebackup` from the
    /// `postgres:<version>` image unless `image` names another.
    #[schemars(range(min = 10, max = 99))]
    pub postgres_version: u32,
    /// Image with `pg_basebackup` of the server's major version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

fn default_port() -> u16 {
    5432
}

/// `Pending` until the Job runs, `Running` while it copies, then `Completed` or `Failed`.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BackupPhase {
    #[default]
    Pending,
    Running,
    Completed,
    Failed,
}

impl BackupPhase {
    pub fn is_final(self) -> bool {
        matches!(self, BackupPhase::Completed | BackupPhase::Failed)
    }
}

/// What the operator saw of the backup.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    #[serde(default)]
    pub phase: BackupPhase,
    /// The Job that takes the backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    /// The backup's id in the repository (what `spec.backup.id` of an InstantRecovery names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,
    /// Size of the backed-up data directory, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// PostgreSQL major version the backup is of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pg_major: Option<u32>,
    /// When the Job started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<jiff::Timestamp>,
    /// When the backup completed or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<jiff::Timestamp>,
    /// From start to completion, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    /// Why it failed, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `Completed` (True once the backup is in the repository, False when it failed) and
    /// `Ready` (the same, for tools that read `Ready`).
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// Backups of a PostgreSQL cluster on a cron schedule, pruned by a retention policy.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[kube(
    group = "instantrecovery.dev",
    version = "v1alpha1",
    kind = "ScheduledBackup",
    doc = "Backups of a PostgreSQL cluster on a cron schedule: each is a Backup; after each, the backups the schedule made that its retention policy does not keep are deleted from the repository.",
    namespaced,
    status = "ScheduledBackupStatus",
    shortname = "irsched",
    category = "instantrecovery",
    printcolumn = r#"{"name": "Schedule", "type": "string", "jsonPath": ".spec.schedule"}"#,
    printcolumn = r#"{"name": "Suspend", "type": "boolean", "jsonPath": ".spec.suspend"}"#,
    printcolumn = r#"{"name": "Last backup", "type": "date", "jsonPath": ".status.lastScheduleTime"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#,
    validation = Rule::new(SCHEDULE_NAME_FITS).message("a ScheduledBackup's name is at most 48 characters: its Backups are named <name>-<YYYYMMDDHHMMSS>")
)]
#[serde(rename_all = "camelCase")]
pub struct ScheduledBackupSpec {
    /// Cron schedule in UTC: five fields (`minute hour day month weekday`, e.g. `0 3 * * *`),
    /// or six with seconds first.
    #[schemars(length(min = 1, max = 128))]
    pub schedule: String,
    /// No new Backups while true; running ones go on.
    #[serde(default)]
    pub suspend: bool,
    /// What each Backup backs up, and where to.
    pub backup: BackupSpec,
    /// Which of the backups this schedule made to keep after each new one; none deleted when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionSpec>,
    /// Finished Backup objects kept (the backups in the repository follow `retention`).
    #[serde(default = "default_history")]
    #[schemars(range(min = 1, max = 100))]
    pub history_limit: u32,
}

fn default_history() -> u32 {
    5
}

/// A retention policy in restic's vocabulary, as `irctl backup prune` takes it: a backup any
/// rule keeps is kept; one a running recovery leases is never deleted.
#[derive(Serialize, Deserialize, KubeSchema, Debug, Clone, Default, PartialEq)]
#[x_kube(validation = Rule::new("has(self.keepLast) || has(self.keepDaily) || has(self.keepWeekly) || has(self.keepWithin)").message("a retention policy needs at least one of keepLast, keepDaily, keepWeekly, keepWithin"))]
#[serde(rename_all = "camelCase")]
pub struct RetentionSpec {
    /// Keep the newest N.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub keep_last: Option<u32>,
    /// Keep the newest of each of the N most recent days (UTC) that have a backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub keep_daily: Option<u32>,
    /// Keep the newest of each of the N most recent ISO weeks that have a backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub keep_weekly: Option<u32>,
    /// Keep every backup taken within this long before the newest (`168h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_within: Option<GoDuration>,
}

/// What the schedule did last.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScheduledBackupStatus {
    /// When the last Backup was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<jiff::Timestamp>,
    /// When the next one is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<jiff::Timestamp>,
    /// The last Backup created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<String>,
    /// The backup id of the last Backup that completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_backup_id: Option<String>,
    /// The last retention run, as the BackupRepository reports it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_retention: Option<RetentionResult>,
    /// `Ready`: the schedule parses and its last Backup did not fail.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// One retention run: what was kept, deleted, and spared because a recovery uses it.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RetentionResult {
    /// When it ran.
    pub time: jiff::Timestamp,
    /// The ScheduledBackup whose policy ran (`<namespace>/<name>`).
    pub scheduled_backup: String,
    /// Backup ids the policy keeps, newest first.
    #[serde(default)]
    pub kept: Vec<String>,
    /// Backup ids deleted.
    #[serde(default)]
    pub deleted: Vec<String>,
    /// Backup ids the policy would delete but a lease holds (a recovery or publish uses them).
    #[serde(default)]
    pub in_use: Vec<String>,
    /// Chunks the following garbage collection deleted.
    #[serde(default)]
    pub chunks_deleted: u64,
    /// Bytes of the chunks it deleted, as stored.
    #[serde(default)]
    pub bytes_freed: u64,
}
