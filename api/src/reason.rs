//! Every reason a status, a condition or an Event of ours can carry, in one enum: its name
//! (stable: programs, GitOps health checks and docs match on it), whether a failure with it is
//! retried, and a one-line explanation. docs/troubleshooting.md explains each at length; a test
//! checks that its table lists exactly these, with these classes, and `crdgen` writes the list
//! into the CRDs for `kubectl explain`.

use std::fmt;
use std::str::FromStr;

/// What a reason says about the recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Not a failure: the recovery moves on, or something notable happened.
    Progress,
    /// A failure that waiting may cure: the step is retried (phase Waiting).
    Transient,
    /// A failure that needs a person: the recovery fails at once.
    Permanent,
    /// Relayed from the node agent, which says itself whether it is transient.
    Relayed,
}

macro_rules! reasons {
    ($($name:ident: $class:ident, $text:literal;)*) => {
        /// Why a recovery, a RecoveryMount or a BackupRepository is where it is.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Reason {
            $(#[doc = $text] $name,)*
        }

        impl Reason {
            /// Every reason, in the order of docs/troubleshooting.md.
            pub const ALL: &'static [Reason] = &[$(Reason::$name,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$name => stringify!($name),)*
                }
            }

            pub fn class(self) -> Class {
                match self {
                    $(Reason::$name => Class::$class,)*
                }
            }

            /// One line on what it means (docs/troubleshooting.md has the rest).
            pub fn explanation(self) -> &'static str {
                match self {
                    $(Reason::$name => $text,)*
                }
            }
        }
    };
}

