//! Keeps RocksDB and the dataflow in step with the upstream: start-up (prerequisites,
//! publication, slot, snapshot), then applying one upstream transaction at a time.
//!
//! Each transaction is applied under the dataflow lock: storage batch (rows + position) is
//! committed first, then the same changes go through the graph, then the graph publishes. A
//! `CREATE CACHE` takes the same lock to scan storage, so a new cache sees exactly the rows of
//! the position it starts from.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use larder_dataflow::{Change as DfChange, TableId as DfTableId};
use larder_replication::{
    Change, ChangeBatch, DiscoveredTable, Lsn, OldRow, OpenOutcome, PgSource, RelationInfo,
    ReplicationError, SnapshotBatch, SnapshotSink, TableStatus,
};
use larder_sql::Row;
use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::core::Core;
use crate::storage::{StorageError, StoredTable, Txn};
use crate::tables::{TableEntry, TableState};

mod parts;
mod tables;

use tables::*;

use parts::*;
pub use parts::{hold_partial_tables, PartsState};

/// Upper bound of transactions waiting between the stream reader and the applier.
const APPLY_QUEUE_MAX: usize = 64;
/// How often applied positions are flushed to disk and acknowledged upstream.
const ACK_INTERVAL_MS: u64 = 500;

#[derive(Debug, Error)]
pub enum ApplyError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("dataflow: {0}")]
    Dataflow(String),
    #[error("replication: {0}")]
    Replication(#[from] ReplicationError),
    #[error("copying a table: {0}")]
    Copy(String),
    /// Injected by a test (`--failpoint-apply-table`).
    #[error("injected failure: {0}")]
    Failpoint(String),
}

impl ApplyError {
    /// Errors only an operator can fix (settings, privileges, slots): Larder stops and says
    /// what to change instead of retrying forever.
    pub fn needs_operator(&self) -> bool {
        matches!(
            self,
            ApplyError::Replication(
                ReplicationError::WalLevelNotLogical { .. }
                    | ReplicationError::MissingReplicationPrivilege { .. }
                    | ReplicationError::NoFreeReplicationSlots { .. }
                    | ReplicationError::PublicationNotCreatable { .. }
                    | ReplicationError::InvalidConfig(_)
            )
        )
    }
}

/// Start replication: returns once the snapshot (if any) is in RocksDB and streaming runs in
/// the background. Retries the stream with backoff when the connection drops.
pub async fn start(core: Arc<Core>, source: Arc<PgSource>) -> Result<(), ApplyError> {
    source.check_prerequisites().await?;
    source.ensure_publication().await?;
    match source.ensure_ddl_announcements().await {
        Ok(true) => {
            core.ddl_triggers.store(true, Ordering::SeqCst);
            info!("DDL is announced in the change stream (event triggers installed)")
        }
        Ok(false) => warn!(
            "the replication role is not a superuser: DDL is noticed by polling the catalog only"
        ),
        Err(e) => {
            warn!(error = %e, "could not install the DDL event triggers; DDL is noticed by polling")
        }
    }
    core.c_collation
        .store(text_order_is_bytewise(&source).await, Ordering::SeqCst);
    let stored = core.storage.position()?.map(Lsn);
    let outcome = match source.open(stored).await {
        Err(ReplicationError::SlotExistsWithoutPosition { slot }) => {
            warn!(%slot, "replication slot exists but Larder has no stored position: recreating it");
            source.drop_slot().await?;
            source.open(None).await?
        }
        other => other?,
    };
    let outcome = match outcome {
        OpenOutcome::Fresh(fresh) => {
            core.set_replication_status("Snapshotting");
            let tables = source.discover_tables().await?;
            let start = fresh.consistent_point;
            initial_snapshot(&core, &source, &fresh, &tables).await?;
            let mut txn = core.storage.begin();
            txn.set_position(start.0);
            txn.commit()?;
            core.status.applied_lsn.store(start.0, Ordering::SeqCst);
            info!(position = %start, "snapshot complete");
            OpenOutcome::Fresh(fresh)
        }
        resume @ OpenOutcome::Resume { .. } => {
            let OpenOutcome::Resume { start_lsn } = &resume else {
                unreachable!()
            };
            info!(position = %start_lsn, "resuming replication from the stored position");
            core.status.applied_lsn.store(start_lsn.0, Ordering::SeqCst);
            resume
        }
    };
    core.set_replication_status("Streaming");
    tokio::spawn(stream_forever(core, source, outcome));
    Ok(())
}

