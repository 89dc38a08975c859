//! Shallow (TTL) caches: upstream results kept for a while, keyed by everything that decides
//! their bytes, and refreshed in the background while they are read.
//!
//! Dialect-neutral: an entry is opaque bytes in two parts (a `head` the protocol may or may not
//! need, such as Postgres' RowDescription, and the `body`), and the key is a byte string the
//! protocol layer builds (role, session settings, query text, parameters, formats). What makes
//! an entry is the protocol's business; this module decides who fills a missing key, who
//! waits, who refreshes, and what is evicted.
//!
//! - **Coalescing.** The first read that misses a key gets a [`FillTicket`] and runs the query
//!   upstream; reads of that key while it runs get a [`FillWaiter`] and are answered with its
//!   result. A fill that fails, or whose session goes away, wakes the waiters with nothing:
//!   they go upstream themselves.
//! - **Refresh.** A read of an entry older than its refresh age is answered from it and gets a
//!   [`RefreshTicket`] (one per entry at a time) to run the query again in the background.
//! - **Memory.** All shallow caches share one [`ShallowStore`] with a byte budget (what
//!   `--memory-limit` leaves after the deep caches). Entries are evicted by a clock whose
//!   credit grows with reads and with what the result cost upstream, so cheap or rarely read
//!   results go first; expired ones go before anything else.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;

use crate::cache::CachedRelation;

const SHARDS: usize = 16;
/// Largest key accepted (role, settings, text and parameters); longer ones are not cached.
pub const KEY_MAX_BYTES: usize = 64 << 10;
/// Bookkeeping bytes charged per entry beyond its key and parts.
const ENTRY_OVERHEAD_BYTES: usize = 160;
/// Clock credit at most (reads and cost add to it; each pass of the hand takes one).
const CREDIT_MAX: u8 = 7;

/// How long results live and when reads refresh them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShallowPolicy {
    pub ttl: Duration,
    /// A read of an entry at least this old starts a refresh.
    pub refresh: Duration,
}

impl ShallowPolicy {
    /// The policy for `ttl` and an optional explicit refresh age (default: half the TTL).
    pub fn new(ttl: Duration, refresh: Option<Duration>) -> ShallowPolicy {
        ShallowPolicy {
            ttl,
            refresh: refresh.unwrap_or(ttl / 2).min(ttl),
        }
    }
}

/// One stored result, as the protocol layer cut it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryParts {
    pub head: Option<Bytes>,
    pub body: Bytes,
}

impl EntryParts {
    fn bytes(&self) -> usize {
        self.head.as_ref().map_or(0, |h| h.len()) + self.body.len()
    }
}

/// Counters of one shallow cache.
#[derive(Debug, Default)]
pub struct ShallowStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// Misses answered by another session's fill.
    pub coalesced: AtomicU64,
    pub fills: AtomicU64,
    pub refreshes: AtomicU64,
    /// Bytes its entries hold now.
    pub bytes: AtomicUsize,
}

/// A shallow cache, as the router and `SHOW CACHES` see it.
pub struct ShallowCache {
    pub query_id: String,
    pub name: String,
    /// The SELECT as stored.
    pub query: String,
    pub always: bool,
    pub policy: ShallowPolicy,
    /// The relations it reads (for privilege checks before a hit).
    pub relations: Vec<CachedRelation>,
    pub stats: Arc<ShallowStats>,
    id: u64,
    store: Arc<ShallowStore>,
}

impl std::fmt::Debug for ShallowCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShallowCache")
            .field("query_id", &self.query_id)
            .field("name", &self.name)
            .field("policy", &self.policy)
            .finish()
    }
}

/// A live entry found by a read.
pub struct Hit {
    pub parts: Arc<EntryParts>,
    /// When the upstream answered it.
    pub filled_at: Instant,
    /// Given to the read that should refresh it.
    pub refresh: Option<RefreshTicket>,
}

/// What a read of a key finds.
pub enum Lookup {
    Hit(Hit),
    /// No live entry and nobody fetching one: this read fetches it.
    Fill(FillTicket),
    /// Another read is fetching it.
    Wait(FillWaiter),
}

