//! `irctl` as root on a repository someone tampered with: a manifest with entries that climb
//! out of the data directory, or lead through a symlink, is refused by every command with a
//! message naming the backup and the field, other backups stay usable, and a restore touches
//! nothing outside its target. Damaged chunks are named by `repo verify` and mended by `repo
//! repair`; a manifest that cannot be read at all makes `repo gc` delete nothing and fail.

mod common;

use std::path::Path;

use common::{irctl_ok, irctl_run};
use ir_e2e::pg::PgCluster;
use ir_e2e::{require_root, shared_tempdir};
use serde_json::{Value, json};

/// Paths, types, modes, owners and sizes of everything under `dir` but `skip`.
fn tree(dir: &Path, skip: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.starts_with(skip) {
                continue;
            }
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p.clone());
            }
            out.push(format!(
                "{} {:o} {}:{} {}",
                p.display(),
                m.mode(),
                m.uid(),
                m.gid(),
                m.len()
            ));
        }
    }
    out.sort();
    out
}

#[test]
fn a_tampered_manifest_is_refused_everywhere_and_a_restore_stays_inside() {
    require_root();
    let base = shared_tempdir();
    let cluster = PgCluster::init(&base.path().join("source"));
    let repo_dir = base.path().join("repo");
    let repo = format!("file://{}", repo_dir.display());
    irctl_ok(&["repo", "init", "--repo", &repo], &[]);
    let good = irctl_ok(
        &[
            "backup",
            "create",
            "--repo",
            &repo,
            "--from-dir",
            cluster.datadir.to_str().unwrap(),
        ],
        &[],
    )
    .trim()
    .to_string();

    // Tampered copies of the good manifest, each under an id of its own.
    let show = irctl_ok(
        &["backup", "show", &good, "--repo", &repo, "--output", "json"],
        &[],
    );
    let manifest: Value = serde_json::from_str(&show).unwrap();
    let outside = base.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("canary"), b"keep").unwrap();
    let entry = |path: &str, kind: Value| {
        let mut e =
            json!({"path": path, "mode": 0o4755, "uid": 0, "gid": 0, "size": 0, "mtime": 1});
        e.as_object_mut()
            .unwrap()
            .extend(kind.as_object().unwrap().clone());
        e
    };
    let target_text = outside.display().to_string();
    let link = json!({"type": "symlink", "target": target_text});
    let file = json!({"type": "file", "chunks": []});
    let cases = [
        (
            "20261201T000000Z-0001",
            vec![entry("../../x", file.clone())],
            "entries",
        ),
        (
            "20261201T000000Z-0002",
            vec![entry("/abs/x", file.clone())],
            "absolute",
        ),
        (
            "20261201T000000Z-0003",
            vec![
                {
                    let mut l = entry("lnk", link.clone());
                    l["size"] = json!(target_text.len());
                    l
                },
                entry("lnk/f", file.clone()),
            ],
            "lies below",
        ),
        // Once divided by in every read of a mount.
        ("20261201T000000Z-0004", vec![], "chunk_size: 0"),
    ];
    for (id, extra, _) in &cases {
        let mut m = manifest.clone();
        m["id"] = json!(id);
        if id.ends_with("0004") {
            m["chunk_size"] = json!(0);
        }
        m["entries"].as_array_mut().unwrap().extend(extra.clone());
        let body = zstd::bulk::compress(&serde_json::to_vec(&m).unwrap(), 3).unwrap();
        std::fs::write(repo_dir.join(format!("backups/{id}.json.zst")), body).unwrap();
    }

    let restores = base.path().join("restores");
    std::fs::create_dir_all(&restores).unwrap();
    let cache = restores.join("cache");
    let mnt = restores.join("mnt");
    let before = tree(base.path(), &restores);
    for (id, _, want) in &cases {
        let target = restores.join(id);
        for args in [
            vec![
                "backup",
                "restore",
                id,
                "--repo",
                &repo,
                "--target",
                target.to_str().unwrap(),
            ],
            vec!["backup", "show", id, "--repo", &repo],
            vec!["backup", "verify", id, "--repo", &repo],
            vec![
                "mount",
                "--repo",
                &repo,
                "--backup",
                id,
                "--cache",
                cache.to_str().unwrap(),
                mnt.to_str().unwrap(),
            ],
        ] {
            let out = irctl_run(&args, &[]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{args:?} succeeded");
            assert!(
                stderr.contains(id) && stderr.contains("is invalid") && stderr.contains(want),
                "{args:?}: {stderr}"
            );
        }
        assert!(!target.exists(), "{id}: a refused restore made its target");
    }
    assert_eq!(
        tree(base.path(), &restores),
        before,
        "a refused command wrote outside"
    );

    // The good backup still lists, restores and verifies; the bad ones are named on stderr.
    let out = irctl_run(
        &["backup", "list", "--repo", &repo, "--output", "json"],
        &[],
    );
    assert!(out.status.success());
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["id"], json!(good));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for (id, _, _) in &cases {
        assert!(
            stderr.contains(&format!("backup {id} is invalid")),
            "{stderr}"
        );
    }
    let latest = irctl_ok(&["backup", "show", "latest", "--repo", &repo], &[]);
    assert!(latest.contains(&good), "{latest}");
    let gc = irctl_ok(&["repo", "gc", "--repo", &repo, "--output", "json"], &[]);
    let gc: Value = serde_json::from_str(&gc).unwrap();
    assert_eq!(gc["invalid_backups"].as_array().unwrap().len(), cases.len());
    assert_eq!(gc["chunks_deleted"], json!(0));

    let target = restores.join("good");
    irctl_ok(
        &[
            "backup",
            "restore",
            &good,
            "--repo",
            &repo,
            "--target",
            target.to_str().unwrap(),
        ],
        &[],
    );
    assert!(target.join("PG_VERSION").is_file());
    assert_eq!(
        tree(base.path(), &restores),
        before,
        "the restore wrote outside its target"
    );
    assert_eq!(std::fs::read(outside.join("canary")).unwrap(), b"keep");
    irctl_ok(&["backup", "verify", &good, "--repo", &repo], &[]);

    // A symlink at the target's path is refused: the restore never writes through it.
    let outside_before = tree(&outside, &restores);
    let planted = restores.join("planted");
    std::os::unix::fs::symlink(&outside, &planted).unwrap();
    let out = irctl_run(
        &[
            "backup",
            "restore",
            &good,
            "--repo",
            &repo,
            "--target",
            planted.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("symbolic link"));
    assert_eq!(tree(&outside, &restores), outside_before);
}

