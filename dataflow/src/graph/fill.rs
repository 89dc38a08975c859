//! Adding a cache and filling it while live changes keep flowing.
//!
//! [`Graph::add_cache`] builds the nodes the cache cannot share ([`super::share`]) and notes
//! what each of them is owed as of that moment, t0:
//! - a node fed by a base table is owed the table's rows as of t0: the caller reads them from
//!   a storage snapshot taken right after `add_cache` and feeds them with
//!   [`Graph::bootstrap_rows`] ([`Graph::bootstrap_tables`] lists which tables);
//! - a node fed by a shared (live) node is owed that node's present output, which
//!   `add_cache` copies at t0 (the *seed*) and [`Graph::bootstrap_shared`] feeds in chunks.
//!
//! From t0 on, every batch a live node sends to one of the new nodes is held, in arrival
//! order (bounded by [`GraphLimits::bootstrap_buffer_max_bytes`](super::GraphLimits)).
//! [`Graph::finish_bootstrap`] feeds the rest of the seed, then replays the held batches,
//! marks the new nodes live and publishes the reader. Each new node thus sees its inputs as
//! of t0 and then every later change once, which is exactly what it would have seen had it
//! existed all along: operators compute exact changes of their output whatever the order
//! of their input deltas, and everything owed at t0 is an insertion, so no count goes
//! negative before the replay.

use std::collections::{BTreeMap, VecDeque};

use larder_sql::plan::{CachePlan, NodeOp, NodeRef};
use larder_sql::value::{Row, SqlType, TableSchema};

use super::share::{plan_reuse, Signature};
use super::{
    batch_bytes, check_arity, CacheEntry, CacheId, Graph, GraphError, Held, Node, NodeId, Phase,
    Scope, TableId, BATCH_ROWS_MAX,
};
use crate::build::{compile, BuiltNode};
use crate::ops::gate::Gate;
use crate::ops::join::JoinOp;
use crate::ops::{mem, Batch, ReaderOpNode, Record};
use crate::reader::{ReaderHandle, ReaderOp, ReaderState};
use crate::stored::{NoStoredRows, StoredRows};

/// What a cache being filled still needs, and what it has been sent meanwhile.
#[derive(Debug, Default)]
pub(super) struct Filling {
    /// Tables whose rows feed a node the cache built.
    tables: Vec<TableId>,
    /// Present output of shared nodes at t0, owed to the nodes built over them.
    seed: VecDeque<(NodeId, usize, Batch)>,
    /// Batches live nodes sent to the cache's nodes since t0, in arrival order.
    held: Vec<(NodeId, usize, Batch)>,
    bytes: usize,
    /// `(from, to, input)`: while the cache fills, the output of stateful node `from` does
    /// not go on to `to`, the next node on a chain of filters and projects up to the reader.
    /// The fill changes `from`'s output over and over (an aggregate's group, once per
    /// batch); the chain and the reader take its final output once, at the finish, before
    /// the held batches.
    pub(super) defer: Option<(NodeId, NodeId, usize)>,
}

impl Graph {
    /// Validates `plan`, shares every node a live node already computes and builds the
    /// rest. The cache starts not ready: feed it with [`bootstrap_rows`](Self::bootstrap_rows)
    /// for each of [`bootstrap_tables`](Self::bootstrap_tables), optionally
    /// [`bootstrap_shared`](Self::bootstrap_shared), then
    /// [`finish_bootstrap`](Self::finish_bootstrap).
    pub fn add_cache(&mut self, plan: &CachePlan) -> Result<(CacheId, ReaderHandle), GraphError> {
        self.add_cache_with(plan, None)
    }

    /// Whether `plan`, added now, would be a partial cache (one that starts empty and ready,
    /// and fills its keys on demand); `false` also when it cannot be added.
    pub fn would_be_partial(&self, plan: &CachePlan) -> bool {
        self.relations_of(plan)
            .is_ok_and(|(tables, _)| self.partial_shape(plan, &tables).is_some())
    }

    /// The table of each relation of `plan`, and its column types.
    fn relations_of(
        &self,
        plan: &CachePlan,
    ) -> Result<(Vec<TableId>, Vec<Vec<SqlType>>), GraphError> {
        let mut tables = Vec::with_capacity(plan.relations.len());
        let mut types = Vec::with_capacity(plan.relations.len());
        for r in &plan.relations {
            let table = self.table_by_name(&r.schema, &r.name).ok_or_else(|| {
                GraphError::UnknownTableRef {
                    schema: r.schema.clone(),
                    name: r.name.clone(),
                }
            })?;
            let schema = &self.tables[&table].schema;
            types.push(schema.columns.iter().map(|c| c.ty.clone()).collect());
            tables.push(table);
        }
        Ok((tables, types))
    }

