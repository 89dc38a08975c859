//! Readers: the materialized end of a cache, read concurrently with the single writer.
//!
//! State lives in a `left-right` pair: the writer (the graph) appends [`ReaderOp`]s to the
//! hidden copy and swaps on `publish`; readers enter the visible copy without taking any
//! lock and never wait for the writer (the writer waits for readers to leave the old copy).
//! Rows are shared between the two copies through `Arc`, so each row is stored once.
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

use hashbrown::hash_map;

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

/// Bytes the allocator takes for a request of `n` bytes (glibc: 8 bytes of header, 16-byte
/// alignment, 32 at least).
fn alloc_bytes(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        ((n + 8 + 15) & !15).max(32)
    }
}

/// Heap bytes of a value besides its inline size.
fn value_heap_bytes(v: &Value) -> usize {
    match v {
        Value::Numeric(s) | Value::Text(s) | Value::Json(s) | Value::Unrepresentable(s) => {
            alloc_bytes(s.capacity())
        }
        Value::Bytes(b) => alloc_bytes(b.capacity()),
        Value::Array(items) => {
            alloc_bytes(items.capacity() * std::mem::size_of::<Value>())
                + items.iter().map(value_heap_bytes).sum::<usize>()
        }
        _ => 0,
    }
}

/// Bytes one distinct row takes in a reader: its shared allocation (counts and values) and
/// what its values point to. Both copies of the left-right pair share it.
fn row_bytes(row: &SortedRow) -> usize {
    alloc_bytes(2 * std::mem::size_of::<usize>() + std::mem::size_of_val(&*row.row))
        + row.row.iter().map(value_heap_bytes).sum::<usize>()
}

/// Heap bytes of a key besides its map slot (in each copy).
fn key_heap_bytes(slot: &SlotKey) -> usize {
    let SlotKey::Key(key) = slot else {
        return 0;
    };
    alloc_bytes(key.0.capacity() * std::mem::size_of::<larder_sql::value::KeyPart>())
        + key
            .0
            .iter()
            .map(|p| match p {
                larder_sql::value::KeyPart::Decimal(s)
                | larder_sql::value::KeyPart::Text(s)
                | larder_sql::value::KeyPart::Other(s) => alloc_bytes(s.capacity()),
                larder_sql::value::KeyPart::Bytes(b) => alloc_bytes(b.capacity()),
                _ => 0,
            })
            .sum::<usize>()
}

/// Bytes a set of rows of one key holds besides the key's slot (in each copy): a B-tree's
/// entries (with its nodes' slack) once it holds more than one row.
fn set_heap_bytes(rows: &RowSet) -> usize {
    /// A B-tree entry (row reference and count), with nodes two-thirds full on average.
    const TREE_ENTRY_BYTES: usize = (std::mem::size_of::<SortedRow>() + 8) * 3 / 2;
    match rows {
        RowSet::Many(map) => map.len() * TREE_ENTRY_BYTES,
        _ => 0,
    }
}

/// Bytes of a hash map's table able to hold `capacity` entries of `slot` bytes (hashbrown:
/// a power of two of buckets, at most seven eighths full, one control byte each).
fn table_bytes(capacity: usize, slot: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    let buckets = if capacity < 8 {
        (capacity + 1).next_power_of_two()
    } else {
        (capacity * 8 / 7).next_power_of_two()
    };
    alloc_bytes(buckets * (slot + 1))
}

