//! One copy of a reader's data, the changes applied to it, and its memory estimate.
//!
//! A key lives in one of two places. Most keys are *compact* (`compact.rs`): one row (or, in a
//! partial reader, a filled key without rows) in one allocation both copies share. The others
//! (several rows, poison, unmatched deletes, a range index) are a [`KeyRows`] in each copy,
//! whose rows both copies share through `Arc`. A change takes the key's entry out of wherever
//! it is, applies to it as [`KeyRows`], and puts it back where it now belongs.

use super::*;
use crate::ops::mem::{alloc_bytes, value_heap_bytes};
use compact::{Compact, CompactKeys, KeyCode};

/// Bytes one distinct row takes in a reader: its shared allocation (counts and values) and
/// what its values point to. Both copies of the left-right pair share it.
fn row_bytes(row: &SortedRow) -> usize {
    alloc_bytes(2 * std::mem::size_of::<usize>() + std::mem::size_of_val(&*row.row))
        + row.row.iter().map(value_heap_bytes).sum::<usize>()
}

/// Bytes of a compact key (shared by both copies).
fn compact_bytes(c: &Compact) -> usize {
    alloc_bytes(compact::size(c))
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
    /// A B-tree entry (row reference and count), with nodes half full: rows arrive in key
    /// order from a table's copy, and a B-tree filled in order splits its nodes in halves.
    const TREE_ENTRY_BYTES: usize = (std::mem::size_of::<SortedRow>() + 8) * 2;
    match rows {
        RowSet::Many(map) => map.len() * TREE_ENTRY_BYTES,
        _ => 0,
    }
}

/// Bytes of a hash table able to hold `capacity` entries of `slot` bytes (hashbrown: a power
/// of two of buckets, at most seven eighths full, one control byte each).
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
    pub(super) ready: bool,
    /// Net count of rows whose reader key could not be computed.
    pub(super) poison_all: i64,
    /// The order rows sort by (a compact key's row is given it when taken out).
    order: Arc<[OrderKey]>,
    /// Keys of one row and nothing else, and a partial reader's filled keys without rows.
    compact: CompactKeys,
    /// Every other key. FxHash: keys come from the table's rows (not from clients), and a hit
    /// hashes one key. Boxed: a slot of the table is then a key and a pointer.
    keys: hashbrown::HashMap<
        SlotKey,
        Box<KeyRows>,
        std::hash::BuildHasherDefault<rustc_hash::FxHasher>,
    >,
    /// The column each key's rows are indexed on, for range reads, and its type family.
    /// Such a reader's keys are never compact (their entries carry the index).
    range_column: Option<(usize, RangeFamily)>,
    /// Rows with positive counts, counted with multiplicity.
    row_count: u64,
    /// Estimated bytes shared by both copies: the distinct rows of `keys` and the compact keys.
    shared_bytes: u64,
    /// Estimated heap bytes of the keys of `keys` and of their row sets, in this copy.
    key_bytes: u64,
    pub(super) poisoned_keys: u64,
    /// Holds only the keys filled on demand ([`ReaderOp::Fill`]); changes to other keys are
    /// dropped, and a read of one is a hole ([`ReadError::Holes`]).
    pub(super) partial: bool,
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

impl ReaderOp {
    /// The one key the change is to, if any.
    fn key(&self) -> Option<&Key> {
        match self {
            ReaderOp::Row { key, .. }
            | ReaderOp::Fill { key }
            | ReaderOp::Evict { key }
            | ReaderOp::Poison { key: Some(key), .. } => Some(key),
            ReaderOp::Poison { key: None, .. } | ReaderOp::Ready => None,
        }
    }
}

/// A key's entry as a read finds it.
pub(super) enum Found<'a> {
    Rows(&'a KeyRows),
    /// A compact key, taken out as rows.
    Compact(KeyRows),
}

impl Found<'_> {
    pub(super) fn rows(&self) -> &KeyRows {
        match self {
            Found::Rows(rows) => rows,
            Found::Compact(rows) => rows,
        }
    }
}

impl ReaderState {
    /// An empty state whose rows sort by `order` and whose keys index their rows on
    /// `range_column`, if any.
    pub(crate) fn new(
        order: Arc<[OrderKey]>,
        range_column: Option<(usize, RangeFamily)>,
    ) -> ReaderState {
        ReaderState {
            order,
            range_column,
            ..ReaderState::default()
        }
    }

