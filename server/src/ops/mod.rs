//! Operations: what an operator sees of a running Larder (`/health`, `/ready`, `/metrics`) and
//! the staleness bound that stops caches from serving when replication falls behind.
//!
//! [`Ops`] is one value per process, owned by [`crate::core::Core`] and handed to each cache:
//! counters that the hot paths bump (sharded atomics, see `larder_adapter::metrics`), the
//! [`Freshness`] the cache-hit path consults, and the proxy's own counters. Nothing is global,
//! so tests run many Larders in one process.

pub mod freshness;
pub mod http;
pub mod metrics;

use std::sync::Arc;
use std::time::Duration;

use larder_adapter::metrics::{Counter, Histogram, ProxyMetrics};

pub use freshness::Freshness;

/// Why a SELECT that a cache exists for went upstream: a small fixed set, so the label of
/// `larder_cache_fallbacks_total` stays bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FallbackReason {
    /// Caching is switched off (`ALTER LARDER SET caching = off`, `--caching off`).
    CachingOff,
    /// Replication is behind past `--max-replication-lag-ms`.
    ReplicationLag,
    /// The cache is not serving: being filled, rebuilt after a table change, a large
    /// transaction being applied, or a table copied again.
    NotReady,
    /// Inside a transaction block (not `ALWAYS`), or a failed transaction.
    Transaction,
    /// The session's role may not read it, or its privileges are not learned yet.
    Privileges,
    /// The session's settings differ (role, `search_path`, `TimeZone`, `DateStyle`, output
    /// settings) or are being asked for, or its own DDL is not replicated yet.
    Session,
    /// Earlier statements of the session are still in flight upstream.
    Pipeline,
    /// The cache cannot compute this result exactly, or these parameter values.
    Unanswerable,
    Other,
}

impl FallbackReason {
    pub const ALL: [FallbackReason; 9] = [
        FallbackReason::CachingOff,
        FallbackReason::ReplicationLag,
        FallbackReason::NotReady,
        FallbackReason::Transaction,
        FallbackReason::Privileges,
        FallbackReason::Session,
        FallbackReason::Pipeline,
        FallbackReason::Unanswerable,
        FallbackReason::Other,
    ];

    pub fn label(self) -> &'static str {
        match self {
            FallbackReason::CachingOff => "caching_off",
            FallbackReason::ReplicationLag => "replication_lag",
            FallbackReason::NotReady => "not_ready",
            FallbackReason::Transaction => "transaction",
            FallbackReason::Privileges => "privileges",
            FallbackReason::Session => "session",
            FallbackReason::Pipeline => "pipeline",
            FallbackReason::Unanswerable => "unanswerable",
            FallbackReason::Other => "other",
        }
    }

    /// The bucket of a reason as the router words it (`EXPLAIN LAST STATEMENT`).
    pub fn classify(reason: &str) -> FallbackReason {
        let has = |s: &str| reason.contains(s);
        if has("caching is off") {
            FallbackReason::CachingOff
        } else if has("staleness bound") {
            FallbackReason::ReplicationLag
        } else if has("still being filled")
            || has("not serving")
            || has("cannot be rebuilt")
            || has("its table changed")
            || has("copied again")
            || has("large upstream transaction")
            || has("not the relation the cache was built from")
            || has("evicted")
            || has("not filled since")
        {
            FallbackReason::NotReady
        } else if has("transaction") {
            FallbackReason::Transaction
        } else if has("privilege") || reason.starts_with("role ") || has("row security") {
            FallbackReason::Privileges
        } else if has("still in flight") {
            FallbackReason::Pipeline
        } else if has("session") || has("TimeZone") || has("DateStyle") || has("search_path") {
            FallbackReason::Session
        } else if has("exactly") || has("parameter") || has("placeholder") || has("value") {
            FallbackReason::Unanswerable
        } else {
            FallbackReason::Other
        }
    }
}

/// Counters and state for operators, one per process.
pub struct Ops {
    pub freshness: Freshness,
    /// Hits of caches that were dropped or replaced (so the total never goes down).
    pub retired_hits: Counter,
    /// Time to answer a cache hit (reading the cache and encoding the rows).
    pub cache_reads: Histogram,
    /// Per [`FallbackReason::ALL`], in that order.
    pub fallbacks: [Counter; 9],
    /// Larder's own statements answered.
    pub local: Counter,
    /// Rows copied by snapshots (the initial one and tables copied again).
    pub snapshot_rows: Counter,
    /// Whole caches evicted under `--memory-limit` (see `memory.rs`).
    pub caches_evicted: std::sync::atomic::AtomicU64,
    /// The proxy's own counters (connections, statements relayed upstream).
    pub proxy: Arc<ProxyMetrics>,
    /// Times cache hits: the processor's time-stamp counter where it is reliable (a few
    /// nanoseconds a read, against about 25 for the monotonic clock here), calibrated at
    /// start; else the monotonic clock.
    pub clock: quanta::Clock,
}

impl Ops {
    pub fn new(max_replication_lag: Duration) -> Ops {
        Ops {
            freshness: Freshness::new(max_replication_lag),
            retired_hits: Counter::default(),
            cache_reads: Histogram::default(),
            fallbacks: Default::default(),
            local: Counter::default(),
            snapshot_rows: Counter::default(),
            caches_evicted: Default::default(),
            proxy: ProxyMetrics::new(),
            clock: quanta::Clock::new(),
        }
    }

    pub fn fell_back(&self, reason: &str) {
        let r = FallbackReason::classify(reason);
        let i = FallbackReason::ALL
            .iter()
            .position(|x| *x == r)
            .unwrap_or(FallbackReason::ALL.len() - 1);
        self.fallbacks[i].inc();
    }
}

impl Default for Ops {
    fn default() -> Ops {
        Ops::new(Duration::from_millis(30_000))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn router_reasons_fall_in_their_buckets() {
        let cases = [
            (
                "caching is off (ALTER LARDER SET caching = off, or --caching off)",
                FallbackReason::CachingOff,
            ),
            (
                "replication lag 3000 ms is over the staleness bound --max-replication-lag-ms=2000",
                FallbackReason::ReplicationLag,
            ),
            ("the cache is still being filled", FallbackReason::NotReady),
            (
                "inside a transaction (the cache was not created ALWAYS)",
                FallbackReason::Transaction,
            ),
            (
                "earlier statements of the session are still in flight",
                FallbackReason::Pipeline,
            ),
            (
                "the session TimeZone is not UTC or a fixed offset",
                FallbackReason::Session,
            ),
            (
                "waiting for replication to apply this session's DDL",
                FallbackReason::Session,
            ),
            (
                "the cache cannot compute this result exactly",
                FallbackReason::Unanswerable,
            ),
            ("something new", FallbackReason::Other),
        ];
        for (text, want) in cases {
            assert_eq!(FallbackReason::classify(text), want, "{text}");
        }
        let ops = Ops::default();
        ops.fell_back("the cache is still being filled");
        assert_eq!(ops.fallbacks[2].total(), 1);
    }
}
