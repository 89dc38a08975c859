//! Shared state of one Larder process: storage, the dataflow graph (single writer, behind a
//! mutex that only writers take), the table registry, the caches, and status for `SHOW`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use larder_dataflow::{CacheId, Graph, ReaderHandle};
use larder_sql::plan::CachePlan;
use tokio::sync::Notify;
use tracing::warn;

use crate::ops::Ops;
use crate::storage::Storage;
use crate::tables::TableRegistry;

pub use larder_adapter::cache::{CachedRelation, ResultColumn};

/// One cache: its definition, its reader, and its state.
pub struct CacheEntry {
    pub name: String,
    pub query_id: String,
    /// The SELECT as the user wrote it.
    pub query: String,
    /// The normalized (parameterized) text the id is computed from.
    pub normalized: String,
    pub always: bool,
    /// Every table the query reads, each once, as it was when the cache was built.
    pub relations: Vec<CachedRelation>,
    pub plan: CachePlan,
    pub cache_id: CacheId,
    pub reader: ReaderHandle,
    pub columns: Vec<ResultColumn>,
    pub hits: HitCounter,
    /// [`Core::shape_epoch`] when the build began.
    pub built_epoch: u64,
    /// Why the cache does not serve right now (e.g. its table changed shape); `None` = serving.
    pub invalid: Mutex<Option<String>>,
    pub serving: AtomicBool,
    /// The process's operations state: the staleness bound each hit checks, and the
    /// counters a hit's duration and a retired cache's hits go to.
    pub ops: Arc<Ops>,
    /// Set once the cache left the registry and its hits moved to `ops.retired_hits`.
    pub retired: AtomicBool,
    /// For a partial cache: fills the keys reads find missing.
    pub filler: Option<Arc<crate::partial::HoleFiller>>,
    /// Dormant: evicted under `--memory-limit`, or restored and not filled yet (see
    /// `memory.rs`); its next read asks for it to be filled.
    pub evicted: AtomicBool,
    /// Where that read asks.
    pub refills: Arc<crate::memory::Refills>,
}

impl CacheEntry {
    /// The cache left the registry (dropped or replaced): its hits count on as retired ones,
    /// so `larder_queries_total` never goes down. Called after the registry published the
    /// map without it.
    pub fn retire(&self) {
        if !self.retired.swap(true, Ordering::AcqRel) {
            self.ops.retired_hits.add(self.hits.total());
        }
    }

    /// Stops serving because the memory loop evicts it (see `memory.rs`).
    pub fn evict(&self) {
        self.make_dormant(crate::memory::EVICTED_REASON);
    }

    /// Not serving, and not in the dataflow: the next read asks for the cache to be filled
    /// again, for `reason` (an eviction, or a restart that did not fill it yet).
    pub fn make_dormant(&self, reason: &str) {
        self.evicted.store(true, Ordering::SeqCst);
        self.invalidate(reason);
    }

    pub fn invalidate(&self, reason: &str) {
        self.serving.store(false, Ordering::SeqCst);
        *self.invalid.lock().expect("cache lock poisoned") = Some(reason.to_string());
    }

    pub fn invalid_reason(&self) -> Option<String> {
        self.invalid.lock().expect("cache lock poisoned").clone()
    }

    /// Whether the cache reads the table with this oid.
    pub fn reads(&self, table_oid: u32) -> bool {
        self.relations.iter().any(|r| r.oid == table_oid)
    }

    /// Whether the cache reads a table of this name (whatever its oid now).
    pub fn reads_named(&self, schema: &str, name: &str) -> bool {
        self.relations
            .iter()
            .any(|r| r.schema == schema && r.name == name)
    }
}

/// A hit count that sessions on different cores bump without sharing a cache line (one padded
/// counter per shard, a thread always using the same shard); reading sums them.
pub type HitCounter = larder_adapter::metrics::Counter;

