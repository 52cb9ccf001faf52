//! `irctl recover --target-*` on real PostgreSQL: a source archives its WAL into the repository
//! with `irctl wal push`; rows are inserted, a point taken (time, LSN, xid, restore point), a
//! table dropped. Recovering to each point brings the table back with every row committed
//! before it and none after; targets the repository cannot reach are refused at validation.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::irctl_ok;
use common::recovery::Recovery;
use ir_e2e::pg::{PgCluster, pg_user};

const RUN_TIMEOUT: Duration = Duration::from_secs(240);

/// The source's history, and the points in it.
struct History {
    _root: tempfile::TempDir,
    root: PathBuf,
    repo: String,
    repo_dir: PathBuf,
    /// Committed after the backup: rows 101..=200, then row 201 in transaction `xid`.
    xid: String,
    /// `pg_create_restore_point('before_drop')`, after row 201.
    restore_point_lsn: String,
    /// A time after the restore point and before row 1000 and the drop.
    time: String,
    /// A second after the last commit archived, and before the segment holding it was archived.
    after_last_commit: String,
}

/// A file:// repository in `root/repo` that PostgreSQL's user, who runs archive_command, may
/// write to: its URL and directory.
fn archiving_repository(root: &Path) -> (String, PathBuf) {
    let repo_dir = root.join("repo");
    let repo = format!("file://{}", repo_dir.display());
    irctl_ok(&["repo", "init", "--repo", &repo], &[]);
    common::chown_tree(&repo_dir);
    (repo, repo_dir)
}

fn history() -> History {
    ir_e2e::require_root();
    ir_e2e::require_fuse();
    let tmp = ir_e2e::shared_tempdir();
    let root = tmp.path().to_owned();
    let (repo, repo_dir) = archiving_repository(&root);

    let mut source = PgCluster::init(&root.join("source"));
    let push = format!(
        "archive_command={} wal push --repo {repo} %p",
        env!("CARGO_BIN_EXE_irctl")
    );
    source.start(&["archive_mode=on", &push]);
    source.psql("CREATE TABLE t(id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100)");
    let id = common::backup_from_pg(&repo, &source.conninfo(), &[]);
    source.psql("INSERT INTO t SELECT generate_series(101, 200)");
    // psql prints the command tag after the row.
    let xid = source.psql("INSERT INTO t VALUES (201) RETURNING txid_current()");
    let xid = xid.lines().next().unwrap_or_default().to_owned();
    let restore_point_lsn = source.psql("SELECT pg_create_restore_point('before_drop')");
    std::thread::sleep(Duration::from_millis(1100));
    let time = source
        .psql("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')");
    std::thread::sleep(Duration::from_millis(1100));
    // Committed after the time: a recovery to the time must not have it.
    source.psql("INSERT INTO t VALUES (1000)");
    source.psql("DROP TABLE t");
    // Two segments after the points, so that losing the one that holds them is a gap.
    source.psql("SELECT pg_switch_wal()");
    source.psql("CREATE TABLE after_drop(x int); INSERT INTO after_drop VALUES (1)");
    let after_last_commit = source.psql(
        "SELECT to_char((now() + interval '1 second') AT TIME ZONE 'UTC', \
         'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    );
    // Archived well after the last commit: a time in between is never reached.
    std::thread::sleep(Duration::from_millis(2500));
    source.archive_current_segment();
    source.stop();

    // The window is shown per backup.
    let show: serde_json::Value = serde_json::from_str(&irctl_ok(
        &["backup", "show", &id, "--repo", &repo, "--output", "json"],
        &[],
    ))
    .expect("backup show JSON");
    let window = &show["wal"]["recovery_window"];
    assert!(
        window["end_lsn"].is_string() && window["latest"].is_string(),
        "backup show has the recoverable window: {show}"
    );
    History {
        _root: tmp,
        root,
        repo,
        repo_dir,
        xid,
        restore_point_lsn,
        time,
        after_last_commit,
    }
}

impl History {
    fn recovery(&self, name: &str) -> Recovery {
        let root = self.root.join(name);
        std::fs::create_dir(&root).unwrap();
        Recovery::new(&root, &self.repo, "latest", &[])
    }
}

/// The published instance of `r`, once it reached its point: the rows committed before it.
fn published_rows(r: &mut Recovery) -> String {
    let status = r.wait_phase("ReadyForSwitchover", RUN_TIMEOUT);
    let condition = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "PointInTime")
        .cloned()
        .expect("PointInTime condition");
    assert_eq!(condition["status"], "True", "{condition}");
    assert_eq!(condition["reason"], "TargetReached");
    assert!(
        status["pointInTime"]["window"]["latestLsn"].is_string(),
        "{status}"
    );
    assert_eq!(r.published("SELECT to_regclass('after_drop') IS NULL"), "t");
    r.published("SELECT count(*) || ':' || max(id) FROM t")
}

