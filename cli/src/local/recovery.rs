//! One local recovery in progress ([`LocalRecovery`]): what it was asked and has found, and
//! what every action uses: the workdir's layout, the target directory, PostgreSQL's binaries.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;

use ir_api::recovery::{Phase, RecoveryMode};

use ir_api::Reason;
use ir_api::recovery::RecoveryStatus;
use ir_engine::machine::Failure;
use ir_engine::postgres::PgBinaries;
use ir_engine::process::{self, OsUser};

use super::dir::{Ancestors, Dir};
use super::error::{LocalError, io_err};
use super::spec::{LocalSpec, Rerun};
use super::validate;
use super::workdir::{Access, LocalState, Resources, Which, Workdir};

/// One local recovery in progress.
pub struct LocalRecovery {
    pub(super) workdir: Workdir,
    pub(super) state: LocalState,
    /// Whether `state` is in the workdir yet (only after validation passed).
    pub(super) persisted: bool,
    /// The `irctl` binary, which runs the mount.
    pub(super) mount_program: PathBuf,
    pub(super) pg_user: OsUser,
    bins: Option<PgBinaries>,
    _lock: Option<File>,
}

impl LocalRecovery {
    /// A new recovery of `spec` in `workdir` (nothing is created before validation passes), or
    /// the one already recorded there, changed by `rerun` (which must not contradict it).
    pub fn open(
        workdir: Workdir,
        spec: Option<LocalSpec>,
        rerun: Rerun,
        mount_program: PathBuf,
    ) -> Result<Self, LocalError> {
        workdir.open_root()?;
        let (state, persisted, lock) = match workdir.load()? {
            Some(mut state) => {
                let was = state.spec.mode;
                rerun.apply(&mut state.spec)?;
                let lock = workdir.lock()?;
                if was == RecoveryMode::Publish && state.spec.mode == RecoveryMode::Recover {
                    Self::go_on_to_recover(&workdir, &mut state)?;
                }
                (state, true, Some(lock))
            }
            None => {
                let spec = spec.ok_or_else(|| LocalError::NoRecovery(workdir.root.clone()))?;
                let state = LocalState {
                    spec,
                    status: RecoveryStatus::default(),
                    resources: Resources::default(),
                    torn_down: Vec::new(),
                };
                (state, false, None)
            }
        };
        let pg_user = OsUser::by_name(&state.spec.pg_user).ok_or_else(|| LocalError::Invalid {
            reason: Reason::UnknownUser.to_string(),
            message: format!("--pg-user: no such OS user {:?}", state.spec.pg_user),
        })?;
        Ok(LocalRecovery {
            workdir,
            state,
            persisted,
            mount_program,
            pg_user,
            bins: None,
            _lock: lock,
        })
    }

    /// A publish becomes a recovery: the target is checked and made now, as validation would
    /// have; what was published goes on serving.
    fn go_on_to_recover(workdir: &Workdir, state: &mut LocalState) -> Result<(), LocalError> {
        let refuse = |f: Failure| LocalError::Invalid {
            reason: f.reason.to_string(),
            message: f.message,
        };
        let phase = state.status.phase;
        if matches!(phase, Phase::Unpublished | Phase::Aborted) {
            return Err(LocalError::Conflict(format!(
                "the publish ended ({phase}): recover the backup with a new --workdir"
            )));
        }
        let size = state.status.backup.as_ref().map_or(0, |b| b.size_bytes);
        validate::check_new_target(&state.spec, &workdir.root, size).map_err(refuse)?;
        Ok(())
    }

    pub fn status(&self) -> &RecoveryStatus {
        &self.state.status
    }

    pub fn spec(&self) -> &LocalSpec {
        &self.state.spec
    }

    /// What tearing down did, once the recovery was unpublished or aborted.
    pub fn torn_down(&self) -> &[String] {
        &self.state.torn_down
    }

    /// The published instance's connection string for clients.
    pub fn published_conninfo(&self) -> String {
        let host = match self
            .state
            .spec
            .listen_addresses
            .split(',')
            .next()
            .map(str::trim)
        {
            Some("" | "*") | None => "localhost".to_owned(),
            Some(first) => first.to_owned(),
        };
        format!(
            "host={host} port={} dbname={}",
            self.state.spec.published_port, self.state.spec.db_name
        )
    }

