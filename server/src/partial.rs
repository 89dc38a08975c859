//! Filling partial caches' holes from storage, and evicting their keys under
//! `--memory-limit`.
//!
//! A read that finds a hole ([`ReadError::Holes`](larder_dataflow::ReadError::Holes)) fills
//! it at once (a primary-key lookup in RocksDB per key, then the row through the cache's
//! filters and projections), and is answered from the cache; it waits for the dataflow lock
//! behind other fills and short holds. When replication holds the lock to apply a
//! transaction, the read waits up to 5 ms; past that it goes upstream and the keys are queued
//! for the filler thread, which fills them as soon as it gets the lock. Either way the lookup and the fill
//! happen under the lock that also covers applying a transaction to storage and the graph, so
//! a fill sees storage exactly as of the graph's last applied transaction (see
//! `dataflow/src/graph/partial.rs`).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use larder_dataflow::{CacheId, Graph, Lookup, NoStoredRows, PartialKey, StoredRows};
use larder_sql::Value;
use tracing::{debug, warn};

use crate::core::Core;
use crate::storage::{StorageError, StoredTable};

/// How long a read that finds a hole waits for a transaction being applied, at most, before
/// it goes upstream (its fill is then queued), and the step of that wait.
const FILL_WAIT_MAX_US: u64 = 5_000;
const FILL_WAIT_STEP_US: u64 = 250;

/// Rows a partial cache's warm-up fills per hold of the dataflow lock.
const WARM_CHUNK_ROWS: usize = 2048;

/// Holes waiting for the filler thread, at most (more are dropped: their next read asks
/// again).
const QUEUE_KEYS_MAX: usize = 16_384;
/// Keys filled per hold of the dataflow lock by the filler thread.
const FILL_BATCH_KEYS: usize = 512;

/// What a partial cache needs to fill its holes.
pub struct HoleFiller {
    core: Weak<Core>,
    pub(crate) cache: CacheId,
    key: PartialKey,
    table: StoredTable,
    /// Keys filled from storage so far.
    pub filled: std::sync::atomic::AtomicU64,
}