#[test]
fn recovery_to_a_restore_point_brings_back_the_dropped_table_to_the_end() {
    let h = history();
    let mut r = h.recovery("by-name");
    r.run_to_completion(&["--target-name", "before_drop"], RUN_TIMEOUT);
    assert_eq!(
        r.target("SELECT count(*) || ':' || max(id) FROM t"),
        "201:201"
    );
    assert_eq!(r.target("SELECT to_regclass('after_drop') IS NULL"), "t");
    assert_eq!(r.target("SELECT pg_is_in_recovery()"), "f");
    r.target("INSERT INTO t VALUES (202)");
    let status = r.status();
    assert_eq!(status["phase"], "Completed");
    let text = common::irctl_ok(
        &["status", "--workdir", &r.workdir.display().to_string()],
        &[],
    );
    assert!(
        text.contains("to:          restore point \"before_drop\": reached at"),
        "{text}"
    );
    assert!(text.contains("window:"), "{text}");
    assert!(
        status["timings"]["timeToFirstQueryMs"].as_u64().is_some(),
        "{status}"
    );
}

#[test]
fn a_publish_paused_at_a_restore_point_shows_it_then_goes_on_to_a_recovery() {
    let h = history();
    let r = h.recovery("paused");
    r.publish(&["--target-name", "before_drop", "--target-action", "pause"]);
    let status = r.status();
    assert_eq!(status["phase"], "Published", "{status}");
    // Held at the point, still in recovery: read-only, no new timeline.
    assert_eq!(r.published("SELECT pg_is_in_recovery()"), "t");
    assert_eq!(r.published("SELECT pg_is_wal_replay_paused()"), "t");
    assert_eq!(
        r.published("SELECT count(*) || ':' || max(id) FROM t"),
        "201:201"
    );
    let refused = r.try_published("INSERT INTO t VALUES (5000)").unwrap_err();
    assert!(refused.contains("read-only transaction"), "{refused}");

    // Going on to a recovery promotes it at the point, then copies and switches over.
    let mut r = r;
    r.run_to_completion(&[], RUN_TIMEOUT);
    assert!(
        r.output().contains("Published -> Syncing"),
        "{}",
        r.output()
    );
    assert_eq!(
        r.target("SELECT count(*) || ':' || max(id) FROM t"),
        "201:201"
    );
    assert_eq!(r.target("SELECT pg_is_in_recovery()"), "f");
    // Promoted at the point (timeline 2), then switched over (timeline 3).
    assert_eq!(
        r.target("SELECT timeline_id FROM pg_control_checkpoint()"),
        "3"
    );
}

#[test]
fn a_restore_point_starts_from_the_newest_backup_before_it() {
    ir_e2e::require_root();
    ir_e2e::require_fuse();
    let tmp = ir_e2e::shared_tempdir();
    let root = tmp.path().to_owned();
    let (repo, _) = archiving_repository(&root);
    let mut source = PgCluster::init(&root.join("source"));
    let push = format!(
        "archive_command={} wal push --repo {repo} %p",
        env!("CARGO_BIN_EXE_irctl")
    );
    source.start(&["archive_mode=on", &push]);
    source.psql("CREATE TABLE t(id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 10)");
    let before = common::backup_from_pg(&repo, &source.conninfo(), &[]);
    source.psql("INSERT INTO t SELECT generate_series(11, 20)");
    source.psql("SELECT pg_create_restore_point('mid')");
    source.psql("INSERT INTO t SELECT generate_series(21, 30)");
    // The newest backup ends after the restore point: replay from it would never meet it.
    let after = common::backup_from_pg(&repo, &source.conninfo(), &[]);
    source.archive_current_segment();
    source.stop();

    let dir = root.join("by-name");
    std::fs::create_dir(&dir).unwrap();
    let mut r = Recovery::new(&dir, &repo, "latest", &[]);
    r.spawn(&["--target-name", "mid", "--switchover", "manual"]);
    let status = r.wait_phase("ReadyForSwitchover", RUN_TIMEOUT);
    assert_eq!(
        status["backup"]["id"],
        before.as_str(),
        "not {after}: {status}"
    );
    assert_eq!(
        r.published("SELECT count(*) || ':' || max(id) FROM t"),
        "20:20"
    );
    r.kill();

    // A name the archive does not hold is left to replay, from the newest backup.
    let dir = root.join("unknown-name");
    std::fs::create_dir(&dir).unwrap();
    let mut r = Recovery::new(&dir, &repo, "latest", &[]);
    r.spawn(&["--target-name", "never-created"]);
    let exit = r.wait_exit(RUN_TIMEOUT);
    assert!(!exit.success());
    assert_eq!(
        r.status()["reason"],
        "PointInTimeUnreached",
        "{}",
        r.status()
    );
    assert_eq!(r.status()["backup"]["id"], after.as_str());
}

