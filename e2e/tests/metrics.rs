//! The operator's and the agent's `/metrics` move with a real recovery: scraped before, while
//! the published instance serves from the mount, and after the switchover.

use std::time::Duration;

use ir_api::recovery::Phase;
use ir_e2e::http::{Exposition, http_get, scrape, wait_http_ok};
use ir_e2e::installation::{Installation, query_one};

const FLOW: Duration = Duration::from_secs(240);
const RECOVERY: &str = "scraped";
const MOUNT: &str = "db/scraped";

fn operator(name: &str) -> String {
    format!("instant_recovery_operator_{name}")
}

fn agent(name: &str) -> String {
    format!("instant_recovery_agent_{name}")
}

fn phase_count(metrics: &Exposition, phase: Phase) -> f64 {
    metrics.sum(&operator("recoveries"), &[("phase", phase.as_str())])
}

/// Scrapes until the operator's recoveries gauge shows `name` in `phase` (its cache follows
/// the API server closely but not at once).
async fn scrape_until_phase(fx: &Installation, phase: Phase) -> Exposition {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = scrape(fx.operator_metrics).await;
        if phase_count(&metrics, phase) == 1.0 {
            return metrics;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "recoveries{{phase={phase}}} is not 1: {:?}",
            metrics
                .find(&operator("recoveries"), &[])
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_and_agent_metrics_follow_a_recovery() {
    let fx = Installation::start().await;
    for (address, path) in [
        (fx.operator_metrics, "/healthz"),
        (fx.operator_metrics, "/readyz"),
        (fx.agent_metrics, "/healthz"),
    ] {
        wait_http_ok(address, path, Duration::from_secs(30)).await;
    }
    let (status, _) = http_get(fx.agent_metrics, "/nothing").await.unwrap();
    assert_eq!(status, 404);

    let before = scrape(fx.operator_metrics).await;
    assert_eq!(before.types[&operator("reconciles_total")], "counter");
    assert_eq!(before.types[&operator("recoveries")], "gauge");
    assert_eq!(
        before.types[&operator("time_to_first_query_seconds")],
        "histogram"
    );
    assert_eq!(before.sum(&operator("leader"), &[]), 1.0);
    for phase in Phase::ALL {
        assert_eq!(
            phase_count(&before, phase),
            0.0,
            "{phase} before any recovery"
        );
    }
    let agent_before = scrape(fx.agent_metrics).await;
    assert_eq!(agent_before.types[&agent("fetched_bytes_total")], "counter");
    assert_eq!(
        agent_before.types[&agent("fuse_operation_duration_seconds")],
        "histogram"
    );
    assert_eq!(
        agent_before
            .find(&agent("fetched_bytes_total"), &[])
            .count(),
        0,
        "no mount yet"
    );

    fx.apply_recovery(RECOVERY, "    mode: Manual").await;
    fx.wait_phase(RECOVERY, Phase::ReadyForSwitchover, FLOW)
        .await;
    let ip = fx.pod_ip("scraped-published", FLOW).await;
    assert_eq!(
        query_one(&ip, "SELECT count(*) FROM accounts").await,
        ir_e2e::installation::SAMPLE_ROWS.to_string()
    );

    // The agent: the published instance reads the backup through the mount.
    let serving = scrape(fx.agent_metrics).await;
    let mount = [("mount", MOUNT)];
    let fetched = serving.sum(&agent("fetched_bytes_total"), &mount);
    assert!(fetched > 0.0, "nothing fetched: {serving:?}");
    assert!(serving.sum(&agent("chunk_cache_misses_total"), &mount) > 0.0);
    assert!(
        serving.sum(
            &agent("chunk_cache_hits_total"),
            &[("mount", MOUNT), ("cache", "memory")]
        ) > 0.0,
        "reads within a chunk hit the memory cache"
    );
    assert_eq!(serving.sum(&agent("repository_errors_total"), &mount), 0.0);
    assert!(serving.sum(&agent("ircache_bytes"), &mount) > 0.0);
    // No memory budget given: the whole default memory cache.
    assert_eq!(
        serving.sum(&agent("memory_cache_bytes"), &mount),
        (256u64 << 20) as f64
    );
    let reads = [("mount", MOUNT), ("operation", "read")];
    let read_count = serving.sum(&agent("fuse_operation_duration_seconds_count"), &reads);
    assert!(read_count > 0.0, "no FUSE read measured");
    assert_eq!(
        serving.sum(
            &agent("fuse_operation_duration_seconds_bucket"),
            &[("mount", MOUNT), ("operation", "read"), ("le", "+Inf")]
        ),
        read_count
    );
    assert!(serving.sum(&agent("fuse_operation_duration_seconds_sum"), &reads) > 0.0);
    // Writes go through the mount too (PostgreSQL's checkpoint at start, WAL).
    assert!(
        serving.sum(
            &agent("fuse_operation_duration_seconds_count"),
            &[("mount", MOUNT), ("operation", "write")]
        ) > 0.0
    );

    // More reading moves the counters.
    query_one(&ip, "SELECT sum(length(note)) FROM accounts").await;
    let later = scrape(fx.agent_metrics).await;
    assert!(
        later.sum(&agent("fuse_operation_duration_seconds_count"), &reads) >= read_count,
        "a counter went back"
    );

    // The operator, waiting for the approval.
    let waiting = scrape_until_phase(&fx, Phase::ReadyForSwitchover).await;
    let reconciles = |m: &Exposition| {
        m.sum(
            &operator("reconciles_total"),
            &[("controller", "InstantRecovery")],
        )
    };
    assert!(reconciles(&waiting) > reconciles(&before));
    assert!(
        waiting.sum(
            &operator("reconciles_total"),
            &[("controller", "BackupRepository")]
        ) >= 1.0
    );
    assert_eq!(
        waiting.sum(&operator("time_to_first_query_seconds_count"), &[]),
        1.0
    );
    assert!(waiting.sum(&operator("time_to_first_query_seconds_sum"), &[]) > 0.0);
    assert_eq!(
        waiting.sum(&operator("switchover_downtime_seconds_count"), &[]),
        0.0
    );
    for phase in [Phase::Pending, Phase::Mounting, Phase::Publishing] {
        assert!(
            waiting.sum(
                &operator("reconcile_duration_seconds_count"),
                &[("phase", phase.as_str())]
            ) > 0.0,
            "no reconcile timed in {phase}"
        );
    }

    fx.approve_switchover(RECOVERY).await;
    fx.wait_phase(RECOVERY, Phase::Completed, FLOW).await;
    let done = scrape_until_phase(&fx, Phase::Completed).await;
    assert_eq!(phase_count(&done, Phase::ReadyForSwitchover), 0.0);
    assert!(reconciles(&done) > reconciles(&waiting));
    assert_eq!(
        done.sum(&operator("switchover_downtime_seconds_count"), &[]),
        1.0
    );
    assert!(done.sum(&operator("switchover_downtime_seconds_sum"), &[]) > 0.0);
    // Observed once per recovery, not once per reconcile.
    assert_eq!(
        done.sum(&operator("time_to_first_query_seconds_count"), &[]),
        1.0
    );

    // Every log line about the recovery comes from within its span, which names it.
    let log = std::fs::read_to_string(&fx.operator.as_ref().unwrap().log).unwrap();
    let about: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("recovery=InstantRecovery/db/scraped"))
        .collect();
    assert!(!about.is_empty(), "no log line about the recovery:\n{log}");
    for line in about {
        assert!(
            line.contains("reconcile{kind=\"InstantRecovery\" namespace=db object=scraped}"),
            "a line outside the recovery's span: {line}"
        );
    }
}