    /// How `plan` over `relation_tables` is a partial cache, if it is one.
    pub(super) fn partial_shape(
        &self,
        plan: &CachePlan,
        relation_tables: &[TableId],
    ) -> Option<(TableId, super::partial::PartialShape)> {
        if !self.limits.partial {
            return None;
        }
        let schemas: Vec<&TableSchema> = relation_tables
            .iter()
            .map(|t| self.tables.get(t).map(|t| &t.schema))
            .collect::<Option<_>>()?;
        let shape = super::partial::partial_columns(plan, &schemas, self.limits.stored_joins)?;
        if let (Some(side), Some((join, _))) = (shape.join_side, &shape.gated) {
            // The other input is read from storage (never held: the partial cache holds no
            // side whole), and is another table than the key's.
            let stored = super::stored::stored_side_of(plan, *join, &schemas);
            let [a, b] = relation_tables else { return None };
            if !self.limits.stored_joins || stored != Some(1 - side) || a == b {
                return None;
            }
        }
        Some((*relation_tables.get(shape.relation)?, shape))
    }

    /// A cache of `plan` that is not in the graph yet (it is added when first read): an id
    /// no cache in the graph has, and a reader that is never ready. Checks that `plan`
    /// compiles over the tables as they are.
    pub fn dormant_cache(
        &mut self,
        plan: &CachePlan,
    ) -> Result<(CacheId, ReaderHandle), GraphError> {
        let (_, relation_types) = self.relations_of(plan)?;
        let built = compile(plan, &relation_types, &self.limits)?;
        let id = CacheId(self.next_cache);
        self.next_cache += 1;
        let state = ReaderState::new(std::sync::Arc::clone(&built.order), None);
        // The writer goes at once: reads find the reader gone, as a removed cache's.
        let (writer, read) = left_right::new_from_empty::<ReaderState, ReaderOp>(state);
        drop(writer);
        Ok((id, ReaderHandle::new(read.factory(), built.spec)))
    }