/// Caches by query id. Written only by the controller (CREATE/DROP), read on every query.
///
/// The map is copy-on-write: a writer builds a new map and bumps `generation`. Readers keep
/// the map they last saw per thread (see [`CacheRegistry::snapshot`]), so a hit takes no lock
/// and writes no shared memory: one atomic load to see the generation has not moved.
pub struct CacheRegistry {
    id: u64,
    current: RwLock<Arc<CacheMap>>,
    generation: AtomicU64,
}

/// One published version of the registry: caches by query id, and the dependency index from
/// each table (oid) to the caches that read it.
#[derive(Clone, Default)]
struct CacheMap {
    by_id: HashMap<String, Arc<CacheEntry>>,
    by_table: HashMap<u32, Vec<Arc<CacheEntry>>>,
}

impl CacheMap {
    fn insert(&mut self, entry: Arc<CacheEntry>) -> Option<Arc<CacheEntry>> {
        let old = self
            .by_id
            .insert(entry.query_id.clone(), Arc::clone(&entry));
        if let Some(old) = &old {
            self.unindex(old);
        }
        for r in &entry.relations {
            let readers = self.by_table.entry(r.oid).or_default();
            if !readers.iter().any(|c| Arc::ptr_eq(c, &entry)) {
                readers.push(Arc::clone(&entry));
            }
        }
        old
    }

    fn remove(&mut self, query_id: &str) -> Option<Arc<CacheEntry>> {
        let old = self.by_id.remove(query_id)?;
        self.unindex(&old);
        Some(old)
    }

    fn unindex(&mut self, entry: &Arc<CacheEntry>) {
        for r in &entry.relations {
            if let Some(readers) = self.by_table.get_mut(&r.oid) {
                readers.retain(|c| !Arc::ptr_eq(c, entry));
                if readers.is_empty() {
                    self.by_table.remove(&r.oid);
                }
            }
        }
    }
}

/// Registries a thread keeps a snapshot of; more are rare (tests), older ones are dropped.
const THREAD_SNAPSHOTS_MAX: usize = 4;

thread_local! {
    /// (registry id, generation, map) per registry this thread has read.
    static SNAPSHOTS: std::cell::RefCell<Vec<(u64, u64, Arc<CacheMap>)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

impl Default for CacheRegistry {
    fn default() -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        CacheRegistry {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            current: RwLock::new(Arc::new(CacheMap::default())),
            generation: AtomicU64::new(0),
        }
    }
}

impl CacheRegistry {
    /// The current map, from this thread's snapshot when nothing changed since.
    fn snapshot(&self) -> Arc<CacheMap> {
        let generation = self.generation.load(Ordering::Acquire);
        SNAPSHOTS.with(|cell| {
            let mut snaps = cell.borrow_mut();
            if let Some(i) = snaps.iter().position(|(id, _, _)| *id == self.id) {
                if snaps[i].1 == generation {
                    return Arc::clone(&snaps[i].2);
                }
                snaps.remove(i);
            }
            // Read the generation again under the lock: the map and it change together.
            let (generation, map) = {
                let current = self.current.read().expect("cache registry poisoned");
                (
                    self.generation.load(Ordering::Acquire),
                    Arc::clone(&current),
                )
            };
            if snaps.len() == THREAD_SNAPSHOTS_MAX {
                snaps.remove(0);
            }
            snaps.push((self.id, generation, Arc::clone(&map)));
            map
        })
    }

    /// Applies `f` to a copy of the map and publishes it.
    fn update<R>(&self, f: impl FnOnce(&mut CacheMap) -> R) -> R {
        let mut current = self.current.write().expect("cache registry poisoned");
        let mut map = CacheMap::clone(&current);
        let out = f(&mut map);
        *current = Arc::new(map);
        self.generation.fetch_add(1, Ordering::Release);
        out
    }

    pub fn get(&self, query_id: &str) -> Option<Arc<CacheEntry>> {
        self.snapshot().by_id.get(query_id).cloned()
    }

