//! `/metrics`: every Larder metric, read from the live state at scrape time.
//!
//! The hot paths only bump sharded atomics ([`super::Ops`], `larder_adapter::metrics`) and
//! the caches' own hit counters; this collector sums them when Prometheus scrapes, and builds
//! the families with the `prometheus` crate, which also provides the process metrics
//! (`process_*`: CPU, resident memory, open file descriptors, start time). The registry is a
//! value of each [`MetricsRegistry`]: nothing is registered globally.
//!
//! Labels carry only bounded values: destinations, fallback reasons and states are fixed sets;
//! cache names are capped at [`CACHE_LABELS_MAX`] (the rest is summed under `other`), table
//! names at [`TABLE_LABELS_MAX`] and only while their snapshot runs. No query text, no values.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use larder_adapter::metrics::{HistogramSnapshot, DURATION_BUCKETS_SECONDS};
use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{Encoder, Registry, TextEncoder};

use super::{FallbackReason, Ops};
use crate::core::Core;
use crate::tables::TableState;

/// Caches with a label of their own in `larder_cache_hits_total`; the others count as `other`.
pub const CACHE_LABELS_MAX: usize = 100;
/// Tables with a label of their own in the snapshot progress gauges.
pub const TABLE_LABELS_MAX: usize = 50;

/// Every family this collector exports: (name, help, type, variable labels).
const FAMILIES: &[(&str, &str, MetricType, &[&str])] = &[
    ("larder_build_info", "Larder's version (always 1).", MetricType::GAUGE, &["version"]),
    ("larder_queries_total", "Statements answered, by who answered them: a cache, the upstream (relayed), or Larder itself (its own statements).", MetricType::COUNTER, &["destination"]),
    ("larder_query_duration_seconds", "Time to answer a statement: a cache hit (read and encode), or a request relayed upstream (forwarded to ReadyForQuery).", MetricType::HISTOGRAM, &["destination"]),
    ("larder_cache_hits_total", "Cache hits per cache (the first caches by name; the rest, and dropped caches, under \"other\").", MetricType::COUNTER, &["cache"]),
    ("larder_cache_fallbacks_total", "SELECTs that a cache exists for but that went upstream, by reason.", MetricType::COUNTER, &["reason"]),
    ("larder_caches", "Caches defined, by whether they serve now.", MetricType::GAUGE, &["state"]),
    ("larder_cache_memory_bytes", "Estimated bytes of the rows the caches' readers hold.", MetricType::GAUGE, &[]),
    ("larder_cache_rows", "Rows the caches' readers hold.", MetricType::GAUGE, &[]),
    ("larder_dataflow_state_bytes", "Estimated bytes of the state the caches' operators hold (joins, aggregates, DISTINCT, TopK), each shared operator once.", MetricType::GAUGE, &[]),
    ("larder_shallow_reads_total", "Reads of shallow caches, by outcome: hit, miss (fetched upstream), or coalesced (a miss answered by another session's fetch).", MetricType::COUNTER, &["outcome"]),
    ("larder_shallow_refreshes_total", "Shallow cache entries refreshed in the background while read.", MetricType::COUNTER, &[]),
    ("larder_shallow_memory_bytes", "Bytes held by shallow cache entries (keys, results and bookkeeping).", MetricType::GAUGE, &[]),
    ("larder_shallow_memory_budget_bytes", "What --memory-limit leaves shallow caches after the deep caches' state.", MetricType::GAUGE, &[]),
    ("larder_shallow_evictions_total", "Shallow cache entries evicted to stay within their memory budget.", MetricType::COUNTER, &[]),
    ("larder_caches_fresh", "1 while replication is within --max-replication-lag-ms (caches may serve), else 0.", MetricType::GAUGE, &[]),
    ("larder_replication_lag_seconds", "Age of the newest upstream WAL position (polled on an ordinary connection) that replication has applied; 0 when it has applied everything polled.", MetricType::GAUGE, &[]),
    ("larder_replication_lag_bytes", "Bytes of upstream WAL between the last polled position and the applied position.", MetricType::GAUGE, &[]),
    ("larder_replication_applied_position", "The upstream WAL position (LSN as a number) replication has applied and stored.", MetricType::GAUGE, &[]),
    ("larder_upstream_wal_position", "The upstream's current WAL position (LSN as a number) at the last poll.", MetricType::GAUGE, &[]),
    ("larder_upstream_reachable", "1 when the last poll of the upstream succeeded, else 0.", MetricType::GAUGE, &[]),
    ("larder_replication_stale_total", "Times caches stopped serving because replication fell behind the staleness bound.", MetricType::COUNTER, &[]),
    ("larder_replication_restarts_total", "Times the change stream was started again: it ended, failed, or a transaction failed to apply (the caches on its tables are rebuilt).", MetricType::COUNTER, &[]),
    ("larder_tables", "Upstream tables by replication state.", MetricType::GAUGE, &["state"]),
    ("larder_snapshot_rows_total", "Rows copied by table snapshots (the first one, and tables copied again after a shape change).", MetricType::COUNTER, &[]),
    ("larder_caches_evicted_total", "Whole caches evicted under --memory-limit (each is filled again on its next read).", MetricType::COUNTER, &[]),
    ("larder_snapshot_table_rows_copied", "Rows copied so far of each table being snapshotted.", MetricType::GAUGE, &["table"]),
    ("larder_snapshot_table_rows_estimated", "Estimated rows (pg_class.reltuples) of each table being snapshotted.", MetricType::GAUGE, &["table"]),
    ("larder_connections", "Client connections by state: negotiating (TLS, start-up) or session (holding a session slot).", MetricType::GAUGE, &["state"]),
    ("larder_statements_shed_total", "Client statements refused with SQLSTATE 53400 because --upstream-queries-max statements were in flight upstream (load shedding).", MetricType::COUNTER, &[]),
    ("larder_caching_enabled", "1 while caching is on, 0 after ALTER LARDER SET caching = off (or --caching off).", MetricType::GAUGE, &[]),
    ("larder_connections_refused_total", "Client connections refused: over --max-connections (53300) or too many negotiating.", MetricType::COUNTER, &[]),
];

