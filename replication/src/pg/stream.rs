//! The change stream: `START_REPLICATION ... LOGICAL` with pgoutput protocol 1, decoded into
//! one [`ChangeBatch`] per upstream transaction.
//!
//! pg_walstream provides the walsender connection and the pgoutput message parser; this module
//! owns everything with semantics: relation tracking, row decoding, skipping already-applied
//! transactions, and acknowledgement.
//!
//! * Relations: pgoutput sends a Relation message before a table's first change in a session
//!   and after each shape change. They are always forwarded as [`Change::Relation`] (inside the
//!   batch of the transaction that carried them). If the carrying transaction is skipped, the
//!   cached relation is forwarded before the table's next change instead.
//! * Skipping: transactions whose commit record starts before the start position (the end LSN
//!   of the last applied transaction, or the snapshot's consistent point) are dropped, so a
//!   restart never applies a transaction twice.
//! * Acknowledgement: every `status_interval` (and whenever Postgres asks) a standby status
//!   update reports write = last received, flush = apply = the caller's applied position. The
//!   applied position must never go backwards; emitted commit positions strictly increase.
//! * Back-pressure: the output channel is bounded; while it is full, status updates keep being
//!   sent so the walsender does not time the session out.
//! * Memory: a transaction is buffered up to `transaction_memory_max_bytes`. A larger one is
//!   delivered in several [`ChangeBatch`]es marked with a [`TxnPart`] (pgoutput protocol 1 only
//!   sends transactions that have committed, so applying a part early never applies an aborted
//!   change). Before each non-final part the streamer waits until the consumer has taken every
//!   earlier batch, so at most about two parts are held in memory at once. The consumer must
//!   move its position only with the last part and make a replay of the parts idempotent (see
//!   [`TxnPart`]).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use larder_sql::{Row, Value};
use pg_walstream::{
    parse_keepalive_message, CancellationToken, ColumnInfo, LogicalReplicationMessage,
    LogicalReplicationParser, PgReplicationConnection, TupleData,
};
use tokio::sync::{mpsc, watch};
use tokio::time::{interval, Interval, MissedTickBehavior};
use tokio_postgres::Client;
use tracing::{debug, info};

use super::discovery::{build_relation, discover_one, relation_extras, RawColumn};
use super::{Lsn, PgSource};
use crate::change::{Change, NewRow, OldRow, RelationInfo, ReplicaIdentity};
use crate::error::ReplicationError;
use crate::pgtypes;

/// One committed upstream transaction, or one part of a large one ([`ChangeBatch::part`]);
/// apply it atomically, then report `commit_lsn` as applied.
#[derive(Clone, Debug, PartialEq)]
pub struct ChangeBatch {
    /// End LSN of the transaction's commit record: the position to store and acknowledge.
    /// [`Lsn::ZERO`] in a part that is not the last one (the position must not move then).
    pub commit_lsn: Lsn,
    /// Possibly empty (a transaction that only touched filtered-out tables still advances the
    /// position).
    pub changes: Vec<Change>,
    /// `Some` when the transaction was larger than `transaction_memory_max_bytes` and is
    /// delivered in several batches.
    pub part: Option<TxnPart>,
    /// What a source needs besides `commit_lsn` to resume after this batch (MySQL: the
    /// encoded binlog position with its GTIDs), stored with it; `None` on Postgres.
    pub resume: Option<Vec<u8>>,
}

/// Where a batch sits in a transaction delivered in parts.
///
/// Replays: after a reconnect or a restart the stream resumes from the consumer's stored
/// position, so a transaction whose last part was not applied is delivered again from its
/// first part, with the same changes in the same order (logical decoding of the same WAL with
/// the same publication is deterministic). [`Change::Relation`] records are the exception:
/// they are sent again wherever the new session first needs them, so a consumer that counts
/// changes to skip what it applied before must not count them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxnPart {
    /// Identifies the transaction: the LSN of its commit record (`final_lsn` of BEGIN), which
    /// is below the `commit_lsn` (end of that record) of its last part.
    pub txn: Lsn,
    /// The first part of the transaction (a replay starts again here).
    pub first: bool,
    /// The last part: it carries `commit_lsn`.
    pub last: bool,
}

