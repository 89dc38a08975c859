//! The dataflow graph: base tables at the roots, the caches' operator nodes below them.
//!
//! Nodes are kept in a `BTreeMap` keyed by a monotonically increasing id; a node is always
//! created after its parents, so ascending id order is a topological order. Edges carry the
//! input index they feed, so a self-join (one parent on both inputs) receives a batch on
//! input 0 and then on input 1. Propagation runs each node only once all of its parents have
//! run, in arrival order of its input batches.
//!
//! Caches share nodes: a node that computes the same thing over the same inputs as a live
//! node of another cache is that node, counted once more ([`share`]). Each node is created by
//! one cache and is *live* (receives every change) from the moment that cache is ready; a
//! live node stays live while any cache uses it.
//!
//! A new cache is *not ready*; [`fill`] describes how it is filled while live changes keep
//! flowing. The graph is driven by one writer (`&mut self`), does no I/O and spawns no
//! threads; readers run concurrently through [`ReaderHandle`]s and only see changes after
//! [`Graph::publish`].

use std::collections::{BTreeMap, BTreeSet, HashMap};

use larder_sql::value::{Row, TableSchema, Value};

use crate::error::GraphError;
use crate::ops::{mem, BaseOp, Batch, Operator, ReaderOpNode, Record};
use crate::reader::{ReaderHandle, READ_KEY_COMBINATIONS_MAX};
use crate::stored::{NoStoredRows, StoredIndex, StoredRows};

mod fill;
mod partial;
mod share;
mod stored;

pub use partial::PartialKey;

use share::{OutputLedger, Signature};

/// Identifies a base table (assigned by the server).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableId(pub u64);

/// Identifies a cache (assigned by the graph, never reused within one graph).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheId(pub u64);

/// A change to a base table. An update is `Delete(old)` followed by `Insert(new)`; a delete
/// carries the full old row.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    Insert(Row),
    Delete(Row),
}

/// Bounds on what the graph holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GraphLimits {
    pub caches_max: usize,
    /// Maximum key combinations (product of IN-list sizes) a single read may look up.
    pub read_key_combinations_max: usize,
    /// Estimated bytes of live changes one bootstrapping cache may buffer.
    pub bootstrap_buffer_max_bytes: usize,
    /// Largest present output (in rows) of a shared node that a new cache's node starts
    /// from: that copy is taken under the writer's hold of the graph, so a larger node is
    /// built again for the new cache and filled from storage in chunks instead.
    pub seed_rows_max: usize,
    /// Make caches partial where they can be (see `partial.rs`): they start empty and fill
    /// keys on demand.
    pub partial: bool,
    /// Let a join read a side that is a base table (through filters and projections) from
    /// storage instead of keeping it in memory (see [`crate::stored`]); the graph must
    /// then be driven with [`Graph::apply_txn`] and real storage.
    pub stored_joins: bool,
}

impl Default for GraphLimits {
    fn default() -> Self {
        GraphLimits {
            caches_max: 10_000,
            read_key_combinations_max: READ_KEY_COMBINATIONS_MAX,
            bootstrap_buffer_max_bytes: 256 << 20,
            seed_rows_max: 250_000,
            partial: false,
            stored_joins: false,
        }
    }
}

/// Rows per batch when feeding large inputs, to bound intermediate memory.
const BATCH_ROWS_MAX: usize = 4096;

type NodeId = u64;

#[derive(Debug)]
struct Node {
    op: Box<dyn Operator>,
    parents: Vec<NodeId>,
    /// (child, input index of the child this node feeds); a child may appear twice.
    children: Vec<(NodeId, usize)>,
    /// The cache that built this node; `None` for base tables.
    creator: Option<CacheId>,
    /// How many caches use this node (base tables: 0, they live with their table).
    users: usize,
    /// Receives live changes: base tables always, a cache's nodes from when it is ready.
    live: bool,
    /// What the node computes, for sharing; `None` for base tables and readers.
    signature: Option<Signature>,
    /// For nodes that can list their output (stateful operators): its size and the poison
    /// in it.
    ledger: Option<OutputLedger>,
    /// Estimated heap bytes of the operator's state (see [`crate::ops::mem`]).
    state_bytes: i64,
}

#[derive(Debug)]
struct TableEntry {
    schema: TableSchema,
    node: NodeId,
}

/// Where a cache is in its life.
#[derive(Debug)]
enum Phase {
    Filling(fill::Filling),
    /// The buffer outgrew its bound; the cache can only be removed.
    Overflowed,
    Ready,
}

