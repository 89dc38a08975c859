//! Operators: the nodes of the dataflow graph.
//!
//! Every operator consumes batches of signed records (a Z-set: `+1` insert, `-1` delete of
//! one copy) and emits the batch of changes to its own output. Besides data, records can be
//! *poison*: "a row here failed to evaluate; whatever it maps to downstream is unknown". A
//! poison record carries as much of the row as could be computed (`None` for unknown
//! columns) so the reader can poison just the affected key, or everything when the key
//! itself is unknown. Operators map a poison record to their output *without looking at
//! their state*, so deleting the offending row emits the same poison record with the
//! opposite sign, which clears it. Stateful operators never store poison.
//!
//! One module per operator family: [`map`] (filter, project, union), [`join`], [`semijoin`],
//! [`aggregate`], [`distinct`], [`topk`].

use std::any::Any;
use std::collections::btree_map;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use larder_sql::plan::OrderKey;
use larder_sql::value::{Key, Row, Value};
use left_right::WriteHandle;

use crate::order::{OrdRow, SortedRow};
use crate::reader::{ReaderOp, ReaderState};
use crate::stored::{StoredError, StoredIndex, StoredRows};

pub(crate) mod accum;
pub(crate) mod aggregate;
pub(crate) mod distinct;
pub(crate) mod gate;
pub(crate) mod join;
pub(crate) mod join_stored;
pub(crate) mod map;
pub(crate) mod mem;
pub(crate) mod semijoin;
#[cfg(test)]
pub(crate) mod testutil;
pub(crate) mod topk;

/// One signed change flowing between operators.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    /// `diff` copies of `row` were inserted (positive) or deleted (negative).
    Row { row: Row, diff: i64 },
    /// A row whose evaluation failed; `None` marks columns that could not be computed.
    Poison { row: Vec<Option<Value>>, diff: i64 },
}

pub type Batch = Vec<Record>;