impl ShallowCache {
    /// The start of a key of this cache: the protocol layer appends what decides the
    /// result's bytes (at most [`KEY_MAX_BYTES`] in all).
    pub fn key_start(&self) -> Vec<u8> {
        let mut key = Vec::with_capacity(256);
        key.extend_from_slice(&self.id.to_le_bytes());
        key
    }

    /// Reads `full`, a key begun with [`ShallowCache::key_start`].
    pub fn lookup(self: &Arc<Self>, full: Vec<u8>) -> Lookup {
        debug_assert!(
            full.starts_with(&self.id.to_le_bytes()),
            "a key of this cache"
        );
        let now = Instant::now();
        let shard_ix = self.store.shard_of(&full);
        let mut shard = self.store.shards[shard_ix]
            .lock()
            .expect("shallow shard poisoned");
        if let Some(e) = shard.entries.get_mut(&full[..]) {
            let age = now.saturating_duration_since(e.filled_at);
            if age < self.policy.ttl {
                e.credit = e.credit.saturating_add(1).min(CREDIT_MAX);
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                let refresh = if age >= self.policy.refresh && !e.refreshing {
                    e.refreshing = true;
                    Some(RefreshTicket {
                        cache: Arc::clone(self),
                        key: Arc::clone(&e.key),
                        done: false,
                    })
                } else {
                    None
                };
                return Lookup::Hit(Hit {
                    parts: Arc::clone(&e.parts),
                    filled_at: e.filled_at,
                    refresh,
                });
            }
        }
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        if let Some(tx) = shard.fills.get(&full[..]) {
            self.stats.coalesced.fetch_add(1, Ordering::Relaxed);
            return Lookup::Wait(FillWaiter {
                rx: tx.subscribe(),
                wait_max: self.policy.ttl.min(Duration::from_secs(30)),
            });
        }
        let key: Arc<[u8]> = full.into();
        let (tx, _) = watch::channel(None);
        shard.fills.insert(Arc::clone(&key), tx);
        Lookup::Fill(FillTicket {
            cache: Arc::clone(self),
            key,
            done: false,
        })
    }

    /// Entries held now.
    pub fn entries(&self) -> usize {
        let prefix = self.id.to_le_bytes();
        self.store
            .shards
            .iter()
            .map(|s| {
                let s = s.lock().expect("shallow shard poisoned");
                s.entries.keys().filter(|k| k.starts_with(&prefix)).count()
            })
            .sum()
    }

    fn store_entry(&self, key: &Arc<[u8]>, parts: Arc<EntryParts>, cost: Duration) {
        self.store.insert(self, key, parts, cost);
    }
}

/// The right and duty to fetch a missing key: [`FillTicket::complete`] stores the result and
/// answers the waiters; dropping it unfinished wakes them with nothing.
pub struct FillTicket {
    cache: Arc<ShallowCache>,
    key: Arc<[u8]>,
    done: bool,
}

impl FillTicket {
    /// Stores the fetched result (`cost`: how long the upstream took) and hands it to every
    /// read waiting for it.
    pub fn complete(mut self, parts: EntryParts, cost: Duration) {
        self.done = true;
        let parts = Arc::new(parts);
        self.cache.stats.fills.fetch_add(1, Ordering::Relaxed);
        self.cache.store_entry(&self.key, Arc::clone(&parts), cost);
        self.finish(Some(parts));
    }

    fn finish(&self, parts: Option<Arc<EntryParts>>) {
        let shard = self.cache.store.shard_of(&self.key);
        let tx = self.cache.store.shards[shard]
            .lock()
            .expect("shallow shard poisoned")
            .fills
            .remove(&self.key);
        if let Some(tx) = tx {
            let _ = tx.send(Some(parts));
        }
    }
}

impl Drop for FillTicket {
    fn drop(&mut self) {
        if !self.done {
            self.finish(None);
        }
    }
}

/// A read waiting for another read's fill of the same key.
pub struct FillWaiter {
    rx: watch::Receiver<FillOutcome>,
    wait_max: Duration,
}

