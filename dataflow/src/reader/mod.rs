//! Readers: the materialized end of a cache, read concurrently with the single writer.
//!
//! State lives in a `left-right` pair: the writer (the graph) appends [`ReaderOp`]s to the
//! hidden copy and swaps on `publish`; readers enter the visible copy without taking any
//! lock and never wait for the writer (the writer waits for readers to leave the old copy).
//! Nothing is stored twice: a key of one row is one encoded allocation both copies point at
//! (`compact.rs`; the second copy adopts what the first built, see `state.rs`), and the rows
//! of other keys are shared between the copies through `Arc`.
//!
//! A `left_right::ReadHandle` is not `Sync`, and creating one takes a mutex that `publish`
//! also holds. [`ReaderHandle`] is therefore a cheap `Arc` around a `ReadHandleFactory`, and
//! each thread keeps its own `ReadHandle` per reader in a thread-local map: a cache hit costs a
//! thread-local hash lookup and an epoch increment, no lock. Entries whose writer is gone are
//! swept whenever a thread creates a new entry, which bounds the map by the live readers.
//!
//! Per key, rows are a multiset (`row -> count`) in a `BTreeMap` ordered by the plan's
//! `ORDER BY` with a structural tie-break, so `LIMIT` is applied at read time and stays
//! correct under deletes. Poison (rows whose evaluation failed) is counted per key and for
//! the whole reader, and clears when the offending rows are deleted. A delete that finds no
//! row drives a count negative; such a key is treated as poisoned too, because the cache can
//! no longer vouch for it.

use std::cell::RefCell;
use std::cmp::Ordering;
use std::collections::{btree_map, BTreeMap, BTreeSet, BinaryHeap};

use rustc_hash::{FxHashMap, FxHashSet};
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;

use larder_sql::plan::{OrderKey, OutputColumn};
use larder_sql::value::{Key, Row, Value};
use left_right::{Absorb, ReadHandle, ReadHandleFactory};

use crate::empty_row::EmptyRow;
use crate::error::ReadError;
use crate::eval::CompiledExpr;
use crate::key_rows::RowSet;
use crate::order::SortedRow;
use crate::range::{Indexed, RangeRead, RangeValue, Visit};
use larder_sql::plan::RangeFamily;

/// Default bound on the number of key combinations one read may expand to.
pub const READ_KEY_COMBINATIONS_MAX: usize = 10_000;

/// Rows of one reader key. Kept small: a reader holds one per key in each of its two copies,
/// so what most keys never have (poison, a range index) lives behind one pointer.
#[derive(Clone, Debug, Default)]
struct KeyRows {
    /// Row -> multiplicity. Counts are never zero; negative counts mark unmatched deletes.
    rows: RowSet,
    /// Poison counts and the range index, when the key has any.
    extra: Option<Box<KeyExtra>>,
}

/// What few keys have. Dropped when back to its default.
#[derive(Clone, Debug, Default)]
struct KeyExtra {
    /// Net count of rows that failed to evaluate and map to this key.
    poison: i64,
    /// Number of rows whose count is negative.
    negative: u32,
    /// With a range read, once the key has rows: its range index.
    range: Option<RangeRows>,
}

impl KeyExtra {
    fn is_default(&self) -> bool {
        self.poison == 0 && self.negative == 0 && self.range.is_none()
    }
}

/// A key's range index, or `none` when it has no rows.
fn range_of<'a>(src: &'a KeyRows, none: &'a RangeRows) -> &'a RangeRows {
    src.extra
        .as_deref()
        .and_then(|e| e.range.as_ref())
        .unwrap_or(none)
}

/// The range index of one key's rows.
#[derive(Clone, Debug, Default)]
struct RangeRows {
    /// The rows in `rows` by the indexed column's value (NULLs left out).
    index: BTreeMap<RangeValue, BTreeSet<SortedRow>>,
    /// Rows whose value the index cannot place (visited by every read).
    unplaced: BTreeSet<SortedRow>,
}

impl KeyRows {
    /// Keeps the range index in step with `rows`: a row is indexed while its count is not 0.
    fn reindex(&mut self, place: Indexed, row: SortedRow, was: bool, is: bool) {
        if was == is || matches!(place, Indexed::Null) {
            return;
        }
        let extra = self.extra.get_or_insert_with(Box::default);
        let range = extra.range.get_or_insert_with(RangeRows::default);
        match (place, is) {
            (Indexed::At(value), true) => {
                range.index.entry(value).or_default().insert(row);
            }
            (Indexed::At(value), false) => {
                if let btree_map::Entry::Occupied(mut o) = range.index.entry(value) {
                    o.get_mut().remove(&row);
                    if o.get().is_empty() {
                        o.remove();
                    }
                }
            }
            (Indexed::Unplaced, true) => {
                range.unplaced.insert(row);
            }
            (Indexed::Unplaced, false) => {
                range.unplaced.remove(&row);
            }
            (Indexed::Null, _) => {}
        }
        if range.index.is_empty() && range.unplaced.is_empty() {
            extra.range = None;
        }
        self.tidy();
    }

