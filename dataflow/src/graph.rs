//! The dataflow graph: base tables at the roots, caches' operator chains below them.
//!
//! Nodes are kept in a `BTreeMap` keyed by a monotonically increasing id; a node is always
//! created after its parents, so ascending id order is a topological order. Propagation
//! delivers each node all of its input for a batch before running it, which is what
//! multi-input operators (joins, later) need.
//!
//! A new cache is *not ready*: live changes skip its nodes, and the caller fills it with
//! [`Graph::bootstrap`] from the base table's current contents (which already reflect every
//! change applied so far). Bootstrapping feeds only that cache's nodes. The graph is driven by
//! one writer (`&mut self`), does no I/O and spawns no threads; readers run concurrently
//! through [`ReaderHandle`]s and only see changes after [`Graph::publish`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use larder_sql::plan::CachePlan;
use larder_sql::value::{Row, TableSchema};

use crate::error::GraphError;
use crate::eval::{CompiledExpr, ExprContext};
use crate::ops::{BaseOp, Batch, FilterOp, Operator, ProjectOp, ReaderOpNode, Record};
use crate::reader::{ReadSpec, ReaderHandle, ReaderOp, ReaderState, READ_KEY_COMBINATIONS_MAX};

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
}

impl Default for GraphLimits {
    fn default() -> Self {
        GraphLimits {
            caches_max: 10_000,
            read_key_combinations_max: READ_KEY_COMBINATIONS_MAX,
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
    children: Vec<NodeId>,
    /// The cache this node belongs to; `None` for base tables.
    owner: Option<CacheId>,
}

#[derive(Debug)]
struct TableEntry {
    schema: TableSchema,
    node: NodeId,
}

#[derive(Debug)]
struct CacheEntry {
    table: TableId,
    /// All nodes of this cache, in creation order.
    nodes: Vec<NodeId>,
    reader_node: NodeId,
    ready: bool,
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

    /// Unregisters a base table; its caches must have been removed first.
    pub fn remove_table(&mut self, id: TableId) -> Result<(), GraphError> {
        if self.caches.values().any(|c| c.table == id) {
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

    /// Builds the operators of `plan`. The cache starts not ready: call [`Graph::bootstrap`].
    pub fn add_cache(&mut self, plan: &CachePlan) -> Result<(CacheId, ReaderHandle), GraphError> {
        if self.caches.len() >= self.limits.caches_max {
            return Err(GraphError::TooManyCaches(self.limits.caches_max));
        }
        let relation = match plan.relations.as_slice() {
            [one] => one,
            _ => return Err(invalid("only single-table plans are supported")),
        };
        let table = self
            .table_by_name(&relation.schema, &relation.name)
            .ok_or_else(|| GraphError::UnknownTableRef {
                schema: relation.schema.clone(),
                name: relation.name.clone(),
            })?;
        let (base_node, base_types) = {
            let t = &self.tables[&table];
            let types: Vec<_> = t.schema.columns.iter().map(|c| c.ty.clone()).collect();
            (t.node, types)
        };
        let built = BuiltPlan::compile(plan, &base_types, &self.limits)?;

        let id = CacheId(self.next_cache);
        self.next_cache += 1;
        let mut nodes = Vec::new();
        let mut parent = base_node;
        if let Some(filter) = built.filter {
            parent = self.add_node(Box::new(FilterOp::new(filter)), vec![parent], Some(id));
            nodes.push(parent);
        }
        parent = self.add_node(
            Box::new(ProjectOp::new(built.materialized)),
            vec![parent],
            Some(id),
        );
        nodes.push(parent);
        let (writer, read) =
            left_right::new_from_empty::<ReaderState, ReaderOp>(ReaderState::default());
        let handle = ReaderHandle::new(read.factory(), built.spec);
        drop(read);
        let reader = ReaderOpNode::new(plan.key.clone(), built.order, writer);
        let reader_node = self.add_node(Box::new(reader), vec![parent], Some(id));
        nodes.push(reader_node);
        self.caches.insert(
            id,
            CacheEntry {
                table,
                nodes,
                reader_node,
                ready: false,
                handle: handle.clone(),
            },
        );
        tracing::debug!(cache = id.0, table = table.0, "cache added");
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
                        parent.children.retain(|c| c != node_id);
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

    pub fn cache_table(&self, id: CacheId) -> Option<TableId> {
        self.caches.get(&id).map(|c| c.table)
    }

    pub fn is_ready(&self, id: CacheId) -> bool {
        self.caches.get(&id).is_some_and(|c| c.ready)
    }

    /// Feeds rows of the cache's base table (as they are now) into a not-ready cache.
    /// May be called several times; rows are processed in bounded batches.
    pub fn bootstrap_rows(
        &mut self,
        cache: CacheId,
        rows: impl IntoIterator<Item = Row>,
    ) -> Result<(), GraphError> {
        let entry = self
            .caches
            .get(&cache)
            .ok_or(GraphError::UnknownCache(cache.0))?;
        if entry.ready {
            return Err(GraphError::AlreadyReady(cache.0));
        }
        let table = entry.table;
        let (base, width) = self.table_root(table)?;
        let mut batch = Vec::with_capacity(BATCH_ROWS_MAX);
        for row in rows {
            check_arity(table, width, &row)?;
            batch.push(Record::Row { row, diff: 1 });
            if batch.len() == BATCH_ROWS_MAX {
                self.propagate(base, std::mem::take(&mut batch), Scope::Bootstrap(cache));
            }
        }
        if !batch.is_empty() {
            self.propagate(base, batch, Scope::Bootstrap(cache));
        }
        Ok(())
    }

    /// Marks a cache ready and publishes it: from now on live changes flow into it.
    pub fn finish_bootstrap(&mut self, cache: CacheId) -> Result<(), GraphError> {
        let entry = self
            .caches
            .get_mut(&cache)
            .ok_or(GraphError::UnknownCache(cache.0))?;
        entry.ready = true;
        let reader_node = entry.reader_node;
        if let Some(reader) = self.reader_op(reader_node) {
            reader.writer.append(ReaderOp::Ready);
            reader.writer.publish();
        }
        tracing::debug!(cache = cache.0, "cache bootstrapped");
        Ok(())
    }

    /// [`bootstrap_rows`](Self::bootstrap_rows) then [`finish_bootstrap`](Self::finish_bootstrap).
    pub fn bootstrap(
        &mut self,
        cache: CacheId,
        rows: impl IntoIterator<Item = Row>,
    ) -> Result<(), GraphError> {
        self.bootstrap_rows(cache, rows)?;
        self.finish_bootstrap(cache)
    }

    /// Propagates changes of `table` to every ready cache. Nothing becomes visible to
    /// readers before [`publish`](Self::publish). Rows are checked before anything is applied.
    pub fn apply(&mut self, table: TableId, changes: &[Change]) -> Result<(), GraphError> {
        let (base, width) = self.table_root(table)?;
        for change in changes {
            let (Change::Insert(row) | Change::Delete(row)) = change;
            check_arity(table, width, row)?;
        }
        let has_children = self
            .nodes
            .get(&base)
            .is_some_and(|n| !n.children.is_empty());
        if !has_children {
            return Ok(());
        }
        for chunk in changes.chunks(BATCH_ROWS_MAX) {
            let batch = chunk
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
                .collect();
            self.propagate(base, batch, Scope::Live);
        }
        Ok(())
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
        for p in &parents {
            if let Some(parent) = self.nodes.get_mut(p) {
                parent.children.push(id);
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
            (Some(owner), Scope::Live) => self.caches.get(&owner).is_some_and(|c| c.ready),
            (Some(owner), Scope::Bootstrap(cache)) => owner == cache,
        }
    }

    /// Runs `batch` through `source` and everything below it that is in `scope`, in
    /// topological (ascending id) order.
    fn propagate(&mut self, source: NodeId, batch: Batch, scope: Scope) {
        let mut pending: BTreeMap<NodeId, Vec<(NodeId, Batch)>> = BTreeMap::new();
        pending.insert(source, vec![(source, batch)]);
        while let Some((id, inputs)) = pending.pop_first() {
            let Some(node) = self.nodes.get_mut(&id) else {
                continue;
            };
            let mut output = Vec::new();
            for (from, batch) in inputs {
                let input = node.parents.iter().position(|p| *p == from).unwrap_or(0);
                output.extend(node.op.process(input, batch));
            }
            if output.is_empty() {
                continue;
            }
            let children: Vec<NodeId> = match self.nodes.get(&id) {
                Some(n) => n
                    .children
                    .iter()
                    .copied()
                    .filter(|c| self.nodes.get(c).is_some_and(|n| self.in_scope(n, scope)))
                    .collect(),
                None => Vec::new(),
            };
            debug_assert!(children.iter().all(|c| *c > id), "graph is not topological");
            if let Some((last, rest)) = children.split_last() {
                for child in rest {
                    pending
                        .entry(*child)
                        .or_default()
                        .push((id, output.clone()));
                }
                pending.entry(*last).or_default().push((id, output));
            }
        }
    }
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

/// A plan validated and compiled into operator parts.
struct BuiltPlan {
    filter: Option<CompiledExpr>,
    materialized: Vec<CompiledExpr>,
    order: Arc<[larder_sql::plan::OrderKey]>,
    spec: ReadSpec,
}

fn invalid(msg: impl Into<String>) -> GraphError {
    GraphError::InvalidPlan(msg.into())
}

impl BuiltPlan {
    fn compile(
        plan: &CachePlan,
        base_types: &[larder_sql::value::SqlType],
        limits: &GraphLimits,
    ) -> Result<BuiltPlan, GraphError> {
        use larder_sql::plan::NodeOp;
        let (filter, materialized) = match plan.nodes.as_slice() {
            [base, project] => (None, (base, project)),
            [base, filter, project] => match &filter.op {
                NodeOp::Filter { predicate, .. } => (Some(predicate), (base, project)),
                _ => return Err(invalid("unsupported plan shape")),
            },
            _ => return Err(invalid("unsupported plan shape")),
        };
        let (base, project) = materialized;
        if !matches!(base.op, NodeOp::Base { relation: 0 }) {
            return Err(invalid("unsupported plan shape"));
        }
        let (materialized, materialized_types) = match &project.op {
            NodeOp::Project { exprs, .. } => (exprs, &project.types),
            _ => return Err(invalid("unsupported plan shape")),
        };
        let width = materialized.len();
        if materialized_types.len() != width {
            return Err(invalid(
                "materialized_types length differs from materialized",
            ));
        }
        if plan.key.len() != plan.key_params.len() {
            return Err(invalid("key and key_params differ in length"));
        }
        if let Some(k) = plan.key.iter().find(|&&k| k >= width) {
            return Err(invalid(format!("key column {k} out of range")));
        }
        if let Some(p) = plan
            .key_params
            .iter()
            .find(|&&p| p >= plan.param_types.len())
        {
            return Err(invalid(format!("key param slot {p} out of range")));
        }
        if let Some(o) = plan.order_by.iter().find(|o| o.column >= width) {
            return Err(invalid(format!("order column {} out of range", o.column)));
        }
        if let Some(o) = plan.output.iter().find(|o| o.column >= width) {
            return Err(invalid(format!("output column {} out of range", o.column)));
        }
        let base_ctx = ExprContext {
            columns: base_types,
            params: None,
        };
        let read_ctx = ExprContext {
            columns: materialized_types,
            params: Some(&plan.param_types),
        };
        let filter = filter
            .map(|f| CompiledExpr::compile(f, &base_ctx))
            .transpose()?;
        let materialized = materialized
            .iter()
            .map(|e| CompiledExpr::compile(e, &base_ctx))
            .collect::<Result<Vec<_>, _>>()?;
        let residual = plan
            .residual
            .as_ref()
            .map(|r| CompiledExpr::compile(r, &read_ctx))
            .transpose()?;
        let order: Arc<[_]> = plan.order_by.clone().into();
        let spec = ReadSpec {
            key_params: plan.key_params.clone(),
            residual,
            order: Arc::clone(&order),
            offset: plan.offset,
            limit: plan.limit,
            output: plan.output.clone(),
            key_combinations_max: limits.read_key_combinations_max,
        };
        Ok(BuiltPlan {
            filter,
            materialized,
            order,
            spec,
        })
    }
}