/// Whether the database's default text ordering is bytewise (libc "C"/"POSIX"; an ICU
/// default is not, whatever `datcollate` says).
async fn text_order_is_bytewise(source: &PgSource) -> bool {
    let Ok(client) = source.client().await else {
        return false;
    };
    let with_provider = "SELECT datcollate IN ('C', 'POSIX') AND datlocprovider = 'c' \
                         FROM pg_catalog.pg_database WHERE datname = current_database()";
    let without = "SELECT datcollate IN ('C', 'POSIX') \
                   FROM pg_catalog.pg_database WHERE datname = current_database()";
    match client.query_one(with_provider, &[]).await {
        Ok(row) => row.get(0),
        // Before Postgres 15 there is no ICU default (no datlocprovider column).
        Err(_) => client
            .query_one(without, &[])
            .await
            .map(|r| r.get(0))
            .unwrap_or(false),
    }
}

/// Load the tables Larder already has (after a restart) into the registry and the graph.
pub fn load_stored_tables(core: &Core) -> Result<(), ApplyError> {
    let stored = core.storage.tables()?;
    let skipped = core.storage.skipped_tables()?;
    let mut graph = core.dataflow.lock().expect("dataflow lock poisoned");
    let mut tables = core.tables.write().expect("tables lock poisoned");
    for (oid, schema, name, reason) in skipped {
        tables.insert(TableEntry {
            oid,
            // Columns are unknown until the stream describes the table again.
            schema: larder_sql::TableSchema {
                schema,
                name,
                columns: Vec::new(),
                key: Vec::new(),
            },
            stored: None,
            state: TableState::NotReplicated { reason },
        });
    }
    for t in stored {
        graph
            .add_table(DfTableId(t.id as u64), t.schema.clone())
            .map_err(|e| ApplyError::Dataflow(e.to_string()))?;
        tables.insert(TableEntry {
            oid: t.upstream_oid,
            schema: t.schema.clone(),
            stored: Some(t),
            state: TableState::Online,
        });
    }
    Ok(())
}

struct StorageSink<'a> {
    core: &'a Core,
}

impl SnapshotSink for StorageSink<'_> {
    async fn deliver(&mut self, batch: SnapshotBatch) -> Result<(), String> {
        let core = self.core;
        let stored = {
            let tables = core.tables.read().expect("tables lock poisoned");
            tables.get(batch.rel).and_then(|t| t.stored.clone())
        };
        let Some(table) = stored else {
            return Err(format!("snapshot rows for unknown relation {}", batch.rel));
        };
        let mut txn = core.storage.begin();
        core.ops.snapshot_rows.add(batch.rows.len() as u64);
        for row in batch.rows {
            check_row(&table, &row).map_err(|e| e.to_string())?;
            txn.insert(&table, row).map_err(|e| e.to_string())?;
        }
        txn.commit().map_err(|e| e.to_string())?;
        let mut tables = core.tables.write().expect("tables lock poisoned");
        if let Some(entry) = tables.get_mut(batch.rel) {
            let now = std::time::Instant::now();
            let mut clock = match entry.state {
                TableState::Snapshotting { clock: Some(c), .. } => c,
                _ => crate::tables::SnapshotClock::new(now),
            };
            entry.state = if batch.table_done {
                info!(table = %format!("{}.{}", entry.schema.schema, entry.schema.name), rows = batch.rows_done, "table snapshot done");
                TableState::Online
            } else {
                TableState::Snapshotting {
                    rows_done: batch.rows_done,
                    rows_estimated: batch.rows_estimated,
                    clock: Some(clock),
                }
            };
            if !batch.table_done && clock.log_due(now) {
                let p = entry.state.progress(now).unwrap_or_default();
                info!(
                    table = %format!("{}.{}", entry.schema.schema, entry.schema.name),
                    rows_done = p.rows_done,
                    rows_estimated = p.rows_estimated.unwrap_or(0),
                    percent = p.percent.map_or(-1.0, |x| (x * 10.0).round() / 10.0),
                    eta_seconds = p.eta.map_or(-1, |d| d.as_secs() as i64),
                    "snapshot progress"
                );
                if let TableState::Snapshotting { clock: c, .. } = &mut entry.state {
                    *c = Some(clock);
                }
            }
        }
        Ok(())
    }
}

