//! PostgreSQL control against real servers (no FUSE needed): configuration and start (a
//! recovery from a backup cut short included), a standby built with pg_basebackup, progress
//! views, and the switchover with its failure and rerun paths.

use std::path::Path;
use std::time::Duration;

use ir_e2e::pg::{PgCluster, backup_recovery_cut_short, pg_user};
use ir_e2e::{free_port, require_root, shared_tempdir};
use ir_engine::postgres::{
    self, BackupRecovery, ControlData, Endpoint, Instance, LocalPublished, PgBinaries, PgError,
    PublishedControl, Reached, Switchover, SwitchoverError, SwitchoverOutcome, SwitchoverTimeouts,
};
use ir_engine::process::{self, OsUser};

const STANDBY: &str = "instant-recovery-target";

fn instance(root: &Path, name: &str, datadir: &Path, settings: &[(&str, &str)]) -> Instance {
    Instance {
        datadir: datadir.to_path_buf(),
        conf_dir: root.join("conf").join(name),
        socket_dir: root.join("run"),
        port: free_port(),
        listen_addresses: String::new(),
        log: root.join(format!("{name}.log")),
        settings: settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

/// What every test here needs: a root directory with PostgreSQL's socket directory `run`, the
/// binaries, and the user PostgreSQL runs as.
fn servers() -> (tempfile::TempDir, PgBinaries, OsUser) {
    require_root();
    let tmp = shared_tempdir();
    let bins = PgBinaries::find(15, None).expect("PostgreSQL 15 binaries");
    let (uid, gid) = pg_user();
    let user = OsUser {
        name: "postgres".into(),
        uid,
        gid,
    };
    let run = tmp.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::os::unix::fs::chown(&run, Some(uid), Some(gid)).unwrap();
    (tmp, bins, user)
}

async fn start(instance: &Instance, bins: &PgBinaries, user: &OsUser) -> (u32, Endpoint) {
    let me = OsUser::current().unwrap();
    std::fs::create_dir_all(&instance.conf_dir).unwrap();
    for (name, text) in instance.config_files(&[&me.name, &user.name], "postgres") {
        std::fs::write(instance.conf_dir.join(name), text).unwrap();
    }
    // The socket directory must be PostgreSQL's own.
    std::fs::create_dir_all(&instance.socket_dir).unwrap();
    std::os::unix::fs::chown(&instance.socket_dir, Some(user.uid), Some(user.gid)).unwrap();
    let pid = instance.start(bins, user).unwrap();
    let endpoint = instance.endpoint("postgres", "postgres");
    instance
        .wait_ready(&endpoint, pid, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    (pid, endpoint)
}

async fn query(endpoint: &Endpoint, sql: &str) -> String {
    let client = endpoint.connect().await.unwrap();
    let rows = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", postgres::describe(&e)));
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap_or_default()
}

/// A published instance whose control file the driver cannot read, as in a cluster: the
/// switchover relies on the standby's flushed WAL instead.
struct Remote<'a>(LocalPublished<'a>);

impl PublishedControl for Remote<'_> {
    async fn is_running(&self) -> Result<bool, PgError> {
        self.0.is_running().await
    }

    async fn stop(&self) -> Result<(), PgError> {
        self.0.stop().await
    }

    fn final_checkpoint(&self) -> Result<Option<ControlData>, PgError> {
        Ok(None)
    }
}

async fn run_switchover(
    published: LocalPublished<'_>,
    control_file: bool,
    published_endpoint: &Endpoint,
    standby_endpoint: &Endpoint,
    timeouts: SwitchoverTimeouts,
) -> Result<SwitchoverOutcome, SwitchoverError> {
    if control_file {
        Switchover {
            published: &published,
            published_endpoint,
            standby_endpoint,
            timeouts,
        }
        .run()
        .await
    } else {
        Switchover {
            published: &Remote(published),
            published_endpoint,
            standby_endpoint,
            timeouts,
        }
        .run()
        .await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn switchover_checked_by_the_control_file() {
    switchover_fails_safely_then_promotes_the_standby(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn switchover_checked_by_the_standby_flush() {
    switchover_fails_safely_then_promotes_the_standby(false).await;
}

async fn switchover_fails_safely_then_promotes_the_standby(control_file: bool) {
    let (tmp, bins, user) = servers();
    let root = tmp.path();

    // initdb only: the engine's Instance runs it, with the engine's hba and ident files.
    let primary_dir = PgCluster::init(&root.join("p")).datadir.clone();
    let primary = instance(root, "primary", &primary_dir, &[]);
    let (primary_pid, primary_ep) = start(&primary, &bins, &user).await;
    query(
        &primary_ep,
        "CREATE TABLE t(id int); INSERT INTO t SELECT generate_series(1, 1000)",
    )
    .await;

    let target = root.join("standby");
    std::fs::create_dir(&target).unwrap();
    std::fs::set_permissions(&target, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&target, Some(user.uid), Some(user.gid)).unwrap();
    let bb_log = root.join("basebackup.log");
    let bb = postgres::start_base_backup(&bins, &primary_ep, &target, &user, &bb_log).unwrap();
    assert!(process::wait_gone(bb, Duration::from_secs(120)).await);
    assert!(
        postgres::base_backup_complete(&target),
        "{}",
        process::log_tail(&bb_log, 2000)
    );
    let standby = instance(root, "standby", &target, &[("cluster_name", STANDBY)]);
    let (standby_pid, standby_ep) = start(&standby, &bins, &user).await;

    let client = primary_ep.connect().await.unwrap();
    let mut lag = None;
    for _ in 0..200 {
        lag = postgres::replication_lag(&client, STANDBY).await.unwrap();
        if lag.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(lag.is_some(), "the standby does not stream");
    drop(client);

    // The standby cannot catch up (replay paused): the switchover times out and the primary
    // serves writes again.
    query(&standby_ep, "SELECT pg_wal_replay_pause()").await;
    query(&primary_ep, "INSERT INTO t VALUES (1001)").await;
    let mut timeouts = SwitchoverTimeouts {
        catch_up: Duration::from_secs(2),
        ..Default::default()
    };
    let switchover = |timeouts: SwitchoverTimeouts| {
        let published = LocalPublished {
            bins: &bins,
            instance: &primary,
            stop_timeout: timeouts.stop,
        };
        run_switchover(published, control_file, &primary_ep, &standby_ep, timeouts)
    };
    let err = switchover(timeouts).await.expect_err("replay is paused");
    assert_eq!(err.reached, Reached::BeforeStop);
    assert!(err.to_string().contains("replaying up to"), "{err}");
    assert!(process::is_alive(primary_pid));
    assert_eq!(
        query(&primary_ep, "SHOW default_transaction_read_only").await,
        "off"
    );
    query(&primary_ep, "INSERT INTO t VALUES (1002)").await;

    // Caught up: read-only, stop, promote.
    query(&standby_ep, "SELECT pg_wal_replay_resume()").await;
    timeouts.catch_up = Duration::from_secs(60);
    let outcome = switchover(timeouts).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((outcome.old_timeline, outcome.new_timeline), (1, 2));
    assert!(outcome.downtime < Duration::from_secs(30));
    assert!(
        !process::is_alive(primary_pid),
        "the old primary is stopped"
    );
    assert_eq!(query(&standby_ep, "SELECT pg_is_in_recovery()").await, "f");
    assert_eq!(query(&standby_ep, "SELECT count(*) FROM t").await, "1002");
    query(&standby_ep, "INSERT INTO t VALUES (1003)").await;
    let conninfo = query(
        &standby_ep,
        "SELECT setting FROM pg_file_settings WHERE name = 'primary_conninfo' AND applied",
    )
    .await;
    assert_eq!(conninfo, "", "the promoted standby still follows someone");

    // Running it again (a driver that crashed after promoting) recognises the done work.
    let again = switchover(timeouts).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again.new_timeline, 2);

    standby
        .stop(standby_pid, Duration::from_secs(30))
        .await
        .unwrap();
}

/// A server on a restored backup stopped before it replayed the backup's end (its mount went
/// away, its Pod was replaced) starts again: the engine puts backup_label back first, and only
/// then, where PostgreSQL alone refuses every later start in crash recovery.
#[tokio::test]
async fn a_recovery_from_a_backup_stopped_before_its_end_starts_over() {
    let (tmp, bins, user) = servers();
    let root = tmp.path();
    let backup = backup_recovery_cut_short(root).await;
    let datadir = &backup.datadir;
    let label_start = ir_repository::parse_backup_label(&backup.label)
        .unwrap()
        .start_lsn;
    let control = postgres::control_data(&bins, datadir).unwrap();
    assert_eq!(control.backup_start_lsn, Some(label_start), "{control:?}");

    // Nothing is put back where PostgreSQL resumes on its own (a signal file asks for archive
    // recovery), nor from a label that is a symbolic link or names another backup.
    let untouched = |what: &str| {
        assert_eq!(
            postgres::resume_cut_short_backup_recovery(&bins, datadir).unwrap(),
            BackupRecovery::Untouched,
            "{what}"
        );
        assert!(!datadir.join("backup_label").exists(), "{what}");
    };
    for signal in ["standby.signal", "recovery.signal"] {
        std::fs::write(datadir.join(signal), "").unwrap();
        untouched(signal);
        std::fs::remove_file(datadir.join(signal)).unwrap();
    }
    let old = datadir.join("backup_label.old");
    std::fs::rename(&old, root.join("label")).unwrap();
    std::os::unix::fs::symlink(root.join("label"), &old).unwrap();
    untouched("a symbolic link");
    std::fs::remove_file(&old).unwrap();
    let other = backup
        .label
        .replacen("START WAL LOCATION: 0/", "START WAL LOCATION: 1/", 1);
    std::fs::write(&old, other).unwrap();
    untouched("another backup's label");
    std::fs::write(&old, b"\xff\0START WAL LOCATION: none\n").unwrap();
    untouched("a label that is not one");
    std::fs::rename(root.join("label"), &old).unwrap();

    let restored = instance(root, "restored", datadir, &[]);
    let (pid, endpoint) = start(&restored, &bins, &user).await;
    assert_eq!(
        query(&endpoint, "SELECT count(*) FROM t").await,
        backup.rows.to_string()
    );
    let control = postgres::control_data(&bins, datadir).unwrap();
    assert_eq!(control.backup_start_lsn, None, "{control:?}");
    restored.stop(pid, Duration::from_secs(30)).await.unwrap();
}
