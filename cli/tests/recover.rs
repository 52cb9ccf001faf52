//! `irctl recover` end to end on this host: real PostgreSQL, real FUSE mounts.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::irctl_run;
use common::load::start_writers;
use common::recovery::{Recovery, accounts_checksum, assert_switched_over, sample_setup};

const RUN_TIMEOUT: Duration = Duration::from_secs(240);

#[test]
fn automatic_switchover_ends_with_the_target_as_primary() {
    let (root, repo, id, checksum) = sample_setup(2);
    let mut r = Recovery::new(root.path(), &repo, &id, &[]);
    r.run_to_completion(&[], RUN_TIMEOUT);
    assert_switched_over(&r);
    assert_eq!(accounts_checksum(&|sql| r.target(sql)), checksum);
    assert_eq!(r.target("SELECT note FROM marker"), "from the backup");
    let out = r.output();
    for phase in [
        "Validating",
        "Mounting",
        "Publishing",
        "Syncing",
        "ReadyForSwitchover",
        "SwitchingOver",
        "Completed",
    ] {
        assert!(
            out.contains(&format!("-> {phase}")),
            "phase {phase} not reported:\n{out}"
        );
    }
    assert!(out.contains("time to first query"), "{out}");

    // The status command reads the recorded state.
    let text = irctl_run(
        &["status", "--workdir", &r.workdir.display().to_string()],
        &[],
    );
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("phase:       Completed"), "{text}");
}

