//! Where the repository is: the flags every repository command takes, the [`RepoSpec`] they
//! name (which `irctl recover` records), and the same flags made again from it.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use ir_repository::{
    Credentials, DEFAULT_READ_DEADLINE, RepoError, RepoKey, RepoLocation, Repository, Secret,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Args)]
pub struct RepoArgs {
    /// Repository URL: file:///abs/path (or /abs/path) or s3://bucket/prefix.
    #[arg(long, env = "IR_REPO", value_name = "URL")]
    pub repo: String,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// How to reach a repository's storage.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// S3 endpoint URL, for S3-compatible servers (default: AWS_ENDPOINT_URL or AWS).
    #[arg(long, value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// S3 region (default: AWS_REGION).
    #[arg(long, value_name = "REGION")]
    pub s3_region: Option<String>,
    /// Allow plain http to the S3 endpoint.
    #[arg(long)]
    pub s3_allow_http: bool,
    /// How long one read of backup data may keep retrying an unreachable repository before it
    /// fails (EIO on a mount), in seconds. Default: 30.
    #[arg(long, value_name = "SECONDS")]
    pub read_deadline: Option<u64>,
    /// Key file of an encrypted repository: its content (a passphrase or random bytes, one
    /// trailing newline left out) is the key. Without it the key is the password in
    /// IR_REPO_PASSWORD, which is never a flag (it would show in the process list).
    #[arg(long, env = "IR_REPO_KEY_FILE", value_name = "PATH")]
    pub key_file: Option<PathBuf>,
}

pub use ir_repository::PASSWORD_ENV;

impl StoreArgs {
    /// The repository at `url` as these flags name it, which is also what `irctl recover`
    /// records; [`RepoSpec::location`] says how it is reached.
    pub fn repo_spec(&self, url: &str) -> RepoSpec {
        RepoSpec {
            url: url.to_owned(),
            s3_endpoint: self.s3_endpoint.clone(),
            s3_region: self.s3_region.clone(),
            // Unset leaves the choice to AWS_ALLOW_HTTP.
            allow_http: self.s3_allow_http.then_some(true),
            read_deadline_secs: self
                .read_deadline
                .unwrap_or(DEFAULT_READ_DEADLINE.as_secs()),
            // Absolute: the irctl processes this one starts may run elsewhere.
            key_file: self
                .key_file
                .as_ref()
                .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone())),
        }
    }
}

impl RepoArgs {
    pub fn location(&self) -> RepoLocation {
        self.store.repo_spec(&self.repo).location()
    }

    pub async fn open(&self) -> Result<Repository, RepoError> {
        Repository::open(&self.location()).await
    }
}

/// Where the backup is, as the command line names a repository (its flags, `irctl repo`,
/// `backup` and `mount` alike) and `irctl recover` records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RepoSpec {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_http: Option<bool>,
    pub read_deadline_secs: u64,
    /// The key file of an encrypted repository; a password is never recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

impl RepoSpec {
    /// How the command line reaches the repository: with its user's own AWS settings and
    /// credentials, anywhere on the file system, and the key file, or else the password in
    /// [`PASSWORD_ENV`] (an empty one is none).
    pub fn location(&self) -> RepoLocation {
        let key = match &self.key_file {
            Some(path) => RepoKey::File(path.clone()),
            None => match std::env::var_os(PASSWORD_ENV) {
                Some(password) if !password.is_empty() => {
                    RepoKey::Password(Secret::new(password.into_vec()))
                }
                _ => RepoKey::None,
            },
        };
        RepoLocation {
            url: self.url.clone(),
            s3_endpoint: self.s3_endpoint.clone(),
            s3_region: self.s3_region.clone(),
            allow_http: self.allow_http,
            credentials: Credentials::Ambient,
            file_roots: None,
            read_deadline: Duration::from_secs(self.read_deadline_secs),
            key,
        }
    }
}

/// `--name=value`: one argument, so that a value starting with `-` is not taken for a flag.
pub(crate) fn flag(name: &str, value: impl AsRef<OsStr>) -> OsString {
    let mut arg = OsString::from(name);
    arg.push("=");
    arg.push(value);
    arg
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        repo: RepoArgs,
    }

    fn location(flags: &[&str]) -> RepoLocation {
        let args = ["irctl", "--repo", "s3://bucket/prefix"]
            .iter()
            .chain(flags);
        Command::try_parse_from(args).unwrap().repo.location()
    }

    #[test]
    fn flags_name_the_repository_and_the_users_own_credentials_reach_it() {
        let given = location(&[
            "--s3-endpoint",
            "http://127.0.0.1:9000",
            "--s3-region",
            "eu-west-1",
            "--s3-allow-http",
            "--read-deadline",
            "5",
        ]);
        assert_eq!(
            given,
            RepoLocation {
                url: "s3://bucket/prefix".into(),
                s3_endpoint: Some("http://127.0.0.1:9000".into()),
                s3_region: Some("eu-west-1".into()),
                allow_http: Some(true),
                credentials: Credentials::Ambient,
                file_roots: None,
                read_deadline: Duration::from_secs(5),
                key: RepoKey::None,
            }
        );
        // Left out: AWS_ALLOW_HTTP, AWS_ENDPOINT_URL and AWS_REGION decide; the default wait.
        assert_eq!(
            location(&[]),
            RepoLocation {
                credentials: Credentials::Ambient,
                ..RepoLocation::new("s3://bucket/prefix")
            }
        );
    }

    #[test]
    fn the_recorded_repository_is_reached_as_the_flags_named_it() {
        let flags = [
            "--s3-endpoint",
            "http://127.0.0.1:9000",
            "--s3-allow-http",
            "--key-file",
            "/etc/ir/key",
        ];
        let args = ["irctl", "--repo", "s3://bucket/prefix"]
            .iter()
            .chain(&flags);
        let repo = Command::try_parse_from(args).unwrap().repo;
        let spec = repo.store.repo_spec(&repo.repo);
        // The form recovery.json holds: workdirs written before still load.
        let recorded = serde_json::json!({
            "url": "s3://bucket/prefix",
            "s3Endpoint": "http://127.0.0.1:9000",
            "allowHttp": true,
            "readDeadlineSecs": 30,
            "keyFile": "/etc/ir/key",
        });
        assert_eq!(serde_json::to_value(&spec).unwrap(), recorded);
        let loaded: RepoSpec = serde_json::from_value(recorded).unwrap();
        assert_eq!(loaded.location(), repo.location());
        assert_eq!(loaded.location().key, RepoKey::File("/etc/ir/key".into()));
        assert!(
            loaded
                .location()
                .cli_args()
                .contains(&"--key-file=/etc/ir/key".to_owned())
        );

        let bare: RepoSpec = serde_json::from_value(serde_json::json!({
            "url": "/srv/repo", "readDeadlineSecs": 7,
        }))
        .unwrap();
        assert_eq!(
            bare.location(),
            RepoLocation {
                credentials: Credentials::Ambient,
                read_deadline: Duration::from_secs(7),
                ..RepoLocation::new("/srv/repo")
            }
        );
    }
}
