//! `irctl recover` when the repository goes away: Waiting with retries, Failed when they run
//! out, and a manual retry that resumes; a database role the backup lacks fails at once; a
//! switchover that fails after the stop serves again at once. Real S3 server (MinIO), real
//! mounts and PostgreSQL.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::irctl_ok;
use common::load::start_writers;
use common::recovery::{Recovery, sample_backup, sample_setup};
use ir_e2e::pg::{as_pg, bindir, children_of};
use ir_e2e::s3::S3Server;
use ir_e2e::{require_fuse, require_root, shared_tempdir};

const TIMEOUT: Duration = Duration::from_secs(240);

/// A backup in a fresh S3 repository, and its recovery, not started yet.
fn s3_recovery() -> (tempfile::TempDir, S3Server, Recovery) {
    require_root();
    require_fuse();
    let root = shared_tempdir();
    let s3 = S3Server::start();
    let repo = s3.url("recover");
    let (id, _) = sample_backup(root.path(), 1, &s3.env(), &repo);
    let r = Recovery::new(root.path(), &repo, &id, &s3.env());
    (root, s3, r)
}

#[test]
fn repository_outage_waits_fails_after_the_retries_and_resumes_on_manual_retry() {
    let (_root, mut s3, mut r) = s3_recovery();
    let fast_fail = ["--switchover", "manual", "--read-deadline", "2"];

    r.spawn(&fast_fail);
    r.wait_phase_reason("ReadyForSwitchover", Some("AwaitingApproval"), TIMEOUT);
    r.published("INSERT INTO marker VALUES ('committed before the outage')");

    // The command, the repository and the mount all go away: the published instance is left
    // on a dead mount, and a new mount cannot reach the repository.
    r.kill();
    s3.stop();
    let mount = r
        .recorded_pid("mountPid")
        .expect("a mount process is recorded");
    // SAFETY: SIGKILL of the mount process the recovery started.
    unsafe { libc::kill(mount as i32, libc::SIGKILL) };

    let mut args = fast_fail.to_vec();
    args.extend(["--retry-limit", "2", "--retry-interval", "1s"]);
    r.spawn(&args);
    let exit = r.wait_exit(TIMEOUT);
    assert!(
        !exit.success(),
        "the recovery must fail once the retries are used up"
    );
    let status = r.status();
    assert_eq!(status["phase"], "Failed", "{status}");
    assert_eq!(status["reason"], "RetriesExhausted", "{status}");
    assert_eq!(status["resumePhase"], "ReadyForSwitchover", "{status}");
    assert_eq!(status["retry"]["attempt"], 2, "{status}");
    assert!(
        status["retry"]["lastError"]
            .as_str()
            .unwrap_or_default()
            .contains("RepositoryUnavailable"),
        "{status}"
    );
    let out = r.output();
    assert!(
        out.contains("retry 1 of 2") && out.contains("retry 2 of 2"),
        "{out}"
    );

    // Running it again is a manual retry: a new round, which waits while the outage lasts.
    let mut args = fast_fail.to_vec();
    args.extend(["--retry-limit", "100", "--retry-interval", "1s"]);
    r.spawn(&args);
    let waiting = r.wait_phase("Waiting", TIMEOUT);
    assert_eq!(waiting["reason"], "RepositoryUnavailable", "{waiting}");
    assert_eq!(waiting["resumePhase"], "ReadyForSwitchover", "{waiting}");
    assert!(waiting["retry"]["nextAttemptAt"].is_string(), "{waiting}");

    s3.restart();
    r.wait_phase_reason("ReadyForSwitchover", Some("AwaitingApproval"), TIMEOUT);
    // Remounted over the same IRCache, restarted with crash recovery: the commit is there.
    assert_eq!(
        r.published("SELECT count(*) FROM marker WHERE note = 'committed before the outage'"),
        "1"
    );
    r.approve();
    let exit = r.wait_exit(TIMEOUT);
    assert!(exit.success(), "{}", r.output());
    assert_eq!(r.status()["phase"], "Completed");
    assert_eq!(
        r.target("SELECT count(*) FROM marker WHERE note = 'committed before the outage'"),
        "1"
    );
    assert_eq!(r.target("SELECT pg_is_in_recovery()"), "f");
}

