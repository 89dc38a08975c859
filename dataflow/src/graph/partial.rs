//! Partial caches: readers that hold only the keys that were asked for.
//!
//! A cache over one table whose reader key is made of that table's columns, reached through
//! filters and projections, needs no state but its reader; with one aggregate or TopK whose
//! groups are exactly the key's columns, that node keeps the groups of the held keys only
//! (`ops/gate.rs`). A join of the key's table with another table it reads from storage
//! (`stored.rs`) is partial the same way: it keeps the key's table's rows of the held keys
//! only, and a fill's rows look the other side up in storage as of the fill. Such a cache
//! starts empty
//! and ready ([`Graph::add_cache`] makes it so): a read of a key it does not hold is a
//! *hole* ([`ReadError::Holes`]); the caller looks the key's rows up in storage and hands
//! them to [`Graph::fill_keys`], which runs them through the cache's own filter and project
//! nodes into the reader, marking the key held even when nothing comes out (a key known to
//! be empty). When the key is the primary key a key has at most one stored row, found by a
//! point lookup; any other key (with `GraphLimits::stored_joins`, whose secondary indexes it
//! uses) is found through the secondary index on exactly its columns, which
//! [`Graph::stored_indexes`] asks the server to keep. Changes to keys the
//! reader does not hold are dropped by the reader. Under memory pressure
//! [`Graph::evict_keys`] turns held keys back into holes.
//!
//! Why fills and replication cannot race: the caller reads storage and calls `fill_keys`
//! under the same lock that covers applying a transaction to storage *and* to the graph. A
//! fill therefore sees storage exactly as of the last transaction the graph has applied;
//! every later transaction reaches the key through the graph, because from the fill on the
//! reader holds it. A change before the fill is in the stored row, a change after it flows
//! in once: none is missed or counted twice. A gated node sees the same: the fill tells it
//! the keys it fills before their rows run through it, and it forgets the group when the
//! reader evicts the key. The keys and their rows are published together, so a read never
//! finds a filled key without its rows.
//!
//! [`ReadError::Holes`]: crate::error::ReadError::Holes

use std::collections::BTreeMap;

use rustc_hash::FxHashSet;

use larder_sql::plan::{CachePlan, Expr, NodeOp};
use larder_sql::value::{Key, Row, SqlType, TableSchema, Value};

use super::{CacheId, Graph, GraphError, Scope, TableId};
use crate::ops::{mem, Record};
use crate::reader::ReaderOp;
use crate::stored::StoredRows;

/// One key's fill: the reader key's values, and every stored row with them with its number
/// of copies.
pub type KeyFill = (Vec<Value>, Vec<(Row, i64)>);

/// How a partial cache's keys map to its table's rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartialKey {
    pub table: TableId,
    /// For each part of the reader key (in the read's key order), the table column it is.
    pub columns: Vec<usize>,
    /// The columns are not the table's primary key: a key's rows are found through the
    /// secondary index on `columns` (in this order), and may be many.
    pub by_index: bool,
}

impl PartialKey {
    /// The probe row for a storage lookup of `key` (the reader key's values): the table's
    /// width, the key columns set, the rest NULL.
    pub fn probe(&self, width: usize, key: &[Value]) -> Row {
        let mut row = vec![Value::Null; width];
        for (&c, v) in self.columns.iter().zip(key) {
            if let Some(slot) = row.get_mut(c) {
                *slot = v.clone();
            }
        }
        row
    }
}

/// How a plan maps to a partial cache over its table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PartialShape {
    /// The plan relation the reader key's columns are of (its table is the one keys are
    /// filled from).
    pub(crate) relation: usize,
    /// For each part of the reader key, the table column it is.
    pub(crate) columns: Vec<usize>,
    /// The columns are not the table's primary key.
    pub(crate) by_index: bool,
    /// The plan's one stateful node and, for each part of the reader key, its position in
    /// what the node's gate keys on: an aggregate's or a TopK's group key (grouped by exactly
    /// the key's columns), or a join's input row from the key's table.
    pub(crate) gated: Option<(usize, Vec<usize>)>,
    /// The gated node is a join, keeping this input (0 left, 1 right) in memory; its other
    /// input must be read from storage.
    pub(crate) join_side: Option<usize>,
}

/// The (plan relation, table column) a plan node's output column is, where it is one.
type Origin = Option<(usize, usize)>;

