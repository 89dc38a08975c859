//! The dataflow graph: base tables at the roots, each cache's operator nodes below them.
//!
//! Nodes are kept in a `BTreeMap` keyed by a monotonically increasing id; a node is always
//! created after its parents, so ascending id order is a topological order. Edges carry the
//! input index they feed, so a self-join (one parent on both inputs) receives a batch on
//! input 0 and then on input 1. Propagation runs each node only once all of its parents have
//! run, in arrival order of its input batches.
//!
//! A new cache is *not ready*. The caller fills it with [`Graph::bootstrap_rows`] (rows of
//! each table as of a snapshot taken right after [`Graph::add_cache`]), possibly in many
//! calls interleaved with live [`Graph::apply`] calls, then calls [`Graph::finish_bootstrap`].
//! Live changes skip a not-ready cache's nodes; `apply` buffers a copy of them for it instead
//! (bounded by [`GraphLimits::bootstrap_buffer_max_bytes`]), and `finish_bootstrap` replays
//! the buffer through that cache's nodes only. The graph is driven by one writer
//! (`&mut self`), does no I/O and spawns no threads; readers run concurrently through
//! [`ReaderHandle`]s and only see changes after [`Graph::publish`].

use std::collections::{BTreeMap, HashMap};

use larder_sql::plan::CachePlan;
use larder_sql::value::{Row, TableSchema, Value};

use crate::build::{compile, BuiltNode};
use crate::error::GraphError;
use crate::ops::{BaseOp, Batch, Operator, ReaderOpNode, Record};
use crate::reader::{ReaderHandle, ReaderOp, ReaderState, READ_KEY_COMBINATIONS_MAX};

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
}

