//! `KILL [HARD|SOFT] [CONNECTION|QUERY] <id>` with Larder's connection ids: clients learn
//! Larder's id from the handshake, so the id is rewritten to the upstream's thread id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

/// Larder's connection ids start here, far above the thread ids a server hands out, so that a
/// `KILL` naming an upstream thread id (from `SHOW PROCESSLIST`) is not mistaken for one of
/// Larder's; they stay below `i32::MAX` for clients that keep the id in a signed int.
const ID_BASE: u32 = 1 << 30;

/// Larder's connection ids and the upstream thread id behind each.
#[derive(Default)]
pub(crate) struct ConnectionIds {
    next: AtomicU32,
    upstream: Mutex<HashMap<u32, u32>>,
}

impl ConnectionIds {
    /// A new id (never one in use), registered with upstream thread `thread_id`.
    pub(crate) fn register(&self, thread_id: u32) -> u32 {
        let mut map = self.upstream.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            let id = ID_BASE + n % ID_BASE;
            if let std::collections::hash_map::Entry::Vacant(e) = map.entry(id) {
                e.insert(thread_id);
                return id;
            }
        }
    }

    pub(crate) fn release(&self, id: u32) {
        self.upstream
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    pub(crate) fn upstream_of(&self, id: u32) -> Option<u32> {
        self.upstream
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .copied()
    }
}

/// If `sql` is a `KILL` of a numeric id that `lookup` knows, the statement with the id
/// replaced; `None` otherwise (relay unchanged).
pub(crate) fn rewrite_kill(sql: &str, lookup: impl Fn(u32) -> Option<u32>) -> Option<String> {
    let trimmed = sql.trim_start();
    let lead = sql.len() - trimmed.len();
    let mut pos = lead;
    let word_at = |pos: usize| -> (usize, &str) {
        let rest = &sql[pos..];
        let start = rest.len() - rest.trim_start().len();
        let w = &rest[start..];
        let len = w
            .find(|c: char| !c.is_ascii_alphanumeric() && c != '_')
            .unwrap_or(w.len());
        (pos + start, &w[..len])
    };
    let (at, w) = word_at(pos);
    if !w.eq_ignore_ascii_case("kill") {
        return None;
    }
    pos = at + w.len();
    for optional in [["hard", "soft"], ["connection", "query"]] {
        let (at, w) = word_at(pos);
        if optional.iter().any(|o| w.eq_ignore_ascii_case(o)) {
            pos = at + w.len();
        }
    }
    let (at, w) = word_at(pos);
    if w.is_empty() || !w.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let tail = sql[at + w.len()..].trim();
    if !(tail.is_empty() || tail == ";") {
        return None;
    }
    let id: u32 = w.parse().ok()?;
    let upstream = lookup(id)?;
    Some(format!("{}{upstream}{}", &sql[..at], &sql[at + w.len()..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(id: u32) -> Option<u32> {
        (id == 7).then_some(1234)
    }

    #[test]
    fn rewrites_known_ids() {
        assert_eq!(rewrite_kill("KILL 7", lookup).as_deref(), Some("KILL 1234"));
        assert_eq!(
            rewrite_kill("  kill query 7;", lookup).as_deref(),
            Some("  kill query 1234;")
        );
        assert_eq!(
            rewrite_kill("KILL HARD CONNECTION 7", lookup).as_deref(),
            Some("KILL HARD CONNECTION 1234")
        );
        assert_eq!(
            rewrite_kill("kill soft 7", lookup).as_deref(),
            Some("kill soft 1234")
        );
    }

    #[test]
    fn leaves_the_rest_alone() {
        for sql in [
            "KILL 8",
            "KILL QUERY ID 7",
            "KILL USER bob",
            "SELECT 7",
            "KILL 7 garbage",
            "KILL",
            "killer 7",
            "KILL 99999999999",
        ] {
            assert_eq!(rewrite_kill(sql, lookup), None, "{sql}");
        }
    }

    #[test]
    fn ids_are_unique_and_released() {
        let ids = ConnectionIds::default();
        let a = ids.register(100);
        let b = ids.register(200);
        assert_ne!(a, b);
        assert!(a >= ID_BASE && a < i32::MAX as u32);
        assert_eq!(ids.upstream_of(b), Some(200));
        ids.release(b);
        assert_eq!(ids.upstream_of(b), None);
    }
}