#[test]
fn recovery_to_a_time_an_lsn_and_a_transaction() {
    let h = history();
    let cases: [(&str, Vec<&str>, &str); 4] = [
        ("by-time", vec!["--target-time", &h.time], "201:201"),
        (
            "by-lsn",
            vec!["--target-lsn", &h.restore_point_lsn],
            "201:201",
        ),
        ("by-xid", vec!["--target-xid", &h.xid], "201:201"),
        (
            "by-xid-exclusive",
            vec!["--target-xid", &h.xid, "--target-inclusive", "false"],
            "200:200",
        ),
    ];
    for (name, flags, rows) in cases {
        let mut r = h.recovery(name);
        r.spawn(&[&flags[..], &["--switchover", "manual"]].concat());
        assert_eq!(published_rows(&mut r), rows, "{name}");
        r.kill();
    }
}

#[test]
fn postgres_started_by_hand_on_a_mount_with_a_target_replays_to_it() {
    let h = history();
    let (uid, gid) = pg_user();
    let mnt = h.root.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    ir_e2e::pg::chown_to_pg(&mnt);
    let owner = [
        "--uid".to_owned(),
        uid.to_string(),
        "--gid".to_owned(),
        gid.to_string(),
        "--target-name".to_owned(),
        "before_drop".to_owned(),
    ];
    let owner: Vec<&str> = owner.iter().map(String::as_str).collect();
    let mount = common::MountProcess::start_with_args(
        &h.repo,
        "latest",
        &h.root.join("cache"),
        &mnt,
        &owner,
        &[],
    );
    let mut pg = PgCluster::on_existing(&mnt, &h.root);
    pg.start(&[]);
    let deadline = Instant::now() + RUN_TIMEOUT;
    while pg.psql("SELECT pg_is_in_recovery()") == "t" {
        assert!(Instant::now() < deadline, "never promoted at the target");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        pg.psql("SELECT count(*) || ':' || max(id) FROM t"),
        "201:201"
    );
    assert_eq!(pg.psql("SELECT to_regclass('after_drop') IS NULL"), "t");
    pg.stop();
    mount.stop();
}

#[test]
fn targets_the_repository_cannot_reach_are_refused_at_validation() {
    let h = history();

    let mut r = h.recovery("too-late");
    let tomorrow = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24);
    r.spawn(&["--target-time", &tomorrow.to_string()]);
    let status = r.wait_phase("Waiting", RUN_TIMEOUT);
    assert_eq!(status["reason"], "PointInTimeNotArchived", "{status}");
    assert!(
        status["message"].as_str().unwrap().contains("can recover"),
        "names the window: {status}"
    );
    r.kill();

    // Before the last segment was archived, yet after its last transaction: replay would
    // never stop there.
    let mut r = h.recovery("after-the-last-commit");
    r.spawn(&["--target-time", &h.after_last_commit]);
    let status = r.wait_phase("Waiting", RUN_TIMEOUT);
    assert_eq!(status["reason"], "PointInTimeNotArchived", "{status}");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("after the last transaction"),
        "{status}"
    );
    r.kill();

    let mut r = h.recovery("too-early");
    r.spawn(&["--target-time", "2001-01-01T00:00:00Z"]);
    let exit = r.wait_exit(RUN_TIMEOUT);
    assert!(!exit.success());
    // Refused before anything was made: only the output tells.
    assert!(
        r.output()
            .contains("lies before the end of the oldest backup"),
        "{}",
        r.output()
    );

    // A segment between the backup and the point, deleted from the repository.
    let segment = h.segment_holding(&h.restore_point_lsn);
    let mut r = h.recovery("gap");
    r.spawn(&["--target-time", &h.time]);
    let exit = r.wait_exit(RUN_TIMEOUT);
    assert!(!exit.success());
    let out = r.output();
    assert!(out.contains("which the repository lacks"), "{out}");
    assert!(out.contains(&segment), "names the segment {segment}: {out}");

    // A restore point is placed by the archive's index: refused at validation too.
    let mut r = h.recovery("gap-by-name");
    r.spawn(&["--target-name", "before_drop"]);
    let exit = r.wait_exit(RUN_TIMEOUT);
    assert!(!exit.success());
    let out = r.output();
    assert!(out.contains("which the repository lacks"), "{out}");
    assert!(out.contains(&segment), "names the segment {segment}: {out}");

    // A transaction only replay can place: the replay stops at the gap, which is named.
    let mut r = h.recovery("gap-by-xid");
    r.spawn(&["--target-xid", &h.xid]);
    let exit = r.wait_exit(RUN_TIMEOUT);
    assert!(!exit.success());
    let status = r.status();
    assert_eq!(status["reason"], "WalSegmentMissing", "{status}");
    let message = status["message"].as_str().unwrap();
    assert!(
        message.contains(&segment),
        "names the segment {segment}: {message}"
    );
}