    /// [`add_cache`](Self::add_cache) with storage as of now (the caller holds the writer
    /// between transactions), so that a new node can start from the output of a shared
    /// join that reads a side from storage. Without it such a join is built again for the
    /// new cache instead.
    pub fn add_cache_with(
        &mut self,
        plan: &CachePlan,
        stored: Option<&dyn StoredRows>,
    ) -> Result<(CacheId, ReaderHandle), GraphError> {
        if self.caches.len() >= self.limits.caches_max {
            return Err(GraphError::TooManyCaches(self.limits.caches_max));
        }
        let (relation_tables, relation_types) = self.relations_of(plan)?;
        let mut built = compile(plan, &relation_types, &self.limits)?;
        let schemas: Vec<&TableSchema> = relation_tables
            .iter()
            .map(|t| &self.tables[t].schema)
            .collect();
        // A partial join reads its other side from storage: without storage it is whole.
        let shape = self
            .partial_shape(plan, &relation_tables)
            .filter(|(_, s)| s.join_side.is_none() || stored.is_some());
        let joined = shape.as_ref().is_some_and(|(_, s)| s.join_side.is_some());
        let gated = shape.as_ref().and_then(|(_, s)| s.gated.clone());
        let partial = shape.map(|(table, s)| super::PartialKey {
            table,
            columns: s.columns,
            by_index: s.by_index,
        });
        built.spec.partial = partial.is_some();
        // A partial cache shares nothing: its filters and projections are its own, so a key
        // fill runs through them alone.
        let reuse = if partial.is_some() {
            vec![None; plan.nodes.len()]
        } else {
            self.plan_sharing(plan, &relation_tables, stored.is_some())
        };

        // Joins read storage only when the caller gives it: the fill reads it too.
        let mut stored_sides =
            if self.limits.stored_joins && (partial.is_none() || joined) && stored.is_some() {
                super::stored::stored_sides(plan, &relation_tables, &schemas, &self.limits)?
            } else {
                Vec::new()
            };
        let id = CacheId(self.next_cache);
        self.next_cache += 1;
        let mut tables: Vec<TableId> = Vec::new();
        let mut nodes: Vec<NodeId> = Vec::new();
        let mut filling = Filling::default();
        let mut graph_of: Vec<NodeId> = Vec::with_capacity(built.nodes.len());
        for (i, node) in built.nodes.into_iter().enumerate() {
            let node_id = match (node, reuse[i]) {
                (BuiltNode::Base { relation }, _) => {
                    let table = relation_tables[relation];
                    if !tables.contains(&table) {
                        tables.push(table);
                    }
                    self.tables[&table].node
                }
                (BuiltNode::Op { .. }, Some(shared)) => {
                    if !nodes.contains(&shared) {
                        if let Some(n) = self.nodes.get_mut(&shared) {
                            n.users += 1;
                        }
                        nodes.push(shared);
                    }
                    shared
                }
                (BuiltNode::Op { mut op, inputs }, None) => {
                    if let Some(side) = stored_sides.get_mut(i).and_then(Option::take) {
                        if let Some(join) = op.as_any_mut().downcast_mut::<JoinOp>() {
                            join.set_stored_side(side);
                        }
                    }
                    let parents: Vec<NodeId> = inputs.iter().map(|&p| graph_of[p]).collect();
                    // A gated partial cache's nodes hold only its held keys' state: no other
                    // cache may share them.
                    let sig = gated
                        .is_none()
                        .then(|| Signature::new(&plan.nodes[i].op, &plan.nodes[i].types, &parents));
                    let n = self.add_node(op, parents.clone(), Some(id), sig);
                    nodes.push(n);
                    if let Err(e) = self.note_owed(n, &parents, &mut filling, stored) {
                        // Storage failed listing a shared join's output: nothing of the
                        // cache stays.
                        self.release_nodes(&nodes);
                        return Err(e);
                    }
                    n
                }
            };
            graph_of.push(node_id);
        }
        let state = if partial.is_some() {
            ReaderState::partial(std::sync::Arc::clone(&built.order))
        } else {
            ReaderState::new(
                std::sync::Arc::clone(&built.order),
                built.spec.range.map(|r| (r.column, r.kind)),
            )
        };
        let (writer, read) = left_right::new_from_empty::<ReaderState, ReaderOp>(state);
        let collations = built.spec.collations.clone();
        let handle = ReaderHandle::new(read.factory(), built.spec);
        drop(read);
        let gated = gated.and_then(|(i, parts)| {
            let node = self.nodes.get_mut(graph_of.get(i)?)?;
            if let Some(slot) = node.op.gate_slot() {
                *slot = Some(match joined {
                    true => Gate::on_rows(handle.clone(), parts),
                    false => Gate::new(handle.clone(), parts),
                });
            }
            Some(graph_of[i])
        });
        let reader = ReaderOpNode::new(built.key, built.order, collations, writer);
        let last = *graph_of.last().expect("compile refuses empty plans");
        let reader_node = self.add_node(Box::new(reader), vec![last], Some(id), None);
        nodes.push(reader_node);
        if let Err(e) = self.note_owed(reader_node, &[last], &mut filling, stored) {
            self.release_nodes(&nodes);
            return Err(e);
        }
        filling.defer = self.deferrable(id, reader_node);
        // Rows some operators hold before any input (a global aggregate's row): collect
        // them all first, so no operator sees input before its own initial state exists.
        let initial: Vec<(NodeId, Batch)> = nodes
            .iter()
            .filter_map(|n| {
                let node = self.nodes.get_mut(n)?;
                if node.creator != Some(id) {
                    return None;
                }
                mem::take();
                let out = node.op.initial();
                node.state_bytes = node.state_bytes.saturating_add(mem::take());
                if let Some(ledger) = &mut node.ledger {
                    ledger.record(&out);
                }
                (!out.is_empty()).then_some((*n, out))
            })
            .collect();
        let shared = nodes.iter().filter(|n| self.nodes[n].creator != Some(id));
        tracing::debug!(
            cache = id.0,
            ?tables,
            nodes = nodes.len(),
            shared = shared.count(),
            "cache added"
        );
        let is_partial = partial.is_some();
        self.caches.insert(
            id,
            CacheEntry {
                tables,
                nodes: nodes.clone(),
                reader_node,
                phase: if is_partial {
                    Phase::Ready
                } else {
                    Phase::Filling(filling)
                },
                handle: handle.clone(),
                partial,
                gated,
            },
        );
        if is_partial {
            // Nothing to fill: it starts empty, ready and live; keys come on demand.
            debug_assert!(initial.is_empty(), "filters and projections hold no rows");
            for n in nodes {
                if let Some(node) = self.nodes.get_mut(&n) {
                    if node.creator == Some(id) {
                        node.live = true;
                    }
                }
            }
            if let Some(reader) = self.reader_op(reader_node) {
                reader.ready();
            }
            return Ok((id, handle));
        }
        self.propagate(
            initial,
            Scope::Bootstrap {
                cache: id,
                stored: stored.unwrap_or(&NoStoredRows),
                snapshot_rows: false,
            },
        );
        Ok((id, handle))
    }

