//! The keeper of a publish: the `irctl publish --keep` that holds the workdir in its own
//! session while the publish serves, started by `irctl publish` and stopped by an `irctl
//! recover` that goes on from the publish.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use ir_cli::local::Workdir;
use ir_engine::process::{self, OsUser};

/// How long a keeper may take to open the workdir and hold it.
const KEEPER_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a keeper may take to finish its step and hand the workdir over.
const KEEPER_STOP_TIMEOUT: Duration = Duration::from_secs(120);

/// Starts the keeper of the publish in `workdir`, in its own session.
pub fn start_keeper(workdir: &Workdir) -> anyhow::Result<()> {
    let program = std::env::current_exe().context("locating the irctl binary")?;
    let mut command = Command::new(program);
    command
        .arg("publish")
        .arg("--workdir")
        .arg(&workdir.root)
        .arg("--keep");
    let me = OsUser::current().context("looking up the user running irctl")?;
    let log = workdir.logs().join("keeper.log");
    let pid = process::spawn_detached(command, &me, &log)
        .with_context(|| format!("starting the publish's keeper (log {})", log.display()))?;
    // Handed over once the keeper holds the workdir: a command right after this one must find
    // it there, not a workdir nobody holds.
    let deadline = Instant::now() + KEEPER_START_TIMEOUT;
    while workdir.holder() != Some(pid) {
        if let process::ProcState::Exited(code) = process::poll(pid) {
            anyhow::bail!(
                "the publish's keeper (pid {pid}) exited ({code:?}): {}",
                process::log_tail(&log, 1000)
            );
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "the publish's keeper (pid {pid}) did not take {} over within {} s; see {}",
                workdir.root.display(),
                KEEPER_START_TIMEOUT.as_secs(),
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::info!(pid, "the publish's keeper runs");
    Ok(())
}

/// Stops the process that holds `workdir` (a publish's keeper) once it finished its step.
pub async fn stop_keeper(workdir: &Workdir) -> anyhow::Result<()> {
    let Some(pid) = workdir.holder() else {
        return Ok(());
    };
    process::signal(pid, libc::SIGTERM)?;
    let deadline = Instant::now() + KEEPER_STOP_TIMEOUT;
    while workdir.is_running() {
        if Instant::now() >= deadline {
            anyhow::bail!(
                "{}: the process holding it (pid {pid}) did not stop within {} s",
                workdir.root.display(),
                KEEPER_STOP_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
