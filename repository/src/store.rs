//! Opening the object store behind a repository URL.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;
use object_store::{ClientConfigKey, ObjectStore, RetryConfig};

use crate::error::RepoError;
use crate::location::{Credentials, RepoLocation};

pub(crate) struct OpenedStore {
    /// Normalised URL, used in messages.
    pub url: String,
    pub store: Arc<dyn ObjectStore>,
    /// The directory of a `file://` repository, whose chunks are read without the object store.
    pub local_dir: Option<PathBuf>,
}

/// `create` makes the directory of a `file://` repository (used by `init`).
pub(crate) fn open_store(location: &RepoLocation, create: bool) -> Result<OpenedStore, RepoError> {
    let url = location.url.as_str();
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
            if let Some(roots) = &location.file_roots {
                check_file_root(&path, roots, create).map_err(|reason| {
                    RepoError::PathNotAllowed {
                        url: parsed.to_string(),
                        reason,
                    }
                })?;
            }
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
                local_dir: Some(path),
            })
        }
        "s3" => {
            let bucket = parsed
                .host_str()
                .filter(|b| !b.is_empty())
                .ok_or_else(|| invalid("expected s3://bucket/prefix"))?;
            let builder = match &location.credentials {
                Credentials::None => {
                    return Err(RepoError::NoCredentials {
                        url: format!("s3://{bucket}{}", parsed.path().trim_end_matches('/')),
                    });
                }
                Credentials::Keys(keys) => AmazonS3Builder::new()
                    .with_access_key_id(&keys.access_key_id)
                    .with_secret_access_key(&keys.secret_access_key),
                Credentials::Ambient => AmazonS3Builder::from_env(),
            };
            let mut builder = builder
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
            if let Some(endpoint) = &location.s3_endpoint {
                builder = builder.with_endpoint(endpoint);
            }
            if let Some(region) = &location.s3_region {
                builder = builder.with_region(region);
            }
            if let Some(allow) = location.allow_http {
                builder = builder.with_allow_http(allow);
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
                local_dir: None,
            })
        }
        other => Err(invalid(&format!(
            "unsupported scheme {other:?}; use file:///path or s3://bucket/prefix"
        ))),
    }
}

/// Whether `path` lies inside one of `roots`, judged on the path as written (no `..`) and on
/// where it really leads (symlinks resolved), so that neither a `..` nor a symlink inside a
/// root leads out of it. A path still to be made (`create`) is judged by its nearest existing
/// ancestor.
fn check_file_root(path: &Path, roots: &[PathBuf], create: bool) -> Result<(), String> {
    let allowed = || {
        let shown: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
        format!(
            "file:// repositories are allowed only under {}",
            if shown.is_empty() {
                "no directory (none configured)".to_string()
            } else {
                shown.join(", ")
            }
        )
    };
    if path
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(format!(
            "the path may not contain '.' or '..'; {}",
            allowed()
        ));
    }
    let mut existing = path.to_path_buf();
    let mut rest = PathBuf::new();
    let resolved = loop {
        match existing.canonicalize() {
            Ok(real) => break real.join(&rest),
            Err(_) if create => {
                let Some(name) = existing.file_name().map(PathBuf::from) else {
                    return Err(allowed());
                };
                rest = name.join(&rest);
                if !existing.pop() {
                    return Err(allowed());
                }
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
    };
    let inside = |p: &Path| {
        roots.iter().any(|root| {
            let root = root.canonicalize().unwrap_or_else(|_| root.clone());
            p.starts_with(&root)
        })
    };
    if inside(path) && inside(&resolved) {
        Ok(())
    } else {
        Err(allowed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::location::S3Credentials;

    #[test]
    fn file_roots_hold_paths_and_symlinks_in() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repos");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
        let roots = vec![root.clone()];
        assert_eq!(check_file_root(&root.join("a"), &roots, false), Ok(()));
        assert_eq!(
            check_file_root(&root.join("new/repo"), &roots, true),
            Ok(())
        );
        for bad in [
            outside.clone(),
            root.join("escape"),
            root.join("escape/new"),
            root.join("a/../../outside"),
            dir.path().join("repos-sibling"),
        ] {
            let err = check_file_root(&bad, &roots, true).unwrap_err();
            assert!(
                err.contains("allowed only under"),
                "{}: {err}",
                bad.display()
            );
        }
        assert!(check_file_root(&root.join("a"), &[], false).is_err());
    }

    #[test]
    fn s3_without_credentials_needs_an_opt_in() {
        let bare = RepoLocation::new("s3://bucket/prefix");
        let err = open_store(&bare, false).err().unwrap();
        assert!(matches!(err, RepoError::NoCredentials { .. }), "{err:?}");
        assert!(err.to_string().contains("s3://bucket/prefix"), "{err}");
        let keys = RepoLocation {
            credentials: Credentials::Keys(S3Credentials {
                access_key_id: "a".into(),
                secret_access_key: "b".into(),
            }),
            s3_region: Some("us-east-1".into()),
            ..bare
        };
        assert!(open_store(&keys, false).is_ok());
    }
}