#[test]
fn manual_switchover_under_write_load_loses_no_acknowledged_commit() {
    let (root, repo, id, _) = sample_setup(1);
    let mut r = Recovery::new(root.path(), &repo, &id, &[]);
    r.spawn(&["--switchover", "manual"]);
    let status = r.wait_phase("ReadyForSwitchover", RUN_TIMEOUT);
    assert_eq!(status["reason"], "AwaitingApproval");
    // A rerun that leaves out --switchover keeps the recorded policy, not the default.
    r.kill();
    r.spawn(&[]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(r.status()["reason"], "AwaitingApproval");
    r.published("CREATE TABLE commits(id bigint PRIMARY KEY)");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(&rt, r.published_tcp(), &stop);

    // Without approval nothing happens, load or not.
    std::thread::sleep(Duration::from_secs(3));
    let status = r.status();
    assert_eq!(status["phase"], "ReadyForSwitchover");
    assert_eq!(status["reason"], "AwaitingApproval");
    assert!(
        status["progress"]["lagBytes"].as_u64().is_some(),
        "{status}"
    );

    r.approve();
    let exit = r.wait_exit(RUN_TIMEOUT);
    assert!(exit.success(), "irctl recover failed: {}", r.output());
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = BTreeSet::new();
    let mut errors = 0;
    for w in writers {
        let w = rt.block_on(w).unwrap();
        acknowledged.extend(w.acknowledged);
        errors += w.errors;
    }
    assert!(
        acknowledged.len() > 100,
        "the load barely ran: {} commits",
        acknowledged.len()
    );
    assert!(
        errors > 0,
        "writes must have been refused during the switchover"
    );

    let on_target: BTreeSet<i64> = r
        .target("SELECT id FROM commits")
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let lost: Vec<_> = acknowledged.difference(&on_target).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged commits missing on the target, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    eprintln!(
        "{} commits acknowledged, {} rows on the target, {errors} refused writes",
        acknowledged.len(),
        on_target.len()
    );
    assert_switched_over(&r);
}

#[test]
fn scheduled_switchover_waits_for_its_time() {
    let (root, repo, id, checksum) = sample_setup(1);
    let mut r = Recovery::new(root.path(), &repo, &id, &[]);
    let at = jiff::Timestamp::now() + Duration::from_secs(20);
    r.spawn(&["--switchover", &format!("at={at}")]);
    let status = r.wait_phase("ReadyForSwitchover", RUN_TIMEOUT);
    assert!(
        jiff::Timestamp::now() < at,
        "the standby took too long to test the wait"
    );
    assert_eq!(status["reason"], "AwaitingSchedule", "{status}");
    let exit = r.wait_exit(RUN_TIMEOUT);
    assert!(exit.success(), "{}", r.output());
    let started: jiff::Timestamp = r.status()["timings"]["switchoverStartedAt"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        started >= at,
        "switchover started at {started}, before {at}"
    );
    assert_switched_over(&r);
    assert_eq!(accounts_checksum(&|sql| r.target(sql)), checksum);
}

#[test]
fn killed_during_sync_resumes_and_completes() {
    let (root, repo, id, checksum) = sample_setup(8);
    let mut r = Recovery::new(root.path(), &repo, &id, &[]);
    r.spawn(&[]);
    r.wait_phase("Syncing", RUN_TIMEOUT);
    r.kill();
    assert_eq!(
        r.phase().as_deref(),
        Some("Syncing"),
        "killed in another phase"
    );
    // What the killed command started keeps running: the published instance still serves.
    assert_eq!(r.published("SELECT note FROM marker"), "from the backup");
    r.published("INSERT INTO marker VALUES ('written while irctl was down')");

    let started = Instant::now();
    r.run_to_completion(&[], RUN_TIMEOUT);
    eprintln!("resumed run took {:?}", started.elapsed());
    let out = r.output();
    let resumed = out
        .rsplit_once("-> Syncing")
        .map(|(_, after)| after)
        .unwrap_or(&out);
    assert!(
        !resumed.contains("-> Mounting"),
        "the rerun must not mount again:\n{out}"
    );
    assert_switched_over(&r);
    assert_eq!(accounts_checksum(&|sql| r.target(sql)), checksum);
    assert_eq!(
        r.target("SELECT count(*) FROM marker WHERE note = 'written while irctl was down'"),
        "1"
    );
}

#[test]
fn killed_during_the_switchover_resumes_and_completes() {
    let (root, repo, id, checksum) = sample_setup(1);
    let mut r = Recovery::new(root.path(), &repo, &id, &[]);
    r.spawn(&["--switchover", "manual"]);
    r.wait_phase("ReadyForSwitchover", RUN_TIMEOUT);
    r.published("INSERT INTO marker VALUES ('committed before the switchover')");
    // The standby stops replaying: the switchover waits for it, read-only, where it is killed.
    r.target("SELECT pg_wal_replay_pause()");
    r.approve();
    r.wait_phase("SwitchingOver", RUN_TIMEOUT);
    let deadline = Instant::now() + Duration::from_secs(30);
    while r
        .try_published("SHOW default_transaction_read_only")
        .as_deref()
        != Ok("on")
    {
        assert!(
            Instant::now() < deadline,
            "the published instance never went read-only"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    r.kill();
    assert_eq!(r.phase().as_deref(), Some("SwitchingOver"));

    r.target("SELECT pg_wal_replay_resume()");
    r.run_to_completion(&[], RUN_TIMEOUT);
    assert_switched_over(&r);
    assert_eq!(accounts_checksum(&|sql| r.target(sql)), checksum);
    assert_eq!(
        r.target("SELECT count(*) FROM marker WHERE note = 'committed before the switchover'"),
        "1"
    );
}

#[test]
fn invalid_requests_are_refused_before_anything_is_created() {
    let (root, repo, id, _) = sample_setup(1);
    let r = Recovery::new(root.path(), &repo, &id, &[]);
    let workdir = r.workdir.display().to_string();
    let refused = |args: Vec<String>, expect: &[&str]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = irctl_run(&args, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted: {args:?}");
        for word in expect {
            assert!(stderr.contains(word), "{word:?} not in: {stderr}");
        }
        assert!(
            !r.workdir.exists(),
            "the workdir was created for a refused request"
        );
    };

    std::fs::create_dir_all(&r.target).unwrap();
    std::fs::write(r.target.join("stray"), "x").unwrap();
    refused(r.args(&[]), &["--target-pgdata", "not empty"]);
    std::fs::remove_dir_all(&r.target).unwrap();

    let listener = std::net::TcpListener::bind(("127.0.0.1", r.published_port)).unwrap();
    refused(r.args(&[]), &["--published-port", "in use"]);
    drop(listener);
    // `localhost` is ::1 as well.
    let listener = std::net::TcpListener::bind(("::1", r.target_port)).unwrap();
    refused(r.args(&[]), &["--target-port", "in use on ::1"]);
    drop(listener);

    let mut args = r.args(&[]);
    let backup = args.iter().position(|a| a == "--backup").unwrap() + 1;
    args[backup] = "20990101T000000Z-none".into();
    refused(args, &["20990101T000000Z-none", "not found"]);

    refused(
        r.args(&["--pg-bindir", "/nonexistent"]),
        &["PostgreSQL 15", "/nonexistent"],
    );
    refused(
        r.args(&["--pg-user", "no-such-user"]),
        &["--pg-user", "no-such-user"],
    );
    refused(r.args(&["--pg-user", "root"]), &["--pg-user root"]);
    refused(r.args(&["--switchover", "at=soon"]), &["RFC 3339"]);
    assert!(
        !r.target.exists(),
        "the target was created for a refused request"
    );

    let out = irctl_run(&["status", "--workdir", &workdir], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no recovery"));

    // A workdir another user could swap under root, or a link, is refused.
    let theirs = root.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    let link = root.path().join("link");
    std::os::unix::fs::symlink(root.path(), &link).unwrap();
    for (dir, why) in [
        (
            theirs.join("work"),
            format!("{} belongs to uid 65534", theirs.display()),
        ),
        (
            link.join("work"),
            format!("{} is a symbolic link", link.display()),
        ),
    ] {
        let mut args = r.args(&[]);
        args[2] = dir.display().to_string();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = irctl_run(&args, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "accepted --workdir {}",
            dir.display()
        );
        assert!(
            stderr.contains("--workdir") && stderr.contains(&why),
            "{stderr}"
        );
        assert!(!dir.exists(), "{} was created", dir.display());
    }
    assert!(!r.target.exists());
}

#[test]
fn a_rerun_that_contradicts_the_recorded_recovery_is_refused_and_changes_nothing() {
    let (root, repo, id, _) = sample_setup(1);
    let mut r = Recovery::new(root.path(), &repo, &id, &[]);
    r.spawn(&["--switchover", "manual"]);
    r.wait_phase("Publishing", RUN_TIMEOUT);
    r.kill();
    let state = r.workdir.join("recovery.json");
    let recorded = std::fs::read(&state).unwrap();
    let workdir = r.workdir.display().to_string();
    let target = r.target.display().to_string();
    let published_port = r.published_port.to_string();
    let cases: [(&[&str], &str, &str); 12] = [
        (
            &["--target-pgdata", "/srv/elsewhere"],
            "/srv/elsewhere",
            &target,
        ),
        (
            &["--repo", "file:///srv/other-repo"],
            "file:///srv/other-repo",
            &repo,
        ),
        (
            &["--backup", "20990101T000000Z-none"],
            "20990101T000000Z-none",
            &id,
        ),
        (&["--pg-user", "nobody"], "nobody", "postgres"),
        (&["--listen-addresses", "*"], "*", "localhost"),
        (&["--pg-bindir", "/opt/pg/bin"], "/opt/pg/bin", "not given"),
        (
            &["--s3-endpoint", "http://127.0.0.1:1"],
            "http://127.0.0.1:1",
            "not given",
        ),
        (&["--s3-region", "eu-west-1"], "eu-west-1", "not given"),
        (&["--s3-allow-http"], "true", "false"),
        (&["--read-deadline", "5"], "5", "30"),
        (
            &["--cache-min-free", "1MiB"],
            "1048576 bytes",
            "67108864 bytes",
        ),
        (&["--published-port", "1"], "1", &published_port),
    ];
    for (flags, given, was) in cases {
        let mut args = vec!["recover", "--workdir", &workdir];
        args.extend(flags);
        let out = irctl_run(&args, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted {flags:?}");
        let flag = flags[0];
        assert!(
            stderr.contains(&format!("{flag} {given} differs"))
                && stderr.contains(&format!("({was})")),
            "{flags:?}: {stderr}"
        );
        assert_eq!(
            std::fs::read(&state).unwrap(),
            recorded,
            "{flags:?} changed recovery.json"
        );
    }
}
