//! The two PostgreSQL instances: the published one on the mount and the target (the standby,
//! then production); their configuration files, starting them, and serving writes again after
//! a switchover that did not complete.

use std::ffi::OsStr;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use ir_api::Reason;
use ir_api::point_in_time::{PointInTimeStatus, TargetAction};
use ir_api::recovery::Phase;
use ir_engine::machine::{Failure, Step};
use ir_engine::postgres::{self, Endpoint, Instance, Replay};
use ir_engine::process::{self, OsUser};
use ir_engine::round::Found;
use ir_fuse::is_fuse_mount;
use ir_repository::format_lsn;
use jiff::Timestamp;

use super::error::{LocalError, io_err};
use super::recovery::LocalRecovery;
use super::workdir::Which;
use crate::point_in_time;

/// How long a postmaster that died by itself may take to be reaped before a new one starts.
const STALE_POSTMASTER_WAIT: Duration = Duration::from_secs(10);
/// `cluster_name` of the standby: the application name it streams under.
pub(super) const STANDBY_NAME: &str = "instant-recovery-target";

impl LocalRecovery {
    pub(super) fn published_instance(&self) -> Instance {
        let spec = &self.state.spec;
        let mut settings = vec![
            // Its WAL continues the original's timeline: never into the original's archive.
            ("archive_mode".into(), "off".into()),
            ("cluster_name".into(), "instant-recovery-published".into()),
        ];
        if spec.read_only {
            // Besides the hot standby's refusal: a session that asks is told it is read-only.
            settings.push(("default_transaction_read_only".into(), "on".into()));
        }
        if let Some(point) = &spec.point_in_time {
            settings.extend(point_in_time::settings(
                point,
                &self.mount_program,
                &spec.repo,
            ));
        }
        Instance {
            datadir: self.workdir.mountpoint(),
            conf_dir: self.workdir.conf("published"),
            socket_dir: self.workdir.sockets(),
            port: spec.published_port,
            listen_addresses: spec.listen_addresses.clone(),
            log: self.workdir.logs().join("published.log"),
            settings,
        }
    }

    /// The target's instance, in `datadir` ([`LocalRecovery::target_path`]).
    pub(super) fn target_instance(&self, datadir: PathBuf) -> Instance {
        let spec = &self.state.spec;
        Instance {
            datadir,
            conf_dir: self.workdir.conf("target"),
            socket_dir: self.workdir.sockets(),
            port: spec.target_port,
            listen_addresses: spec.listen_addresses.clone(),
            log: self.workdir.logs().join("target.log"),
            settings: vec![
                ("cluster_name".into(), STANDBY_NAME.into()),
                ("hot_standby".into(), "on".into()),
            ],
        }
    }

    pub(super) fn endpoint(&self, instance: &Instance) -> Endpoint {
        instance.endpoint(&self.state.spec.db_user, &self.state.spec.db_name)
    }

    fn engine_users(&self) -> Vec<String> {
        let mut users = vec![self.pg_user.name.clone()];
        users.extend(OsUser::current().map(|u| u.name));
        users
    }

    /// Writes `instance`'s configuration files into its directory of `conf`.
    fn write_config(&self, instance: &Instance, which: Which) -> Result<(), LocalError> {
        let access = self.access();
        let conf = self.open_root()?.make_dir(OsStr::new("conf"), 0o700)?;
        access.pass(&conf).map_err(io_err(conf.path()))?;
        let dir = conf.make_dir(OsStr::new(which.name()), 0o700)?;
        access.pass(&dir).map_err(io_err(dir.path()))?;
        let users = self.engine_users();
        let users: Vec<&str> = users.iter().map(String::as_str).collect();
        for (name, text) in instance.config_files(&users, &self.state.spec.db_user) {
            let path = dir.path().join(name);
            let mut f = dir
                .create_file(OsStr::new(name), access.conf_mode())
                .map_err(io_err(&path))?;
            if let Some(gid) = access.group {
                std::os::unix::fs::fchown(&f, None, Some(gid)).map_err(io_err(&path))?;
            }
            f.write_all(text.as_bytes()).map_err(io_err(&path))?;
        }
        Ok(())
    }

