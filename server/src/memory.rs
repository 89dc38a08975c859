//! Whole caches evicted under `--memory-limit`, and refilled on demand.
//!
//! Partial caches give memory back key by key (`partial.rs`). A cache that holds its whole
//! result can only give it back whole: past the limit, after the partial caches' keys, the
//! memory loop evicts whole caches by a clock over their reads. Each pass notes every
//! cache's hit count; a cache read since the previous pass is young again, the others age
//! by one pass. The oldest goes first (the larger first among equals), one at a time until
//! the caches are within the limit. An evicted cache leaves the dataflow (its operators and
//! reader are freed, and the secondary indexes only it read) but stays in the registry, not
//! serving: its queries go upstream, `EXPLAIN LAST STATEMENT` and `SHOW CACHES` say it was
//! evicted, and its next read asks for it again ([`Refills`]). It is then built again from
//! storage like a new cache, and the clock starts it young (a read asked for it). A new
//! cache starts on probation instead: older than every cache read since, so a cache nobody
//! reads goes before one in use. A restart leaves such caches dormant the same way
//! ([`DORMANT_REASON`]): each is filled on its first read, not by a scan before serving.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};

use tracing::info;

use crate::core::{CacheEntry, Core};

/// Why an evicted cache does not answer (also its mark: see [`CacheEntry::evicted`]).
pub const EVICTED_REASON: &str =
    "the cache was evicted under --memory-limit; it is filled again after this read";

/// Why a cache restored at startup does not answer yet (see [`CacheEntry::make_dormant`]).
pub const DORMANT_REASON: &str =
    "the cache is not filled since Larder started; it is filled after this read";

/// Most evicted caches waiting to be filled again; past it a read asks again later.
const REFILLS_PENDING_MAX: usize = 256;

/// Evicted caches whose reads asked for them again: query ids, each once, in request
/// order, and a wake-up for the one consumer.
#[derive(Default)]
pub struct Refills {
    pending: Mutex<VecDeque<String>>,
    wake: tokio::sync::Notify,
}

impl Refills {
    /// Asks for the evicted cache `query_id` to be filled again (a repeated request is
    /// already pending; past the bound the request is dropped and the next read asks again).
    pub fn request(&self, query_id: &str) {
        let mut pending = self.pending.lock().expect("refills poisoned");
        if pending.len() >= REFILLS_PENDING_MAX || pending.iter().any(|q| q == query_id) {
            return;
        }
        pending.push_back(query_id.to_string());
        drop(pending);
        self.wake.notify_one();
    }

    /// The next cache to fill again.
    pub async fn next(&self) -> String {
        loop {
            let notified = self.wake.notified();
            if let Some(q) = self.pending.lock().expect("refills poisoned").pop_front() {
                return q;
            }
            notified.await;
        }
    }
}

/// Where a new cache starts on the clock: older than any cache read since.
const PROBATION_AGE: u32 = 1 << 20;

/// The clock over whole caches: for each cache, its hits at the previous pass and how many
/// passes it has gone unread.
#[derive(Debug, Default)]
pub struct CacheClock {
    seen: HashMap<String, Seen>,
    /// Query ids evicted and not seen back yet (bounded by the number of caches).
    evicted: std::collections::HashSet<String>,
}

#[derive(Debug)]
struct Seen {
    /// The entry (a cache filled again is a new one); weak, only compared.
    entry: Weak<CacheEntry>,
    hits: u64,
    age: u32,
    /// The entry was dormant: an entry after it was filled because a read asked.
    dormant: bool,
}

impl CacheClock {
    /// One pass: caches read since the previous one are young again, the others age; a new
    /// cache starts on probation, one filled again after an eviction (or after a restart
    /// left it dormant) young.
    fn tick(&mut self, caches: &[Arc<CacheEntry>]) {
        let mut next = HashMap::with_capacity(caches.len());
        for c in caches {
            let entry = Arc::downgrade(c);
            let hits = c.hits.total();
            let age = match self.seen.get(&c.query_id) {
                Some(s) if s.entry.ptr_eq(&entry) && s.hits == hits => s.age.saturating_add(1),
                Some(s) if s.entry.ptr_eq(&entry) => 0,
                Some(s) if s.dormant => 0,
                _ if self.evicted.remove(&c.query_id) => 0,
                _ => PROBATION_AGE,
            };
            let dormant = c.evicted.load(Ordering::Acquire);
            next.insert(
                c.query_id.clone(),
                Seen {
                    entry,
                    hits,
                    age,
                    dormant,
                },
            );
        }
        self.seen = next;
        self.evicted.retain(|q| self.seen.contains_key(q));
    }

    fn age(&self, query_id: &str) -> u32 {
        self.seen.get(query_id).map_or(0, |s| s.age)
    }
}

/// Evicts whole caches, oldest by the clock first, until the deep caches are within
/// `limit_bytes` (run after the partial caches' keys were evicted); returns how many went.
pub fn evict_caches_within(core: &Core, limit_bytes: u64, clock: &mut CacheClock) -> usize {
    let caches = core.caches.all();
    clock.tick(&caches);
    let mut evicted = 0;
    let mut used = crate::partial::cache_bytes(core);
    while used > limit_bytes {
        let victim = {
            let graph = core.dataflow.lock().expect("dataflow lock poisoned");
            caches
                .iter()
                .filter(|c| {
                    !c.reader.is_partial()
                        && c.serving.load(Ordering::Acquire)
                        && graph.is_ready(c.cache_id)
                })
                .max_by_key(|c| {
                    let bytes = c.reader.stats().map_or(0, |s| s.bytes)
                        + graph.cache_state_bytes(c.cache_id);
                    (clock.age(&c.query_id), bytes)
                })
                .cloned()
        };
        let Some(victim) = victim else { break };
        victim.evict();
        core.leave_dataflow(victim.cache_id);
        let now = crate::partial::cache_bytes(core);
        info!(
            cache = %victim.name,
            unread_passes = clock.age(&victim.query_id),
            freed_bytes = used.saturating_sub(now),
            limit_bytes,
            "cache evicted under --memory-limit"
        );
        core.ops.caches_evicted.fetch_add(1, Ordering::Relaxed);
        clock.evicted.insert(victim.query_id.clone());
        used = now;
        evicted += 1;
    }
    evicted
}

/// Gives the allocator's free memory back to the system. glibc keeps what evicted state
/// freed in its per-thread arenas, so without this the resident size stays at its peak
/// however much eviction frees. Walks the free lists: called at most once a second after an
/// eviction, and once after a cache's initial fill.
pub fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only reorganizes the allocator's own free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}