impl Default for GraphLimits {
    fn default() -> Self {
        GraphLimits {
            caches_max: 10_000,
            read_key_combinations_max: READ_KEY_COMBINATIONS_MAX,
            bootstrap_buffer_max_bytes: 256 << 20,
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
    /// The cache this node belongs to; `None` for base tables.
    owner: Option<CacheId>,
}

#[derive(Debug)]
struct TableEntry {
    schema: TableSchema,
    node: NodeId,
}

/// Where a cache is in its life.
#[derive(Debug)]
enum Phase {
    /// Being bootstrapped: live changes of its tables are buffered, in arrival order.
    Filling {
        buffer: Vec<(TableId, Vec<Change>)>,
        bytes: usize,
    },
    /// The buffer outgrew its bound; the cache can only be removed.
    Overflowed,
    Ready,
}

#[derive(Debug)]
struct CacheEntry {
    /// The tables the cache reads, each once.
    tables: Vec<TableId>,
    /// All nodes of this cache, in creation order (base tables excluded).
    nodes: Vec<NodeId>,
    reader_node: NodeId,
    phase: Phase,
    handle: ReaderHandle,
}

/// Which nodes a propagation may run.
#[derive(Clone, Copy, Debug)]
enum Scope {
    /// Live changes: base nodes and nodes of ready caches.
    Live,
    /// Bootstrap of one cache: only its nodes.
    Bootstrap(CacheId),
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

    /// Registers a base table.
    pub fn add_table(&mut self, id: TableId, schema: TableSchema) -> Result<(), GraphError> {
        if self.tables.contains_key(&id) {
            return Err(GraphError::TableExists(id.0));
        }
        let node = self.add_node(Box::new(BaseOp), Vec::new(), None);
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

    /// Validates `plan` and builds one operator per plan node (base tables are shared). The
    /// cache starts not ready: feed it with [`bootstrap_rows`](Self::bootstrap_rows) and
    /// [`finish_bootstrap`](Self::finish_bootstrap).
    pub fn add_cache(&mut self, plan: &CachePlan) -> Result<(CacheId, ReaderHandle), GraphError> {
        if self.caches.len() >= self.limits.caches_max {
            return Err(GraphError::TooManyCaches(self.limits.caches_max));
        }
        let mut relation_tables = Vec::with_capacity(plan.relations.len());
        let mut relation_types = Vec::with_capacity(plan.relations.len());
        for r in &plan.relations {
            let table = self.table_by_name(&r.schema, &r.name).ok_or_else(|| {
                GraphError::UnknownTableRef {
                    schema: r.schema.clone(),
                    name: r.name.clone(),
                }
            })?;
            let schema = &self.tables[&table].schema;
            relation_types.push(schema.columns.iter().map(|c| c.ty.clone()).collect());
            relation_tables.push(table);
        }
        let built = compile(plan, &relation_types, &self.limits)?;

        let id = CacheId(self.next_cache);
        self.next_cache += 1;
        let mut tables: Vec<TableId> = Vec::new();
        let mut nodes = Vec::new();
        let mut plan_nodes: Vec<NodeId> = Vec::with_capacity(built.nodes.len());
        for node in built.nodes {
            let node_id = match node {
                BuiltNode::Base { relation } => {
                    let table = relation_tables[relation];
                    if !tables.contains(&table) {
                        tables.push(table);
                    }
                    self.tables[&table].node
                }
                BuiltNode::Op { op, inputs } => {
                    let parents = inputs.iter().map(|&i| plan_nodes[i]).collect();
                    let n = self.add_node(op, parents, Some(id));
                    nodes.push(n);
                    n
                }
            };
            plan_nodes.push(node_id);
        }
        let (writer, read) = left_right::new_from_empty::<ReaderState, ReaderOp>(
            ReaderState::indexed_on(built.spec.range.map(|r| (r.column, r.kind))),
        );
        let handle = ReaderHandle::new(read.factory(), built.spec);
        drop(read);
        let reader = ReaderOpNode::new(built.key, built.order, writer);
        let last = *plan_nodes.last().expect("compile refuses empty plans");
        let reader_node = self.add_node(Box::new(reader), vec![last], Some(id));
        nodes.push(reader_node);
        // Rows some operators hold before any input (a global aggregate's row): collect
        // them all first, so no operator sees input before its own initial state exists.
        let initial: Vec<(NodeId, Batch)> = nodes
            .iter()
            .filter_map(|n| {
                let node = self.nodes.get_mut(n)?;
                let out = node.op.initial();
                (!out.is_empty()).then_some((*n, out))
            })
            .collect();
        self.caches.insert(
            id,
            CacheEntry {
                tables: tables.clone(),
                nodes,
                reader_node,
                phase: Phase::Filling {
                    buffer: Vec::new(),
                    bytes: 0,
                },
                handle: handle.clone(),
            },
        );
        self.propagate(initial, Scope::Bootstrap(id));
        tracing::debug!(cache = id.0, ?tables, "cache added");
        Ok((id, handle))
    }

    /// Removes a cache and its operators; its readers then report [`ReadError::Gone`].
    ///
    /// [`ReadError::Gone`]: crate::ReadError::Gone
    pub fn remove_cache(&mut self, id: CacheId) -> Result<(), GraphError> {
        let entry = self
            .caches
            .remove(&id)
            .ok_or(GraphError::UnknownCache(id.0))?;
        for node_id in entry.nodes.iter().rev() {
            if let Some(node) = self.nodes.remove(node_id) {
                for p in node.parents {
                    if let Some(parent) = self.nodes.get_mut(&p) {
                        parent.children.retain(|(c, _)| c != node_id);
                    }
                }
            }
        }
        tracing::debug!(cache = id.0, "cache removed");
        Ok(())
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

    pub fn is_ready(&self, id: CacheId) -> bool {
        self.caches
            .get(&id)
            .is_some_and(|c| matches!(c.phase, Phase::Ready))
    }

    /// Feeds rows of `table` as of the bootstrap snapshot into a not-ready cache. May be
    /// called any number of times per table, interleaved with [`apply`](Self::apply); rows
    /// are processed in bounded batches. Fails fast with
    /// [`GraphError::BootstrapOverflow`] once the cache's buffer overflowed.
    pub fn bootstrap_rows(
        &mut self,
        cache: CacheId,
        table: TableId,
        rows: impl IntoIterator<Item = Row>,
    ) -> Result<(), GraphError> {
        let entry = self
            .caches
            .get(&cache)
            .ok_or(GraphError::UnknownCache(cache.0))?;
        match entry.phase {
            Phase::Ready => return Err(GraphError::AlreadyReady(cache.0)),
            Phase::Overflowed => return Err(GraphError::BootstrapOverflow(cache.0)),
            Phase::Filling { .. } => {}
        }
        if !entry.tables.contains(&table) {
            return Err(GraphError::NotCacheTable {
                cache: cache.0,
                table: table.0,
            });
        }
        let (base, width) = self.table_root(table)?;
        let mut batch = Vec::with_capacity(BATCH_ROWS_MAX);
        for row in rows {
            check_arity(table, width, &row)?;
            batch.push(Record::Row { row, diff: 1 });
            if batch.len() == BATCH_ROWS_MAX {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_ROWS_MAX));
                self.propagate(vec![(base, full)], Scope::Bootstrap(cache));
            }
        }
        if !batch.is_empty() {
            self.propagate(vec![(base, batch)], Scope::Bootstrap(cache));
        }
        Ok(())
    }

    /// Replays the changes buffered since [`add_cache`](Self::add_cache), marks the cache
    /// ready and publishes it: from now on live changes flow into it. After
    /// [`GraphError::BootstrapOverflow`] the caller must remove the cache.
    pub fn finish_bootstrap(&mut self, cache: CacheId) -> Result<(), GraphError> {
        let entry = self
            .caches
            .get_mut(&cache)
            .ok_or(GraphError::UnknownCache(cache.0))?;
        let buffer = match std::mem::replace(&mut entry.phase, Phase::Ready) {
            Phase::Filling { buffer, .. } => buffer,
            Phase::Overflowed => {
                entry.phase = Phase::Overflowed;
                return Err(GraphError::BootstrapOverflow(cache.0));
            }
            Phase::Ready => return Err(GraphError::AlreadyReady(cache.0)),
        };
        let reader_node = entry.reader_node;
        for (table, changes) in buffer {
            let (base, _) = self.table_root(table)?;
            for chunk in changes.chunks(BATCH_ROWS_MAX) {
                self.propagate(vec![(base, to_batch(chunk))], Scope::Bootstrap(cache));
            }
        }
        if let Some(reader) = self.reader_op(reader_node) {
            reader.writer.append(ReaderOp::Ready);
            reader.writer.publish();
        }
        tracing::debug!(cache = cache.0, "cache bootstrapped");
        Ok(())
    }

    /// Propagates changes of `table` to every ready cache, and buffers them for caches that
    /// are bootstrapping. Nothing becomes visible to readers before
    /// [`publish`](Self::publish). Rows are checked before anything is applied.
    pub fn apply(&mut self, table: TableId, changes: &[Change]) -> Result<(), GraphError> {
        let (base, width) = self.table_root(table)?;
        for change in changes {
            let (Change::Insert(row) | Change::Delete(row)) = change;
            check_arity(table, width, row)?;
        }
        if changes.is_empty() {
            return Ok(());
        }
        self.buffer_for_bootstrapping(table, changes);
        let live = self.nodes.get(&base).is_some_and(|n| {
            n.children.iter().any(|(c, _)| {
                self.nodes
                    .get(c)
                    .is_some_and(|c| self.in_scope(c, Scope::Live))
            })
        });
        if !live {
            return Ok(());
        }
        for chunk in changes.chunks(BATCH_ROWS_MAX) {
            self.propagate(vec![(base, to_batch(chunk))], Scope::Live);
        }
        Ok(())
    }

    fn buffer_for_bootstrapping(&mut self, table: TableId, changes: &[Change]) {
        let max = self.limits.bootstrap_buffer_max_bytes;
        let mut size: Option<usize> = None;
        for (id, cache) in self.caches.iter_mut() {
            if !cache.tables.contains(&table) {
                continue;
            }
            let Phase::Filling { buffer, bytes } = &mut cache.phase else {
                continue;
            };
            let add = *size.get_or_insert_with(|| changes.iter().map(change_bytes).sum());
            *bytes = bytes.saturating_add(add);
            if *bytes > max {
                tracing::warn!(cache = id.0, max, "bootstrap buffer overflowed");
                cache.phase = Phase::Overflowed;
            } else {
                buffer.push((table, changes.to_vec()));
            }
        }
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
        owner: Option<CacheId>,
    ) -> NodeId {
        let id = self.next_node;
        self.next_node += 1;
        for (input, p) in parents.iter().enumerate() {
            if let Some(parent) = self.nodes.get_mut(p) {
                parent.children.push((id, input));
            }
        }
        self.nodes.insert(
            id,
            Node {
                op,
                parents,
                children: Vec::new(),
                owner,
            },
        );
        id
    }

    fn in_scope(&self, node: &Node, scope: Scope) -> bool {
        match (node.owner, scope) {
            (None, _) => true,
            (Some(owner), Scope::Live) => self
                .caches
                .get(&owner)
                .is_some_and(|c| matches!(c.phase, Phase::Ready)),
            (Some(owner), Scope::Bootstrap(cache)) => owner == cache,
        }
    }

    /// Delivers each `(node, batch)` as the output of `node` to its children in `scope`,
    /// and runs everything below in topological order.
    fn propagate(&mut self, outputs: Vec<(NodeId, Batch)>, scope: Scope) {
        let mut pending: BTreeMap<NodeId, Vec<(usize, Batch)>> = BTreeMap::new();
        for (node, batch) in outputs {
            self.deliver(node, batch, scope, &mut pending);
        }
        while let Some((id, inputs)) = pending.pop_first() {
            let Some(node) = self.nodes.get_mut(&id) else {
                continue;
            };
            let mut output = Vec::new();
            for (input, batch) in inputs {
                output.extend(node.op.process(input, batch));
            }
            self.deliver(id, output, scope, &mut pending);
        }
    }

    fn deliver(
        &self,
        from: NodeId,
        batch: Batch,
        scope: Scope,
        pending: &mut BTreeMap<NodeId, Vec<(usize, Batch)>>,
    ) {
        if batch.is_empty() {
            return;
        }
        let children: Vec<(NodeId, usize)> = match self.nodes.get(&from) {
            Some(node) => node
                .children
                .iter()
                .filter(|(c, _)| self.nodes.get(c).is_some_and(|n| self.in_scope(n, scope)))
                .copied()
                .collect(),
            None => Vec::new(),
        };
        assert!(
            children.iter().all(|(c, _)| *c > from),
            "children are created after their parents, so ids are topological"
        );
        if let Some((last, rest)) = children.split_last() {
            for &(child, input) in rest {
                pending
                    .entry(child)
                    .or_default()
                    .push((input, batch.clone()));
            }
            pending.entry(last.0).or_default().push((last.1, batch));
        }
    }
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

/// Estimated bytes a buffered change holds.
fn change_bytes(c: &Change) -> usize {
    let (Change::Insert(row) | Change::Delete(row)) = c;
    std::mem::size_of::<Change>() + row.iter().map(value_bytes).sum::<usize>()
}

#[cfg(test)]
mod tests;
