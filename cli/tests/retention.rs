//! `irctl backup delete` and `irctl backup prune` on a real repository: a policy keeps what it
//! says, a backup a running `irctl mount` holds a lease on is skipped and named, and deletion
//! follows once the mount is gone.

mod common;

use std::time::{Duration, Instant};

use common::{MountProcess, irctl_ok, irctl_run};
use ir_e2e::pg::PgCluster;
use ir_e2e::{require_fuse, require_root, shared_tempdir};
use serde_json::Value;

fn backup_ids(repo: &str) -> Vec<String> {
    let list: Value = serde_json::from_str(&irctl_ok(
        &["backup", "list", "--repo", repo, "--output", "json"],
        &[],
    ))
    .unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_owned())
        .collect()
}

/// `prune ARGS --output json` as (id, action, reasons), newest first.
fn prune(repo: &str, args: &[&str]) -> Vec<(String, String, String)> {
    let mut all = vec!["backup", "prune", "--repo", repo, "--output", "json"];
    all.extend(args);
    let out: Value = serde_json::from_str(&irctl_ok(&all, &[])).unwrap();
    out.as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let reasons: Vec<&str> = p["reasons"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap())
                .collect();
            (
                p["id"].as_str().unwrap().to_owned(),
                p["action"].as_str().unwrap().to_owned(),
                reasons.join(", "),
            )
        })
        .collect()
}

#[test]
fn prune_keeps_its_policy_and_skips_a_backup_in_use() {
    require_root();
    require_fuse();
    let base = shared_tempdir();
    let cluster = PgCluster::init(&base.path().join("source"));
    let repo = format!("file://{}", base.path().join("repo").display());
    irctl_ok(&["repo", "init", "--repo", &repo], &[]);
    let datadir = cluster.datadir.to_str().unwrap();
    let ids: Vec<String> = (0..3)
        .map(|_| {
            let id = irctl_ok(
                &["backup", "create", "--repo", &repo, "--from-dir", datadir],
                &[],
            );
            // Creation times a second apart: the policy orders by them.
            std::thread::sleep(Duration::from_millis(1100));
            id.trim().to_owned()
        })
        .collect();
    let (oldest, middle, newest) = (&ids[0], &ids[1], &ids[2]);

    let out = irctl_run(&["backup", "prune", "--repo", &repo], &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("give at least one of --keep-last"),
        "{out:?}"
    );

    // The oldest is mounted: its lease appears once the mount serves.
    let mnt = base.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mount = MountProcess::start(&repo, oldest, &base.path().join("cache"), &mnt, None, &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let planned = loop {
        let planned = prune(&repo, &["--keep-last", "1", "--dry-run"]);
        if planned[2].1 == "in use" || Instant::now() > deadline {
            break planned;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(planned[0], (newest.clone(), "keep".into(), "last".into()));
    assert_eq!(
        planned[1],
        (middle.clone(), "would delete".into(), String::new())
    );
    assert_eq!(planned[2].0, *oldest);
    assert_eq!(planned[2].1, "in use", "{planned:?}");
    assert!(planned[2].2.starts_with("lease of "), "{planned:?}");
    assert_eq!(backup_ids(&repo).len(), 3, "a dry run deletes nothing");

    let done = prune(&repo, &["--keep-last", "1"]);
    let actions: Vec<&str> = done.iter().map(|p| p.1.as_str()).collect();
    assert_eq!(actions, ["keep", "delete", "in use"]);
    assert_eq!(backup_ids(&repo), [oldest.clone(), newest.clone()]);

    let out = irctl_run(&["backup", "delete", oldest, "--repo", &repo], &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("backup {oldest} is in use")) && stderr.contains("holds a lease"),
        "{stderr}"
    );

    // Unmounted, the lease is given up and the backup can go.
    mount.stop();
    irctl_ok(&["backup", "delete", oldest, "--repo", &repo], &[]);
    assert_eq!(backup_ids(&repo), std::slice::from_ref(newest));
    let out = irctl_run(&["backup", "delete", oldest, "--repo", &repo], &[]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not found"),
        "{out:?}"
    );

    // What is left reads whole after a gc.
    irctl_ok(&["repo", "gc", "--repo", &repo, "--grace", "0s"], &[]);
    irctl_ok(&["backup", "verify", newest, "--repo", &repo], &[]);
}

#[test]
fn prune_with_a_label_prunes_only_the_backups_that_carry_it() {
    let base = shared_tempdir();
    let cluster = PgCluster::init(&base.path().join("source"));
    let repo = format!("file://{}", base.path().join("repo").display());
    irctl_ok(&["repo", "init", "--repo", &repo], &[]);
    let datadir = cluster.datadir.to_str().unwrap();
    let create = |labels: &[&str]| {
        let mut args = vec!["backup", "create", "--repo", &repo, "--from-dir", datadir];
        for label in labels {
            args.extend(["--label", label]);
        }
        let id = irctl_ok(&args, &[]).trim().to_owned();
        std::thread::sleep(Duration::from_millis(1100));
        id
    };
    let nightly_old = create(&["schedule=db/nightly", "team=orders"]);
    let unlabelled = create(&[]);
    let other = create(&["schedule=db/hourly"]);
    let nightly_new = create(&["schedule=db/nightly"]);

    let shown: Value = serde_json::from_str(&irctl_ok(
        &[
            "backup",
            "show",
            &nightly_old,
            "--repo",
            &repo,
            "--output",
            "json",
        ],
        &[],
    ))
    .unwrap();
    assert_eq!(
        shown["labels"],
        serde_json::json!({"schedule": "db/nightly", "team": "orders"})
    );

    let done = prune(
        &repo,
        &["--keep-last", "1", "--label", "schedule=db/nightly"],
    );
    let planned: Vec<(&str, &str)> = done.iter().map(|p| (p.0.as_str(), p.1.as_str())).collect();
    assert_eq!(
        planned,
        [
            (nightly_new.as_str(), "keep"),
            (nightly_old.as_str(), "delete")
        ]
    );
    assert_eq!(backup_ids(&repo), [unlabelled, other, nightly_new]);

    // Hostile labels are refused with the rule they break, and nothing is written.
    for (label, why) in [
        ("novalue", "KEY=VALUE"),
        ("bad key=x", "key"),
        ("k=line\nbreak", "control"),
    ] {
        let out = irctl_run(
            &[
                "backup",
                "create",
                "--repo",
                &repo,
                "--from-dir",
                datadir,
                "--label",
                label,
            ],
            &[],
        );
        assert!(!out.status.success(), "{label:?} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(why), "{label:?}: {stderr}");
    }
    assert_eq!(backup_ids(&repo).len(), 3);
}
