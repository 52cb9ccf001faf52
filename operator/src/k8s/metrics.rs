//! The operator's Prometheus metrics (documented in docs/metrics.md).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ir_api::crd::InstantRecovery;
use ir_api::recovery::{Phase, Timings};
use kube::runtime::reflector::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Prefix of every operator metric.
pub const PREFIX: &str = "instant_recovery_operator";

/// Which controller: `InstantRecovery` or `BackupRepository`.
type ControllerLabel = [(&'static str, &'static str); 1];
type PhaseLabel = [(&'static str, &'static str); 1];

pub struct Metrics {
    reconciles: Family<ControllerLabel, Counter>,
    reconcile_errors: Family<ControllerLabel, Counter>,
    reconcile_duration: Family<PhaseLabel, Histogram, fn() -> Histogram>,
    time_to_first_query: Histogram,
    switchover_downtime: Histogram,
    leader: Gauge,
    /// The InstantRecovery cache of the running controller, counted by phase at each scrape.
    recoveries: Arc<OnceLock<Vec<Store<InstantRecovery>>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("operator metrics")
    }
}

fn reconcile_buckets() -> Histogram {
    // 5 ms to 41 s: a reconcile may wait on PostgreSQL or the API server.
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

impl Metrics {
    /// The metrics and the registry that exposes them.
    pub fn new() -> (Arc<Metrics>, Registry) {
        let metrics = Arc::new(Metrics {
            reconciles: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Family::new_with_constructor(reconcile_buckets),
            // 0.5 s to 17 min.
            time_to_first_query: Histogram::new(exponential_buckets(0.5, 2.0, 12)),
            // 50 ms to 102 s.
            switchover_downtime: Histogram::new(exponential_buckets(0.05, 2.0, 12)),
            leader: Gauge::default(),
            recoveries: Arc::default(),
        });
        // Both controllers' counters exist from the start, at 0, for rate() and alerts.
        for controller in ["InstantRecovery", "BackupRepository"] {
            let _ = metrics
                .reconciles
                .get_or_create(&[("controller", controller)]);
            let _ = metrics
                .reconcile_errors
                .get_or_create(&[("controller", controller)]);
        }
        let mut registry = Registry::with_prefix(PREFIX);
        registry.register(
            "reconciles",
            "Reconciles run, by controller (InstantRecovery or BackupRepository)",
            metrics.reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that failed and were retried with a backoff, by controller",
            metrics.reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time an InstantRecovery reconcile took, by the phase it started in",
            metrics.reconcile_duration.clone(),
        );
        registry.register(
            "time_to_first_query_seconds",
            "From the start of a recovery to the first query answered by its published instance",
            metrics.time_to_first_query.clone(),
        );
        registry.register(
            "switchover_downtime_seconds",
            "How long writes were refused during a switchover",
            metrics.switchover_downtime.clone(),
        );
        registry.register(
            "leader",
            "1 while this process runs the controllers (holds the leader Lease, or leader \
             election is off)",
            metrics.leader.clone(),
        );
        registry.register_collector(Box::new(RecoveriesByPhase(metrics.recoveries.clone())));
        (metrics, registry)
    }

    pub(super) fn reconciled(
        &self,
        controller: &'static str,
        phase: Option<Phase>,
        took: Duration,
        failed: bool,
    ) {
        self.reconciles
            .get_or_create(&[("controller", controller)])
            .inc();
        if failed {
            self.reconcile_errors
                .get_or_create(&[("controller", controller)])
                .inc();
        }
        if let Some(phase) = phase {
            self.reconcile_duration
                .get_or_create(&[("phase", phase.as_str())])
                .observe(took.as_secs_f64());
        }
    }

    /// Observes the timings that `after` has and `before` had not: each once per recovery.
    pub(super) fn timings_reached(&self, before: &Timings, after: &Timings) {
        if before.time_to_first_query_ms.is_none()
            && let Some(ms) = after.time_to_first_query_ms
        {
            self.time_to_first_query.observe(ms as f64 / 1000.0);
        }
        if before.switchover_downtime_ms.is_none()
            && let Some(ms) = after.switchover_downtime_ms
        {
            self.switchover_downtime.observe(ms as f64 / 1000.0);
        }
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Counts the recoveries of these caches (one per watched namespace) by phase from now on
    /// (once per process).
    pub(super) fn watch_recoveries(&self, stores: Vec<Store<InstantRecovery>>) {
        let _ = self.recoveries.set(stores);
    }
}

/// `recoveries{phase}`: every phase, 0 included, once the controller runs; nothing before
/// (a replica that does not lead does not know).
#[derive(Debug)]
struct RecoveriesByPhase(Arc<OnceLock<Vec<Store<InstantRecovery>>>>);

impl Collector for RecoveriesByPhase {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(stores) = self.0.get() else {
            return Ok(());
        };
        let mut counts = [0i64; Phase::ALL.len()];
        for recovery in stores.iter().flat_map(|store| store.state()) {
            let phase = recovery
                .status
                .as_ref()
                .map(|s| s.phase)
                .unwrap_or_default();
            counts[phase as usize] += 1;
        }
        let mut metric = encoder.encode_descriptor(
            "recoveries",
            "InstantRecoveries by phase",
            None,
            MetricType::Gauge,
        )?;
        for (phase, count) in Phase::ALL.iter().zip(counts) {
            metric
                .encode_family(&[("phase", phase.as_str())])?
                .encode_gauge(&count)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ir_telemetry::render;

    #[test]
    fn phases_are_listed_in_declaration_order() {
        for (index, phase) in Phase::ALL.iter().enumerate() {
            assert_eq!(*phase as usize, index, "{phase}");
        }
    }

    #[test]
    fn timings_are_observed_once_when_first_reached() {
        let (metrics, registry) = Metrics::new();
        let none = Timings::default();
        let published = Timings {
            time_to_first_query_ms: Some(1500),
            ..Default::default()
        };
        let switched = Timings {
            switchover_downtime_ms: Some(300),
            ..published.clone()
        };
        metrics.timings_reached(&none, &published);
        metrics.timings_reached(&published, &published);
        metrics.timings_reached(&published, &switched);
        metrics.timings_reached(&switched, &switched);
        let text = render(&registry);
        assert!(
            text.contains("instant_recovery_operator_time_to_first_query_seconds_count 1"),
            "{text}"
        );
        assert!(
            text.contains("instant_recovery_operator_time_to_first_query_seconds_sum 1.5"),
            "{text}"
        );
        assert!(
            text.contains("instant_recovery_operator_switchover_downtime_seconds_count 1"),
            "{text}"
        );
        assert!(
            text.contains("instant_recovery_operator_switchover_downtime_seconds_sum 0.3"),
            "{text}"
        );
    }

    #[test]
    fn reconciles_count_by_controller_and_time_by_phase() {
        let (metrics, registry) = Metrics::new();
        let took = Duration::from_millis(20);
        metrics.reconciled("InstantRecovery", Some(Phase::Syncing), took, false);
        metrics.reconciled("InstantRecovery", Some(Phase::Syncing), took, true);
        metrics.reconciled("BackupRepository", None, took, false);
        let text = render(&registry);
        for line in [
            "instant_recovery_operator_reconciles_total{controller=\"InstantRecovery\"} 2",
            "instant_recovery_operator_reconciles_total{controller=\"BackupRepository\"} 1",
            "instant_recovery_operator_reconcile_errors_total{controller=\"InstantRecovery\"} 1",
            "instant_recovery_operator_reconcile_duration_seconds_count{phase=\"Syncing\"} 2",
            "instant_recovery_operator_reconcile_errors_total{controller=\"BackupRepository\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        // No controller yet: no recoveries gauge.
        assert!(
            !text.contains("instant_recovery_operator_recoveries{"),
            "{text}"
        );
    }
}