reasons! {
    // Progress of a recovery, in the order it meets them.
    Started: Progress, "The operator took the recovery up and checks the backup, the Secrets, the image, the target size and the node.";
    BackupValid: Progress, "Validation passed; status.backup names the backup.";
    Mounted: Progress, "The agent mounted the backup over its IRCache.";
    Published: Progress, "PostgreSQL answered its first query on the mount.";
    StandbyStreaming: Progress, "The standby holds a full copy and streams WAL.";
    CatchingUp: Progress, "The standby's lag is above spec.switchover.maxLagBytes.";
    StandbyNotStreaming: Progress, "The standby stopped streaming; no switchover starts until it streams again.";
    AwaitingApproval: Progress, "Manual: the switchover waits for spec.switchover.approved.";
    AwaitingSchedule: Progress, "Scheduled: the switchover waits for spec.switchover.at.";
    SwitchoverStarted: Progress, "The switchover runs.";
    Promoted: Progress, "The standby is the primary; the message gives the downtime.";
    Completed: Progress, "The target runs as the primary and the mount and IRCache are gone.";
    Retrying: Progress, "A retry of a transient failure started.";
    ManualRetry: Progress, "A manual retry started a new round of attempts.";
    RetriesExhausted: Permanent, "The retries of the round are used up; retry.lastError has the last failure's reason.";
    CleanupFailed: Transient, "After the switchover, housekeeping failed (unmount, IRCache, replication role); retried, the recovery stays Completed.";
    MountRenewed: Progress, "The agent mounted the backup again; the published instance restarts and recovers from the IRCache.";
    PublishReady: Progress, "Mode Publish: the backup serves from the mount; nothing is copied and no switchover follows.";
    ModeChanged: Progress, "A Publish became a Recover: the recovery goes on from the published instance to sync and switchover.";
    PublishExpired: Progress, "The publish's TTL ended: its instance, mount and IRCache are torn down.";
    Unpublished: Progress, "The publish was ended on request: its instance, mount and IRCache are torn down.";
    Aborted: Progress, "The recovery was aborted on request: its processes, mount, IRCache and partial target are torn down.";
    AbortRefused: Progress, "An abort or unpublish came after the switchover began: the target may be the primary, so nothing was torn down.";
    TeardownFailed: Transient, "Tearing down an unpublished or aborted recovery failed (a process, the mount, the IRCache); retried every retry interval.";
    PublishedRestarted: Progress, "A switchover failed after stopping the published instance and before any promotion; it serves again.";
    // Validation.
    RepositoryNotFound: Transient, "spec.backup.repositoryRef names no BackupRepository in the namespace.";
    SecretNotFound: Transient, "A Secret the spec names does not exist.";
    SecretKeyMissing: Permanent, "A Secret the spec names lacks a key.";
    RepositoryUnavailable: Transient, "The repository did not answer, or answered with a transient error.";
    BackupNotFound: Permanent, "No backup with that id (or none at all for latest).";
    UnsupportedBackup: Permanent, "The backup's manifest names a PostgreSQL version that is not understood.";
    RepositoryError: Permanent, "The repository answered with an error that is neither missing nor transient.";
    RepositoryPathNotAllowed: Permanent, "A file:// repository outside the directories the installation allows.";
    CredentialsRequired: Permanent, "An s3:// repository without a credentials Secret that does not opt in to ambient credentials.";
    AmbientCredentialsNotAllowed: Permanent, "An s3:// repository opts in to ambient credentials, which the installation does not lend.";
    InvalidSpec: Permanent, "A value the schema let through but that cannot work.";
    // Point in time.
    Replaying: Progress, "The published instance replays WAL from the repository up to the point in time.";
    TargetReached: Progress, "The published instance reached the point in time and was promoted.";
    PointInTimeBeforeBackup: Permanent, "The point in time lies before the consistency point of the backup (or of every backup).";
    PointInTimeNotArchived: Transient, "The point in time lies after the end of the WAL archived in the repository.";
    WalSegmentMissing: Permanent, "A WAL segment between the backup and the point in time is missing from the repository.";
    PointInTimeUnreached: Permanent, "PostgreSQL replayed all the WAL there is without reaching the point in time.";
    ImageMismatch: Permanent, "spec.postgres.image runs another PostgreSQL major version than the backup's.";
    TargetTooSmall: Permanent, "spec.target.size is smaller than the backup.";
    NodeNotFound: Transient, "spec.nodeName names no node.";
    AgentUnavailable: Transient, "No node runs a live agent, or the agent of the recovery's node stopped reporting.";
    InsufficientCacheSpace: Transient, "No node with an agent has spec.cache.sizeLimit free for the IRCache.";
    SwitchoverTimeMissing: Permanent, "spec.switchover.mode is Scheduled without spec.switchover.at.";
    KubernetesUnavailable: Transient, "An object the operator needs could not be read from the API server.";
    // Mount (the agent of the node).
    Mounting: Progress, "The agent mounts the backup.";
    InvalidCredentialsSecret: Permanent, "The repository's credentials Secret is missing on the agent's side, lacks a key, or a key is not text.";
    CorruptManifest: Permanent, "The backup's manifest (or ir-repo.json) is invalid: the repository is damaged or tampered with.";
    NotARepository: Permanent, "The URL holds no repository (no ir-repo.json).";
    UnsupportedRepositoryFormat: Permanent, "The repository has a format version this build does not read.";
    KeyRequired: Permanent, "The repository is encrypted and no password was given (BackupRepository spec.encryptionSecret, IR_REPO_PASSWORD, --key-file).";
    WrongKey: Permanent, "The password does not open the encrypted repository's key.";
    NotEncrypted: Permanent, "A password was given for a repository that is not encrypted.";
    InvalidKey: Permanent, "The password or key file is empty or cannot be read.";
    InvalidSizeLimit: Permanent, "The RecoveryMount's sizeLimit is not a quantity of bytes.";
    CacheTooSmall: Permanent, "The node's IRCache file system has less room than spec.cache.sizeLimit.";
    MountPointError: Permanent, "The agent could not prepare the mount point.";
    CacheBusy: Transient, "Another process still holds the IRCache.";
    AgentMemoryFull: Transient, "The node's agent has no room left in its memory budget for another mount.";
    CacheError: Permanent, "The IRCache could not be opened or created (damaged, foreign, or missing a file).";
    FuseUnavailable: Permanent, "The FUSE mount failed: no /dev/fuse, no fuse module, or an unprivileged agent.";
    MountFailed: Relayed, "The agent reported a failure without a reason.";
    NotValidated: Permanent, "The recovery has no validated backup in its status.";
    // Publish.
    PodCannotStart: Transient, "A container of the published or the target Pod cannot start.";
    MountPathInvalid: Permanent, "The RecoveryMount's status.mountPath is not a mount of that RecoveryMount.";
    PublishedInstanceExited: Transient, "PostgreSQL of the published instance exited.";
    AuthenticationFailed: Permanent, "The published instance turned the engine's login down.";
    DatabaseMissing: Permanent, "The database the engine connects to does not exist in the backup.";
    PostgresUnavailable: Transient, "A query on the published instance failed or its connection broke.";
    // Sync.
    ReplicationRoleMissing: Permanent, "The replication role does not exist in the backup or lacks REPLICATION or LOGIN.";
    BaseBackupFailed: Transient, "pg_basebackup of the standby failed.";
    // Switchover.
    SwitchoverFailed: Transient, "A step of the switchover failed or timed out; the published instance serves again.";
    PromotionUnconfirmed: Transient, "The switchover failed once the standby may have been promoted; the published instance stays stopped.";
    StandbyUnavailable: Transient, "The standby cannot be reached for the switchover.";
    // BackupRepository.
    Listed: Progress, "The repository answered; its backups are listed.";
    // Backup and ScheduledBackup.
    BackupPending: Progress, "The Backup's Job is created and waits to run.";
    BackupRunning: Progress, "The Backup's Job copies the cluster into the repository.";
    BackupCompleted: Progress, "The backup is in the repository; status.backupId names it.";
    BackupFailed: Permanent, "The Backup's Job failed; the message has the end of its log.";
    BackupNotInRepository: Permanent, "The Backup's Job succeeded but the repository holds no backup labelled with the Backup's uid.";
    InvalidSchedule: Permanent, "A ScheduledBackup's spec.schedule is not a cron expression.";
    Scheduled: Progress, "The ScheduledBackup waits for its next time.";
    Suspended: Progress, "The ScheduledBackup's spec.suspend is true.";
    RetentionFailed: Transient, "Pruning the schedule's backups or collecting their chunks failed; retried after the next backup.";
    // irctl recover.
    UnknownUser: Permanent, "--pg-user is not an OS user.";
    NotPermitted: Permanent, "irctl may not run PostgreSQL as --pg-user.";
    PortConflict: Permanent, "--published-port and --target-port are the same.";
    PortInUse: Permanent, "A port is taken.";
    PostgresBinariesMissing: Permanent, "No PostgreSQL binaries of the backup's major version.";
    InsufficientSpace: Permanent, "The target's or the workdir's file system lacks room.";
    TargetNotEmpty: Permanent, "--target-pgdata exists and is not empty.";
    TargetMissing: Permanent, "The parent directory of --target-pgdata does not exist.";
    TargetUnusable: Permanent, "--target-pgdata cannot be read or created.";
    TargetUnsafe: Permanent, "--target-pgdata is or lies below a symbolic link.";
    TargetReplaced: Permanent, "--target-pgdata no longer leads to the directory the recovery made.";
    WorkdirNotEmpty: Permanent, "--workdir holds other files and no recovery.";
    WorkdirUnsafe: Permanent, "--workdir is a symbolic link, another user's, or below a directory another user could change.";
    MountTimeout: Transient, "The mount did not appear in time.";
    MountLost: Transient, "The mount died.";
    StartFailed: Permanent, "PostgreSQL refused to start.";
    StartTimeout: Transient, "PostgreSQL did not answer in time.";
    ReadWriteRestoreFailed: Transient, "After a failed switchover, making the published instance writable again failed.";
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a reason")]
pub struct UnknownReason(pub String);

impl FromStr for Reason {
    type Err = UnknownReason;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reason::ALL
            .iter()
            .copied()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownReason(s.to_owned()))
    }
}