/// A node of the dataflow graph.
///
/// `process` is called with batches arriving on input number `input` (the position of the
/// edge in the plan node's input list; a self-join gets the same batch on input 0, then on
/// input 1) in topological order; it returns the changes to its output, which the graph
/// forwards to every child. Operators must be deterministic.
pub trait Operator: Send + fmt::Debug + Any {
    fn name(&self) -> &'static str;
    fn process(&mut self, input: usize, batch: Batch) -> Batch;
    /// Rows the operator outputs before it has seen any input (a global aggregate's one row
    /// over nothing). Called once, when the cache is built; the graph propagates the result.
    fn initial(&mut self) -> Batch {
        Vec::new()
    }
    /// The rows this operator outputs now, each with its multiplicity, computed from its
    /// state: what a new child must receive to start from the operator's present. Poison is
    /// left out (the graph keeps the poison each node emitted). `None` for an operator without
    /// the state to say (filter, project, union): such a node cannot feed a new child that
    /// shares it, so the graph copies it instead.
    fn current_output(&self) -> Option<Batch> {
        None
    }
    /// Whether the operator reads part of its state from storage (so listing its output
    /// needs storage too).
    fn reads_storage(&self) -> bool {
        false
    }
    /// [`current_output`](Self::current_output), with storage as of now for an operator
    /// that reads part of its state from there (called between transactions).
    fn list_output(&mut self, _stored: &dyn StoredRows) -> Result<Option<Batch>, StoredError> {
        Ok(self.current_output())
    }
    /// `process` with storage (see [`crate::stored`]): as of before the transaction for live
    /// changes, as of the fill's snapshot while a cache fills. `snapshot_rows`: the batch is
    /// rows of that snapshot, which a side read from storage already has. Only a join
    /// reading a side from storage uses either.
    fn process_stored(
        &mut self,
        input: usize,
        batch: Batch,
        _stored: &dyn StoredRows,
        _snapshot_rows: bool,
    ) -> Batch {
        self.process(input, batch)
    }
    /// The secondary index this operator reads once it reads storage (joins only).
    fn stored_index(&self) -> Option<StoredIndex> {
        None
    }
    /// The transaction being applied (or a new cache's fill) has ended: storage now holds
    /// its changes.
    fn end_txn(&mut self) {}
    /// A partial cache's reader no longer holds `key` (a reader key): forget what is kept
    /// for it, without output. Only an operator behind a [`gate::Gate`] keeps any.
    fn forget_key(&mut self, _key: &larder_sql::value::Key) {}
    /// [`forget_key`](Operator::forget_key) for each of `keys` (an operator whose state is
    /// not arranged by the reader key forgets them in one pass).
    fn forget_keys(&mut self, keys: &[larder_sql::value::Key]) {
        for key in keys {
            self.forget_key(key);
        }
    }
    /// Where an operator a partial cache can gate keeps its gate (see [`gate`]): it keeps
    /// state only for the keys the cache's reader holds once one is set. `None` for
    /// operators a partial cache cannot gate.
    fn gate_slot(&mut self) -> Option<&mut Option<gate::Gate>> {
        None
    }
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// Row multiset: structural row -> multiplicity; zero counts are removed.
pub(crate) type RowCounts = BTreeMap<OrdRow, i64>;

/// Adds `diff` copies of `row`; returns the (old, new) multiplicity.
pub(crate) fn bump(rows: &mut RowCounts, row: Row, diff: i64) -> (i64, i64) {
    let was_empty = rows.is_empty();
    let counts = match rows.entry(OrdRow(row)) {
        btree_map::Entry::Occupied(mut o) => {
            let old = *o.get();
            let new = old.saturating_add(diff);
            if new == 0 {
                mem::charge(-mem::row_bytes(&o.key().0));
                o.remove();
            } else {
                *o.get_mut() = new;
            }
            (old, new)
        }
        btree_map::Entry::Vacant(v) => {
            if diff != 0 {
                mem::charge(mem::row_bytes(&v.key().0));
                v.insert(diff);
            }
            (0, diff)
        }
    };
    mem::charge_first_node::<OrdRow>(was_empty, rows.is_empty());
    counts
}

/// Adds `diff` copies of an ordered row; zero counts are removed.
pub(crate) fn bump_sorted(rows: &mut BTreeMap<SortedRow, i64>, row: SortedRow, diff: i64) {
    let was_empty = rows.is_empty();
    match rows.entry(row) {
        btree_map::Entry::Occupied(mut o) => {
            let new = o.get().saturating_add(diff);
            if new == 0 {
                mem::charge(-mem::row_bytes(&o.key().row));
                o.remove();
            } else {
                *o.get_mut() = new;
            }
        }
        btree_map::Entry::Vacant(v) => {
            if diff != 0 {
                mem::charge(mem::row_bytes(&v.key().row));
                v.insert(diff);
            }
        }
    }
    mem::charge_first_node::<SortedRow>(was_empty, rows.is_empty());
}

/// The SQL-equality key of `cols`, or `None` when one of them is NULL (never equal).
pub(crate) fn match_key(row: &[Value], cols: &[usize]) -> Option<Key> {
    let values: Option<Vec<&Value>> = cols
        .iter()
        .map(|&c| row.get(c).filter(|v| !v.is_null()))
        .collect();
    values.map(Key::from_values)
}

/// The grouping key of `cols` (NULLs group together, as in GROUP BY).
pub(crate) fn group_key(row: &[Value], cols: &[usize]) -> Key {
    Key::from_values(cols.iter().map(|&c| row.get(c).unwrap_or(&NULL)))
}

/// The values of `cols` in a poison row, if all are known.
pub(crate) fn known(row: &[Option<Value>], cols: &[usize]) -> Option<Vec<Value>> {
    cols.iter()
        .map(|&c| row.get(c).cloned().flatten())
        .collect()
}

/// A poison row of `width` columns where only `cols` (set to `values`) are known.
pub(crate) fn poison_with(width: usize, cols: &[usize], values: &[Value]) -> Vec<Option<Value>> {
    let mut row = vec![None; width];
    for (&c, v) in cols.iter().zip(values) {
        if let Some(slot) = row.get_mut(c) {
            *slot = Some(v.clone());
        }
    }
    row
}

/// The root of a base table: forwards its changes unchanged.
#[derive(Debug, Default)]
pub struct BaseOp;

impl Operator for BaseOp {
    fn name(&self) -> &'static str {
        "base"
    }

