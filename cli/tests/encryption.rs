//! An encrypted repository with a real PostgreSQL server: `repo init --encryption`, WAL
//! archived by `wal push --key-file` as the archive_command, a backup taken with the password
//! in IR_REPO_PASSWORD, restored and replayed through `wal fetch --key-file` as the
//! restore_command; a wrong or missing key refused by every writing command with nothing
//! written, and no plain row data or WAL anywhere in the repository.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use common::{backup_from_pg, chown_tree, irctl_ok, irctl_run, wait_archived};
use ir_e2e::pg::{PgCluster, chown_to_pg, pg_user};
use ir_e2e::{require_root, shared_tempdir};

const IRCTL: &str = env!("CARGO_BIN_EXE_irctl");
const PASSWORD: &str = "s3cret passphrase of the repository";
const MARKER: &str = "IR-PLAINTEXT-MARKER-9d41";

fn password(p: &str) -> Vec<(String, String)> {
    vec![("IR_REPO_PASSWORD".to_string(), p.to_string())]
}

/// Rows carrying the marker, then a switch to a new segment; the segment just completed.
fn write_marked_rows(pg: &PgCluster, round: u32) -> String {
    pg.psql(&format!(
        "insert into notes select g, '{MARKER}-{round}-' || md5(g::text) \
         from generate_series(1, 3000) g"
    ));
    // A restore point's name is the user's words too (the index of restore points).
    pg.psql(&format!(
        "select pg_create_restore_point('{MARKER}-{round}')"
    ));
    pg.psql("select pg_walfile_name(pg_switch_wal())")
}

/// Every file under `root` with its bytes and modification time.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (Vec<u8>, SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let modified = std::fs::metadata(&p).unwrap().modified().unwrap();
                out.insert(p.clone(), (std::fs::read(&p).unwrap(), modified));
            }
        }
    }
    out
}

fn fails_with(args: &[&str], envs: &[(String, String)], expect: &str) {
    let out = irctl_run(args, envs);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "irctl {args:?} succeeded");
    assert!(stderr.contains(expect), "irctl {args:?}: {stderr}");
}

#[test]
fn an_encrypted_repository_backs_up_archives_and_recovers_postgresql() {
    require_root();
    let tmp = shared_tempdir();
    let repo_dir = tmp.path().join("repo");
    let repo = format!("file://{}", repo_dir.display());
    // The key file holds the password: either opens the repository.
    let key_file = tmp.path().join("repo.key");
    std::fs::write(&key_file, format!("{PASSWORD}\n")).unwrap();
    chown_to_pg(&key_file);
    let key = key_file.to_str().unwrap();

    let created = irctl_ok(
        &["repo", "init", "--encryption", "--repo", &repo],
        &password(PASSWORD),
    );
    assert!(
        created.contains("created encrypted repository"),
        "{created}"
    );
    chown_tree(&repo_dir);

    let source_root = tmp.path().join("source");
    let log = source_root.join("postgres.log");
    let mut pg = PgCluster::init(&source_root);
    let archive_command =
        format!("archive_command={IRCTL} wal push --repo {repo} --key-file {key} %p");
    pg.start(&["archive_mode=on", &archive_command]);
    pg.psql("create table notes(id int, note text)");
    let done = write_marked_rows(&pg, 0);
    wait_archived(&pg, &log, &done);
    let id = backup_from_pg(&repo, &pg.conninfo(), &password(PASSWORD));
    let mut last = String::new();
    for round in 1..3 {
        last = write_marked_rows(&pg, round);
    }
    wait_archived(&pg, &log, &last);
    let want = pg.psql("select count(*), min(note) from notes");
    assert!(want.contains(MARKER), "{want}");
    let newest = pg.datadir.join("pg_wal").join(&last);
    let segment_copy = tmp.path().join("copy").join(&last);
    std::fs::create_dir_all(segment_copy.parent().unwrap()).unwrap();
    std::fs::copy(&newest, &segment_copy).unwrap();
    pg.stop();

    // Nothing in the repository holds the rows, in any file.
    let before = snapshot(&repo_dir);
    assert!(before.len() > 5);
    assert!(
        before
            .keys()
            .any(|p| p.to_string_lossy().contains("restore-points/")),
        "the restore points are indexed"
    );
    for (path, (bytes, _)) in &before {
        assert!(
            !bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()),
            "{} holds plain row data",
            path.display()
        );
    }

    // A wrong or missing key: every command refuses before it writes anything.
    let wrong = password("not the password");
    let conninfo = pg.conninfo();
    let segment = segment_copy.to_str().unwrap();
    for (args, envs, expect) in [
        (
            vec!["backup", "create", "--repo", &repo, "--from-pg", &conninfo],
            wrong.clone(),
            "does not open",
        ),
        (
            vec!["wal", "push", "--repo", &repo, segment],
            wrong.clone(),
            "does not open",
        ),
        (
            vec!["wal", "push", "--repo", &repo, segment],
            vec![],
            "IR_REPO_PASSWORD",
        ),
        (
            vec!["repo", "gc", "--repo", &repo, "--grace", "0s"],
            wrong.clone(),
            "does not open",
        ),
        (
            vec!["backup", "delete", &id, "--repo", &repo],
            wrong.clone(),
            "does not open",
        ),
        (
            vec!["backup", "list", "--repo", &repo],
            vec![],
            "--key-file",
        ),
        (
            vec!["repo", "init", "--encryption", "--repo", &repo],
            wrong.clone(),
            "already exists",
        ),
    ] {
        fails_with(&args, &envs, expect);
    }
    let wrong_file = tmp.path().join("wrong.key");
    std::fs::write(&wrong_file, "another key").unwrap();
    fails_with(
        &[
            "wal",
            "push",
            "--repo",
            &repo,
            "--key-file",
            wrong_file.to_str().unwrap(),
            segment,
        ],
        &[],
        "does not open",
    );
    assert!(
        snapshot(&repo_dir) == before,
        "a refused command wrote to the repository"
    );

    // With the key: verify, list, and a restore that replays the archive through wal fetch.
    irctl_ok(&["repo", "verify", "--repo", &repo, "--key-file", key], &[]);
    irctl_ok(&["wal", "verify", "--repo", &repo], &password(PASSWORD));
    let listed = irctl_ok(&["backup", "list", "--repo", &repo, "--key-file", key], &[]);
    assert!(listed.contains(&id), "{listed}");
    let target = tmp.path().join("restored");
    let (uid, gid) = pg_user();
    irctl_ok(
        &[
            "backup",
            "restore",
            &id,
            "--repo",
            &repo,
            "--target",
            target.to_str().unwrap(),
            "--uid",
            &uid.to_string(),
            "--gid",
            &gid.to_string(),
        ],
        &password(PASSWORD),
    );
    std::fs::write(target.join("recovery.signal"), "").unwrap();
    chown_to_pg(&target.join("recovery.signal"));
    let restore_command =
        format!("restore_command={IRCTL} wal fetch --repo {repo} --key-file {key} %f %p");
    let mut restored = PgCluster::on_existing(&target, &tmp.path().join("restored-run"));
    restored.start(&[&restore_command, "archive_mode=off"]);
    let deadline = Instant::now() + Duration::from_secs(90);
    while restored.psql("select pg_is_in_recovery()") == "t" {
        assert!(Instant::now() < deadline, "recovery did not end");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        restored.psql("select count(*), min(note) from notes"),
        want,
        "the restored backup replayed the encrypted archive to its end"
    );
    restored.stop();
}
