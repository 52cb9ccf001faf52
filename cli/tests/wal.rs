//! `irctl wal` with a real PostgreSQL server: `wal push` as its archive_command, `wal fetch` as
//! the restore_command of a restored backup that replays the archive past the backup, then
//! verify, damage, conflicts, gaps and prune through the command line.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{backup_from_pg, chown_tree, irctl, irctl_ok, irctl_run, wait_archived};
use ir_e2e::pg::{PgCluster, as_pg, chown_to_pg, pg_user};
use ir_e2e::{require_root, shared_tempdir};
use serde_json::Value;

const IRCTL: &str = env!("CARGO_BIN_EXE_irctl");
/// What `wal fetch` exits with on anything but "not archived".
const FATAL: i32 = 200;

/// Writes some rows and switches to a new segment; the name of the segment just completed.
fn switch_wal(pg: &PgCluster, note: &str) -> String {
    pg.psql(&format!(
        "insert into notes select g, '{note}' from generate_series(1, 2000) g"
    ));
    pg.psql("select pg_walfile_name(pg_switch_wal())")
}

fn json(args: &[&str]) -> Value {
    serde_json::from_str(&irctl_ok(args, &[])).expect("--output json is JSON")
}

/// The stored object of segment `name` of system `sysid`.
fn object(repo_dir: &Path, sysid: &str, name: &str) -> PathBuf {
    repo_dir.join(format!("wal/{sysid}/{}/{name}.zst", &name[..8]))
}