    /// Whether any cache satisfies `f` (no allocation: on the query path).
    pub fn any(&self, f: impl Fn(&CacheEntry) -> bool) -> bool {
        self.snapshot().by_id.values().any(|c| f(c))
    }

    /// The caches that read the table with this oid (from the dependency index).
    pub fn reading(&self, table_oid: u32) -> Vec<Arc<CacheEntry>> {
        self.snapshot()
            .by_table
            .get(&table_oid)
            .cloned()
            .unwrap_or_default()
    }

    pub fn by_name_or_id(&self, name: &str) -> Option<Arc<CacheEntry>> {
        let map = self.snapshot();
        map.by_id
            .get(name)
            .cloned()
            .or_else(|| map.by_id.values().find(|c| c.name == name).cloned())
    }

    pub fn insert(&self, entry: Arc<CacheEntry>) {
        let same = Arc::clone(&entry);
        if let Some(old) = self.update(|map| map.insert(entry)) {
            // Publishing an entry announced earlier puts the same one back: it stays.
            if !Arc::ptr_eq(&old, &same) {
                old.retire();
            }
        }
    }

    /// Puts `new` in place of `old` if `old` is still the one registered under its query id
    /// (it was not dropped or replaced meanwhile); returns whether it did.
    pub fn replace_if_same(&self, old: &Arc<CacheEntry>, new: Arc<CacheEntry>) -> bool {
        let replaced = self.update(|map| {
            if map
                .by_id
                .get(&old.query_id)
                .is_some_and(|e| Arc::ptr_eq(e, old))
            {
                map.insert(new)
            } else {
                None
            }
        });
        match replaced {
            Some(gone) => {
                gone.retire();
                true
            }
            None => false,
        }
    }

    /// Removes `entry` if it is still the one registered under its query id.
    pub fn remove_if_same(&self, entry: &Arc<CacheEntry>) {
        let removed = self.update(|map| {
            if map
                .by_id
                .get(&entry.query_id)
                .is_some_and(|e| Arc::ptr_eq(e, entry))
            {
                map.remove(&entry.query_id)
            } else {
                None
            }
        });
        if let Some(old) = removed {
            old.retire();
        }
    }

    pub fn remove(&self, query_id: &str) -> Option<Arc<CacheEntry>> {
        let old = self.update(|map| map.remove(query_id));
        if let Some(old) = &old {
            old.retire();
        }
        old
    }

    pub fn all(&self) -> Vec<Arc<CacheEntry>> {
        let mut v: Vec<_> = self.snapshot().by_id.values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}

/// Where a new session's `search_path` comes from when its start-up packet does not set it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SearchPathDefaults {
    /// The server's own default (configuration file or built in).
    pub server: String,
    /// `ALTER ROLE/DATABASE ... SET search_path`: (role, database, value), "" = any.
    pub settings: Vec<(String, String, String)>,
}

impl SearchPathDefaults {
    /// The value a new session of `user` in `database` starts with: the most specific setting
    /// wins (role in database, role, database, all), as Postgres applies them.
    pub fn for_session(&self, user: &str, database: &str) -> &str {
        let find = |r: &str, d: &str| {
            self.settings
                .iter()
                .find(|(sr, sd, _)| sr == r && sd == d)
                .map(|(_, _, v)| v.as_str())
        };
        find(user, database)
            .or_else(|| find(user, ""))
            .or_else(|| find("", database))
            .or_else(|| find("", ""))
            .unwrap_or(&self.server)
    }
}