/// Status updates are sent at least this often even when nothing moved (Postgres' default
/// `wal_sender_timeout` is 60 s).
const STATUS_HEARTBEAT: Duration = Duration::from_secs(10);
/// Per-column overhead counted against the transaction byte budget.
const COLUMN_OVERHEAD_BYTES: usize = 16;
/// XLogData header: 'w', start LSN, end LSN, send time.
const XLOGDATA_HEADER_BYTES: usize = 25;
/// How often the streamer looks whether the consumer has taken the previous part.
const PART_QUEUE_POLL: Duration = Duration::from_millis(2);

struct Txn {
    skip: bool,
    /// The upstream transaction id (for waiting until its effects are visible to a catalog
    /// query).
    xid: u32,
    /// `final_lsn` of BEGIN.
    final_lsn: Lsn,
    changes: Vec<Change>,
    /// Approximate bytes of `changes`.
    bytes: usize,
    /// Parts of this transaction already sent.
    parts_sent: u64,
}

pub(crate) struct Streamer<'a> {
    source: &'a PgSource,
    conn: PgReplicationConnection,
    start: Lsn,
    parser: LogicalReplicationParser,
    catalog: Option<Client>,
    relations: HashMap<u32, RelationInfo>,
    /// Relations already forwarded in this session (in their current shape).
    emitted: HashSet<u32>,
    txn: Option<Txn>,
    last_commit: Lsn,
    received: Lsn,
    applied: Lsn,
    applied_rx: watch::Receiver<Lsn>,
    last_status: Option<(Lsn, Lsn, Instant)>,
    out: mpsc::Sender<ChangeBatch>,
    tick: Interval,
}

impl<'a> Streamer<'a> {
    pub(crate) fn new(
        source: &'a PgSource,
        conn: PgReplicationConnection,
        start: Lsn,
        applied_rx: watch::Receiver<Lsn>,
        out: mpsc::Sender<ChangeBatch>,
        status_interval: Duration,
    ) -> Streamer<'a> {
        let mut tick = interval(status_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Streamer {
            source,
            conn,
            start,
            parser: LogicalReplicationParser::with_protocol_version(1),
            catalog: None,
            relations: HashMap::new(),
            emitted: HashSet::new(),
            txn: None,
            last_commit: start,
            received: start,
            applied: Lsn::ZERO,
            applied_rx,
            last_status: None,
            out,
            tick,
        }
    }