impl History {
    /// Deletes the stored WAL segment that holds `lsn` (timeline 1, 16 MiB segments) and
    /// returns its name.
    fn segment_holding(&self, lsn: &str) -> String {
        let lsn = ir_repository::parse_lsn(lsn).unwrap();
        let name = format!("00000001{:08X}{:08X}", lsn >> 32, (lsn & 0xFFFF_FFFF) >> 24);
        let mut stack = vec![self.repo_dir.join("wal")];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if entry.file_name().to_string_lossy().starts_with(&name) {
                    std::fs::remove_file(&path).unwrap();
                    return name;
                }
            }
        }
        panic!("no stored segment {name} under {}", self.repo_dir.display());
    }
}

#[test]
fn recovery_follows_the_timeline_the_source_took_after_the_backup() {
    ir_e2e::require_root();
    ir_e2e::require_fuse();
    let tmp = ir_e2e::shared_tempdir();
    let root = tmp.path().to_owned();
    let (repo, _) = archiving_repository(&root);
    let irctl = env!("CARGO_BIN_EXE_irctl");
    let mut source = PgCluster::init(&root.join("source"));
    let push = format!("archive_command={irctl} wal push --repo {repo} %p");
    source.start(&["archive_mode=on", &push]);
    source.psql("CREATE TABLE t(id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100)");
    common::backup_from_pg(&repo, &source.conninfo(), &[]);
    source.psql("INSERT INTO t SELECT generate_series(101, 200)");
    source.archive_current_segment();
    source.stop();

    // The source recovers from the archive by itself and goes on, on timeline 2.
    let signal = root.join("source/data/recovery.signal");
    std::fs::write(&signal, "").unwrap();
    ir_e2e::pg::chown_to_pg(&signal);
    let fetch = format!("restore_command={irctl} wal fetch --repo {repo} %f %p");
    source.start(&["archive_mode=on", &push, &fetch]);
    let deadline = Instant::now() + RUN_TIMEOUT;
    while source.psql("SELECT pg_is_in_recovery()") == "t" {
        assert!(Instant::now() < deadline, "the source never promoted");
        std::thread::sleep(Duration::from_millis(100));
    }
    let segment = source.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    assert!(segment.starts_with("00000002"), "{segment}");
    source.psql("INSERT INTO t SELECT generate_series(201, 300)");
    std::thread::sleep(Duration::from_millis(1100));
    let time = source
        .psql("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')");
    std::thread::sleep(Duration::from_millis(1100));
    // Committed after the time: a recovery to the time must not have it.
    source.psql("INSERT INTO t VALUES (1000)");
    source.psql("DROP TABLE t");
    source.archive_current_segment();
    source.stop();

    // Told to stay on the backup's timeline, the window ends where timeline 1 does.
    let workdir = root.join("current-timeline");
    std::fs::create_dir(&workdir).unwrap();
    let mut r = Recovery::new(&workdir, &repo, "latest", &[]);
    r.spawn(&["--target-time", &time, "--target-timeline", "current"]);
    let status = r.wait_phase("Waiting", RUN_TIMEOUT);
    assert_eq!(status["reason"], "PointInTimeNotArchived", "{status}");
    r.kill();

    // A time on timeline 2 lies inside the window of the backup taken on timeline 1.
    let workdir = root.join("to-timeline-2");
    std::fs::create_dir(&workdir).unwrap();
    let mut r = Recovery::new(&workdir, &repo, "latest", &[]);
    r.run_to_completion(&["--target-time", &time], RUN_TIMEOUT);
    assert_eq!(
        r.target("SELECT count(*) || ':' || max(id) FROM t"),
        "300:300"
    );
    assert_eq!(r.target("SELECT pg_is_in_recovery()"), "f");
}