    /// Makes the workdir with the state as its first file, so that from here on a killed
    /// command leaves a recovery to resume, never a workdir it refuses as foreign.
    pub(super) fn persist(&mut self) -> Result<(), LocalError> {
        if self.persisted {
            return Ok(());
        }
        let root = &self.workdir.root;
        if let Some(parent) = root.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        match std::fs::DirBuilder::new().mode(0o700).create(root) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(io_err(root)(e)),
            _ => {}
        }
        let dir = self.open_root()?;
        self.access().pass(&dir).map_err(io_err(root))?;
        self.workdir.save(&self.state)?;
        self._lock = Some(self.workdir.lock()?);
        self.persisted = true;
        Ok(())
    }

    pub(super) fn open_root(&self) -> Result<Dir, LocalError> {
        self.workdir
            .open_root()?
            .ok_or_else(|| LocalError::NoRecovery(self.workdir.root.clone()))
    }

    pub(super) fn access(&self) -> Access {
        Access::new(&self.pg_user)
    }

    /// Makes the workdir's directories (`create`), or gives those there the modes and owners
    /// they must have (a workdir of an older irctl had them open to everyone).
    pub(super) fn lay_out(&self, create: bool) -> Result<(), LocalError> {
        let access = self.access();
        let root = self.open_root()?;
        access.pass(&root).map_err(io_err(&self.workdir.root))?;
        let sub = |parent: &Dir, name: &str| -> Result<Option<Dir>, LocalError> {
            let name = OsStr::new(name);
            let found = if create {
                parent.make_dir(name, 0o700)
            } else {
                parent.open_dir(name)
            };
            match found {
                Ok(dir) => Ok(Some(dir)),
                Err(e) if !create && e.is_not_found() => Ok(None),
                Err(e) => Err(e.into()),
            }
        };
        if create {
            // Never chmodded: once mounted, the backup's own root shows here.
            root.mkdir(OsStr::new("mnt"), 0o700)?;
        }
        for name in ["ircache", "logs", "requests", "run"] {
            if let Some(dir) = sub(&root, name)? {
                dir.set_mode(0o700).map_err(io_err(dir.path()))?;
                // PostgreSQL makes its sockets there.
                if name == "run" && process::is_root() {
                    let user = &self.pg_user;
                    dir.set_owner(Some(user.uid), Some(user.gid))
                        .map_err(io_err(dir.path()))?;
                }
            }
        }
        if let Some(conf) = sub(&root, "conf")? {
            access.pass(&conf).map_err(io_err(conf.path()))?;
            for name in [Which::Published.name(), Which::Target.name()] {
                if let Some(dir) = sub(&conf, name)? {
                    access.pass(&dir).map_err(io_err(dir.path()))?;
                }
            }
        }
        Ok(())
    }

    /// Makes the target directory (or takes the empty one validation found), PostgreSQL's
    /// alone, and records which directory it is.
    pub(super) fn make_target(&mut self) -> Result<(), Failure> {
        let target = self.target_path()?;
        let target = &target;
        let unsafe_target = |e: &dyn std::fmt::Display| {
            Failure::new(
                Reason::TargetUnsafe,
                format!("--target-pgdata {}: {e}", target.display()),
            )
        };
        let (parent, name) =
            Dir::open_parent(target, Ancestors::Any).map_err(|e| unsafe_target(&e))?;
        let dir = parent
            .make_dir(&name, 0o700)
            .map_err(|e| unsafe_target(&e))?;
        self.own_target(&dir).map_err(|e| unsafe_target(&e))?;
        let id = dir.id().map_err(|e| unsafe_target(&e))?;
        self.state.resources.target_id = Some(id);
        Ok(())
    }

    /// The target's path; a publish has none.
    pub(super) fn target_path(&self) -> Result<PathBuf, Failure> {
        self.state.spec.target_pgdata.clone().ok_or_else(|| {
            Failure::new(
                Reason::InvalidSpec,
                "a publish has no target: give --target-pgdata to irctl recover to go on to a \
                 recovery",
            )
        })
    }

    pub(super) fn own_target(&self, dir: &Dir) -> std::io::Result<()> {
        dir.set_mode(0o700)?;
        if process::is_root() {
            dir.set_owner(Some(self.pg_user.uid), Some(self.pg_user.gid))?;
        }
        Ok(())
    }

    /// The target directory, opened: `--target-pgdata` must still lead, without a symbolic
    /// link, to the directory recorded at validation.
    pub(super) fn target_dir(&mut self) -> Result<Dir, Failure> {
        let target = self.target_path()?;
        let target = &target;
        let replaced = |why: String| {
            Failure::new(
                Reason::TargetReplaced,
                format!(
                    "--target-pgdata {}: {why}; it is no longer the directory this recovery \
                     made, and nothing was changed in what it leads to now",
                    target.display()
                ),
            )
        };
        let dir = Dir::open(target, Ancestors::Any).map_err(|e| replaced(e.to_string()))?;
        let id = dir.id().map_err(|e| replaced(e.to_string()))?;
        match self.state.resources.target_id {
            Some(recorded) if recorded != id => Err(replaced(
                "another directory is there now (moved or replaced since validation)".into(),
            )),
            Some(_) => Ok(dir),
            // Recorded by an older irctl: the directory there now is taken as the one.
            None => {
                self.state.resources.target_id = Some(id);
                Ok(dir)
            }
        }
    }

    pub(super) fn bins(&mut self) -> Result<PgBinaries, Failure> {
        if let Some(bins) = &self.bins {
            return Ok(bins.clone());
        }
        let major = self.state.status.backup.as_ref().map_or(0, |b| b.pg_major);
        let bins = PgBinaries::find(major, self.state.spec.pg_bindir.as_deref())
            .map_err(|e| Failure::new(Reason::PostgresBinariesMissing, e.to_string()))?;
        self.bins = Some(bins.clone());
        Ok(bins)
    }
}