/// Whether `plan` can be a partial cache, and how its key maps to a table: filters and
/// projections, and at most one stateful node, either an aggregate or TopK whose groups are
/// exactly the reader key's columns (so each group is one key's rows), or a join of two
/// relations whose other input is a base table (read from storage, checked by the caller)
/// and whose input from the key's table is that table through filters and projections (so
/// each of its rows belongs to one key); each reader key column a plain column of one table,
/// none twice; the reader key exactly that table's primary key or, with `index_ok`, any
/// columns, of types whose values compare in storage as they do in a read (integers, text,
/// booleans, uuids, dates, timestamps); no range read, and no key column compared by a
/// collation (storage indexes hold the values, not their weights).
pub(crate) fn partial_columns(
    plan: &CachePlan,
    schemas: &[&TableSchema],
    index_ok: bool,
) -> Option<PartialShape> {
    if plan.relations.len() != schemas.len()
        || !(1..=2).contains(&plan.relations.len())
        || plan.key.is_empty()
        || plan.range.is_some()
        || plan.key_collations.iter().any(Option::is_some)
    {
        return None;
    }
    // The (relation, column) each node's output column is, where it is one.
    let mut lineage: Vec<Vec<Origin>> = Vec::with_capacity(plan.nodes.len());
    // Whether each node is a relation's base table through filters and projections only.
    let mut plain: Vec<Option<usize>> = Vec::with_capacity(plan.nodes.len());
    // The stateful node, and the (relation, column) of what its gate keys on.
    let mut stateful: Option<(usize, Vec<Origin>)> = None;
    let mut join_inputs: Option<(usize, usize)> = None;
    for (i, node) in plan.nodes.iter().enumerate() {
        let (cols, base) = match &node.op {
            NodeOp::Base { relation } => (
                (0..schemas.get(*relation)?.columns.len())
                    .map(|c| Some((*relation, c)))
                    .collect(),
                Some(*relation),
            ),
            NodeOp::Filter { input, .. } => (lineage.get(*input)?.clone(), *plain.get(*input)?),
            NodeOp::Project { input, exprs } => {
                let from = lineage.get(*input)?;
                let cols = exprs
                    .iter()
                    .map(|e| match e {
                        Expr::Column(c) => from.get(*c).copied().flatten(),
                        _ => None,
                    })
                    .collect();
                (cols, *plain.get(*input)?)
            }
            NodeOp::Aggregate {
                input,
                group_by,
                aggregates,
            } if stateful.is_none() && plan.relations.len() == 1 => {
                let from = lineage.get(*input)?;
                let groups: Vec<Origin> = group_by
                    .iter()
                    .map(|&g| from.get(g).copied().flatten())
                    .collect();
                stateful = Some((i, groups.clone()));
                let cols = groups
                    .into_iter()
                    .chain(std::iter::repeat_n(None, aggregates.len()))
                    .collect();
                (cols, None)
            }
            NodeOp::TopK {
                input, group_by, ..
            } if stateful.is_none() && plan.relations.len() == 1 => {
                let from = lineage.get(*input)?;
                let groups = group_by.iter().map(|&g| from.get(g).copied().flatten());
                stateful = Some((i, groups.collect()));
                (from.clone(), None)
            }
            NodeOp::Join { left, right, .. } if stateful.is_none() => {
                let cols = lineage
                    .get(*left)?
                    .iter()
                    .chain(lineage.get(*right)?)
                    .copied()
                    .collect();
                // Filled later, once the key's relation is known.
                stateful = Some((i, Vec::new()));
                join_inputs = Some((*left, *right));
                (cols, None)
            }
            _ => return None,
        };
        lineage.push(cols);
        plain.push(base);
    }
    let last = lineage.last()?;
    let key: Vec<(usize, usize)> = plan
        .key
        .iter()
        .map(|k| last.get(*k).copied().flatten())
        .collect::<Option<_>>()?;
    let relation = key.first()?.0;
    if key.iter().any(|(r, _)| *r != relation) {
        return None;
    }
    let columns: Vec<usize> = key.iter().map(|(_, c)| *c).collect();
    let mut sorted = columns.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != columns.len() {
        return None;
    }
    let (gated, join_side) = match (stateful, join_inputs) {
        (None, _) => (None, None),
        (Some((node, _)), Some((left, right))) => {
            // The input from the key's relation: that relation through filters and
            // projections, each key column passed through.
            let side = [left, right]
                .iter()
                .position(|&input| plain.get(input).copied().flatten() == Some(relation))?;
            let input = [left, right][side];
            let row = lineage.get(input)?;
            let parts: Vec<usize> = key
                .iter()
                .map(|k| row.iter().position(|c| *c == Some(*k)))
                .collect::<Option<_>>()?;
            (Some((node, parts)), Some(side))
        }
        (Some((node, groups)), None) => {
            // Each group is one key's rows: its columns are the key's, each once.
            if groups.len() != key.len() {
                return None;
            }
            let parts: Vec<usize> = key
                .iter()
                .map(|k| groups.iter().position(|g| *g == Some(*k)))
                .collect::<Option<_>>()?;
            (Some((node, parts)), None)
        }
    };
    let schema = schemas.get(relation)?;
    let mut pk = schema.key.clone();
    pk.sort_unstable();
    let by_index = sorted != pk;
    if by_index && !index_ok {
        return None;
    }
    let exact = |c: usize| {
        matches!(
            schema.columns.get(c).map(|c| &c.ty),
            Some(
                SqlType::Int2
                    | SqlType::Int4
                    | SqlType::Int8
                    | SqlType::Text
                    | SqlType::Bool
                    | SqlType::Uuid
                    | SqlType::Date
                    | SqlType::Timestamp
                    | SqlType::TimestampTz
            )
        )
    };
    columns.iter().all(|&c| exact(c)).then_some(PartialShape {
        relation,
        columns,
        by_index,
        gated,
        join_side,
    })
}

