//! Where a BackupRepository is and how to reach it, and its faults named as its fields.

use ir_api::Reason;
use ir_api::crd::BackupRepositorySpec;
use ir_engine::machine::Failure;
use ir_repository::{RepoLocation, S3Credentials};
use kube::Client;

use super::context::Settings;
use super::secrets::read_secret;

/// The failure of a repository check with the BackupRepository field it is about in front of
/// its message (`spec.url` of a path outside the file roots, `spec.credentialsSecret`...).
pub fn naming_repository_field(failure: Failure) -> Failure {
    let field = match failure.reason {
        Reason::RepositoryPathNotAllowed => "spec.url",
        Reason::CredentialsRequired => "spec.credentialsSecret",
        Reason::AmbientCredentialsNotAllowed => "spec.s3.useAmbientCredentials",
        _ => return failure,
    };
    if failure.message.starts_with(field) {
        return failure;
    }
    Failure {
        message: format!("{field}: {}", failure.message),
        ..failure
    }
}

/// Where a BackupRepository is and how to reach it, the key pair of its credentials Secret
/// included (see [`BackupRepositorySpec::location`]).
pub async fn repository_location(
    client: &Client,
    namespace: &str,
    spec: &BackupRepositorySpec,
    settings: &Settings,
) -> Result<RepoLocation, Failure> {
    let credentials = match &spec.credentials_secret {
        Some(secret) => {
            let values = read_secret(
                client,
                namespace,
                &secret.name,
                &["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"],
                "spec.credentialsSecret",
            )
            .await?;
            Some(S3Credentials {
                access_key_id: values[0].clone(),
                secret_access_key: values[1].clone(),
            })
        }
        None => None,
    };
    spec.location(credentials, &settings.repositories, "spec")
}
