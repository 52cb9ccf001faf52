//! `irctl recover` in tests: a source database and its backup, a recovery running in the
//! background, its status, and SQL against the instances it runs. Everything a recovery started
//! (PostgreSQL, the mount) is stopped when the [`Recovery`] is dropped, also on panic.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ir_e2e::pg::{PgCluster, psql_at, tcp_conninfo};
use serde_json::Value;

use super::{backup_from_pg, irctl, irctl_ok};

/// A temporary directory holding a file:// repository with the backup of a pgbench source of
/// `scale` (after checking for root and FUSE): the directory, the repository URL, the backup id
/// and the source's checksum of pgbench_accounts.
pub fn sample_setup(scale: u32) -> (tempfile::TempDir, String, String, String) {
    ir_e2e::require_root();
    ir_e2e::require_fuse();
    let root = ir_e2e::shared_tempdir();
    let repo = format!("file://{}/repo", root.path().display());
    let (id, checksum) = sample_backup(root.path(), scale, &[], &repo);
    (root, repo, id, checksum)
}

/// A pgbench-initialised source cluster, backed up into a file:// repository; the cluster is
/// stopped afterwards. Returns the backup id and the source's checksum of pgbench_accounts.
pub fn sample_backup(
    root: &Path,
    scale: u32,
    envs: &[(String, String)],
    repo: &str,
) -> (String, String) {
    let mut source = PgCluster::init(&root.join("source"));
    source.start(&[]);
    source.pgbench(&["-i", "-s", &scale.to_string(), "-q"]);
    source.psql("CREATE TABLE marker(note text); INSERT INTO marker VALUES ('from the backup')");
    let checksum = accounts_checksum(&|sql| source.psql(sql));
    irctl_ok(&["repo", "init", "--repo", repo], envs);
    let id = backup_from_pg(repo, &source.conninfo(), envs);
    source.stop();
    (id, checksum)
}

pub fn accounts_checksum(psql: &dyn Fn(&str) -> String) -> String {
    psql("SELECT count(*) || ':' || sum(abalance) || ':' || sum(aid) FROM pgbench_accounts")
}

/// One `irctl recover` with its workdir and target under `root`.
pub struct Recovery {
    pub workdir: PathBuf,
    pub target: PathBuf,
    pub published_port: u16,
    pub target_port: u16,
    repo: String,
    backup: String,
    envs: Vec<(String, String)>,
    child: Option<Child>,
    output: Arc<Mutex<String>>,
}

impl Recovery {
    pub fn new(root: &Path, repo: &str, backup: &str, envs: &[(String, String)]) -> Recovery {
        Recovery {
            workdir: root.join("work"),
            target: root.join("target"),
            published_port: ir_e2e::free_port(),
            target_port: ir_e2e::free_port(),
            repo: repo.to_owned(),
            backup: backup.to_owned(),
            envs: envs.to_vec(),
            child: None,
            output: Arc::default(),
        }
    }

