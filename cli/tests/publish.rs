//! `irctl publish | export | unpublish | abort` end to end on this host: real PostgreSQL, real
//! FUSE mounts, pg_dump and pg_restore.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::irctl_run;
use common::recovery::{Recovery, accounts_checksum, assert_switched_over, sample_setup};
use ir_e2e::pg::PgCluster;
use serde_json::Value;

const RUN_TIMEOUT: Duration = Duration::from_secs(240);

/// What a publish or recovery started, read before it is torn down.
struct Started {
    pids: Vec<(&'static str, u32)>,
}

fn started(r: &Recovery) -> Started {
    let mut pids = Vec::new();
    for key in ["publishedPid", "mountPid", "targetPid", "baseBackupPid"] {
        if let Some(pid) = r.recorded_pid(key) {
            pids.push((key, pid));
        }
    }
    if let Some(pid) = r.holder() {
        pids.push(("holder", pid));
    }
    assert!(
        pids.iter().any(|(k, _)| *k == "publishedPid"),
        "nothing recorded: {pids:?}"
    );
    Started { pids }
}

/// Nothing of `r` is left: no process it started, no mount, no IRCache, no published instance;
/// the status says it was torn down and what that did.
fn assert_nothing_left(r: &Recovery, before: &Started, phase: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    for (what, pid) in &before.pids {
        while Path::new(&format!("/proc/{pid}")).exists() {
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if state
                .rsplit_once(") ")
                .is_some_and(|(_, s)| s.starts_with('Z'))
            {
                break;
            }
            assert!(Instant::now() < deadline, "{what} (pid {pid}) still runs");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let mnt = r.workdir.join("mnt");
    assert!(!ir_fuse::is_fuse_mount(&mnt), "the backup is still mounted");
    assert!(!mnt.exists(), "the mount point is left");
    assert!(!r.workdir.join("ircache").exists(), "the IRCache is left");
    assert!(
        r.try_published("SELECT 1").is_err(),
        "the published instance still serves"
    );
    assert_eq!(r.holder(), None, "a process still holds the workdir");
    let status = r.status();
    assert_eq!(status["phase"], phase, "{status}");
    assert!(status["timings"]["endedAt"].is_string(), "{status}");
    let torn_down = status["tornDown"].as_array().expect("tornDown");
    assert!(
        torn_down
            .iter()
            .any(|l| l.as_str().unwrap().starts_with("removed the IRCache")),
        "{status}"
    );
    status
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition: {status}"))
}

fn pg_restore(cluster: &PgCluster, dump: &Path) {
    let out = Command::new(ir_e2e::pg::bindir().join("pg_restore"))
        .arg("--host")
        .arg(&cluster.socket)
        .args(["--port", &cluster.port.to_string()])
        .args([
            "--username",
            "postgres",
            "--dbname",
            "postgres",
            "--exit-on-error",
        ])
        .arg(dump)
        .output()
        .expect("run pg_restore");
    assert!(
        out.status.success(),
        "pg_restore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn publish_export_and_unpublish_leave_a_dump_that_restores_and_nothing_else() {
    let (root, repo, id, checksum) = sample_setup(1);
    let r = Recovery::new(root.path(), &repo, &id, &[]);
    let out = r.publish(&["--ttl", "1h"]);
    assert!(out.contains("published: host=localhost"), "{out}");

    let status = r.status();
    assert_eq!(status["phase"], "Published", "{status}");
    assert_eq!(status["mode"], "Publish");
    assert!(status["expiresAt"].is_string(), "{status}");
    assert_eq!(condition(&status, "Ready")["status"], "True");
    assert!(status.get("targetPgdata").is_none(), "{status}");
    assert!(r.holder().is_some(), "no keeper holds the publish");
    assert_eq!(accounts_checksum(&|sql| r.published(sql)), checksum);
    // Not read-only: a look may write (to the IRCache).
    r.published("CREATE TABLE scratch AS SELECT 1 AS x");

    let dump = root.path().join("accounts.dump");
    let workdir = r.workdir.display().to_string();
    let dump_arg = dump.display().to_string();
    let out = irctl_run(
        &[
            "export",
            "--workdir",
            &workdir,
            "--output",
            &dump_arg,
            "--table",
            "pgbench_accounts",
            "--table",
            "marker",
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "irctl export failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("irctl export: done"));

    let mut fresh = PgCluster::init(&root.path().join("fresh"));
    fresh.start(&[]);
    pg_restore(&fresh, &dump);
    assert_eq!(accounts_checksum(&|sql| fresh.psql(sql)), checksum);
    assert_eq!(fresh.psql("SELECT note FROM marker"), "from the backup");
    assert!(
        fresh.try_psql("SELECT 1 FROM scratch").is_err(),
        "only the tables asked for are exported"
    );

    let before = started(&r);
    let out = r.workdir_command("unpublish");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("Unpublished"));
    let status = assert_nothing_left(&r, &before, "Unpublished");
    assert_eq!(status["reason"], "Unpublished");
    // Exporting from what is gone is a clear error.
    let out = irctl_run(&["export", "--workdir", &workdir, "--output", "-"], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not serve (phase Unpublished)"));
}

#[test]
fn an_expired_publish_is_torn_down_by_its_keeper() {
    let (root, repo, id, _) = sample_setup(1);
    let mut r = Recovery::new(root.path(), &repo, &id, &[]);
    r.publish(&["--ttl", "4s"]);
    let before = started(&r);
    let status = r.wait_phase("Unpublished", Duration::from_secs(60));
    assert!(status["expiresAt"].is_null(), "{status}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !r.status()["timings"]["endedAt"].is_string() {
        assert!(Instant::now() < deadline, "not torn down: {}", r.status());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_nothing_left(&r, &before, "Unpublished");
    let log = std::fs::read_to_string(r.workdir.join("logs/keeper.log")).unwrap();
    assert!(
        log.contains("Published -> Unpublished: the publish expired"),
        "{log}"
    );
    // Ending what has ended says so and does nothing.
    let out = r.workdir_command("unpublish");
    assert!(out.status.success());
}

#[test]
fn a_read_only_publish_refuses_writes_and_cannot_become_a_recovery() {
    let (root, repo, id, checksum) = sample_setup(1);
    let mut r = Recovery::new(root.path(), &repo, &id, &[]);
    r.publish(&["--read-only"]);
    assert_eq!(accounts_checksum(&|sql| r.published(sql)), checksum);
    assert_eq!(r.published("SELECT pg_is_in_recovery()"), "t");
    let refused = r
        .try_published("INSERT INTO marker VALUES ('x')")
        .unwrap_err();
    assert!(refused.contains("read-only transaction"), "{refused}");
    let refused = r
        .try_published("BEGIN READ WRITE; INSERT INTO marker VALUES ('x'); COMMIT")
        .unwrap_err();
    assert!(refused.contains("during recovery"), "{refused}");

    // Going on to a recovery is refused, and the publish keeps serving under its keeper.
    r.spawn(&[]);
    let exit = r.wait_exit(RUN_TIMEOUT);
    assert!(!exit.success());
    assert!(
        !r.target.exists(),
        "a refused recovery must not make the target"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while r.holder().is_none() {
        assert!(
            Instant::now() < deadline,
            "the keeper was not started again"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(r.published("SELECT count(*) FROM marker"), "1");

    let before = started(&r);
    let out = r.workdir_command("abort");
    assert!(out.status.success());
    assert_nothing_left(&r, &before, "Aborted");
}

#[test]
fn a_publish_goes_on_to_a_recovery_and_keeps_what_was_written() {
    let (root, repo, id, checksum) = sample_setup(1);
    let mut r = Recovery::new(root.path(), &repo, &id, &[]);
    r.publish(&["--ttl", "1h"]);
    let keeper = r.holder().expect("a keeper");
    r.published("CREATE TABLE written_while_published AS SELECT 42 AS answer");
    r.run_to_completion(&[], RUN_TIMEOUT);
    assert!(!Path::new(&format!("/proc/{keeper}")).exists() || r.holder() != Some(keeper));
    assert_switched_over(&r);
    assert_eq!(accounts_checksum(&|sql| r.target(sql)), checksum);
    assert_eq!(r.target("SELECT answer FROM written_while_published"), "42");
    let status = r.status();
    assert_eq!(status["mode"], "Recover");
    assert!(status["expiresAt"].is_null(), "{status}");
    assert!(
        r.output().contains("Published -> Syncing"),
        "{}",
        r.output()
    );
}

#[test]
fn abort_tears_a_recovery_down_before_its_switchover_and_is_refused_after() {
    let (root, repo, id, _) = sample_setup(1);
    let mut r = Recovery::new(root.path(), &repo, &id, &[]);
    r.spawn(&["--switchover", "manual"]);
    r.wait_phase("ReadyForSwitchover", RUN_TIMEOUT);
    assert!(r.target.join("PG_VERSION").exists());
    let before = started(&r);
    assert!(before.pids.iter().any(|(k, _)| *k == "targetPid"));
    // The running irctl recover takes the abort up and stops.
    let out = r.workdir_command("abort");
    assert!(out.status.success());
    let exit = r.wait_exit(RUN_TIMEOUT);
    assert!(!exit.success(), "an aborted irctl recover must not exit 0");
    assert!(
        r.output().contains("ReadyForSwitchover -> Aborted"),
        "{}",
        r.output()
    );
    let status = assert_nothing_left(&r, &before, "Aborted");
    assert!(!r.target.exists(), "the partial target is left");
    let torn_down = status["tornDown"].to_string();
    assert!(torn_down.contains("stopped the standby"), "{torn_down}");
    assert!(
        torn_down.contains("removed the partial target"),
        "{torn_down}"
    );

    // After a switchover nothing is torn down.
    let second = root.path().join("second");
    std::fs::create_dir(&second).unwrap();
    let mut done = Recovery::new(&second, &repo, &id, &[]);
    done.run_to_completion(&[], RUN_TIMEOUT);
    let out = done.workdir_command("abort");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused: the switchover began"));
    assert_switched_over(&done);
    // Unpublish is for publishes only.
    let out = done.workdir_command("unpublish");
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds a recovery, not a publish"));
}