    /// The edge below `reader` whose batches the fill may hold back (`Filling::defer`): from
    /// the nearest node built by `cache` that lists its output, through nodes it built
    /// that only filter or project their one input.
    fn deferrable(&self, cache: CacheId, reader: NodeId) -> Option<(NodeId, NodeId, usize)> {
        let mut to = reader;
        loop {
            let node = self.nodes.get(&to)?;
            let [from] = node.parents[..] else {
                return None;
            };
            let parent = self.nodes.get(&from)?;
            if parent.creator != Some(cache) || parent.live {
                return None;
            }
            if parent.ledger.is_some() {
                return Some((from, to, 0));
            }
            if !matches!(parent.op.name(), "filter" | "project") {
                return None;
            }
            to = from;
        }
    }

    /// For each plan node, the live node that already computes it, if any (see
    /// [`plan_reuse`]).
    fn plan_sharing(
        &self,
        plan: &CachePlan,
        relation_tables: &[TableId],
        with_storage: bool,
    ) -> Vec<Option<NodeId>> {
        let mut inputs: Vec<Vec<NodeRef>> = plan.nodes.iter().map(|n| n.op.inputs()).collect();
        // The reader: never shared, but a node it reads must be able to seed it.
        let reader = inputs.len();
        inputs.push(vec![reader - 1]);
        let base = |i: NodeRef| match plan.nodes.get(i).map(|n| &n.op) {
            Some(NodeOp::Base { relation }) => Some(self.tables[&relation_tables[*relation]].node),
            _ => None,
        };
        let mut find = |i: NodeRef, parents: &[NodeId]| {
            let node = plan.nodes.get(i)?;
            let sig = Signature::new(&node.op, &node.types, parents);
            self.signatures
                .get(&sig.bucket())?
                .iter()
                .copied()
                .find(|n| {
                    self.nodes
                        .get(n)
                        .is_some_and(|n| n.live && n.signature.as_ref() == Some(&sig))
                })
        };
        // A node a new one can start from: it lists its output, and that output is small
        // enough to copy under the lock.
        let max = i64::try_from(self.limits.seed_rows_max).unwrap_or(i64::MAX);
        let seedable = |n: NodeId| {
            self.nodes
                .get(&n)
                .filter(|n| with_storage || !n.op.reads_storage())
                .and_then(|n| n.ledger.as_ref())
                .is_some_and(|l| l.rows <= max)
        };
        let mut reuse = plan_reuse(&inputs, &base, &mut find, &seedable);
        reuse.pop();
        reuse
    }

    /// Records what new node `node` is owed as of now from each of its `parents`.
    fn note_owed(
        &mut self,
        node: NodeId,
        parents: &[NodeId],
        filling: &mut Filling,
        stored: Option<&dyn StoredRows>,
    ) -> Result<(), GraphError> {
        for (input, p) in parents.iter().enumerate() {
            let Some(parent) = self.nodes.get(p) else {
                continue;
            };
            if parent.creator.is_none() {
                let table = self
                    .tables
                    .iter()
                    .find(|(_, t)| t.node == *p)
                    .map(|(id, _)| *id);
                if let Some(table) = table.filter(|t| !filling.tables.contains(t)) {
                    filling.tables.push(table);
                }
            } else if parent.live {
                let parent = self.nodes.get_mut(p).expect("looked up above");
                let output = present_output(parent, stored.unwrap_or(&NoStoredRows))?;
                if !output.is_empty() {
                    filling.seed.push_back((node, input, output));
                }
            }
        }
        Ok(())
    }