/// `irctl wal fetch`, its exit code and stderr.
fn fetch(repo: &str, sysid: &str, name: &str, dest: &Path) -> (i32, String) {
    let out = irctl_run(
        &[
            "wal",
            "fetch",
            "--repo",
            repo,
            "--system-identifier",
            sysid,
            name,
            dest.to_str().unwrap(),
        ],
        &[],
    );
    (
        out.status.code().expect("exited"),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn postgresql_archives_to_the_repository_and_recovers_from_it() {
    require_root();
    let tmp = shared_tempdir();
    let repo_dir = tmp.path().join("repo");
    let repo = format!("file://{}", repo_dir.display());
    irctl_ok(&["repo", "init", "--repo", &repo], &[]);
    chown_tree(&repo_dir);

    let source_root = tmp.path().join("source");
    let log = source_root.join("postgres.log");
    let mut pg = PgCluster::init(&source_root);
    let archive_command = format!("archive_command={IRCTL} wal push --repo {repo} %p");
    pg.start(&["archive_mode=on", &archive_command]);
    pg.psql("create table notes(id int, note text)");
    let sysid = pg.psql("select system_identifier from pg_control_system()");
    for n in 0..3 {
        let done = switch_wal(&pg, &format!("before the backup {n}"));
        wait_archived(&pg, &log, &done);
    }
    let id = backup_from_pg(&repo, &pg.conninfo(), &[]);
    let mut last = String::new();
    for n in 0..3 {
        last = switch_wal(&pg, &format!("after the backup {n}"));
    }
    wait_archived(&pg, &log, &last);
    let want = pg.psql("select count(*), note from notes group by note order by note");

    irctl_ok(&["wal", "verify", "--repo", &repo], &[]);
    let listed = json(&["wal", "list", "--repo", &repo, "--output", "json"]);
    assert_eq!(listed[0]["system_identifier"].to_string(), sysid);
    assert_eq!(listed[0]["segment_size"], 16 << 20);
    let timeline = &listed[0]["timelines"][0];
    assert_eq!(timeline["timeline"], 1);
    assert_eq!(timeline["last"], last.as_str());
    assert_eq!(timeline["gaps"], serde_json::json!([]));
    assert_eq!(timeline["backup_files"].as_array().unwrap().len(), 1);

    // The backup knows the WAL it needs and how far the archive takes it.
    let shown = json(&["backup", "show", &id, "--repo", &repo, "--output", "json"]);
    assert_eq!(shown["id"], id.as_str());
    let wal = &shown["wal"];
    let start_segment = wal["start_segment"].as_str().unwrap().to_string();
    assert!(start_segment < last, "{wal}");
    assert!(
        wal["stop_segment"].as_str().unwrap() >= start_segment.as_str(),
        "{wal}"
    );
    let window = &wal["recovery_window"];
    assert_eq!(window["timeline"], 1);
    assert_eq!(window["start_lsn"], shown["stop_lsn"]);
    assert!(window["latest"].is_string(), "{window}");
    // The run ends where the first segment not yet archived begins.
    let next = segment_after(&last, 1);
    assert_eq!(window["first_missing"], next.as_str());
    assert_eq!(window["end_lsn"], lsn_of(&next).as_str());
    let listed_backups = json(&["backup", "list", "--repo", &repo, "--output", "json"]);
    assert_eq!(listed_backups[0]["wal"]["recovery_window"], *window);
    let text = irctl_ok(&["backup", "show", &id, "--repo", &repo], &[]);
    assert!(
        text.contains(&format!("first missing WAL: {next}")),
        "{text}"
    );

    // Fetched bytes are the server's own, where it still has the file.
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let dest = scratch.join("RECOVERYXLOG");
    let (code, err) = fetch(&repo, &sysid, &last, &dest);
    assert_eq!(code, 0, "{err}");
    let fetched = std::fs::read(&dest).unwrap();
    let header = ir_repository::wal::check_segment(&last, &fetched).unwrap();
    assert_eq!(header.system_identifier.to_string(), sysid);
    if let Ok(own) = std::fs::read(pg.datadir.join("pg_wal").join(&last)) {
        assert!(own == fetched, "{last} differs from the server's copy");
    }
    // The system identifier from pg_control, as restore_command runs in the data directory.
    let out = irctl()
        .args(["wal", "fetch", "--repo", &repo, &last])
        .arg(&dest)
        .current_dir(&pg.datadir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // Not archived: 1, and nothing written.
    let absent = scratch.join("absent");
    let (code, err) = fetch(&repo, &sysid, &next, &absent);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&next), "{err}");
    let (code, _) = fetch(&repo, &sysid, "00000002.history", &absent);
    assert_eq!(code, 1);
    assert!(!absent.exists());
    // A mistyped restore_command stops recovery rather than ending it.
    let out = irctl_run(&["wal", "fetch", "--repo", &repo, "--bogus"], &[]);
    assert_eq!(out.status.code(), Some(FATAL));
    let (code, err) = fetch(&repo, &sysid, "../00000001.history", &absent);
    assert_eq!(code, FATAL, "{err}");

    // A restored backup replays the archive past the backup through `wal fetch`.
    recover_from_archive(tmp.path(), &repo, &id, &want);

    damage_conflicts_and_gaps(&repo, &repo_dir, &sysid, &last, &scratch);

    // Prune keeps the backup's start segment and everything after it.
    let dry = json(&[
        "wal",
        "prune",
        "--repo",
        &repo,
        "--before-backup",
        &id,
        "--dry-run",
        "--output",
        "json",
    ]);
    let doomed: Vec<String> = dry["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert!(!doomed.is_empty());
    assert!(doomed.iter().all(|n| *n < start_segment), "{doomed:?}");
    assert_eq!(dry["keep_from"], start_segment.as_str());
    let text = irctl_ok(
        &["wal", "prune", "--repo", &repo, "--before-backup", &id],
        &[],
    );
    for name in &doomed {
        assert!(text.contains(&format!("removed {name}")), "{text}");
        assert!(!object(&repo_dir, &sysid, name).exists());
    }
    let listed = json(&["wal", "list", "--repo", &repo, "--output", "json"]);
    assert_eq!(listed[0]["timelines"][0]["first"], start_segment.as_str());
    assert_eq!(listed[0]["timelines"][0]["last"], last.as_str());
    irctl_ok(&["wal", "verify", "--repo", &repo], &[]);
    // The window of the backup reaches as far as it did. Since the recovered server's history
    // file says timeline 2 branched off where timeline 1's archive ends, the window now goes
    // on there: the next segment recovery needs is timeline 2's.
    let after = json(&["backup", "show", &id, "--repo", &repo, "--output", "json"]);
    let after = &after["wal"]["recovery_window"];
    for field in ["earliest", "start_lsn", "end_lsn", "latest"] {
        assert_eq!(
            after[field], window[field],
            "{field}: {after} against {window}"
        );
    }
    assert_eq!(after["timeline"], 2, "{after}");
    let missing_on_one = window["first_missing"].as_str().unwrap();
    assert_eq!(
        after["first_missing"].as_str().unwrap(),
        format!("00000002{}", &missing_on_one[8..]),
        "{after}"
    );
    pg.stop();
}

/// Restores backup `id` to local disk and starts it with `wal fetch` as its restore_command:
/// the rows written after the backup come from the archive. Then archives the new timeline's
/// history file as the promoted server made it.
fn recover_from_archive(root: &Path, repo: &str, id: &str, want: &str) {
    let target = root.join("restored");
    let (uid, gid) = pg_user();
    irctl_ok(
        &[
            "backup",
            "restore",
            id,
            "--repo",
            repo,
            "--target",
            target.to_str().unwrap(),
            "--uid",
            &uid.to_string(),
            "--gid",
            &gid.to_string(),
        ],
        &[],
    );
    std::fs::write(target.join("recovery.signal"), "").unwrap();
    chown_to_pg(&target.join("recovery.signal"));
    let restore_command = format!("restore_command={IRCTL} wal fetch --repo {repo} %f %p");
    let mut restored = PgCluster::on_existing(&target, &root.join("restored-run"));
    restored.start(&[&restore_command, "archive_mode=off"]);
    let deadline = Instant::now() + Duration::from_secs(90);
    while restored.psql("select pg_is_in_recovery()") == "t" {
        assert!(Instant::now() < deadline, "recovery did not end");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        restored.psql("select count(*), note from notes group by note order by note"),
        want,
        "the restored backup replayed the archived WAL to its end"
    );
    assert_eq!(
        restored.psql("select substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"),
        "00000002",
        "promoted to a new timeline"
    );
    // The new timeline's history file, archived by hand as the promoted server's archiver would.
    let out = as_pg(Path::new(IRCTL))
        .args(["wal", "push", "--repo", repo, "pg_wal/00000002.history"])
        .current_dir(&target)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let listed = json(&["wal", "list", "--repo", repo, "--output", "json"]);
    assert_eq!(listed[0]["history"], serde_json::json!([2]));
    restored.stop();
}

fn damage_conflicts_and_gaps(repo: &str, repo_dir: &Path, sysid: &str, last: &str, scratch: &Path) {
    let stored = object(repo_dir, sysid, last);
    let good = std::fs::read(&stored).unwrap();
    let good_time = std::fs::metadata(&stored).unwrap().modified().unwrap();

    // One flipped byte: fetch stops recovery and writes nothing, verify names the file.
    let mut flipped = good.clone();
    let at = flipped.len() - 5;
    flipped[at] ^= 0x10;
    std::fs::write(&stored, &flipped).unwrap();
    let dest = scratch.join("damaged");
    let (code, err) = fetch(repo, sysid, last, &dest);
    assert!(code > 125, "{code}: {err}");
    assert_eq!(code, FATAL);
    assert!(err.contains(last) && err.contains("damaged"), "{err}");
    assert!(!dest.exists());
    let out = irctl_run(&["wal", "verify", "--repo", repo], &[]);
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("damaged: {last}")), "{stdout}");
    // Truncated: the same.
    std::fs::write(&stored, &good[..good.len() / 2]).unwrap();
    assert_eq!(fetch(repo, sysid, last, &dest).0, FATAL);
    put_back(&stored, &good, good_time);

    // The same segment again is fine; another file under its name is refused, loudly.
    let segment = scratch.join(last);
    let (code, err) = fetch(repo, sysid, last, &segment);
    assert_eq!(code, 0, "{err}");
    let push = |path: &Path| {
        irctl_run(
            &["wal", "push", "--repo", repo, path.to_str().unwrap()],
            &[],
        )
    };
    assert!(push(&segment).status.success());
    let mut other = std::fs::read(&segment).unwrap();
    other[8192 + 100] ^= 0xFF;
    std::fs::write(&segment, &other).unwrap();
    let out = push(&segment);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(last) && err.contains("other content"), "{err}");
    assert_eq!(std::fs::read(&stored).unwrap(), good);
    // A file that is not the segment its name says is refused before anything is stored.
    let mut lying = other.clone();
    lying[4..8].copy_from_slice(&7u32.to_le_bytes());
    std::fs::write(&segment, &lying).unwrap();
    let out = push(&segment);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("timeline 7"), "{err}");

    // A segment gone from the middle is a gap, by name.
    let before_last = segment_after(last, -1);
    let middle = object(repo_dir, sysid, &before_last);
    let kept = std::fs::read(&middle).unwrap();
    let kept_time = std::fs::metadata(&middle).unwrap().modified().unwrap();
    std::fs::remove_file(&middle).unwrap();
    let out = irctl_run(&["wal", "verify", "--repo", repo], &[]);
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("missing: timeline 1: {before_last}")),
        "{stdout}"
    );
    let report = json_failing(&["wal", "verify", "--repo", repo, "--output", "json"]);
    assert_eq!(report[0]["gaps"][0]["first_missing"], before_last.as_str());
    put_back(&middle, &kept, kept_time);
    irctl_ok(&["wal", "verify", "--repo", repo], &[]);
}