/// The Prometheus registry of one Larder process.
pub struct MetricsRegistry {
    registry: Registry,
}

impl MetricsRegistry {
    /// Metrics of `ops`, and of `core` when Larder caches (not with `--proxy-only`).
    pub fn new(ops: Arc<Ops>, core: Option<Arc<Core>>) -> MetricsRegistry {
        let registry = Registry::new();
        registry
            .register(Box::new(LarderCollector::new(ops, core)))
            .expect("Larder's metric families are registered once");
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("the process collector is registered once");
        MetricsRegistry { registry }
    }

    /// The exposition text (Prometheus text format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Writing into a Vec fails only on invalid families, which this module never builds.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

struct LarderCollector {
    ops: Arc<Ops>,
    core: Option<Arc<Core>>,
    descs: Vec<Desc>,
}

impl LarderCollector {
    fn new(ops: Arc<Ops>, core: Option<Arc<Core>>) -> LarderCollector {
        let descs = FAMILIES
            .iter()
            .map(|(name, help, _, labels)| {
                Desc::new(
                    name.to_string(),
                    help.to_string(),
                    labels.iter().map(|l| l.to_string()).collect(),
                    HashMap::new(),
                )
                .expect("valid metric names")
            })
            .collect();
        LarderCollector { ops, core, descs }
    }
}

/// One metric of a family being built: its label values and its value.
enum Value {
    Counter(f64),
    Gauge(f64),
    Histogram(HistogramSnapshot),
}

struct Families(Vec<MetricFamily>);

impl Families {
    fn push(&mut self, name: &str, samples: Vec<(Vec<&str>, Value)>) {
        let (_, help, ty, labels) = FAMILIES
            .iter()
            .find(|f| f.0 == name)
            .expect("every exported family is listed in FAMILIES");
        let mut family = MetricFamily::default();
        family.set_name(name.to_string());
        family.set_help(help.to_string());
        family.set_field_type(*ty);
        let metrics = samples
            .into_iter()
            .map(|(values, v)| {
                let mut m = proto::Metric::default();
                m.set_label(
                    labels
                        .iter()
                        .zip(values)
                        .map(|(n, v)| {
                            let mut l = proto::LabelPair::default();
                            l.set_name(n.to_string());
                            l.set_value(v.to_string());
                            l
                        })
                        .collect(),
                );
                match v {
                    Value::Counter(x) => {
                        let mut c = proto::Counter::default();
                        c.set_value(x);
                        m.set_counter(c);
                    }
                    Value::Gauge(x) => {
                        let mut g = proto::Gauge::default();
                        g.set_value(x);
                        m.set_gauge(g);
                    }
                    Value::Histogram(h) => m.set_histogram(histogram(&h)),
                }
                m
            })
            .collect();
        family.set_metric(metrics);
        self.0.push(family);
    }

