//! The agent's decisions, free of I/O: what to do with a RecoveryMount given what the cluster
//! says and what this process holds, the status that answers it, and how failures are
//! classified.

use ir_api::crd::{BackupRepositorySpec, MountPhase, RecoveryMountStatus};
use ir_repository::RepoError;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::MountError;

/// What this process knows of a mount of the RecoveryMount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalMount {
    /// Nothing mounted by this process (first sight, or after an agent restart).
    None,
    /// Mounted by this process at `mounted_at` and still a FUSE mount.
    Alive { mounted_at: Timestamp },
    /// Mounted by this process, but the mount is gone (unmounted behind our back).
    Dead,
    /// This process answered this attempt with a failure (the watch may not show it yet).
    Failed { attempt: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Serving since `mounted_at`: report fresh figures for the current attempt. A new attempt
    /// asked while the mount is healthy is answered without remounting, which would stop
    /// PostgreSQL.
    Refresh { mounted_at: Timestamp },
    /// Mount (again): first time, after an agent restart (same IRCache, new session), after
    /// the mount was lost, or for a new attempt after a failure.
    Mount,
    /// The failure of this attempt stands until the operator bumps `spec.attempt`.
    KeepFailed,
}

pub fn decide(
    spec_attempt: u32,
    status: Option<&RecoveryMountStatus>,
    local: LocalMount,
) -> Decision {
    match local {
        LocalMount::Alive { mounted_at } => Decision::Refresh { mounted_at },
        LocalMount::Dead => Decision::Mount,
        LocalMount::Failed { attempt } if attempt == spec_attempt => Decision::KeepFailed,
        LocalMount::Failed { .. } => Decision::Mount,
        LocalMount::None => match status {
            Some(s) if s.phase == MountPhase::Failed && s.attempt == spec_attempt => {
                Decision::KeepFailed
            }
            _ => Decision::Mount,
        },
    }
}

/// Why an attempt failed, as the status reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// CamelCase cause.
    pub reason: &'static str,
    pub message: String,
    /// Whether a new attempt may succeed without a change to the spec.
    pub transient: bool,
}

impl Failure {
    pub fn permanent(reason: &'static str, message: impl Into<String>) -> Self {
        Failure {
            reason,
            message: message.into(),
            transient: false,
        }
    }

    pub fn transient(reason: &'static str, message: impl Into<String>) -> Self {
        Failure {
            reason,
            message: message.into(),
            transient: true,
        }
    }

    /// The failure with the repository field it is about in front of its message: `spec` is
    /// where the repository's settings are (`spec` of a BackupRepository, `spec.repository` of
    /// a RecoveryMount). Failures about no one field are left as they are.
    pub fn naming(mut self, spec: &str) -> Self {
        let field = match self.reason {
            PATH_NOT_ALLOWED => "url",
            CREDENTIALS_REQUIRED => "credentialsSecret",
            AMBIENT_CREDENTIALS_NOT_ALLOWED => "s3.useAmbientCredentials",
            _ => return self,
        };
        self.message = format!("{spec}.{field}: {}", self.message);
        self
    }
}

/// A `file://` repository outside the directories the installation allows.
pub const PATH_NOT_ALLOWED: &str = "RepositoryPathNotAllowed";
/// An S3 repository without a credentials Secret that did not opt in to ambient credentials.
pub const CREDENTIALS_REQUIRED: &str = "CredentialsRequired";
/// An S3 repository that opted in to ambient credentials where the installation lends none.
pub const AMBIENT_CREDENTIALS_NOT_ALLOWED: &str = "AmbientCredentialsNotAllowed";