impl Graph {
    /// How a partial cache's keys map to its table (`None` for a cache that holds its whole
    /// result).
    pub fn partial_key(&self, cache: CacheId) -> Option<PartialKey> {
        self.caches.get(&cache)?.partial.clone()
    }

    /// Fills holes of a partial cache: for each key (the reader key's values), every stored
    /// row of the table with that key, each with its number of copies. The caller read those
    /// rows from storage under the lock that covers applying transactions (see the module
    /// docs). Publishes the keys and their rows at once.
    pub fn fill_keys(
        &mut self,
        cache: CacheId,
        fills: Vec<KeyFill>,
        stored: &dyn StoredRows,
    ) -> Result<(), GraphError> {
        let entry = self
            .caches
            .get(&cache)
            .ok_or(GraphError::UnknownCache(cache.0))?;
        let Some(partial) = entry.partial.clone() else {
            return Err(GraphError::NotPartial(cache.0));
        };
        let (reader_node, gated) = (entry.reader_node, entry.gated);
        let (base, width) = self.table_root(partial.table)?;
        let mut rows = Vec::new();
        let mut filled: FxHashSet<Key> = FxHashSet::default();
        {
            let reader = self
                .reader_op(reader_node)
                .ok_or(GraphError::UnknownCache(cache.0))?;
            // Everything applied so far is visible (the caller holds the lock between
            // transactions), so the held keys are known.
            if reader.writer.has_pending_operations() {
                reader.writer.publish();
            }
            for (key, key_rows) in fills {
                let key_parts = Key::from_values(&key);
                // Another read filled it first (or it came twice): its rows are in already.
                if reader.holds(&key_parts) || filled.contains(&key_parts) {
                    continue;
                }
                for (row, copies) in key_rows {
                    super::check_arity(partial.table, width, &row)?;
                    rows.push(Record::Row { row, diff: copies });
                }
                filled.insert(key_parts);
            }
            // Held before their rows reach the reader, but published only with them: a read
            // never sees a filled key without its rows.
            for key in &filled {
                reader.writer.append(ReaderOp::Fill { key: key.clone() });
            }
        }
        // A gated node lets the filled keys' rows through as if the reader held them.
        let gate = |graph: &mut Graph, keys: Option<FxHashSet<Key>>| {
            let node = gated.and_then(|g| graph.nodes.get_mut(&g));
            if let Some(gate) = node.and_then(|n| n.op.gate_slot()).and_then(Option::as_mut) {
                match keys {
                    Some(keys) => gate.filling(keys),
                    None => gate.filled(),
                }
            }
        };
        if !rows.is_empty() {
            gate(self, Some(filled));
            self.propagate(vec![(base, rows)], Scope::KeyFill(cache, stored));
            gate(self, None);
        }
        if let Some(reader) = self.reader_op(reader_node) {
            reader.writer.publish();
        }
        Ok(())
    }

    /// Turns up to `keys_max` held keys of partial caches back into holes, passing over keys
    /// read since the previous call (a clock's second chance, by
    /// [`ReaderHandle::recently_read`](crate::ReaderHandle::recently_read)); returns how many
    /// went. The hand moves on from call to call.
    pub fn evict_keys(&mut self, keys_max: usize) -> usize {
        let partial: Vec<(
            CacheId,
            super::NodeId,
            Option<super::NodeId>,
            crate::ReaderHandle,
        )> = self
            .caches
            .iter()
            .filter(|(_, c)| c.partial.is_some())
            .map(|(id, c)| (*id, c.reader_node, c.gated, c.handle.clone()))
            .collect();
        if partial.is_empty() || keys_max == 0 {
            return 0;
        }
        let mut evicted = 0;
        let per_cache = keys_max.div_ceil(partial.len()).max(1);
        for (cache, node, gated, handle) in partial {
            let start = self.evict_hands.get(&cache).copied().unwrap_or(0);
            let Some(reader) = self.reader_op(node) else {
                continue;
            };
            let (victims, scanned) =
                reader.sample_keys(start, per_cache.saturating_mul(4), per_cache, &|k| {
                    !handle.recently_read(k)
                });
            for key in &victims {
                reader.writer.append(ReaderOp::Evict { key: key.clone() });
            }
            reader.writer.publish();
            // The gated node forgets the keys' groups as the reader did (no output: the
            // reader holds nothing of them any more).
            if let Some(state) = gated.and_then(|g| self.nodes.get_mut(&g)) {
                mem::take();
                state.op.forget_keys(&victims);
                state.state_bytes = state.state_bytes.saturating_add(mem::take());
            }
            handle.next_epoch();
            evicted += victims.len();
            self.evict_hands.insert(cache, start.wrapping_add(scanned));
        }
        evicted
    }
}

/// Where each partial cache's eviction hand stands (an offset into its keys).
pub(super) type EvictHands = BTreeMap<CacheId, usize>;
