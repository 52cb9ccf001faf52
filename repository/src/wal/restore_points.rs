//! The index of restore points: `wal push` records each `pg_create_restore_point` it finds in a
//! segment under `restore-points/<sysid>/<TTTTTTTT><LSN>.json`, so that a recovery to one by
//! name starts from the newest backup before it. Entries are sealed like the WAL in an
//! encrypted repository, and read back as untrusted bytes.

use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use serde::Serialize;
use time::OffsetDateTime;

use super::{PruneReport, WalArchive, WalError, cpu_bound, restore_points};
use crate::error::RepoError;

const RESTORE_POINTS_DIR: &str = "restore-points";
/// An index entry is a few dozen bytes: anything much larger is not one.
const MAX_RESTORE_POINT_ENTRY: u64 = 4096;

/// A restore point of the index (`restore-points/<sysid>/`), as its WAL record had it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RestorePoint {
    pub name: String,
    /// `X/Y`: where its record is.
    pub lsn: String,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    pub timeline: u32,
}

impl RestorePoint {
    pub fn lsn_value(&self) -> Option<u64> {
        crate::parse_lsn(&self.lsn)
    }
}

impl WalArchive<'_> {
    fn restore_points_root(&self) -> String {
        format!("{RESTORE_POINTS_DIR}/{}", self.system_identifier)
    }

    /// Records the restore points created in segment `bytes` of `timeline`, so that a recovery
    /// to one by name can start from the newest backup before it.
    pub(super) async fn index_restore_points(
        &self,
        timeline: u32,
        bytes: &[u8],
    ) -> Result<(), WalError> {
        for point in cpu_bound(|| restore_points(bytes)) {
            let entry = RestorePoint {
                name: point.name,
                lsn: crate::format_lsn(point.lsn),
                time: point.time,
                timeline,
            };
            let path = Path::from(format!(
                "{}/{timeline:08X}{:016X}.json",
                self.restore_points_root(),
                point.lsn
            ));
            let json = serde_json::to_vec(&entry)
                .map_err(|e| RepoError::io(path.to_string(), e.into()))?;
            // Names are the user's words: sealed like the WAL in an encrypted repository.
            let json = self.repo.codec().seal(path.as_ref(), json);
            self.repo
                .store()
                .put(&path, PutPayload::from(json))
                .await
                .map_err(|e| self.repo.store_err(&path, e))?;
        }
        Ok(())
    }

    /// The archived restore points named `name`, oldest first. Entries that are too large or
    /// do not parse are left out (and logged): they are repository bytes, not trusted.
    pub async fn restore_points_named(&self, name: &str) -> Result<Vec<RestorePoint>, WalError> {
        let metas = self.list_under(self.restore_points_root()).await?;
        let mut found = Vec::new();
        let limit = self.repo.codec().max_stored(MAX_RESTORE_POINT_ENTRY);
        for meta in metas {
            if meta.size > limit {
                tracing::warn!(object = %meta.location, size = meta.size, "not a restore point entry");
                continue;
            }
            let bytes = match self.repo.store().get(&meta.location).await {
                Ok(got) => got.bytes().await,
                Err(e) => Err(e),
            };
            let bytes = match bytes {
                Ok(bytes) if bytes.len() as u64 <= limit => bytes,
                Ok(_) => continue,
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(self.repo.store_err(&meta.location, e).into()),
            };
            let bytes = match self.repo.codec().open(meta.location.as_ref(), bytes) {
                Ok(plain) => plain,
                Err(e) => {
                    tracing::warn!(object = %meta.location, error = %e, "restore point entry does not open");
                    continue;
                }
            };
            match serde_json::from_slice::<RestorePoint>(&bytes) {
                Ok(point) if point.name == name && point.lsn_value().is_some() => found.push(point),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(object = %meta.location, error = %e, "unreadable restore point entry")
                }
            }
        }
        found.sort_by_key(|p| p.lsn_value());
        Ok(found)
    }

    /// Deletes the entries of restore points on `timeline` and older ones below `cut`, which
    /// a prune removed the WAL of.
    pub(super) async fn prune_restore_points(
        &self,
        timeline: u32,
        cut: u64,
        dry_run: bool,
        report: &mut PruneReport,
    ) -> Result<(), WalError> {
        let entries = self.list_under(self.restore_points_root()).await?;
        for meta in entries {
            let Some((tli, lsn)) = meta.location.filename().and_then(entry_place) else {
                continue;
            };
            if tli > timeline || lsn >= cut {
                continue;
            }
            if !dry_run {
                match self.repo.store().delete(&meta.location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(self.repo.store_err(&meta.location, e).into()),
                }
            }
            report.removed.push(meta.location.to_string());
            report.bytes_removed += meta.size;
        }
        Ok(())
    }
}

/// The timeline and LSN an index entry's name (`<TTTTTTTT><LSN, 16 hex>.json`) gives; `None`
/// for a name that is not one, whatever bytes a store lists.
fn entry_place(name: &str) -> Option<(u32, u64)> {
    let hex = name.strip_suffix(".json")?;
    if hex.len() != 24 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((
        u32::from_str_radix(&hex[..8], 16).ok()?,
        u64::from_str_radix(&hex[8..], 16).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_entry_names_give_a_place() {
        assert_eq!(
            entry_place("000000020000000003004978.json"),
            Some((2, 0x3004978))
        );
        for name in [
            "00000002000000000300497.json",
            "0000000200000000030049é.json",
            // A two-byte character across the timeline's end.
            "0000000é000000000300497.json",
            "00000002000000000300497g.json",
            "000000020000000003004978",
            "+0000002000000000300497.json",
        ] {
            assert_eq!(entry_place(name), None, "{name}");
        }
    }
}
