// TEMPORARY typecheck shim; replaced by the real module.
use crate::{BackupManifest, Repository};
pub struct WalArchive<'a> {
    _r: &'a Repository,
}
impl Repository {
    pub fn wal(&self, _s: u64) -> WalArchive<'_> {
        WalArchive { _r: self }
    }
}
#[derive(Debug)]
pub struct WalError;
impl std::fmt::Display for WalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("x")
    }
}
pub struct WalListing;
impl WalArchive<'_> {
    pub async fn list(&self) -> Result<WalListing, WalError> {
        todo!()
    }
}
impl WalListing {
    pub fn window(&self, _b: &BackupManifest) -> Window {
        todo!()
    }
}
pub struct Window {
    pub timeline: u32,
    pub start_lsn: u64,
    pub earliest: time::OffsetDateTime,
    pub end_lsn: u64,
    pub latest: Option<time::OffsetDateTime>,
    pub first_missing: Option<String>,
}
