//! The staleness bound: how far behind the upstream replication is, measured against the
//! upstream itself.
//!
//! A poller asks the upstream for its current WAL position on an ordinary connection every
//! [`poll_interval`] and remembers `(time polled, position)`. Replication has *confirmed* a
//! poll once its applied position reached the polled position: the stream applied every
//! transaction that committed before it (keepalives move the applied position past WAL that
//! carries nothing replicated, so an idle upstream is caught up, not lagging). The lag is the
//! age of the newest confirmed poll, and nothing else: a stalled or dead stream, an apply error,
//! a dropped slot or an unreachable upstream all stop confirming and the lag grows by itself.
//!
//! Caches serve only while `now <= confirmed time + --max-replication-lag-ms`. That deadline is
//! one atomic the hit path compares with the clock; the poller moves it forward, so the bound
//! holds to the nanosecond between polls too.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use larder_replication::PgSource;
use tracing::{info, trace, warn};

use super::Ops;
use crate::core::Core;

/// Most polls remembered while replication has not confirmed them; past it the middle ones
/// are dropped (the oldest decides the lag, the newest the bytes).
const PENDING_POLLS_MAX: usize = 1024;

/// `clock_gettime(clock)` in nanoseconds.
fn monotonic_nanos(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; a monotonic clock is always available on
    // Linux (the call cannot fail for it).
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// How often the upstream's position is polled for a bound of `max_lag`: a quarter of it,
/// between 50 ms and 1 s.
pub fn poll_interval(max_lag: Duration) -> Duration {
    (max_lag / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// Replication's freshness as the poller last measured it, and the serving deadline.
pub struct Freshness {
    /// The clock every deadline is measured on, as an `Instant` and as raw `CLOCK_MONOTONIC`
    /// nanoseconds (the same moment), so the hit path can read the coarse clock instead.
    epoch: Instant,
    epoch_raw_nanos: u64,
    max_lag: Duration,
    /// Caches serve while the clock (nanoseconds since `epoch`) is at most this; 0 = never
    /// confirmed (no cache serves yet).
    serve_until_nanos: AtomicU64,
    /// When caches go upstream because of the bound, the moment it started (for the log).
    stale_logged: AtomicBool,
    /// Nanoseconds since `epoch` of the newest poll replication has confirmed; 0 = none.
    confirmed_nanos: AtomicU64,
    /// Lag in milliseconds and bytes at the last poll (0 when every poll is confirmed).
    pub lag_ms: AtomicU64,
    pub lag_bytes: AtomicU64,
    /// The upstream's WAL position at the last successful poll.
    pub upstream_lsn: AtomicU64,
    /// Whether the last poll reached the upstream, and why not.
    pub upstream_reachable: AtomicBool,
    pub upstream_error: Mutex<Option<String>>,
    /// Caches going upstream because of the bound, counted once per stale period.
    pub stale_periods: AtomicU64,
    /// What replication was doing at the last poll (`SHOW LARDER STATUS`'s words).
    replication: Mutex<String>,
    /// Set when replication can never catch up again (its slot is gone): caches stop for good.
    halted: Mutex<Option<String>>,
    /// Polls replication has not reached yet: (when, the upstream's position then).
    pending: Mutex<VecDeque<(Instant, u64)>>,
}

impl Freshness {
    pub fn new(max_lag: Duration) -> Freshness {
        Freshness {
            epoch: Instant::now(),
            epoch_raw_nanos: monotonic_nanos(libc::CLOCK_MONOTONIC),
            max_lag,
            serve_until_nanos: AtomicU64::new(0),
            stale_logged: AtomicBool::new(false),
            confirmed_nanos: AtomicU64::new(0),
            lag_ms: AtomicU64::new(0),
            lag_bytes: AtomicU64::new(0),
            upstream_lsn: AtomicU64::new(0),
            upstream_reachable: AtomicBool::new(false),
            upstream_error: Mutex::new(None),
            stale_periods: AtomicU64::new(0),
            replication: Mutex::new(String::new()),
            halted: Mutex::new(None),
            pending: Mutex::new(VecDeque::new()),
        }
    }

    pub fn max_lag(&self) -> Duration {
        self.max_lag
    }

    fn nanos(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether caches may serve at `now`.
    pub fn fresh_at(&self, now: Instant) -> bool {
        let until = self.serve_until_nanos.load(Ordering::Acquire);
        until != 0 && self.nanos(now) <= until
    }

    /// Whether caches may serve now, for the hit path: the coarse monotonic clock (a few
    /// nanoseconds to read; it trails the precise one by at most a scheduler tick, a few
    /// milliseconds, which is all the bound can be passed by) and one atomic load.
    pub fn fresh_now(&self) -> bool {
        let now =
            monotonic_nanos(libc::CLOCK_MONOTONIC_COARSE).saturating_sub(self.epoch_raw_nanos);
        let until = self.serve_until_nanos.load(Ordering::Acquire);
        until != 0 && now <= until
    }

    /// Milliseconds since replication last confirmed the upstream's position (`None`: never).
    pub fn confirmed_age_ms(&self, now: Instant) -> Option<u64> {
        match self.confirmed_nanos.load(Ordering::Acquire) {
            0 => None,
            c => Some(self.nanos(now).saturating_sub(c) / 1_000_000),
        }
    }

    /// Why caches do not serve now (for `EXPLAIN LAST STATEMENT`, `/ready` and the log), or
    /// `None` when they may.
    pub fn stale_reason(&self, now: Instant) -> Option<String> {
        if self.fresh_at(now) {
            return None;
        }
        if let Some(why) = self.halted.lock().expect("freshness lock").clone() {
            return Some(format!(
                "caches are stopped past the staleness bound: {why}"
            ));
        }
        let replication = self.replication.lock().expect("freshness lock").clone();
        let bound = self.max_lag.as_millis();
        let state = if replication.is_empty() {
            String::new()
        } else {
            format!("; replication: {replication}")
        };
        let upstream = match self.upstream_error.lock().expect("freshness lock").clone() {
            Some(e) if !self.upstream_reachable.load(Ordering::Relaxed) => {
                format!("; the upstream cannot be polled: {e}")
            }
            _ => String::new(),
        };
        Some(match self.confirmed_age_ms(now) {
            None => format!(
                "replication has not caught up with the upstream yet \
                 (staleness bound --max-replication-lag-ms={bound}{state}{upstream})"
            ),
            Some(age) => format!(
                "replication lag {age} ms is over the staleness bound \
                 --max-replication-lag-ms={bound}{state}{upstream}"
            ),
        })
    }

    /// Replication can never catch up again: no cache serves from now on.
    pub fn halt(&self, why: &str) {
        *self.halted.lock().expect("freshness lock") = Some(why.to_string());
        self.serve_until_nanos.store(0, Ordering::Release);
    }

    /// Replication confirmed the poll made at `polled`.
    fn confirm(&self, polled: Instant) {
        if self.halted.lock().expect("freshness lock").is_some() {
            return;
        }
        let at = self.nanos(polled).max(1);
        if at > self.confirmed_nanos.load(Ordering::Relaxed) {
            self.confirmed_nanos.store(at, Ordering::Release);
            let until = at.saturating_add(u64::try_from(self.max_lag.as_nanos()).unwrap_or(0));
            self.serve_until_nanos.store(until, Ordering::Release);
        }
    }
}

/// How often polls are checked against the applied position (cheap: an atomic load and a
/// short lock), so a poll is confirmed within this of replication reaching it.
const CONFIRM_INTERVAL: Duration = Duration::from_millis(20);

impl Freshness {
    /// The upstream was at `lsn` at `polled`.
    fn polled(&self, polled: Instant, lsn: u64) {
        self.upstream_lsn.store(lsn, Ordering::Relaxed);
        let mut pending = self.pending.lock().expect("freshness lock");
        if pending.len() == PENDING_POLLS_MAX {
            pending.remove(PENDING_POLLS_MAX / 2);
        }
        pending.push_back((polled, lsn));
    }

    /// Confirms every poll replication has reached by `applied`; updates the lag figures.
    fn check(&self, applied: u64, now: Instant) -> u64 {
        let mut pending = self.pending.lock().expect("freshness lock");
        while let Some(&(polled, lsn)) = pending.front() {
            if lsn > applied {
                break;
            }
            self.confirm(polled);
            pending.pop_front();
        }
        let lag_ms = match pending.front() {
            None if self.upstream_reachable.load(Ordering::Relaxed) => 0,
            _ => self.confirmed_age_ms(now).unwrap_or(0),
        };
        self.lag_ms.store(lag_ms, Ordering::Relaxed);
        let newest = pending.back().map_or(applied, |p| p.1);
        self.lag_bytes
            .store(newest.saturating_sub(applied), Ordering::Relaxed);
        lag_ms
    }

    /// What replication is doing (`SHOW LARDER STATUS`'s words), for the reasons given.
    pub fn set_replication(&self, status: &str) {
        *self.replication.lock().expect("freshness lock") = status.to_string();
    }
}

/// Polls the upstream's WAL position until shutdown and keeps [`Freshness`] up to date.
/// Without `core` (`--proxy-only`) it only tells whether the upstream is reachable, on a
/// connection opened for each poll.
pub async fn run(
    ops: Arc<Ops>,
    source: PolledSource,
    core: Option<Arc<Core>>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    if let Some(core) = core.clone() {
        tokio::spawn(confirm_loop(ops.clone(), core, shutdown.clone()));
    }
    let freshness = &ops.freshness;
    let mut interval = tokio::time::interval(poll_interval(freshness.max_lag()));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut client: Option<tokio_postgres::Client> = None;
    while !*shutdown.borrow() {
        interval.tick().await;
        match poll(&source, &mut client).await {
            Ok(lsn) => {
                if !freshness.upstream_reachable.swap(true, Ordering::Relaxed) {
                    info!("the upstream answers the freshness poll");
                }
                trace!(upstream_lsn = lsn, "polled the upstream's WAL position");
                if core.is_some() {
                    freshness.polled(Instant::now(), lsn);
                }
            }
            Err(e) => {
                client = None;
                if freshness.upstream_reachable.swap(false, Ordering::Relaxed) {
                    warn!(error = %e, "the upstream cannot be polled for its WAL position");
                }
                *freshness.upstream_error.lock().expect("freshness lock") = Some(e);
            }
        }
        if core.is_none() {
            client = None;
        }
    }
}

/// Confirms polls as replication reaches them, and logs when caches start or stop serving.
async fn confirm_loop(
    ops: Arc<Ops>,
    core: Arc<Core>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let freshness = &ops.freshness;
    let mut interval = tokio::time::interval(CONFIRM_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_fresh = false;
    while !*shutdown.borrow() {
        interval.tick().await;
        let applied = core.status.applied_lsn.load(Ordering::SeqCst);
        let now = Instant::now();
        let lag_ms = freshness.check(applied, now);
        let fresh = freshness.fresh_at(now);
        if fresh != was_fresh {
            if fresh {
                info!(
                    lag_ms,
                    "replication is within the staleness bound: caches serve"
                );
            } else {
                let reason = freshness.stale_reason(now).unwrap_or_default();
                if freshness.confirmed_age_ms(now).is_some() {
                    freshness.stale_periods.fetch_add(1, Ordering::Relaxed);
                    warn!(lag_ms, %reason, "caches stop serving: queries go upstream");
                } else if !freshness.stale_logged.swap(true, Ordering::Relaxed) {
                    info!(%reason, "caches serve once replication has caught up");
                }
            }
            was_fresh = fresh;
        }
    }
}

/// Whose position the poller asks for: a Postgres upstream's WAL, or a MySQL upstream's
/// binlog (in `Position::progress` units, as its replication applies them).
pub enum PolledSource {
    Pg(Arc<PgSource>),
    My(Arc<larder_replication::mysql::MySource>),
}

/// The upstream's current position.
async fn poll(
    source: &PolledSource,
    client: &mut Option<tokio_postgres::Client>,
) -> Result<u64, String> {
    let source = match source {
        PolledSource::Pg(s) => s,
        PolledSource::My(s) => {
            return tokio::time::timeout(Duration::from_secs(5), s.current_progress())
                .await
                .map_err(|_| "the binlog position poll timed out".to_string())?
                .map_err(|e| format!("polling the binlog position: {e}"))
        }
    };
    if client.as_ref().is_none_or(|c| c.is_closed()) {
        *client = Some(source.client().await.map_err(|e| e.to_string())?);
    }
    let c = client.as_ref().expect("connected above");
    let row = tokio::time::timeout(
        Duration::from_secs(5),
        c.query_one(
            "SELECT ((CASE WHEN pg_catalog.pg_is_in_recovery() \
               THEN pg_catalog.pg_last_wal_replay_lsn() \
               ELSE pg_catalog.pg_current_wal_lsn() END) - '0/0'::pg_catalog.pg_lsn)::int8",
            &[],
        ),
    )
    .await
    .map_err(|_| "the WAL position poll timed out".to_string())?
    .map_err(|e| format!("polling the WAL position: {e}"))?;
    let lsn: Option<i64> = row.get(0);
    Ok(lsn.unwrap_or(0).max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caches_serve_only_within_the_bound_of_the_newest_confirmed_poll() {
        let f = Freshness::new(Duration::from_millis(500));
        let t0 = Instant::now();
        assert!(!f.fresh_at(t0), "never confirmed: not fresh");
        *f.replication.lock().unwrap() = "Reconnecting".into();
        assert!(f.stale_reason(t0).unwrap().contains("not caught up"));
        f.confirm(t0);
        assert!(f.fresh_at(t0 + Duration::from_millis(499)));
        assert!(!f.fresh_at(t0 + Duration::from_millis(501)));
        let reason = f.stale_reason(t0 + Duration::from_millis(900)).unwrap();
        assert!(reason.contains("over the staleness bound"), "{reason}");
        assert!(reason.contains("Reconnecting"), "{reason}");
        // The coarse clock of the hit path agrees.
        let f2 = Freshness::new(Duration::from_secs(60));
        assert!(!f2.fresh_now());
        f2.confirm(Instant::now());
        assert!(f2.fresh_now());
        // An older confirmation never moves the deadline back.
        f.confirm(t0 + Duration::from_millis(300));
        f.confirm(t0 + Duration::from_millis(100));
        assert!(f.fresh_at(t0 + Duration::from_millis(790)));
    }

    #[test]
    fn the_poll_interval_follows_the_bound() {
        assert_eq!(
            poll_interval(Duration::from_secs(30)),
            Duration::from_secs(1)
        );
        assert_eq!(
            poll_interval(Duration::from_millis(2000)),
            Duration::from_millis(500)
        );
        assert_eq!(
            poll_interval(Duration::from_millis(100)),
            Duration::from_millis(50)
        );
    }
}
