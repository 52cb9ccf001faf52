//! Where a repository is and how to reach its storage.

use std::path::PathBuf;
use std::time::Duration;

use zeroize::Zeroizing;

use crate::error::RepoError;

/// How long one chunk read retries an unreachable repository when nothing else is said.
pub const DEFAULT_READ_DEADLINE: Duration = Duration::from_secs(30);

/// Where a repository is and how to reach it: what [`Repository::open`] and
/// [`Repository::init`] take. Each source of it builds one in one place: the command line's
/// flags and what `irctl recover` records (`irctl`), a BackupRepository's spec with the
/// installation's policy (`ir-api`, for the operator and the node agent alike).
///
/// [`Repository::open`]: crate::Repository::open
/// [`Repository::init`]: crate::Repository::init
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoLocation {
    /// `file:///absolute/path` (or `/absolute/path`) or `s3://bucket/prefix`.
    pub url: String,
    /// S3 endpoint URL, for S3-compatible servers.
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
    /// Plain http to the S3 endpoint. `None` leaves it to `AWS_ALLOW_HTTP` with
    /// [`Credentials::Ambient`], and off otherwise.
    pub allow_http: Option<bool>,
    pub credentials: Credentials,
    /// `file://` repositories are allowed only inside these directories; `None` allows any.
    pub file_roots: Option<Vec<PathBuf>>,
    /// Total retry budget for one chunk read before it fails as unavailable.
    pub read_deadline: Duration,
    /// What opens the repository if it is encrypted.
    pub key: RepoKey,
}

impl RepoLocation {
    /// The repository at `url`: no S3 settings, no credentials, any `file://` path, the
    /// default read deadline.
    pub fn new(url: impl Into<String>) -> RepoLocation {
        RepoLocation {
            url: url.into(),
            s3_endpoint: None,
            s3_region: None,
            allow_http: None,
            credentials: Credentials::None,
            file_roots: None,
            read_deadline: DEFAULT_READ_DEADLINE,
            key: RepoKey::None,
        }
    }

    /// The `irctl` flags that name this repository (`--repo`, `--read-deadline` in whole
    /// seconds, rounded up, and the S3 settings), each `--name=value` as one argument so that a
    /// value starting with `-` is not taken for a flag. `--s3-allow-http` only when plain http
    /// is asked for: left out, `AWS_ALLOW_HTTP` decides. `--key-file` when the key is a file;
    /// a password is never a flag (it would show in the process list): like credentials and
    /// file roots, the process that runs irctl brings its own (`IR_REPO_PASSWORD`).
    pub fn cli_args(&self) -> Vec<String> {
        let deadline =
            self.read_deadline.as_secs() + u64::from(self.read_deadline.subsec_nanos() > 0);
        let mut args = vec![
            format!("--repo={}", self.url),
            format!("--read-deadline={deadline}"),
        ];
        if let Some(endpoint) = &self.s3_endpoint {
            args.push(format!("--s3-endpoint={endpoint}"));
        }
        if let Some(region) = &self.s3_region {
            args.push(format!("--s3-region={region}"));
        }
        if self.allow_http == Some(true) {
            args.push("--s3-allow-http".to_owned());
        }
        if let RepoKey::File(path) = &self.key {
            args.push(format!("--key-file={}", path.to_string_lossy()));
        }
        args
    }
}

/// The environment variable the command line reads an encrypted repository's password from
/// (never a flag: it would show in the process list).
pub const PASSWORD_ENV: &str = "IR_REPO_PASSWORD";

/// What opens an encrypted repository: a password or a key file, either of which unwraps
/// the repository's keys (`irctl repo init --encryption`). The password itself and the key
/// file's content never show in `Debug` output.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RepoKey {
    /// No key: the repository must not be encrypted.
    #[default]
    None,
    /// A password (`IR_REPO_PASSWORD` on the command line).
    Password(Secret),
    /// A file whose content is the key (`--key-file`), read when the repository is opened.
    /// One trailing newline is not part of the key, so that a file holding a password
    /// opens what that password opens.
    File(PathBuf),
}