    /// Starts `instance` unless it runs, and waits until it answers.
    pub(super) async fn ensure_running(
        &mut self,
        instance: &Instance,
        which: Which,
    ) -> Result<Result<Timestamp, Failure>, LocalError> {
        let bins = match self.bins() {
            Ok(b) => b,
            Err(f) => return Ok(Err(f)),
        };
        // Its postmaster.pid too must be read from the directory this recovery made.
        if let Which::Target = which
            && let Err(f) = self.target_dir()
        {
            return Ok(Err(f));
        }
        let endpoint = self.endpoint(instance);
        let timeout = Duration::from_secs(self.state.spec.start_timeout_secs);
        let recorded = match which {
            Which::Published => &mut self.state.resources.published_pid,
            Which::Target => &mut self.state.resources.target_pid,
        };
        let running = recorded
            .filter(|pid| process::is_alive(*pid))
            .or_else(|| instance.running_pid());
        let pid = match running {
            Some(pid) => pid,
            None => {
                // A postmaster that just died by itself (its mount went away under it) keeps
                // its pid until it is reaped, and the new one would refuse to start over it.
                if let Some(stale) = instance.postmaster_pid()
                    && !process::wait_reaped(stale, STALE_POSTMASTER_WAIT).await
                {
                    tracing::warn!(
                        pid = stale,
                        "a dead postmaster was never reaped; removing its lock file"
                    );
                    instance.remove_stale_lock()?;
                }
                self.write_config(instance, which)?;
                match instance.start(&bins, &self.pg_user) {
                    Ok(pid) => pid,
                    Err(e) => return Ok(Err(Failure::new(Reason::StartFailed, e.to_string()))),
                }
            }
        };
        match which {
            Which::Published => self.state.resources.published_pid = Some(pid),
            Which::Target => self.state.resources.target_pid = Some(pid),
        }
        self.workdir.save(&self.state)?;
        Ok(match instance.wait_ready(&endpoint, pid, timeout).await {
            Ok(at) => Ok(at),
            Err(e @ postgres::PgError::Timeout { .. }) => {
                Err(Failure::new(Reason::StartTimeout, e.to_string()))
            }
            Err(postgres::PgError::Rejected(rejection)) => Err(Failure::new(
                rejection.reason,
                format!(
                    "--db-user {} --db-name {}: {}",
                    endpoint.user, endpoint.dbname, rejection.message
                ),
            )),
            Err(e) if ir_engine::point_in_time::ended_short(&e.to_string()) => {
                Err(ir_engine::point_in_time::unreached(
                    self.state.status.point_in_time.as_ref(),
                    "PostgreSQL",
                    &e.to_string(),
                ))
            }
            Err(e) => {
                // Through a lost mount PostgreSQL cannot start: that is the mount's failure.
                if !is_fuse_mount(&self.workdir.mountpoint()) {
                    Err(Failure::new(Reason::MountLost, e.to_string()))
                } else {
                    Err(Failure::new(Reason::StartFailed, e.to_string()))
                }
            }
        })
    }

