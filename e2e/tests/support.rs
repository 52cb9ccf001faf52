//! The test support itself: a real PostgreSQL cluster and a real S3-protocol server.

use ir_e2e::pg::PgCluster;
use ir_e2e::s3::S3Server;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};

#[test]
fn postgres_cluster_serves_queries_and_pgbench() {
    let tmp = ir_e2e::shared_tempdir();
    let mut pg = PgCluster::init(tmp.path());
    pg.start(&["shared_buffers=16MB"]);
    assert_eq!(pg.psql("show shared_buffers"), "16MB");
    assert_eq!(pg.psql("show fsync"), "on");
    assert!(pg.psql("select version()").starts_with("PostgreSQL 15"));
    pg.pgbench(&["-i", "-s", "1", "-q"]);
    assert_eq!(pg.psql("select count(*) from pgbench_accounts"), "100000");

    // A committed row survives an immediate (crash-like) stop.
    pg.psql("create table t(x int); insert into t values (42)");
    pg.stop_immediate();
    assert!(!pg.is_running());
    pg.start(&[]);
    assert_eq!(pg.psql("select x from t"), "42");

    // The same data directory again, through on_existing, over TCP.
    pg.stop();
    let mut again = PgCluster::on_existing(&pg.datadir, tmp.path());
    again.start(&[]);
    let out = std::process::Command::new(ir_e2e::pg::bindir().join("psql"))
        .args([
            "-X",
            "-At",
            "-d",
            &again.tcp_conninfo(),
            "-c",
            "select x from t",
        ])
        .output()
        .expect("run psql");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
}

#[tokio::test]
async fn s3_server_stores_objects_with_the_env_it_gives() {
    let mut s3 = S3Server::start();
    let mut builder = AmazonS3Builder::new().with_bucket_name(s3.bucket());
    for (key, value) in s3.env() {
        // The same keys AmazonS3Builder::from_env reads in a child process.
        builder = builder.with_config(key.to_ascii_lowercase().parse().unwrap(), value);
    }
    let store = builder.build().expect("S3 client");
    let path = Path::from("support/hello.txt");
    store
        .put(&path, PutPayload::from_static(b"hello"))
        .await
        .expect("put");
    let got = store.get(&path).await.expect("get").bytes().await.unwrap();
    assert_eq!(&got[..], b"hello");
    assert_eq!(store.head(&path).await.unwrap().size, 5);

    // An outage and the server's return keep the data and the credentials.
    s3.stop();
    assert!(store.head(&path).await.is_err());
    s3.restart();
    assert_eq!(store.head(&path).await.expect("head after restart").size, 5);
}