impl RepoKey {
    /// The secret bytes, read from the key file if that is where they are.
    pub(crate) fn secret(&self) -> Result<Option<Zeroizing<Vec<u8>>>, RepoError> {
        let empty = |what: String| RepoError::InvalidKey {
            reason: format!("{what} is empty"),
        };
        match self {
            RepoKey::None => Ok(None),
            RepoKey::Password(secret) if secret.0.is_empty() => Err(empty("the password".into())),
            RepoKey::Password(secret) => Ok(Some(secret.0.clone())),
            RepoKey::File(path) => {
                let mut bytes =
                    Zeroizing::new(std::fs::read(path).map_err(|e| RepoError::InvalidKey {
                        reason: format!("cannot read key file {}: {e}", path.display()),
                    })?);
                if bytes.ends_with(b"\n") {
                    bytes.pop();
                    if bytes.ends_with(b"\r") {
                        bytes.pop();
                    }
                }
                if bytes.is_empty() {
                    return Err(empty(format!("key file {}", path.display())));
                }
                Ok(Some(bytes))
            }
        }
    }
}

/// Secret bytes, wiped from memory when dropped and never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Secret {
        Secret(Zeroizing::new(bytes))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Whose credentials read an S3 repository (a `file://` one needs none).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Credentials {
    /// None: an `s3://` repository is refused ([`RepoError::NoCredentials`]).
    ///
    /// [`RepoError::NoCredentials`]: crate::RepoError::NoCredentials
    #[default]
    None,
    /// The process's own: S3 settings not given in the [`RepoLocation`] come from its
    /// environment too (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
    /// `AWS_ENDPOINT_URL`, instance credentials...), as a command line user expects. A
    /// component serving many users (the operator, a node agent) lends them only to a
    /// repository that asks where the installation allows it, never by accident.
    Ambient,
    /// This access key pair, and nothing from the environment; in a cluster it comes from a
    /// Secret, so that one process can hold several.
    Keys(S3Credentials),
}

#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_name_the_repository_with_the_deadline_in_whole_seconds() {
        let mut at = RepoLocation::new("s3://b/p");
        at.read_deadline = Duration::from_millis(1500);
        at.s3_endpoint = Some("-http://odd".into());
        at.allow_http = Some(false);
        assert_eq!(
            at.cli_args(),
            [
                "--repo=s3://b/p",
                "--read-deadline=2",
                "--s3-endpoint=-http://odd"
            ]
        );
        at.read_deadline = Duration::from_secs(30);
        at.s3_region = Some("eu-west-1".into());
        at.allow_http = Some(true);
        assert_eq!(
            at.cli_args(),
            [
                "--repo=s3://b/p",
                "--read-deadline=30",
                "--s3-endpoint=-http://odd",
                "--s3-region=eu-west-1",
                "--s3-allow-http"
            ]
        );
        // A key file travels as a flag, a password never does.
        at.key = RepoKey::File("/etc/ir/key".into());
        assert_eq!(at.cli_args().last().unwrap(), "--key-file=/etc/ir/key");
        at.key = RepoKey::Password(Secret::new(b"hunter2".to_vec()));
        assert!(!at.cli_args().concat().contains("hunter2"));
        assert!(!format!("{at:?}").contains("hunter2"));
    }

    #[test]
    fn a_key_file_holds_the_key_but_its_last_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        for (content, key) in [
            (&b"pw\n"[..], &b"pw"[..]),
            (b"pw\r\n", b"pw"),
            (b"pw\n\n", b"pw\n"),
            (b"\x00\xffbinary", b"\x00\xffbinary"),
        ] {
            std::fs::write(&path, content).unwrap();
            let got = RepoKey::File(path.clone()).secret().unwrap().unwrap();
            assert_eq!(got.as_slice(), key);
        }
        std::fs::write(&path, "\n").unwrap();
        let err = RepoKey::File(path.clone()).secret().unwrap_err();
        assert!(err.to_string().contains("is empty"), "{err}");
        let err = RepoKey::File(dir.path().join("absent"))
            .secret()
            .unwrap_err();
        assert!(err.to_string().contains("absent"), "{err}");
        assert!(RepoKey::None.secret().unwrap().is_none());
    }
}
