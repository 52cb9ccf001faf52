//! The mount: `irctl mount`, started as a process of its own, serves the backup in the workdir.

use std::process::Command;
use std::time::{Duration, Instant};

use ir_api::Reason;
use ir_engine::machine::{Failure, Step};
use ir_engine::process::{self, OsUser, ProcState};
use ir_fuse::is_fuse_mount;

use super::error::{LocalError, io_err};
use super::recovery::LocalRecovery;
use crate::mount::{self, MOUNT_EXIT_TRANSIENT};

impl LocalRecovery {
    pub(super) async fn ensure_mount(&mut self) -> Result<Step, LocalError> {
        let mountpoint = self.workdir.mountpoint();
        if let Some(pid) = self.state.resources.mount_pid {
            if process::is_alive(pid) && is_fuse_mount(&mountpoint) {
                return Ok(Step::Ready(()));
            }
            // A mount process that lost its mount (or hangs) is replaced.
            process::terminate(pid, libc::SIGTERM, Duration::from_secs(10))
                .await
                .map_err(io_err(&mountpoint))?;
        }
        // PostgreSQL on a lost mount can never recover (its working directory is the dead
        // mount): end it with all its processes, so that it restarts on the new mount.
        if let Some(pid) = self.state.resources.published_pid.take()
            && process::is_alive(pid)
        {
            tracing::warn!(pid, "stopping the published instance of the lost mount");
            process::kill_group(pid)
                .await
                .map_err(io_err(&mountpoint))?;
        }
        // The kernel keeps a dead server's mount ("transport endpoint is not connected").
        ir_fuse::clear_stale_mount(&mountpoint).map_err(io_err(&mountpoint))?;
        let spec = &self.state.spec;
        let backup = self
            .state
            .status
            .backup
            .as_ref()
            .map_or(&spec.backup, |b| &b.id);
        let mut c = Command::new(&self.mount_program);
        let user = &self.pg_user;
        let cache = self.workdir.cache();
        c.arg("mount").args(mount::command_line(
            &spec.repo,
            backup,
            &cache,
            user.uid,
            user.gid,
            &mountpoint,
        ));
        let log = self.workdir.logs().join("mount.log");
        let me = OsUser::current().unwrap_or_else(|| self.pg_user.clone());
        let pid = process::spawn_detached(c, &me, &log).map_err(io_err(&self.mount_program))?;
        self.state.resources.mount_pid = Some(pid);
        self.workdir.save(&self.state)?;

        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if is_fuse_mount(&mountpoint) {
                return Ok(Step::Ready(()));
            }
            if let ProcState::Exited(code) = process::poll(pid) {
                self.state.resources.mount_pid = None;
                let tail = process::log_tail(&log, 4000);
                // Its own error line says it best; log lines before it are context.
                let message = match tail.lines().rev().find_map(|l| l.strip_prefix("irctl: ")) {
                    Some(error) => format!("mounting the backup: {error}"),
                    None => format!("irctl mount exited: {tail}"),
                };
                return Ok(Step::Failed(if code == Some(MOUNT_EXIT_TRANSIENT) {
                    Failure::new(Reason::RepositoryUnavailable, message)
                } else {
                    Failure::new(Reason::MountFailed, message)
                }));
            }
            if Instant::now() >= deadline {
                return Ok(Step::Failed(Failure::new(
                    Reason::MountTimeout,
                    format!(
                        "the backup was not mounted at {} within 60 s",
                        mountpoint.display()
                    ),
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