impl FillWaiter {
    /// The fill's result; `None` when it failed, its session went away, or it took longer than
    /// the wait bound (the TTL, at most 30 s): the read then goes upstream itself.
    pub async fn wait(mut self) -> Option<Arc<EntryParts>> {
        let outcome = tokio::time::timeout(self.wait_max, async {
            loop {
                if let Some(done) = self.rx.borrow_and_update().clone() {
                    return done;
                }
                if self.rx.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await;
        outcome.ok().flatten()
    }
}

/// The right to refresh a live entry in the background (one at a time per entry).
pub struct RefreshTicket {
    cache: Arc<ShallowCache>,
    key: Arc<[u8]>,
    done: bool,
}

impl RefreshTicket {
    /// Replaces the entry with the refreshed result.
    pub fn complete(mut self, parts: EntryParts, cost: Duration) {
        self.done = true;
        self.cache.stats.refreshes.fetch_add(1, Ordering::Relaxed);
        self.cache.store_entry(&self.key, Arc::new(parts), cost);
    }
}

impl Drop for RefreshTicket {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Failed or abandoned: a later read may try again.
        let shard = self.cache.store.shard_of(&self.key);
        let mut s = self.cache.store.shards[shard]
            .lock()
            .expect("shallow shard poisoned");
        if let Some(e) = s.entries.get_mut(&self.key[..]) {
            e.refreshing = false;
        }
    }
}

/// What a fill's waiters are told: nothing yet (`None`), then the result or its failure.
type FillOutcome = Option<Option<Arc<EntryParts>>>;

struct Entry {
    key: Arc<[u8]>,
    parts: Arc<EntryParts>,
    filled_at: Instant,
    ttl: Duration,
    credit: u8,
    refreshing: bool,
    bytes: usize,
    stats: Arc<ShallowStats>,
}

#[derive(Default)]
struct Shard {
    entries: HashMap<Arc<[u8]>, Entry>,
    /// Keys in clock order (a key may appear again after it was replaced; stale ones are
    /// skipped).
    clock: VecDeque<Arc<[u8]>>,
    fills: HashMap<Arc<[u8]>, watch::Sender<FillOutcome>>,
    used_bytes: usize,
}

/// The entries of every shallow cache, within one byte budget.
pub struct ShallowStore {
    shards: Vec<Mutex<Shard>>,
    hasher: std::collections::hash_map::RandomState,
    budget_bytes: AtomicUsize,
    used_bytes: AtomicUsize,
    next_id: AtomicU64,
    pub evictions: AtomicU64,
    /// Results not stored because alone they exceed a shard's budget share.
    pub too_large: AtomicU64,
}

impl ShallowStore {
    pub fn new(budget_bytes: usize) -> Arc<ShallowStore> {
        Arc::new(ShallowStore {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: Default::default(),
            budget_bytes: AtomicUsize::new(budget_bytes),
            used_bytes: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            evictions: AtomicU64::new(0),
            too_large: AtomicU64::new(0),
        })
    }

    /// A new shallow cache whose entries live here.
    pub fn cache(
        self: &Arc<Self>,
        query_id: String,
        name: String,
        query: String,
        always: bool,
        policy: ShallowPolicy,
        relations: Vec<CachedRelation>,
    ) -> Arc<ShallowCache> {
        Arc::new(ShallowCache {
            query_id,
            name,
            query,
            always,
            policy,
            relations,
            stats: Arc::default(),
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            store: Arc::clone(self),
        })
    }

    /// Sets the budget (e.g. what `--memory-limit` leaves after the deep caches); entries past
    /// it go on the next insert into their shard, or at once with `trim`.
    pub fn set_budget(&self, budget_bytes: usize) {
        self.budget_bytes.store(budget_bytes, Ordering::Relaxed);
    }

    pub fn budget_bytes(&self) -> usize {
        self.budget_bytes.load(Ordering::Relaxed)
    }

    /// Bytes held by all entries.
    pub fn used_bytes(&self) -> usize {
        self.used_bytes.load(Ordering::Relaxed)
    }

    /// Evicts until every shard is within its share of the budget.
    pub fn trim(&self) {
        let now = Instant::now();
        for s in &self.shards {
            let mut s = s.lock().expect("shallow shard poisoned");
            self.evict(&mut s, 0, now);
        }
    }

    /// Removes every entry of `cache` (it was dropped).
    pub fn purge(&self, cache: &ShallowCache) {
        let prefix = cache.id.to_le_bytes();
        for s in &self.shards {
            let mut s = s.lock().expect("shallow shard poisoned");
            let keys: Vec<Arc<[u8]>> = s
                .entries
                .keys()
                .filter(|k| k.starts_with(&prefix))
                .cloned()
                .collect();
            for k in keys {
                self.remove(&mut s, &k);
            }
        }
    }

    fn shard_of(&self, key: &[u8]) -> usize {
        (self.hasher.hash_one(key) as usize) % SHARDS
    }

    fn shard_budget(&self) -> usize {
        self.budget_bytes.load(Ordering::Relaxed) / SHARDS
    }

    fn insert(
        &self,
        cache: &ShallowCache,
        key: &Arc<[u8]>,
        parts: Arc<EntryParts>,
        cost: Duration,
    ) {
        let bytes = ENTRY_OVERHEAD_BYTES + 2 * key.len() + parts.bytes();
        let budget = self.shard_budget();
        let ix = self.shard_of(key);
        let mut s = self.shards[ix].lock().expect("shallow shard poisoned");
        if let Some(old) = self.remove(&mut s, key) {
            debug_assert!(old <= s.used_bytes + old);
        }
        if bytes > budget / 4 {
            // Alone it would crowd out a quarter of its shard: not kept.
            self.too_large.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let now = Instant::now();
        self.evict(&mut s, bytes, now);
        // Costlier results start with more credit: they survive more passes of the hand.
        let cost_ms = cost.as_millis();
        let credit = match cost_ms {
            0 => 0,
            1..=9 => 1,
            10..=99 => 2,
            _ => 3,
        };
        cache.stats.bytes.fetch_add(bytes, Ordering::Relaxed);
        s.used_bytes += bytes;
        self.used_bytes.fetch_add(bytes, Ordering::Relaxed);
        s.clock.push_back(Arc::clone(key));
        s.entries.insert(
            Arc::clone(key),
            Entry {
                key: Arc::clone(key),
                parts,
                filled_at: now,
                ttl: cache.policy.ttl,
                credit,
                refreshing: false,
                bytes,
                stats: Arc::clone(&cache.stats),
            },
        );
    }

    /// Turns the clock until `incoming` more bytes fit in the shard's share.
    fn evict(&self, s: &mut Shard, incoming: usize, now: Instant) {
        let budget = self.shard_budget();
        // Each key is passed at most CREDIT_MAX + 1 times before it goes.
        let mut turns = s.clock.len() * (CREDIT_MAX as usize + 1) + 1;
        while s.used_bytes + incoming > budget && turns > 0 {
            turns -= 1;
            let Some(k) = s.clock.pop_front() else { break };
            let Some(e) = s.entries.get_mut(&k) else {
                continue;
            };
            if !Arc::ptr_eq(&e.key, &k) {
                // A stale position of a key stored again since.
                continue;
            }
            let expired = now.saturating_duration_since(e.filled_at) >= e.ttl;
            if e.credit > 0 && !expired {
                e.credit -= 1;
                s.clock.push_back(k);
                continue;
            }
            self.remove(s, &k);
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
        // Stale clock positions must not pile up.
        if s.clock.len() > 2 * s.entries.len() + 64 {
            let entries = &s.entries;
            s.clock
                .retain(|k| entries.get(k).is_some_and(|e| Arc::ptr_eq(&e.key, k)));
        }
    }

    fn remove(&self, s: &mut Shard, key: &[u8]) -> Option<usize> {
        let e = s.entries.remove(key)?;
        s.used_bytes -= e.bytes;
        self.used_bytes.fetch_sub(e.bytes, Ordering::Relaxed);
        e.stats.bytes.fetch_sub(e.bytes, Ordering::Relaxed);
        Some(e.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key of `c` ending with `rest`.
    fn key(c: &ShallowCache, rest: &[u8]) -> Vec<u8> {
        let mut k = c.key_start();
        k.extend_from_slice(rest);
        k
    }

    fn parts(n: usize) -> EntryParts {
        EntryParts {
            head: Some(Bytes::from_static(b"head")),
            body: Bytes::from(vec![7u8; n]),
        }
    }

    fn cache(store: &Arc<ShallowStore>, ttl_ms: u64) -> Arc<ShallowCache> {
        store.cache(
            "q_1".into(),
            "c".into(),
            "SELECT 1".into(),
            false,
            ShallowPolicy::new(Duration::from_millis(ttl_ms), None),
            vec![],
        )
    }

    #[tokio::test]
    async fn one_fill_many_waiters() {
        let store = ShallowStore::new(1 << 20);
        let c = cache(&store, 60_000);
        let Lookup::Fill(ticket) = c.lookup(key(&c, b"k")) else {
            panic!("first read fills")
        };
        let waiters: Vec<FillWaiter> = (0..100)
            .map(|_| match c.lookup(key(&c, b"k")) {
                Lookup::Wait(w) => w,
                _ => panic!("later reads wait"),
            })
            .collect();
        let handles: Vec<_> = waiters
            .into_iter()
            .map(|w| tokio::spawn(w.wait()))
            .collect();
        ticket.complete(parts(10), Duration::from_millis(5));
        for h in handles {
            assert_eq!(h.await.unwrap().unwrap().body.len(), 10);
        }
        assert!(matches!(
            c.lookup(key(&c, b"k")),
            Lookup::Hit(Hit { refresh: None, .. })
        ));
        assert_eq!(c.stats.coalesced.load(Ordering::Relaxed), 100);
        assert_eq!(c.stats.fills.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_failed_fill_releases_its_waiters_and_the_key() {
        let store = ShallowStore::new(1 << 20);
        let c = cache(&store, 60_000);
        let Lookup::Fill(ticket) = c.lookup(key(&c, b"k")) else {
            panic!()
        };
        let Lookup::Wait(w) = c.lookup(key(&c, b"k")) else {
            panic!()
        };
        drop(ticket);
        assert!(w.wait().await.is_none());
        assert!(
            matches!(c.lookup(key(&c, b"k")), Lookup::Fill(_)),
            "tried again"
        );
    }

    #[test]
    fn refresh_once_then_expire() {
        let store = ShallowStore::new(1 << 20);
        let c = cache(&store, 40);
        let Lookup::Fill(t) = c.lookup(key(&c, b"k")) else {
            panic!()
        };
        t.complete(parts(1), Duration::ZERO);
        assert!(matches!(
            c.lookup(key(&c, b"k")),
            Lookup::Hit(Hit { refresh: None, .. })
        ));
        std::thread::sleep(Duration::from_millis(25));
        let Lookup::Hit(Hit {
            refresh: Some(refresh),
            ..
        }) = c.lookup(key(&c, b"k"))
        else {
            panic!("past half the TTL a read refreshes")
        };
        assert!(
            matches!(
                c.lookup(key(&c, b"k")),
                Lookup::Hit(Hit { refresh: None, .. })
            ),
            "one refresh at a time"
        );
        drop(refresh);
        assert!(matches!(
            c.lookup(key(&c, b"k")),
            Lookup::Hit(Hit {
                refresh: Some(_),
                ..
            })
        ));
        std::thread::sleep(Duration::from_millis(30));
        assert!(
            matches!(c.lookup(key(&c, b"k")), Lookup::Fill(_)),
            "expired"
        );
    }

    #[test]
    fn the_budget_holds_and_read_entries_survive() {
        let budget = 64 << 10;
        let store = ShallowStore::new(budget);
        let c = cache(&store, 60_000);
        let fill = |k: &[u8]| match c.lookup(key(&c, k)) {
            Lookup::Fill(t) => t.complete(parts(300), Duration::ZERO),
            _ => panic!(),
        };
        fill(b"hot");
        for i in 0..2_000u32 {
            fill(&i.to_le_bytes());
            // The hot key is read all the time.
            if let Lookup::Fill(t) = c.lookup(key(&c, b"hot")) {
                t.complete(parts(300), Duration::ZERO);
            }
            assert!(store.used_bytes() <= budget, "{}", store.used_bytes());
        }
        assert!(matches!(c.lookup(key(&c, b"hot")), Lookup::Hit(..)));
        assert!(store.evictions.load(Ordering::Relaxed) > 1_000);
        assert_eq!(c.stats.bytes.load(Ordering::Relaxed), store.used_bytes());
        store.purge(&c);
        assert_eq!((store.used_bytes(), c.entries()), (0, 0));
        // Too large for its shard's share: not kept.
        fill(b"big");
        let Lookup::Fill(t) = c.lookup(key(&c, b"big2")) else {
            panic!()
        };
        t.complete(parts(budget), Duration::ZERO);
        assert_eq!(store.too_large.load(Ordering::Relaxed), 1);
    }
}
