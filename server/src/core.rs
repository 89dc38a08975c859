//! Shared state of one Larder process: storage, the dataflow graph (single writer, behind a
//! mutex that only writers take), the table registry, the caches, and status for `SHOW`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use larder_dataflow::{CacheId, Graph, ReaderHandle};
use larder_sql::plan::CachePlan;
use tokio::sync::mpsc;
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
    /// True when text ordering in the upstream database is bytewise (libc "C" collation).
    pub c_collation: AtomicBool,
    /// Tables (upstream oids) that came online again: caches on them are rebuilt.
    pub rebuild_tx: mpsc::UnboundedSender<u32>,
}

impl Core {
    pub fn new(storage: Storage) -> (Arc<Core>, mpsc::UnboundedReceiver<u32>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let core = Core {
            storage,
            dataflow: Mutex::new(Graph::new()),
            tables: RwLock::new(TableRegistry::default()),
            caches: CacheRegistry::default(),
            status: Status::default(),
            output_overrides: RwLock::new(Vec::new()),
            c_collation: AtomicBool::new(false),
            rebuild_tx: tx,
        };
        (Arc::new(core), rx)
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
        let _ = self.rebuild_tx.send(table_oid);
    }
}
