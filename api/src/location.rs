//! Where a BackupRepository is, for the operator and the node agents alike: its spec, the key
//! pair of its credentials Secret and the installation's policy make one [`RepoLocation`].

use std::path::{Component, PathBuf};

use ir_repository::{Credentials, RepoKey, RepoLocation, S3Credentials, Secret};

use crate::crd::BackupRepositorySpec;
use crate::{Failure, Reason};

/// Default of `--file-roots` for the operator and the agent: the chart's
/// `repositories.fileRoots` default, inside the agent's default cache root.
pub const DEFAULT_FILE_ROOT: &str = "/var/lib/instant-recovery/repositories";

/// What an installation allows its repositories: the same for the operator and its agents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositoryPolicy {
    /// `file://` repositories must lie inside one of these directories; none: `file://` is
    /// refused.
    pub file_roots: Vec<PathBuf>,
    /// Whether a repository may opt in to the reading process's own S3 credentials
    /// (`s3.useAmbientCredentials`).
    pub allow_ambient_credentials: bool,
}

impl Default for RepositoryPolicy {
    fn default() -> Self {
        RepositoryPolicy {
            file_roots: vec![PathBuf::from(DEFAULT_FILE_ROOT)],
            allow_ambient_credentials: false,
        }
    }
}

/// The flags of [`RepositoryPolicy`], which `ir-operator` and `ir-agent` both take.
#[derive(Debug, Clone, clap::Args)]
pub struct RepositoryPolicyArgs {
    /// The only directories `file://` repositories may lie in (comma-separated); an empty
    /// value refuses every `file://` repository.
    #[arg(
        long,
        env = "IR_FILE_ROOTS",
        value_delimiter = ',',
        default_value = DEFAULT_FILE_ROOT
    )]
    pub file_roots: Vec<String>,
    /// Let a repository that opts in (`s3.useAmbientCredentials`) be read with this process's
    /// own S3 credentials (environment, instance profile, workload identity).
    #[arg(long, env = "IR_ALLOW_AMBIENT_CREDENTIALS")]
    pub allow_ambient_credentials: bool,
}