    /// A partial state (see [`ReaderState::partial`]).
    pub(crate) fn partial(order: Arc<[OrderKey]>) -> ReaderState {
        ReaderState {
            order,
            partial: true,
            ..ReaderState::default()
        }
    }

    pub(crate) fn holds(&self, key: &Key) -> bool {
        self.holds_code(key, &KeyCode::of(key))
    }

    pub(super) fn holds_code(&self, key: &Key, code: &KeyCode) -> bool {
        self.compact.get(code).is_some() || self.keys.contains_key(key)
    }

    pub(crate) fn key_count(&self) -> usize {
        self.compact.len() + self.keys.len()
    }

    pub(super) fn row_count(&self) -> u64 {
        self.row_count
    }

    /// The row of a compact key with one, and its count (`None` for any other key, and for
    /// bytes that do not decode, which [`ReaderState::find`] then reports).
    pub(super) fn compact_row(&self, code: &KeyCode) -> Option<(i64, Row)> {
        let c = self.compact.get(code)?;
        let row = compact::row(c).ok()??;
        Some((i64::from(compact::count(c)), row))
    }

    /// The key's entry, if held.
    pub(super) fn find(&self, key: &Key, code: &KeyCode) -> Option<Found<'_>> {
        if let Some(c) = self.compact.get(code) {
            return Some(Found::Compact(self.expand(c)));
        }
        self.keys.get(key).map(|e| Found::Rows(e))
    }

    /// Estimated bytes of the pair of copies: what they share once, and each copy's tables,
    /// keys and row sets (the copies hold the same keys).
    pub(super) fn bytes(&self) -> u64 {
        let slot = std::mem::size_of::<(SlotKey, Box<KeyRows>)>();
        let entries = self.keys.len() * alloc_bytes(std::mem::size_of::<KeyRows>());
        let tables = table_bytes(self.keys.capacity(), slot)
            + table_bytes(self.compact.capacity(), std::mem::size_of::<Compact>());
        let per_copy = (tables + entries) as u64 + self.key_bytes;
        self.shared_bytes.saturating_add(per_copy.saturating_mul(2))
    }

    /// The keys from position `start`, wrapping around once (only the keys yielded are
    /// decoded, not those skipped).
    pub(crate) fn keys_from(&self, start: usize) -> impl Iterator<Item = Key> + '_ {
        let all = || self.compact.iter().map(Ok).chain(self.keys.keys().map(Err));
        all()
            .skip(start)
            .chain(all().take(start))
            .filter_map(|k| match k {
                Ok(c) => compact::key(c),
                Err(slot) => Some(slot.to_key()),
            })
    }

    fn apply(&mut self, op: ReaderOp) {
        let code = op.key().map(KeyCode::of);
        self.apply_coded(op, code);
    }

    /// Applies a change whose key (if it has one) is encoded as `code`.
    fn apply_coded(&mut self, op: ReaderOp, code: Option<KeyCode>) {
        let Some(code) = code else {
            match op {
                ReaderOp::Poison { key: None, diff } => self.poison_all += diff,
                ReaderOp::Ready => self.ready = true,
                _ => debug_assert!(false, "a change to a key comes with its code"),
            }
            return;
        };
        match op {
            ReaderOp::Row { key, row, diff } => self.apply_row(key, &code, row, diff),
            ReaderOp::Poison {
                key: Some(key),
                diff,
            } => {
                if !self.partial || self.holds_code(&key, &code) {
                    self.update_key(key, &code, |entry| {
                        entry.with_extra(|e| e.poison += diff);
                        (0, 0)
                    })
                }
            }
            ReaderOp::Fill { key } => {
                debug_assert!(self.partial, "only partial readers are filled by key");
                if !self.holds_code(&key, &code) {
                    self.place(key, &code, Box::default());
                }
            }
            ReaderOp::Evict { key } => {
                let entry = self.take(&key, &code);
                self.forget(&entry);
            }
            ReaderOp::Poison { key: None, .. } | ReaderOp::Ready => {
                debug_assert!(false, "a change without a key comes without a code")
            }
        }
    }

    fn apply_row(&mut self, key: Key, code: &KeyCode, row: SortedRow, diff: i64) {
        if self.partial && !self.holds_code(&key, code) {
            // A hole: its rows are read from storage when it is filled.
            return;
        }
        let bytes = row_bytes(&row) as i64;
        let indexed = self
            .range_column
            .map(|(c, kind)| (RangeValue::place(row.row.get(c), kind), row.clone()));
        self.update_key(key, code, |entry| {
            let (old, new) = entry.rows.update(row, diff);
            let bytes_delta = match (old, new) {
                (0, n) if n != 0 => bytes,
                (o, 0) if o != 0 => -bytes,
                _ => 0,
            };
            if let Some((place, row)) = indexed {
                entry.reindex(place, row, old != 0, new != 0);
            }
            if old < 0 && new >= 0 {
                entry.with_extra(|e| e.negative = e.negative.saturating_sub(1));
            } else if old >= 0 && new < 0 {
                entry.with_extra(|e| e.negative = e.negative.saturating_add(1));
            }
            (new.max(0) - old.max(0), bytes_delta)
        });
    }

    /// Runs `f` on the key's entry (empty if missing) and puts it back where it belongs. `f`
    /// returns how the rows it changed move `row_count` and `shared_bytes`.
    fn update_key(&mut self, key: Key, code: &KeyCode, f: impl FnOnce(&mut KeyRows) -> (i64, i64)) {
        let mut entry = self.take(&key, code);
        let (rows, bytes) = f(&mut entry);
        self.row_count = self.row_count.saturating_add_signed(rows);
        self.shared_bytes = self.shared_bytes.saturating_add_signed(bytes);
        self.place(key, code, entry);
    }

    /// A compact key's entry as rows (a poisoned entry for bytes that do not decode, which
    /// cannot happen: this process wrote them).
    fn expand(&self, c: &Compact) -> KeyRows {
        let rows = match compact::row(c) {
            Ok(None) => RowSet::Empty,
            Ok(Some(row)) => RowSet::One(
                SortedRow {
                    order: Arc::clone(&self.order),
                    row: row.into(),
                },
                i64::from(compact::count(c)),
            ),
            Err(e) => {
                debug_assert!(false, "a compact key does not decode: {e}");
                let mut poisoned = KeyRows::default();
                poisoned.with_extra(|x| x.poison = 1);
                return poisoned;
            }
        };
        KeyRows { rows, extra: None }
    }

    /// Takes the key's entry out of either table (empty if not held). Its rows stay counted
    /// in `row_count` and `shared_bytes` as rows of a `KeyRows`; what this copy's tables
    /// counted for it is released.
    fn take(&mut self, key: &Key, code: &KeyCode) -> Box<KeyRows> {
        if let Some(c) = self.compact.remove(code) {
            let entry = self.expand(&c);
            let rows: usize = entry.rows.iter().map(|(r, _)| row_bytes(r)).sum();
            self.shared_bytes = self
                .shared_bytes
                .saturating_sub(compact_bytes(&c) as u64)
                .saturating_add(rows as u64);
            return Box::new(entry);
        }
        let Some((slot, entry)) = self.keys.remove_entry(key) else {
            return Box::default();
        };
        self.key_bytes = self
            .key_bytes
            .saturating_sub((key_heap_bytes(&slot) + set_heap_bytes(&entry.rows)) as u64);
        if entry.is_poisoned() {
            self.poisoned_keys = self.poisoned_keys.saturating_sub(1);
        }
        entry
    }

    /// Uncounts the rows of an entry taken out for good.
    fn forget(&mut self, entry: &KeyRows) {
        for (row, &count) in &entry.rows {
            self.shared_bytes = self.shared_bytes.saturating_sub(row_bytes(row) as u64);
            self.row_count = self.row_count.saturating_sub(count.max(0) as u64);
        }
    }

    /// Puts a taken entry back: compact when it can be, dropped when a full reader's key is
    /// left with nothing (a partial reader keeps a filled key without rows: it is known to be
    /// empty), in the table of entries otherwise.
    fn place(&mut self, key: Key, code: &KeyCode, entry: Box<KeyRows>) {
        let one = match (&entry.rows, &entry.extra) {
            _ if self.range_column.is_some() => None,
            (RowSet::One(row, count), None) => u32::try_from(*count)
                .ok()
                .filter(|&c| c > 0)
                .map(|c| compact::build(code, c, Some(&row.row))),
            (RowSet::Empty, None) if self.partial => Some(compact::build(code, 0, None)),
            _ => None,
        };
        if let Some(c) = one {
            let rows: usize = entry.rows.iter().map(|(r, _)| row_bytes(r)).sum();
            self.shared_bytes = self
                .shared_bytes
                .saturating_sub(rows as u64)
                .saturating_add(compact_bytes(&c) as u64);
            self.compact.insert_new(code, c);
            return;
        }
        if entry.is_empty() && !self.partial {
            return;
        }
        if entry.is_poisoned() {
            self.poisoned_keys += 1;
        }
        let slot = SlotKey::new(key);
        self.key_bytes += (key_heap_bytes(&slot) + set_heap_bytes(&entry.rows)) as u64;
        self.keys.insert(slot, entry);
    }

    /// Makes this copy's entry for a key the compact key `c` the other copy holds for it.
    fn adopt(&mut self, key: &Key, code: &KeyCode, c: &Compact) {
        if self
            .compact
            .get(code)
            .is_some_and(|mine| compact::same(mine, c))
        {
            return;
        }
        if let Some(mine) = self.compact.remove(code) {
            self.shared_bytes = self
                .shared_bytes
                .saturating_sub(compact_bytes(&mine) as u64);
            self.row_count = self
                .row_count
                .saturating_sub(u64::from(compact::count(&mine)));
        } else {
            let entry = self.take(key, code);
            self.forget(&entry);
        }
        self.shared_bytes += compact_bytes(c) as u64;
        self.row_count += u64::from(compact::count(c));
        self.compact.insert_new(code, c.clone());
    }
}