    fn one(&mut self, name: &str, v: Value) {
        self.push(name, vec![(vec![], v)]);
    }
}

fn histogram(h: &HistogramSnapshot) -> proto::Histogram {
    let mut out = proto::Histogram::default();
    out.set_sample_count(h.count);
    out.set_sample_sum(h.sum_seconds);
    out.set_bucket(
        DURATION_BUCKETS_SECONDS
            .iter()
            .zip(&h.cumulative)
            .map(|(bound, count)| {
                let mut b = proto::Bucket::default();
                b.set_upper_bound(*bound);
                b.set_cumulative_count(*count);
                b
            })
            .collect(),
    );
    out
}

impl Collector for LarderCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let ops = &self.ops;
        let mut f = Families(Vec::new());
        f.push(
            "larder_build_info",
            vec![(vec![env!("CARGO_PKG_VERSION")], Value::Gauge(1.0))],
        );

        // Caches: hits per cache (bounded), totals, memory.
        let caches = self
            .core
            .as_ref()
            .map(|c| c.caches.all())
            .unwrap_or_default();
        let mut per_cache: Vec<(&str, u64)> = caches
            .iter()
            .map(|c| (c.name.as_str(), c.hits.total()))
            .collect();
        per_cache.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let retired = ops.retired_hits.total();
        let cache_hits: u64 = per_cache.iter().map(|c| c.1).sum::<u64>() + retired;
        let other: u64 = per_cache
            .iter()
            .skip(CACHE_LABELS_MAX)
            .map(|c| c.1)
            .sum::<u64>()
            + retired;
        let mut hits: Vec<(Vec<&str>, Value)> = per_cache
            .iter()
            .take(CACHE_LABELS_MAX)
            .map(|(name, n)| (vec![*name], Value::Counter(*n as f64)))
            .collect();
        hits.push((vec!["other"], Value::Counter(other as f64)));
        f.push("larder_cache_hits_total", hits);

        let upstream = ops.proxy.upstream.snapshot();
        f.push(
            "larder_queries_total",
            vec![
                (vec!["cache"], Value::Counter(cache_hits as f64)),
                (vec!["upstream"], Value::Counter(upstream.count as f64)),
                (vec!["local"], Value::Counter(ops.local.total() as f64)),
            ],
        );
        f.push(
            "larder_query_duration_seconds",
            vec![
                (vec!["cache"], Value::Histogram(ops.cache_reads.snapshot())),
                (vec!["upstream"], Value::Histogram(upstream)),
            ],
        );
        f.push(
            "larder_cache_fallbacks_total",
            FallbackReason::ALL
                .iter()
                .zip(&ops.fallbacks)
                .map(|(r, c)| (vec![r.label()], Value::Counter(c.total() as f64)))
                .collect(),
        );
        let serving = caches
            .iter()
            .filter(|c| c.serving.load(Ordering::Relaxed))
            .count();
        f.push(
            "larder_caches",
            vec![
                (vec!["serving"], Value::Gauge(serving as f64)),
                (
                    vec!["not_serving"],
                    Value::Gauge((caches.len() - serving) as f64),
                ),
            ],
        );
        let (rows, bytes) = caches
            .iter()
            .filter_map(|c| c.reader.stats())
            .fold((0u64, 0u64), |(r, b), s| (r + s.rows, b + s.bytes));
        f.one("larder_cache_memory_bytes", Value::Gauge(bytes as f64));
        f.one("larder_cache_rows", Value::Gauge(rows as f64));
        let state_bytes = self.core.as_ref().map_or(0, |c| {
            c.dataflow
                .lock()
                .expect("dataflow lock poisoned")
                .state_bytes()
        });
        f.one(
            "larder_dataflow_state_bytes",
            Value::Gauge(state_bytes as f64),
        );