#[derive(Default)]
pub struct Status {
    /// End LSN of the last transaction applied to storage and the dataflow.
    pub applied_lsn: AtomicU64,
    pub replication: Mutex<String>,
    pub last_error: Mutex<Option<String>>,
    pub shutting_down: AtomicBool,
    /// Times the change stream was started again after it ended or failed to apply.
    pub restarts: AtomicU64,
    /// The emergency switch: false sends every query upstream (`ALTER LARDER SET caching`,
    /// `--caching`).
    pub caching_on: AtomicBool,
    /// `--memory-limit` in bytes (0: none).
    pub memory_limit_bytes: AtomicU64,
    /// The replicator holds the dataflow lock to apply a transaction (which may take a
    /// while): a read that finds a hole does not wait for it (see `partial.rs`).
    pub applying: AtomicBool,
    /// The replicator is waiting for the dataflow lock: a cache's fill lets it go first
    /// (see `controller/build.rs`), since the lock is not fair.
    pub apply_waiting: AtomicBool,
}

/// Sets [`Status::applying`] while alive.
pub struct Applying<'a>(&'a AtomicBool);

impl<'a> Applying<'a> {
    pub fn new(flag: &'a AtomicBool) -> Applying<'a> {
        flag.store(true, Ordering::Release);
        Applying(flag)
    }
}

impl Drop for Applying<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Injected failures for tests (`--failpoint-apply-table`, hidden).
#[derive(Default)]
pub struct Failpoints {
    /// Applying a transaction that writes to a table of this name fails once per commit
    /// position.
    pub apply_table: Option<String>,
    /// Commit positions already failed once.
    pub apply_failed_at: Mutex<Vec<u64>>,
}

pub struct Core {
    pub storage: Storage,
    pub dataflow: Mutex<Graph>,
    pub tables: RwLock<TableRegistry>,
    pub caches: CacheRegistry,
    pub status: Status,
    /// `(role, database)` pairs ("" = any) whose defaults change float or bytea output.
    pub output_overrides: RwLock<Vec<(String, String)>>,
    /// `search_path` defaults sessions start with; `None` until first read.
    pub search_path_defaults: RwLock<Option<SearchPathDefaults>>,
    /// True when text ordering in the upstream database is bytewise (libc "C" collation).
    pub c_collation: AtomicBool,
    /// True once Larder installed its DDL event triggers upstream (the role is a superuser):
    /// the catalog watch then puts them back whenever a user's DDL removed them.
    pub ddl_triggers: AtomicBool,
    /// Tables (upstream oids) that came online again: caches on them are rebuilt.
    pub rebuild: RebuildRequests,
    /// Counts changes of replicated tables' shapes (altered, dropped, re-created). A prepared
    /// statement is not answered by a cache built after a shape change that followed its
    /// preparation: the client holds the old result description.
    pub shape_epoch: AtomicU64,
    pub failpoints: Failpoints,
    /// Operations: the staleness bound and the counters behind `/metrics`.
    pub ops: Arc<Ops>,
    /// Shallow (TTL) caches and their entries.
    pub shallow: ShallowRegistry,
    /// Partial caches' holes waiting for the filler thread.
    pub holes: Arc<crate::partial::HoleQueue>,
    /// Evicted caches a read asked for again.
    pub refills: Arc<crate::memory::Refills>,
}

/// The shallow caches by query id, and the store their entries share.
pub struct ShallowRegistry {
    pub store: Arc<larder_adapter::shallow::ShallowStore>,
    by_id: RwLock<HashMap<String, Arc<larder_adapter::shallow::ShallowCache>>>,
}

impl Default for ShallowRegistry {
    fn default() -> Self {
        ShallowRegistry {
            store: larder_adapter::shallow::ShallowStore::new(usize::MAX),
            by_id: RwLock::default(),
        }
    }
}

impl ShallowRegistry {
    pub fn get(&self, query_id: &str) -> Option<Arc<larder_adapter::shallow::ShallowCache>> {
        self.by_id
            .read()
            .expect("shallow lock poisoned")
            .get(query_id)
            .cloned()
    }