impl Absorb<ReaderOp> for ReaderState {
    fn absorb_first(&mut self, operation: &mut ReaderOp, _other: &Self) {
        self.apply(operation.clone());
    }

    /// `other` (the published copy) holds the outcome of every change of this round, this
    /// one included. Where that outcome is a compact key, this copy takes the same
    /// allocation, which is the state this and any later change of the round to that key
    /// lead to; otherwise it applies the change.
    fn absorb_second(&mut self, operation: ReaderOp, other: &Self) {
        let code = operation.key().map(KeyCode::of);
        if let (Some(key), Some(code)) = (operation.key(), &code) {
            if let Some(c) = other.compact.get(code) {
                self.adopt(key, code, c);
                return;
            }
        }
        self.apply_coded(operation, code);
    }

    fn sync_with(&mut self, first: &Self) {
        *self = first.clone();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use larder_sql::value::KeyPart;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::order::structural_cmp_row;

    /// What a copy holds per key: its rows with their counts, and its poison count.
    type Contents = BTreeMap<Key, (Vec<(Vec<Value>, i64)>, i64)>;

    fn contents(state: &ReaderState) -> Contents {
        let mut out = Contents::new();
        for key in state.keys_from(0) {
            let code = KeyCode::of(&key);
            let found = state.find(&key, &code).expect("a listed key is found");
            let e = found.rows();
            let rows = (
                e.rows.iter().map(|(r, c)| (r.row.to_vec(), *c)).collect(),
                e.poison(),
            );
            assert!(out.insert(key, rows).is_none(), "a key listed twice");
        }
        out
    }

    /// `shared_bytes` and `row_count` counted again from what the copy holds.
    fn recount(state: &ReaderState) -> (u64, u64) {
        let mut bytes = 0;
        let mut rows = 0;
        for c in state.compact.iter() {
            bytes += compact_bytes(c) as u64;
            rows += u64::from(compact::count(c));
        }
        for entry in state.keys.values() {
            for (row, &count) in &entry.rows {
                bytes += row_bytes(row) as u64;
                rows += count.max(0) as u64;
            }
        }
        (bytes, rows)
    }

    fn apply_to_model(model: &mut Contents, op: &ReaderOp, partial: bool) {
        let held = |m: &Contents, k: &Key| m.contains_key(k);
        match op {
            ReaderOp::Row { key, row, diff } => {
                if partial && !held(model, key) {
                    return;
                }
                let entry = model.entry(key.clone()).or_default();
                let value = row.row.to_vec();
                match entry.0.iter_mut().position(|(r, _)| *r == value) {
                    Some(i) => {
                        entry.0[i].1 += diff;
                        if entry.0[i].1 == 0 {
                            entry.0.remove(i);
                        }
                    }
                    None => entry.0.push((value, *diff)),
                }
                entry.0.sort_by(|a, b| structural_cmp_row(&a.0, &b.0));
                if !partial && entry.0.is_empty() && entry.1 == 0 {
                    model.remove(key);
                }
            }
            ReaderOp::Poison {
                key: Some(key),
                diff,
            } => {
                if partial && !held(model, key) {
                    return;
                }
                let entry = model.entry(key.clone()).or_default();
                entry.1 += diff;
                if !partial && entry.0.is_empty() && entry.1 == 0 {
                    model.remove(key);
                }
            }
            ReaderOp::Fill { key } => {
                model.entry(key.clone()).or_default();
            }
            ReaderOp::Evict { key } => {
                model.remove(key);
            }
            ReaderOp::Poison { key: None, .. } | ReaderOp::Ready => {}
        }
    }

    /// Random changes, published at random points, leave both copies of the pair holding
    /// what a plain map holds, with counters that agree; and keys of one row share one
    /// allocation between the copies.
    #[test]
    fn both_copies_hold_the_same_keys_as_a_model() {
        for seed in 0..40u64 {
            let partial = seed % 2 == 1;
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let order: Arc<[OrderKey]> = Arc::from(Vec::new());
            let state = if partial {
                ReaderState::partial(Arc::clone(&order))
            } else {
                ReaderState::new(Arc::clone(&order), None)
            };
            let (mut w, r) = left_right::new_from_empty::<ReaderState, ReaderOp>(state);
            let mut model = Contents::new();
            let key = |i: i64| match i % 3 {
                0 => Key(vec![KeyPart::Int(i)]),
                1 => Key(vec![KeyPart::Text(format!("k{i}"))]),
                _ => Key(vec![KeyPart::Int(i), KeyPart::Null]),
            };
            for step in 0..600 {
                let k = key(rng.gen_range(0..8));
                let op = match rng.gen_range(0..10) {
                    0 if partial => ReaderOp::Fill { key: k },
                    1 if partial => ReaderOp::Evict { key: k },
                    2 => ReaderOp::Poison {
                        key: Some(k),
                        diff: if rng.gen_bool(0.5) { 1 } else { -1 },
                    },
                    _ => ReaderOp::Row {
                        key: k,
                        row: SortedRow {
                            order: Arc::clone(&order),
                            row: Arc::from(vec![
                                Value::Int(rng.gen_range(0..3)),
                                Value::Text("some text".into()),
                            ]),
                        },
                        diff: [1, 1, 1, -1, 2][rng.gen_range(0..5)],
                    },
                };
                apply_to_model(&mut model, &op, partial);
                w.append(op);
                if rng.gen_bool(0.2) || step == 599 {
                    w.publish();
                    let published = r.enter().expect("open");
                    assert_eq!(contents(&published), model, "seed {seed} step {step}");
                    assert_eq!(
                        recount(&published),
                        (published.shared_bytes, published.row_count),
                        "seed {seed} step {step}"
                    );
                    let rows: i64 = model
                        .values()
                        .flat_map(|(rows, _)| rows.iter().map(|(_, c)| (*c).max(0)))
                        .sum();
                    assert_eq!(published.row_count() as i64, rows, "seed {seed}");
                }
            }
            // Publishing again shows the other copy (a publish with no changes swaps): it
            // holds the same, with the same estimate, sharing each compact key's allocation.
            // (Only the tables' capacities may differ: the copies' histories do.)
            let (first, first_counts) = {
                let a = r.enter().expect("open");
                let counts = (a.shared_bytes, a.key_bytes, a.row_count, a.poisoned_keys);
                (a.compact.iter().cloned().collect::<Vec<Compact>>(), counts)
            };
            w.publish();
            let b = r.enter().expect("open");
            assert_eq!(contents(&b), model, "seed {seed}");
            assert_eq!(b.compact.len(), first.len());
            for c in &first {
                let code = KeyCode::of(&compact::key(c).expect("decodes"));
                let theirs = b.compact.get(&code).expect("both copies hold it");
                assert!(compact::same(c, theirs), "seed {seed}: not shared");
            }
            let counts = (b.shared_bytes, b.key_bytes, b.row_count, b.poisoned_keys);
            assert_eq!(counts, first_counts, "seed {seed}");
        }
    }
}
