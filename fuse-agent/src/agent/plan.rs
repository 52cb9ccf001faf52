//! The agent's decisions, free of I/O: what to do with a RecoveryMount given what the cluster
//! says and what this process holds, the status that answers it, and how failures are
//! classified.

use ir_api::crd::{MountPhase, RecoveryMountStatus};
use ir_api::{Failure, Reason};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::MountError;

/// What this process knows of a mount of the RecoveryMount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalMount {
    /// Nothing mounted by this process (first sight, or after an agent restart).
    None,
    /// Mounted by this process at `mounted_at` and still a FUSE mount.
    Alive { mounted_at: Timestamp },
    /// Mounted by this process, but the mount is gone (unmounted behind our back).
    Dead,
    /// This process answered this attempt with a failure (the watch may not show it yet).
    Failed { attempt: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Serving since `mounted_at`: report fresh figures for the current attempt. A new attempt
    /// asked while the mount is healthy is answered without remounting, which would stop
    /// PostgreSQL.
    Refresh { mounted_at: Timestamp },
    /// Mount (again): first time, after an agent restart (same IRCache, new session), after
    /// the mount was lost, or for a new attempt after a failure.
    Mount,
    /// The failure of this attempt stands until the operator bumps `spec.attempt`.
    KeepFailed,
}

pub fn decide(
    spec_attempt: u32,
    status: Option<&RecoveryMountStatus>,
    local: LocalMount,
) -> Decision {
    match local {
        LocalMount::Alive { mounted_at } => Decision::Refresh { mounted_at },
        LocalMount::Dead => Decision::Mount,
        LocalMount::Failed { attempt } if attempt == spec_attempt => Decision::KeepFailed,
        LocalMount::Failed { .. } => Decision::Mount,
        LocalMount::None => match status {
            Some(s) if s.phase == MountPhase::Failed && s.attempt == spec_attempt => {
                Decision::KeepFailed
            }
            _ => Decision::Mount,
        },
    }
}

pub fn mount_failure(e: &MountError) -> Failure {
    match e {
        // Another process still holds the IRCache (an agent on its way out): it lets go soon.
        MountError::CacheBusy(_) => Failure::new(Reason::CacheBusy, e.to_string()),
        MountError::Cache(..) | MountError::Fs(_) => {
            Failure::new(Reason::CacheError, e.to_string())
        }
        MountError::MountPoint(..) => Failure::new(Reason::MountPointError, e.to_string()),
        MountError::Fuse(..) => Failure::new(Reason::FuseUnavailable, e.to_string()),
    }
}

/// What the agent holds besides its mounts (program, threads, Kubernetes client: 12 MiB idle,
/// measured), with room to spare.
pub const AGENT_BASE_BYTES: u64 = 32 << 20;
/// What a mount holds besides its memory cache: chunks in flight, FUSE buffers, its manifest
/// (about 80 MiB measured serving 15.8 GB, docs/benchmarks.md), with room to spare.
pub const MOUNT_OVERHEAD_BYTES: u64 = 96 << 20;
/// The smallest memory cache a mount is given to fit a budget: a sequential reader's readahead
/// (8 chunks) with room for what other readers use.
pub const MIN_MEMORY_CACHE_BYTES: u64 = 32 << 20;

/// The memory cache of a new mount next to mounts whose caches are `others`, within `budget`
/// bytes for the whole agent (none: no limit): `configured`, or what is left if that is less
/// but at least the minimum (or `configured`, if smaller); `None` when the mount does not fit.
pub fn memory_cache_within(budget: Option<u64>, configured: u64, others: &[u64]) -> Option<u64> {
    let Some(budget) = budget else {
        return Some(configured);
    };
    let taken: u64 = others.iter().fold(AGENT_BASE_BYTES, |sum, cache| {
        sum.saturating_add(cache.saturating_add(MOUNT_OVERHEAD_BYTES))
    });
    let left = budget
        .saturating_sub(taken)
        .saturating_sub(MOUNT_OVERHEAD_BYTES);
    let cache = configured.min(left);
    (cache >= MIN_MEMORY_CACHE_BYTES.min(configured)).then_some(cache)
}

/// Figures about the IRCache the status carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheFigures {
    pub used_bytes: u64,
    pub free_bytes: Option<u64>,
}

/// The condition type the status keeps.
pub const MOUNTED_CONDITION: &str = "Mounted";

/// `lastTransitionTime` moves only when the condition's status does.
fn mounted_condition(
    mounted: bool,
    reason: Reason,
    message: String,
    previous: Option<&RecoveryMountStatus>,
    now: Timestamp,
) -> Condition {
    let status = if mounted { "True" } else { "False" };
    let since = previous
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == MOUNTED_CONDITION))
        .filter(|c| c.status == status)
        .map_or(Time(now), |c| c.last_transition_time.clone());
    Condition {
        type_: MOUNTED_CONDITION.to_owned(),
        status: status.to_owned(),
        reason: reason.to_string(),
        message,
        last_transition_time: since,
        observed_generation: None,
    }
}

