//! Opening the object store behind a repository URL.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;
use object_store::{ClientConfigKey, ObjectStore, RetryConfig};

use crate::error::RepoError;

/// How to reach the store. S3 settings not given here come from the environment
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`, ...).
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
    pub allow_http: Option<bool>,
    /// Access key pair; in a cluster it comes from a Secret, so one process can hold several.
    pub s3_credentials: Option<S3Credentials>,
    /// Total retry budget for one chunk read before it fails as unavailable.
    pub read_deadline: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            s3_endpoint: None,
            s3_region: None,
            allow_http: None,
            s3_credentials: None,
            read_deadline: Duration::from_secs(30),
        }
    }
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

pub(crate) struct OpenedStore {
    /// Normalised URL, used in messages.
    pub url: String,
    pub store: Arc<dyn ObjectStore>,
    pub local: bool,
}

/// `create` makes the directory of a `file://` repository (used by `init`).
pub(crate) fn open_store(
    url: &str,
    opts: &StoreOptions,
    create: bool,
) -> Result<OpenedStore, RepoError> {
    let invalid = |reason: &str| RepoError::InvalidUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    // A bare absolute path is accepted as a convenience for local repositories.
    let parsed = if url.starts_with('/') {
        url::Url::from_file_path(url).map_err(|_| invalid("not a valid absolute path"))?
    } else {
        url::Url::parse(url).map_err(|e| invalid(&e.to_string()))?
    };
    match parsed.scheme() {
        "file" => {
            let path = parsed
                .to_file_path()
                .map_err(|_| invalid("expected file:///absolute/path"))?;
            if create {
                std::fs::create_dir_all(&path)
                    .map_err(|e| RepoError::io(path.display().to_string(), e))?;
            } else if !path.is_dir() {
                return Err(RepoError::NotARepository {
                    url: parsed.to_string(),
                });
            }
            let store = LocalFileSystem::new_with_prefix(&path)
                .map_err(|e| invalid(&e.to_string()))?
                // A backup must survive a crash once its manifest is written.
                .with_fsync(true);
            Ok(OpenedStore {
                url: parsed.to_string(),
                store: Arc::new(store),
                local: true,
            })
        }
        "s3" => {
            let bucket = parsed
                .host_str()
                .filter(|b| !b.is_empty())
                .ok_or_else(|| invalid("expected s3://bucket/prefix"))?;
            let mut builder = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_config(
                    AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
                    "5s",
                )
                // Large enough for a 64 MiB chunk upload on a slow link.
                .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::Timeout), "120s")
                .with_retry(RetryConfig {
                    max_retries: 3,
                    retry_timeout: Duration::from_secs(60),
                    ..Default::default()
                });
            if let Some(endpoint) = &opts.s3_endpoint {
                builder = builder.with_endpoint(endpoint);
            }
            if let Some(region) = &opts.s3_region {
                builder = builder.with_region(region);
            }
            if let Some(allow) = opts.allow_http {
                builder = builder.with_allow_http(allow);
            }
            if let Some(credentials) = &opts.s3_credentials {
                builder = builder
                    .with_access_key_id(&credentials.access_key_id)
                    .with_secret_access_key(&credentials.secret_access_key);
            }
            let s3 = builder.build().map_err(|e| invalid(&e.to_string()))?;
            let prefix = parsed.path().trim_matches('/');
            let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
                Arc::new(s3)
            } else {
                Arc::new(PrefixStore::new(s3, prefix))
            };
            let mut normalised = format!("s3://{bucket}");
            if !prefix.is_empty() {
                normalised = format!("{normalised}/{prefix}");
            }
            Ok(OpenedStore {
                url: normalised,
                store,
                local: false,
            })
        }
        other => Err(invalid(&format!(
            "unsupported scheme {other:?}; use file:///path or s3://bucket/prefix"
        ))),
    }
}
