//! Faults of the data plane: a damaged chunk, a full cache disk, an unreachable repository, a
//! cache reused with another backup or repository, a cache that lost its metadata store. Each is
//! a clear error; none returns wrong data.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{MountProcess, backup_from_pg, irctl_ok, irctl_run};
use ir_e2e::pg::PgCluster;
use ir_e2e::s3::S3Server;
use ir_e2e::{require_fuse, shared_tempdir};

/// A backup of a fresh cluster with a 4 MiB table `big`, into `repo` (created unless it
/// exists); returns (backup id, path of `big`).
fn backup_with_table(root: &Path, repo: &str, env: &[(String, String)]) -> (String, String) {
    let mut pg = PgCluster::init(&root.join("source"));
    pg.start(&[]);
    pg.psql(
        "create table big(id int, v text); \
         insert into big select g, md5(g::text) from generate_series(1, 60000) g",
    );
    let rel = pg.psql("select pg_relation_filepath('big')");
    if !irctl_run(&["backup", "list", "--repo", repo], env)
        .status
        .success()
    {
        irctl_ok(&["repo", "init", "--repo", repo], env);
    }
    let id = backup_from_pg(repo, &pg.conninfo(), env);
    pg.stop();
    (id, rel)
}

fn manifest_chunk(repo: &str, id: &str, path: &str, index: usize) -> String {
    let m: serde_json::Value = serde_json::from_str(&irctl_ok(
        &["backup", "show", id, "--repo", repo, "--output", "json"],
        &[],
    ))
    .unwrap();
    let entry = m["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == path)
        .unwrap_or_else(|| panic!("{path} not in the manifest"));
    entry["chunks"][index]
        .as_str()
        .expect("a stored chunk")
        .to_string()
}

/// After a fault the mount keeps answering for the rest of the backup.
fn assert_still_serves(mnt: &Path) {
    let version = std::fs::read_to_string(mnt.join("PG_VERSION")).expect("read PG_VERSION");
    assert_eq!(version.trim(), "15");
}

fn mountpoint(root: &Path) -> std::path::PathBuf {
    let mnt = root.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    mnt
}

#[test]
fn damaged_chunk_fails_verify_naming_the_file_and_reads_as_eio() {
    require_fuse();
    let tmp = shared_tempdir();
    let repo_dir = tmp.path().join("repo");
    let repo = format!("file://{}", repo_dir.display());
    let (id, rel) = backup_with_table(tmp.path(), &repo, &[]);

    let chunk = manifest_chunk(&repo, &id, &rel, 1);
    let object = repo_dir.join("chunks").join(&chunk[..2]).join(&chunk);
    let mut bytes = std::fs::read(&object).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&object, bytes).unwrap();

    let out = irctl_run(&["backup", "verify", &id, "--repo", &repo], &[]);
    assert!(!out.status.success(), "verify must fail on a damaged chunk");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&rel) && stdout.contains("damaged"),
        "verify output: {stdout}"
    );

    let mnt = mountpoint(tmp.path());
    let mount = MountProcess::start(&repo, &id, &tmp.path().join("cache"), &mnt, None, &[]);
    // The first chunk is intact, the second is not.
    let mut f = std::fs::File::open(mnt.join(&rel)).unwrap();
    let mut first = vec![0u8; 8192];
    std::io::Read::read_exact(&mut f, &mut first).unwrap();
    let err = std::fs::read(mnt.join(&rel)).expect_err("reading a damaged chunk must fail");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert_still_serves(&mnt);
    mount.stop();
}

