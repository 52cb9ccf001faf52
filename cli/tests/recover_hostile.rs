//! `irctl recover` run by root among users it must not trust: a target that is a symbolic
//! link, or is swapped for one after validation, never leads it to empty, chmod or chown another
//! directory; other users can read nothing of a recovery in progress. Real PostgreSQL, real
//! FUSE mounts.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::irctl_run;
use common::recovery::{Recovery, assert_switched_over, sample_setup};
use ir_e2e::pg::pg_user;
use ir_engine::process::OsUser;

const TIMEOUT: Duration = Duration::from_secs(240);

fn nobody() -> OsUser {
    OsUser::by_name("nobody").expect("this test needs the user nobody")
}

/// Another user's directory, with a file in it: what root must never touch.
struct Canary {
    dir: PathBuf,
    owner: OsUser,
}

impl Canary {
    fn new(root: &Path) -> Canary {
        let owner = nobody();
        let dir = root.join("someone-elses");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("canary"), "precious").unwrap();
        for (path, mode) in [(dir.clone(), 0o755), (dir.join("canary"), 0o644)] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            std::os::unix::fs::chown(&path, Some(owner.uid), Some(owner.gid)).unwrap();
        }
        Canary { dir, owner }
    }

    fn assert_intact(&self) {
        let entries: Vec<_> = std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(entries, ["canary"], "the other user's directory changed");
        assert_eq!(
            std::fs::read_to_string(self.dir.join("canary")).unwrap(),
            "precious"
        );
        for (path, mode) in [(self.dir.clone(), 0o755), (self.dir.join("canary"), 0o644)] {
            let meta = std::fs::symlink_metadata(&path).unwrap();
            assert_eq!(
                (meta.uid(), meta.gid(), meta.mode() & 0o7777),
                (self.owner.uid, self.owner.gid, mode),
                "{} was chowned or chmodded",
                path.display()
            );
        }
    }
}

#[test]
fn a_target_that_is_or_becomes_a_symbolic_link_never_leads_root_elsewhere() {
    let (root, repo, id, _) = sample_setup(1);
    let canary = Canary::new(root.path());
    let mut r = Recovery::new(root.path(), &repo, &id, &[]);

    // A link at the target, or above it, is refused before anything is created.
    symlink(&canary.dir, &r.target).unwrap();
    let above = root.path().join("link-above");
    symlink(root.path(), &above).unwrap();
    for (target, link) in [(&r.target, &r.target), (&above.join("target"), &above)] {
        let mut args = r.args(&[]);
        let at = args.iter().position(|a| a == "--target-pgdata").unwrap() + 1;
        args[at] = target.display().to_string();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = irctl_run(&args, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted {}", target.display());
        let said = format!("{} is a symbolic link", link.display());
        assert!(
            stderr.contains("--target-pgdata") && stderr.contains(&said),
            "{stderr}"
        );
        assert!(!r.workdir.exists(), "the workdir was created");
    }
    std::fs::remove_file(&r.target).unwrap();
    canary.assert_intact();

    // Links planted inside the target go with what it holds; where they lead is left alone.
    r.spawn(&["--switchover", "manual"]);
    r.wait_phase("Publishing", TIMEOUT);
    r.kill();
    std::fs::create_dir(r.target.join("base")).unwrap();
    symlink(&canary.dir, r.target.join("evil")).unwrap();
    symlink(&canary.dir, r.target.join("base/evil")).unwrap();
    symlink(canary.dir.join("canary"), r.target.join("PG_VERSION")).unwrap();
    r.spawn(&["--switchover", "manual"]);
    r.wait_phase_reason("ReadyForSwitchover", Some("AwaitingApproval"), TIMEOUT);
    r.kill();
    assert!(!r.target.join("evil").exists());
    assert!(!r.target.join("PG_VERSION").is_symlink());
    canary.assert_intact();

    // The target swapped for a link to another user's directory once the standby is built:
    // the rerun would build it anew there, and refuses.
    let moved = root.path().join("target-moved");
    std::fs::rename(&r.target, &moved).unwrap();
    symlink(&canary.dir, &r.target).unwrap();
    r.spawn_resume();
    let exit = r.wait_exit(TIMEOUT);
    assert!(!exit.success(), "the rerun went on:\n{}", r.output());
    let status = r.status();
    assert_eq!(status["reason"], "TargetReplaced", "{status}");
    let message = status["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("--target-pgdata {}", r.target.display())),
        "{message}"
    );
    canary.assert_intact();
    std::fs::remove_file(&r.target).unwrap();
    std::fs::rename(&moved, &r.target).unwrap();
}

/// `program` run on `path` as nobody (no supplementary groups): its error output.
fn as_nobody(program: &str, path: &Path) -> (bool, String) {
    let nobody = nobody();
    let out = Command::new(program)
        .arg(path)
        .env("LC_ALL", "C")
        .current_dir("/")
        .uid(nobody.uid)
        .gid(nobody.gid)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.success(), stderr)
}

#[test]
fn other_users_can_read_nothing_of_a_recovery_in_progress() {
    let (root, repo, id, _) = sample_setup(1);
    let mut r = Recovery::new(root.path(), &repo, &id, &[]);
    r.spawn(&["--switchover", "manual"]);
    r.wait_phase_reason("ReadyForSwitchover", Some("AwaitingApproval"), TIMEOUT);
    let w = &r.workdir;

    // Where the recovery lives is open to nobody: what stops it is the recovery's own doing.
    let note = root.path().join("readable");
    std::fs::write(&note, "x").unwrap();
    std::fs::set_permissions(&note, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(
        as_nobody("cat", &note).0,
        "nobody cannot reach the test's directory"
    );
    assert!(as_nobody("ls", root.path()).0);

    let files = [
        w.join("recovery.json"),
        w.join("lock"),
        w.join("logs/mount.log"),
        w.join("logs/published.log"),
        w.join("logs/basebackup.log"),
        w.join("logs/target.log"),
        w.join("conf/published/pg_hba.conf"),
        w.join("conf/target/postgresql.conf"),
        w.join("mnt/PG_VERSION"),
        w.join("mnt/global/pg_control"),
        r.target.join("PG_VERSION"),
        r.target.join("global/pg_control"),
    ];
    let dirs = [
        w.clone(),
        w.join("logs"),
        w.join("conf"),
        w.join("conf/published"),
        w.join("run"),
        w.join("ircache"),
        w.join("mnt"),
        w.join("requests"),
        r.target.clone(),
    ];
    for path in &files {
        assert!(path.is_file(), "{} is not there to be read", path.display());
    }
    for (program, paths) in [("cat", &files[..]), ("ls", &dirs[..])] {
        for path in paths {
            let (ok, stderr) = as_nobody(program, path);
            assert!(
                !ok && stderr.contains("Permission denied"),
                "nobody could {program} {}: {stderr}",
                path.display()
            );
        }
    }

    // Root runs PostgreSQL as postgres, which passes through the workdir and nobody else does.
    let (_, pg_gid) = pg_user();
    let meta = std::fs::metadata(w).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (0, pg_gid, 0o710)
    );
    for file in &files[..8] {
        let mode = std::fs::metadata(file).unwrap().mode() & 0o7777;
        let allowed = if file.starts_with(w.join("conf")) {
            0o640
        } else {
            0o600
        };
        assert_eq!(mode, allowed, "{}", file.display());
    }

    // ...and the recovery runs on to its end.
    r.approve();
    let exit = r.wait_exit(TIMEOUT);
    assert!(exit.success(), "{}", r.output());
    assert_switched_over(&r);
}
