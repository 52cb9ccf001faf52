//! Leader election with a `coordination.k8s.io/v1` Lease, so that several replicas of the
//! operator can run and only one reconciles.
//!
//! As client-go does it: every change of the Lease goes through a replace carrying the
//! `resourceVersion` that was read, so the API server refuses it when someone else changed the
//! Lease in between (optimistic concurrency); a candidate takes over only after the Lease has
//! not changed for its `leaseDurationSeconds` *as measured on the candidate's own clock*, so
//! clock skew between nodes does not matter. The leader renews every retry period and gives up
//! (the process exits) if it could not renew within the renew deadline, before any other
//! candidate can see the Lease expire. On a clean stop the leader clears `holderIdentity` so
//! that another replica takes over at once.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};

/// Where the Lease is, who we are, and the timing (client-go's defaults).
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// How long the Lease stays ours without a renewal.
    pub duration: Duration,
    /// The leader gives up when it could not renew for this long (< `duration`).
    pub renew_deadline: Duration,
    /// How often the leader renews and the others look.
    pub retry: Duration,
}

impl LeaseConfig {
    pub fn new(namespace: String, name: String, identity: String) -> LeaseConfig {
        LeaseConfig {
            namespace,
            name,
            identity,
            duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry: Duration::from_secs(2),
        }
    }
}

/// What a candidate does with the Lease it just read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Ours: renew it.
    Renew,
    /// Free, or its holder stopped renewing: take it.
    Acquire,
    /// Someone else holds it.
    Wait,
}

fn holder(spec: &LeaseSpec) -> Option<&str> {
    spec.holder_identity.as_deref().filter(|h| !h.is_empty())
}

/// `unchanged_for`: how long this candidate has seen the Lease unchanged (its own clock).
pub(crate) fn next(spec: &LeaseSpec, me: &str, unchanged_for: Duration, default: Duration) -> Next {
    match holder(spec) {
        Some(h) if h == me => Next::Renew,
        None => Next::Acquire,
        Some(_) => {
            let duration = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(default, Duration::from_secs);
            if unchanged_for >= duration {
                Next::Acquire
            } else {
                Next::Wait
            }
        }
    }
}

/// The Lease held by `me` from `now`: a renewal keeps the acquisition, a takeover counts a
/// transition.
pub(crate) fn claimed(spec: &LeaseSpec, me: &str, now: Timestamp, duration: Duration) -> LeaseSpec {
    let renewal = holder(spec) == Some(me);
    let transitions = spec.lease_transitions.unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(me.to_owned()),
        lease_duration_seconds: Some(i32::try_from(duration.as_secs()).unwrap_or(i32::MAX)),
        acquire_time: if renewal {
            spec.acquire_time.clone()
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        // A Lease never acquired before (just created) has had no transition.
        lease_transitions: Some(if renewal || spec.acquire_time.is_none() {
            transitions
        } else {
            transitions + 1
        }),
        ..spec.clone()
    }
}

/// The Lease given up: no holder, so the next candidate takes it without waiting.
pub(crate) fn released(spec: &LeaseSpec) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        ..spec.clone()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("lost the leader Lease {0}: could not renew it within the renew deadline")]
    Lost(String),
    #[error("lost the leader Lease {0}: another replica holds it")]
    Taken(String),
}

/// How one round with the Lease ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Round {
    Holding,
    /// Someone else holds it.
    Waiting,
    /// Someone else changed it between our read and our write.
    Conflict,
}

/// One candidate for the Lease.
pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    /// The Lease's resourceVersion when last read, and since when (our clock) it is that.
    observed: Option<(String, Instant)>,
}

impl Elector {
    pub fn new(client: Client, config: LeaseConfig) -> Elector {
        Elector {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
        }
    }

    fn key(&self) -> String {
        format!("{}/{}", self.config.namespace, self.config.name)
    }

