//! Where a BackupRepository is and how to reach it.

use ir_api::crd::{BackupRepositorySpec, ENCRYPTION_PASSWORD_KEY};
use ir_engine::machine::Failure;
use ir_repository::{RepoLocation, S3Credentials};
use kube::Client;

use super::context::Settings;
use super::secrets::read_secret;

/// Where a BackupRepository is and how to reach it, the key pair of its credentials Secret
/// and the password of its encryption Secret included (see [`BackupRepositorySpec::location`]).
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
    let password = match &spec.encryption_secret {
        Some(secret) => read_secret(
            client,
            namespace,
            &secret.name,
            &[ENCRYPTION_PASSWORD_KEY],
            "spec.encryptionSecret",
        )
        .await?
        .pop(),
        None => None,
    };
    spec.location(credentials, password, &settings.repositories, "spec")
}