    pub fn by_name_or_id(&self, name: &str) -> Option<Arc<larder_adapter::shallow::ShallowCache>> {
        let map = self.by_id.read().expect("shallow lock poisoned");
        map.get(name)
            .or_else(|| map.values().find(|c| c.name == name))
            .cloned()
    }

    pub fn all(&self) -> Vec<Arc<larder_adapter::shallow::ShallowCache>> {
        let mut all: Vec<_> = self
            .by_id
            .read()
            .expect("shallow lock poisoned")
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    pub fn insert(&self, cache: Arc<larder_adapter::shallow::ShallowCache>) {
        self.by_id
            .write()
            .expect("shallow lock poisoned")
            .insert(cache.query_id.clone(), cache);
    }

    /// Removes the cache and frees its entries.
    pub fn remove(&self, query_id: &str) -> Option<Arc<larder_adapter::shallow::ShallowCache>> {
        let removed = self
            .by_id
            .write()
            .expect("shallow lock poisoned")
            .remove(query_id)?;
        self.store.purge(&removed);
        Some(removed)
    }

    /// Whether a shallow cache reads a relation of this name.
    pub fn reads_relation_named(&self, name: &str) -> bool {
        self.by_id
            .read()
            .expect("shallow lock poisoned")
            .values()
            .any(|c| c.relations.iter().any(|r| r.name == name))
    }
}

/// Most table oids waiting for a cache rebuild; beyond it the requests collapse into one
/// "rebuild every table" request, so none is lost.
pub const REBUILD_PENDING_MAX: usize = 4_096;

/// What the cache rebuilder should look at next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rebuild {
    Table(u32),
    /// More tables asked than [`REBUILD_PENDING_MAX`]: look at every table.
    All,
}

/// Pending cache rebuild requests: a bounded, deduplicated set of table oids (in request
/// order) and a wake-up for the single consumer. A request is never lost: a repeated oid is
/// already pending, and when the set is full the requests collapse into [`Rebuild::All`].
#[derive(Default)]
pub struct RebuildRequests {
    pending: Mutex<PendingRebuilds>,
    notify: Notify,
}

#[derive(Default)]
struct PendingRebuilds {
    order: VecDeque<u32>,
    set: HashSet<u32>,
    all: bool,
}

impl RebuildRequests {
    pub fn request(&self, table_oid: u32) {
        {
            let mut p = self.pending.lock().expect("rebuild lock poisoned");
            if p.all || p.set.contains(&table_oid) {
                return;
            }
            if p.set.len() >= REBUILD_PENDING_MAX {
                warn!(
                    pending_max = REBUILD_PENDING_MAX,
                    "too many tables wait for a cache rebuild; every table will be looked at"
                );
                p.all = true;
                p.order.clear();
                p.set.clear();
            } else {
                p.set.insert(table_oid);
                p.order.push_back(table_oid);
            }
        }
        // Stores a permit when the consumer is not waiting, so no wake-up is lost.
        self.notify.notify_one();
    }

    /// The next request, without waiting.
    pub fn try_next(&self) -> Option<Rebuild> {
        let mut p = self.pending.lock().expect("rebuild lock poisoned");
        if std::mem::take(&mut p.all) {
            return Some(Rebuild::All);
        }
        let oid = p.order.pop_front()?;
        p.set.remove(&oid);
        Some(Rebuild::Table(oid))
    }

    /// Waits for the next request (one consumer).
    pub async fn next(&self) -> Rebuild {
        loop {
            if let Some(r) = self.try_next() {
                return r;
            }
            self.notify.notified().await;
        }
    }