    fn process(&mut self, _input: usize, batch: Batch) -> Batch {
        batch
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

const NULL: Value = Value::Null;

/// Changes a reader that is not ready yet takes before they are published. Left-right keeps
/// the changes of the last two publishes in a queue whose capacity it never gives back, so a
/// cache's initial fill is published in steps (nobody reads it yet) to keep that queue small.
const UNREADY_OPS_PER_PUBLISH: usize = 4096;

/// The sink of a cache: groups rows by key into the left-right reader state.
pub struct ReaderOpNode {
    key: Vec<usize>,
    order: Arc<[OrderKey]>,
    collations: crate::reader::KeyCollations,
    pub(crate) writer: WriteHandle<ReaderState, ReaderOp>,
    /// Whether `ReaderOp::Ready` was appended (reads see every publish from then on).
    ready: bool,
    /// Changes appended since this node last published.
    unpublished: usize,
}

impl fmt::Debug for ReaderOpNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReaderOpNode")
            .field("key", &self.key)
            .field("order", &self.order)
            .finish_non_exhaustive()
    }
}

impl ReaderOpNode {
    /// Whether the published copy holds `key` (partial readers).
    pub(crate) fn holds(&self, key: &larder_sql::value::Key) -> bool {
        self.writer.enter().is_some_and(|state| state.holds(key))
    }

    /// Up to `take` keys the published copy holds, those `evictable` accepts first, looking
    /// at no more than `scan_max` keys from offset `start` (wrapping); returns them and how
    /// many were looked at.
    pub(crate) fn sample_keys(
        &self,
        start: usize,
        scan_max: usize,
        take: usize,
        evictable: &dyn Fn(&larder_sql::value::Key) -> bool,
    ) -> (Vec<larder_sql::value::Key>, usize) {
        let Some(state) = self.writer.enter() else {
            return (Vec::new(), 0);
        };
        let len = state.key_count();
        if len == 0 {
            return (Vec::new(), 0);
        }
        let mut out = Vec::new();
        // Keys passed over for being read lately: taken too when the others do not make up
        // `take` (the bound on memory comes before the second chance).
        let mut spared = Vec::new();
        let mut scanned = 0;
        for key in state.keys_from(start % len).take(scan_max.min(len)) {
            scanned += 1;
            if evictable(&key) {
                out.push(key);
                if out.len() >= take {
                    break;
                }
            } else if spared.len() < take {
                spared.push(key);
            }
        }
        let short = take.saturating_sub(out.len());
        out.extend(spared.into_iter().take(short));
        (out, scanned)
    }

    pub(crate) fn new(
        key: Vec<usize>,
        order: Arc<[OrderKey]>,
        collations: crate::reader::KeyCollations,
        writer: WriteHandle<ReaderState, ReaderOp>,
    ) -> ReaderOpNode {
        ReaderOpNode {
            key,
            order,
            collations,
            writer,
            ready: false,
            unpublished: 0,
        }
    }

    /// The reader answers reads from now on: marks it ready and publishes.
    pub(crate) fn ready(&mut self) {
        self.writer.append(ReaderOp::Ready);
        self.writer.publish();
        self.ready = true;
        self.unpublished = 0;
    }
}

impl Operator for ReaderOpNode {
    fn name(&self) -> &'static str {
        "reader"
    }

    fn process(&mut self, _input: usize, batch: Batch) -> Batch {
        for record in batch {
            let op = match record {
                Record::Row { row, diff } => {
                    let key = self
                        .collations
                        .key(self.key.iter().map(|&i| row.get(i).unwrap_or(&NULL)));
                    match key {
                        Some(key) => ReaderOp::Row {
                            key,
                            row: SortedRow {
                                order: Arc::clone(&self.order),
                                row: row.into(),
                            },
                            diff,
                        },
                        // Text the collation cannot key: no read can tell whether it matches.
                        None => ReaderOp::Poison { key: None, diff },
                    }
                }
                Record::Poison { row, diff } => {
                    let parts: Option<Vec<&Value>> =
                        self.key.iter().map(|&i| row.get(i)?.as_ref()).collect();
                    let key = parts.and_then(|p| self.collations.key(p));
                    if key.is_none() {
                        tracing::debug!("reader key not computable; poisoning whole reader");
                    }
                    ReaderOp::Poison { key, diff }
                }
            };
            self.writer.append(op);
            self.unpublished += 1;
            if !self.ready && self.unpublished >= UNREADY_OPS_PER_PUBLISH {
                self.writer.publish();
                self.unpublished = 0;
            }
        }
        Vec::new()
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}
