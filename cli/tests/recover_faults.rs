//! `irctl recover` when the repository goes away: Waiting with retries, Failed when they run
//! out, and a manual retry that resumes; a database role the backup lacks fails at once. Real
//! S3 server (MinIO), real mounts and PostgreSQL.

mod common;

use std::time::{Duration, Instant};

use common::recovery::{Recovery, sample_backup};
use ir_e2e::s3::S3Server;
use ir_e2e::{require_fuse, require_root, shared_tempdir};

const TIMEOUT: Duration = Duration::from_secs(240);

#[test]
fn repository_outage_waits_fails_after_the_retries_and_resumes_on_manual_retry() {
    require_root();
    require_fuse();
    let root = shared_tempdir();
    let mut s3 = S3Server::start();
    let env = s3.env();
    let repo = s3.url("recover");
    let (id, _) = sample_backup(root.path(), 1, &env, &repo);
    let mut r = Recovery::new(root.path(), &repo, &id, &env);
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
fn a_role_the_backup_lacks_fails_at_once_naming_db_user() {
    require_root();
    require_fuse();
    let root = shared_tempdir();
    let repo = format!("file://{}/repo", root.path().display());
    let (id, _) = sample_backup(root.path(), 1, &[], &repo);
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
