//! What a table's shape change, drop or failure does to what Larder holds: the new shape
//! registered, the table recopied at the change's position (copies taken before the
//! dataflow lock), its caches stopped, removed from the graph and rebuilt, or the table
//! quarantined after a change the dataflow could not apply.

use super::*;

/// A relation message: a new table, or a known one whose shape may have changed.
pub(super) fn handle_relation(
    core: &Core,
    source: &dyn TableSource,
    copies: &Copies,
    txn: &mut Txn<'_>,
    graph: &mut larder_dataflow::Graph,
    rel: RelationInfo,
    position: u64,
) -> Result<(), ApplyError> {
    let known = core
        .tables
        .read()
        .expect("tables lock poisoned")
        .get(rel.oid)
        .cloned();
    let Some(entry) = known else {
        // A table of the same name under another oid was dropped and re-created.
        let replaced = core
            .tables
            .read()
            .expect("tables lock poisoned")
            .by_name(&rel.schema.schema, &rel.schema.name)
            .cloned();
        if let Some(old) = replaced {
            let reason = format!(
                "table {}.{} was dropped and re-created upstream",
                rel.schema.schema, rel.schema.name
            );
            warn!(%reason, "caches on the old table stop serving");
            forget_table(core, txn, graph, &old, &reason)?;
        }
        // Created after the slot: its rows all come from the stream.
        let entry = register_relation(core, txn, graph, &rel, TableState::Online)?;
        info!(table = %format!("{}.{}", rel.schema.schema, rel.schema.name), "new table picked up from the change stream");
        core.tables
            .write()
            .expect("tables lock poisoned")
            .insert(entry);
        return Ok(());
    };
    match (entry.stored.is_some(), rel.status.is_replicated()) {
        (true, true) if entry.schema == rel.schema => return Ok(()),
        (false, false) => {
            // Still not replicated (perhaps for another reason): just remember the news.
            let reason = match &rel.status {
                TableStatus::NotReplicated { reason } => reason.clone(),
                TableStatus::Replicated => unreachable!("matched as not replicated"),
            };
            txn.put_skipped(rel.oid, &rel.schema.schema, &rel.schema.name, &reason);
            let updated = TableEntry {
                oid: rel.oid,
                schema: rel.schema.clone(),
                stored: None,
                state: TableState::NotReplicated { reason },
            };
            core.tables
                .write()
                .expect("tables lock poisoned")
                .insert(updated);
            return Ok(());
        }
        _ => {}
    }
    let reason = format!(
        "table {}.{} changed shape upstream",
        entry.schema.schema, entry.schema.name
    );
    warn!(%reason, "schema change: caches on the table stop serving and the table is copied again");
    recopy(
        core,
        source,
        copies,
        txn,
        graph,
        &entry,
        Some(&rel),
        &reason,
        position,
    )
}

/// Replace what Larder holds of a table by the table as the upstream has it now: its caches
/// stop serving, it is copied again (keyed tables only: replaying the stream over a copy is
/// idempotent only with a key), and it waits until the stream passes the copy's position.
/// `stream_shape` is the shape the stream announced; when the catalog is already ahead of it
/// (more DDL followed), nothing is held until the stream announces the newer shape.
#[allow(clippy::too_many_arguments)]
pub(super) fn recopy(
    core: &Core,
    source: &dyn TableSource,
    copies: &Copies,
    txn: &mut Txn<'_>,
    graph: &mut larder_dataflow::Graph,
    entry: &TableEntry,
    stream_shape: Option<&RelationInfo>,
    reason: &str,
    position: u64,
) -> Result<(), ApplyError> {
    forget_table(core, txn, graph, entry, reason)?;
    let name = format!("{}.{}", entry.schema.schema, entry.schema.name);
    let copied = match copies.get(&entry.oid) {
        Some(c) => c.clone(),
        // Not foreseen (rare): copied under the lock.
        None => source.copy_now(entry.oid)?,
    };
    let Some((rel, rows, copy_lsn)) = copied else {
        info!(table = %name, "table dropped upstream");
        return Ok(());
    };
    if stream_shape.is_some_and(|s| s.schema != rel.schema) {
        let waiting = TableEntry {
            oid: rel.oid,
            schema: stream_shape
                .map(|s| s.schema.clone())
                .unwrap_or_else(|| rel.schema.clone()),
            stored: None,
            state: TableState::NotReplicated {
                reason: "its shape is changing; it is copied again at its next change".into(),
            },
        };
        core.tables
            .write()
            .expect("tables lock poisoned")
            .insert(waiting);
        return Ok(());
    }
    let mut new_entry = register_relation(core, txn, graph, &rel, TableState::Online)?;
    if let Some(stored) = new_entry.stored.clone() {
        if stored.schema.key.is_empty() {
            txn.delete_table(stored.id);
            let _ = graph.remove_table(DfTableId(stored.id as u64));
            new_entry.stored = None;
            new_entry.state = TableState::NotReplicated {
                reason: "its shape changed and it has no primary key; Larder copies such tables only in a fresh snapshot (drop the replication slot and restart Larder)".into(),
            };
            txn.put_skipped(
                rel.oid,
                &rel.schema.schema,
                &rel.schema.name,
                "its shape changed and it has no primary key",
            );
        } else {
            core.ops.snapshot_rows.add(rows.len() as u64);
            for row in rows {
                check_row(&stored, &row)?;
                txn.insert(&stored, row)?;
            }
            new_entry.state = if copy_lsn.0 > position {
                TableState::CatchingUp {
                    until_lsn: copy_lsn.0,
                }
            } else {
                TableState::Online
            };
            info!(table = %name, copy_position = %copy_lsn, "table copied again after a shape change");
        }
    }
    core.tables
        .write()
        .expect("tables lock poisoned")
        .insert(new_entry);
    Ok(())
}

