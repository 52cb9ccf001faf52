//! Tearing down a recovery that ends before its switchover (`irctl abort`, `irctl unpublish`,
//! a publish's TTL): every process it started stops, the mount ends, the IRCache and the
//! published instance's configuration go, and a target it made is removed, since it was never
//! promoted (the engine refuses to tear down once the switchover began). What it did is kept in
//! `recovery.json` (`tornDown`).

use std::ffi::OsStr;
use std::time::Duration;

use ir_api::Reason;
use ir_engine::machine::{Failure, Step};
use ir_engine::process;
use ir_fuse::is_fuse_mount;

use super::dir::{Ancestors, Dir};
use super::error::{LocalError, io_err};
use super::recovery::LocalRecovery;

impl LocalRecovery {
    pub(super) async fn teardown(&mut self) -> Step {
        let mut done = Vec::new();
        let outcome = self.try_teardown(&mut done).await;
        self.state.torn_down.extend(done);
        match outcome {
            Ok(()) => Step::Ready(()),
            Err(e) => Step::Failed(Failure::new(Reason::TeardownFailed, e.to_string())),
        }
    }

    async fn try_teardown(&mut self, done: &mut Vec<String>) -> Result<(), LocalError> {
        let logs = self.workdir.logs();
        let resources = &mut self.state.resources;
        if let Some(pid) = resources.base_backup_pid.take() {
            process::kill_group(pid)
                .await
                .map_err(io_err(&logs.join("basebackup.log")))?;
            done.push(format!("stopped pg_basebackup (pid {pid})"));
        }
        if let Some(target) = self.state.spec.target_pgdata.clone() {
            let instance = self.target_instance(target);
            let pid = (self.state.resources.target_pid.take())
                .filter(|pid| process::is_alive(*pid))
                .or_else(|| instance.running_pid());
            if let Some(pid) = pid {
                instance.stop(pid, Duration::from_secs(60)).await?;
                done.push(format!("stopped the standby (pid {pid})"));
            }
        }
        let published = self.published_instance();
        let pid = (self.state.resources.published_pid.take())
            .filter(|pid| process::is_alive(*pid))
            .or_else(|| published.running_pid());
        if let Some(pid) = pid {
            published.stop(pid, Duration::from_secs(60)).await?;
            done.push(format!("stopped the published instance (pid {pid})"));
        }
        let mountpoint = self.workdir.mountpoint();
        if let Some(pid) = self.state.resources.mount_pid.take() {
            process::terminate(pid, libc::SIGTERM, Duration::from_secs(30))
                .await
                .map_err(io_err(&mountpoint))?;
            done.push(format!(
                "unmounted {} (mount pid {pid})",
                mountpoint.display()
            ));
        }
        ir_fuse::clear_stale_mount(&mountpoint).map_err(io_err(&mountpoint))?;
        if is_fuse_mount(&mountpoint) {
            return Err(LocalError::Conflict(format!(
                "{} is still mounted",
                mountpoint.display()
            )));
        }
        for (dir, what) in [
            (self.workdir.cache(), "the IRCache"),
            (mountpoint, "the mount point"),
            (
                self.workdir.conf("published"),
                "the published configuration",
            ),
            (self.workdir.conf("target"), "the standby configuration"),
        ] {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => done.push(format!("removed {what} {}", dir.display())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&dir)(e)),
            }
        }
        self.remove_target(done)
    }

    /// Removes the target this recovery made at validation, through handles, and only while
    /// its path still leads to that directory.
    fn remove_target(&mut self, done: &mut Vec<String>) -> Result<(), LocalError> {
        let Some(path) = self.state.spec.target_pgdata.clone() else {
            return Ok(());
        };
        if self.state.resources.target_id.is_none() {
            return Ok(());
        }
        let dir = match self.target_dir() {
            Ok(dir) => dir,
            Err(f) => {
                done.push(format!("left {}: {}", path.display(), f.message));
                self.state.resources.target_id = None;
                return Ok(());
            }
        };
        dir.clear().map_err(io_err(&path))?;
        let (parent, name) = Dir::open_parent(&path, Ancestors::Any)
            .map_err(|e| LocalError::Conflict(format!("{}: {e}", path.display())))?;
        parent
            .remove_dir(OsStr::new(&name))
            .map_err(io_err(&path))?;
        self.state.resources.target_id = None;
        done.push(format!("removed the partial target {}", path.display()));
        Ok(())
    }
}
