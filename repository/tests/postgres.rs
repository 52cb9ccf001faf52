//! Backups of a real PostgreSQL 15 cluster. Needs root (to run the server as `postgres`) and the
//! Debian PostgreSQL 15 binaries; fails loudly without them.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::{entry, read_back, temp_repo};
use ir_repository::{Checkpoint, EntryKind, Progress, parse_lsn};

const BINDIR: &str = "/usr/lib/postgresql/15/bin";

fn as_postgres(program: &str, args: &[&str]) -> String {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(Path::new(BINDIR).join(program))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} through runuser: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A running cluster in a temp dir, stopped when dropped.
struct Cluster {
    data: PathBuf,
    socket: PathBuf,
    port: u16,
    running: bool,
}

impl Cluster {
    fn start(base: &Path) -> Cluster {
        let uid = Command::new("id").arg("-u").output().expect("run id -u");
        assert_eq!(
            String::from_utf8_lossy(&uid.stdout).trim(),
            "0",
            "this test needs root to run PostgreSQL as the postgres user"
        );
        assert!(
            Path::new(BINDIR).join("initdb").exists(),
            "PostgreSQL 15 binaries not found in {BINDIR}"
        );
        std::fs::set_permissions(base, std::fs::Permissions::from_mode(0o755)).unwrap();
        let data = base.join("data");
        let socket = base.join("socket");
        std::fs::create_dir(&socket).unwrap();
        std::fs::create_dir(&data).unwrap();
        let chown = Command::new("chown")
            .arg("postgres:postgres")
            .args([&socket, &data])
            .status()
            .unwrap();
        assert!(chown.success());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let d = data.to_str().unwrap().to_string();
        let d = d.as_str();
        as_postgres("initdb", &["-D", d, "-A", "trust", "-U", "postgres"]);
        let opts = format!("-p {port} -k {} -c listen_addresses=''", socket.display());
        let log = base.join("server.log");
        let log = log.to_str().unwrap();
        let mut cluster = Cluster {
            data,
            socket,
            port,
            running: false,
        };
        // The log file must be writable by postgres.
        std::fs::write(log, b"").unwrap();
        Command::new("chown")
            .args(["postgres", log])
            .status()
            .unwrap();
        as_postgres("pg_ctl", &["-D", d, "-o", &opts, "-l", log, "-w", "start"]);
        cluster.running = true;
        cluster
    }

    fn conninfo(&self) -> String {
        format!(
            "host={} port={} user=postgres",
            self.socket.display(),
            self.port
        )
    }

    fn stop(&mut self) {
        if self.running {
            as_postgres(
                "pg_ctl",
                &[
                    "-D",
                    self.data.to_str().unwrap(),
                    "-m",
                    "fast",
                    "-w",
                    "stop",
                ],
            );
            self.running = false;
        }
    }

    /// `pg_controldata` output as key -> value.
    fn controldata(&self) -> std::collections::HashMap<String, String> {
        as_postgres("pg_controldata", &["-D", self.data.to_str().unwrap()])
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.running {
            let _ = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(Path::new(BINDIR).join("pg_ctl"))
                .args(["-D", self.data.to_str().unwrap(), "-m", "immediate", "stop"])
                .status();
        }
    }
}

#[tokio::test]
async fn backup_of_a_live_and_a_stopped_cluster() {
    let base = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(base.path());
    let repo = temp_repo(base.path()).await;

    // SAFETY: the test sets the variable before anything reads it and nothing else changes it.
    unsafe { std::env::set_var("IR_PG_BINDIR", BINDIR) };
    let m = repo
        .ingest_pg(
            &cluster.conninfo(),
            Checkpoint::Fast,
            Arc::new(Progress::default()),
        )
        .await
        .expect("ingest from pg_basebackup");
    let control = cluster.controldata();
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
        .ingest_dir(&cluster.data, Arc::new(Progress::default()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not shut down cleanly"), "{err}");
    cluster.stop();
    let control = cluster.controldata();
    assert_eq!(control["Database cluster state"], "shut down");
    let cold = repo
        .ingest_dir(&cluster.data, Arc::new(Progress::default()))
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
            Arc::new(Progress::default()),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("pg_basebackup failed"), "{err}");
    assert_eq!(repo.list_backups().await.unwrap().len(), 2);
}