/// The chunk object files of a `file://` repository, by chunk id.
fn chunk_files(repo_dir: &Path) -> Vec<(String, std::path::PathBuf)> {
    let mut out = Vec::new();
    for dir in std::fs::read_dir(repo_dir.join("chunks")).unwrap() {
        for f in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            let f = f.unwrap();
            out.push((f.file_name().to_string_lossy().into_owned(), f.path()));
        }
    }
    out.sort();
    out
}

#[test]
fn verify_names_damaged_chunks_repair_mends_them_and_gc_refuses_an_unreadable_manifest() {
    require_root();
    let base = shared_tempdir();
    let cluster = PgCluster::init(&base.path().join("source"));
    let datadir = cluster.datadir.to_str().unwrap();
    let repo_dir = base.path().join("repo");
    let repo = format!("file://{}", repo_dir.display());
    irctl_ok(&["repo", "init", "--repo", &repo], &[]);
    irctl_ok(
        &["backup", "create", "--repo", &repo, "--from-dir", datadir],
        &[],
    );
    irctl_ok(&["repo", "verify", "--repo", &repo], &[]);

    // One chunk overwritten with other bytes, one truncated, one gone.
    let chunks = chunk_files(&repo_dir);
    assert!(chunks.len() >= 3, "{chunks:?}");
    let damaged = [&chunks[0], &chunks[1], &chunks[2]];
    std::fs::write(&damaged[0].1, b"not zstd at all").unwrap();
    let bytes = std::fs::read(&damaged[1].1).unwrap();
    std::fs::write(&damaged[1].1, &bytes[..bytes.len() / 2]).unwrap();
    std::fs::remove_file(&damaged[2].1).unwrap();
    let out = irctl_run(&["repo", "verify", "--repo", &repo], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stdout}");
    assert!(stderr.contains("3 damaged chunks"), "{stderr}");
    for (id, _) in damaged {
        assert!(
            stdout.contains(&format!("damaged: chunk {id}")),
            "{id}: {stdout}"
        );
    }

    irctl_ok(
        &["repo", "repair", "--repo", &repo, "--from-dir", datadir],
        &[],
    );
    irctl_ok(&["repo", "verify", "--repo", &repo], &[]);
    assert_eq!(chunk_files(&repo_dir), chunks);

    // A manifest that is not even zstd: gc deletes nothing, and says which backup stops it.
    let orphan = repo_dir.join("chunks/00/00".to_string() + &"0".repeat(62));
    std::fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    std::fs::write(&orphan, zstd::bulk::compress(b"orphan", 3).unwrap()).unwrap();
    let dead = "20261201T000000Z-dead";
    std::fs::write(
        repo_dir.join(format!("backups/{dead}.json.zst")),
        b"garbage, not zstd",
    )
    .unwrap();
    for args in [
        vec!["repo", "gc", "--repo", &repo, "--grace", "0s"],
        vec![
            "repo", "gc", "--repo", &repo, "--grace", "0s", "--output", "json",
        ],
    ] {
        let out = irctl_run(&args, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            stderr.contains(dead) && stderr.contains("nothing was deleted"),
            "{args:?}: {stderr}"
        );
        assert!(orphan.exists(), "{args:?} deleted a chunk");
    }
}