#[test]
fn an_unreachable_repository_at_validation_waits_in_a_recorded_workdir() {
    let (_root, mut s3, mut r) = s3_recovery();
    s3.stop();

    r.spawn(&["--read-deadline", "2", "--retry-interval", "1s"]);
    // `irctl status` reads it from the workdir: the recovery exists while it waits.
    let waiting = r.wait_phase("Waiting", TIMEOUT);
    assert_eq!(waiting["reason"], "RepositoryUnavailable", "{waiting}");
    assert_eq!(waiting["resumePhase"], "Validating", "{waiting}");
    assert!(
        !r.target.exists(),
        "nothing but the workdir before validation passed"
    );

    // Killed while waiting, it resumes from the workdir alone.
    r.kill();
    s3.restart();
    r.spawn_resume();
    let exit = r.wait_exit(TIMEOUT);
    assert!(exit.success(), "{}", r.output());
    assert_eq!(r.status()["phase"], "Completed");
    assert_eq!(r.target("SELECT note FROM marker"), "from the backup");
}

#[test]
fn a_role_the_backup_lacks_fails_at_once_naming_db_user() {
    let (root, repo, id, _) = sample_setup(1);
    let mut r = Recovery::new(root.path(), &repo, &id, &[]);
    let start_timeout = Duration::from_secs(600);

    let started = Instant::now();
    r.spawn(&[
        "--db-user",
        "nobody",
        "--start-timeout",
        &start_timeout.as_secs().to_string(),
    ]);
    let exit = r.wait_exit(start_timeout);
    let took = started.elapsed();
    assert_eq!(exit.code(), Some(1), "{}", r.output());
    // A refused login is not waited out: no retries, no start timeout.
    assert!(took < Duration::from_secs(60), "failed after {took:?}");
    let status = r.status();
    assert_eq!(status["phase"], "Failed", "{status}");
    assert_eq!(status["reason"], "AuthenticationFailed", "{status}");
    let message = status["message"].as_str().unwrap_or_default();
    assert!(message.contains("--db-user nobody"), "{status}");
    assert!(
        message.contains("\"nobody\""),
        "PostgreSQL's words: {status}"
    );
    assert_eq!(status["retry"]["attempt"], 0, "{status}");

    // Run again with a role that exists: the rerun takes it and the recovery completes.
    r.spawn(&["--db-user", "postgres"]);
    let exit = r.wait_exit(Duration::from_secs(300));
    assert_eq!(exit.code(), Some(0), "{}", r.output());
    let status = r.status();
    assert_eq!(status["phase"], "Completed", "{status}");
}

/// The postmaster's pid and status line ("ready", "stopping", ...) from `postmaster.pid`.
fn postmaster_status(datadir: &Path) -> Option<(u32, String)> {
    let text = std::fs::read_to_string(datadir.join("postmaster.pid")).ok()?;
    let lines: Vec<&str> = text.lines().collect();
    let pid = lines.first()?.trim().parse().ok()?;
    Some((pid, lines.get(7).unwrap_or(&"").trim().to_owned()))
}

/// The standby's startup process, which replays the WAL.
fn startup_process(target: &Path) -> u32 {
    let (postmaster, _) = postmaster_status(target).expect("the target runs");
    children_of(postmaster)
        .into_iter()
        .find(|pid| {
            // "postgres: startup ...", or "postgres: <cluster_name>: startup ..."
            std::fs::read_to_string(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                c.strip_prefix("postgres: ")
                    .is_some_and(|title| title.split(": ").any(|p| p.starts_with("startup")))
            })
        })
        .expect("the target has a startup process")
}