#[derive(Debug)]
struct CacheEntry {
    /// The tables the cache reads, each once.
    tables: Vec<TableId>,
    /// Every node the cache uses, built or shared, in creation order (base tables excluded).
    nodes: Vec<NodeId>,
    reader_node: NodeId,
    phase: Phase,
    handle: ReaderHandle,
    /// For a partial cache (see `partial.rs`): how its keys map to its table's rows.
    partial: Option<PartialKey>,
    /// A partial cache's stateful node, which keeps state only for the held keys.
    gated: Option<NodeId>,
}

/// Which nodes a propagation may run.
#[derive(Clone, Copy)]
enum Scope<'s> {
    /// Live changes: live nodes, with storage as of before the transaction for joins that
    /// read a side from there.
    Live(&'s dyn StoredRows),
    /// Bootstrap of one cache: the nodes it built, not yet live, with storage as of the
    /// fill's snapshot; `snapshot_rows` when the batches are that snapshot's table rows.
    Bootstrap {
        cache: CacheId,
        stored: &'s dyn StoredRows,
        snapshot_rows: bool,
    },
    /// A partial cache's key fill: the nodes it built (all of them its own), with storage as
    /// of the last applied transaction for a join's stored side.
    KeyFill(CacheId, &'s dyn StoredRows),
}

/// Node counts of one cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheNodes {
    /// Operator nodes the cache uses, its reader included (base tables excluded).
    pub total: usize,
    /// Of those, nodes another cache uses too.
    pub shared: usize,
}

/// The incremental dataflow of all caches.
#[derive(Debug, Default)]
pub struct Graph {
    nodes: BTreeMap<NodeId, Node>,
    next_node: NodeId,
    tables: HashMap<TableId, TableEntry>,
    caches: BTreeMap<CacheId, CacheEntry>,
    next_cache: u64,
    limits: GraphLimits,
    /// Live and not-yet-live shareable nodes by [`Signature::bucket`].
    signatures: HashMap<u64, Vec<NodeId>>,
    /// Eviction hands of partial caches.
    evict_hands: partial::EvictHands,
}

impl Graph {
    pub fn new() -> Graph {
        Graph::default()
    }

    pub fn with_limits(limits: GraphLimits) -> Graph {
        Graph {
            limits,
            ..Graph::default()
        }
    }

    /// An empty graph with the same limits.
    pub fn emptied(&self) -> Graph {
        Graph::with_limits(self.limits)
    }

    /// Whether caches that can be partial are made partial from now on.
    pub fn set_partial(&mut self, on: bool) {
        self.limits.partial = on;
    }

    /// Sets [`GraphLimits::stored_joins`] for caches added from now on.
    pub fn set_stored_joins(&mut self, on: bool) {
        self.limits.stored_joins = on;
    }

    /// Registers a base table.
    pub fn add_table(&mut self, id: TableId, schema: TableSchema) -> Result<(), GraphError> {
        if self.tables.contains_key(&id) {
            return Err(GraphError::TableExists(id.0));
        }
        let node = self.add_node(Box::new(BaseOp), Vec::new(), None, None);
        if let Some(n) = self.nodes.get_mut(&node) {
            n.live = true;
        }
        self.tables.insert(id, TableEntry { schema, node });
        Ok(())
    }

    /// Unregisters a base table; the caches reading it must have been removed first.
    pub fn remove_table(&mut self, id: TableId) -> Result<(), GraphError> {
        if self.caches.values().any(|c| c.tables.contains(&id)) {
            return Err(GraphError::TableInUse(id.0));
        }
        let entry = self
            .tables
            .remove(&id)
            .ok_or(GraphError::UnknownTable(id.0))?;
        self.nodes.remove(&entry.node);
        Ok(())
    }

    pub fn table_schema(&self, id: TableId) -> Option<&TableSchema> {
        self.tables.get(&id).map(|t| &t.schema)
    }

    /// The table a plan reads, by schema and name.
    pub fn table_by_name(&self, schema: &str, name: &str) -> Option<TableId> {
        self.tables
            .iter()
            .find(|(_, t)| t.schema.schema == schema && t.schema.name == name)
            .map(|(id, _)| *id)
    }

    /// Removes a cache; its readers then report [`ReadError::Gone`]. Nodes it shares with
    /// other caches stay; the others are freed.
    ///
    /// [`ReadError::Gone`]: crate::ReadError::Gone
    pub fn remove_cache(&mut self, id: CacheId) -> Result<(), GraphError> {
        self.evict_hands.remove(&id);
        let entry = self
            .caches
            .remove(&id)
            .ok_or(GraphError::UnknownCache(id.0))?;
        self.release_nodes(&entry.nodes);
        tracing::debug!(cache = id.0, "cache removed");
        Ok(())
    }