    /// The full `irctl recover` arguments, with `extra` flags.
    pub fn args(&self, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = vec!["recover".into(), "--workdir".into()];
        args.push(self.workdir.display().to_string());
        args.extend([
            "--repo".into(),
            self.repo.clone(),
            "--backup".into(),
            self.backup.clone(),
        ]);
        args.push("--target-pgdata".into());
        args.push(self.target.display().to_string());
        args.extend(["--published-port".into(), self.published_port.to_string()]);
        args.extend(["--target-port".into(), self.target_port.to_string()]);
        // Small test machines: do not insist on a gigabyte of free space.
        args.extend(["--cache-min-free".into(), "64MiB".into()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// The full `irctl publish` arguments, with `extra` flags.
    pub fn publish_args(&self, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = vec!["publish".into(), "--workdir".into()];
        args.push(self.workdir.display().to_string());
        args.extend(["--repo".into(), self.repo.clone()]);
        args.extend(["--backup".into(), self.backup.clone()]);
        args.extend(["--published-port".into(), self.published_port.to_string()]);
        args.extend(["--cache-min-free".into(), "64MiB".into()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// Runs `irctl publish` until the backup serves and its keeper took over; its output.
    pub fn publish(&self, extra: &[&str]) -> String {
        let args = self.publish_args(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = irctl_ok(&args, &self.envs);
        eprintln!("publish| {out}");
        out
    }

    /// Runs `irctl COMMAND --workdir DIR` (unpublish, abort) to its end.
    pub fn workdir_command(&self, command: &str) -> std::process::Output {
        let workdir = self.workdir.display().to_string();
        let out = super::irctl_run(&[command, "--workdir", &workdir], &self.envs);
        eprintln!(
            "{command}| {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// The process holding the workdir (a running irctl recover, a publish's keeper).
    pub fn holder(&self) -> Option<u32> {
        ir_cli::local::Workdir::new(&self.workdir).holder()
    }

    /// Starts `irctl recover` in the background.
    pub fn spawn(&mut self, extra: &[&str]) {
        self.spawn_with(irctl(), extra);
    }

    /// Starts `irctl recover` in the background through `command`, the irctl binary set up to
    /// run in another way (as another user, say).
    pub fn spawn_with(&mut self, command: Command, extra: &[&str]) {
        let args = self.args(extra);
        self.start(command, args);
    }

    /// Starts `irctl recover --workdir DIR` alone: what the workdir records, nothing more.
    pub fn spawn_resume(&mut self) {
        let workdir = self.workdir.display().to_string();
        self.start(irctl(), vec!["recover".into(), "--workdir".into(), workdir]);
    }

    fn start(&mut self, mut command: Command, args: Vec<String>) {
        assert!(self.child.is_none(), "a recover process is already running");
        let mut child = command
            .args(args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn irctl recover");
        let stdout = child.stdout.take().expect("piped stdout");
        let output = self.output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                eprintln!("recover| {line}");
                let mut out = output.lock().unwrap();
                out.push_str(&line);
                out.push('\n');
            }
        });
        self.child = Some(child);
    }

    /// Everything `irctl recover` printed so far (all runs).
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Waits for the running `irctl recover` to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("no recover process");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("wait irctl recover") {
                self.child = None;
                // Let the reader thread catch up with the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "irctl recover did not finish within {timeout:?}; status: {}\noutput:\n{}",
                    self.status_text(),
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs the recovery to a successful end.
    pub fn run_to_completion(&mut self, extra: &[&str], timeout: Duration) {
        self.spawn(extra);
        let status = self.wait_exit(timeout);
        assert!(
            status.success(),
            "irctl recover failed ({status}):\n{}",
            self.output()
        );
    }

    /// SIGKILL of `irctl recover`: no chance to save anything more.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill irctl recover");
            child.wait().expect("wait irctl recover");
        }
    }

    /// `irctl status --output json`.
    pub fn status(&self) -> Value {
        let out = irctl_ok(
            &[
                "status",
                "--workdir",
                &self.workdir.display().to_string(),
                "--output",
                "json",
            ],
            &self.envs,
        );
        serde_json::from_str(&out).expect("status JSON")
    }

    fn status_text(&self) -> String {
        let out = irctl()
            .args(["status", "--workdir", &self.workdir.display().to_string()])
            .output()
            .expect("run irctl status");
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    pub fn phase(&self) -> Option<String> {
        self.workdir.join("recovery.json").exists().then(|| {
            self.status()["phase"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
    }

    /// Waits until the recorded phase is `phase`; panics when the recovery ends otherwise.
    pub fn wait_phase(&mut self, phase: &str, timeout: Duration) -> Value {
        self.wait_phase_reason(phase, None, timeout)
    }

    /// Waits for `phase` with `reason` (a resumed phase says "Retrying" until its first look).
    pub fn wait_phase_reason(
        &mut self,
        phase: &str,
        reason: Option<&str>,
        timeout: Duration,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if self.phase().as_deref() == Some(phase) {
                let status = self.status();
                if reason.is_none_or(|r| status["reason"] == r) {
                    return status;
                }
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait().expect("wait irctl recover")
            {
                self.child = None;
                panic!(
                    "irctl recover exited ({status}) before phase {phase}:\n{}\n{}",
                    self.output(),
                    self.status_text()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "phase {phase} not reached within {timeout:?}:\n{}\n{}",
                    self.status_text(),
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn approve(&self) {
        irctl_ok(
            &[
                "switchover",
                "--workdir",
                &self.workdir.display().to_string(),
            ],
            &self.envs,
        );
    }

    fn sockets(&self) -> PathBuf {
        self.workdir.join("run")
    }

    /// psql on the published instance; Err with psql's message on failure.
    pub fn try_published(&self, sql: &str) -> Result<String, String> {
        psql_at(&self.sockets(), self.published_port, sql)
    }

    pub fn published(&self, sql: &str) -> String {
        self.try_published(sql)
            .expect("query on the published instance")
    }

    pub fn target(&self, sql: &str) -> String {
        psql_at(&self.sockets(), self.target_port, sql).expect("query on the target")
    }

    /// Connection string of the published instance over TCP, for test clients.
    pub fn published_tcp(&self) -> String {
        tcp_conninfo(self.published_port)
    }

    /// The pid `recovery.json` records for `key` (mountPid, publishedPid, ...).
    pub fn recorded_pid(&self, key: &str) -> Option<u32> {
        let text = std::fs::read_to_string(self.workdir.join("recovery.json")).ok()?;
        let state: Value = serde_json::from_str(&text).ok()?;
        state["resources"][key].as_u64().map(|p| p as u32)
    }
}

/// The end of a recovery: the target is a read-write primary on a new timeline; nothing of
/// the published side is left.
pub fn assert_switched_over(r: &Recovery) {
    assert_eq!(r.target("SELECT pg_is_in_recovery()"), "f");
    let timeline = r.target("SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)");
    assert_eq!(timeline, "00000002", "promotion starts timeline 2");
    r.target("CREATE TABLE written_after_switchover(x int); INSERT INTO written_after_switchover VALUES (1)");
    assert!(
        r.try_published("SELECT 1").is_err(),
        "the published instance must be stopped"
    );
    let mnt = r.workdir.join("mnt");
    assert!(!mnt.exists(), "the mount point is removed after unmounting");
    assert!(
        !r.workdir.join("ircache").exists(),
        "the IRCache is dropped"
    );
    assert!(!ir_fuse::is_fuse_mount(&mnt), "the backup is still mounted");
    let status = r.status();
    assert_eq!(status["phase"], "Completed");
    let ready = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .expect("Ready condition");
    assert_eq!(ready["status"], "True");
    assert!(status["timings"]["timeToFirstQueryMs"].as_u64().is_some());
    assert!(status["timings"]["switchoverDowntimeMs"].as_u64().is_some());
}

fn kill_group(pid: u32) {
    // SAFETY: kill(2) of a process group the recovery started (session leader = its pid).
    unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
}

impl Drop for Recovery {
    fn drop(&mut self) {
        self.kill();
        if let Some(pid) = self.holder() {
            kill_group(pid);
        }
        for key in ["publishedPid", "targetPid", "baseBackupPid", "mountPid"] {
            if let Some(pid) = self.recorded_pid(key) {
                kill_group(pid);
            }
        }
        for datadir in [&self.target, &self.workdir.join("mnt")] {
            if let Ok(text) = std::fs::read_to_string(datadir.join("postmaster.pid"))
                && let Some(Ok(pid)) = text.lines().next().map(|l| l.trim().parse::<u32>())
            {
                kill_group(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        let mnt = self.workdir.join("mnt");
        if let Ok(c) = std::ffi::CString::new(mnt.as_os_str().as_encoded_bytes()) {
            // SAFETY: valid C string; detaching a mount this recovery made, if any.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}
