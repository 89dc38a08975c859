//! The registry of query shapes seen going upstream, for `SHOW PROXIED QUERIES` and
//! `CREATE CACHE FROM <id>`.
//!
//! Bounded three ways: distinct shapes ([`PROXIED_QUERIES_MAX`]), bytes per text
//! ([`PROXIED_TEXT_MAX_BYTES`]) and bytes in all ([`PROXIED_TOTAL_MAX_BYTES`]). A text longer
//! than the per-text bound is kept truncated, for display only: a cache cannot be created
//! from a truncated text (`text_of` does not return it; `CREATE CACHE FROM` with the SELECT
//! itself still works). Once a bound is reached new shapes are not recorded; shapes already
//! recorded keep counting.

use std::collections::HashMap;
use std::sync::Mutex;

/// Most distinct shapes remembered.
pub const PROXIED_QUERIES_MAX: usize = 10_000;
/// Longest text kept whole; longer texts are truncated to this many bytes.
pub const PROXIED_TEXT_MAX_BYTES: usize = 64 * 1024;
/// Bytes of all entries together (ids, texts and a fixed overhead per entry).
pub const PROXIED_TOTAL_MAX_BYTES: usize = 32 * 1024 * 1024;
/// Counted per entry on top of its id and text (map slot, counters, allocation headers).
const ENTRY_OVERHEAD_BYTES: usize = 96;
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
    pub fn record(&self, query_id: &str, text: &str) {
        let mut inner = self.inner.lock().expect("proxied lock poisoned");
        if let Some(q) = inner.map.get_mut(query_id) {
            q.count += 1;
            return;
        }
        let kept = prefix(text, PROXIED_TEXT_MAX_BYTES);
        let bytes = entry_bytes(query_id, kept);
        if inner.map.len() >= PROXIED_QUERIES_MAX || inner.bytes + bytes > PROXIED_TOTAL_MAX_BYTES {
            return;
        }
        inner.bytes += bytes;
        inner.map.insert(
            query_id.to_string(),
            ProxiedQuery {
                text: kept.to_string(),
                truncated: kept.len() < text.len(),
                count: 1,
            },
        );
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

    /// `(query id, text, count)` sorted by id; truncated texts end with a mark.
    pub fn snapshot(&self) -> Vec<(String, String, u64)> {
        let inner = self.inner.lock().expect("proxied lock poisoned");
        let mut v: Vec<_> = inner
            .map
            .iter()
            .map(|(id, q)| {
                let text = if q.truncated {
                    format!("{}{TRUNCATED_MARK}", q.text)
                } else {
                    q.text.clone()
                };
                (id.clone(), text, q.count)
            })
            .collect();
        v.sort();
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
        assert_eq!(
            p.snapshot(),
            vec![("q_1".to_string(), "SELECT 1".to_string(), 2)]
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
        let (_, shown, count) = p.snapshot().pop().expect("recorded");
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
        assert_eq!(p.snapshot()[0].2, 2);
        assert_eq!(p.text_of("q_99999"), None);
        assert_eq!(p.snapshot().len(), fits);
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