    /// The tables whose rows (as of the snapshot taken right after
    /// [`add_cache`](Self::add_cache)) the cache still needs through
    /// [`bootstrap_rows`](Self::bootstrap_rows): those feeding a node it built. Empty once
    /// the cache is ready.
    pub fn bootstrap_tables(&self, cache: CacheId) -> Vec<TableId> {
        match self.caches.get(&cache).map(|c| &c.phase) {
            Some(Phase::Filling(f)) => f.tables.clone(),
            _ => Vec::new(),
        }
    }

    /// Feeds rows of `table` as of the bootstrap snapshot into a not-ready cache. May be
    /// called any number of times per table, interleaved with [`apply`](Self::apply); rows
    /// are processed in bounded batches. A table the cache reads only through shared nodes
    /// needs no rows: they are ignored. Fails fast with [`GraphError::BootstrapOverflow`]
    /// once the cache's buffer overflowed.
    pub fn bootstrap_rows(
        &mut self,
        cache: CacheId,
        table: TableId,
        rows: impl IntoIterator<Item = Row>,
    ) -> Result<(), GraphError> {
        self.bootstrap_rows_with(cache, table, rows, &NoStoredRows)
    }

    /// [`bootstrap_rows`](Self::bootstrap_rows) with storage as of the fill's snapshot (the
    /// one given to [`add_cache_with`](Self::add_cache_with)).
    pub fn bootstrap_rows_with(
        &mut self,
        cache: CacheId,
        table: TableId,
        rows: impl IntoIterator<Item = Row>,
        stored: &dyn StoredRows,
    ) -> Result<(), GraphError> {
        let scope = Scope::Bootstrap {
            cache,
            stored,
            snapshot_rows: true,
        };
        let entry = self
            .caches
            .get(&cache)
            .ok_or(GraphError::UnknownCache(cache.0))?;
        let filling = match &entry.phase {
            Phase::Ready => return Err(GraphError::AlreadyReady(cache.0)),
            Phase::Overflowed => return Err(GraphError::BootstrapOverflow(cache.0)),
            Phase::Filling(f) => f,
        };
        if !entry.tables.contains(&table) {
            return Err(GraphError::NotCacheTable {
                cache: cache.0,
                table: table.0,
            });
        }
        if !filling.tables.contains(&table) {
            return Ok(());
        }
        let (base, width) = self.table_root(table)?;
        let mut batch = Vec::with_capacity(BATCH_ROWS_MAX);
        for row in rows {
            check_arity(table, width, &row)?;
            batch.push(Record::Row { row, diff: 1 });
            if batch.len() == BATCH_ROWS_MAX {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_ROWS_MAX));
                self.propagate(vec![(base, full)], scope);
            }
        }
        if !batch.is_empty() {
            self.propagate(vec![(base, batch)], scope);
        }
        Ok(())
    }

    /// Feeds up to `records_max` records of the shared nodes' output owed to a not-ready
    /// cache (so a caller can bound each hold of its lock). Returns whether nothing is left.
    pub fn bootstrap_shared(
        &mut self,
        cache: CacheId,
        records_max: usize,
    ) -> Result<bool, GraphError> {
        self.bootstrap_shared_with(cache, records_max, &NoStoredRows)
    }

    /// [`bootstrap_shared`](Self::bootstrap_shared) with storage as of the fill's snapshot.
    pub fn bootstrap_shared_with(
        &mut self,
        cache: CacheId,
        records_max: usize,
        stored: &dyn StoredRows,
    ) -> Result<bool, GraphError> {
        let mut budget = records_max.max(1);
        loop {
            let entry = self
                .caches
                .get_mut(&cache)
                .ok_or(GraphError::UnknownCache(cache.0))?;
            let filling = match &mut entry.phase {
                Phase::Ready => return Err(GraphError::AlreadyReady(cache.0)),
                Phase::Overflowed => return Err(GraphError::BootstrapOverflow(cache.0)),
                Phase::Filling(f) => f,
            };
            if budget == 0 {
                return Ok(filling.seed.is_empty());
            }
            let Some((node, input, mut batch)) = filling.seed.pop_front() else {
                return Ok(true);
            };
            let take = batch.len().min(budget).min(BATCH_ROWS_MAX);
            if take < batch.len() {
                let rest = batch.split_off(take);
                filling.seed.push_front((node, input, rest));
            }
            budget -= take;
            self.run(
                BTreeMap::from([(node, vec![(input, batch)])]),
                Scope::Bootstrap {
                    cache,
                    stored,
                    snapshot_rows: false,
                },
                Vec::new(),
            );
        }
    }

    /// Feeds what is left of the seed, replays the batches held since
    /// [`add_cache`](Self::add_cache), marks the cache's nodes live and publishes it: from
    /// now on live changes flow into it. After [`GraphError::BootstrapOverflow`] the caller
    /// must remove the cache.
    pub fn finish_bootstrap(&mut self, cache: CacheId) -> Result<(), GraphError> {
        self.finish_bootstrap_with(cache, &NoStoredRows)
    }

    /// [`finish_bootstrap`](Self::finish_bootstrap) with storage as of the fill's snapshot:
    /// a join reading storage sees it plus the held changes replayed so far, which is
    /// storage as it is now once all are replayed.
    pub fn finish_bootstrap_with(
        &mut self,
        cache: CacheId,
        stored: &dyn StoredRows,
    ) -> Result<(), GraphError> {
        while !self.bootstrap_shared_with(cache, usize::MAX, stored)? {}
        let entry = self
            .caches
            .get_mut(&cache)
            .ok_or(GraphError::UnknownCache(cache.0))?;
        // Ready from here on (nothing holds batches back any more); its nodes become live
        // once the deferred output and the held batches have gone through them.
        let (held, defer) = match std::mem::replace(&mut entry.phase, Phase::Ready) {
            Phase::Filling(f) => (f.held, f.defer),
            Phase::Overflowed => {
                entry.phase = Phase::Overflowed;
                return Err(GraphError::BootstrapOverflow(cache.0));
            }
            Phase::Ready => return Err(GraphError::AlreadyReady(cache.0)),
        };
        let reader_node = entry.reader_node;
        let nodes = entry.nodes.clone();
        if let Some((from, to, input)) = defer {
            if let Some(node) = self.nodes.get_mut(&from) {
                let output = present_output(node, stored)?;
                self.run(
                    BTreeMap::from([(to, vec![(input, output)])]),
                    Scope::Bootstrap {
                        cache,
                        stored,
                        snapshot_rows: false,
                    },
                    Vec::new(),
                );
            }
        }
        for (node, input, batch) in held {
            self.run(
                BTreeMap::from([(node, vec![(input, batch)])]),
                Scope::Bootstrap {
                    cache,
                    stored,
                    snapshot_rows: false,
                },
                Vec::new(),
            );
        }
        for n in nodes {
            if let Some(node) = self.nodes.get_mut(&n) {
                if node.creator == Some(cache) {
                    node.live = true;
                    // Storage now holds the replayed changes: a join's overlay goes.
                    mem::take();
                    node.op.end_txn();
                    node.state_bytes = node.state_bytes.saturating_add(mem::take());
                }
            }
        }
        if let Some(reader) = self.reader_op(reader_node) {
            reader.ready();
        }
        tracing::debug!(cache = cache.0, "cache bootstrapped");
        Ok(())
    }

    /// Keeps batches live nodes sent to caches being filled, for their replay.
    pub(super) fn hold(&mut self, held: Vec<Held>) {
        let max = self.limits.bootstrap_buffer_max_bytes;
        for h in held {
            let Some(cache) = self.caches.get_mut(&h.cache) else {
                continue;
            };
            let Phase::Filling(filling) = &mut cache.phase else {
                continue;
            };
            filling.bytes = filling.bytes.saturating_add(batch_bytes(&h.batch));
            if filling.bytes > max {
                tracing::warn!(cache = h.cache.0, max, "bootstrap buffer overflowed");
                cache.phase = Phase::Overflowed;
            } else {
                filling.held.push((h.node, h.input, h.batch));
            }
        }
    }
}

/// A stateful node's whole present output: the rows its operator lists and the poison the
/// graph kept for it. Only stateful nodes seed others (`plan_reuse`) or are deferred.
fn present_output(node: &mut Node, stored: &dyn StoredRows) -> Result<Batch, GraphError> {
    mem::take();
    let listed = node.op.list_output(stored);
    // Listing stores nothing (a stored side's rows are read into a temporary).
    node.state_bytes = node.state_bytes.saturating_add(mem::take());
    let mut output = listed
        .map_err(|e| GraphError::Stored(e.to_string()))?
        .expect("only a node that lists its output hands it on");
    if let Some(ledger) = &node.ledger {
        output.extend(ledger.poison());
    }
    Ok(output)
}
