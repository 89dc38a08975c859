//! Applying one upstream transaction (or one part of a large one): its rows and position go to
//! storage in one batch, then the same changes go through the dataflow graph, under the
//! dataflow lock. Tables whose shape changed are copied again first; errors that belong to one
//! table quarantine that table's caches, and a transaction that fails as a whole commits
//! nothing (see `stream_forever` for the retry).

use super::*;

pub(super) fn apply_loop(
    core: &Core,
    source: &dyn TableSource,
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
    source: &dyn TableSource,
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
    core.status.apply_waiting.store(true, Ordering::Release);
    let waited = std::time::Instant::now();
    let mut graph = core.dataflow.lock().expect("dataflow lock poisoned");
    core.status.apply_waiting.store(false, Ordering::Release);
    if waited.elapsed() > std::time::Duration::from_millis(100) {
        tracing::debug!(
            waited_ms = waited.elapsed().as_millis() as u64,
            "a transaction waited for the dataflow lock"
        );
    }
    let _applying = crate::core::Applying::new(&core.status.applying);
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
    if position != 0 {
        if let Some(resume) = &batch.resume {
            txn.set_resume(resume);
        }
    }
    // Joins that read a side from storage see it as of before this transaction, plus the
    // changes they have received from it (`larder_dataflow::stored`).
    let before = core.storage.snapshot();
    txn.commit()?;
    let view = core.storage.stored_view(&before);
    let runs = pending
        .0
        .iter()
        .map(|(table, changes)| (DfTableId(u64::from(*table)), changes.as_slice()));
    for (table, e) in graph.apply_txn(runs, &view) {
        quarantine_table(core, &mut graph, table, &e);
    }
    drop(before);
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
pub(super) fn check_row(table: &StoredTable, row: &Row) -> Result<(), ApplyError> {
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