async fn initial_snapshot(
    core: &Core,
    source: &PgSource,
    fresh: &larder_replication::FreshSlot,
    tables: &[DiscoveredTable],
) -> Result<(), ApplyError> {
    // Start from nothing: whatever was stored belongs to an older slot.
    core.storage.wipe()?;
    {
        let mut graph = core.dataflow.lock().expect("dataflow lock poisoned");
        *graph = larder_dataflow::Graph::new();
        let mut registry = core.tables.write().expect("tables lock poisoned");
        *registry = Default::default();
        let mut txn = core.storage.begin();
        for t in tables {
            let entry = register_relation(
                core,
                &mut txn,
                &mut graph,
                &t.relation,
                TableState::Snapshotting {
                    rows_done: 0,
                    rows_estimated: t.estimated_rows,
                    clock: None,
                },
            )?;
            registry.insert(entry);
        }
        txn.commit()?;
    }
    let summary = source
        .snapshot(fresh, tables, &mut StorageSink { core })
        .await?;
    info!(
        tables = summary.tables,
        rows = summary.rows,
        "snapshot copied"
    );
    Ok(())
}

/// A registry entry for a relation; replicated ones get a storage id and a graph table.
fn register_relation(
    core: &Core,
    txn: &mut Txn<'_>,
    graph: &mut larder_dataflow::Graph,
    rel: &RelationInfo,
    state: TableState,
) -> Result<TableEntry, ApplyError> {
    let name = format!("{}.{}", rel.schema.schema, rel.schema.name);
    match &rel.status {
        TableStatus::NotReplicated { reason } => {
            info!(table = %name, %reason, "table not replicated");
            txn.put_skipped(rel.oid, &rel.schema.schema, &rel.schema.name, reason);
            Ok(TableEntry {
                oid: rel.oid,
                schema: rel.schema.clone(),
                stored: None,
                state: TableState::NotReplicated {
                    reason: reason.clone(),
                },
            })
        }
        TableStatus::Replicated => {
            let stored = StoredTable {
                id: core.storage.allocate_table_id()?,
                upstream_oid: rel.oid,
                schema: rel.schema.clone(),
            };
            txn.put_table(&stored);
            graph
                .add_table(DfTableId(stored.id as u64), stored.schema.clone())
                .map_err(|e| ApplyError::Dataflow(e.to_string()))?;
            Ok(TableEntry {
                oid: rel.oid,
                schema: rel.schema.clone(),
                stored: Some(stored),
                state,
            })
        }
    }
}

async fn stream_forever(core: Arc<Core>, source: Arc<PgSource>, first: OpenOutcome) {
    let (ack_tx, ack_rx) = watch::channel(Lsn(core.status.applied_lsn.load(Ordering::SeqCst)));
    tokio::spawn(ack_loop(core.clone(), ack_tx));
    let mut next = Some(first);
    let mut backoff_ms = 100u64;
    loop {
        let outcome = match next.take() {
            Some(o) => o,
            None => OpenOutcome::Resume {
                start_lsn: Lsn(core.status.applied_lsn.load(Ordering::SeqCst)),
            },
        };
        let (tx, rx) = mpsc::channel::<ChangeBatch>(APPLY_QUEUE_MAX);
        let applier = {
            let core = core.clone();
            let source = source.clone();
            tokio::task::spawn_blocking(move || apply_loop(&core, &source, rx))
        };
        let result = source.stream(outcome, ack_rx.clone(), tx).await;
        let applied = applier.await;
        match (&result, applied) {
            (_, Ok(Err(e))) => {
                // Nothing of the failed transaction is stored: the stream starts again at the
                // applied position and delivers it again.
                error!(error = %e, retry_in_ms = backoff_ms,
                    "applying replicated changes failed; the caches on its tables stop serving and replication restarts");
                core.set_last_error(format!("applying changes: {e}"));
                core.set_replication_status("Retrying: apply error");
            }
            (_, Err(e)) => {
                error!(error = %e, retry_in_ms = backoff_ms, "the apply task failed; replication restarts");
                core.set_last_error(format!("applying changes: {e}"));
                core.set_replication_status("Retrying: apply error");
            }
            (Err(e), _) => {
                warn!(error = %e, retry_in_ms = backoff_ms, "replication stream ended; reconnecting");
                core.set_last_error(format!("replication stream: {e}"));
                core.set_replication_status("Reconnecting");
            }
            (Ok(()), _) => {
                warn!(
                    retry_in_ms = backoff_ms,
                    "replication stream closed; reconnecting"
                );
                core.set_replication_status("Reconnecting");
            }
        }
        if core.is_shutting_down() {
            return;
        }
        core.status.restarts.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
        backoff_ms = (backoff_ms * 2).min(10_000);
        if let Ok(outcome) = source
            .open(Some(Lsn(core.status.applied_lsn.load(Ordering::SeqCst))))
            .await
        {
            if let OpenOutcome::Fresh(fresh) = outcome {
                slot_lost(&core, &source, fresh).await;
                return;
            }
            core.set_replication_status("Streaming");
            backoff_ms = 100;
            next = Some(outcome);
        }
    }
}