/// Whether the repository is to be read with the process's own S3 credentials: only an `s3://`
/// repository without a credentials Secret that opts in (`s3.useAmbientCredentials`), where the
/// process allows it (`allowed`). Any other S3 repository without a Secret is refused, so that
/// a repository never borrows the operator's or an agent's identity by default.
pub fn ambient_credentials(
    spec: &BackupRepositorySpec,
    has_secret: bool,
    allowed: bool,
) -> Result<bool, Failure> {
    if !spec.url.starts_with("s3://") || has_secret {
        return Ok(false);
    }
    let opted_in = spec
        .s3
        .as_ref()
        .is_some_and(|s3| s3.use_ambient_credentials);
    if !opted_in {
        return Err(Failure::permanent(
            CREDENTIALS_REQUIRED,
            format!(
                "{} needs a credentials Secret (keys AWS_ACCESS_KEY_ID and \
                 AWS_SECRET_ACCESS_KEY); to read it with the installation's own credentials \
                 instead, set s3.useAmbientCredentials: true where the installation allows it",
                spec.url
            ),
        ));
    }
    if !allowed {
        return Err(Failure::permanent(
            AMBIENT_CREDENTIALS_NOT_ALLOWED,
            format!(
                "{} asks for the installation's own S3 credentials, which this installation \
                 does not lend (chart value repositories.allowAmbientCredentials, flag \
                 --allow-ambient-credentials); name a credentials Secret instead",
                spec.url
            ),
        ));
    }
    Ok(true)
}

/// A repository error while opening it or reading the backup's manifest. The operator reports
/// its own repository errors through this too.
pub fn repo_failure(e: &RepoError) -> Failure {
    if e.is_transient() {
        return Failure::transient("RepositoryUnavailable", e.to_string());
    }
    let reason = match e {
        RepoError::BackupNotFound { .. } | RepoError::NoBackups { .. } => "BackupNotFound",
        RepoError::InvalidObject { .. } | RepoError::InvalidManifest { .. } => "CorruptManifest",
        RepoError::NotARepository { .. } => "NotARepository",
        RepoError::UnsupportedFormat { .. } => "UnsupportedRepositoryFormat",
        RepoError::InvalidUrl { .. } | RepoError::InvalidBackupId { .. } => "InvalidSpec",
        RepoError::PathNotAllowed { .. } => PATH_NOT_ALLOWED,
        RepoError::NoCredentials { .. } => CREDENTIALS_REQUIRED,
        _ => "RepositoryError",
    };
    Failure::permanent(reason, e.to_string())
}

pub fn mount_failure(e: &MountError) -> Failure {
    match e {
        // Another process still holds the IRCache (an agent on its way out): it lets go soon.
        MountError::CacheBusy(_) => Failure::transient("CacheBusy", e.to_string()),
        MountError::Cache(..) | MountError::Fs(_) => {
            Failure::permanent("CacheError", e.to_string())
        }
        MountError::MountPoint(..) => Failure::permanent("MountPointError", e.to_string()),
        MountError::Fuse(..) => Failure::permanent("FuseUnavailable", e.to_string()),
    }
}

/// Figures about the IRCache the status carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheFigures {
    pub used_bytes: u64,
    pub free_bytes: Option<u64>,
}

/// The condition type the status keeps.
pub const MOUNTED_CONDITION: &str = "Mounted";

/// `lastTransitionTime` moves only when the condition's status does.
fn mounted_condition(
    mounted: bool,
    reason: &str,
    message: String,
    previous: Option<&RecoveryMountStatus>,
    now: Timestamp,
) -> Condition {
    let status = if mounted { "True" } else { "False" };
    let since = previous
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == MOUNTED_CONDITION))
        .filter(|c| c.status == status)
        .map_or(Time(now), |c| c.last_transition_time.clone());
    Condition {
        type_: MOUNTED_CONDITION.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        last_transition_time: since,
        observed_generation: None,
    }
}