/// Reasons compare with their names as they appear in statuses.
impl PartialEq<&str> for Reason {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<str> for Reason {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<Reason> for String {
    fn eq(&self, other: &Reason) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<Reason> for &str {
    fn eq(&self, other: &Reason) -> bool {
        *self == other.as_str()
    }
}

/// Schema of a `reason` field: a string, described by `lead` and the list of every reason, so
/// that `kubectl explain` shows them all.
pub(crate) fn reason_schema(lead: &str, nullable: bool) -> schemars::Schema {
    let description = format!("{lead} One of:\n{}", reasons_for_explain());
    let mut schema = schemars::json_schema!({
        "type": "string",
        "description": description,
    });
    if nullable {
        schema.insert("nullable".into(), true.into());
    }
    schema
}

/// The reasons as `kubectl explain` lists them under a `reason` field.
pub fn reasons_for_explain() -> String {
    Reason::ALL
        .iter()
        .map(|r| {
            let class = match r.class() {
                Class::Progress => "",
                Class::Transient => " (retried)",
                Class::Permanent => " (permanent: not retried)",
                Class::Relayed => " (as the agent says)",
            };
            format!("{r}{class}: {}", r.explanation())
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            assert!(seen.insert(r.as_str()), "{r} twice");
            assert_eq!(r.as_str().parse::<Reason>(), Ok(*r));
            assert!(r.explanation().ends_with('.'), "{r}");
        }
        assert!("Nope".parse::<Reason>().is_err());
    }
}
