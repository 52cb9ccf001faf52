//! What the spec refers to, read from the cluster: the BackupRepository, the superuser's Secret,
//! and PostgreSQL at a Pod's IP as that superuser.

use ir_api::Reason;
use ir_api::crd::BackupRepository;
use ir_engine::machine::Failure;
use ir_engine::postgres::{Endpoint, Host};

use super::Driver;
use crate::k8s::resources::POSTGRES_PORT;
use crate::k8s::secrets::read_secret;

/// The database the operator connects to: every cluster has it, so its name is not configurable.
pub(super) const OPERATOR_DATABASE: &str = "postgres";

/// A Kubernetes call that failed while observing: the cluster may answer later.
pub(super) fn kube_failure(what: &str, e: kube::Error) -> Failure {
    Failure::new(Reason::KubernetesUnavailable, format!("{what}: {e}"))
}

impl Driver<'_> {
    pub(super) async fn repository(&self) -> Result<BackupRepository, Failure> {
        let name = &self.ir.spec.backup.repository_ref.name;
        match self.api::<BackupRepository>().get_opt(name).await {
            Ok(Some(repo)) => Ok(repo),
            Ok(None) => Err(Failure::new(
                Reason::RepositoryNotFound,
                format!(
                    "spec.backup.repositoryRef: BackupRepository {}/{name} does not exist",
                    self.namespace
                ),
            )),
            Err(e) => Err(kube_failure("reading the BackupRepository", e)),
        }
    }

    /// The superuser the operator connects as.
    pub(super) async fn credentials(&self) -> Result<(String, String), Failure> {
        let values = read_secret(
            &self.ctx.client,
            &self.namespace,
            &self.ir.spec.postgres.credentials_secret.name,
            &["username", "password"],
            "spec.postgres.credentialsSecret",
        )
        .await?;
        Ok((values[0].clone(), values[1].clone()))
    }

    pub(super) async fn endpoint(&self, ip: &str) -> Result<Endpoint, Failure> {
        let (user, password) = self.credentials().await?;
        Ok(Endpoint {
            host: Host::Tcp(ip.to_owned()),
            port: POSTGRES_PORT,
            user,
            password: Some(password),
            dbname: OPERATOR_DATABASE.to_owned(),
        })
    }
}