    /// The published instance serving: started, its point in time reached if one was asked.
    pub(super) async fn ensure_published(&mut self) -> Result<Found, LocalError> {
        let Some(point) = self.state.status.point_in_time.clone() else {
            if self.state.spec.read_only && !self.state.resources.standby_signal_written {
                let datadir = self.workdir.mountpoint();
                point_in_time::signal_standby(
                    &datadir,
                    process::is_root().then_some((self.pg_user.uid, self.pg_user.gid)),
                )
                .map_err(io_err(&datadir))?;
                self.state.resources.standby_signal_written = true;
                self.workdir.save(&self.state)?;
            }
            let step = match self.published_serving().await? {
                Step::Ready(at) => {
                    Step::Ready(*self.state.resources.first_query_at.get_or_insert(at))
                }
                other => other,
            };
            return Ok(Found::Published(step));
        };
        let instance = self.published_instance();
        if let Some(failure) = self.replay_ended_short(&instance) {
            return Ok(Found::ToPoint(
                Box::new(Found::Published(Step::Failed(failure))),
                point,
            ));
        }
        if !self.state.resources.recovery_signal_written {
            point_in_time::signal_recovery(
                &instance.datadir,
                process::is_root().then_some((self.pg_user.uid, self.pg_user.gid)),
            )
            .map_err(io_err(&instance.datadir))?;
            self.state.resources.recovery_signal_written = true;
            self.workdir.save(&self.state)?;
        }
        let step = self.published_serving().await?;
        let mut progress = PointInTimeStatus {
            replayed_lsn: None,
            ..point
        };
        let point_spec = self.state.spec.point_in_time.clone().unwrap_or_default();
        let hold = ir_engine::point_in_time::holds_at_target(&point_spec, self.state.spec.mode);
        let may_pause = point_spec.action == Some(TargetAction::Pause);
        let step = match step {
            // Promoted, or held at the target: nothing more to ask.
            Step::Ready(_)
                if let Some(first) = self.state.resources.first_query_at
                    && (hold || !may_pause || self.state.resources.promoted) =>
            {
                progress.reached_at = Some(first);
                Step::Ready(first)
            }
            Step::Ready(_) => {
                // It answers while it replays (hot standby): serving means promoted, or paused
                // at the target when it is held there.
                let client = self.endpoint(&instance).connect().await;
                let replay = match client {
                    Ok(c) => postgres::replay_progress(&c, hold).await.ok(),
                    Err(_) => None,
                };
                match replay {
                    Some(Replay::Replaying(replayed)) => {
                        progress.replayed_lsn = Some(format_lsn(replayed));
                        Step::InProgress
                    }
                    Some(Replay::Paused(_)) | Some(Replay::Promoted) => {
                        let promoted = replay == Some(Replay::Promoted);
                        self.state.resources.promoted = promoted;
                        let at = *self
                            .state
                            .resources
                            .first_query_at
                            .get_or_insert_with(Timestamp::now);
                        if promoted {
                            self.workdir.save(&self.state)?;
                        }
                        progress.reached_at = Some(at);
                        Step::Ready(at)
                    }
                    None => Step::InProgress,
                }
            }
            other => other,
        };
        Ok(Found::ToPoint(Box::new(Found::Published(step)), progress))
    }

    /// A replay that ended before its target leaves this line in the published instance's log
    /// and the postmaster gone; starting it again would only replay the same WAL again.
    fn replay_ended_short(&self, instance: &Instance) -> Option<Failure> {
        let pid = self.state.resources.published_pid?;
        if process::is_alive(pid) || self.state.resources.first_query_at.is_some() {
            return None;
        }
        let log = process::log_tail(&instance.log, 4000);
        ir_engine::point_in_time::ended_short(&log).then(|| {
            ir_engine::point_in_time::unreached(
                self.state.status.point_in_time.as_ref(),
                "PostgreSQL",
                &log,
            )
        })
    }

    async fn published_serving(&mut self) -> Result<Step<Timestamp>, LocalError> {
        let instance = self.published_instance();
        let ready_at = match self.ensure_running(&instance, Which::Published).await? {
            Ok(at) => at,
            Err(f) => return Ok(Step::Failed(f)),
        };
        // A switchover that did not complete may have left it read-only: serve writes again.
        if self.state.resources.switchover_attempted
            && self.state.status.phase != Phase::SwitchingOver
            && let Err(e) = self.serve_writes_again(&instance).await
        {
            return Ok(Step::Failed(Failure::new(
                Reason::ReadWriteRestoreFailed,
                e,
            )));
        }
        Ok(Step::Ready(ready_at))
    }

    /// A switchover that did not complete left `instance` read-only in its configuration,
    /// which a restart keeps: serve writes again.
    pub(super) async fn serve_writes_again(&mut self, instance: &Instance) -> Result<(), String> {
        let client = self
            .endpoint(instance)
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        postgres::set_read_only(&client, false)
            .await
            .map_err(|e| e.to_string())?;
        self.state.resources.switchover_attempted = false;
        Ok(())
    }
}