/// A mount of `attempt` is under way.
pub fn pending_status(
    attempt: u32,
    mount_path: &str,
    cache: CacheFigures,
    previous: Option<&RecoveryMountStatus>,
    now: Timestamp,
) -> RecoveryMountStatus {
    RecoveryMountStatus {
        phase: MountPhase::Pending,
        attempt,
        mount_path: Some(mount_path.to_owned()),
        cache_used_bytes: cache.used_bytes,
        cache_free_bytes: cache.free_bytes,
        conditions: vec![mounted_condition(
            false,
            "Mounting",
            format!("mounting at {mount_path}"),
            previous,
            now,
        )],
        ..Default::default()
    }
}

/// Serving at `mount_path` since `mounted_at`, having read `bytes_fetched` from the repository.
pub fn mounted_status(
    attempt: u32,
    mount_path: &str,
    mounted_at: Timestamp,
    bytes_fetched: u64,
    cache: CacheFigures,
    previous: Option<&RecoveryMountStatus>,
    now: Timestamp,
) -> RecoveryMountStatus {
    RecoveryMountStatus {
        phase: MountPhase::Mounted,
        attempt,
        mount_path: Some(mount_path.to_owned()),
        mounted_at: Some(mounted_at),
        bytes_fetched,
        cache_used_bytes: cache.used_bytes,
        cache_free_bytes: cache.free_bytes,
        conditions: vec![mounted_condition(
            true,
            "Mounted",
            format!("mounted at {mount_path}"),
            previous,
            now,
        )],
        ..Default::default()
    }
}

