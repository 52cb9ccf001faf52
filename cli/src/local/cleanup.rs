//! The cleanup once the target serves: the published instance stops, the mount ends, and the
//! cache, the mount point and the published instance's configuration go.

use std::time::Duration;

use ir_api::Reason;
use ir_engine::machine::{Failure, Step};
use ir_engine::process;
use ir_fuse::is_fuse_mount;

use super::error::{LocalError, io_err};
use super::recovery::LocalRecovery;

impl LocalRecovery {
    pub(super) async fn cleanup(&mut self) -> Step {
        match self.try_cleanup().await {
            Ok(()) => Step::Ready(()),
            Err(e) => Step::Failed(Failure::new(Reason::CleanupFailed, e.to_string())),
        }
    }

    async fn try_cleanup(&mut self) -> Result<(), LocalError> {
        let published = self.published_instance();
        let mountpoint = self.workdir.mountpoint();
        if let Some(pid) = published.running_pid() {
            published.stop(pid, Duration::from_secs(60)).await?;
        }
        if let Some(pid) = self.state.resources.mount_pid {
            process::terminate(pid, libc::SIGTERM, Duration::from_secs(30))
                .await
                .map_err(io_err(&mountpoint))?;
            self.state.resources.mount_pid = None;
        }
        ir_fuse::clear_stale_mount(&mountpoint).map_err(io_err(&mountpoint))?;
        if is_fuse_mount(&mountpoint) {
            return Err(LocalError::Conflict(format!(
                "{} is still mounted",
                mountpoint.display()
            )));
        }
        for dir in [
            self.workdir.cache(),
            mountpoint,
            self.workdir.conf("published"),
        ] {
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(&dir)(e)),
                _ => {}
            }
        }
        Ok(())
    }
}
