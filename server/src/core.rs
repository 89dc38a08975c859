//! Shared state of one Larder process: storage, the dataflow graph (single writer, behind a
//! mutex that only writers take), the table registry, the caches, and status for `SHOW`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use larder_dataflow::{CacheId, Graph, ReaderHandle};
use larder_sql::plan::CachePlan;
use tokio::sync::Notify;
use tracing::warn;

use crate::storage::Storage;
use crate::tables::TableRegistry;

pub use larder_adapter::cache::ResultColumn;

/// One cache: its definition, its reader, and its state.
pub struct CacheEntry {
    pub name: String,
    pub query_id: String,
    /// The SELECT as the user wrote it.
    pub query: String,
    /// The normalized (parameterized) text the id is computed from.
    pub normalized: String,
    pub always: bool,
    pub table_oid: u32,
    pub table_schema: String,
    pub table_name: String,
    /// Names of the table's columns the query reads (for column privileges).
    pub columns_read: Vec<String>,
    pub plan: CachePlan,
    pub cache_id: CacheId,
    pub reader: ReaderHandle,
    pub columns: Vec<ResultColumn>,
    pub hits: AtomicU64,
    /// Why the cache does not serve right now (e.g. its table changed shape); `None` = serving.
    pub invalid: Mutex<Option<String>>,
    pub serving: AtomicBool,
}

impl CacheEntry {
    pub fn invalidate(&self, reason: &str) {
        self.serving.store(false, Ordering::SeqCst);
        *self.invalid.lock().expect("cache lock poisoned") = Some(reason.to_string());
    }

    pub fn invalid_reason(&self) -> Option<String> {
        self.invalid.lock().expect("cache lock poisoned").clone()
    }
}

/// Caches by query id. Written only by the controller (CREATE/DROP), read on every query.
#[derive(Default)]
pub struct CacheRegistry {
    by_id: RwLock<HashMap<String, Arc<CacheEntry>>>,
}

impl CacheRegistry {
    pub fn get(&self, query_id: &str) -> Option<Arc<CacheEntry>> {
        self.by_id
            .read()
            .expect("cache registry poisoned")
            .get(query_id)
            .cloned()
    }

    /// Whether any cache satisfies `f` (no allocation: on the query path).
    pub fn any(&self, f: impl Fn(&CacheEntry) -> bool) -> bool {
        self.by_id
            .read()
            .expect("cache registry poisoned")
            .values()
            .any(|c| f(c))
    }

    pub fn by_name_or_id(&self, name: &str) -> Option<Arc<CacheEntry>> {
        let map = self.by_id.read().expect("cache registry poisoned");
        map.get(name)
            .cloned()
            .or_else(|| map.values().find(|c| c.name == name).cloned())
    }

    pub fn insert(&self, entry: Arc<CacheEntry>) {
        self.by_id
            .write()
            .expect("cache registry poisoned")
            .insert(entry.query_id.clone(), entry);
    }

    pub fn remove(&self, query_id: &str) -> Option<Arc<CacheEntry>> {
        self.by_id
            .write()
            .expect("cache registry poisoned")
            .remove(query_id)
    }

    pub fn all(&self) -> Vec<Arc<CacheEntry>> {
        let mut v: Vec<_> = self
            .by_id
            .read()
            .expect("cache registry poisoned")
            .values()
            .cloned()
            .collect();
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
    /// Tables (upstream oids) that came online again: caches on them are rebuilt.
    pub rebuild: RebuildRequests,
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
    pub fn new(storage: Storage) -> Arc<Core> {
        let core = Core {
            storage,
            dataflow: Mutex::new(Graph::new()),
            tables: RwLock::new(TableRegistry::default()),
            caches: CacheRegistry::default(),
            status: Status::default(),
            output_overrides: RwLock::new(Vec::new()),
            search_path_defaults: RwLock::new(None),
            c_collation: AtomicBool::new(false),
            rebuild: RebuildRequests::default(),
        };
        Arc::new(core)
    }

    pub fn set_replication_status(&self, s: &str) {
        *self
            .status
            .replication
            .lock()
            .expect("status lock poisoned") = s.to_string();
    }

    pub fn set_last_error(&self, e: String) {
        *self.status.last_error.lock().expect("status lock poisoned") = Some(e);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.status.shutting_down.load(Ordering::SeqCst)
    }

    /// Stop serving every cache that reads the table; they never serve rows of an old shape.
    pub fn invalidate_caches_on(&self, table_oid: u32, reason: &str) {
        for cache in self.caches.all() {
            if cache.table_oid == table_oid {
                warn!(cache = %cache.name, %reason, "cache stops serving");
                cache.invalidate(reason);
            }
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