impl HoleFiller {
    pub fn new(core: &Arc<Core>, cache: CacheId, key: PartialKey, table: StoredTable) -> Self {
        HoleFiller {
            core: Arc::downgrade(core),
            cache,
            key,
            table,
            filled: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Fills `keys` now if the dataflow lock is free (true), else queues them (false).
    pub fn fill_or_queue(self: &Arc<Self>, keys: Vec<Vec<Value>>) -> bool {
        let Some(core) = self.core.upgrade() else {
            return false;
        };
        // Other holders of the lock (fills, evictions, a cache's fill in chunks) hold it
        // briefly: wait for them. A transaction being applied may hold it long: wait at most
        // FILL_WAIT_MAX_US for it, then queue.
        let mut waited_us = 0;
        let graph = loop {
            match core.dataflow.try_lock() {
                Ok(graph) => break Some(graph),
                Err(_) if !core.status.applying.load(Ordering::Acquire) => {
                    break Some(core.dataflow.lock().expect("dataflow lock poisoned"))
                }
                Err(_) if waited_us >= FILL_WAIT_MAX_US => break None,
                Err(_) => {
                    std::thread::sleep(Duration::from_micros(FILL_WAIT_STEP_US));
                    waited_us += FILL_WAIT_STEP_US;
                }
            }
        };
        let filled = match graph {
            Some(mut graph) => match self.fill_locked(&core, &mut graph, keys) {
                Ok(()) => true,
                Err(e) => {
                    warn!(error = %e, "filling a partial cache's keys");
                    false
                }
            },
            None => {
                core.holes.push(Arc::clone(self), keys);
                false
            }
        };
        filled
    }

    /// The key's values as the key columns store them: a read's key matches a row when they
    /// are SQL-equal (`1.0` equals the integer 1), while storage finds a row by its
    /// encoding. `None` when no stored value can equal them (NULL, `1.5` for an integer).
    fn stored_key(&self, key: &[Value]) -> Option<Vec<Value>> {
        use larder_sql::value::KeyPart;
        use larder_sql::SqlType;
        self.key
            .columns
            .iter()
            .zip(key)
            .map(|(&c, v)| {
                let ty = &self.table.schema.columns.get(c)?.ty;
                match (ty, v) {
                    (_, Value::Null) => None,
                    (SqlType::Int2 | SqlType::Int4 | SqlType::Int8, v) => {
                        match KeyPart::from_value(v) {
                            KeyPart::Int(i) => Some(Value::Int(i)),
                            _ => None,
                        }
                    }
                    (SqlType::Text, Value::Text(_))
                    | (SqlType::Bool, Value::Bool(_))
                    | (SqlType::Uuid, Value::Uuid(_))
                    | (SqlType::Date, Value::Date(_))
                    | (SqlType::Timestamp, Value::Timestamp(_))
                    | (SqlType::TimestampTz, Value::TimestampTz(_)) => Some(v.clone()),
                    _ => None,
                }
            })
            .collect()
    }

    /// Looks the keys' rows up and fills them; the caller holds the dataflow lock.
    fn fill_locked(
        &self,
        core: &Core,
        graph: &mut Graph,
        keys: Vec<Vec<Value>>,
    ) -> Result<(), StorageError> {
        let width = self.table.schema.columns.len();
        self.filled.fetch_add(keys.len() as u64, Ordering::Relaxed);
        let mut fills = Vec::with_capacity(keys.len());
        // Storage as of the graph's last applied transaction (the caller holds the lock):
        // what an index lookup reads, and what a join's stored side looks up. A point lookup
        // into a cache without a stored join needs no snapshot.
        let snapshot = (self.key.by_index || graph.cache_reads_storage(self.cache))
            .then(|| core.storage.snapshot());
        let view = snapshot.as_ref().map(|s| core.storage.stored_view(s));
        let storage: &dyn StoredRows = match &view {
            Some(view) => view,
            None => &NoStoredRows,
        };
        if self.key.by_index {
            // Every row with the key, through its secondary index (complete and kept by
            // every transaction since the cache was added).
            for key in keys {
                // A key no stored value equals (NULL, 1.5 for an integer) has no rows.
                let rows = match self.stored_key(&key) {
                    None => Vec::new(),
                    Some(stored) => {
                        let lookup = Lookup::Index {
                            columns: &self.key.columns,
                            values: &stored,
                        };
                        storage
                            .rows(self.key.table, lookup, usize::MAX)
                            .map_err(|e| StorageError::Corrupt {
                                what: "a partial cache's index lookup".into(),
                                detail: e.to_string(),
                            })?
                    }
                };
                fills.push((key, rows));
            }
        } else {
            for key in keys {
                let row = match self.stored_key(&key) {
                    None => None,
                    Some(stored) => {
                        let probe = self.key.probe(width, &stored);
                        core.storage.get(&self.table, &probe)?
                    }
                };
                fills.push((key, row.map(|r| (r, 1)).into_iter().collect()));
            }
        }
        if let Err(e) = graph.fill_keys(self.cache, fills, storage) {
            // The cache was removed meanwhile: nothing to fill.
            debug!(error = %e, "partial cache gone before its fill");
        }
        Ok(())
    }
}

/// One queued hole: its cache's filler and the key.
type Hole = (Arc<HoleFiller>, Vec<Value>);

/// Holes queued for the filler thread.
#[derive(Default)]
pub struct HoleQueue {
    queue: Mutex<VecDeque<Hole>>,
    wake: Condvar,
}

impl HoleQueue {
    fn push(&self, filler: Arc<HoleFiller>, keys: Vec<Vec<Value>>) {
        let mut q = self.queue.lock().expect("hole queue poisoned");
        for key in keys {
            if q.len() >= QUEUE_KEYS_MAX {
                break;
            }
            q.push_back((Arc::clone(&filler), key));
        }
        self.wake.notify_one();
    }
}

/// The filler thread: fills queued holes, a batch per hold of the dataflow lock. It holds the
/// core only while it fills (so the core is never dropped on this thread), and ends once the
/// core is gone or shutting down.
pub fn run_filler(queue: Arc<HoleQueue>, core: Weak<Core>) {
    loop {
        let batch: Vec<Hole> = {
            let mut q = queue.queue.lock().expect("hole queue poisoned");
            while q.is_empty() {
                if core.strong_count() == 0 {
                    return;
                }
                q = queue
                    .wake
                    .wait_timeout(q, Duration::from_secs(1))
                    .expect("hole queue poisoned")
                    .0;
            }
            let n = q.len().min(FILL_BATCH_KEYS);
            q.drain(..n).collect()
        };
        let Some(core) = core.upgrade() else { return };
        if core.is_shutting_down() {
            return;
        }
        let mut graph = core.dataflow.lock().expect("dataflow lock poisoned");
        // Group by cache (a fill publishes its reader once).
        let mut by_cache: Vec<(Arc<HoleFiller>, Vec<Vec<Value>>)> = Vec::new();
        for (filler, key) in batch {
            match by_cache.iter_mut().find(|(f, _)| Arc::ptr_eq(f, &filler)) {
                Some((_, keys)) => keys.push(key),
                None => by_cache.push((filler, vec![key])),
            }
        }
        for (filler, keys) in by_cache {
            if let Err(e) = filler.fill_locked(&core, &mut graph, keys) {
                warn!(error = %e, "filling a partial cache's keys");
            }
        }
    }
}

/// Evicts partial caches' keys until the caches' accounted bytes are within `limit_bytes`
/// (or nothing more can go); returns the keys evicted.
pub fn evict_within(core: &Core, limit_bytes: u64) -> usize {
    let mut evicted = 0;
    for _ in 0..64 {
        let used = cache_bytes(core);
        if used <= limit_bytes {
            break;
        }
        // Bytes per held key of the partial caches, to size this pass.
        let (keys, bytes) = core
            .caches
            .all()
            .iter()
            .filter(|c| c.reader.is_partial())
            .filter_map(|c| c.reader.stats())
            .fold((0u64, 0u64), |(k, b), s| (k + s.keys, b + s.bytes));
        if keys == 0 {
            break;
        }
        let per_key = (bytes / keys).max(1);
        let want =
            usize::try_from((used - limit_bytes).div_ceil(per_key) + 16).unwrap_or(usize::MAX);
        let n = {
            let mut graph = core.dataflow.lock().expect("dataflow lock poisoned");
            graph.evict_keys(want.min(1 << 20))
        };
        evicted += n;
        if n == 0 {
            break;
        }
    }
    evicted
}

/// Bytes the deep caches hold: operator state and readers.
pub fn cache_bytes(core: &Core) -> u64 {
    let state = core
        .dataflow
        .lock()
        .expect("dataflow lock poisoned")
        .state_bytes();
    let readers: u64 = core
        .caches
        .all()
        .iter()
        .map(|c| c.reader.stats().map_or(0, |s| s.bytes))
        .sum();
    state + readers
}

/// Warms a new (or restored) partial cache up in the background: fills its keys from the
/// table, a chunk per hold of the dataflow lock (read under the lock, as every fill), while
/// the caches stay below three quarters of `--memory-limit`. Reads meanwhile fill what they
/// need on demand; keys already held are skipped. Stops when the cache goes. Holds the core
/// only while it fills a chunk (so the core is never dropped on this thread).
pub fn warm_up(core: Weak<Core>, entry: Weak<crate::core::CacheEntry>) {
    let mut after: Option<Vec<u8>> = None;
    let mut filled = 0u64;
    loop {
        let Some(core) = core.upgrade() else { return };
        if core.is_shutting_down() {
            return;
        }
        let Some(entry) = entry.upgrade() else { return };
        if entry.retired.load(Ordering::Acquire) {
            return;
        }
        let Some(filler) = entry.filler.clone() else {
            return;
        };
        drop(entry);
        if filler.key.by_index {
            // A key's rows are spread over the table: they fill on demand only.
            return;
        }
        let limit = core.status.memory_limit_bytes.load(Ordering::Relaxed);
        if limit > 0 && cache_bytes(&core) >= limit / 4 * 3 {
            debug!(filled, "partial cache warm-up stops at the memory limit");
            return;
        }
        let next = {
            let mut graph = core.dataflow.lock().expect("dataflow lock poisoned");
            let scanned =
                core.storage
                    .scan_after(filler.table.id, after.as_deref(), WARM_CHUNK_ROWS);
            let (rows, next) = match scanned {
                Ok(r) => r,
                Err(e) => {
                    warn!(error = %e, "warming a partial cache up");
                    return;
                }
            };
            filled += rows.len() as u64;
            let fills = rows
                .into_iter()
                .map(|row| {
                    let key: Vec<Value> = filler
                        .key
                        .columns
                        .iter()
                        .map(|&c| row.get(c).cloned().unwrap_or(Value::Null))
                        .collect();
                    (key, vec![(row, 1)])
                })
                .collect();
            let snapshot = core.storage.snapshot();
            if let Err(e) =
                graph.fill_keys(filler.cache, fills, &core.storage.stored_view(&snapshot))
            {
                // The cache was removed meanwhile.
                debug!(error = %e, "partial cache gone during its warm-up");
                return;
            }
            next
        };
        match next {
            Some(k) => after = Some(k),
            None => {
                debug!(filled, "partial cache warmed up");
                return;
            }
        }
        // Let reads and replication have the lock between chunks.
        std::thread::yield_now();
    }
}
