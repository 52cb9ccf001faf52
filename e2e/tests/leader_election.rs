//! Several operator replicas with leader election on a real control plane: one leads and
//! reconciles, the others wait (ready all the same); SIGKILL the leader and another takes over
//! once the Lease expires and carries the recovery on; SIGTERM the leader and it hands the
//! Lease over at once.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ir_api::recovery::Phase;
use ir_e2e::http::{loopback, scrape, wait_http_ok};
use ir_e2e::installation::{Installation, SYSTEM_NAMESPACE};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;

const FLOW: Duration = Duration::from_secs(240);
const LEASE: &str = "instant-recovery-operator";
const RECOVERY: &str = "elected";
/// The operator's Lease duration.
const LEASE_DURATION: Duration = Duration::from_secs(15);

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt(LEASE)
        .await
        .expect("read the Lease")
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

async fn wait_holder(fx: &Installation, leases: &Api<Lease>, who: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let now = holder(leases).await;
        if now.as_deref() == Some(who) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{who} does not hold the Lease after {timeout:?} (holder: {now:?}):\n{}",
            fx.diagnostics(RECOVERY).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn leader_gauge(address: SocketAddr) -> f64 {
    scrape(address)
        .await
        .sum("instant_recovery_operator_leader", &[])
}

async fn reconciles(address: SocketAddr) -> f64 {
    scrape(address).await.sum(
        "instant_recovery_operator_reconciles_total",
        &[("controller", "InstantRecovery")],
    )
}

async fn replica(fx: &Installation, name: &str) -> (ir_e2e::installation::Daemon, SocketAddr) {
    let address = loopback(ir_e2e::free_port());
    let daemon = fx.spawn_operator(name, address, &["--leader-election"]);
    // Ready as soon as it is connected, leading or not.
    wait_http_ok(address, "/readyz", Duration::from_secs(30)).await;
    (daemon, address)
}

#[tokio::test(flavor = "multi_thread")]
async fn one_replica_leads_and_another_takes_over_when_it_dies_or_stops() {
    let mut fx = Installation::start().await;
    // The installation's own operator runs without election: replicas replace it.
    fx.operator.take().expect("the operator runs").kill();
    let leases: Api<Lease> = Api::namespaced(fx.plane.admin(), SYSTEM_NAMESPACE);

    let (a, a_metrics) = replica(&fx, "operator-a").await;
    wait_holder(&fx, &leases, "operator-a", Duration::from_secs(30)).await;
    let (b, b_metrics) = replica(&fx, "operator-b").await;
    assert_eq!(leader_gauge(a_metrics).await, 1.0);
    assert_eq!(leader_gauge(b_metrics).await, 0.0);

    // Only the leader reconciles.
    fx.apply_recovery(RECOVERY, "    mode: Manual").await;
    fx.wait_phase(RECOVERY, Phase::ReadyForSwitchover, FLOW)
        .await;
    assert!(reconciles(a_metrics).await > 0.0);
    assert_eq!(
        reconciles(b_metrics).await,
        0.0,
        "the waiting replica reconciled"
    );
    assert_eq!(holder(&leases).await.as_deref(), Some("operator-a"));

    // SIGKILL: nobody releases the Lease; b takes it once it has not been renewed for its
    // duration, and not before.
    let killed = Instant::now();
    a.kill();
    wait_holder(&fx, &leases, "operator-b", Duration::from_secs(60)).await;
    let takeover = killed.elapsed();
    println!("takeover after SIGKILL of the leader: {takeover:?}");
    assert!(
        takeover >= LEASE_DURATION - Duration::from_secs(3),
        "b took the Lease {takeover:?} after the kill, before it expired"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while leader_gauge(b_metrics).await != 1.0 {
        assert!(
            Instant::now() < deadline,
            "b holds the Lease but does not lead"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The new leader carries the recovery on.
    fx.approve_switchover(RECOVERY).await;
    fx.wait_phase(RECOVERY, Phase::Completed, FLOW).await;
    assert!(reconciles(b_metrics).await > 0.0);

    // SIGTERM: the leader stops its controllers and releases the Lease, so a waiting replica
    // takes over well before the Lease would have expired.
    let (_c, c_metrics) = replica(&fx, "operator-c").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(holder(&leases).await.as_deref(), Some("operator-b"));
    assert_eq!(leader_gauge(c_metrics).await, 0.0);
    let b_log = b.log.clone();
    let status = b
        .terminate(Duration::from_secs(30))
        .expect("the leader exits on SIGTERM");
    assert!(status.success(), "the leader exited with {status}");
    let released = Instant::now();
    wait_holder(&fx, &leases, "operator-c", LEASE_DURATION).await;
    let handover = released.elapsed();
    println!("handover after SIGTERM of the leader: {handover:?}");
    assert!(
        handover < LEASE_DURATION / 2,
        "c took over {handover:?} after b stopped: b did not release the Lease"
    );
    let log = std::fs::read_to_string(&b_log).unwrap();
    assert!(log.contains("released the leader Lease"), "{log}");
    let lease = leases.get(LEASE).await.unwrap().spec.unwrap();
    assert_eq!(lease.lease_transitions, Some(2), "{lease:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while reconciles(c_metrics).await == 0.0 {
        assert!(
            Instant::now() < deadline,
            "c leads but does not reconcile the recovery"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