/// One copy of a reader's data.
#[derive(Clone, Debug, Default)]
pub(crate) struct ReaderState {
    ready: bool,
    /// Net count of rows whose reader key could not be computed.
    poison_all: i64,
    /// FxHash: keys come from the table's rows (not from clients), and a hit hashes one key.
    /// Boxed: a slot of the table is then a key and a pointer, and the table (about twice as
    /// many slots as keys, in each copy) stays small.
    keys: hashbrown::HashMap<
        SlotKey,
        Box<KeyRows>,
        std::hash::BuildHasherDefault<rustc_hash::FxHasher>,
    >,
    /// The column each key's rows are indexed on, for range reads, and its type family.
    range_column: Option<(usize, RangeFamily)>,
    /// Rows with positive counts, counted with multiplicity.
    row_count: u64,
    /// Estimated bytes of the distinct rows held (shared by both copies of the pair).
    row_bytes: u64,
    /// Estimated heap bytes of the keys and of their row sets, in this copy.
    key_bytes: u64,
    poisoned_keys: u64,
    /// Holds only the keys filled on demand ([`ReaderOp::Fill`]); changes to other keys are
    /// dropped, and a read of one is a hole ([`ReadError::Holes`]).
    partial: bool,
}

/// A change to a reader's state. Applied identically to both copies.
#[derive(Clone, Debug)]
pub(crate) enum ReaderOp {
    Row {
        key: Key,
        row: SortedRow,
        diff: i64,
    },
    Poison {
        key: Option<Key>,
        diff: i64,
    },
    Ready,
    /// Partial readers: the key is held from now on (its rows follow as `Row`s).
    Fill {
        key: Key,
    },
    /// Partial readers: the key is a hole again.
    Evict {
        key: Key,
    },
}

impl ReaderState {
    /// An empty state whose keys index their rows on `range_column`, if any.
    pub(crate) fn indexed_on(range_column: Option<(usize, RangeFamily)>) -> ReaderState {
        ReaderState {
            range_column,
            ..ReaderState::default()
        }
    }

    /// A partial state (see [`ReaderState::partial`]).
    pub(crate) fn partial() -> ReaderState {
        ReaderState {
            partial: true,
            ..ReaderState::default()
        }
    }

    pub(crate) fn holds(&self, key: &Key) -> bool {
        self.keys.contains_key(key)
    }

    pub(crate) fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Estimated bytes of the pair of copies: the rows once, and each copy's table, keys
    /// and row sets (the copies hold the same keys).
    fn bytes(&self) -> u64 {
        let slot = std::mem::size_of::<(SlotKey, Box<KeyRows>)>();
        let entries = self.keys.len() * alloc_bytes(std::mem::size_of::<KeyRows>());
        let per_copy = (table_bytes(self.keys.capacity(), slot) + entries) as u64 + self.key_bytes;
        self.row_bytes.saturating_add(per_copy.saturating_mul(2))
    }

