//! Finding the backup to recover: the repository opened, `latest` resolved, the manifest read,
//! and every repository fault turned into a [`Failure`] that reads the same in both drivers
//! and in the node agent.

use ir_api::recovery::BackupInfo;
use ir_repository::{RepoLocation, Repository};

use ir_api::{Failure, Reason};

/// Opens the repository and reads the backup's manifest (`latest` resolved).
pub async fn find_backup(
    location: &RepoLocation,
    id_or_latest: &str,
) -> Result<BackupInfo, Failure> {
    let repo = Repository::open(location).await.map_err(Failure::from)?;
    let id = repo
        .resolve_backup(id_or_latest)
        .await
        .map_err(Failure::from)?;
    let manifest = repo.load_manifest(&id).await.map_err(Failure::from)?;
    let pg_major: u32 = manifest.pg_version.trim().parse().map_err(|_| {
        Failure::new(
            Reason::UnsupportedBackup,
            format!(
                "backup {id}: unrecognised PostgreSQL version {:?}",
                manifest.pg_version
            ),
        )
    })?;
    Ok(BackupInfo {
        id,
        pg_major,
        size_bytes: manifest.entries.iter().map(|e| e.size).sum(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ir_repository::RepoError;

    #[test]
    fn repository_faults_read_as_the_agent_reports_them() {
        let url = "file:///srv/repo".to_owned();
        let f = Failure::from(RepoError::NotARepository { url: url.clone() });
        assert_eq!((f.reason.as_str(), f.transient), ("NotARepository", false));
        assert!(f.message.contains(&url), "{}", f.message);
        let f = Failure::from(RepoError::UnsupportedFormat {
            url,
            found: 9,
            supported: 1,
        });
        assert_eq!(f.reason, "UnsupportedRepositoryFormat");
    }
}
