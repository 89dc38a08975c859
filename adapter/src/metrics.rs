//! Counters the proxy keeps for the operator (exported by the server as Prometheus metrics).
//!
//! Everything here is plain atomics and cheap enough for the hot path: a [`Counter`] and a
//! [`Histogram`] are sharded per thread (one padded cache line per shard), so sessions on
//! different cores never write the same line; reading sums the shards. No locks, no
//! allocation. The values are owned by whoever creates them (one [`ProxyMetrics`] per proxy,
//! passed in [`crate::PgProxyConfig`]): there is no global registry.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SHARDS: usize = 8;

thread_local! {
    static SHARD: usize = {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed) as usize % SHARDS
    };
}

fn shard() -> usize {
    SHARD.with(|s| *s)
}

#[derive(Default)]
#[repr(align(128))]
struct PaddedCount(AtomicU64);

/// A monotonic count that threads bump without sharing a cache line.
#[derive(Default)]
pub struct Counter {
    shards: [PaddedCount; SHARDS],
}

impl Counter {
    pub fn add(&self, n: u64) {
        self.shards[shard()].0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn inc(&self) {
        self.add(1);
    }

    pub fn total(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum()
    }
}

/// Upper bounds (seconds) of the duration histograms' buckets; `+Inf` is implied.
pub const DURATION_BUCKETS_SECONDS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
    5.0,
];

const BUCKET_NANOS: [u64; 14] = {
    let mut out = [0u64; 14];
    let mut i = 0;
    while i < 14 {
        out[i] = (DURATION_BUCKETS_SECONDS[i] * 1e9) as u64;
        i += 1;
    }
    out
};

#[derive(Default)]
#[repr(align(128))]
struct HistogramShard {
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    buckets: [AtomicU64; 15],
    sum_nanos: AtomicU64,
}

/// A duration histogram over [`DURATION_BUCKETS_SECONDS`], sharded like [`Counter`].
#[derive(Default)]
pub struct Histogram {
    shards: [HistogramShard; SHARDS],
}

/// A histogram read at one moment: cumulative bucket counts, the count and the sum.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// Cumulative counts per bound of [`DURATION_BUCKETS_SECONDS`].
    pub cumulative: Vec<u64>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BUCKET_NANOS
            .iter()
            .position(|b| nanos <= *b)
            .unwrap_or(BUCKET_NANOS.len());
        let s = &self.shards[shard()];
        s.buckets[i].fetch_add(1, Ordering::Relaxed);
        s.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut per = [0u64; 15];
        let mut sum = 0u64;
        for s in &self.shards {
            for (p, b) in per.iter_mut().zip(&s.buckets) {
                *p += b.load(Ordering::Relaxed);
            }
            sum = sum.wrapping_add(s.sum_nanos.load(Ordering::Relaxed));
        }
        let mut cumulative = Vec::with_capacity(14);
        let mut running = 0;
        for p in &per[..14] {
            running += p;
            cumulative.push(running);
        }
        HistogramSnapshot {
            cumulative,
            count: running + per[14],
            sum_seconds: sum as f64 / 1e9,
        }
    }
}

/// What the proxy itself observes: connections, and statements relayed upstream.
#[derive(Default)]
pub struct ProxyMetrics {
    /// Connections accepted and still negotiating (TLS, start-up packet).
    negotiating: AtomicI64,
    /// Connections holding a session slot (authenticating or authenticated).
    sessions: AtomicI64,
    /// Connections refused: over `max_connections` (53300) or too many negotiating.
    pub refused: Counter,
    /// Client requests relayed upstream (a simple Query or an extended-protocol unit up to
    /// its Sync), timed from forwarding to the upstream's ReadyForQuery.
    pub upstream: Histogram,
    /// Client statements refused with 53400 because too many were in flight upstream
    /// (`--upstream-queries-max`, load shedding).
    pub shed: Counter,
}

/// What a connection is doing, for [`ProxyMetrics`]; see [`ConnectionGauge`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionState {
    Negotiating,
    Session,
}

impl ProxyMetrics {
    pub fn new() -> Arc<ProxyMetrics> {
        Arc::new(ProxyMetrics::default())
    }

    /// Counts a new connection (negotiating) until the gauge is dropped.
    pub fn connection(self: &Arc<Self>) -> ConnectionGauge {
        self.negotiating.fetch_add(1, Ordering::Relaxed);
        ConnectionGauge {
            metrics: Arc::clone(self),
            state: ConnectionState::Negotiating,
        }
    }

    /// Connections per state now.
    pub fn connections(&self) -> [(ConnectionState, i64); 2] {
        [
            (
                ConnectionState::Negotiating,
                self.negotiating.load(Ordering::Relaxed).max(0),
            ),
            (
                ConnectionState::Session,
                self.sessions.load(Ordering::Relaxed).max(0),
            ),
        ]
    }

    /// A relayed request's ReadyForQuery arrived; it was forwarded at `started`.
    pub fn upstream_done(&self, started: Instant) {
        self.upstream.observe(started.elapsed());
    }

    fn gauge(&self, state: ConnectionState) -> &AtomicI64 {
        match state {
            ConnectionState::Negotiating => &self.negotiating,
            ConnectionState::Session => &self.sessions,
        }
    }
}

/// One connection counted in [`ProxyMetrics`]; uncounted when dropped.
pub struct ConnectionGauge {
    metrics: Arc<ProxyMetrics>,
    state: ConnectionState,
}

impl ConnectionGauge {
    pub fn set(&mut self, state: ConnectionState) {
        if state != self.state {
            self.metrics
                .gauge(self.state)
                .fetch_sub(1, Ordering::Relaxed);
            self.metrics.gauge(state).fetch_add(1, Ordering::Relaxed);
            self.state = state;
        }
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        self.metrics
            .gauge(self.state)
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for ProxyMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyMetrics")
            .field("connections", &self.connections())
            .field("refused", &self.refused.total())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_sum_their_shards_across_threads() {
        let c = Arc::new(Counter::default());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || (0..1000).for_each(|_| c.inc()))
            })
            .collect();
        handles.into_iter().for_each(|h| h.join().unwrap());
        assert_eq!(c.total(), 4000);
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(10));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(10));
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.cumulative[0], 1);
        assert_eq!(s.cumulative[5], 1, "2.5 ms bucket");
        assert_eq!(s.cumulative[6], 2, "5 ms bucket");
        assert_eq!(*s.cumulative.last().unwrap(), 2, "10 s is only in +Inf");
        assert!((s.sum_seconds - 10.003_01).abs() < 1e-6);
    }

    #[test]
    fn connection_gauges_follow_their_state() {
        let m = ProxyMetrics::new();
        let mut a = m.connection();
        let _b = m.connection();
        a.set(ConnectionState::Session);
        assert_eq!(
            m.connections(),
            [
                (ConnectionState::Negotiating, 1),
                (ConnectionState::Session, 1)
            ]
        );
        drop(a);
        assert_eq!(m.connections()[1].1, 0);
    }
}