/// A session with a write transaction left open that the switchover does not end before the
/// stop: a database walsender, which the drain (client backends) leaves alone. The shutdown
/// then writes its abort after the last LSN the standby replayed before the stop.
fn open_transaction_past_the_drain(r: &Recovery) -> Child {
    let conninfo = format!(
        "host={} port={} user=postgres dbname=postgres replication=database",
        r.workdir.join("run").display(),
        r.published_port
    );
    let mut psql = as_pg(&bindir().join("psql"))
        .args(["-X", "-qAt", "-v", "ON_ERROR_STOP=1", "-d", &conninfo])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn psql");
    let mut stdin = psql.stdin.take().expect("piped stdin");
    stdin
        .write_all(
            b"BEGIN;\nINSERT INTO commits VALUES (-2);\n\
              SELECT backend_type FROM pg_stat_activity WHERE pid = pg_backend_pid();\n",
        )
        .expect("write to psql");
    // psql ends the session once its input closes: the child keeps it.
    psql.stdin = Some(stdin);
    let mut line = String::new();
    BufReader::new(psql.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .expect("read from psql");
    assert_eq!(line.trim(), "walsender", "the open transaction's session");
    psql
}

#[test]
fn a_switchover_failing_after_the_stop_serves_again_at_once_and_the_retry_completes() {
    let (root, repo, id, _) = sample_setup(1);
    let mut r = Recovery::new(root.path(), &repo, &id, &[]);
    // The default retry interval (5 minutes) is far beyond the time the test allows.
    r.spawn(&["--switchover", "manual", "--catch-up-timeout", "3"]);
    r.wait_phase_reason("ReadyForSwitchover", Some("AwaitingApproval"), TIMEOUT);
    r.published("CREATE TABLE commits(id bigint PRIMARY KEY)");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(&rt, r.published_tcp(), &stop);
    std::thread::sleep(Duration::from_secs(1));

    let mut open_transaction = open_transaction_past_the_drain(&r);
    let published_datadir = r.workdir.join("mnt");
    let startup = startup_process(&r.target);
    r.approve();
    // Pause replay once the published instance shuts down: the abort of the open transaction,
    // before the shutdown checkpoint the switchover waits for after the stop, is not replayed.
    let deadline = Instant::now() + TIMEOUT;
    while postmaster_status(&published_datadir).is_some_and(|(_, s)| s != "stopping") {
        assert!(
            Instant::now() < deadline,
            "the published instance was not stopped"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // SAFETY: SIGSTOP of the target's startup process, which this recovery started.
    unsafe { libc::kill(startup as i32, libc::SIGSTOP) };
    let waiting = r.wait_phase("Waiting", TIMEOUT);
    let failed_at = Instant::now();
    // SAFETY: as above; replay resumes.
    unsafe { libc::kill(startup as i32, libc::SIGCONT) };
    open_transaction.kill().expect("kill psql");
    open_transaction.wait().expect("wait psql");
    assert_eq!(waiting["reason"], "SwitchoverFailed", "{waiting}");
    assert!(
        waiting["message"]
            .as_str()
            .unwrap_or_default()
            .contains("the published instance serves again"),
        "{waiting}"
    );

    // Serving again long before the retry, and writable.
    loop {
        if r.try_published("INSERT INTO commits VALUES (-1)").is_ok() {
            break;
        }
        assert!(
            failed_at.elapsed() < Duration::from_secs(60),
            "the published instance does not accept writes 60 s after the failed switchover: \
             {}",
            r.try_published("SELECT 1").unwrap_err()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = BTreeSet::from([-1]);
    for w in writers {
        acknowledged.extend(rt.block_on(w).unwrap().acknowledged);
    }
    let missing = |rows: String| -> Vec<i64> {
        let rows: BTreeSet<i64> = rows.lines().map(|l| l.parse().unwrap()).collect();
        acknowledged.difference(&rows).copied().collect()
    };
    let lost = missing(r.published("SELECT id FROM commits"));
    assert!(lost.is_empty(), "acknowledged commits lost: {lost:?}");
    assert_eq!(r.target("SELECT pg_is_in_recovery()"), "t");

    irctl_ok(
        &["retry", "--workdir", &r.workdir.display().to_string()],
        &[],
    );
    let exit = r.wait_exit(TIMEOUT);
    assert!(exit.success(), "{}", r.output());
    assert_eq!(r.status()["phase"], "Completed");
    assert_eq!(r.target("SELECT pg_is_in_recovery()"), "f");
    let lost = missing(r.target("SELECT id FROM commits"));
    assert!(
        lost.is_empty(),
        "acknowledged commits missing on the target: {lost:?}"
    );
}