/// Rows arrived that do not fit the shape Larder holds: stop holding the table (its caches go
/// upstream) until the stream announces its shape again.
pub(super) fn quarantine(
    core: &Core,
    txn: &mut Txn<'_>,
    graph: &mut larder_dataflow::Graph,
    rel: u32,
    detail: &str,
) -> Result<(), ApplyError> {
    let Some(entry) = core
        .tables
        .read()
        .expect("tables lock poisoned")
        .get(rel)
        .cloned()
    else {
        return Ok(());
    };
    let reason = format!("rows arrived in a shape Larder does not hold ({detail}); waiting for the table's next shape change");
    warn!(table = %format!("{}.{}", entry.schema.schema, entry.schema.name), %reason, "table quarantined");
    forget_table(core, txn, graph, &entry, &reason)?;
    let mut held = entry.clone();
    held.stored = None;
    held.state = TableState::NotReplicated { reason };
    core.tables
        .write()
        .expect("tables lock poisoned")
        .insert(held);
    Ok(())
}

/// Drop what Larder holds of a table: its caches stop serving (they are rebuilt by name once
/// the table is online again), its rows, its graph node and its registry entry.
pub(super) fn forget_table(
    core: &Core,
    txn: &mut Txn<'_>,
    graph: &mut larder_dataflow::Graph,
    entry: &TableEntry,
    reason: &str,
) -> Result<(), ApplyError> {
    core.shape_epoch.fetch_add(1, Ordering::SeqCst);
    for cache in core.caches.reading(entry.oid) {
        cache.invalidate(reason);
        let _ = graph.remove_cache(cache.cache_id);
    }
    if let Some(stored) = &entry.stored {
        // Caches the registry does not list under this oid (being filled, or built on an
        // older relation of the name) must not keep the table's node alive.
        remove_graph_caches_of(graph, DfTableId(stored.id as u64));
    }
    if entry.stored.is_none() {
        txn.delete_skipped(entry.oid);
    }
    if let Some(stored) = &entry.stored {
        txn.delete_table(stored.id);
        graph
            .remove_table(DfTableId(stored.id as u64))
            .map_err(|e| ApplyError::Dataflow(e.to_string()))?;
    }
    core.tables
        .write()
        .expect("tables lock poisoned")
        .remove(entry.oid);
    Ok(())
}

/// Removes from the graph every cache that reads `table`.
pub(super) fn remove_graph_caches_of(graph: &mut larder_dataflow::Graph, table: DfTableId) {
    for id in graph.cache_ids() {
        if graph.cache_tables(id).contains(&table) {
            let _ = graph.remove_cache(id);
        }
    }
}

/// A change of one table could not be applied to the dataflow (storage has it): the caches
/// that read the table stop serving with the reason, leave the graph, and are rebuilt from
/// storage; replication goes on for everything else.
pub(super) fn quarantine_table(
    core: &Core,
    graph: &mut larder_dataflow::Graph,
    table: DfTableId,
    error: &larder_dataflow::GraphError,
) {
    let entry = core
        .tables
        .read()
        .expect("tables lock poisoned")
        .all()
        .find(|t| t.stored.as_ref().is_some_and(|s| s.id as u64 == table.0))
        .map(|t| (t.oid, format!("{}.{}", t.schema.schema, t.schema.name)));
    let Some((oid, name)) = entry else {
        warn!(table = table.0, %error, "applying changes to an unknown table failed");
        remove_graph_caches_of(graph, table);
        return;
    };
    let reason = format!("applying a change to {name} failed ({error}); the cache is rebuilt");
    warn!(table = %name, %error, "caches on the table stop serving and are rebuilt; replication goes on");
    stop_and_rebuild(core, graph, oid, Some(table), &reason);
}

/// The caches that read table `oid` (stored as `table`) stop serving with `reason`, leave the
/// graph, and are rebuilt from storage.
fn stop_and_rebuild(
    core: &Core,
    graph: &mut larder_dataflow::Graph,
    oid: u32,
    table: Option<DfTableId>,
    reason: &str,
) {
    core.invalidate_caches_on(oid, reason);
    if let Some(table) = table {
        remove_graph_caches_of(graph, table);
    }
    core.request_rebuild(oid);
}

