//! The registry of query shapes seen going upstream, for `SHOW PROXIED QUERIES` (the
//! advisor) and `CREATE CACHE FROM <id>`.
//!
//! Each shape keeps how its statements fared upstream ([`ShapeStats`]): how many were timed,
//! their total time and rows, and the durations of the latest [`RECENT_SAMPLES`] for p50
//! and p99. A statement is timed from forwarding to the upstream's ReadyForQuery, as the
//! client sees it minus Larder's own relay.
//!
//! Bounded three ways: distinct shapes ([`PROXIED_QUERIES_MAX`]), bytes per text
//! ([`PROXIED_TEXT_MAX_BYTES`]) and bytes in all ([`PROXIED_TOTAL_MAX_BYTES`]). A text longer
//! than the per-text bound is kept truncated, for display only: a cache cannot be created
//! from a truncated text (`text_of` does not return it; `CREATE CACHE FROM` with the SELECT
//! itself still works). Once a bound is reached new shapes are not recorded; shapes already
//! recorded keep counting.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use larder_adapter::cache::UpstreamTiming;

/// Most distinct shapes remembered.
pub const PROXIED_QUERIES_MAX: usize = 10_000;
/// Longest text kept whole; longer texts are truncated to this many bytes.
pub const PROXIED_TEXT_MAX_BYTES: usize = 64 * 1024;
/// Bytes of all entries together (ids, texts and a fixed overhead per entry).
pub const PROXIED_TOTAL_MAX_BYTES: usize = 32 * 1024 * 1024;
/// Durations kept per shape for its percentiles.
pub const RECENT_SAMPLES: usize = 128;
/// Counted per entry on top of its id and text (map slot, counters, the recent durations,
/// allocation headers).
const ENTRY_OVERHEAD_BYTES: usize = 160 + RECENT_SAMPLES * 4;
/// Appended to a truncated text in `snapshot`.
const TRUNCATED_MARK: &str = " ... [truncated]";

/// Query shapes seen going upstream.
#[derive(Default)]
pub struct ProxiedQueries {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    map: HashMap<String, ProxiedQuery>,
    bytes: usize,
}

struct ProxiedQuery {
    text: String,
    truncated: bool,
    count: u64,
    stats: Arc<ShapeStats>,
}

/// How a shape's statements fared upstream.
#[derive(Default)]
pub struct ShapeStats {
    timed: AtomicU64,
    total_us: AtomicU64,
    rows: AtomicU64,
    recent: Mutex<Recent>,
}

/// The latest durations, in microseconds (a ring, allocated on the first one).
#[derive(Default)]
struct Recent {
    samples: Vec<u32>,
    next: usize,
}

impl UpstreamTiming for ShapeStats {
    fn done(&self, duration: Duration, rows: u64) {
        let us = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        self.timed.fetch_add(1, Ordering::Relaxed);
        self.total_us.fetch_add(us, Ordering::Relaxed);
        self.rows.fetch_add(rows, Ordering::Relaxed);
        let mut recent = self.recent.lock().expect("recent lock poisoned");
        let sample = u32::try_from(us).unwrap_or(u32::MAX);
        if recent.samples.len() < RECENT_SAMPLES {
            recent.samples.push(sample);
        } else {
            let at = recent.next;
            recent.samples[at] = sample;
        }
        recent.next = (recent.next + 1) % RECENT_SAMPLES;
    }
}

/// A shape as `SHOW PROXIED QUERIES` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxiedShape {
    pub query_id: String,
    /// Truncated texts end with a mark.
    pub text: String,
    /// Times it went upstream.
    pub count: u64,
    /// Of those, how many were timed to their end, with their total time and rows.
    pub timed: u64,
    pub total_us: u64,
    pub rows: u64,
    /// Over the latest timed ones (`None` before the first).
    pub p50_us: Option<u32>,
    pub p99_us: Option<u32>,
}

/// The nearest-rank percentile `p` (0..=100) of `sorted`.
fn percentile(sorted: &[u32], p: usize) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

