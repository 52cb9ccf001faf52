//! Leader election candidates against a real API server: racing candidates end with one
//! leader, a renewing leader keeps the Lease, a silent one loses it once it expired, a
//! released one hands it over at once.

use std::time::{Duration, Instant};

use futures::future::select_all;
use ir_e2e::cluster::ControlPlane;
use ir_operator::k8s::leader::{Elector, LeaseConfig};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;

const NAMESPACE: &str = "ops";
const LEASE: &str = "operator";
const DURATION: Duration = Duration::from_secs(3);

fn candidate(plane: &ControlPlane, identity: &str) -> Elector {
    let config = LeaseConfig {
        duration: DURATION,
        renew_deadline: Duration::from_secs(2),
        retry: Duration::from_millis(200),
        ..LeaseConfig::new(NAMESPACE.into(), LEASE.into(), identity.into())
    };
    Elector::new(plane.admin(), config)
}

async fn holder(plane: &ControlPlane) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(plane.admin(), NAMESPACE);
    leases
        .get(LEASE)
        .await
        .expect("the Lease exists")
        .spec
        .and_then(|s| s.holder_identity)
}

/// Which of `candidates` acquires first within `within` (the others stop trying then).
async fn race(candidates: &mut [(&str, Elector)], within: Duration) -> Option<usize> {
    let attempts = candidates
        .iter_mut()
        .map(|(_, elector)| Box::pin(elector.acquire()));
    tokio::time::timeout(within, select_all(attempts))
        .await
        .ok()
        .map(|((), index, _)| index)
}

#[tokio::test(flavor = "multi_thread")]
async fn one_candidate_leads_until_it_stops_renewing_or_releases() {
    let plane = ControlPlane::start().await;
    plane.create_namespace(NAMESPACE).await;
    let mut candidates: Vec<(&str, Elector)> = ["a", "b", "c"]
        .into_iter()
        .map(|who| (who, candidate(&plane, who)))
        .collect();

    // Three candidates race for a Lease that does not exist yet: one wins, and the others
    // see it held.
    let first = race(&mut candidates, Duration::from_secs(2))
        .await
        .expect("somebody leads");
    let (leader_name, mut leader) = candidates.remove(first);
    assert_eq!(holder(&plane).await.as_deref(), Some(leader_name));
    assert_eq!(race(&mut candidates, Duration::from_secs(1)).await, None);

    // While the leader renews, nobody else gets it, however long they wait.
    let renewing = tokio::spawn(async move {
        let lost = tokio::time::timeout(DURATION * 2, leader.hold()).await;
        assert!(lost.is_err(), "the leader lost the Lease: {lost:?}");
        leader
    });
    assert_eq!(race(&mut candidates, DURATION * 2).await, None);
    let mut leader = renewing.await.unwrap();
    assert_eq!(holder(&plane).await.as_deref(), Some(leader_name));

    // It stops renewing (a dead process): another takes over once the Lease has expired.
    let silent = Instant::now();
    let second = race(&mut candidates, DURATION * 3)
        .await
        .expect("a candidate takes over");
    assert!(
        silent.elapsed() >= DURATION - Duration::from_millis(500),
        "taken over after {:?}, before the Lease expired",
        silent.elapsed()
    );
    let (second_name, mut second_leader) = candidates.remove(second);
    assert_eq!(holder(&plane).await.as_deref(), Some(second_name));
    // The candidate that lost that race waits for the new holder.
    assert_eq!(race(&mut candidates, Duration::from_secs(1)).await, None);
    // The old leader, renewing again, finds it lost.
    let lost = tokio::time::timeout(DURATION, leader.hold()).await;
    assert!(lost.is_ok(), "the old leader did not notice the new holder");

    // The new leader releases: the last candidate takes over without waiting for expiry.
    second_leader.release().await;
    assert_eq!(holder(&plane).await, None);
    let released = Instant::now();
    assert_eq!(race(&mut candidates, DURATION).await, Some(0));
    assert!(
        released.elapsed() < DURATION / 2,
        "{:?}",
        released.elapsed()
    );
    assert_eq!(holder(&plane).await.as_deref(), Some(candidates[0].0));
    // Releasing a Lease someone else holds changes nothing.
    leader.release().await;
    assert_eq!(holder(&plane).await.as_deref(), Some(candidates[0].0));
}