/// A mount of `attempt` is under way.
pub fn pending_status(
    attempt: u32,
    mount_path: &str,
    cache: CacheFigures,
    previous: Option<&RecoveryMountStatus>,
    now: Timestamp,
) -> RecoveryMountStatus {
    RecoveryMountStatus {
        phase: MountPhase::Pending,
        attempt,
        mount_path: Some(mount_path.to_owned()),
        cache_used_bytes: cache.used_bytes,
        cache_free_bytes: cache.free_bytes,
        conditions: vec![mounted_condition(
            false,
            Reason::Mounting,
            format!("mounting at {mount_path}"),
            previous,
            now,
        )],
        ..Default::default()
    }
}

/// Serving at `mount_path` since `mounted_at`, having read `bytes_fetched` from the repository.
pub fn mounted_status(
    attempt: u32,
    mount_path: &str,
    mounted_at: Timestamp,
    bytes_fetched: u64,
    cache: CacheFigures,
    previous: Option<&RecoveryMountStatus>,
    now: Timestamp,
) -> RecoveryMountStatus {
    RecoveryMountStatus {
        phase: MountPhase::Mounted,
        attempt,
        mount_path: Some(mount_path.to_owned()),
        mounted_at: Some(mounted_at),
        bytes_fetched,
        cache_used_bytes: cache.used_bytes,
        cache_free_bytes: cache.free_bytes,
        conditions: vec![mounted_condition(
            true,
            Reason::Mounted,
            format!("mounted at {mount_path}"),
            previous,
            now,
        )],
        ..Default::default()
    }
}