    /// Requests waiting (tables; an "all" request counts as one).
    pub fn len(&self) -> usize {
        let p = self.pending.lock().expect("rebuild lock poisoned");
        p.order.len() + usize::from(p.all)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Core {
    /// Takes a cache's nodes out of the dataflow, with the secondary indexes only its joins
    /// read (blocks on the dataflow lock).
    pub fn leave_dataflow(&self, cache_id: larder_dataflow::CacheId) {
        let mut graph = self.dataflow.lock().expect("dataflow lock poisoned");
        let _ = graph.remove_cache(cache_id);
        if let Err(e) = self.storage.set_indexes(&graph.stored_indexes()) {
            tracing::warn!(error = %e, "dropping secondary indexes failed");
        }
    }

    pub fn new(storage: Storage, failpoints: Failpoints) -> Arc<Core> {
        Core::with_ops(storage, failpoints, Arc::new(Ops::default()))
    }

    pub fn with_ops(storage: Storage, failpoints: Failpoints, ops: Arc<Ops>) -> Arc<Core> {
        let core = Core {
            ops,
            storage,
            dataflow: Mutex::new(Graph::new()),
            tables: RwLock::new(TableRegistry::default()),
            caches: CacheRegistry::default(),
            status: Status {
                caching_on: AtomicBool::new(true),
                ..Status::default()
            },
            output_overrides: RwLock::new(Vec::new()),
            search_path_defaults: RwLock::new(None),
            c_collation: AtomicBool::new(false),
            ddl_triggers: AtomicBool::new(false),
            rebuild: RebuildRequests::default(),
            failpoints,
            shape_epoch: AtomicU64::new(0),
            shallow: ShallowRegistry::default(),
            holes: Arc::default(),
            refills: Arc::default(),
        };
        Arc::new(core)
    }

    pub fn set_replication_status(&self, s: &str) {
        *self
            .status
            .replication
            .lock()
            .expect("status lock poisoned") = s.to_string();
        self.ops.freshness.set_replication(s);
    }

    /// What replication is doing, as `SHOW LARDER STATUS` says it.
    pub fn replication_status(&self) -> String {
        self.status
            .replication
            .lock()
            .expect("status lock poisoned")
            .clone()
    }

    pub fn set_last_error(&self, e: String) {
        *self.status.last_error.lock().expect("status lock poisoned") = Some(e);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.status.shutting_down.load(Ordering::SeqCst)
    }

    /// Stop serving every cache that reads the table; they never serve rows of an old shape.
    pub fn invalidate_caches_on(&self, table_oid: u32, reason: &str) {
        for cache in self.caches.reading(table_oid) {
            warn!(cache = %cache.name, %reason, "cache stops serving");
            cache.invalidate(reason);
        }
    }

    pub fn request_rebuild(&self, table_oid: u32) {
        self.rebuild.request(table_oid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebuild_requests_are_deduplicated_bounded_and_never_lost() {
        let r = RebuildRequests::default();
        r.request(7);
        r.request(8);
        r.request(7);
        assert_eq!(r.len(), 2);
        assert_eq!(r.try_next(), Some(Rebuild::Table(7)));
        r.request(7); // taken, so pending again
        assert_eq!(r.try_next(), Some(Rebuild::Table(8)));
        assert_eq!(r.try_next(), Some(Rebuild::Table(7)));
        assert_eq!(r.try_next(), None);

        for oid in 0..REBUILD_PENDING_MAX as u32 {
            r.request(oid);
        }
        assert_eq!(r.len(), REBUILD_PENDING_MAX);
        r.request(u32::MAX); // one too many: collapses into "all"
        assert_eq!(r.len(), 1);
        r.request(3);
        assert_eq!(r.try_next(), Some(Rebuild::All));
        assert_eq!(r.try_next(), None);
    }

    #[tokio::test]
    async fn a_request_made_before_waiting_wakes_the_consumer() {
        let r = Arc::new(RebuildRequests::default());
        r.request(5);
        assert_eq!(r.try_next(), Some(Rebuild::Table(5)));
        // The permit of that request is still stored; the consumer must not return spuriously.
        let waiter = {
            let r = r.clone();
            tokio::spawn(async move { r.next().await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        r.request(6);
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("task");
        assert_eq!(got, Rebuild::Table(6));
    }
}