/// Writes a stored object back as it was, its time included (which says when it was archived).
fn put_back(path: &Path, bytes: &[u8], modified: std::time::SystemTime) {
    std::fs::write(path, bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(modified)
        .unwrap();
    chown_to_pg(path);
}

/// The number of a 16 MiB segment of timeline 1 from its name.
fn segno(segment: &str) -> u64 {
    let log = u64::from_str_radix(&segment[8..16], 16).unwrap();
    let seg = u64::from_str_radix(&segment[16..], 16).unwrap();
    (log << 8) | seg
}

/// The name of the 16 MiB segment `delta` segments after `segment`, on its timeline.
fn segment_after(segment: &str, delta: i64) -> String {
    let n = segno(segment).checked_add_signed(delta).unwrap();
    format!("{}{:08X}{:08X}", &segment[..8], n >> 8, n & 0xFF)
}

/// The start LSN of a 16 MiB segment, as `X/Y`.
fn lsn_of(segment: &str) -> String {
    ir_repository::format_lsn(segno(segment) << 24)
}

/// The JSON a command prints while it fails.
fn json_failing(args: &[&str]) -> Value {
    let out = irctl_run(args, &[]);
    assert!(!out.status.success());
    serde_json::from_slice(&out.stdout).expect("--output json is JSON")
}

#[test]
fn fetch_fails_fatally_unless_the_file_is_not_archived() {
    require_root();
    let tmp = shared_tempdir();
    let repo = format!("file://{}", tmp.path().join("repo").display());
    irctl_ok(&["repo", "init", "--repo", &repo], &[]);
    let history = tmp.path().join("00000002.history");
    std::fs::write(&history, "1\t0/3000158\tno recovery target specified\n").unwrap();
    let push = ["wal", "push", "--repo", &repo, "--system-identifier", "1"];
    let out = irctl_run(&[&push[..], &[history.to_str().unwrap()]].concat(), &[]);
    assert!(out.status.success(), "{out:?}");
    // A history file names no system: without one given, pg_control says it.
    let out = irctl()
        .args(["wal", "push", "--repo", &repo])
        .arg(&history)
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("global/pg_control"));

    let dest = tmp.path().join("RECOVERYHISTORY");
    let (code, err) = fetch(&repo, "1", "00000002.history", &dest);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        std::fs::read(&history).unwrap()
    );
    // DEST's directory is gone: fatal, not "not archived", and nothing left behind.
    let (code, err) = fetch(&repo, "1", "00000002.history", &tmp.path().join("no/dir/x"));
    assert_eq!(code, FATAL, "{err}");
    // No pg_control where the command runs and no --system-identifier: fatal.
    let out = irctl()
        .args(["wal", "fetch", "--repo", &repo, "00000002.history", "x"])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(FATAL), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("global/pg_control"));
    // No repository there: fatal.
    let nothing = format!("file://{}", tmp.path().join("nothing").display());
    let (code, _) = fetch(&nothing, "1", "00000002.history", &dest);
    assert_eq!(code, FATAL);
    // Another system's archive does not have it: not archived.
    let (code, _) = fetch(&repo, "2", "00000002.history", &tmp.path().join("y"));
    assert_eq!(code, 1);
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("irctl"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A 16 MiB segment of system 42 as PostgreSQL writes its first page, with `fill` after it.
fn hand_made_segment(name: &str, fill: u8) -> Vec<u8> {
    let mut b = vec![fill; 16 << 20];
    b[..40].fill(0);
    b[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
    b[2..4].copy_from_slice(&0x0006u16.to_le_bytes());
    b[4..8].copy_from_slice(&u32::from_str_radix(&name[..8], 16).unwrap().to_le_bytes());
    b[8..16].copy_from_slice(&(segno(name) << 24).to_le_bytes());
    b[24..32].copy_from_slice(&42u64.to_le_bytes());
    b[32..36].copy_from_slice(&(16u32 << 20).to_le_bytes());
    b[36..40].copy_from_slice(&8192u32.to_le_bytes());
    b
}

#[test]
fn an_s3_repository_archives_as_a_file_one_does() {
    let s3 = ir_e2e::s3::S3Server::start();
    let env = s3.env();
    let repo = s3.url("wal-archive");
    irctl_ok(&["repo", "init", "--repo", &repo], &env);
    let tmp = shared_tempdir();
    let run = |args: &[&str]| irctl_run(args, &env);
    let names = ["000000010000000000000003", "000000010000000000000005"];
    for name in names {
        let path = tmp.path().join(name);
        std::fs::write(&path, hand_made_segment(name, 1)).unwrap();
        let push = ["wal", "push", "--repo", &repo, path.to_str().unwrap()];
        assert!(run(&push).status.success());
        assert!(run(&push).status.success(), "a repeated push succeeds");
    }
    let path = tmp.path().join(names[0]);
    std::fs::write(&path, hand_made_segment(names[0], 2)).unwrap();
    let out = run(&["wal", "push", "--repo", &repo, path.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(names[0]));

    let dest = tmp.path().join("fetched");
    let fetch = |name: &str| {
        let args = [
            "wal",
            "fetch",
            "--repo",
            &repo,
            "--system-identifier",
            "42",
            name,
        ];
        run(&[&args[..], &[dest.to_str().unwrap()]].concat())
    };
    assert!(fetch(names[0]).status.success());
    assert!(std::fs::read(&dest).unwrap() == hand_made_segment(names[0], 1));
    assert_eq!(fetch("000000010000000000000004").status.code(), Some(1));
    let out = run(&["wal", "verify", "--repo", &repo, "--output", "json"]);
    assert!(!out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report[0]["objects_checked"], 2);
    assert_eq!(
        report[0]["gaps"][0]["first_missing"],
        "000000010000000000000004"
    );
}