        // Shallow caches (zeros in proxy-only mode, which has none).
        let shallow = self
            .core
            .as_ref()
            .map(|c| c.shallow.all())
            .unwrap_or_default();
        let sum = |f: &dyn Fn(&larder_adapter::shallow::ShallowStats) -> u64| {
            shallow.iter().map(|c| f(&c.stats)).sum::<u64>() as f64
        };
        let coalesced = sum(&|s| s.coalesced.load(Ordering::Relaxed));
        f.push(
            "larder_shallow_reads_total",
            vec![
                (
                    vec!["hit"],
                    Value::Counter(sum(&|s| s.hits.load(Ordering::Relaxed))),
                ),
                (
                    vec!["miss"],
                    Value::Counter(sum(&|s| s.misses.load(Ordering::Relaxed)) - coalesced),
                ),
                (vec!["coalesced"], Value::Counter(coalesced)),
            ],
        );
        f.one(
            "larder_shallow_refreshes_total",
            Value::Counter(sum(&|s| s.refreshes.load(Ordering::Relaxed))),
        );
        let store = self.core.as_ref().map(|c| &c.shallow.store);
        f.one(
            "larder_shallow_memory_bytes",
            Value::Gauge(store.map_or(0, |s| s.used_bytes()) as f64),
        );
        f.one(
            "larder_shallow_memory_budget_bytes",
            Value::Gauge(store.map_or(0, |s| s.budget_bytes().min(1 << 60)) as f64),
        );
        f.one(
            "larder_shallow_evictions_total",
            Value::Counter(store.map_or(0, |s| s.evictions.load(Ordering::Relaxed)) as f64),
        );

        // Replication and freshness.
        let fr = &ops.freshness;
        let fresh = fr.fresh_at(Instant::now());
        f.one(
            "larder_caches_fresh",
            Value::Gauge(if fresh { 1.0 } else { 0.0 }),
        );
        f.one(
            "larder_replication_lag_seconds",
            Value::Gauge(fr.lag_ms.load(Ordering::Relaxed) as f64 / 1000.0),
        );
        f.one(
            "larder_replication_lag_bytes",
            Value::Gauge(fr.lag_bytes.load(Ordering::Relaxed) as f64),
        );
        let applied = self
            .core
            .as_ref()
            .map_or(0, |c| c.status.applied_lsn.load(Ordering::Relaxed));
        f.one(
            "larder_replication_applied_position",
            Value::Gauge(applied as f64),
        );
        f.one(
            "larder_upstream_wal_position",
            Value::Gauge(fr.upstream_lsn.load(Ordering::Relaxed) as f64),
        );
        f.one(
            "larder_upstream_reachable",
            Value::Gauge(if fr.upstream_reachable.load(Ordering::Relaxed) {
                1.0
            } else {
                0.0
            }),
        );
        f.one(
            "larder_replication_stale_total",
            Value::Counter(fr.stale_periods.load(Ordering::Relaxed) as f64),
        );
        let restarts = self
            .core
            .as_ref()
            .map_or(0, |c| c.status.restarts.load(Ordering::Relaxed));
        f.one(
            "larder_replication_restarts_total",
            Value::Counter(restarts as f64),
        );

