//! The published Pod's PostgreSQL command, run for real (sh, pg_controldata and postgres as
//! the PostgreSQL image has them) on a backup whose recovery an earlier Pod left before the
//! backup's end.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ir_api::crd::{InstantRecovery, InstantRecoverySpec};
use ir_e2e::pg::{
    WAL_ENDS_BEFORE_BACKUP_END, as_pg, backup_recovery_cut_short, bindir, pg_user, psql_at,
};
use ir_e2e::{free_port, require_root, shared_tempdir};
use ir_operator::k8s::resources::{PostgresUser, PublishedMount, published_pod};

/// The published Pod's container command (`sh -c <script>`), from the Pod the operator makes.
fn published_command() -> Vec<String> {
    let spec: InstantRecoverySpec = serde_json::from_value(serde_json::json!({
        "backup": {"repositoryRef": {"name": "prod"}},
        "postgres": {"credentialsSecret": {"name": "db-superuser"}},
        "target": {"storageClassName": "fast"}
    }))
    .unwrap();
    let mut ir = InstantRecovery::new("orders", spec);
    ir.metadata.namespace = Some("shop".into());
    let (uid, gid) = pg_user();
    let pod = published_pod(
        &ir,
        "postgres:15",
        PostgresUser { uid, gid },
        &PublishedMount {
            node: "node-a",
            host_path: "/run/media/instant-recovery/mount",
            mounted_at: "2026-01-01T00:00:00Z",
        },
        None,
    );
    let command = pod.spec.unwrap().containers[0].command.clone().unwrap();
    assert_eq!(command[..2], ["sh", "-c"]);
    command
}

/// The command as the Pod runs it, with the settings of a local run instead of the Pod's.
fn run(command: &[String], datadir: &Path, socket: &Path, port: u16) -> Child {
    let path = format!("{}:/usr/bin:/bin", bindir().display());
    let mut c: Command = as_pg(Path::new("/bin/sh"));
    c.args(&command[1..])
        .arg("postgres")
        .arg(datadir)
        .args(["-c", "listen_addresses=", "-c", &format!("port={port}")])
        .arg("-c")
        .arg(format!("unix_socket_directories={}", socket.display()))
        .env_clear()
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c.spawn().expect("run the published Pod's command")
}

fn output(child: Child) -> String {
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn the_published_pod_starts_over_a_recovery_an_earlier_pod_left_before_the_backups_end() {
    require_root();
    let root = shared_tempdir();
    let root = root.path();
    let socket = root.join("socket");
    std::fs::create_dir(&socket).unwrap();
    ir_e2e::pg::chown_to_pg(&socket);
    let backup = backup_recovery_cut_short(root).await;
    let datadir = &backup.datadir;
    let command = published_command();

    // A label that is a symbolic link is not followed: PostgreSQL refuses as it would alone.
    let old = datadir.join("backup_label.old");
    std::fs::rename(&old, root.join("label")).unwrap();
    std::os::unix::fs::symlink(root.join("label"), &old).unwrap();
    let log = output(run(&command, datadir, &socket, free_port()));
    assert!(log.contains(WAL_ENDS_BEFORE_BACKUP_END), "{log}");
    assert!(old.is_symlink() && !datadir.join("backup_label").exists());
    std::fs::remove_file(&old).unwrap();
    std::fs::rename(root.join("label"), &old).unwrap();

    let port = free_port();
    let mut server = run(&command, datadir, &socket, port);
    let deadline = Instant::now() + Duration::from_secs(60);
    let rows = loop {
        if let Ok(rows) = psql_at(&socket, port, "SELECT count(*) FROM t") {
            break rows;
        }
        if server.try_wait().unwrap().is_some() {
            panic!("PostgreSQL exited:\n{}", output(server));
        }
        assert!(Instant::now() < deadline, "PostgreSQL not ready in 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(rows, backup.rows.to_string());
    // The script execs: its pid is the postmaster's.
    let stopped = Command::new("kill")
        .args(["-INT", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let log = output(server);
    assert!(
        log.contains("it starts over from backup_label"),
        "the script said nothing of the label it put back:\n{log}"
    );
}