/// A batch touching the table `oid` failed to apply as a whole (nothing of it was committed,
/// but the dataflow may hold part of it): the caches that read the table stop serving with the
/// reason, leave the graph, and are rebuilt from storage, which holds exactly the changes up
/// to the applied position.
pub(super) fn quarantine_after_failed_batch(
    core: &Core,
    graph: &mut larder_dataflow::Graph,
    oid: u32,
    error: &ApplyError,
) {
    let stored = core
        .tables
        .read()
        .expect("tables lock poisoned")
        .get(oid)
        .and_then(|t| t.stored.as_ref().map(|s| DfTableId(s.id as u64)));
    let reason = format!("applying a replicated transaction failed ({error}); replication retries and the cache is rebuilt");
    stop_and_rebuild(core, graph, oid, stored, &reason);
}

/// A table copied as of now: its shape, rows and the WAL position of the copy (`None`: the
/// table no longer exists).
type Copied = Option<(RelationInfo, Vec<Row>, Lsn)>;
/// Copies taken for one batch, by table oid.
type Copies = std::collections::HashMap<u32, Copied>;

/// Copies every table the batch will copy again (announced DDL on a table Larder knows, or a
/// Relation message with another shape than Larder holds), each once. A copy is as of now,
/// which is at or after every change of the batch, so one copy serves each recopy of a table
/// in the batch.
pub(super) fn prefetch_copies(
    core: &Core,
    source: &dyn TableSource,
    changes: &[Change],
) -> Result<Copies, ApplyError> {
    let mut wanted: Vec<u32> = Vec::new();
    // Tables the batch itself introduces (created in it): later changes may copy them too.
    let mut introduced: Vec<&RelationInfo> = Vec::new();
    {
        let tables = core.tables.read().expect("tables lock poisoned");
        for change in changes {
            let oid = match change {
                Change::SchemaChanged { rel }
                    if tables.get(*rel).is_some() || introduced.iter().any(|r| r.oid == *rel) =>
                {
                    *rel
                }
                Change::Relation(rel) if tables.get(rel.oid).is_none() => {
                    match introduced.iter().position(|r| r.oid == rel.oid) {
                        Some(i) if introduced[i].schema != rel.schema => rel.oid,
                        Some(_) => continue,
                        None => {
                            introduced.push(rel);
                            continue;
                        }
                    }
                }
                Change::Relation(rel) => match tables.get(rel.oid) {
                    Some(e) => match (e.stored.is_some(), rel.status.is_replicated()) {
                        (true, true) if e.schema == rel.schema => continue,
                        (false, false) => continue,
                        _ => rel.oid,
                    },
                    None => continue,
                },
                _ => continue,
            };
            if !wanted.contains(&oid) {
                wanted.push(oid);
            }
        }
    }
    let mut copies = Copies::new();
    for oid in wanted {
        copies.insert(oid, source.copy_now(oid)?);
    }
    Ok(copies)
}

/// What applying needs of a replication source besides its change batches: copying one
/// table again as of now, when DDL changed it (a `Relation` or `SchemaChanged` change).
pub trait TableSource: Sync {
    /// The table's shape, its rows and the position the copy is consistent at; `None` when
    /// the table is gone (then its caches stop serving and it is forgotten). Runs on the
    /// applier thread (the stream waits meanwhile).
    fn copy_now(&self, oid: u32) -> Result<Option<(RelationInfo, Vec<Row>, Lsn)>, ApplyError>;
}

impl TableSource for PgSource {
    fn copy_now(&self, oid: u32) -> Result<Option<(RelationInfo, Vec<Row>, Lsn)>, ApplyError> {
        let mut sink = Collect::default();
        let copied = own_runtime()?.block_on(self.copy_table_now(oid, &mut sink))?;
        Ok(copied.map(|(table, lsn)| (table.relation, sink.0, lsn)))
    }
}

impl TableSource for larder_replication::mysql::MySource {
    fn copy_now(&self, oid: u32) -> Result<Option<(RelationInfo, Vec<Row>, Lsn)>, ApplyError> {
        let mut sink = Collect::default();
        let copied = own_runtime()?.block_on(self.copy_table_now(oid, &mut sink))?;
        Ok(copied.map(|(relation, position)| (relation, sink.0, Lsn(position.progress()))))
    }
}

/// A table's copied rows, in memory (a table copied again is applied in one batch).
#[derive(Default)]
struct Collect(Vec<Row>);

impl SnapshotSink for Collect {
    async fn deliver(&mut self, batch: SnapshotBatch) -> Result<(), String> {
        self.0.extend(batch.rows);
        Ok(())
    }
}

/// A runtime of its own for a copy made on the applier thread: the copy (and its connection
/// task) must not depend on the shared workers, one of which may be blocked on the dataflow
/// lock this thread holds.
fn own_runtime() -> Result<tokio::runtime::Runtime, ApplyError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ApplyError::Copy(e.to_string()))
}