    /// The keys in map order from position `start`, wrapping around once.
    pub(crate) fn keys_from(&self, start: usize) -> impl Iterator<Item = Key> + '_ {
        self.keys
            .keys()
            .skip(start)
            .chain(self.keys.keys().take(start))
            .map(SlotKey::to_key)
    }

    fn apply(&mut self, op: ReaderOp) {
        match op {
            ReaderOp::Row { key, row, diff } => self.apply_row(key, row, diff),
            ReaderOp::Poison { key: None, diff } => self.poison_all += diff,
            ReaderOp::Poison {
                key: Some(key),
                diff,
            } => {
                if !self.partial || self.keys.contains_key(&key) {
                    self.update_key(key, |entry| entry.with_extra(|e| e.poison += diff))
                }
            }
            ReaderOp::Ready => self.ready = true,
            ReaderOp::Fill { key } => {
                debug_assert!(self.partial, "only partial readers are filled by key");
                if let hash_map::Entry::Vacant(v) = self.keys.entry(SlotKey::new(key)) {
                    self.key_bytes += key_heap_bytes(v.key()) as u64;
                    v.insert(Box::default());
                }
            }
            ReaderOp::Evict { key } => self.evict(&key),
        }
    }

    /// Forgets a key of a partial reader, with what it counted.
    fn evict(&mut self, key: &Key) {
        let Some((slot, entry)) = self.keys.remove_entry(key) else {
            return;
        };
        self.key_bytes = self
            .key_bytes
            .saturating_sub((key_heap_bytes(&slot) + set_heap_bytes(&entry.rows)) as u64);
        if entry.is_poisoned() {
            self.poisoned_keys = self.poisoned_keys.saturating_sub(1);
        }
        for (row, &count) in &entry.rows {
            self.row_bytes = self.row_bytes.saturating_sub(row_bytes(row) as u64);
            self.row_count = self.row_count.saturating_sub(count.max(0) as u64);
        }
    }

    fn apply_row(&mut self, key: Key, row: SortedRow, diff: i64) {
        if self.partial && !self.keys.contains_key(&key) {
            // A hole: its rows are read from storage when it is filled.
            return;
        }
        let mut positive_delta: i64 = 0;
        let mut bytes_delta: i64 = 0;
        let bytes = row_bytes(&row) as i64;
        let indexed = self
            .range_column
            .map(|(c, kind)| (RangeValue::place(row.row.get(c), kind), row.clone()));
        self.update_key(key, |entry| {
            let (old, new) = entry.rows.update(row, diff);
            if old == 0 && new != 0 {
                bytes_delta = bytes;
            } else if old != 0 && new == 0 {
                bytes_delta = -bytes;
            }
            if let Some((place, row)) = indexed {
                entry.reindex(place, row, old != 0, new != 0);
            }
            if old < 0 && new >= 0 {
                entry.with_extra(|e| e.negative = e.negative.saturating_sub(1));
            } else if old >= 0 && new < 0 {
                entry.with_extra(|e| e.negative = e.negative.saturating_add(1));
            }
            positive_delta = new.max(0) - old.max(0);
        });
        self.row_count = self.row_count.saturating_add_signed(positive_delta);
        self.row_bytes = self.row_bytes.saturating_add_signed(bytes_delta);
    }

    /// Runs `f` on the key's entry (created if missing), keeping the poisoned-key count and
    /// dropping the entry when it becomes empty.
    fn update_key(&mut self, key: Key, f: impl FnOnce(&mut KeyRows)) {
        let mut bytes_delta: i64 = 0;
        let (was_poisoned, is_poisoned) = match self.keys.entry(SlotKey::new(key)) {
            hash_map::Entry::Occupied(mut o) => {
                let was = o.get().is_poisoned();
                let set_before = set_heap_bytes(&o.get().rows) as i64;
                f(o.get_mut());
                let is = o.get().is_poisoned();
                bytes_delta += set_heap_bytes(&o.get().rows) as i64 - set_before;
                // A partial reader keeps a filled key without rows: it is known to be empty.
                if o.get().is_empty() && !self.partial {
                    bytes_delta -= key_heap_bytes(o.key()) as i64;
                    o.remove();
                }
                (was, is)
            }
            hash_map::Entry::Vacant(v) => {
                let mut entry = Box::<KeyRows>::default();
                f(&mut entry);
                let is = entry.is_poisoned();
                if !entry.is_empty() {
                    bytes_delta += (key_heap_bytes(v.key()) + set_heap_bytes(&entry.rows)) as i64;
                    v.insert(entry);
                }
                (false, is)
            }
        };
        self.key_bytes = self.key_bytes.saturating_add_signed(bytes_delta);
        match (was_poisoned, is_poisoned) {
            (false, true) => self.poisoned_keys += 1,
            (true, false) => self.poisoned_keys = self.poisoned_keys.saturating_sub(1),
            _ => {}
        }
    }
}

impl Absorb<ReaderOp> for ReaderState {
    fn absorb_first(&mut self, operation: &mut ReaderOp, _other: &Self) {
        self.apply(operation.clone());
    }

    fn absorb_second(&mut self, operation: ReaderOp, _other: &Self) {
        self.apply(operation);
    }

    fn sync_with(&mut self, first: &Self) {
        *self = first.clone();
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
            keys: s.keys.len() as u64,
            rows: s.row_count,
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

mod keys;
mod read;
mod slot;
pub(crate) use keys::KeyCollations;
use read::{lookup_keys, read_state};
use slot::SlotKey;
