//! Durability of the IRCache: under a write load whose commits are recorded client-side, SIGKILL
//! the mount process, mount the same cache again, restart PostgreSQL (crash recovery): every
//! acknowledged commit is there.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{MountProcess, backup_from_pg, irctl_ok};
use ir_e2e::pg::{PgCluster, chown_to_pg, pg_user};
use ir_e2e::{require_fuse, shared_tempdir};

const WRITERS: i64 = 4;

async fn writer(
    cluster_socket: String,
    port: u16,
    writer: i64,
    acked: Arc<Mutex<Vec<i64>>>,
    stop: Arc<AtomicBool>,
) {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host_path(&cluster_socket)
        .port(port)
        .user("postgres")
        .dbname("postgres");
    let Ok((client, conn)) = cfg.connect(tokio_postgres::NoTls).await else {
        return;
    };
    tokio::spawn(conn);
    let mut id = writer;
    while !stop.load(Ordering::Relaxed) {
        // Each statement is its own transaction; Ok means the commit was acknowledged.
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&id, &writer];
        let insert = client.execute(
            "insert into ledger(id, writer, payload) values ($1, $2, repeat('x', 200))",
            &params,
        );
        match tokio::time::timeout(Duration::from_secs(20), insert).await {
            Ok(Ok(_)) => acked.lock().unwrap().push(id),
            _ => return,
        }
        id += WRITERS;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_mount_loses_no_acknowledged_commit() {
    require_fuse();
    let tmp = shared_tempdir();
    let repo = format!("file://{}", tmp.path().join("repo").display());
    let mut source = PgCluster::init(&tmp.path().join("source"));
    source.start(&[]);
    source.pgbench(&["-i", "-s", "1", "-q"]);
    source.psql("create table ledger(id bigint primary key, writer bigint, payload text)");
    irctl_ok(&["repo", "init", "--repo", &repo], &[]);
    let id = backup_from_pg(&repo, &source.conninfo(), &[]);
    source.stop();

    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    chown_to_pg(&mnt);
    let cache = tmp.path().join("cache");
    let owner = Some(pg_user());
    let mount = MountProcess::start(&repo, &id, &cache, &mnt, owner, &[]);
    let mut pg = PgCluster::on_existing(&mnt, tmp.path());
    // Checkpoints during the load too, so relation files are rewritten and fsynced.
    pg.start(&["checkpoint_timeout=30s", "max_wal_size=64MB"]);

    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let socket = pg.socket.display().to_string();
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            tokio::spawn(writer(
                socket.clone(),
                pg.port,
                w,
                acked.clone(),
                stop.clone(),
            ))
        })
        .collect();
    // Background churn: pgbench rewrites pages of the backup's own relations meanwhile.
    let churn = {
        let socket = socket.clone();
        let port = pg.port;
        std::thread::spawn(move || {
            let _ = ir_e2e::pg::as_pg(&ir_e2e::pg::bindir().join("pgbench"))
                .args([
                    "-h",
                    &socket,
                    "-p",
                    &port.to_string(),
                    "-n",
                    "-c",
                    "2",
                    "-T",
                    "6",
                    "postgres",
                ])
                .output();
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg.psql("checkpoint");
    tokio::time::sleep(Duration::from_secs(2)).await;

    mount.kill();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("writers notice the dead mount")
            .unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    churn.join().unwrap();
    pg.kill_all();

    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 50,
        "the load committed too little to prove anything: {}",
        acked.len()
    );
    eprintln!(
        "{} commits acknowledged before the mount was killed",
        acked.len()
    );

    let mount = MountProcess::start(&repo, &id, &cache, &mnt, owner, &[]);
    pg.start(&[]);
    let present: std::collections::HashSet<i64> = pg
        .psql("select id from ledger")
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let missing: Vec<_> = acked.iter().filter(|id| !present.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged commits lost after SIGKILL of the mount: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(20)]
    );
    // The database is whole: pgbench's tables are consistent after crash recovery.
    pg.psql("select count(*) from pgbench_accounts");
    pg.pgbench(&["-n", "-T", "1"]);
    pg.stop();
    mount.stop();
}
