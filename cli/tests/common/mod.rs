//! Running `irctl` in tests: one-shot commands and a foreground `irctl mount` process.
#![allow(dead_code)] // each test binary uses its own part of this module

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub fn irctl() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_irctl"));
    c.env("RUST_LOG", "info");
    c
}

/// Runs irctl with `args` and `envs`; panics with its output unless it succeeds.
pub fn irctl_ok(args: &[&str], envs: &[(String, String)]) -> String {
    let out = irctl_run(args, envs);
    assert!(
        out.status.success(),
        "irctl {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

pub fn irctl_run(args: &[&str], envs: &[(String, String)]) -> Output {
    irctl()
        .args(args)
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run irctl")
}

/// `irctl backup create --from-pg`; returns the new backup id.
pub fn backup_from_pg(repo: &str, conninfo: &str, envs: &[(String, String)]) -> String {
    irctl_ok(
        &["backup", "create", "--repo", repo, "--from-pg", conninfo],
        envs,
    )
    .trim()
    .to_string()
}

/// `irctl mount` running in the background until stopped, killed or dropped.
pub struct MountProcess {
    child: Child,
    pub mountpoint: PathBuf,
}

impl MountProcess {
    /// Starts `irctl mount` and waits for its "mounted" line.
    pub fn start(
        repo: &str,
        backup: &str,
        cache: &Path,
        mountpoint: &Path,
        owner: Option<(u32, u32)>,
        envs: &[(String, String)],
    ) -> MountProcess {
        let owner_args = owner
            .map(|(uid, gid)| {
                vec![
                    "--uid".to_string(),
                    uid.to_string(),
                    "--gid".into(),
                    gid.to_string(),
                ]
            })
            .unwrap_or_default();
        let args: Vec<&str> = owner_args.iter().map(String::as_str).collect();
        Self::start_with_args(repo, backup, cache, mountpoint, &args, envs)
    }

    /// Like `start`, with extra `irctl mount` flags.
    pub fn start_with_args(
        repo: &str,
        backup: &str,
        cache: &Path,
        mountpoint: &Path,
        extra: &[&str],
        envs: &[(String, String)],
    ) -> MountProcess {
        let mut cmd = irctl();
        cmd.args(["mount", "--repo", repo, "--backup", backup, "--cache"])
            .arg(cache)
            .args(extra)
            .envs(envs.iter().map(|(k, v)| (k, v)));
        let mut child = cmd
            .arg(mountpoint)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn irctl mount");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("mounted") {
                    let _ = tx.send(line);
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(_) => MountProcess {
                child,
                mountpoint: mountpoint.to_path_buf(),
            },
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().expect("wait irctl mount");
                panic!("irctl mount did not become ready ({status})");
            }
        }
    }

    /// SIGKILL: no unmount, no flush; the kernel leaves a dead mount behind.
    pub fn kill(mut self) {
        self.child.kill().expect("kill irctl mount");
        self.child.wait().expect("wait irctl mount");
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        let status = self
            .term_and_wait(Duration::from_secs(60))
            .unwrap_or_else(|| panic!("irctl mount did not exit within 60 s of SIGTERM"));
        assert!(status.success(), "irctl mount exited with {status}");
    }

    /// SIGTERM, then up to `patience` for the exit; SIGKILL (and `None`) when that runs out.
    fn term_and_wait(&mut self, patience: Duration) -> Option<std::process::ExitStatus> {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + patience;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait irctl mount") {
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for MountProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.term_and_wait(Duration::from_secs(60));
        }
    }
}
pub mod load;
pub mod recovery;

/// Gives everything under `path` to the PostgreSQL user: the archive_command writes the
/// repository as that user.
pub fn chown_tree(path: &Path) {
    ir_e2e::pg::chown_to_pg(path);
    if path.is_dir() {
        for e in std::fs::read_dir(path).unwrap() {
            chown_tree(&e.unwrap().path());
        }
    }
}

/// Waits until the archiver has archived `name` (and everything before it) without a failure.
pub fn wait_archived(pg: &ir_e2e::pg::PgCluster, log: &Path, name: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let row = pg.psql(
            "select coalesce(last_archived_wal, '0') || '|' || coalesce(last_failed_wal, '-') \
             from pg_stat_archiver",
        );
        let (archived, failed) = row.split_once('|').unwrap();
        assert_eq!(
            failed,
            "-",
            "archive_command failed; server log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        if archived >= name {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} not archived after 90 s (last {archived}); server log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