    /// Drops one use of each of `nodes` (a cache's, in creation order) and frees the nodes
    /// left without users.
    fn release_nodes(&mut self, nodes: &[NodeId]) {
        // Children before parents, so a node is unused by the time its parent is looked at.
        for node_id in nodes.iter().rev() {
            let Some(node) = self.nodes.get_mut(node_id) else {
                continue;
            };
            node.users = node.users.saturating_sub(1);
            if node.users > 0 {
                continue;
            }
            let Some(node) = self.nodes.remove(node_id) else {
                continue;
            };
            debug_assert!(node.children.is_empty(), "an unused node has no children");
            for p in node.parents {
                if let Some(parent) = self.nodes.get_mut(&p) {
                    parent.children.retain(|(c, _)| c != node_id);
                }
            }
            if let Some(sig) = node.signature {
                let bucket = sig.bucket();
                if let Some(ids) = self.signatures.get_mut(&bucket) {
                    ids.retain(|n| n != node_id);
                    if ids.is_empty() {
                        self.signatures.remove(&bucket);
                    }
                }
            }
        }
    }

    pub fn reader(&self, id: CacheId) -> Option<ReaderHandle> {
        self.caches.get(&id).map(|c| c.handle.clone())
    }

    pub fn cache_ids(&self) -> Vec<CacheId> {
        self.caches.keys().copied().collect()
    }

    /// The tables a cache reads, each once (empty for an unknown cache).
    pub fn cache_tables(&self, id: CacheId) -> Vec<TableId> {
        self.caches
            .get(&id)
            .map(|c| c.tables.clone())
            .unwrap_or_default()
    }

    /// How many operator nodes a cache uses, and how many of them it shares.
    pub fn cache_nodes(&self, id: CacheId) -> CacheNodes {
        let Some(cache) = self.caches.get(&id) else {
            return CacheNodes::default();
        };
        CacheNodes {
            total: cache.nodes.len(),
            shared: cache
                .nodes
                .iter()
                .filter(|n| self.nodes.get(n).is_some_and(|n| n.users > 1))
                .count(),
        }
    }

    /// Estimated heap bytes of the state of the operators a cache uses (shared ones
    /// included; its reader excluded, see [`ReaderHandle::stats`]).
    pub fn cache_state_bytes(&self, id: CacheId) -> u64 {
        self.caches.get(&id).map_or(0, |c| {
            c.nodes
                .iter()
                .filter_map(|n| self.nodes.get(n))
                .map(|n| n.state_bytes.max(0) as u64)
                .sum()
        })
    }

    /// Estimated heap bytes of the state of every operator, each counted once.
    pub fn state_bytes(&self) -> u64 {
        self.nodes
            .values()
            .map(|n| n.state_bytes.max(0) as u64)
            .sum()
    }

    /// Operator nodes in the graph (base tables excluded): what all caches hold.
    pub fn node_count(&self) -> usize {
        self.nodes.values().filter(|n| n.creator.is_some()).count()
    }

    pub fn is_ready(&self, id: CacheId) -> bool {
        self.caches
            .get(&id)
            .is_some_and(|c| matches!(c.phase, Phase::Ready))
    }