fn entry_bytes(query_id: &str, text: &str) -> usize {
    query_id.len() + text.len() + ENTRY_OVERHEAD_BYTES
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn prefix(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl ProxiedQueries {
    /// Counts one more statement of the shape going upstream; returns where its timing goes
    /// and whether the shape is new, or `None` when a bound keeps it out.
    pub fn record(&self, query_id: &str, text: &str) -> Option<(Arc<ShapeStats>, bool)> {
        let mut inner = self.inner.lock().expect("proxied lock poisoned");
        if let Some(q) = inner.map.get_mut(query_id) {
            q.count += 1;
            return Some((Arc::clone(&q.stats), false));
        }
        let kept = prefix(text, PROXIED_TEXT_MAX_BYTES);
        let bytes = entry_bytes(query_id, kept);
        if inner.map.len() >= PROXIED_QUERIES_MAX || inner.bytes + bytes > PROXIED_TOTAL_MAX_BYTES {
            return None;
        }
        inner.bytes += bytes;
        let stats = Arc::new(ShapeStats::default());
        inner.map.insert(
            query_id.to_string(),
            ProxiedQuery {
                text: kept.to_string(),
                truncated: kept.len() < text.len(),
                count: 1,
                stats: Arc::clone(&stats),
            },
        );
        Some((stats, true))
    }

    /// The whole text of a recorded shape (`None` when unknown or kept truncated).
    pub fn text_of(&self, query_id: &str) -> Option<String> {
        self.inner
            .lock()
            .expect("proxied lock poisoned")
            .map
            .get(query_id)
            .filter(|q| !q.truncated)
            .map(|q| q.text.clone())
    }

    /// Every shape, sorted by id.
    pub fn snapshot(&self) -> Vec<ProxiedShape> {
        let inner = self.inner.lock().expect("proxied lock poisoned");
        let mut v: Vec<ProxiedShape> = inner
            .map
            .iter()
            .map(|(id, q)| {
                let text = if q.truncated {
                    format!("{}{TRUNCATED_MARK}", q.text)
                } else {
                    q.text.clone()
                };
                let mut recent = q
                    .stats
                    .recent
                    .lock()
                    .expect("recent lock poisoned")
                    .samples
                    .clone();
                recent.sort_unstable();
                ProxiedShape {
                    query_id: id.clone(),
                    text,
                    count: q.count,
                    timed: q.stats.timed.load(Ordering::Relaxed),
                    total_us: q.stats.total_us.load(Ordering::Relaxed),
                    rows: q.stats.rows.load(Ordering::Relaxed),
                    p50_us: percentile(&recent, 50),
                    p99_us: percentile(&recent, 99),
                }
            })
            .collect();
        v.sort_by(|a, b| a.query_id.cmp(&b.query_id));
        v
    }

    pub fn clear(&self) {
        let mut inner = self.inner.lock().expect("proxied lock poisoned");
        inner.map.clear();
        inner.bytes = 0;
    }

    /// Bytes accounted to the recorded entries.
    pub fn bytes(&self) -> usize {
        self.inner.lock().expect("proxied lock poisoned").bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_repeated_shapes_and_keeps_short_texts_whole() {
        let p = ProxiedQueries::default();
        p.record("q_1", "SELECT 1");
        p.record("q_1", "SELECT 1");
        assert_eq!(p.text_of("q_1").as_deref(), Some("SELECT 1"));
        let shown = p.snapshot();
        assert_eq!(shown.len(), 1);
        assert_eq!(
            (
                shown[0].query_id.as_str(),
                shown[0].text.as_str(),
                shown[0].count
            ),
            ("q_1", "SELECT 1", 2)
        );
        assert_eq!(p.bytes(), entry_bytes("q_1", "SELECT 1"));
        p.clear();
        assert_eq!(p.bytes(), 0);
        assert!(p.snapshot().is_empty());
    }

    #[test]
    fn long_texts_are_truncated_on_a_character_boundary_and_not_cacheable() {
        let p = ProxiedQueries::default();
        // 'é' is two bytes: the cut falls inside one unless it moves back.
        let long = format!("SELECT '{}'", "é".repeat(PROXIED_TEXT_MAX_BYTES));
        p.record("q_long", &long);
        assert_eq!(p.text_of("q_long"), None);
        let shape = p.snapshot().pop().expect("recorded");
        let (shown, count) = (shape.text, shape.count);
        assert_eq!(count, 1);
        assert!(shown.ends_with(TRUNCATED_MARK));
        let kept = &shown[..shown.len() - TRUNCATED_MARK.len()];
        assert!(kept.len() <= PROXIED_TEXT_MAX_BYTES);
        assert!(kept.len() > PROXIED_TEXT_MAX_BYTES - 4);
        assert!(long.starts_with(kept));
        assert!(p.bytes() <= entry_bytes("q_long", "") + PROXIED_TEXT_MAX_BYTES);
    }

    #[test]
    fn total_bytes_are_bounded() {
        let p = ProxiedQueries::default();
        let text = "x".repeat(PROXIED_TEXT_MAX_BYTES);
        let fits = PROXIED_TOTAL_MAX_BYTES / entry_bytes("q_00000", &text);
        assert!(
            fits < PROXIED_QUERIES_MAX,
            "the byte bound is the one tested"
        );
        for i in 0..fits + 10 {
            p.record(&format!("q_{i:05}"), &text);
        }
        assert_eq!(p.snapshot().len(), fits);
        assert!(p.bytes() <= PROXIED_TOTAL_MAX_BYTES);
        // Recorded shapes keep counting; new ones are refused.
        p.record("q_00000", &text);
        p.record("q_99999", &text);
        assert_eq!(p.snapshot()[0].count, 2);
        assert_eq!(p.text_of("q_99999"), None);
        assert_eq!(p.snapshot().len(), fits);
    }

    #[test]
    fn timings_give_totals_and_percentiles_of_the_latest() {
        let p = ProxiedQueries::default();
        let (stats, new) = p.record("q_t", "SELECT pg_sleep($1)").expect("recorded");
        assert!(new);
        assert!(!p.record("q_t", "SELECT pg_sleep($1)").expect("known").1);
        for ms in 1..=100u64 {
            stats.done(Duration::from_millis(ms), 2);
        }
        let s = p.snapshot().pop().expect("recorded");
        assert_eq!((s.count, s.timed, s.rows), (2, 100, 200));
        assert_eq!(s.total_us, 5050 * 1000);
        assert_eq!(s.p50_us, Some(50_000));
        assert_eq!(s.p99_us, Some(99_000));
        // Only the latest RECENT_SAMPLES count for percentiles.
        for _ in 0..RECENT_SAMPLES {
            stats.done(Duration::from_millis(7), 0);
        }
        let s = p.snapshot().pop().expect("recorded");
        assert_eq!((s.p50_us, s.p99_us), (Some(7000), Some(7000)));
        assert_eq!(s.timed, 100 + RECENT_SAMPLES as u64);
    }

    #[test]
    fn distinct_shapes_are_bounded() {
        let p = ProxiedQueries::default();
        for i in 0..PROXIED_QUERIES_MAX + 5 {
            p.record(&format!("q_{i}"), "SELECT 1");
        }
        assert_eq!(p.snapshot().len(), PROXIED_QUERIES_MAX);
    }
}
