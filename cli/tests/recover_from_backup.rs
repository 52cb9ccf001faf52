//! Back up a real PostgreSQL cluster with `irctl backup create --from-pg`, mount the backup with
//! `irctl mount`, start PostgreSQL (as user postgres) on the mount: same query results, writes
//! work, and they persist across a clean unmount and remount. Once with a file:// repository,
//! once with a real S3-protocol server.

mod common;

use common::{MountProcess, backup_from_pg, irctl_ok};
use ir_e2e::pg::{PgCluster, chown_to_pg, pg_user};
use ir_e2e::s3::S3Server;
use ir_e2e::{require_fuse, shared_tempdir};

const FINGERPRINT: &str = "select (select count(*) from pgbench_accounts), \
    (select sum(abalance) from pgbench_accounts), \
    (select md5(string_agg(aid::text || ':' || abalance, ',' order by aid)) from pgbench_accounts), \
    (select md5(string_agg(id || v, ',' order by id)) from notes)";

fn round_trip(repo: &str, env: &[(String, String)]) {
    require_fuse();
    let tmp = shared_tempdir();
    let mut source = PgCluster::init(&tmp.path().join("source"));
    source.start(&[]);
    source.pgbench(&["-i", "-s", "2", "-q"]);
    source.psql(
        "create table notes(id int primary key, v text); \
         insert into notes select g, md5(g::text) from generate_series(1, 5000) g; \
         update pgbench_accounts set abalance = aid % 97 where aid % 3 = 0",
    );
    let want = source.psql(FINGERPRINT);

    irctl_ok(&["repo", "init", "--repo", repo], env);
    let id = backup_from_pg(repo, &source.conninfo(), env);
    source.stop();

    let listed: serde_json::Value = serde_json::from_str(&irctl_ok(
        &["backup", "list", "--repo", repo, "--output", "json"],
        env,
    ))
    .expect("list --output json is JSON");
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["pg_version"], "15");
    irctl_ok(&["backup", "verify", &id, "--repo", repo], env);

    // The classic way, for comparison: a full restore to local disk starts too.
    let restored = tmp.path().join("restored");
    let (uid, gid) = pg_user();
    let restored_str = restored.display().to_string();
    irctl_ok(
        &[
            "backup",
            "restore",
            &id,
            "--repo",
            repo,
            "--target",
            &restored_str,
            "--uid",
            &uid.to_string(),
            "--gid",
            &gid.to_string(),
        ],
        env,
    );
    let mut full = PgCluster::on_existing(&restored, tmp.path());
    full.start(&[]);
    assert_eq!(
        full.psql(FINGERPRINT),
        want,
        "the restored backup answers like the source"
    );
    full.stop();

    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    chown_to_pg(&mnt);
    let cache = tmp.path().join("cache");
    let owner = Some(pg_user());
    let mount = MountProcess::start(repo, &id, &cache, &mnt, owner, env);
    let mut pg = PgCluster::on_existing(&mnt, tmp.path());
    pg.start(&[]);
    assert_eq!(
        pg.psql(FINGERPRINT),
        want,
        "the mounted backup answers like the source"
    );

    pg.psql("insert into notes values (100001, 'written on the mount')");
    pg.pgbench(&["-T", "3", "-c", "2", "-n"]);
    let after_writes = pg.psql(FINGERPRINT);
    pg.stop();
    mount.stop();

    let mount = MountProcess::start(repo, &id, &cache, &mnt, owner, env);
    pg.start(&[]);
    assert_eq!(
        pg.psql(FINGERPRINT),
        after_writes,
        "writes survive unmount and remount"
    );
    assert_eq!(
        pg.psql("select v from notes where id = 100001"),
        "written on the mount"
    );
    pg.stop();
    mount.stop();
}

#[test]
fn file_repository_round_trip() {
    let tmp = shared_tempdir();
    round_trip(
        &format!("file://{}", tmp.path().join("repo").display()),
        &[],
    );
}

#[test]
fn s3_repository_round_trip() {
    let s3 = S3Server::start();
    round_trip(&s3.url("backups"), &s3.env());
}