    pub(crate) async fn run(mut self) -> Result<(), ReplicationError> {
        let publication = self.source.publication_name().to_string();
        self.conn.start_replication(
            self.source.slot_name(),
            self.start.0,
            &[
                ("proto_version", "1"),
                ("publication_names", publication.as_str()),
                // Logical messages (PG 14+) carry DDL announcements from the event trigger.
                ("messages", "true"),
            ],
        )?;
        info!(slot = %self.source.slot_name(), start = %self.start, "replication started");
        let token = CancellationToken::new();
        loop {
            tokio::select! {
                biased;
                _ = self.out.closed() => {
                    info!(slot = %self.source.slot_name(), "change consumer gone; stopping");
                    let _ = self.send_status(true).await;
                    return Ok(());
                }
                _ = self.tick.tick() => self.send_status(false).await?,
                data = self.conn.get_copy_data_async(&token) => {
                    if !self.handle_frame(data?).await? {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Returns `false` when the consumer is gone.
    async fn handle_frame(&mut self, data: Bytes) -> Result<bool, ReplicationError> {
        match data.first() {
            Some(b'w') => {
                if data.len() < XLOGDATA_HEADER_BYTES {
                    return Err(ReplicationError::Protocol("short XLogData message".into()));
                }
                let wal_end = u64::from_be_bytes(data[9..17].try_into().unwrap_or([0; 8]));
                self.received = self.received.max(Lsn(wal_end));
                let body = data.slice(XLOGDATA_HEADER_BYTES..);
                if body.is_empty() {
                    return Ok(true);
                }
                let msg = self.parser.parse_wal_message_bytes(body)?;
                self.handle_message(msg.message).await
            }
            Some(b'k') => {
                let k = parse_keepalive_message(&data)?;
                self.received = self.received.max(Lsn(k.wal_end));
                if k.reply_requested {
                    self.send_status(true).await?;
                }
                self.heartbeat(Lsn(k.wal_end));
                Ok(true)
            }
            _ => Ok(true),
        }
    }

    /// A keepalive outside a transaction: every transaction of ours that committed before
    /// `wal_end` has been streamed, so the position may advance there even when those
    /// transactions touched nothing we replicate (or other databases). Sent as an empty batch;
    /// skipped when the consumer is busy (the next keepalive carries it).
    fn heartbeat(&mut self, wal_end: Lsn) {
        if self.txn.is_some() || wal_end <= self.last_commit || wal_end < self.start {
            return;
        }
        if let Ok(permit) = self.out.try_reserve() {
            self.last_commit = wal_end;
            permit.send(ChangeBatch {
                resume: None,
                commit_lsn: wal_end,
                changes: Vec::new(),
                part: None,
            });
        }
    }

    async fn handle_message(
        &mut self,
        msg: LogicalReplicationMessage,
    ) -> Result<bool, ReplicationError> {
        use LogicalReplicationMessage as M;
        match msg {
            M::Begin { final_lsn, xid, .. } => {
                if self.txn.is_some() {
                    return Err(ReplicationError::Protocol(
                        "BEGIN inside a transaction".into(),
                    ));
                }
                let skip = Lsn(final_lsn) < self.start;
                if skip {
                    debug!(commit = %Lsn(final_lsn), start = %self.start, "skipping applied transaction");
                }
                self.txn = Some(Txn {
                    skip,
                    xid,
                    final_lsn: Lsn(final_lsn),
                    changes: Vec::new(),
                    bytes: 0,
                    parts_sent: 0,
                });
            }
            M::Commit { end_lsn, .. } => return self.commit(Lsn(end_lsn)).await,
            M::Relation {
                relation_id,
                namespace,
                relation_name,
                replica_identity,
                columns,
            } => {
                let rel = self
                    .relation_from_message(
                        relation_id,
                        &namespace,
                        &relation_name,
                        replica_identity,
                        &columns,
                    )
                    .await?;
                self.relations.insert(relation_id, rel.clone());
                self.emitted.remove(&relation_id);
                if let Some(txn) = self.txn.as_mut().filter(|t| !t.skip) {
                    txn.changes.push(Change::Relation(rel));
                    self.emitted.insert(relation_id);
                }
            }
            M::Insert { relation_id, tuple } => {
                if let Some(rel) = self.touch(relation_id)? {
                    let (row, _) = decode_tuple(&rel, &tuple, false)?;
                    self.push(tuple_bytes(&tuple), Change::Insert { rel: rel.oid, row })?;
                }
            }
            M::Update {
                relation_id,
                old_tuple,
                new_tuple,
                key_type,
            } => {
                if let Some(rel) = self.touch(relation_id)? {
                    let old = match (old_tuple.as_ref(), key_type) {
                        (Some(t), kind) => Some(old_row(&rel, t, kind)?),
                        (None, _) => None,
                    };
                    let (row, unchanged_toast) = decode_tuple(&rel, &new_tuple, true)?;
                    let bytes = tuple_bytes(&new_tuple) + old_tuple.as_ref().map_or(0, tuple_bytes);
                    let new = NewRow {
                        row,
                        unchanged_toast,
                    };
                    self.push(
                        bytes,
                        Change::Update {
                            rel: rel.oid,
                            old,
                            new,
                        },
                    )?;
                }
            }
            M::Delete {
                relation_id,
                old_tuple,
                key_type,
            } => {
                if let Some(rel) = self.touch(relation_id)? {
                    let old = old_row(&rel, &old_tuple, Some(key_type))?;
                    self.push(
                        tuple_bytes(&old_tuple),
                        Change::Delete { rel: rel.oid, old },
                    )?;
                }
            }
            M::Truncate { relation_ids, .. } => {
                let mut rels = Vec::with_capacity(relation_ids.len());
                for id in relation_ids {
                    if let Some(rel) = self.touch(id)? {
                        rels.push(rel.oid);
                    }
                }
                if !rels.is_empty() {
                    self.push(rels.len() * 4, Change::Truncate { rels })?;
                }
            }
            M::Message {
                prefix, content, ..
            } => {
                // Emitted by Larder's event trigger inside the DDL's own transaction.
                if prefix == super::DDL_MESSAGE_PREFIX && self.txn.as_ref().is_some_and(|t| !t.skip)
                {
                    match parse_ddl_message(&content) {
                        Some((rel, false)) => self.push(8, Change::SchemaChanged { rel })?,
                        Some((rel, true)) => {
                            // A table created in this transaction: announced now, so it is
                            // listed (and can be cached) before its first row arrives. Its
                            // rows all come from the stream.
                            if let Some(rel) = self.created_relation(rel).await? {
                                self.push(8, Change::Relation(rel))?;
                            }
                        }
                        None => {}
                    }
                }
            }
            M::Type { .. } | M::Origin { .. } => {}
            other => {
                return Err(ReplicationError::Protocol(format!(
                    "unexpected pgoutput message for protocol version 1: {other:?}"
                )))
            }
        }
        let limit = self.source.options().transaction_memory_max_bytes;
        if self.txn.as_ref().is_some_and(|t| t.bytes > limit) {
            return self.send_part().await;
        }
        Ok(true)
    }

    /// For a change of `relation_id` in the current transaction: `None` when the transaction is
    /// skipped or the table is not replicated; otherwise the relation, forwarded first if this
    /// session has not forwarded it yet.
    fn touch(&mut self, relation_id: u32) -> Result<Option<RelationInfo>, ReplicationError> {
        let Some(txn) = self.txn.as_mut() else {
            return Err(ReplicationError::Protocol(
                "row change outside a transaction".into(),
            ));
        };
        if txn.skip {
            return Ok(None);
        }
        let rel = self.relations.get(&relation_id).ok_or_else(|| {
            ReplicationError::Protocol(format!("change for unknown relation {relation_id}"))
        })?;
        if self.emitted.insert(relation_id) {
            txn.changes.push(Change::Relation(rel.clone()));
        }
        Ok(rel.status.is_replicated().then(|| rel.clone()))
    }

    fn push(&mut self, bytes: usize, change: Change) -> Result<(), ReplicationError> {
        let txn = self
            .txn
            .as_mut()
            .ok_or_else(|| ReplicationError::Protocol("change outside a transaction".into()))?;
        txn.bytes += bytes;
        txn.changes.push(change);
        Ok(())
    }

    /// The current transaction outgrew `transaction_memory_max_bytes`: hand what is buffered
    /// to the consumer as a non-final part. Waits until the consumer has taken every earlier
    /// batch, so parts do not pile up in the queue. Returns `false` when the consumer is gone.
    async fn send_part(&mut self) -> Result<bool, ReplicationError> {
        let ddl = self
            .txn
            .as_ref()
            .filter(|t| !t.skip && announces_ddl(&t.changes))
            .map(|t| t.xid);
        if let Some(xid) = ddl {
            let client = self.catalog().await?;
            wait_visible(client, xid).await?;
        }
        let (batch, bytes, parts) = {
            let Some(txn) = self.txn.as_mut().filter(|t| !t.skip) else {
                return Ok(true);
            };
            let part = TxnPart {
                txn: txn.final_lsn,
                first: txn.parts_sent == 0,
                last: false,
            };
            txn.parts_sent += 1;
            let bytes = std::mem::take(&mut txn.bytes);
            let batch = ChangeBatch {
                resume: None,
                commit_lsn: Lsn::ZERO,
                changes: std::mem::take(&mut txn.changes),
                part: Some(part),
            };
            (batch, bytes, txn.parts_sent)
        };
        if parts == 1 {
            info!(txn = %batch.part.map(|p| p.txn).unwrap_or(Lsn::ZERO),
                limit_bytes = self.source.options().transaction_memory_max_bytes,
                "large upstream transaction: delivering it in parts");
        }
        debug!(
            bytes,
            changes = batch.changes.len(),
            part = parts,
            "sending a transaction part"
        );
        let out = self.out.clone();
        let mut poll = interval(PART_QUEUE_POLL);
        while out.capacity() < out.max_capacity() {
            if out.is_closed() {
                return Ok(false);
            }
            tokio::select! {
                _ = poll.tick() => {}
                _ = self.tick.tick() => self.send_status(false).await?,
            }
        }
        self.send_batch(batch).await
    }

    async fn commit(&mut self, end: Lsn) -> Result<bool, ReplicationError> {
        let txn = self
            .txn
            .take()
            .ok_or_else(|| ReplicationError::Protocol("COMMIT without BEGIN".into()))?;
        if txn.skip {
            return Ok(true);
        }
        if end <= self.last_commit {
            return Err(ReplicationError::PositionRegressed {
                previous: self.last_commit,
                new: end,
            });
        }
        self.last_commit = end;
        if announces_ddl(&txn.changes) {
            // The consumer copies changed tables as of now: they must show this transaction.
            let client = self.catalog().await?;
            wait_visible(client, txn.xid).await?;
        }
        let part = (txn.parts_sent > 0).then_some(TxnPart {
            txn: txn.final_lsn,
            first: false,
            last: true,
        });
        if part.is_some() {
            info!(txn = %txn.final_lsn, commit = %end, parts = txn.parts_sent + 1,
                "large upstream transaction: last part");
        }
        self.send_batch(ChangeBatch {
            resume: None,
            commit_lsn: end,
            changes: txn.changes,
            part,
        })
        .await
    }

    /// Waits for room in the channel, but keeps the walsender session alive meanwhile.
    /// Returns `false` when the consumer is gone.
    async fn send_batch(&mut self, batch: ChangeBatch) -> Result<bool, ReplicationError> {
        let mut batch = Some(batch);
        let out = self.out.clone();
        loop {
            tokio::select! {
                permit = out.reserve() => {
                    return match permit {
                        Ok(p) => {
                            if let Some(b) = batch.take() {
                                p.send(b);
                            }
                            Ok(true)
                        }
                        Err(_) => Ok(false),
                    };
                }
                _ = self.tick.tick() => self.send_status(false).await?,
            }
        }
    }

    async fn relation_from_message(
        &mut self,
        oid: u32,
        namespace: &str,
        name: &str,
        identity_byte: u8,
        columns: &[ColumnInfo],
    ) -> Result<RelationInfo, ReplicationError> {
        let identity = ReplicaIdentity::from_pg_byte(identity_byte).ok_or_else(|| {
            ReplicationError::Protocol(format!("unknown replica identity {identity_byte}"))
        })?;
        let mut raw: Vec<RawColumn> = columns
            .iter()
            .map(|c| RawColumn {
                name: c.name.to_string(),
                type_oid: c.type_id,
                typmod: c.type_modifier,
                type_name: None,
            })
            .collect();
        let mut key: Vec<usize> = (0..columns.len())
            .filter(|i| columns[*i].is_key())
            .collect();
        let unknown_types = raw
            .iter()
            .any(|c| pgtypes::type_from_oid(c.type_oid).is_none());
        // REPLICA IDENTITY FULL flags every column; the real key (if any) is in the catalog.
        if identity == ReplicaIdentity::Full || unknown_types {
            let client = self.catalog().await?;
            let (primary, names) = relation_extras(client, oid, &raw).await?;
            if identity == ReplicaIdentity::Full {
                key = primary;
            }
            for c in raw.iter_mut() {
                c.type_name = names.get(&c.type_oid).cloned();
            }
        }
        Ok(build_relation(
            oid,
            namespace,
            name,
            identity,
            raw,
            key,
            self.source.filter(),
        ))
    }

    /// A table announced as created, as the catalog describes it now (`None` when it is gone
    /// again or not published). When later DDL changed it meanwhile, the shape is ahead of the
    /// stream; the table's own Relation message then differs and the consumer copies it again.
    async fn created_relation(
        &mut self,
        oid: u32,
    ) -> Result<Option<RelationInfo>, ReplicationError> {
        let publication = self.source.publication_name().to_string();
        let filter = self.source.filter().clone();
        let xid = self.txn.as_ref().map_or(0, |t| t.xid);
        let client = self.catalog().await?;
        wait_visible(client, xid).await?;
        Ok(discover_one(client, &publication, oid, &filter)
            .await?
            .map(|t| t.relation))
    }

    async fn catalog(&mut self) -> Result<&Client, ReplicationError> {
        if self.catalog.as_ref().is_none_or(|c| c.is_closed()) {
            self.catalog = Some(self.source.client().await?);
        }
        self.catalog
            .as_ref()
            .ok_or_else(|| ReplicationError::Protocol("catalog connection missing".into()))
    }

    /// Reports positions to Postgres; without `force`, only when something moved or the
    /// heartbeat is due.
    async fn send_status(&mut self, force: bool) -> Result<(), ReplicationError> {
        let applied = *self.applied_rx.borrow_and_update();
        if applied < self.applied {
            return Err(ReplicationError::PositionRegressed {
                previous: self.applied,
                new: applied,
            });
        }
        self.applied = applied;
        // Never claim more than was received (the caller may store a position ahead of what
        // this session has seen, e.g. the start position itself).
        let flush = applied.min(self.received);
        let due = match self.last_status {
            None => true,
            Some((r, f, at)) => {
                r != self.received || f != flush || at.elapsed() >= STATUS_HEARTBEAT
            }
        };
        if !(force || due) {
            return Ok(());
        }
        self.conn
            .send_standby_status_update(self.received.0, flush.0, flush.0, false)
            .await?;
        self.last_status = Some((self.received, flush, Instant::now()));
        debug!(received = %self.received, flushed = %flush, "sent standby status");
        Ok(())
    }
}

/// Whether changes announce DDL (the consumer then reads the catalog and copies tables).
fn announces_ddl(changes: &[Change]) -> bool {
    changes
        .iter()
        .any(|c| matches!(c, Change::SchemaChanged { .. }))
}

/// Longest wait for a decoded transaction to become visible to catalog queries.
const VISIBLE_WAIT: Duration = Duration::from_secs(2);

/// Waits until upstream transaction `xid` is visible to new snapshots. The walsender sends a
/// transaction once its commit record is flushed, which can be a moment before the commit is
/// visible to other sessions; a catalog query in that moment would miss what it created.
async fn wait_visible(client: &Client, xid: u32) -> Result<(), ReplicationError> {
    // The 32-bit xid made 64-bit with the epoch of the snapshot's xmax (one less when the xid
    // is from before the xmax's wraparound).
    const SQL: &str = "SELECT pg_catalog.pg_visible_in_snapshot((((( \
            pg_catalog.pg_snapshot_xmax(s)::text::int8 >> 32) \
            - CASE WHEN $1::int8 > (pg_catalog.pg_snapshot_xmax(s)::text::int8 & 4294967295) \
                   THEN 1 ELSE 0 END) << 32) | $1::int8)::text::xid8, s) \
        FROM pg_catalog.pg_current_snapshot() s";
    if xid == 0 {
        return Ok(());
    }
    let deadline = Instant::now() + VISIBLE_WAIT;
    loop {
        let visible: bool = client
            .query_one(SQL, &[&i64::from(xid)])
            .await
            .map_err(ReplicationError::pg(
                "waiting for a transaction to be visible",
            ))?
            .get(0);
        if visible || Instant::now() >= deadline {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A DDL announcement: the table's oid, and whether the table was created.
fn parse_ddl_message(content: &[u8]) -> Option<(u32, bool)> {
    let text = std::str::from_utf8(content).ok()?.trim();
    let (oid, rest) = text.split_once(' ').unwrap_or((text, ""));
    let oid = oid.parse::<u32>().ok()?;
    Some((oid, rest.trim() == "created"))
}

fn tuple_bytes(t: &TupleData) -> usize {
    t.columns
        .iter()
        .map(|c| c.as_bytes().len() + COLUMN_OVERHEAD_BYTES)
        .sum()
}

fn old_row(
    rel: &RelationInfo,
    tuple: &TupleData,
    kind: Option<char>,
) -> Result<OldRow, ReplicationError> {
    let (row, _) = decode_tuple(rel, tuple, true)?;
    Ok(match kind {
        Some('O') => OldRow::Full(row),
        _ => OldRow::Key(row),
    })
}

/// Decodes a pgoutput tuple; returns the row and the indices of unchanged-TOAST columns.
fn decode_tuple(
    rel: &RelationInfo,
    tuple: &TupleData,
    allow_unchanged: bool,
) -> Result<(Row, Vec<usize>), ReplicationError> {
    let table = || format!("{}.{}", rel.schema.schema, rel.schema.name);
    if tuple.columns.len() != rel.schema.columns.len() {
        return Err(ReplicationError::Protocol(format!(
            "tuple for {} has {} columns, relation has {}",
            table(),
            tuple.columns.len(),
            rel.schema.columns.len()
        )));
    }
    let mut unchanged = Vec::new();
    let mut row = Vec::with_capacity(tuple.columns.len());
    for (i, (data, col)) in tuple.columns.iter().zip(&rel.schema.columns).enumerate() {
        let decode_err = |message: String| ReplicationError::Decode {
            table: table(),
            column: col.name.clone(),
            message,
        };
        let value = if data.is_null() {
            Value::Null
        } else if data.is_unchanged() {
            if !allow_unchanged {
                return Err(decode_err("unchanged TOAST value in an insert".into()));
            }
            unchanged.push(i);
            Value::Null
        } else if data.is_text() {
            let text = std::str::from_utf8(data.as_bytes())
                .map_err(|e| decode_err(format!("not UTF-8: {e}")))?;
            // A value Larder cannot represent never stops replication (see snapshot.rs).
            pgtypes::parse_text(&col.ty, text)
                .unwrap_or_else(|_| Value::Unrepresentable(text.to_string()))
        } else {
            return Err(decode_err("binary tuple data was not requested".into()));
        };
        row.push(value);
    }
    Ok((row, unchanged))
}

#[cfg(test)]
mod tests {
    use super::parse_ddl_message;

    #[test]
    fn ddl_announcements_parse_with_and_without_creation() {
        assert_eq!(parse_ddl_message(b"16384"), Some((16384, false)));
        assert_eq!(parse_ddl_message(b"16384 created"), Some((16384, true)));
        assert_eq!(parse_ddl_message(b" 7 other "), Some((7, false)));
        assert_eq!(parse_ddl_message(b"x created"), None);
        assert_eq!(parse_ddl_message(&[0xff, 0x31]), None);
    }
}
