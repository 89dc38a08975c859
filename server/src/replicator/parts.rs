//! Large upstream transactions applied in parts (`--transaction-memory-max-bytes`): the
//! record that makes replay exactly-once, holding the touched tables' caches while the parts
//! are applied, and serving them again after the last part.

use super::*;

/// Why caches stop serving while a transaction is applied in parts.
pub(super) const PARTS_REASON: &str =
    "a large upstream transaction is being applied to its table; the cache serves again after it";

/// A large upstream transaction applied in parts.
///
/// The stream delivers a transaction larger than `--transaction-memory-max-bytes` in several
/// batches ([`larder_replication::pg::TxnPart`]). No spill is needed: pgoutput (protocol 1)
/// only sends transactions that have committed upstream, so each part is written to RocksDB
/// as it arrives, in its own write batch, and only the last part moves the position. Memory
/// stays bounded by about two parts (the one being applied and the one being received).
///
/// Why this is exactly-once, for keyed and keyless (REPLICA IDENTITY FULL, counted
/// duplicates) tables alike:
/// - every non-last part's batch also records this `PartialTxn`: the transaction (`final_lsn`
///   of its BEGIN) and how many changes of it are now applied (Relation records excluded:
///   they are re-sent wherever a new session first needs them, all other changes come again
///   in the same order when the same WAL is decoded again);
/// - a crash or a reconnect before the last part leaves the position where it was, so the
///   stream delivers the whole transaction again; the applier skips the first `applied`
///   changes it counts (they are in storage already) and applies the rest. Nothing is applied
///   twice, so replay never depends on writes being idempotent (a keyless insert bumps a
///   counter; an update with unchanged TOAST reads the stored row);
/// - the last part writes its changes, the position and the removal of this record in one
///   batch, so "transaction applied" and "position moved" are one atomic fact, and positions
///   only move forward.
///
/// Readers never see a half-applied transaction: before a part's first change to a table is
/// written (and published to the dataflow), that table's caches stop serving (their queries go
/// upstream) and the table waits in `CatchingUp`; once the last part is committed and
/// published the table is online again and its caches serve again (`serve_again`). `tables` is stored too, so a
/// restart in the middle keeps those tables waiting until the replay completes (their caches
/// are then built from storage by the usual rebuild request).
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct PartialTxn {
    /// `final_lsn` of the transaction's BEGIN.
    pub(super) txn: u64,
    /// Changes (Relation records excluded) of the transaction durably applied.
    pub(super) applied: u64,
    /// Upstream oids of the tables the applied changes touched.
    pub(super) tables: Vec<u32>,
}

impl PartialTxn {
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 4 * self.tables.len());
        out.extend_from_slice(&self.txn.to_be_bytes());
        out.extend_from_slice(&self.applied.to_be_bytes());
        for t in &self.tables {
            out.extend_from_slice(&t.to_be_bytes());
        }
        out
    }

    pub(super) fn decode(bytes: &[u8]) -> Option<PartialTxn> {
        if bytes.len() < 16 || !(bytes.len() - 16).is_multiple_of(4) {
            return None;
        }
        let txn = u64::from_be_bytes(bytes[0..8].try_into().ok()?);
        let applied = u64::from_be_bytes(bytes[8..16].try_into().ok()?);
        let tables = bytes[16..]
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Some(PartialTxn {
            txn,
            applied,
            tables,
        })
    }

    pub(super) fn stored(core: &Core) -> Result<Option<PartialTxn>, ApplyError> {
        let Some(bytes) = core.storage.partial_txn()? else {
            return Ok(None);
        };
        PartialTxn::decode(&bytes).map(Some).ok_or_else(|| {
            ApplyError::Storage(StorageError::Corrupt {
                what: "partial transaction record".into(),
                detail: format!("{} bytes", bytes.len()),
            })
        })
    }
}

/// The applier's progress through the transaction currently delivered in parts.
pub struct PartsState {
    pub(super) record: PartialTxn,
    /// Changes (Relation records excluded) of this delivery counted so far.
    pub(super) seen: u64,
}

/// After a restart: tables a partly applied transaction touched wait until its replay is
/// complete (call after [`load_stored_tables`]).
pub fn hold_partial_tables(core: &Core) -> Result<(), ApplyError> {
    let Some(record) = PartialTxn::stored(core)? else {
        return Ok(());
    };
    warn!(txn = %Lsn(record.txn), changes_applied = record.applied, tables = record.tables.len(),
        "a large upstream transaction was partly applied before the restart; its tables wait for the rest");
    let mut tables = core.tables.write().expect("tables lock poisoned");
    for oid in &record.tables {
        if let Some(t) = tables.get_mut(*oid).filter(|t| t.stored.is_some()) {
            t.state = TableState::CatchingUp {
                until_lsn: u64::MAX,
            };
        }
    }
    Ok(())
}

/// After the last part of a large transaction: the caches that stopped serving only for it
/// serve again. Their readers received every part (each part's changes went through the
/// graph), so they hold exactly the committed rows; no rescan is needed. A cache stopped for
/// another reason meanwhile (say its table changed shape) keeps that reason and is rebuilt
/// as usual; caches not built in this process (after a restart) are built by the rebuild
/// request of `finish_catch_up`.
pub(super) fn serve_again(core: &Core, tables: &[u32]) {
    let online: Vec<u32> = {
        let registry = core.tables.read().expect("tables lock poisoned");
        tables
            .iter()
            .copied()
            .filter(|oid| {
                registry
                    .get(*oid)
                    .is_some_and(|t| t.state == TableState::Online)
            })
            .collect()
    };
    for cache in core.caches.all() {
        // A cache serves again once every table it reads is through its large transaction.
        if !cache.relations.iter().any(|r| online.contains(&r.oid))
            || !cache.relations.iter().all(|r| {
                core.tables
                    .read()
                    .expect("tables lock poisoned")
                    .get(r.oid)
                    .is_some_and(|t| t.state == TableState::Online)
            })
        {
            continue;
        }
        let mut invalid = cache.invalid.lock().expect("cache lock poisoned");
        if invalid.as_deref() == Some(PARTS_REASON) {
            *invalid = None;
            cache.serving.store(true, Ordering::SeqCst);
            info!(cache = %cache.name, "cache serves again after a large transaction");
        }
    }
}

/// A part of a large transaction is about to write to `oid`: its caches go upstream and the
/// table waits (until the last part; see [`PartialTxn`]).
pub(super) fn hold_for_parts(core: &Core, oid: u32) {
    core.invalidate_caches_on(oid, PARTS_REASON);
    let mut tables = core.tables.write().expect("tables lock poisoned");
    let Some(t) = tables.get_mut(oid).filter(|t| t.stored.is_some()) else {
        return;
    };
    if t.state == TableState::Online {
        t.state = TableState::CatchingUp {
            until_lsn: u64::MAX,
        };
    }
}