    /// One round: reads the Lease and takes or renews it when it may.
    async fn try_acquire_or_renew(&mut self) -> Result<Round, kube::Error> {
        let me = self.config.identity.clone();
        let Some(lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(claimed(
                    &LeaseSpec::default(),
                    &me,
                    Timestamp::now(),
                    self.config.duration,
                )),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Round::Holding),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(Round::Conflict),
                Err(e) => Err(e),
            };
        };
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        let now = Instant::now();
        let since = match &self.observed {
            Some((seen, since)) if *seen == version => *since,
            _ => now,
        };
        self.observed = Some((version, since));
        let spec = lease.spec.clone().unwrap_or_default();
        match next(&spec, &me, now - since, self.config.duration) {
            Next::Wait => Ok(Round::Waiting),
            step => {
                if step == Next::Acquire {
                    tracing::info!(lease = %self.key(), previous = ?holder(&spec), "taking the leader Lease");
                }
                let claim = Lease {
                    spec: Some(claimed(&spec, &me, Timestamp::now(), self.config.duration)),
                    ..lease
                };
                // The resourceVersion read makes this fail if anyone changed the Lease since.
                match self
                    .api
                    .replace(&self.config.name, &PostParams::default(), &claim)
                    .await
                {
                    Ok(_) => Ok(Round::Holding),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(Round::Conflict),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Waits until this candidate holds the Lease.
    pub async fn acquire(&mut self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(Round::Holding) => {
                    tracing::info!(lease = %self.key(), identity = %self.config.identity, "leading");
                    return;
                }
                Ok(Round::Waiting | Round::Conflict) => {}
                Err(e) => {
                    tracing::warn!(lease = %self.key(), error = %e, "reading the leader Lease")
                }
            }
            tokio::time::sleep(self.config.retry).await;
        }
    }

    /// Renews the Lease every retry period; returns when renewals failed for the renew
    /// deadline or someone else holds the Lease.
    pub async fn hold(&mut self) -> LeaderError {
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(self.config.retry).await;
            match self.try_acquire_or_renew().await {
                Ok(Round::Holding) => renewed = Instant::now(),
                Ok(Round::Waiting) => return LeaderError::Taken(self.key()),
                Ok(Round::Conflict) => {
                    tracing::debug!(lease = %self.key(), "the leader Lease changed under us");
                }
                Err(e) => {
                    tracing::warn!(lease = %self.key(), error = %e, "renewing the leader Lease")
                }
            }
            if renewed.elapsed() >= self.config.renew_deadline {
                return LeaderError::Lost(self.key());
            }
        }
    }

    /// Gives the Lease up if we hold it, so that another replica takes over at once.
    pub async fn release(&mut self) {
        let released_lease = async {
            let Some(lease) = self.api.get_opt(&self.config.name).await? else {
                return Ok(false);
            };
            let spec = lease.spec.clone().unwrap_or_default();
            if holder(&spec) != Some(self.config.identity.as_str()) {
                return Ok(false);
            }
            let free = Lease {
                spec: Some(released(&spec)),
                ..lease
            };
            self.api
                .replace(&self.config.name, &PostParams::default(), &free)
                .await
                .map(|_| true)
        };
        match released_lease.await {
            Ok(true) => tracing::info!(lease = %self.key(), "released the leader Lease"),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(lease = %self.key(), error = %e, "releasing the leader Lease")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DURATION: Duration = Duration::from_secs(15);

    fn held_by(holder: &str) -> LeaseSpec {
        claimed(
            &LeaseSpec::default(),
            holder,
            "2026-01-01T00:00:00Z".parse().unwrap(),
            DURATION,
        )
    }

    #[test]
    fn a_missing_or_released_lease_is_taken_at_once() {
        assert_eq!(
            next(&LeaseSpec::default(), "a", Duration::ZERO, DURATION),
            Next::Acquire
        );
        let free = released(&held_by("b"));
        assert_eq!(free.holder_identity, None);
        assert_eq!(next(&free, "a", Duration::ZERO, DURATION), Next::Acquire);
        let empty = LeaseSpec {
            holder_identity: Some(String::new()),
            ..held_by("b")
        };
        assert_eq!(next(&empty, "a", Duration::ZERO, DURATION), Next::Acquire);
    }

    #[test]
    fn the_holder_renews() {
        assert_eq!(
            next(&held_by("a"), "a", Duration::from_secs(60), DURATION),
            Next::Renew
        );
    }

    #[test]
    fn another_holder_is_waited_for_until_its_lease_expires_on_our_clock() {
        let lease = held_by("b");
        assert_eq!(
            next(&lease, "a", Duration::from_secs(14), DURATION),
            Next::Wait
        );
        assert_eq!(
            next(&lease, "a", Duration::from_secs(15), DURATION),
            Next::Acquire
        );
        // The holder's own duration counts, not ours.
        let short = LeaseSpec {
            lease_duration_seconds: Some(5),
            ..lease
        };
        assert_eq!(
            next(&short, "a", Duration::from_secs(5), DURATION),
            Next::Acquire
        );
    }

    #[test]
    fn a_renewal_keeps_the_acquisition_and_a_takeover_counts_a_transition() {
        let first = held_by("a");
        assert_eq!(first.lease_transitions, Some(0));
        assert_eq!(first.lease_duration_seconds, Some(15));
        let later: Timestamp = "2026-01-01T00:00:10Z".parse().unwrap();
        let renewed = claimed(&first, "a", later, DURATION);
        assert_eq!(renewed.acquire_time, first.acquire_time);
        assert_eq!(renewed.renew_time, Some(MicroTime(later)));
        assert_eq!(renewed.lease_transitions, Some(0));
        let taken = claimed(&renewed, "b", later, DURATION);
        assert_eq!(taken.holder_identity.as_deref(), Some("b"));
        assert_eq!(taken.acquire_time, Some(MicroTime(later)));
        assert_eq!(taken.lease_transitions, Some(1));
        // Taking a released Lease is a transition too.
        let after_release = claimed(&released(&taken), "a", later, DURATION);
        assert_eq!(after_release.lease_transitions, Some(2));
    }
}
