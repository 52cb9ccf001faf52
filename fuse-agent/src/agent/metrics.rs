//! The agent's metrics: read from each mount's counters ([`crate::stats::MountStats`]) at
//! scrape time, one series per mount (`mount="<namespace>/<name>"`). A mount's series go with
//! it; a new mount of the same RecoveryMount (after a restart or a lost mount) starts from 0.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::Held;
use crate::stats::{FuseOp, MountStats};

/// Prefix of every agent metric.
pub const PREFIX: &str = "instant_recovery_agent";

/// Failed mount attempts, by the failure's reason.
pub(super) type MountFailures = Family<[(&'static str, &'static str); 1], Counter>;

/// A registry with the agent's metrics over `held`, its memory budget (when it has one) and
/// its failed mounts.
pub(super) fn registry(
    held: Arc<Mutex<HashMap<String, Held>>>,
    memory_budget_bytes: Option<u64>,
    mount_failures: MountFailures,
) -> Registry {
    let mut registry = Registry::with_prefix(PREFIX);
    registry.register_collector(Box::new(Mounts { held }));
    if let Some(bytes) = memory_budget_bytes {
        let budget = Gauge::<i64>::default();
        budget.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        registry.register(
            "memory_budget_bytes",
            "The memory the agent keeps its mounts within (--memory-budget-mib)",
            budget,
        );
    }
    registry.register(
        "mount_failures",
        "Mount attempts that failed, by reason (AgentMemoryFull: the memory budget was held)",
        mount_failures,
    );
    registry
}

struct Mounts {
    held: Arc<Mutex<HashMap<String, Held>>>,
}

impl std::fmt::Debug for Mounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("agent mounts")
    }
}

/// What a scrape reads of one mount.
struct Sample {
    mount: String,
    stats: Arc<MountStats>,
    ircache_bytes: u64,
    memory_cache_bytes: u64,
}

/// Writes one counter with a series per mount and per extra label of `values`.
fn encode_counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[Sample],
    values: impl Fn(&MountStats) -> Vec<(Option<(&'static str, &'static str)>, &AtomicU64)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for sample in samples {
        for (extra, counter) in values(&sample.stats) {
            let mut labels = vec![("mount", sample.mount.as_str())];
            labels.extend(extra);
            metric
                .encode_family(&labels)?
                .encode_counter::<NoLabelSet, u64, u64>(&counter.load(Ordering::Relaxed), None)?;
        }
    }
    Ok(())
}

/// Writes one gauge with a series per mount.
fn encode_gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[Sample],
    value: impl Fn(&Sample) -> u64,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for sample in samples {
        metric
            .encode_family(&[("mount", sample.mount.as_str())])?
            .encode_gauge(&(value(sample) as i64))?;
    }
    Ok(())
}

impl Collector for Mounts {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut samples: Vec<Sample> = self
            .held
            .lock()
            .expect("held lock")
            .iter()
            .filter_map(|(key, held)| match held {
                Held::Mount {
                    mounted,
                    ircache_bytes,
                    memory_cache_bytes,
                    ..
                } => Some(Sample {
                    mount: key.clone(),
                    stats: mounted.stats().clone(),
                    ircache_bytes: *ircache_bytes,
                    memory_cache_bytes: *memory_cache_bytes,
                }),
                Held::Failed { .. } => None,
            })
            .collect();
        samples.sort_by(|a, b| a.mount.cmp(&b.mount));

        encode_counter(
            &mut encoder,
            "fetched_bytes",
            "Bytes of chunks read from the backup repository (plain sizes, prefetches included)",
            &samples,
            |s| vec![(None, &s.fetched_bytes)],
        )?;
        encode_counter(
            &mut encoder,
            "chunk_cache_hits",
            "Chunk reads answered by a chunk cache, by cache (memory, or disk for remote \
             repositories)",
            &samples,
            |s| {
                vec![
                    (Some(("cache", "memory")), &s.memory_hits),
                    (Some(("cache", "disk")), &s.disk_hits),
                ]
            },
        )?;
        encode_counter(
            &mut encoder,
            "chunk_cache_misses",
            "Chunk loads that went to the backup repository (prefetches included)",
            &samples,
            |s| vec![(None, &s.misses)],
        )?;
        encode_counter(
            &mut encoder,
            "repository_errors",
            "Chunk reads from the backup repository that failed",
            &samples,
            |s| vec![(None, &s.repository_errors)],
        )?;
        encode_counter(
            &mut encoder,
            "ircache_enospc",
            "Operations refused with ENOSPC because the IRCache disk is full",
            &samples,
            |s| vec![(None, &s.enospc_refusals)],
        )?;

        encode_gauge(
            &mut encoder,
            "ircache_bytes",
            "Bytes the mount's IRCache takes on disk (measured every 10 s)",
            &samples,
            |s| s.ircache_bytes,
        )?;
        encode_gauge(
            &mut encoder,
            "memory_cache_bytes",
            "Bytes of plain chunks the mount may keep in memory: --memory-cache-mib, or less where \
             the agent's memory budget ran short",
            &samples,
            |s| s.memory_cache_bytes,
        )?;

        let mut metric = encoder.encode_descriptor(
            "fuse_operation_duration_seconds",
            "Time the file system took to serve FUSE requests, by operation",
            None,
            MetricType::Histogram,
        )?;
        for sample in &samples {
            for op in FuseOp::ALL {
                let histogram = sample.stats.operation(op);
                // Only what was asked: PostgreSQL uses a few operations of the many.
                if histogram.count() > 0 {
                    histogram.encode(metric.encode_family(&[
                        ("mount", sample.mount.as_str()),
                        ("operation", op.as_str()),
                    ])?)?;
                }
            }
        }
        Ok(())
    }
}