/// The slot disappeared while streaming (dropped upstream, or invalidated): the changes since
/// the applied position are gone, so the stored tables can never catch up from here. Caches
/// stop serving for good, and the slot `open` just created is dropped again so that a restart
/// takes a fresh snapshot instead of resuming past the lost changes.
async fn slot_lost(core: &Core, source: &PgSource, fresh: larder_replication::FreshSlot) {
    drop(fresh);
    let reason = "the replication slot is gone (dropped or invalidated upstream): the stored \
                  tables cannot catch up; restart Larder to take a fresh snapshot";
    error!("{reason}");
    core.ops.freshness.halt(reason);
    core.set_last_error(reason.to_string());
    core.set_replication_status("Stopped: replication slot lost");
    if let Err(e) = source.drop_slot().await {
        warn!(error = %e, "dropping the replication slot created while reconnecting");
    }
}

/// Flushes RocksDB's WAL and then tells the upstream it may release WAL up to there.
async fn ack_loop(core: Arc<Core>, ack: watch::Sender<Lsn>) {
    let mut interval = tokio::time::interval(Duration::from_millis(ACK_INTERVAL_MS));
    loop {
        interval.tick().await;
        let applied = core.status.applied_lsn.load(Ordering::SeqCst);
        if applied <= ack.borrow().0 {
            if ack.is_closed() && core.is_shutting_down() {
                return;
            }
            continue;
        }
        let flushed = {
            let core = core.clone();
            tokio::task::spawn_blocking(move || core.storage.flush_wal()).await
        };
        match flushed {
            Ok(Ok(())) => {
                ack.send_replace(Lsn(applied));
            }
            Ok(Err(e)) => warn!(error = %e, "flushing the storage WAL failed"),
            Err(e) => warn!(error = %e, "flush task failed"),
        }
    }
}

fn apply_loop(
    core: &Core,
    source: &PgSource,
    mut rx: mpsc::Receiver<ChangeBatch>,
) -> Result<(), ApplyError> {
    let mut parts = None;
    while let Some(batch) = rx.blocking_recv() {
        let mut touched: Vec<u32> = Vec::new();
        for change in &batch.changes {
            let oids = match change {
                Change::Relation(rel) => std::slice::from_ref(&rel.oid),
                other => tables_of(other),
            };
            for oid in oids {
                if !touched.contains(oid) {
                    touched.push(*oid);
                }
            }
        }
        if let Err(e) = apply_batch(core, source, batch, &mut parts) {
            // Storage committed nothing of the batch, but the dataflow may hold part of it:
            // the caches on its tables stop serving until rebuilt from storage.
            let mut graph = core.dataflow.lock().expect("dataflow lock poisoned");
            for oid in touched {
                tables::quarantine_after_failed_batch(core, &mut graph, oid, &e);
            }
            graph.publish();
            return Err(e);
        }
    }
    Ok(())
}

/// `--failpoint-apply-table`: fails a transaction writing to that table once per position,
/// after part of it reached the dataflow would have (the caller cannot tell the difference).
fn failpoint_apply(core: &Core, batch: &ChangeBatch, position: u64) -> Result<(), ApplyError> {
    let Some(name) = &core.failpoints.apply_table else {
        return Ok(());
    };
    let tables = core.tables.read().expect("tables lock poisoned");
    let hits = batch
        .changes
        .iter()
        .flat_map(tables_of)
        .any(|oid| tables.get(*oid).is_some_and(|t| &t.schema.name == name));
    drop(tables);
    if !hits || position == 0 {
        return Ok(());
    }
    let mut failed = core
        .failpoints
        .apply_failed_at
        .lock()
        .expect("failpoint lock poisoned");
    if failed.contains(&position) {
        return Ok(());
    }
    failed.push(position);
    Err(ApplyError::Failpoint(format!(
        "applying the transaction at {} fails once",
        Lsn(position)
    )))
}

