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
use crate::storage::{BulkBuffer, StorageError, StoredTable, Txn};
use crate::tables::{TableEntry, TableState};

mod apply;
mod mysql;
mod parts;
mod tables;

use tables::*;

pub use apply::apply_batch;
use apply::{apply_loop, check_row};
pub use mysql::start_mysql;
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
/// Without a stored position no snapshot ever completed (a copy was interrupted): the stored
/// rows are not trusted, nothing is loaded, and replication starts with a fresh snapshot.
pub fn load_stored_tables(core: &Core) -> Result<(), ApplyError> {
    if core.storage.position()?.is_none() {
        return Ok(());
    }
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

/// Writes a snapshot's rows into storage, bulk-loaded (see `storage::bulk`). Each copy worker
/// has its own clone, with its own buffer of encoded rows.
struct StorageSink {
    core: Arc<Core>,
    buffer: Option<BulkBuffer>,
    buffer_max_bytes: usize,
}

impl Clone for StorageSink {
    fn clone(&self) -> Self {
        StorageSink {
            core: self.core.clone(),
            buffer: Some(BulkBuffer::default()),
            buffer_max_bytes: self.buffer_max_bytes,
        }
    }
}

impl SnapshotSink for StorageSink {
    async fn deliver(&mut self, mut batch: SnapshotBatch) -> Result<(), String> {
        let stored = {
            let tables = self.core.tables.read().expect("tables lock poisoned");
            tables.get(batch.rel).and_then(|t| t.stored.clone())
        };
        let Some(table) = stored else {
            return Err(format!("snapshot rows for unknown relation {}", batch.rel));
        };
        self.core.ops.snapshot_rows.add(batch.rows.len() as u64);
        // Encoding and writing are blocking work: off the runtime, while the other workers
        // go on reading their COPY.
        let rows = std::mem::take(&mut batch.rows);
        let flush = batch.part_done || batch.table_done;
        let buffer_max_bytes = self.buffer_max_bytes;
        let mut buffer = self.buffer.take().unwrap_or_default();
        let core = self.core.clone();
        let (buffer, written) = tokio::task::spawn_blocking(move || {
            let written = (|| {
                for row in &rows {
                    check_row(&table, row)?;
                }
                core.storage.bulk_insert(&mut buffer, &table, rows)?;
                if flush || buffer.bytes() >= buffer_max_bytes {
                    core.storage.bulk_flush(&mut buffer)?;
                }
                Ok::<(), ApplyError>(())
            })();
            (buffer, written)
        })
        .await
        .map_err(|e| format!("snapshot write task: {e}"))?;
        self.buffer = Some(buffer);
        written.map_err(|e| e.to_string())?;
        record_progress(&self.core, &batch);
        Ok(())
    }
}

/// A table's snapshot state after a delivered batch: progress (rows, percent, ETA, rate, with
/// a log line at a bounded interval), or Online once every part of it is stored.
fn record_progress(core: &Core, batch: &SnapshotBatch) {
    let mut tables = core.tables.write().expect("tables lock poisoned");
    let Some(entry) = tables.get_mut(batch.rel) else {
        return;
    };
    let now = std::time::Instant::now();
    let (mut clock, done_before) = match entry.state {
        TableState::Snapshotting {
            clock: Some(c),
            rows_done,
            ..
        } => (c, rows_done),
        _ => (crate::tables::SnapshotClock::new(now), 0),
    };
    let name = format!("{}.{}", entry.schema.schema, entry.schema.name);
    if batch.table_done {
        let secs = now.saturating_duration_since(clock.started).as_secs_f64();
        info!(
            table = %name,
            rows = batch.rows_done,
            seconds = (secs * 10.0).round() / 10.0,
            rows_per_second = (batch.rows_done as f64 / secs.max(0.001)) as u64,
            "table snapshot done"
        );
        entry.state = TableState::Online;
        return;
    }
    // Workers deliver concurrently: a later batch may carry an older count.
    let rows_done = batch.rows_done.max(done_before);
    let log = clock.log_due(now);
    entry.state = TableState::Snapshotting {
        rows_done,
        rows_estimated: batch.rows_estimated,
        clock: Some(clock),
    };
    if log {
        let p = entry.state.progress(now).unwrap_or_default();
        info!(
            table = %name,
            rows_done = p.rows_done,
            rows_estimated = p.rows_estimated.unwrap_or(0),
            percent = p.percent.map_or(-1.0, |x| (x * 10.0).round() / 10.0),
            rows_per_second = p.rows_per_second.map_or(0, |r| r as u64),
            eta_seconds = p.eta.map_or(-1, |d| d.as_secs() as i64),
            "snapshot progress"
        );
    }
}

async fn initial_snapshot(
    core: &Arc<Core>,
    source: &PgSource,
    fresh: &larder_replication::FreshSlot,
    tables: &[DiscoveredTable],
) -> Result<(), ApplyError> {
    // Start from nothing: whatever was stored belongs to an older slot.
    core.storage.wipe()?;
    {
        let mut graph = core.dataflow.lock().expect("dataflow lock poisoned");
        *graph = graph.emptied();
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
    let memory = source.options().snapshot_memory();
    info!(
        workers = memory.workers,
        memory_max_bytes = memory.total_max_bytes(),
        "snapshot memory bound"
    );
    core.storage.bulk_load_begin()?;
    let started = std::time::Instant::now();
    let mut sink = StorageSink {
        core: core.clone(),
        buffer: Some(BulkBuffer::default()),
        buffer_max_bytes: memory.sink_buffer_max_bytes,
    };
    let summary = source.snapshot(fresh, tables, &mut sink).await;
    drop(sink);
    let summary = end_bulk_load(core, summary).await?;
    let secs = started.elapsed().as_secs_f64();
    info!(
        tables = summary.tables,
        rows = summary.rows,
        parts = summary.parts,
        workers = summary.workers,
        seconds = (secs * 10.0).round() / 10.0,
        rows_per_second = (summary.rows as f64 / secs.max(0.001)) as u64,
        stored_bytes = core.storage.rows_disk_bytes().unwrap_or(0),
        "snapshot copied"
    );
    Ok(())
}

/// Ends the initial copy's bulk load: aborted when the copy failed, else made durable
/// (before the caller records the position the copy is consistent at).
async fn end_bulk_load<T>(
    core: &Arc<Core>,
    copied: Result<T, ReplicationError>,
) -> Result<T, ApplyError> {
    let copied = match copied {
        Ok(c) => c,
        Err(e) => {
            if let Err(abort) = core.storage.bulk_load_abort() {
                warn!(error = %abort, "ending the failed bulk load");
            }
            return Err(e.into());
        }
    };
    let storage = core.clone();
    tokio::task::spawn_blocking(move || storage.storage.bulk_load_end())
        .await
        .map_err(|e| ApplyError::Copy(format!("finishing the bulk load: {e}")))??;
    Ok(copied)
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
            tokio::task::spawn_blocking(move || apply_loop(&core, source.as_ref(), rx))
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