#[test]
fn full_cache_disk_is_enospc_and_heals_without_remount() {
    require_fuse();
    let tmp = shared_tempdir();
    let repo = format!("file://{}", tmp.path().join("repo").display());
    let (id, _) = backup_with_table(tmp.path(), &repo, &[]);
    let cache = tmp.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
        .arg(&cache)
        .status()
        .unwrap();
    assert!(status.success(), "mount a small tmpfs for the cache");
    let mnt = mountpoint(tmp.path());
    let mount = MountProcess::start(&repo, &id, &cache, &mnt, None, &[]);
    std::fs::write(mnt.join("kept"), b"written before").unwrap();
    let err = std::fs::write(mnt.join("filler"), vec![7u8; 32 << 20]).expect_err("cache is 16 MiB");
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    // Namespace changes too are ENOSPC, not EIO.
    for (what, result) in [
        ("mkdir", std::fs::create_dir(mnt.join("dir"))),
        (
            "rename",
            std::fs::rename(mnt.join("kept"), mnt.join("moved")),
        ),
    ] {
        let err = result.expect_err(what);
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{what}: {err}");
    }
    // What fitted before is still readable, and the mount still serves.
    assert_still_serves(&mnt);
    // Removing the filler gives the room back to the same mount, once the kernel released the
    // file (it does so in the background after the close).
    std::fs::remove_file(mnt.join("filler")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = std::fs::create_dir(mnt.join("dir")) {
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
        assert!(Instant::now() < deadline, "no room after the filler went");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::rename(mnt.join("kept"), mnt.join("moved")).unwrap();
    assert_eq!(std::fs::read(mnt.join("moved")).unwrap(), b"written before");
    mount.stop();
    let _ = std::process::Command::new("umount").arg(&cache).status();
}

#[test]
fn unreachable_repository_is_eio_after_the_read_deadline() {
    require_fuse();
    let tmp = shared_tempdir();
    let mut s3 = S3Server::start();
    let env = s3.env();
    let repo = s3.url("faults");
    let (id, rel) = backup_with_table(tmp.path(), &repo, &env);
    let mnt = mountpoint(tmp.path());
    let mount = MountProcess::start_with_args(
        &repo,
        &id,
        &tmp.path().join("cache"),
        &mnt,
        &["--read-deadline", "3"],
        &env,
    );
    s3.stop();
    let started = Instant::now();
    let err = std::fs::read(mnt.join(&rel)).expect_err("the repository is gone");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(30),
        "retried for {waited:?}, expected about the 3 s deadline"
    );
    mount.stop();
}

#[test]
fn cache_is_refused_for_another_backup() {
    require_fuse();
    let tmp = shared_tempdir();
    let repo = format!("file://{}", tmp.path().join("repo").display());
    let (first, _) = backup_with_table(tmp.path(), &repo, &[]);
    let cache = tmp.path().join("cache");
    let mnt = mountpoint(tmp.path());
    MountProcess::start(&repo, &first, &cache, &mnt, None, &[]).stop();
    let (other, _) = backup_with_table(&tmp.path().join("other"), &repo, &[]);
    let out = irctl_run(
        &[
            "mount",
            "--repo",
            &repo,
            "--backup",
            &other,
            "--cache",
            &cache.display().to_string(),
            &mnt.display().to_string(),
        ],
        &[],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("belongs to backup {first}")),
        "{stderr}"
    );
}

#[test]
fn cache_is_refused_for_another_repository_and_after_losing_its_store() {
    require_fuse();
    let tmp = shared_tempdir();
    let repo_dir = tmp.path().join("repo");
    let repo = format!("file://{}", repo_dir.display());
    let (id, _) = backup_with_table(tmp.path(), &repo, &[]);
    let cache = tmp.path().join("cache");
    let mnt = mountpoint(tmp.path());
    let mount = MountProcess::start(&repo, &id, &cache, &mnt, None, &[]);
    std::fs::write(mnt.join("written"), b"in the cache").unwrap();
    mount.stop();
    let mount_args = |repo: &str| {
        irctl_run(
            &[
                "mount",
                "--repo",
                repo,
                "--backup",
                &id,
                "--cache",
                &cache.display().to_string(),
                &mnt.display().to_string(),
            ],
            &[],
        )
    };

    // A copy of the repository under another identity has the same backup id, yet it is not
    // the repository the cache's writes were made over.
    let copy_dir = tmp.path().join("copy");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(&repo_dir)
        .arg(&copy_dir)
        .status()
        .unwrap();
    assert!(status.success());
    let config = copy_dir.join("ir-repo.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    let original = json["repository_id"].as_str().unwrap().to_string();
    json["repository_id"] = "another-repository".into();
    std::fs::write(&config, serde_json::to_vec(&json).unwrap()).unwrap();
    let out = mount_args(&format!("file://{}", copy_dir.display()));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&cache.display().to_string())
            && stderr.contains(&original)
            && stderr.contains("(repository differ)"),
        "{stderr}"
    );

    // Without its metadata store the data files mean nothing: refused, and left alone.
    let data_files = || {
        let mut names: Vec<_> = std::fs::read_dir(cache.join("data"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        names
    };
    let before = data_files();
    assert!(!before.is_empty());
    let store = cache.join("ircache.redb");
    std::fs::remove_file(&store).unwrap();
    let out = mount_args(&repo);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&store.display().to_string()), "{stderr}");
    assert_eq!(data_files(), before);
    assert!(!store.exists());
}