/// Tables a change writes to.
fn tables_of(change: &Change) -> &[u32] {
    match change {
        Change::Insert { rel, .. }
        | Change::Update { rel, .. }
        | Change::Delete { rel, .. }
        | Change::SchemaChanged { rel } => std::slice::from_ref(rel),
        Change::Truncate { rels } => rels,
        Change::Relation(_) => &[],
    }
}

/// Apply one upstream transaction (or one part of a large one, see [`PartialTxn`]) to storage
/// and the dataflow. `parts` carries the progress through a transaction delivered in parts.
pub fn apply_batch(
    core: &Core,
    source: &PgSource,
    batch: ChangeBatch,
    parts: &mut Option<PartsState>,
) -> Result<(), ApplyError> {
    let applied = core.status.applied_lsn.load(Ordering::SeqCst);
    // `position`: where the position moves with this batch (0: it does not move).
    let position = match batch.part {
        None => {
            if batch.commit_lsn.0 <= applied {
                // Already applied before a restart or reconnect: never apply a change twice.
                return Ok(());
            }
            if let Some(p) = parts.take() {
                warn!(txn = %Lsn(p.record.txn), "a transaction delivered in parts ended without its last part");
            }
            batch.commit_lsn.0
        }
        Some(part) => {
            if part.txn.0 < applied {
                return Ok(());
            }
            if part.first {
                let record = match PartialTxn::stored(core)? {
                    Some(r) if r.txn == part.txn.0 => {
                        info!(txn = %part.txn, changes_applied = r.applied,
                            "replaying a partly applied upstream transaction: skipping what is stored");
                        r
                    }
                    Some(other) => {
                        warn!(stored = %Lsn(other.txn), txn = %part.txn,
                            "a record of another partly applied transaction was found; its tables wait for this one");
                        PartialTxn {
                            txn: part.txn.0,
                            applied: 0,
                            tables: other.tables,
                        }
                    }
                    None => PartialTxn {
                        txn: part.txn.0,
                        ..PartialTxn::default()
                    },
                };
                *parts = Some(PartsState { record, seen: 0 });
            }
            if parts.as_ref().map(|p| p.record.txn) != Some(part.txn.0) {
                return Err(ApplyError::Replication(ReplicationError::Protocol(
                    format!(
                        "a part of upstream transaction {} arrived without its first part",
                        part.txn
                    ),
                )));
            }
            if part.last {
                batch.commit_lsn.0
            } else {
                0
            }
        }
    };
    // Positions handed to shape-change handling; a non-last part stands at its transaction.
    let at = if position == 0 {
        batch.part.map_or(0, |p| p.txn.0)
    } else {
        position
    };
    failpoint_apply(core, &batch, position)?;
    // Tables this batch copies again are copied before the dataflow lock is taken: a copy
    // waits on the upstream (and on the runtime), and nothing that takes the lock from an
    // async task may wait for it meanwhile.
    let copies = prefetch_copies(core, source, &batch.changes)?;
    let mut graph = core.dataflow.lock().expect("dataflow lock poisoned");
    let mut txn = core.storage.begin();
    let mut rebuild = Vec::new();
    let mut pending = Pending::default();
    let mut touched: Vec<u32> = Vec::new();
    for change in batch.changes {
        if let Some(p) = parts.as_mut() {
            if !matches!(change, Change::Relation(_)) {
                p.seen += 1;
                if p.seen <= p.record.applied {
                    continue; // applied before a restart or reconnect
                }
                for oid in tables_of(&change) {
                    if !p.record.tables.contains(oid) && !touched.contains(oid) {
                        touched.push(*oid);
                    }
                }
            }
        }
        match change {
            Change::Relation(rel) => {
                let oid = rel.oid;
                handle_relation(core, source, &copies, &mut txn, &mut graph, rel, at)?;
                if core
                    .tables
                    .read()
                    .expect("tables lock poisoned")
                    .get(oid)
                    .is_some_and(|t| t.state == TableState::Online)
                {
                    rebuild.push(oid);
                }
            }
            Change::Insert { rel, row } => {
                let Some(table) = replicated(core, rel) else {
                    continue;
                };
                if let Err(e) = check_row(&table, &row) {
                    pending.drop_table(table.id);
                    quarantine(core, &mut txn, &mut graph, rel, &e.to_string())?;
                    continue;
                }
                if let Some(old) = txn.insert(&table, row.clone())? {
                    pending.push(table.id, DfChange::Delete(old));
                }
                pending.push(table.id, DfChange::Insert(row));
            }
            Change::Update { rel, old, new } => {
                let Some(table) = replicated(core, rel) else {
                    continue;
                };
                let probe = match &old {
                    Some(OldRow::Key(r)) | Some(OldRow::Full(r)) => r.clone(),
                    None => new.row.clone(),
                };
                let existing = txn.delete(&table, &probe)?;
                let mut row = new.row;
                let fits = match (&existing, new.unchanged_toast.is_empty()) {
                    (_, true) => check_row(&table, &row).map_err(|e| e.to_string()),
                    (Some(existing), false) if existing.len() == row.len() => {
                        for &i in &new.unchanged_toast {
                            if let (Some(slot), Some(v)) = (row.get_mut(i), existing.get(i)) {
                                *slot = v.clone();
                            }
                        }
                        check_row(&table, &row).map_err(|e| e.to_string())
                    }
                    _ => Err(
                        "an update with unchanged TOAST values of a row Larder does not have"
                            .to_string(),
                    ),
                };
                if let Err(detail) = fits {
                    pending.drop_table(table.id);
                    quarantine(core, &mut txn, &mut graph, rel, &detail)?;
                    continue;
                }
                if let Some(e) = existing {
                    pending.push(table.id, DfChange::Delete(e));
                }
                if let Some(replaced) = txn.insert(&table, row.clone())? {
                    pending.push(table.id, DfChange::Delete(replaced));
                }
                pending.push(table.id, DfChange::Insert(row));
            }
            Change::Delete { rel, old } => {
                let Some(table) = replicated(core, rel) else {
                    continue;
                };
                if let Some(existing) = txn.delete(&table, old.row())? {
                    pending.push(table.id, DfChange::Delete(existing));
                }
            }
            Change::SchemaChanged { rel } => {
                let entry = core
                    .tables
                    .read()
                    .expect("tables lock poisoned")
                    .get(rel)
                    .cloned();
                let Some(entry) = entry else {
                    // Not a table Larder holds (a new table arrives with its first change).
                    continue;
                };
                if let Some(stored) = &entry.stored {
                    pending.drop_table(stored.id);
                }
                let reason = format!(
                    "table {}.{} was altered or dropped upstream",
                    entry.schema.schema, entry.schema.name
                );
                warn!(%reason, "DDL in the change stream: caches on the table stop serving and it is copied again");
                recopy(
                    core, source, &copies, &mut txn, &mut graph, &entry, None, &reason, at,
                )?;
                if core
                    .tables
                    .read()
                    .expect("tables lock poisoned")
                    .get(rel)
                    .is_some_and(|t| t.state == TableState::Online)
                {
                    rebuild.push(rel);
                }
            }
            Change::Truncate { rels } => {
                for rel in rels {
                    let Some(table) = replicated(core, rel) else {
                        continue;
                    };
                    // Dropping this transaction's pending changes of the table (including an
                    // earlier truncate's retractions) leaves the dataflow at the committed rows,
                    // which storage still holds until this transaction commits.
                    pending.drop_table(table.id);
                    for row in core.storage.scan_table(table.id)? {
                        pending.push(table.id, DfChange::Delete(row));
                    }
                    txn.clear_table(table.id);
                }
            }
        }
    }
    let mut waiting = Vec::new();
    match parts.as_mut() {
        Some(p) if position == 0 => {
            // Not the last part: tables it writes to stop serving before anything is visible.
            for oid in touched {
                hold_for_parts(core, oid);
                p.record.tables.push(oid);
            }
            p.record.applied = p.record.applied.max(p.seen);
            txn.set_partial_txn(Some(&p.record.encode()));
        }
        Some(_) => {
            let done = parts.take().map(|p| p.record.tables).unwrap_or_default();
            waiting = done;
            txn.set_partial_txn(None);
            txn.set_position(position);
        }
        None => txn.set_position(position),
    }
    txn.commit()?;
    for (table, changes) in pending.0 {
        let table = DfTableId(table as u64);
        if let Err(e) = graph.apply(table, &changes) {
            quarantine_table(core, &mut graph, table, &e);
        }
    }
    graph.publish();
    if position == 0 {
        drop(graph);
        // Tables held for this transaction are rebuilt (if at all) after its last part.
        let tables = core.tables.read().expect("tables lock poisoned");
        rebuild.retain(|oid| {
            tables
                .get(*oid)
                .is_some_and(|t| t.state == TableState::Online)
        });
        drop(tables);
        for oid in rebuild {
            core.request_rebuild(oid);
        }
        return Ok(());
    }
    core.status.applied_lsn.store(position, Ordering::SeqCst);
    drop(graph);
    if !waiting.is_empty() {
        // Online first, then the caches serve again, and only then the rebuild request (for
        // caches not built in this process): a rebuild racing ahead would rescan the table.
        let mut back = Vec::new();
        {
            let mut tables = core.tables.write().expect("tables lock poisoned");
            for oid in &waiting {
                if let Some(t) = tables.get_mut(*oid) {
                    if t.state
                        == (TableState::CatchingUp {
                            until_lsn: u64::MAX,
                        })
                    {
                        t.state = TableState::Online;
                        back.push(*oid);
                    }
                }
            }
        }
        info!(commit = %Lsn(position), tables = back.len(), "large upstream transaction applied");
        serve_again(core, &back);
        for oid in back {
            core.request_rebuild(oid);
        }
    }
    finish_catch_up(core, position);
    for oid in rebuild {
        core.request_rebuild(oid);
    }
    Ok(())
}