pub fn failed_status(
    attempt: u32,
    failure: &Failure,
    cache: CacheFigures,
    previous: Option<&RecoveryMountStatus>,
    now: Timestamp,
) -> RecoveryMountStatus {
    RecoveryMountStatus {
        phase: MountPhase::Failed,
        attempt,
        cache_used_bytes: cache.used_bytes,
        cache_free_bytes: cache.free_bytes,
        reason: Some(failure.reason.to_owned()),
        message: Some(failure.message.clone()),
        transient: failure.transient,
        conditions: vec![mounted_condition(
            false,
            failure.reason,
            failure.message.clone(),
            previous,
            now,
        )],
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn status(phase: MountPhase, attempt: u32) -> RecoveryMountStatus {
        RecoveryMountStatus {
            phase,
            attempt,
            ..Default::default()
        }
    }

    #[test]
    fn mounts_what_it_does_not_hold() {
        assert_eq!(decide(0, None, LocalMount::None), Decision::Mount);
        let pending = status(MountPhase::Pending, 0);
        assert_eq!(decide(0, Some(&pending), LocalMount::None), Decision::Mount);
        // After an agent restart: the status says Mounted, but this process holds nothing.
        let mounted = status(MountPhase::Mounted, 3);
        assert_eq!(decide(3, Some(&mounted), LocalMount::None), Decision::Mount);
    }

    #[test]
    fn a_failure_stands_until_the_next_attempt() {
        let failed = status(MountPhase::Failed, 2);
        assert_eq!(
            decide(2, Some(&failed), LocalMount::None),
            Decision::KeepFailed
        );
        assert_eq!(decide(3, Some(&failed), LocalMount::None), Decision::Mount);
        // Our own answer counts before the watch brings it back.
        let pending = status(MountPhase::Pending, 2);
        let answered = LocalMount::Failed { attempt: 2 };
        assert_eq!(decide(2, Some(&pending), answered), Decision::KeepFailed);
        assert_eq!(decide(3, Some(&pending), answered), Decision::Mount);
    }

    #[test]
    fn a_held_mount_is_refreshed_or_remounted_when_lost() {
        let mounted = status(MountPhase::Mounted, 1);
        let mounted_at: Timestamp = "2025-01-01T00:00:00Z".parse().unwrap();
        let alive = LocalMount::Alive { mounted_at };
        assert_eq!(
            decide(1, Some(&mounted), alive),
            Decision::Refresh { mounted_at }
        );
        // A new attempt while healthy: answered, not remounted.
        assert_eq!(
            decide(2, Some(&mounted), alive),
            Decision::Refresh { mounted_at }
        );
        assert_eq!(decide(1, Some(&mounted), LocalMount::Dead), Decision::Mount);
        let failed = status(MountPhase::Failed, 1);
        assert_eq!(decide(1, Some(&failed), LocalMount::Dead), Decision::Mount);
    }

    #[test]
    fn repository_errors_are_classified() {
        let missing = RepoError::BackupNotFound {
            id: "20240101-000000-abcd".into(),
            url: "file:///repo".into(),
        };
        let f = repo_failure(&missing);
        assert_eq!((f.reason, f.transient), ("BackupNotFound", false));
        assert!(f.message.contains("20240101-000000-abcd"), "{}", f.message);

        let corrupt = RepoError::InvalidObject {
            url: "file:///repo".into(),
            path: "backups/x.json.zst".into(),
            reason: "bad zstd".into(),
        };
        let f = repo_failure(&corrupt);
        assert_eq!((f.reason, f.transient), ("CorruptManifest", false));
        assert!(f.message.contains("backups/x.json.zst"), "{}", f.message);

        let down = RepoError::Unavailable {
            id: ir_repository::ChunkId::of(b"x"),
            url: "s3://b".into(),
            waited: Duration::from_secs(30),
            last: "connection refused".into(),
        };
        let f = repo_failure(&down);
        assert_eq!((f.reason, f.transient), ("RepositoryUnavailable", true));

        let url = || "s3://bucket/repo".to_owned();
        let cases = [
            (
                RepoError::NotARepository { url: url() },
                "NotARepository",
                false,
            ),
            (
                RepoError::UnsupportedFormat {
                    url: url(),
                    found: 2,
                    supported: 1,
                },
                "UnsupportedRepositoryFormat",
                false,
            ),
            (
                RepoError::NoBackups {
                    url: url(),
                    invalid: 0,
                },
                "BackupNotFound",
                false,
            ),
            (
                RepoError::InvalidUrl {
                    url: "nope://".into(),
                    reason: "unknown scheme".into(),
                },
                "InvalidSpec",
                false,
            ),
            (
                RepoError::InvalidBackupId { id: "a/b".into() },
                "InvalidSpec",
                false,
            ),
            (
                RepoError::MissingChunk {
                    id: ir_repository::ChunkId::of(b"y"),
                    url: url(),
                },
                "RepositoryError",
                false,
            ),
        ];
        for (error, reason, transient) in cases {
            let f = repo_failure(&error);
            assert_eq!((f.reason, f.transient), (reason, transient), "{error}");
            assert_eq!(f.message, error.to_string());
        }
    }

    #[test]
    fn repositories_out_of_bounds_are_refused_naming_the_field() {
        let f = repo_failure(&RepoError::PathNotAllowed {
            url: "file:///etc".into(),
            reason: "file:// repositories are allowed only under /srv/repos".into(),
        })
        .naming("spec.repository");
        assert_eq!((f.reason, f.transient), ("RepositoryPathNotAllowed", false));
        assert!(
            f.message.starts_with("spec.repository.url: ") && f.message.contains("/srv/repos"),
            "{}",
            f.message
        );
        let f = repo_failure(&RepoError::NoCredentials {
            url: "s3://b/p".into(),
        })
        .naming("spec");
        assert_eq!((f.reason, f.transient), ("CredentialsRequired", false));
        assert!(
            f.message.starts_with("spec.credentialsSecret: "),
            "{}",
            f.message
        );
        // Other failures name no repository field.
        let f = repo_failure(&RepoError::NoBackups {
            url: "s3://b".into(),
            invalid: 0,
        })
        .naming("spec");
        assert!(!f.message.starts_with("spec"), "{}", f.message);
    }

    #[test]
    fn s3_without_a_secret_needs_the_opt_in_and_the_installations_consent() {
        let repo = |json| serde_json::from_value::<BackupRepositorySpec>(json).unwrap();
        let bare = repo(serde_json::json!({"url": "s3://bucket/prefix"}));
        let opted = repo(serde_json::json!({
            "url": "s3://bucket/prefix", "s3": {"useAmbientCredentials": true}
        }));
        let file = repo(serde_json::json!({"url": "file:///srv/repos/a"}));

        let f = ambient_credentials(&bare, false, true)
            .unwrap_err()
            .naming("spec");
        assert_eq!((f.reason, f.transient), ("CredentialsRequired", false));
        assert!(
            f.message
                .starts_with("spec.credentialsSecret: s3://bucket/prefix"),
            "{}",
            f.message
        );
        let f = ambient_credentials(&opted, false, false)
            .unwrap_err()
            .naming("spec.repository");
        assert_eq!(f.reason, "AmbientCredentialsNotAllowed");
        assert!(
            f.message
                .starts_with("spec.repository.s3.useAmbientCredentials: "),
            "{}",
            f.message
        );
        assert_eq!(ambient_credentials(&opted, false, true), Ok(true));
        // A Secret is used as it is, nothing from the environment.
        assert_eq!(ambient_credentials(&bare, true, true), Ok(false));
        assert_eq!(ambient_credentials(&opted, true, true), Ok(false));
        assert_eq!(ambient_credentials(&file, false, false), Ok(false));
    }

    #[test]
    fn mount_errors_are_classified() {
        let busy = MountError::CacheBusy("/c".into());
        assert!(mount_failure(&busy).transient);
        let fuse = MountError::Fuse("/m".into(), std::io::Error::from_raw_os_error(libc::ENODEV));
        let f = mount_failure(&fuse);
        assert_eq!((f.reason, f.transient), ("FuseUnavailable", false));
    }

    #[test]
    fn statuses_carry_what_the_operator_reads() {
        let t0: Timestamp = "2025-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2025-01-01T00:01:00Z".parse().unwrap();
        let t2: Timestamp = "2025-01-01T00:02:00Z".parse().unwrap();
        let cache = CacheFigures {
            used_bytes: 10,
            free_bytes: Some(1000),
        };
        let pending = pending_status(1, "/m/ns-a", cache, None, t0);
        assert_eq!(pending.phase, MountPhase::Pending);
        assert_eq!(pending.conditions[0].status, "False");

        let mounted = mounted_status(1, "/m/ns-a", t1, 4096, cache, Some(&pending), t1);
        assert_eq!(mounted.phase, MountPhase::Mounted);
        assert_eq!(mounted.mounted_at, Some(t1));
        assert_eq!(mounted.mount_path.as_deref(), Some("/m/ns-a"));
        assert_eq!(mounted.bytes_fetched, 4096);
        assert_eq!(mounted.cache_free_bytes, Some(1000));
        assert_eq!(mounted.conditions[0].status, "True");
        assert_eq!(mounted.conditions[0].last_transition_time, Time(t1));
        assert_eq!(mounted.reason, None);

        // A refresh keeps the time of the transition.
        let refreshed = mounted_status(1, "/m/ns-a", t1, 8192, cache, Some(&mounted), t2);
        assert_eq!(refreshed.conditions[0].last_transition_time, Time(t1));

        let failure = Failure::transient("RepositoryUnavailable", "s3://b did not answer");
        let failed = failed_status(2, &failure, cache, Some(&mounted), t2);
        assert_eq!(failed.phase, MountPhase::Failed);
        assert_eq!(failed.attempt, 2);
        assert!(failed.transient);
        assert_eq!(failed.reason.as_deref(), Some("RepositoryUnavailable"));
        assert_eq!(failed.mount_path, None);
        assert_eq!(failed.conditions[0].reason, "RepositoryUnavailable");
        assert_eq!(failed.conditions[0].last_transition_time, Time(t2));
    }
}
