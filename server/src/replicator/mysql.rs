//! MySQL/MariaDB replication into storage and the dataflow: the snapshot, then the binlog,
//! each upstream transaction applied exactly as a Postgres one (`apply.rs`).
//!
//! Positions: the ordered number storage, status and the applier compare is
//! `Position::progress` (the binlog file's sequence and offset); the encoded `Position`
//! (file name, GTIDs) travels as the batch's `resume` bytes and is stored in the same batch,
//! so a restart, even after `kill -9`, streams on from exactly the last applied transaction.
//! A table that DDL changed is copied again as of a position (`MySource::copy_table_now`),
//! as on Postgres.

use larder_replication::mysql::{MyChangeBatch, MySource, Position};
use larder_replication::TxnPart;

use super::*;

/// Starts MySQL replication: the snapshot when nothing is stored (or the stream from the
/// stored position), then the binlog in the background, restarted with backoff when it ends.
pub async fn start_mysql(core: Arc<Core>, source: Arc<MySource>) -> Result<(), ApplyError> {
    source.check_prerequisites().await?;
    let stored = match (core.storage.position()?, core.storage.resume()?) {
        (Some(_), Some(bytes)) => Some(Position::decode(&bytes)?),
        _ => None,
    };
    let stream = match stored {
        Some(position) => {
            load_stored_tables(&core)?;
            info!(%position, "resuming replication from the stored binlog position");
            core.status
                .applied_lsn
                .store(position.progress(), Ordering::SeqCst);
            match source.stream(&position).await {
                Err(ReplicationError::PositionLost { detail }) => {
                    copy_again(&core, &source, &detail).await?
                }
                other => other?,
            }
        }
        None => {
            core.set_replication_status("Snapshotting");
            let snapshot = initial_snapshot(&core, &source).await?;
            source.stream_after(&snapshot).await?
        }
    };
    core.set_replication_status("Streaming");
    tokio::spawn(stream_forever(core, source, stream));
    Ok(())
}

/// The stored position is gone upstream (its binlog purged, or another server): every cache
/// stops serving, the database is copied again, and the caches are built again on the copy.
async fn copy_again(
    core: &Arc<Core>,
    source: &MySource,
    detail: &str,
) -> Result<MyStream, ApplyError> {
    warn!(%detail, "the upstream no longer has the binlog from the stored position: copying the database again");
    core.set_last_error(format!(
        "replication: binlog position lost ({detail}); copied again"
    ));
    for cache in core.caches.all() {
        cache.invalidate("the database is being copied again (the binlog position was lost)");
    }
    core.set_replication_status("Snapshotting");
    let snapshot = initial_snapshot(core, source).await?;
    // Caches built meanwhile (a restart restores them while the stream opens) were built on
    // what the copy replaced.
    for cache in core.caches.all() {
        cache.invalidate("built before the database was copied again");
    }
    let oids: Vec<u32> = core
        .tables
        .read()
        .expect("tables lock poisoned")
        .all()
        .map(|t| t.oid)
        .collect();
    for oid in oids {
        core.request_rebuild(oid);
    }
    Ok(source.stream_after(&snapshot).await?)
}

/// Copies every replicated table into storage, then stores the position it is consistent at.
async fn initial_snapshot(
    core: &Arc<Core>,
    source: &MySource,
) -> Result<larder_replication::mysql::MySnapshot, ApplyError> {
    core.storage.wipe()?;
    let tables = source.discover_tables().await?;
    {
        let mut graph = core.dataflow.lock().expect("dataflow lock poisoned");
        *graph = graph.emptied();
        let mut registry = core.tables.write().expect("tables lock poisoned");
        *registry = Default::default();
        let mut txn = core.storage.begin();
        for rel in &tables {
            let entry = register_relation(
                core,
                &mut txn,
                &mut graph,
                rel,
                TableState::Snapshotting {
                    rows_done: 0,
                    rows_estimated: None,
                    clock: None,
                },
            )?;
            registry.insert(entry);
        }
        txn.commit()?;
    }
    core.storage.bulk_load_begin()?;
    let mut sink = StorageSink {
        core: core.clone(),
        buffer: Some(BulkBuffer::default()),
        buffer_max_bytes: 64 << 20,
    };
    let snapshot = source.snapshot(&mut sink).await;
    drop(sink);
    let snapshot = end_bulk_load(core, snapshot).await?;
    {
        // Tables without rows get no batch: every table copied is online now.
        let mut registry = core.tables.write().expect("tables lock poisoned");
        for rel in &tables {
            if let Some(t) = registry.get_mut(rel.oid) {
                if matches!(t.state, TableState::Snapshotting { .. }) {
                    t.state = TableState::Online;
                }
            }
        }
    }
    let mut txn = core.storage.begin();
    txn.set_position(snapshot.position.progress());
    txn.set_resume(&snapshot.position.encode());
    txn.commit()?;
    core.status
        .applied_lsn
        .store(snapshot.position.progress(), Ordering::SeqCst);
    info!(position = %snapshot.position, rows = snapshot.rows, "snapshot complete");
    Ok(snapshot)
}

