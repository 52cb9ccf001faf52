//! Validation, before anything is created: the BackupRepository and the backup the spec names,
//! the Secrets, the image against the backup's PostgreSQL, the target's size, and a node that
//! can take the mount.

use ir_api::Reason;
use ir_api::crd::RecoveryMount;
use ir_api::point_in_time::PointInTimeStatus;
use ir_api::recovery::BackupInfo;
use ir_engine::machine::Failure;
use kube::ResourceExt;

use super::Driver;
use crate::k8s::location::repository_location;
use crate::k8s::resources;
use crate::k8s::secrets::read_secret;

impl Driver<'_> {
    /// The backup to recover, and for a recovery to a point in time its target and window.
    pub(super) async fn validate(
        &self,
    ) -> Result<(BackupInfo, Option<PointInTimeStatus>), Failure> {
        let spec = &self.ir.spec;
        let repo = self.repository().await?;
        // A fault of the repository's own spec (a path outside the file roots, no credentials)
        // is named as a field of the BackupRepository.
        let about_repository = |f: Failure| {
            let f = f.naming("spec");
            let prefix = if f.message.starts_with("spec.") {
                format!(
                    "spec.backup.repositoryRef: BackupRepository {}/{}: ",
                    self.namespace,
                    repo.name_any()
                )
            } else {
                "spec.backup: ".to_owned()
            };
            Failure {
                message: format!("{prefix}{}", f.message),
                ..f
            }
        };
        let location = repository_location(
            &self.ctx.client,
            &self.namespace,
            &repo.spec,
            &self.ctx.settings,
        )
        .await
        .map_err(about_repository)?;
        let (backup, point_in_time) = match &spec.point_in_time {
            None => (
                ir_engine::backup::find_backup(&location, &spec.backup.id)
                    .await
                    .map_err(about_repository)?,
                None,
            ),
            Some(point) => {
                let (backup, status) =
                    ir_engine::backup::find_backup_for(&location, &spec.backup.id, point)
                        .await
                        .map_err(|f| {
                            if is_about_the_target(&f) {
                                Failure {
                                    message: format!("spec.pointInTime: {}", f.message),
                                    ..f
                                }
                            } else {
                                about_repository(f)
                            }
                        })?;
                (backup, Some(status))
            }
        };
        self.credentials().await?;
        if let Some(secret) = &spec.postgres.replication_secret {
            read_secret(
                &self.ctx.client,
                &self.namespace,
                &secret.name,
                &["username", "password"],
                "spec.postgres.replicationSecret",
            )
            .await?;
        }
        let image = resources::postgres_image(self.ir, backup.pg_major);
        if let Some(major) = resources::image_major(&image)
            && major != backup.pg_major
        {
            return Err(Failure::new(
                Reason::ImageMismatch,
                format!(
                    "spec.postgres.image: {image} runs PostgreSQL {major}, but backup {} is \
                     PostgreSQL {}",
                    backup.id, backup.pg_major
                ),
            ));
        }
        if let Some(size) = &spec.target.size {
            let bytes = ir_api::quantity_bytes(&size.0).ok_or_else(|| {
                Failure::new(
                    Reason::InvalidSpec,
                    format!("spec.target.size: {:?} is not a quantity", size.0),
                )
            })?;
            if bytes < backup.size_bytes {
                return Err(Failure::new(
                    Reason::TargetTooSmall,
                    format!(
                        "spec.target.size: {} is smaller than backup {} ({} bytes)",
                        size.0, backup.id, backup.size_bytes
                    ),
                ));
            }
        }
        if self
            .api::<RecoveryMount>()
            .get_opt(&self.name)
            .await
            .ok()
            .flatten()
            .is_none()
        {
            self.choose_node().await?;
        }
        Ok((backup, point_in_time))
    }
}

/// A failure of the target itself (outside the window, WAL missing), which names the field
/// `spec.pointInTime`.
fn is_about_the_target(f: &Failure) -> bool {
    matches!(
        f.reason,
        Reason::PointInTimeBeforeBackup
            | Reason::PointInTimeNotArchived
            | Reason::WalSegmentMissing
            | Reason::InvalidSpec
    )
}
