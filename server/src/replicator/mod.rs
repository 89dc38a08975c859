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

mod apply;
mod parts;
mod tables;

use tables::*;

pub use apply::apply_batch;
use apply::{apply_loop, check_row};
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
