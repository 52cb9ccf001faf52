//! The agent killed under write load, and a switchover failing after the stop: no commit is
//! lost, and the published instance serves again at once.

use super::*;

/// Inserts rows one by one into the published instance (reconnecting to wherever its Pod is)
/// and records the ids whose commit was acknowledged.
async fn write_load(pods: Api<Pod>, pod: &'static str, stop: Arc<AtomicBool>) -> BTreeSet<i64> {
    let mut acked = BTreeSet::new();
    let mut next = 1_000_000i32;
    while !stop.load(Ordering::Relaxed) {
        let ip = match pods.get_opt(pod).await {
            Ok(Some(pod)) => pod.status.and_then(|s| s.pod_ip).unwrap_or_default(),
            _ => String::new(),
        };
        let Ok(client) = connect(&ip).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        while !stop.load(Ordering::Relaxed) {
            next += 1;
            match client
                .execute("INSERT INTO accounts VALUES ($1, 'load')", &[&next])
                .await
            {
                Ok(_) => {
                    acked.insert(i64::from(next));
                }
                Err(_) => break,
            }
        }
    }
    acked
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_killed_under_write_load_loses_no_commit() {
    let mut fx = Installation::start().await;
    fx.apply_recovery("agentkill", "    mode: Manual").await;
    fx.wait_phase("agentkill", Phase::ReadyForSwitchover, FLOW)
        .await;
    let first_pod = fx.pods().get("agentkill-published").await.unwrap();

    // Kill the agent while writes flow (the mount dies with it), then start it again as the
    // DaemonSet would.
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(write_load(fx.pods(), "agentkill-published", stop.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    fx.agent.take().expect("agent running").kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    fx.start_agent();

    // The operator replaces the published Pod on the new mount session.
    let deadline = Instant::now() + FLOW;
    loop {
        let pod = fx.pods().get_opt("agentkill-published").await.unwrap();
        let renewed = pod.as_ref().is_some_and(|p| {
            p.metadata.uid != first_pod.metadata.uid
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        });
        if renewed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}",
            fx.diagnostics("agentkill").await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    fx.wait_phase("agentkill", Phase::ReadyForSwitchover, FLOW)
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let acked = load.await.unwrap();
    assert!(
        acked.len() > 10,
        "the load committed only {} rows",
        acked.len()
    );

    // Every acknowledged commit is on the restarted published instance ...
    let ip = fx.pod_ip("agentkill-published", FLOW).await;
    let present = ids(&ip).await;
    let lost: Vec<_> = acked.difference(&present).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged commits lost: {lost:?}",
        lost.len()
    );

    // ... and on the target after the approved switchover.
    fx.approve_switchover("agentkill").await;
    fx.wait_phase("agentkill", Phase::Completed, FLOW).await;
    let target = fx.pod_ip("agentkill-target", FLOW).await;
    let present = ids(&target).await;
    let lost: Vec<_> = acked.difference(&present).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged commits lost on the target",
        lost.len()
    );
}

async fn ids(ip: &str) -> BTreeSet<i64> {
    let client = connect(ip).await.expect("connect");
    client
        .query("SELECT id FROM accounts WHERE id > 1000000", &[])
        .await
        .expect("read ids")
        .iter()
        .map(|r| i64::from(r.get::<_, i32>(0)))
        .collect()
}

/// The processes of the container `container_id` (its runtime's ID, without the
/// `containerd://` scheme), with their command lines: those whose cgroup path names it.
fn container_processes(container_id: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let cgroup = std::fs::read_to_string(entry.path().join("cgroup")).unwrap_or_default();
        if cgroup.contains(container_id) {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            found.push((pid, String::from_utf8_lossy(&cmdline).replace('\0', " ")));
        }
    }
    found
}

/// The startup process (WAL replay) of the standby in Pod `pod`, as the machine sees it.
async fn standby_replay_pid(fx: &Installation, pod: &str) -> u32 {
    let pod = fx.pods().get(pod).await.expect("get the target Pod");
    let container = pod
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|c| c.into_iter().find(|c| c.name == "postgres"))
        .and_then(|c| c.container_id)
        .expect("the target's postgres container runs");
    let id = container
        .split_once("://")
        .map_or(container.as_str(), |(_, id)| id);
    let processes = container_processes(id);
    processes
        .iter()
        .find(|(_, cmdline)| cmdline.contains(": startup recovering"))
        .map(|(pid, _)| *pid)
        .unwrap_or_else(|| panic!("no startup process in container {id}: {processes:?}"))
}

fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) on a pid we looked up; no memory is involved.
    let rc = unsafe { libc::kill(pid as i32, signal) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {signal}): {}",
        std::io::Error::last_os_error()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_switchover_failing_after_the_stop_brings_the_published_instance_back_at_once() {
    let mut fx = Installation::start().await;
    fx.start_operator_with(&["--switchover-catch-up-timeout", "5s"]);
    fx.apply_recovery("stopfail", "    mode: Manual").await;
    fx.wait_phase("stopfail", Phase::ReadyForSwitchover, FLOW)
        .await;
    let first_pod = fx.pods().get("stopfail-published").await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(write_load(fx.pods(), "stopfail-published", stop.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Once the published Pod is being deleted, the standby stops replaying: the catch-up on
    // the shutdown checkpoint times out after the stop, before any promotion. The replaying
    // process is found first: the shutdown checkpoint follows the deletion within milliseconds.
    let replay = standby_replay_pid(&fx, "stopfail-target").await;
    fx.approve_switchover("stopfail").await;
    let deadline = Instant::now() + FLOW;
    loop {
        let pod = fx.pods().get_opt("stopfail-published").await.unwrap();
        if pod.is_none_or(|p| p.metadata.deletion_timestamp.is_some()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}",
            fx.diagnostics("stopfail").await
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    signal(replay, libc::SIGSTOP);
    let stopped_at = Instant::now();
    let status = fx
        .wait_status("stopfail", FLOW, |s| s.phase == Phase::Waiting)
        .await;
    signal(replay, libc::SIGCONT);
    assert_eq!(
        status.reason.as_deref(),
        Some("SwitchoverFailed"),
        "{status:?}"
    );
    let last_error = status.retry.last_error.clone().unwrap_or_default();
    assert!(last_error.contains("replay"), "{status:?}");

    // A new published Pod serves, long before the automatic retry.
    let restarted = loop {
        let pod = fx.pods().get_opt("stopfail-published").await.unwrap();
        let ip = pod
            .filter(|p| p.metadata.uid != first_pod.metadata.uid)
            .and_then(|p| p.status)
            .and_then(|s| s.pod_ip)
            .filter(|ip| !ip.is_empty());
        if let Some(ip) = ip
            && let Ok(client) = connect(&ip).await
            && client
                .execute("INSERT INTO accounts VALUES (999999999, 'after')", &[])
                .await
                .is_ok()
        {
            break ip;
        }
        assert!(
            stopped_at.elapsed() < Duration::from_secs(60),
            "no writable published Pod within 60 s:\n{}",
            fx.diagnostics("stopfail").await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let waiting = fx
        .recoveries()
        .get("stopfail")
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(waiting.phase, Phase::Waiting, "{waiting:?}");
    assert!(
        last_error.ends_with("the published instance serves again"),
        "{waiting:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = load.await.unwrap();
    acked.insert(999_999_999);
    assert!(
        acked.len() > 10,
        "the load committed only {} rows",
        acked.len()
    );
    let present = ids(&restarted).await;
    let lost: Vec<_> = acked.difference(&present).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged commits lost: {lost:?}",
        lost.len()
    );

    // No second primary: the target is still a standby.
    let target = fx.pod_ip("stopfail-target", FLOW).await;
    assert_eq!(query_one(&target, "SELECT pg_is_in_recovery()").await, "t");

    // A manual retry switches over, with every acknowledged commit.
    let retry =
        serde_json::json!({"metadata": {"annotations": {"instantrecovery.dev/retry": "1"}}});
    fx.recoveries()
        .patch("stopfail", &PatchParams::default(), &Patch::Merge(&retry))
        .await
        .expect("request a retry");
    fx.wait_phase("stopfail", Phase::Completed, FLOW).await;
    let target = fx.pod_ip("stopfail-target", FLOW).await;
    assert_eq!(query_one(&target, "SELECT pg_is_in_recovery()").await, "f");
    let present = ids(&target).await;
    let lost: Vec<_> = acked.difference(&present).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged commits lost on the target",
        lost.len()
    );
}