pub fn failed_status(
    attempt: u32,
    failure: &Failure,
    cache: CacheFigures,
    previous: Option<&RecoveryMountStatus>,
    now: Timestamp,
) -> RecoveryMountStatus {
    RecoveryMountStatus {
        phase: MountPhase::Failed,
        attempt,
        cache_used_bytes: cache.used_bytes,
        cache_free_bytes: cache.free_bytes,
        reason: Some(failure.reason.to_string()),
        message: Some(failure.message.clone()),
        transient: failure.transient,
        conditions: vec![mounted_condition(
            false,
            failure.reason,
            failure.message.clone(),
            previous,
            now,
        )],
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(phase: MountPhase, attempt: u32) -> RecoveryMountStatus {
        RecoveryMountStatus {
            phase,
            attempt,
            ..Default::default()
        }
    }

    #[test]
    fn mounts_what_it_does_not_hold() {
        assert_eq!(decide(0, None, LocalMount::None), Decision::Mount);
        let pending = status(MountPhase::Pending, 0);
        assert_eq!(decide(0, Some(&pending), LocalMount::None), Decision::Mount);
        // After an agent restart: the status says Mounted, but this process holds nothing.
        let mounted = status(MountPhase::Mounted, 3);
        assert_eq!(decide(3, Some(&mounted), LocalMount::None), Decision::Mount);
    }

    #[test]
    fn a_failure_stands_until_the_next_attempt() {
        let failed = status(MountPhase::Failed, 2);
        assert_eq!(
            decide(2, Some(&failed), LocalMount::None),
            Decision::KeepFailed
        );
        assert_eq!(decide(3, Some(&failed), LocalMount::None), Decision::Mount);
        // Our own answer counts before the watch brings it back.
        let pending = status(MountPhase::Pending, 2);
        let answered = LocalMount::Failed { attempt: 2 };
        assert_eq!(decide(2, Some(&pending), answered), Decision::KeepFailed);
        assert_eq!(decide(3, Some(&pending), answered), Decision::Mount);
    }

    #[test]
    fn a_held_mount_is_refreshed_or_remounted_when_lost() {
        let mounted = status(MountPhase::Mounted, 1);
        let mounted_at: Timestamp = "2025-01-01T00:00:00Z".parse().unwrap();
        let alive = LocalMount::Alive { mounted_at };
        assert_eq!(
            decide(1, Some(&mounted), alive),
            Decision::Refresh { mounted_at }
        );
        // A new attempt while healthy: answered, not remounted.
        assert_eq!(
            decide(2, Some(&mounted), alive),
            Decision::Refresh { mounted_at }
        );
        assert_eq!(decide(1, Some(&mounted), LocalMount::Dead), Decision::Mount);
        let failed = status(MountPhase::Failed, 1);
        assert_eq!(decide(1, Some(&failed), LocalMount::Dead), Decision::Mount);
    }

    #[test]
    fn mount_errors_are_classified() {
        let busy = MountError::CacheBusy("/c".into());
        assert!(mount_failure(&busy).transient);
        let fuse = MountError::Fuse("/m".into(), std::io::Error::from_raw_os_error(libc::ENODEV));
        let f = mount_failure(&fuse);
        assert_eq!((f.reason, f.transient), (Reason::FuseUnavailable, false));
    }

    #[test]
    fn statuses_carry_what_the_operator_reads() {
        let t0: Timestamp = "2025-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2025-01-01T00:01:00Z".parse().unwrap();
        let t2: Timestamp = "2025-01-01T00:02:00Z".parse().unwrap();
        let cache = CacheFigures {
            used_bytes: 10,
            free_bytes: Some(1000),
        };
        let pending = pending_status(1, "/m/ns-a", cache, None, t0);
        assert_eq!(pending.phase, MountPhase::Pending);
        assert_eq!(pending.conditions[0].status, "False");

        let mounted = mounted_status(1, "/m/ns-a", t1, 4096, cache, Some(&pending), t1);
        assert_eq!(mounted.phase, MountPhase::Mounted);
        assert_eq!(mounted.mounted_at, Some(t1));
        assert_eq!(mounted.mount_path.as_deref(), Some("/m/ns-a"));
        assert_eq!(mounted.bytes_fetched, 4096);
        assert_eq!(mounted.cache_free_bytes, Some(1000));
        assert_eq!(mounted.conditions[0].status, "True");
        assert_eq!(mounted.conditions[0].last_transition_time, Time(t1));
        assert_eq!(mounted.reason, None);

        // A refresh keeps the time of the transition.
        let refreshed = mounted_status(1, "/m/ns-a", t1, 8192, cache, Some(&mounted), t2);
        assert_eq!(refreshed.conditions[0].last_transition_time, Time(t1));

        let failure = Failure::new(Reason::RepositoryUnavailable, "s3://b did not answer");
        let failed = failed_status(2, &failure, cache, Some(&mounted), t2);
        assert_eq!(failed.phase, MountPhase::Failed);
        assert_eq!(failed.attempt, 2);
        assert!(failed.transient);
        assert_eq!(failed.reason.as_deref(), Some("RepositoryUnavailable"));
        assert_eq!(failed.mount_path, None);
        assert_eq!(failed.conditions[0].reason, "RepositoryUnavailable");
        assert_eq!(failed.conditions[0].last_transition_time, Time(t2));
    }

    #[test]
    fn mounts_get_their_memory_cache_while_the_budget_lasts() {
        const MIB: u64 = 1 << 20;
        const DEFAULT: u64 = 256 * MIB;
        const GIB: Option<u64> = Some(1024 * MIB);
        /// Budget, configured cache, caches held, the new mount's cache.
        type Case = (Option<u64>, u64, &'static [u64], Option<u64>);
        let cases: &[Case] = &[
            (None, DEFAULT, &[DEFAULT; 9], Some(DEFAULT)),
            // 1 GiB: two whole mounts, a third with what is left, no fourth.
            (GIB, DEFAULT, &[], Some(DEFAULT)),
            (GIB, DEFAULT, &[DEFAULT], Some(DEFAULT)),
            (GIB, DEFAULT, &[DEFAULT, DEFAULT], Some(192 * MIB)),
            (GIB, DEFAULT, &[DEFAULT, DEFAULT, 192 * MIB], None),
            // The chart's 2Gi: five whole mounts, a sixth with 160 MiB, no seventh.
            (Some(2048 * MIB), DEFAULT, &[DEFAULT; 4], Some(DEFAULT)),
            (Some(2048 * MIB), DEFAULT, &[DEFAULT; 5], Some(160 * MIB)),
            (
                Some(2048 * MIB),
                DEFAULT,
                &[DEFAULT, DEFAULT, DEFAULT, DEFAULT, DEFAULT, 160 * MIB],
                None,
            ),
            // The minimum left, and less: no mount rather than one that thrashes.
            (GIB, DEFAULT, &[DEFAULT, DEFAULT, 64 * MIB], Some(32 * MIB)),
            (GIB, DEFAULT, &[DEFAULT, DEFAULT, 65 * MIB], None),
            // A configured cache below the minimum is kept, and fits where it fits.
            (GIB, 8 * MIB, &[DEFAULT, DEFAULT, 88 * MIB], Some(8 * MIB)),
            (GIB, 8 * MIB, &[DEFAULT, DEFAULT, 89 * MIB], None),
            // A budget smaller than the agent itself, and caches that would overflow a sum.
            (Some(16 * MIB), DEFAULT, &[], None),
            (GIB, DEFAULT, &[u64::MAX, u64::MAX], None),
        ];
        for &(budget, configured, others, want) in cases {
            assert_eq!(
                memory_cache_within(budget, configured, others),
                want,
                "budget {budget:?}, configured {configured}, others {others:?}"
            );
        }
    }
}
