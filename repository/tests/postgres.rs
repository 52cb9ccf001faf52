//! Backups of a real PostgreSQL cluster (`ir_e2e::pg`). Needs root (to run the server as
//! `postgres`) and the PostgreSQL binaries; fails loudly without them.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use common::{entry, read_back, temp_repo};
use ir_e2e::pg::{PgCluster, as_pg, bindir};
use ir_e2e::{require_root, shared_tempdir};
use ir_repository::{Checkpoint, EntryKind, Progress, parse_lsn};

/// `pg_controldata` of `datadir` as key -> value.
fn controldata(datadir: &Path) -> HashMap<String, String> {
    let out = as_pg(&bindir().join("pg_controldata"))
        .arg("-D")
        .arg(datadir)
        .env("LC_ALL", "C")
        .output()
        .expect("run pg_controldata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[tokio::test]
async fn backup_of_a_live_and_a_stopped_cluster() {
    require_root();
    let base = shared_tempdir();
    let mut cluster = PgCluster::init(base.path());
    cluster.start(&[]);
    let repo = temp_repo(base.path()).await;

    let m = repo
        .ingest_pg(
            &cluster.conninfo(),
            Checkpoint::Fast,
            Some(&bindir()),
            Arc::new(Progress::default()),
        )
        .await
        .expect("ingest from pg_basebackup");
    let control = controldata(&cluster.datadir);
    assert_eq!(m.pg_version, "15");
    assert_eq!(m.system_identifier, control["Database system identifier"]);
    assert_eq!(m.timeline, 1);
    let start = parse_lsn(&m.start_lsn).expect("start LSN parses");
    let redo = parse_lsn(&control["Latest checkpoint's REDO location"]).unwrap();
    assert!(
        start > 0 && start <= redo,
        "start {} redo {redo:X}",
        m.start_lsn
    );
    let stop = parse_lsn(
        m.stop_lsn
            .as_deref()
            .expect("stop LSN from backup_manifest"),
    )
    .unwrap();
    assert!(stop >= start);
    for path in [
        "PG_VERSION",
        "global/pg_control",
        "backup_label",
        "backup_manifest",
        "base/1",
    ] {
        entry(&m, path);
    }
    assert!(m.entries.iter().all(|e| e.path != "postmaster.pid"));
    assert!(
        m.entries
            .iter()
            .any(|e| e.path.starts_with("pg_wal/0000000")
                && matches!(e.kind, EntryKind::File { .. })),
        "WAL is included"
    );
    assert_eq!(read_back(&repo, &m, entry(&m, "PG_VERSION")).await, b"15\n");
    let label = read_back(&repo, &m, entry(&m, "backup_label")).await;
    assert!(
        String::from_utf8_lossy(&label).contains(&format!("START WAL LOCATION: {}", m.start_lsn))
    );
    assert!(
        repo.verify(&m.id, Arc::new(Progress::default()))
            .await
            .unwrap()
            .is_ok()
    );

    // A running cluster's directory is refused; once stopped, pg_control gives the LSNs.
    let err = repo
        .ingest_dir(&cluster.datadir, Arc::new(Progress::default()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not shut down cleanly"), "{err}");
    cluster.stop();
    let control = controldata(&cluster.datadir);
    assert_eq!(control["Database cluster state"], "shut down");
    let cold = repo
        .ingest_dir(&cluster.datadir, Arc::new(Progress::default()))
        .await
        .expect("ingest of the stopped cluster");
    assert_eq!(
        cold.system_identifier,
        control["Database system identifier"]
    );
    assert_eq!(cold.start_lsn, control["Latest checkpoint location"]);
    assert_eq!(
        cold.stop_lsn.as_deref(),
        Some(control["Latest checkpoint location"].as_str())
    );
    assert_eq!(
        cold.timeline.to_string(),
        control["Latest checkpoint's TimeLineID"]
    );

    // A server that is not there: pg_basebackup's own message, and no backup.
    let err = repo
        .ingest_pg(
            &format!("host={} port=1 user=postgres", cluster.socket.display()),
            Checkpoint::Fast,
            Some(&bindir()),
            Arc::new(Progress::default()),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("pg_basebackup failed"), "{err}");
    assert_eq!(repo.list_backups().await.unwrap().backups.len(), 2);
}

/// A password in `--from-pg`'s connection string reaches `pg_basebackup` through its
/// environment, never its arguments, which every local user can read in /proc.
#[tokio::test]
async fn a_password_never_reaches_pg_basebackup_s_arguments() {
    require_root();
    let base = shared_tempdir();
    let mut server = PgCluster::init(base.path());
    std::fs::write(
        server.datadir.join("pg_hba.conf"),
        "local all all trust\n\
         host all all 127.0.0.1/32 scram-sha-256\n\
         host replication all 127.0.0.1/32 scram-sha-256\n",
    )
    .unwrap();
    server.start(&[]);
    server.psql("ALTER ROLE postgres PASSWORD 'pw-in-conninfo'");
    // Test double around the real pg_basebackup: it records its arguments and environment.
    let wrapper = base.path().join("bin");
    std::fs::create_dir_all(&wrapper).unwrap();
    let script = wrapper.join("pg_basebackup");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > {dir}/args\nenv > {dir}/env\nexec {real} \"$@\"\n",
            dir = base.path().display(),
            real = bindir().join("pg_basebackup").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let repo = temp_repo(base.path()).await;
    for conninfo in [
        format!(
            "host=127.0.0.1 port={} user=postgres password='pw-in-conninfo'",
            server.port
        ),
        format!(
            "postgresql://postgres:pw-in-conninfo@127.0.0.1:{}/postgres",
            server.port
        ),
    ] {
        let m = repo
            .ingest_pg(&conninfo, Checkpoint::Fast, Some(&wrapper), Arc::default())
            .await
            .expect("the password got through");
        assert_eq!(m.pg_version, "15");
        let args = std::fs::read_to_string(base.path().join("args")).unwrap();
        assert!(!args.contains("pw-in-conninfo"), "{args}");
        let env = std::fs::read_to_string(base.path().join("env")).unwrap();
        assert!(env.contains("PGPASSWORD=pw-in-conninfo"), "{env}");
    }
}