/// One binlog transaction (or part of one) as the applier takes it.
fn change_batch(batch: MyChangeBatch) -> ChangeBatch {
    let last = batch.part.as_ref().is_none_or(|p| p.last);
    ChangeBatch {
        commit_lsn: Lsn(if last { batch.position.progress() } else { 0 }),
        changes: batch.changes,
        part: batch.part.map(|p| TxnPart {
            txn: Lsn(p.txn.progress()),
            first: p.first,
            last: p.last,
        }),
        resume: last.then(|| batch.position.encode()),
    }
}

/// Reads the binlog into the applier until it ends, then opens it again at the stored
/// position (with backoff), for as long as Larder runs.
async fn stream_forever(core: Arc<Core>, source: Arc<MySource>, first: MyStream) {
    let mut next = Some(first);
    let mut backoff_ms = 100u64;
    loop {
        let stream = match next.take() {
            Some(s) => Ok(s),
            None => match core.storage.resume() {
                Ok(Some(bytes)) => match Position::decode(&bytes) {
                    Ok(position) => source.stream(&position).await.map_err(ApplyError::from),
                    Err(e) => Err(e.into()),
                },
                Ok(None) => Err(ApplyError::Copy("no stored binlog position".into())),
                Err(e) => Err(e.into()),
            },
        };
        let result = match stream {
            Ok(mut stream) => {
                core.set_replication_status("Streaming");
                let (tx, rx) = mpsc::channel::<ChangeBatch>(APPLY_QUEUE_MAX);
                let applier = {
                    let (core, source) = (core.clone(), source.clone());
                    tokio::task::spawn_blocking(move || apply_loop(&core, source.as_ref(), rx))
                };
                let read = async {
                    loop {
                        let next = tokio::select! {
                            next = stream.next_batch() => next?,
                            () = shut_down(&core) => return Ok(()),
                        };
                        let Some(batch) = next else { break };
                        if tx.send(change_batch(batch)).await.is_err() {
                            break; // the applier stopped: its error says why
                        }
                    }
                    Ok::<(), ReplicationError>(())
                }
                .await;
                drop(tx);
                stream.close().await;
                match applier.await {
                    Ok(Err(e)) => Err(e),
                    Err(e) => Err(ApplyError::Copy(format!("the apply task failed: {e}"))),
                    Ok(Ok(())) => read.map_err(ApplyError::from),
                }
            }
            Err(e) => Err(e),
        };
        let result = match result {
            Err(ApplyError::Replication(ReplicationError::PositionLost { detail })) => {
                match copy_again(&core, &source, &detail).await {
                    Ok(stream) => {
                        next = Some(stream);
                        continue;
                    }
                    Err(e) => Err(e),
                }
            }
            other => other,
        };
        if let Err(e) = &result {
            error!(error = %e, retry_in_ms = backoff_ms, "MySQL replication stopped; it starts again at the stored position");
            core.set_last_error(format!("replication: {e}"));
            core.set_replication_status("Reconnecting");
        }
        if core.is_shutting_down() {
            return;
        }
        core.status.restarts.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
        backoff_ms = if result.is_ok() {
            100
        } else {
            (backoff_ms * 2).min(10_000)
        };
    }
}

use larder_replication::mysql::MyStream;

/// Resolves once Larder is shutting down.
async fn shut_down(core: &Core) {
    while !core.is_shutting_down() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
