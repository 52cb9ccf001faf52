//! The time of the last transaction in a segment, read from segments a real PostgreSQL wrote.

use std::time::Duration;

use ir_e2e::pg::PgCluster;
use ir_repository::wal::{last_transaction_end, restore_points};
use time::OffsetDateTime;

fn segment_file(server: &PgCluster, name: &str) -> Vec<u8> {
    std::fs::read(server.datadir.join("pg_wal").join(name)).expect("the segment")
}

#[test]
fn the_last_commit_and_abort_of_a_real_segment_are_found() {
    ir_e2e::require_root();
    let root = tempfile::tempdir().unwrap();
    let mut server = PgCluster::init(root.path());
    server.start(&[]);
    server.psql("CREATE TABLE t (id int)");
    // Enough rows that the records cross pages, then commits with known times.
    server.psql("INSERT INTO t SELECT generate_series(1, 20000)");
    let segment = server.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    let before = OffsetDateTime::now_utc();
    std::thread::sleep(Duration::from_millis(20));
    server.psql("INSERT INTO t VALUES (1)");
    let committed = OffsetDateTime::now_utc();
    std::thread::sleep(Duration::from_millis(20));
    server.psql("CHECKPOINT");
    let switched = server.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    assert_eq!(segment, switched, "the commits stayed in one segment");
    server.psql("SELECT pg_switch_wal()");
    let last = last_transaction_end(&segment_file(&server, &segment)).expect("a commit");
    assert!(
        before < last && last < committed,
        "{before} < {last} < {committed}"
    );

    // An abort ends a transaction too. (Right after a switch the current LSN is the new
    // segment's first byte, which pg_walfile_name names the old segment by.)
    server.psql("INSERT INTO t VALUES (2)");
    let segment = server.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    std::thread::sleep(Duration::from_millis(20));
    let before_abort = OffsetDateTime::now_utc();
    server.psql("BEGIN; INSERT INTO t VALUES (3); SELECT txid_current(); ROLLBACK");
    let aborted = OffsetDateTime::now_utc();
    server.psql("SELECT pg_switch_wal()");
    let last = last_transaction_end(&segment_file(&server, &segment)).expect("an abort");
    assert!(
        before_abort < last && last < aborted,
        "{before_abort} < {last} < {aborted}"
    );

    // Restore points, by name and place.
    let lsn = server.psql("SELECT pg_create_restore_point('before_upgrade')");
    let segment = server.psql(&format!("SELECT pg_walfile_name('{lsn}')"));
    server.psql("SELECT pg_create_restore_point('x')");
    server.psql("SELECT pg_switch_wal()");
    let points = restore_points(&segment_file(&server, &segment));
    let names: Vec<&str> = points.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["before_upgrade", "x"]);
    // pg_create_restore_point returns where the record ends; the index has where it starts.
    let end = ir_repository::parse_lsn(&lsn).unwrap();
    assert!(
        points[0].lsn < end && end - points[0].lsn < 200,
        "{points:?} {lsn}"
    );

    // A segment with no transaction in it: a checkpoint record, then a switch.
    server.psql("CHECKPOINT");
    let segment = server.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    server.psql("SELECT pg_switch_wal()");
    assert_eq!(last_transaction_end(&segment_file(&server, &segment)), None);
}