        // Tables and snapshot progress.
        let mut states = [0u64; 5];
        let mut copying: Vec<(String, u64, Option<u64>)> = Vec::new();
        if let Some(core) = &self.core {
            let tables = core.tables.read().expect("tables lock poisoned");
            for t in tables.all() {
                let i = match &t.state {
                    TableState::Online => 0,
                    TableState::Snapshotting {
                        rows_done,
                        rows_estimated,
                        ..
                    } => {
                        copying.push((
                            format!("{}.{}", t.schema.schema, t.schema.name),
                            *rows_done,
                            *rows_estimated,
                        ));
                        1
                    }
                    TableState::CatchingUp { .. } => 2,
                    TableState::NotReplicated { .. } => 3,
                };
                states[i] += 1;
            }
        }
        copying.sort();
        copying.truncate(TABLE_LABELS_MAX);
        f.push(
            "larder_tables",
            ["online", "snapshotting", "catching_up", "not_replicated"]
                .iter()
                .zip(states)
                .map(|(s, n)| (vec![*s], Value::Gauge(n as f64)))
                .collect(),
        );
        f.one(
            "larder_snapshot_rows_total",
            Value::Counter(ops.snapshot_rows.total() as f64),
        );
        f.one(
            "larder_caches_evicted_total",
            Value::Counter(
                ops.caches_evicted
                    .load(std::sync::atomic::Ordering::Relaxed) as f64,
            ),
        );
        f.push(
            "larder_snapshot_table_rows_copied",
            copying
                .iter()
                .map(|(t, done, _)| (vec![t.as_str()], Value::Gauge(*done as f64)))
                .collect(),
        );
        f.push(
            "larder_snapshot_table_rows_estimated",
            copying
                .iter()
                .filter_map(|(t, _, est)| est.map(|e| (vec![t.as_str()], Value::Gauge(e as f64))))
                .collect(),
        );

        // Connections.
        f.push(
            "larder_connections",
            ops.proxy
                .connections()
                .iter()
                .map(|(state, n)| {
                    let label = match state {
                        larder_adapter::metrics::ConnectionState::Negotiating => "negotiating",
                        larder_adapter::metrics::ConnectionState::Session => "session",
                    };
                    (vec![label], Value::Gauge(*n as f64))
                })
                .collect(),
        );
        f.one(
            "larder_statements_shed_total",
            Value::Counter(ops.proxy.shed.total() as f64),
        );
        if let Some(core) = &self.core {
            let on = core.status.caching_on.load(Ordering::Relaxed);
            f.one(
                "larder_caching_enabled",
                Value::Gauge(if on { 1.0 } else { 0.0 }),
            );
        }
        f.one(
            "larder_connections_refused_total",
            Value::Counter(ops.proxy.refused.total() as f64),
        );
        // A family without samples is left out of the exposition.
        f.0.retain(|fam| !fam.get_metric().is_empty());
        f.0
    }
}

/// Names of every family Larder exports (for tests and the dashboard check).
pub fn family_names() -> impl Iterator<Item = &'static str> {
    FAMILIES.iter().map(|f| f.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proxy_only_registry_renders_every_family_it_has() {
        let ops = Arc::new(Ops::default());
        ops.local.inc();
        ops.proxy.refused.inc();
        ops.fell_back("the cache is still being filled");
        let text = MetricsRegistry::new(ops, None).render();
        assert!(
            text.contains("larder_queries_total{destination=\"local\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("larder_connections_refused_total 1"),
            "{text}"
        );
        assert!(
            text.contains("larder_cache_fallbacks_total{reason=\"not_ready\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "larder_query_duration_seconds_bucket{destination=\"upstream\",le=\"0.001\"} 0"
            ),
            "{text}"
        );
        assert!(text.contains("process_resident_memory_bytes"), "{text}");
        for name in family_names()
            .filter(|n| !n.starts_with("larder_snapshot_table") && *n != "larder_caching_enabled")
        {
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} missing:\n{text}"
            );
        }
    }
}