    /// Changes the extra counts (created if needed, dropped when back to nothing).
    fn with_extra(&mut self, f: impl FnOnce(&mut KeyExtra)) {
        f(self.extra.get_or_insert_with(Box::default));
        self.tidy();
    }

    fn tidy(&mut self) {
        if self.extra.as_deref().is_some_and(KeyExtra::is_default) {
            self.extra = None;
        }
    }

    fn poison(&self) -> i64 {
        self.extra.as_deref().map_or(0, |e| e.poison)
    }

    fn is_poisoned(&self) -> bool {
        self.extra
            .as_deref()
            .is_some_and(|e| e.poison != 0 || e.negative != 0)
    }

    fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.poison() == 0
    }

    /// One copy of `row` (the computed row of a key without rows).
    fn single(row: SortedRow) -> KeyRows {
        KeyRows {
            rows: RowSet::single(row),
            extra: None,
        }
    }
}

/// The read side of a plan: everything a read needs besides the data.
#[derive(Debug)]
pub(crate) struct ReadSpec {
    pub(crate) key_params: Vec<usize>,
    /// Slots the cache was computed for: a read must hold exactly this one value there.
    pub(crate) fixed_params: Vec<(usize, Vec<Value>)>,
    /// Key slots a read must give exactly one value.
    pub(crate) single_value_params: Vec<usize>,
    /// How to compute the row of a key without rows (`CachePlan::empty_key_row`).
    pub(crate) empty_row: Option<EmptyRow>,
    /// The indexed range of a range read (`CachePlan::range`).
    pub(crate) range: Option<RangeRead>,
    pub(crate) residual: Option<CompiledExpr>,
    pub(crate) order: Arc<[OrderKey]>,
    pub(crate) offset: usize,
    pub(crate) limit: Option<usize>,
    pub(crate) output: Vec<OutputColumn>,
    pub(crate) key_combinations_max: usize,
    /// The reader holds only keys filled on demand (a hole must be told from an empty key).
    pub(crate) partial: bool,
    /// How a read keys its parameters (as the writer keys rows).
    pub(crate) collations: KeyCollations,
}

#[derive(Debug)]
struct Shared {
    /// Process-unique id: the thread-local handle map is keyed by it.
    id: u64,
    factory: ReadHandleFactory<ReaderState>,
    spec: ReadSpec,
    /// Partial readers: per hash bucket of keys, the eviction epoch in which a key of it was
    /// last read (a clock's reference bits, shared by the keys of a bucket).
    touched: Box<[AtomicU32]>,
    epoch: AtomicU32,
}

/// Buckets of [`Shared::touched`].
const TOUCHED_BUCKETS: usize = 4096;

fn bucket_of(key: &Key) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = rustc_hash::FxHasher::default();
    key.hash(&mut h);
    (h.finish() as usize) % TOUCHED_BUCKETS
}

static NEXT_READER_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static HANDLES: RefCell<FxHashMap<u64, Rc<ReadHandle<ReaderState>>>> =
        RefCell::new(FxHashMap::default());
}

/// Counters describing a reader's contents (for `SHOW CACHES` and metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReaderStats {
    pub ready: bool,
    /// Distinct keys held (including keys that only carry poison).
    pub keys: u64,
    /// Rows held, counted with multiplicity.
    pub rows: u64,
    /// Estimated bytes of the rows held, both copies of the left-right pair (values and
    /// per-row overhead; the operators' own state below the reader is not included).
    pub bytes: u64,
    pub poisoned_keys: u64,
    /// The whole reader is poisoned (a row's key could not be computed).
    pub poisoned_all: bool,
}

/// A cheap, cloneable, thread-safe handle for reading one cache.
#[derive(Clone, Debug)]
pub struct ReaderHandle {
    shared: Arc<Shared>,
}

impl ReaderHandle {
    pub(crate) fn new(factory: ReadHandleFactory<ReaderState>, spec: ReadSpec) -> ReaderHandle {
        ReaderHandle {
            shared: Arc::new(Shared {
                id: NEXT_READER_ID.fetch_add(1, AtomicOrdering::Relaxed),
                touched: if spec.partial {
                    (0..TOUCHED_BUCKETS).map(|_| AtomicU32::new(0)).collect()
                } else {
                    Box::default()
                },
                epoch: AtomicU32::new(1),
                factory,
                spec,
            }),
        }
    }

    /// Output columns of every row [`read`](Self::read) returns.
    pub fn output_columns(&self) -> &[OutputColumn] {
        &self.shared.spec.output
    }

    /// Whether the cache has been bootstrapped and published.
    pub fn is_ready(&self) -> bool {
        self.with_state(|s| s.ready).unwrap_or(false)
    }