    /// Propagates changes of `table` to every ready cache, and buffers them for caches that
    /// are being filled: a transaction of one table whose joins keep both sides in memory
    /// (see [`apply_txn`](Self::apply_txn)). Nothing becomes visible to readers before
    /// [`publish`](Self::publish). Rows are checked before anything is applied.
    pub fn apply(&mut self, table: TableId, changes: &[Change]) -> Result<(), GraphError> {
        match self.apply_txn([(table, changes)], &NoStoredRows).pop() {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }

    /// Applies one transaction: each `(table, changes)` run in order, every change flowing
    /// down before the next run enters. Joins that read a side from storage see `stored`
    /// (storage as of before the transaction) plus the changes they received in the runs
    /// before, so `ΔA⋈ΔB` is counted once (see [`crate::stored`]). A run whose rows do not
    /// fit its table is skipped and returned with its error; the others are applied.
    pub fn apply_txn<'c>(
        &mut self,
        runs: impl IntoIterator<Item = (TableId, &'c [Change])>,
        stored: &dyn StoredRows,
    ) -> Vec<(TableId, GraphError)> {
        let mut errors = Vec::new();
        for (table, changes) in runs {
            if let Err(e) = self.apply_run(table, changes, stored) {
                errors.push((table, e));
            }
        }
        for node in self.nodes.values_mut() {
            mem::take();
            node.op.end_txn();
            node.state_bytes = node.state_bytes.saturating_add(mem::take());
        }
        errors
    }

    fn apply_run(
        &mut self,
        table: TableId,
        changes: &[Change],
        stored: &dyn StoredRows,
    ) -> Result<(), GraphError> {
        let (base, width) = self.table_root(table)?;
        for change in changes {
            let (Change::Insert(row) | Change::Delete(row)) = change;
            check_arity(table, width, row)?;
        }
        if changes.is_empty() || self.nodes.get(&base).is_none_or(|n| n.children.is_empty()) {
            return Ok(());
        }
        for chunk in changes.chunks(BATCH_ROWS_MAX) {
            self.propagate(vec![(base, to_batch(chunk))], Scope::Live(stored));
        }
        Ok(())
    }

    /// The secondary indexes the caches' joins read (or will, once filled), and those
    /// partial caches find their keys' rows through: the server keeps exactly these up to
    /// date in storage.
    pub fn stored_indexes(&self) -> BTreeSet<StoredIndex> {
        let partial = self.caches.values().filter_map(|c| {
            let key = c.partial.as_ref().filter(|k| k.by_index)?;
            Some(StoredIndex {
                table: key.table,
                columns: key.columns.clone(),
            })
        });
        self.nodes
            .values()
            .filter_map(|n| n.op.stored_index())
            .chain(partial)
            .collect()
    }

    /// Makes every change applied so far visible to readers. Waits only for readers that
    /// are in the middle of a read of the previous copy; never blocks new readers.
    pub fn publish(&mut self) {
        let reader_nodes: Vec<NodeId> = self.caches.values().map(|c| c.reader_node).collect();
        for node in reader_nodes {
            if let Some(reader) = self.reader_op(node) {
                if reader.writer.has_pending_operations() {
                    reader.writer.publish();
                }
            }
        }
    }

    fn table_root(&self, table: TableId) -> Result<(NodeId, usize), GraphError> {
        let t = self
            .tables
            .get(&table)
            .ok_or(GraphError::UnknownTable(table.0))?;
        Ok((t.node, t.schema.columns.len()))
    }

    fn reader_op(&mut self, node: NodeId) -> Option<&mut ReaderOpNode> {
        self.nodes
            .get_mut(&node)?
            .op
            .as_any_mut()
            .downcast_mut::<ReaderOpNode>()
    }

    fn add_node(
        &mut self,
        op: Box<dyn Operator>,
        parents: Vec<NodeId>,
        creator: Option<CacheId>,
        signature: Option<Signature>,
    ) -> NodeId {
        let id = self.next_node;
        self.next_node += 1;
        for (input, p) in parents.iter().enumerate() {
            if let Some(parent) = self.nodes.get_mut(p) {
                parent.children.push((id, input));
            }
        }
        if let Some(sig) = &signature {
            self.signatures.entry(sig.bucket()).or_default().push(id);
        }
        // Stateful operators can list their output (a join reading storage, from there).
        let lists = op.reads_storage() || op.current_output().is_some();
        let ledger = lists.then(OutputLedger::default);
        self.nodes.insert(
            id,
            Node {
                op,
                parents,
                children: Vec::new(),
                creator,
                users: usize::from(creator.is_some()),
                live: false,
                signature,
                ledger,
                state_bytes: 0,
            },
        );
        id
    }

    fn in_scope(node: &Node, scope: Scope<'_>) -> bool {
        match scope {
            Scope::Live(_) => node.live,
            Scope::Bootstrap { cache, .. } => !node.live && node.creator == Some(cache),
            Scope::KeyFill(cache, _) => node.creator == Some(cache),
        }
    }

    /// Delivers each `(node, batch)` as the output of `node` to its children in `scope`,
    /// and runs everything below in topological order.
    fn propagate(&mut self, outputs: Vec<(NodeId, Batch)>, scope: Scope<'_>) {
        let mut pending: BTreeMap<NodeId, Vec<(usize, Batch)>> = BTreeMap::new();
        let mut held = Vec::new();
        for (node, batch) in outputs {
            self.deliver(node, batch, scope, &mut pending, &mut held);
        }
        self.run(pending, scope, held);
    }

    /// Runs the nodes with `pending` input and everything below them, in topological order;
    /// then buffers what live nodes sent to nodes still being filled (`held`).
    fn run(
        &mut self,
        mut pending: BTreeMap<NodeId, Vec<(usize, Batch)>>,
        scope: Scope<'_>,
        mut held: Vec<Held>,
    ) {
        while let Some((id, inputs)) = pending.pop_first() {
            let Some(node) = self.nodes.get_mut(&id) else {
                continue;
            };
            let mut output = Vec::new();
            mem::take();
            for (input, batch) in inputs {
                output.extend(match scope {
                    Scope::Live(stored) => node.op.process_stored(input, batch, stored, false),
                    Scope::Bootstrap {
                        stored,
                        snapshot_rows,
                        ..
                    } => node.op.process_stored(input, batch, stored, snapshot_rows),
                    Scope::KeyFill(_, stored) => {
                        node.op.process_stored(input, batch, stored, false)
                    }
                });
            }
            node.state_bytes = node.state_bytes.saturating_add(mem::take());
            debug_assert!(
                node.state_bytes >= 0,
                "state bytes of {} below 0",
                node.op.name()
            );
            if let Some(ledger) = &mut node.ledger {
                ledger.record(&output);
            }
            self.deliver(id, output, scope, &mut pending, &mut held);
        }
        self.hold(held);
    }

    fn deliver(
        &self,
        from: NodeId,
        batch: Batch,
        scope: Scope<'_>,
        pending: &mut BTreeMap<NodeId, Vec<(usize, Batch)>>,
        held: &mut Vec<Held>,
    ) {
        if batch.is_empty() {
            return;
        }
        let Some(node) = self.nodes.get(&from) else {
            return;
        };
        let mut targets: Vec<(NodeId, usize)> = Vec::with_capacity(node.children.len());
        for &(child, input) in &node.children {
            let Some(c) = self.nodes.get(&child) else {
                continue;
            };
            if Self::in_scope(c, scope) {
                if let Scope::Bootstrap { cache, .. } = scope {
                    if self.deferred(cache) == Some((from, child, input)) {
                        continue;
                    }
                }
                targets.push((child, input));
            } else if matches!(scope, Scope::Live(_)) {
                // A live node feeding a node still being filled: that cache replays it later.
                if let Some(cache) = c.creator.filter(|id| self.is_filling(*id)) {
                    held.push(Held {
                        cache,
                        node: child,
                        input,
                        batch: batch.clone(),
                    });
                }
            }
        }
        assert!(
            targets.iter().all(|(c, _)| *c > from),
            "children are created after their parents, so ids are topological"
        );
        if let Some((last, rest)) = targets.split_last() {
            for &(child, input) in rest {
                pending
                    .entry(child)
                    .or_default()
                    .push((input, batch.clone()));
            }
            pending.entry(last.0).or_default().push((last.1, batch));
        }
    }

    /// The edge whose batches a filling cache does not deliver (see `fill::Filling::defer`).
    fn deferred(&self, cache: CacheId) -> Option<(NodeId, NodeId, usize)> {
        match self.caches.get(&cache).map(|c| &c.phase) {
            Some(Phase::Filling(f)) => f.defer,
            _ => None,
        }
    }

    fn is_filling(&self, cache: CacheId) -> bool {
        self.caches
            .get(&cache)
            .is_some_and(|c| matches!(c.phase, Phase::Filling(_)))
    }
}

/// A batch a live node sent to a node of a cache being filled, kept for its replay.
#[derive(Debug)]
struct Held {
    cache: CacheId,
    node: NodeId,
    input: usize,
    batch: Batch,
}

fn to_batch(changes: &[Change]) -> Batch {
    changes
        .iter()
        .map(|c| match c {
            Change::Insert(row) => Record::Row {
                row: row.clone(),
                diff: 1,
            },
            Change::Delete(row) => Record::Row {
                row: row.clone(),
                diff: -1,
            },
        })
        .collect()
}

fn check_arity(table: TableId, width: usize, row: &Row) -> Result<(), GraphError> {
    if row.len() != width {
        return Err(GraphError::RowArity {
            table: table.0,
            got: row.len(),
            want: width,
        });
    }
    Ok(())
}

/// Estimated heap and inline bytes of a value.
pub(crate) fn value_bytes(v: &Value) -> usize {
    std::mem::size_of::<Value>()
        + match v {
            Value::Numeric(s) | Value::Text(s) | Value::Json(s) | Value::Unrepresentable(s) => {
                s.len()
            }
            Value::Bytes(b) => b.len(),
            Value::Array(items) => items.iter().map(value_bytes).sum(),
            _ => 0,
        }
}

/// Estimated bytes a batch holds.
fn batch_bytes(batch: &Batch) -> usize {
    batch
        .iter()
        .map(|r| {
            std::mem::size_of::<Record>()
                + match r {
                    Record::Row { row, .. } => row.iter().map(value_bytes).sum::<usize>(),
                    Record::Poison { row, .. } => {
                        row.iter().flatten().map(value_bytes).sum::<usize>()
                    }
                }
        })
        .sum()
}

#[cfg(test)]
mod tests;
