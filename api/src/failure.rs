//! One failure type for the engine, its two drivers and the node agent.

use ir_repository::RepoError;

use crate::reason::{Class, Reason};

/// Why a step failed: its reason, whether retrying may cure it, and what happened, naming the
/// field or the thing at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: Reason,
    pub transient: bool,
    pub message: String,
}

impl Failure {
    /// A failure with `reason`; whether it is retried is the reason's class.
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        debug_assert!(
            matches!(reason.class(), Class::Transient | Class::Permanent),
            "{reason} is not a failure's reason"
        );
        Failure {
            reason,
            transient: reason.class() == Class::Transient,
            message: message.into(),
        }
    }

    /// A failure another component reported with its own say on whether it is transient (the
    /// node agent in a RecoveryMount's status).
    pub fn relayed(reason: Reason, transient: bool, message: impl Into<String>) -> Self {
        Failure {
            reason,
            transient,
            message: message.into(),
        }
    }

    /// A [`Reason::PromotionUnconfirmed`] failure: `why` the published instance must stay
    /// stopped.
    pub fn promotion_unconfirmed(message: &str, why: &str) -> Self {
        Self::new(
            Reason::PromotionUnconfirmed,
            format!(
                "{message}; the published instance stays stopped: {why}; the retry resumes the \
                 switchover"
            ),
        )
    }

    /// The failure with the repository field it is about in front of its message: `spec` is
    /// where the repository's settings are (`spec` of a BackupRepository, `spec.repository` of
    /// a RecoveryMount). Failures about no one field, or that name it already, are left as
    /// they are.
    pub fn naming(mut self, spec: &str) -> Self {
        let field = match self.reason {
            Reason::RepositoryPathNotAllowed => "url",
            Reason::CredentialsRequired => "credentialsSecret",
            Reason::AmbientCredentialsNotAllowed => "s3.useAmbientCredentials",
            Reason::KeyRequired | Reason::WrongKey | Reason::NotEncrypted | Reason::InvalidKey => {
                "encryptionSecret"
            }
            _ => return self,
        };
        let field = format!("{spec}.{field}");
        if !self.message.starts_with(&field) {
            self.message = format!("{field}: {}", self.message);
        }
        self
    }
}

impl From<&RepoError> for Failure {
    /// A repository fault reads the same wherever it shows: validation, the agent's mount, the
    /// BackupRepository's status.
    fn from(e: &RepoError) -> Self {
        if e.is_transient() {
            return Failure::new(Reason::RepositoryUnavailable, e.to_string());
        }
        let reason = match e {
            RepoError::BackupNotFound { .. } | RepoError::NoBackups { .. } => {
                Reason::BackupNotFound
            }
            RepoError::InvalidObject { .. } | RepoError::InvalidManifest { .. } => {
                Reason::CorruptManifest
            }
            RepoError::NotARepository { .. } => Reason::NotARepository,
            RepoError::UnsupportedFormat { .. } => Reason::UnsupportedRepositoryFormat,
            RepoError::InvalidUrl { .. } | RepoError::InvalidBackupId { .. } => Reason::InvalidSpec,
            RepoError::PathNotAllowed { .. } => Reason::RepositoryPathNotAllowed,
            RepoError::NoCredentials { .. } => Reason::CredentialsRequired,
            RepoError::KeyRequired { .. } => Reason::KeyRequired,
            RepoError::WrongKey { .. } => Reason::WrongKey,
            RepoError::NotEncrypted { .. } => Reason::NotEncrypted,
            RepoError::InvalidKey { .. } => Reason::InvalidKey,
            _ => Reason::RepositoryError,
        };
        Failure::new(reason, e.to_string())
    }
}

impl From<RepoError> for Failure {
    fn from(e: RepoError) -> Self {
        Failure::from(&e)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn repository_errors_are_classified() {
        let missing = RepoError::BackupNotFound {
            id: "20240101-000000-abcd".into(),
            url: "file:///repo".into(),
        };
        let f = Failure::from(&missing);
        assert_eq!((f.reason, f.transient), (Reason::BackupNotFound, false));
        assert!(f.message.contains("20240101-000000-abcd"), "{}", f.message);

        let corrupt = RepoError::InvalidObject {
            url: "file:///repo".into(),
            path: "backups/x.json.zst".into(),
            reason: "bad zstd".into(),
        };
        let f = Failure::from(&corrupt);
        assert_eq!((f.reason, f.transient), (Reason::CorruptManifest, false));
        assert!(f.message.contains("backups/x.json.zst"), "{}", f.message);

        let down = RepoError::Unavailable {
            id: ir_repository::ChunkId::of(b"x"),
            url: "s3://b".into(),
            waited: Duration::from_secs(30),
            last: "connection refused".into(),
        };
        let f = Failure::from(&down);
        assert_eq!(
            (f.reason, f.transient),
            (Reason::RepositoryUnavailable, true)
        );

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
            let f = Failure::from(&error);
            assert_eq!(
                (f.reason.as_str(), f.transient),
                (reason, transient),
                "{error}"
            );
            assert_eq!(f.message, error.to_string());
        }
    }

    #[test]
    fn repositories_out_of_bounds_are_refused_naming_the_field() {
        let f = Failure::from(&RepoError::PathNotAllowed {
            url: "file:///etc".into(),
            reason: "file:// repositories are allowed only under /srv/repos".into(),
        })
        .naming("spec.repository");
        assert_eq!(
            (f.reason, f.transient),
            (Reason::RepositoryPathNotAllowed, false)
        );
        assert!(
            f.message.starts_with("spec.repository.url: ") && f.message.contains("/srv/repos"),
            "{}",
            f.message
        );
        let f = Failure::from(&RepoError::NoCredentials {
            url: "s3://b/p".into(),
        })
        .naming("spec");
        assert_eq!(
            (f.reason, f.transient),
            (Reason::CredentialsRequired, false)
        );
        assert!(
            f.message.starts_with("spec.credentialsSecret: "),
            "{}",
            f.message
        );
        let again = f.clone().naming("spec");
        assert_eq!(again.message, f.message, "named once");
        // Other failures name no repository field.
        let f = Failure::from(&RepoError::NoBackups {
            url: "s3://b".into(),
            invalid: 0,
        })
        .naming("spec");
        assert!(!f.message.starts_with("spec"), "{}", f.message);
    }
}