impl RepositoryPolicyArgs {
    /// The policy, or why `--file-roots` is refused: each root must be an absolute path
    /// without `.` or `..`; empty items are left out, so that an empty value allows no
    /// `file://` repository at all.
    pub fn policy(&self) -> Result<RepositoryPolicy, String> {
        let file_roots = self
            .file_roots
            .iter()
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
            .map(|v| {
                let path = PathBuf::from(v);
                let plain = path
                    .components()
                    .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
                if path.is_absolute() && plain {
                    Ok(path)
                } else {
                    Err(format!(
                        "--file-roots: {v:?} is not an absolute path without '.' or '..'"
                    ))
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(RepositoryPolicy {
            file_roots,
            allow_ambient_credentials: self.allow_ambient_credentials,
        })
    }
}

impl BackupRepositorySpec {
    /// How to reach this repository: its URL and S3 settings as written (`s3.allowHttp`
    /// decides plain http, whatever the process's environment says), `credentials` (the key
    /// pair of `credentialsSecret`, read by the caller) and the installation's `policy`:
    /// `file://` only inside its file roots, the process's own S3 credentials only for an
    /// `s3://` repository without a Secret that opts in (`s3.useAmbientCredentials`) where the
    /// policy allows it. Any other S3 repository without a Secret is refused, so that a
    /// repository never borrows the operator's or an agent's identity by default.
    ///
    /// `at` is where this spec is in its object (`spec` of a BackupRepository,
    /// `spec.repository` of a RecoveryMount): a refusal names the field at fault from there.
    ///
    /// `password` is the one of `encryptionSecret`, read by the caller too.
    pub fn location(
        &self,
        credentials: Option<S3Credentials>,
        password: Option<String>,
        policy: &RepositoryPolicy,
        at: &str,
    ) -> Result<RepoLocation, Failure> {
        let credentials = self
            .credentials(credentials, policy.allow_ambient_credentials)
            .map_err(|f| f.naming(at))?;
        let key = password.map_or(RepoKey::None, |p| {
            RepoKey::Password(Secret::new(p.into_bytes()))
        });
        Ok(RepoLocation {
            credentials,
            file_roots: Some(policy.file_roots.clone()),
            key,
            ..self.address()
        })
    }

    /// Where this repository is, as written: its URL, S3 settings and read deadline, without
    /// credentials or file roots (those are the reading process's to bring).
    pub fn address(&self) -> RepoLocation {
        let s3 = self.s3.clone().unwrap_or_default();
        RepoLocation {
            url: self.url.clone(),
            s3_endpoint: s3.endpoint,
            s3_region: s3.region,
            allow_http: Some(s3.allow_http),
            read_deadline: self.read_deadline.0,
            ..RepoLocation::new(&self.url)
        }
    }

    /// Whose credentials read the repository (see [`Self::location`]).
    fn credentials(
        &self,
        keys: Option<S3Credentials>,
        ambient_allowed: bool,
    ) -> Result<Credentials, Failure> {
        if let Some(keys) = keys {
            return Ok(Credentials::Keys(keys));
        }
        if !self.url.starts_with("s3://") {
            return Ok(Credentials::None);
        }
        let opted_in = self
            .s3
            .as_ref()
            .is_some_and(|s3| s3.use_ambient_credentials);
        if !opted_in {
            return Err(Failure::new(
                Reason::CredentialsRequired,
                format!(
                    "{} needs a credentials Secret (keys AWS_ACCESS_KEY_ID and \
                     AWS_SECRET_ACCESS_KEY); to read it with the installation's own credentials \
                     instead, set s3.useAmbientCredentials: true where the installation allows it",
                    self.url
                ),
            ));
        }
        if !ambient_allowed {
            return Err(Failure::new(
                Reason::AmbientCredentialsNotAllowed,
                format!(
                    "{} asks for the installation's own S3 credentials, which this installation \
                     does not lend (chart value repositories.allowAmbientCredentials, flag \
                     --allow-ambient-credentials); name a credentials Secret instead",
                    self.url
                ),
            ));
        }
        Ok(Credentials::Ambient)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;

    use super::*;

    fn spec(json: serde_json::Value) -> BackupRepositorySpec {
        serde_json::from_value(json).unwrap()
    }

    fn keys() -> S3Credentials {
        S3Credentials {
            access_key_id: "id".into(),
            secret_access_key: "secret".into(),
        }
    }

    fn policy(allow_ambient_credentials: bool) -> RepositoryPolicy {
        RepositoryPolicy {
            file_roots: vec!["/srv/repos".into()],
            allow_ambient_credentials,
        }
    }

    #[test]
    fn a_spec_and_its_secret_make_the_location() {
        let s3 = spec(serde_json::json!({
            "url": "s3://bucket/prefix",
            "s3": {"endpoint": "https://s3.example", "region": "eu-west-1"},
            "credentialsSecret": {"name": "keys"},
            "readDeadline": "5s",
        }));
        assert_eq!(
            s3.location(Some(keys()), None, &policy(false), "spec"),
            Ok(RepoLocation {
                url: "s3://bucket/prefix".into(),
                s3_endpoint: Some("https://s3.example".into()),
                s3_region: Some("eu-west-1".into()),
                allow_http: Some(false),
                credentials: Credentials::Keys(keys()),
                file_roots: Some(vec!["/srv/repos".into()]),
                read_deadline: Duration::from_secs(5),
                key: ir_repository::RepoKey::None,
            })
        );
        let file = spec(serde_json::json!({"url": "file:///srv/repos/a"}));
        let none = RepositoryPolicy {
            file_roots: Vec::new(),
            ..policy(true)
        };
        assert_eq!(
            file.location(None, None, &none, "spec"),
            Ok(RepoLocation {
                allow_http: Some(false),
                file_roots: Some(Vec::new()),
                ..RepoLocation::new("file:///srv/repos/a")
            })
        );
    }

    /// The operator and the agents read `s3.allowHttp` alike: as written, not left to the
    /// process's `AWS_ALLOW_HTTP` when it is false.
    #[test]
    fn allow_http_is_what_the_spec_says() {
        for (s3, allowed) in [
            (serde_json::json!({"allowHttp": true}), Some(true)),
            (serde_json::json!({"allowHttp": false}), Some(false)),
            (serde_json::json!({}), Some(false)),
            (serde_json::Value::Null, Some(false)),
        ] {
            let repo = spec(serde_json::json!({"url": "s3://bucket/prefix", "s3": s3.clone()}));
            for ambient in [true, false] {
                let location = repo.location(Some(keys()), None, &policy(ambient), "spec");
                assert_eq!(location.unwrap().allow_http, allowed, "{s3}");
            }
        }
    }

    #[test]
    fn s3_without_a_secret_needs_the_opt_in_and_the_installations_consent() {
        let bare = spec(serde_json::json!({"url": "s3://bucket/prefix"}));
        let opted = spec(serde_json::json!({
            "url": "s3://bucket/prefix", "s3": {"useAmbientCredentials": true}
        }));
        let file = spec(serde_json::json!({"url": "file:///srv/repos/a"}));
        let credentials = |repo: &BackupRepositorySpec, keys, allowed, at| {
            repo.location(keys, None, &policy(allowed), at)
                .map(|location| location.credentials)
        };

        let f = credentials(&bare, None, true, "spec").unwrap_err();
        assert_eq!(
            (f.reason, f.transient),
            (Reason::CredentialsRequired, false)
        );
        assert!(
            f.message
                .starts_with("spec.credentialsSecret: s3://bucket/prefix needs a credentials"),
            "{}",
            f.message
        );
        let f = credentials(&opted, None, false, "spec.repository").unwrap_err();
        assert_eq!(f.reason, Reason::AmbientCredentialsNotAllowed);
        assert!(
            f.message.starts_with(
                "spec.repository.s3.useAmbientCredentials: s3://bucket/prefix asks for"
            ),
            "{}",
            f.message
        );
        assert_eq!(
            credentials(&opted, None, true, "spec"),
            Ok(Credentials::Ambient)
        );
        // A Secret is used as it is, nothing from the environment.
        for repo in [&bare, &opted] {
            assert_eq!(
                credentials(repo, Some(keys()), true, "spec"),
                Ok(Credentials::Keys(keys()))
            );
        }
        assert_eq!(
            credentials(&file, None, false, "spec"),
            Ok(Credentials::None)
        );
    }

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        repositories: RepositoryPolicyArgs,
    }

    fn parse(flags: &[&str]) -> Result<RepositoryPolicy, String> {
        let args = Command::try_parse_from(std::iter::once(&"ir-agent").chain(flags)).unwrap();
        args.repositories.policy()
    }

    #[test]
    fn flags_make_the_policy() {
        assert_eq!(parse(&[]), Ok(RepositoryPolicy::default()));
        assert_eq!(
            parse(&[
                "--file-roots",
                "/srv/a, /srv/b,",
                "--allow-ambient-credentials"
            ]),
            Ok(RepositoryPolicy {
                file_roots: vec!["/srv/a".into(), "/srv/b".into()],
                allow_ambient_credentials: true,
            })
        );
        assert_eq!(
            parse(&["--file-roots", ""]).map(|p| p.file_roots),
            Ok(Vec::new())
        );
        for bad in ["srv/a", "/srv/../etc", "./srv"] {
            let err = parse(&["--file-roots", bad]).unwrap_err();
            assert!(
                err.starts_with(&format!("--file-roots: {bad:?} is not an absolute path")),
                "{err}"
            );
        }
    }
}