/// Dataflow changes of one transaction, grouped in runs per table (order matters within a
/// table: a delete must follow the insert it retracts).
#[derive(Default)]
struct Pending(Vec<(u32, Vec<DfChange>)>);

impl Pending {
    fn push(&mut self, table: u32, c: DfChange) {
        match self.0.last_mut() {
            Some((t, v)) if *t == table => v.push(c),
            _ => self.0.push((table, vec![c])),
        }
    }

    /// Forget this transaction's changes to `table` (a truncate cancels them).
    fn drop_table(&mut self, table: u32) {
        self.0.retain(|(t, _)| *t != table);
    }
}

fn replicated(core: &Core, rel: u32) -> Option<StoredTable> {
    let tables = core.tables.read().expect("tables lock poisoned");
    let entry = tables.get(rel)?;
    entry.stored.clone()
}

/// A row is checked before it is written: one value per column.
fn check_row(table: &StoredTable, row: &Row) -> Result<(), ApplyError> {
    if row.len() != table.schema.columns.len() {
        return Err(ApplyError::Dataflow(format!(
            "row of {} values for {}.{} with {} columns",
            row.len(),
            table.schema.schema,
            table.schema.name,
            table.schema.columns.len()
        )));
    }
    Ok(())
}

/// Tables whose catch-up position has been reached become Online; their caches get rebuilt.
fn finish_catch_up(core: &Core, position: u64) {
    let mut done = Vec::new();
    {
        let mut tables = core.tables.write().expect("tables lock poisoned");
        let oids: Vec<u32> = tables.all().map(|t| t.oid).collect();
        for oid in oids {
            if let Some(t) = tables.get_mut(oid) {
                if let TableState::CatchingUp { until_lsn } = t.state {
                    if until_lsn <= position {
                        t.state = TableState::Online;
                        done.push(oid);
                    }
                }
            }
        }
    }
    for oid in done {
        core.request_rebuild(oid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_transaction_records_round_trip_and_reject_garbage() {
        let r = PartialTxn {
            txn: 0x1_0000_0042,
            applied: 12_345,
            tables: vec![16_384, 16_390],
        };
        assert_eq!(PartialTxn::decode(&r.encode()), Some(r));
        let empty = PartialTxn::default();
        assert_eq!(PartialTxn::decode(&empty.encode()), Some(empty));
        assert_eq!(PartialTxn::decode(&[0; 15]), None);
        assert_eq!(PartialTxn::decode(&[0; 18]), None);
    }
}