    /// Current counters, or `None` once the cache was removed.
    pub fn stats(&self) -> Option<ReaderStats> {
        self.with_state(|s| ReaderStats {
            ready: s.ready,
            keys: s.key_count() as u64,
            rows: s.row_count(),
            bytes: s.bytes(),
            poisoned_keys: s.poisoned_keys,
            poisoned_all: s.poison_all != 0,
        })
        .ok()
    }

    /// Number of distinct keys held (0 once removed).
    pub fn key_count(&self) -> u64 {
        self.stats().map_or(0, |s| s.keys)
    }

    /// Number of rows held, with multiplicity (0 once removed).
    pub fn row_count(&self) -> u64 {
        self.stats().map_or(0, |s| s.rows)
    }

    /// Answers the query for `params` (one `Vec` per parameter slot; several values in a key
    /// slot mean an `IN` list). Returns rows of [`output_columns`](Self::output_columns).
    pub fn read(&self, params: &[Vec<Value>]) -> Result<Vec<Row>, ReadError> {
        let mut rows = Vec::new();
        self.read_into(params, &mut |row: &[Value], output: &[OutputColumn]| {
            rows.push(
                output
                    .iter()
                    .map(|c| row.get(c.column).cloned().unwrap_or(Value::Null))
                    .collect(),
            );
            Ok(())
        })?;
        Ok(rows)
    }

    /// Like [`read`](Self::read), but hands each result row to `sink` in order, as the
    /// reader holds it (all reader columns) with the output columns to take from it, without
    /// copying: a cache hit encodes straight from here. A `sink` error ends the read with
    /// [`ReadError::Sink`]. Returns the number of rows.
    pub fn read_into(
        &self,
        params: &[Vec<Value>],
        sink: &mut RowSink<'_>,
    ) -> Result<u64, ReadError> {
        let spec = &self.shared.spec;
        for (slot, values) in &spec.fixed_params {
            // Both lists are free of duplicates: equal lengths and inclusion make them equal
            // as sets (an IN list's order does not matter).
            let same = params.get(*slot).is_some_and(|read| {
                read.len() == values.len() && read.iter().all(|v| values.contains(v))
            });
            if !same {
                return Err(ReadError::OtherParameter { slot: *slot });
            }
        }
        for &slot in &spec.single_value_params {
            if params.get(slot).map_or(0, Vec::len) != 1 {
                return Err(ReadError::NotOneValue { slot });
            }
        }
        let keys = lookup_keys(spec, params)?;
        if spec.partial {
            let epoch = self.shared.epoch.load(AtomicOrdering::Relaxed);
            for l in &keys {
                self.shared.touched[bucket_of(&l.key)].store(epoch, AtomicOrdering::Relaxed);
            }
        }
        self.with_state(|state| read_state(spec, state, &keys, params, sink))?
    }

    /// Whether a key of a partial reader was read in this eviction epoch or the one before.
    pub fn recently_read(&self, key: &Key) -> bool {
        let Some(t) = self.shared.touched.get(bucket_of(key)) else {
            return false;
        };
        let epoch = self.shared.epoch.load(AtomicOrdering::Relaxed);
        t.load(AtomicOrdering::Relaxed).saturating_add(1) >= epoch
    }

    /// Starts a new eviction epoch (after a pass of the hand).
    pub fn next_epoch(&self) {
        self.shared.epoch.fetch_add(1, AtomicOrdering::Relaxed);
    }

    /// Whether the published copy holds `key` (a partial reader's filled key); `false` once
    /// the cache was removed.
    pub(crate) fn holds(&self, key: &Key) -> bool {
        self.with_state(|s| s.holds(key)).unwrap_or(false)
    }

    /// Whether this reader holds only keys filled on demand.
    pub fn is_partial(&self) -> bool {
        self.shared.spec.partial
    }

    /// Runs `f` on the currently published copy without blocking.
    fn with_state<R>(&self, f: impl FnOnce(&ReaderState) -> R) -> Result<R, ReadError> {
        let shared = &self.shared;
        let local = HANDLES.try_with(|map| {
            let mut map = map.borrow_mut();
            if let Some(h) = map.get(&shared.id) {
                return Rc::clone(h);
            }
            map.retain(|_, h| !h.was_dropped());
            let h = Rc::new(shared.factory.handle());
            map.insert(shared.id, Rc::clone(&h));
            h
        });
        // During thread teardown the thread-local is gone: use a one-off handle.
        let handle = match local {
            Ok(h) => h,
            Err(_) => Rc::new(shared.factory.handle()),
        };
        let guard = handle.enter().ok_or(ReadError::Gone)?;
        Ok(f(&guard))
    }
}

/// Receives the rows of a read: a reader row and the output columns to take from it.
pub type RowSink<'s> = dyn FnMut(&[Value], &[OutputColumn]) -> Result<(), String> + 's;

mod compact;
mod keys;
mod read;
mod slot;
mod state;
pub(crate) use keys::KeyCollations;
use read::{lookup_keys, read_state};
use slot::SlotKey;
pub(crate) use state::{ReaderOp, ReaderState};
