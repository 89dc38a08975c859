//! The binlog change stream: this process registers as a replica (`COM_REGISTER_SLAVE` with
//! the source's server id) and asks for the binlog from a [`Position`] (`COM_BINLOG_DUMP`;
//! on MariaDB with a GTID, `@slave_connect_state` makes the upstream start after that GTID).
//! mysql_async sends both commands and splits the packets into events; mysql_common decodes
//! TABLE_MAP and ROWS events; MariaDB's GTID event is decoded in [`super::events`].
//!
//! * Transactions: BEGIN (or a MariaDB GTID event) starts one, XID (or a `COMMIT` query)
//!   ends it: one [`MyChangeBatch`] whose position is the end of the commit event. A DDL
//!   statement is a transaction of its own (MariaDB flags its GTID standalone; MySQL writes
//!   it without BEGIN). Rolled-back transactions are not in the binlog at all.
//! * Rows of tables outside the database or not replicated are dropped; the transaction
//!   still yields a (possibly empty) batch, so the position advances.
//! * Positions strictly increase from the start position; a regression is an error.
//! * Memory: a transaction whose changes exceed `transaction_memory_max_bytes` is delivered
//!   in parts ([`MyTxnPart`]), as the Postgres stream does: only committed transactions are
//!   in the binlog, so applying a part early never applies an aborted change. Parts before
//!   the last carry the previous position (it must not move); a replay after a restart
//!   starts again at the first part with the same changes.
//! * A malformed event gives [`ReplicationError::BinlogEvent`] naming the event type and
//!   position; a panic inside the event reader is caught and reported the same way.
//! * XA transactions (XA PREPARE in the binlog) are refused with an error naming the event.
//! * A second replica with the same server id makes the upstream end one of the two
//!   streams: that is reported as [`ReplicationError::DuplicateServerId`].

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;

use futures_util::{FutureExt, StreamExt};
use mysql_async::binlog::events::{Event, EventData, RowsEventData};
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStream, BinlogStreamRequest, Conn};
use tracing::{debug, info};

use super::events::{
    classify, event_name, GtidState, MariaGtid, Statement, TableRef, MARIADB_GTID,
};
use super::position::Position;
use super::schema::{discover, MyTable};
use super::source::{flavor_of, my_err};
use super::{Flavor, MySource};
use crate::change::{Change, NewRow, OldRow};
use crate::error::ReplicationError;

/// One committed upstream transaction (or one part of a large one); apply it atomically,
/// then store `position`.
#[derive(Clone, Debug, PartialEq)]
pub struct MyChangeBatch {
    /// Where the stream resumes after this batch. In a part that is not the last one this is
    /// the previous batch's position (it must not move yet).
    pub position: Position,
    pub changes: Vec<Change>,
    pub part: Option<MyTxnPart>,
}

/// Where a batch sits in a transaction delivered in parts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MyTxnPart {
    /// The position where the transaction's first event starts (identifies it).
    pub txn: Position,
    pub first: bool,
    pub last: bool,
}

const EVENT_HEADER_LEN: u32 = 19;
/// XA_PREPARE_LOG_EVENT.
const XA_PREPARE_LOG: u8 = 38;
/// TRANSACTION_PAYLOAD_EVENT (MySQL 8.0.20+ binlog compression); mysql_async yields the
/// events inside it right after it.
const TRANSACTION_PAYLOAD: u8 = 40;
/// Events a binlog file holds between transactions (format description, STOP, MySQL's
/// PREVIOUS_GTIDS, MariaDB's BINLOG_CHECKPOINT and GTID_LIST): reading one moves the
/// position without a transaction.
const BETWEEN_TRANSACTIONS: [u8; 5] = [15, 3, 35, 161, 163];

struct Txn {
    start: Position,
    changes: Vec<Change>,
    bytes: usize,
    parts_sent: u64,
    /// MariaDB: a standalone group (DDL) ends after its statement.
    standalone: bool,
    gtid: Option<MariaGtid>,
}

/// An open binlog stream; see the module docs.
pub struct MyStream {
    source: MySource,
    flavor: Flavor,
    binlog: Option<BinlogStream>,
    catalog: Option<Conn>,
    tables: HashMap<String, MyTable>,
    /// Names of rows events looked up in the catalog and not found (dropped since): not
    /// looked up again until a statement creates the name.
    missing: HashSet<String>,
    /// Relations already sent in this session (in their current shape).
    emitted: HashSet<u32>,
    file: String,
    /// When `file` was created (its FORMAT_DESCRIPTION event's timestamp), once read.
    created: Option<u32>,
    /// The file and creation time the start position was read in: the first
    /// FORMAT_DESCRIPTION of that file must match, else the position means another stream.
    expect_created: Option<(String, u32)>,
    /// Whether the FORMAT_DESCRIPTION event of the stream has been seen.
    seen_fde: bool,
    /// Whether events carry a CRC32 (then the fake ROTATE, read before the format is
    /// known, ends with 4 checksum bytes).
    checksum: bool,
    gtid: GtidState,
    last: Position,
    txn: Option<Txn>,
    /// End offset of the last TRANSACTION_PAYLOAD event (MySQL binlog compression): the
    /// events inside it carry no offset of their own.
    payload_end: u32,
    /// Set while an event is being handled: a `next_batch` future dropped then (its caller
    /// cancelled it during a catalog query) lost that event, so the stream must not go on.
    handling: bool,
    /// The host name this stream registered with (`SHOW SLAVE HOSTS`' Host).
    report_host: String,
    /// Stream opened non-blocking (`next_batch` returns `None` at the end of the binlog).
    non_blocking: bool,
}

impl MyStream {
    /// `tables`: the catalog as of `from` when the caller has it (a snapshot's tables);
    /// otherwise it is read now.
    pub(crate) async fn open(
        source: &MySource,
        from: &Position,
        tables: Option<&[MyTable]>,
        non_blocking: bool,
    ) -> Result<MyStream, ReplicationError> {
        let mut conn = source.connect().await?;
        let flavor = flavor_of(&mut conn).await?;
        let checksum: Option<String> = conn
            .query_first("SELECT @@global.binlog_checksum")
            .await
            .map_err(my_err("reading binlog_checksum"))?;
        let checksum = checksum.is_some_and(|c| !c.eq_ignore_ascii_case("NONE"));
        conn.query_drop("SET @master_binlog_checksum = @@global.binlog_checksum")
            .await
            .map_err(my_err("announcing checksum support"))?;
        let period_ns = source
            .options
            .heartbeat_interval
            .as_nanos()
            .min(4_294_967_000_000_000);
        conn.query_drop(format!("SET @master_heartbeat_period = {period_ns}"))
            .await
            .map_err(my_err("setting the heartbeat period"))?;
        let by_gtid = flavor == Flavor::MariaDb && source.options.resume_by_gtid;
        let gtid_text = from.gtid.clone().filter(|_| by_gtid);
        if flavor == Flavor::MariaDb {
            conn.query_drop("SET @mariadb_slave_capability = 4")
                .await
                .map_err(my_err("announcing MariaDB GTID support"))?;
            if let Some(g) = &gtid_text {
                conn.exec_drop("SET @slave_connect_state = ?", (g,))
                    .await
                    .map_err(my_err("setting the GTID start position"))?;
            }
        }
        // Registered under a host name of its own, so that after a failure this stream's
        // stale registration is told apart from another replica with the same server id.
        static STREAMS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let report_host = format!(
            "larder-{}-{}",
            std::process::id(),
            STREAMS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let mut request =
            BinlogStreamRequest::new(source.server_id).with_hostname(report_host.as_bytes());
        if gtid_text.is_none() {
            request = request
                .with_filename(from.file.as_bytes())
                .with_pos(from.offset);
        }
        if non_blocking {
            request = request.with_non_blocking();
        }
        let binlog = conn
            .get_binlog_stream(request)
            .await
            .map_err(my_err("starting the binlog dump"))?;
        let mut catalog = source.connect().await?;
        let tables = match tables {
            Some(t) => t.to_vec(),
            None => discover(&mut catalog, &source.database, None).await?,
        }
        .into_iter()
        .map(|t| (t.relation.schema.name.clone(), t))
        .collect();
        let gtid = from
            .gtid
            .as_deref()
            .and_then(GtidState::parse)
            .unwrap_or_default();
        info!(from = %from, server_id = source.server_id, by_gtid = gtid_text.is_some(),
            "binlog stream started");
        Ok(MyStream {
            source: source.clone(),
            flavor,
            binlog: Some(binlog),
            catalog: Some(catalog),
            tables,
            missing: HashSet::new(),
            emitted: HashSet::new(),
            file: from.file.clone(),
            created: None,
            expect_created: from.created.map(|c| (from.file.clone(), c)),
            seen_fde: false,
            checksum,
            gtid,
            last: from.clone(),
            txn: None,
            payload_end: 0,
            handling: false,
            non_blocking,
            report_host,
        })
    }

    /// The position of the last batch returned (the start position before any).
    pub fn position(&self) -> &Position {
        &self.last
    }

    /// The next committed transaction (or part of one). `Ok(None)` only on a non-blocking
    /// stream that reached the end of the binlog.
    ///
    /// Cancel safety: dropping the future while it waits for the next event loses nothing;
    /// dropping it while it handles one (a DDL's catalog query) fails the stream, and the
    /// next call says so.
    pub async fn next_batch(&mut self) -> Result<Option<MyChangeBatch>, ReplicationError> {
        if self.handling {
            self.binlog = None;
        }
        loop {
            let Some(binlog) = self.binlog.as_mut() else {
                return Err(ReplicationError::Protocol(
                    "the binlog stream failed earlier; open it again".into(),
                ));
            };
            let stall = self.source.options.heartbeat_interval * 3;
            let next = tokio::time::timeout(stall, AssertUnwindSafe(binlog.next()).catch_unwind());
            let Ok(next) = next.await else {
                self.binlog = None;
                return Err(ReplicationError::MySql {
                    context: "reading the binlog stream",
                    source: mysql_async::Error::Io(mysql_async::IoError::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no event and no heartbeat from the upstream for {stall:?}"),
                    ))),
                });
            };
            let event = match next {
                Ok(Some(Ok(ev))) => ev,
                Ok(Some(Err(mysql_async::Error::Io(mysql_async::IoError::Io(e)))))
                    if e.kind() == std::io::ErrorKind::InvalidData =>
                {
                    // The event reader could not frame or check the next event.
                    self.binlog = None;
                    return Err(ReplicationError::BinlogEvent {
                        event_type: "unknown (reading the next event)".into(),
                        position: format!("after {}", self.last),
                        message: e.to_string(),
                    });
                }
                Ok(Some(Err(e))) => {
                    self.binlog = None;
                    return Err(super::ended::why(&self.source, &self.report_host, Some(e)).await);
                }
                Ok(None) => {
                    self.binlog = None;
                    if self.non_blocking {
                        return Ok(None);
                    }
                    return Err(super::ended::why(&self.source, &self.report_host, None).await);
                }
                Err(panic) => {
                    self.binlog = None;
                    let message = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "the event reader panicked".into());
                    return Err(ReplicationError::BinlogEvent {
                        event_type: "unknown (reading the next event)".into(),
                        position: format!("after {}", self.last),
                        message,
                    });
                }
            };
            self.handling = true;
            let handled = self.handle(event).await;
            self.handling = false;
            match handled {
                Ok(Some(batch)) => return Ok(Some(batch)),
                Ok(None) => {}
                Err(e) => {
                    // Never go on past an event that was not applied: the caller opens the
                    // stream again from its stored position.
                    self.binlog = None;
                    self.txn = None;
                    return Err(e);
                }
            }
        }
    }

    /// Closes the replication connection.
    pub async fn close(mut self) {
        if let Some(b) = self.binlog.take() {
            let _ = b.close().await;
        }
    }

    fn event_error(&self, event: &Event, message: impl ToString) -> ReplicationError {
        ReplicationError::BinlogEvent {
            event_type: event_name(event.header().event_type_raw()),
            position: format!("{}:{}", self.file, event.header().log_pos()),
            message: message.to_string(),
        }
    }

    /// The position at the end of `event` in the current file, with the GTID state.
    fn position_after(&self, event: &Event) -> Position {
        let gtid = match self.flavor {
            Flavor::MariaDb if !self.gtid.is_empty() => Some(self.gtid.to_string()),
            _ => None,
        };
        Position::new(self.file.clone(), self.end_of(event) as u64, gtid).created(self.created)
    }

    /// A FORMAT_DESCRIPTION event: the current file's creation time, checked against the
    /// start position's once.
    fn format_description(&mut self, event: &Event) -> Result<(), ReplicationError> {
        self.seen_fde = true;
        // A server may send 0 for the file it starts a dump in the middle of: unknown.
        let created = event.header().timestamp();
        self.created = (created != 0).then_some(created);
        tracing::debug!(file = %self.file, created, "binlog format description");
        if created == 0 {
            return Ok(());
        }
        if let Some((file, expected)) = self.expect_created.take() {
            if file == self.file && expected != created {
                return Err(ReplicationError::PositionLost {
                    detail: format!(
                        "binlog file {file} was created at {created} (unix time), not at \
                         {expected} as when the stored position was read: another server, or \
                         a reset binlog"
                    ),
                });
            }
        }
        Ok(())
    }

    /// The event's end offset; inside a compressed transaction payload, the payload's.
    fn end_of(&self, event: &Event) -> u32 {
        match event.header().log_pos() {
            0 => self.payload_end,
            p => p,
        }
    }

    fn begin(&mut self, event: &Event, gtid: Option<MariaGtid>) {
        let h = event.header();
        let start = self
            .end_of(event)
            .saturating_sub(h.event_size().max(EVENT_HEADER_LEN));
        self.txn = Some(Txn {
            start: Position::new(self.file.clone(), start as u64, None).created(self.created),
            changes: Vec::new(),
            bytes: 0,
            parts_sent: 0,
            standalone: gtid.is_some_and(|g| g.standalone()),
            gtid,
        });
    }

    /// A batch without changes that moves the position to `position`, read between
    /// transactions (a rotation, a new file's first events), unless it is not ahead: so an
    /// upstream whose last events are such ones is caught up with, not lagged behind.
    fn idle_advance(&mut self, position: Position) -> Option<MyChangeBatch> {
        if self.txn.is_some() || position <= self.last {
            return None;
        }
        self.last = position.clone();
        Some(MyChangeBatch {
            position,
            changes: Vec::new(),
            part: None,
        })
    }

    async fn handle(&mut self, event: Event) -> Result<Option<MyChangeBatch>, ReplicationError> {
        let raw = event.header().event_type_raw();
        if BETWEEN_TRANSACTIONS.contains(&raw) && event.header().log_pos() > 0 {
            if raw == 15 {
                self.format_description(&event)?;
            }
            let position = self.position_after(&event);
            return Ok(self.idle_advance(position));
        }
        if raw == TRANSACTION_PAYLOAD {
            self.payload_end = event.header().log_pos();
            return Ok(None);
        }
        if raw == MARIADB_GTID {
            let g = MariaGtid::decode(event.data(), event.header().server_id())
                .ok_or_else(|| self.event_error(&event, "GTID event shorter than 13 bytes"))?;
            if self.txn.is_some() {
                return Err(self.event_error(&event, "GTID inside a transaction"));
            }
            self.begin(&event, Some(g));
            return Ok(None);
        }
        if raw == XA_PREPARE_LOG {
            // The prepared transaction's rows were just read; they may still roll back
            // (XA ROLLBACK) in a later group. Applying or dropping them could both be wrong.
            return Err(self.event_error(
                &event,
                "XA PREPARE (two-phase commit) transactions are not supported by the MySQL \
                 source",
            ));
        }
        let data = match event.read_data() {
            Ok(Some(d)) => d,
            Ok(None) => return Ok(None), // an event type mysql_common does not know: skip
            Err(e) => return Err(self.event_error(&event, e)),
        };
        match data {
            EventData::RotateEvent(r) => {
                let mut name = r.name_raw().to_vec();
                if !self.seen_fde && self.checksum && name.len() > 4 {
                    name.truncate(name.len() - 4);
                }
                let name = String::from_utf8(name)
                    .map_err(|e| self.event_error(&event, format!("file name: {e}")))?;
                debug!(file = %name, pos = r.position(), "binlog rotate");
                if name != self.file {
                    self.created = None;
                }
                self.file = name;
                if event.header().log_pos() == 0 {
                    // The dump's own announcement of where it starts.
                    return Ok(None);
                }
                let gtid = match self.flavor {
                    Flavor::MariaDb if !self.gtid.is_empty() => Some(self.gtid.to_string()),
                    _ => None,
                };
                let position =
                    Position::new(self.file.clone(), r.position(), gtid).created(self.created);
                Ok(self.idle_advance(position))
            }
            EventData::FormatDescriptionEvent(_) => {
                self.format_description(&event)?;
                Ok(None)
            }
            EventData::XidEvent(_) => self.commit(&event).map(Some),
            EventData::QueryEvent(q) => {
                let schema = q.schema().into_owned();
                let statement = classify(&q.query());
                self.handle_statement(&event, &schema, statement).await
            }
            EventData::RowsEvent(rows) => {
                self.handle_rows(&event, &rows).await?;
                self.maybe_part()
            }
            _ => Ok(None),
        }
    }

    /// Whether `t` (as named in a statement run in `default_db`) is in our database.
    fn ours(&self, t: &TableRef, default_db: &str) -> Option<String> {
        let db = t.0.as_deref().unwrap_or(default_db);
        (db == self.source.database).then(|| t.1.clone())
    }

    async fn handle_statement(
        &mut self,
        event: &Event,
        default_db: &str,
        statement: Statement,
    ) -> Result<Option<MyChangeBatch>, ReplicationError> {
        match statement {
            Statement::Begin => {
                if self.txn.is_none() {
                    self.begin(event, None);
                }
                return Ok(None);
            }
            Statement::Commit => return self.commit(event).map(Some),
            Statement::Rollback => {
                // Only non-transactional changes reach the binlog before a ROLLBACK; they
                // happened. Deliver what was collected.
                return self.commit(event).map(Some);
            }
            Statement::Other => {}
            Statement::Access => {
                self.source
                    .access_epoch
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            Statement::Dml(target) => {
                let ours = match &target {
                    Some(t) => self.ours(t, default_db).is_some(),
                    None => default_db == self.source.database,
                };
                if ours {
                    return Err(self.event_error(
                        event,
                        "a row change was logged as a statement (a session with \
                         binlog_format STATEMENT or MIXED): its rows are not in the binlog; \
                         every session writing the replicated database needs binlog_format = ROW",
                    ));
                }
            }
            Statement::Truncate(t) => {
                if let Some(name) = self.ours(&t, default_db) {
                    let rel = super::schema::relation_id(&self.source.database, &name);
                    if self
                        .tables
                        .get(&name)
                        .is_some_and(|t| t.relation.status.is_replicated())
                    {
                        self.push(event, 8, Change::Truncate { rels: vec![rel] });
                    }
                }
            }
            Statement::Changed(ts) => {
                for t in ts {
                    if let Some(name) = self.ours(&t, default_db) {
                        self.schema_changed(event, &name).await?;
                    }
                }
            }
            Statement::Created(ts) => {
                for t in ts {
                    if let Some(name) = self.ours(&t, default_db) {
                        self.refresh(event, &name).await?;
                    }
                }
            }
            Statement::Renamed { from, to } => {
                for t in from {
                    if let Some(name) = self.ours(&t, default_db) {
                        self.schema_changed(event, &name).await?;
                    }
                }
                for t in to {
                    if let Some(name) = self.ours(&t, default_db) {
                        self.refresh(event, &name).await?;
                    }
                }
            }
        }
        // A statement outside BEGIN..COMMIT (MySQL DDL) or a standalone MariaDB group ends
        // its transaction here.
        match &self.txn {
            None => {
                self.begin(event, None);
                self.commit(event).map(Some)
            }
            Some(t) if t.standalone => self.commit(event).map(Some),
            Some(_) => Ok(None),
        }
    }

    fn ensure_txn(&mut self, event: &Event) {
        if self.txn.is_none() {
            self.begin(event, None);
        }
    }

    fn push(&mut self, event: &Event, bytes: usize, change: Change) {
        self.ensure_txn(event);
        if let Some(txn) = self.txn.as_mut() {
            txn.bytes += bytes;
            txn.changes.push(change);
        }
    }

    /// The table's shape changed or it is gone: announce it and describe it afresh.
    async fn schema_changed(&mut self, event: &Event, name: &str) -> Result<(), ReplicationError> {
        let rel = super::schema::relation_id(&self.source.database, name);
        self.push(event, 8, Change::SchemaChanged { rel });
        self.refresh(event, name).await
    }

    /// Reads the table's description from the catalog now (it may be ahead of the stream
    /// when later DDL already ran) and sends it as a `Relation` when it exists.
    async fn refresh(&mut self, event: &Event, name: &str) -> Result<(), ReplicationError> {
        self.missing.remove(name);
        let table = self.discover_one(name).await?;
        match table {
            Some(t) => {
                self.emitted.insert(t.relation.oid);
                self.push(event, 64, Change::Relation(t.relation.clone()));
                self.tables.insert(name.to_string(), t);
            }
            None => {
                if let Some(old) = self.tables.remove(name) {
                    self.emitted.remove(&old.relation.oid);
                }
            }
        }
        Ok(())
    }

    async fn discover_one(&mut self, name: &str) -> Result<Option<MyTable>, ReplicationError> {
        if self.catalog.is_none() {
            self.catalog = Some(self.source.connect().await?);
        }
        let Some(conn) = self.catalog.as_mut() else {
            return Ok(None);
        };
        let found = discover(conn, &self.source.database, Some(name)).await;
        match found {
            Ok(mut v) => Ok(v.pop()),
            Err(e) => {
                self.catalog = None;
                Err(e)
            }
        }
    }

    async fn handle_rows(
        &mut self,
        event: &Event,
        rows: &RowsEventData<'_>,
    ) -> Result<(), ReplicationError> {
        self.ensure_txn(event);
        let binlog = self
            .binlog
            .as_ref()
            .ok_or_else(|| ReplicationError::Protocol("binlog stream missing".into()))?;
        let Some(tme) = binlog.get_tme(rows.table_id()) else {
            return Err(self.event_error(
                event,
                format!("no TABLE_MAP for table id {}", rows.table_id()),
            ));
        };
        if tme.database_name() != self.source.database.as_str() {
            return Ok(());
        }
        let name = tme.table_name().into_owned();
        if !self.tables.contains_key(&name) && !self.missing.contains(&name) {
            // Created after the stream opened without a statement we saw: look it up once.
            match self.discover_one(&name).await? {
                Some(t) => {
                    self.tables.insert(name.clone(), t);
                }
                None => {
                    self.missing.insert(name.clone());
                }
            }
        }
        let binlog = self
            .binlog
            .as_ref()
            .ok_or_else(|| ReplicationError::Protocol("binlog stream missing".into()))?;
        let Some(tme) = binlog.get_tme(rows.table_id()) else {
            return Ok(());
        };
        let Some(table) = self.tables.get(&name) else {
            return Ok(());
        };
        if !table.relation.status.is_replicated() {
            return Ok(());
        }
        let oid = table.relation.oid;
        let mut decoded = Vec::new();
        let mut bytes = 0usize;
        for item in rows.rows(tme) {
            let (before, after) = item.map_err(|e| self.event_error(event, e))?;
            let before = before
                .map(|r| table.decode_binlog_row(r, &mut bytes))
                .transpose()
                .map_err(|m| self.event_error(event, m))?;
            let after = after
                .map(|r| table.decode_binlog_row(r, &mut bytes))
                .transpose()
                .map_err(|m| self.event_error(event, m))?;
            let change = match (rows, before, after) {
                (
                    RowsEventData::WriteRowsEvent(_) | RowsEventData::WriteRowsEventV1(_),
                    None,
                    Some(row),
                ) => Change::Insert { rel: oid, row },
                (
                    RowsEventData::UpdateRowsEvent(_)
                    | RowsEventData::UpdateRowsEventV1(_)
                    | RowsEventData::PartialUpdateRowsEvent(_),
                    Some(old),
                    Some(row),
                ) => Change::Update {
                    rel: oid,
                    old: Some(OldRow::Full(old)),
                    new: NewRow {
                        row,
                        unchanged_toast: Vec::new(),
                    },
                },
                (
                    RowsEventData::DeleteRowsEvent(_) | RowsEventData::DeleteRowsEventV1(_),
                    Some(old),
                    None,
                ) => Change::Delete {
                    rel: oid,
                    old: OldRow::Full(old),
                },
                _ => return Err(self.event_error(event, "row images do not match the event type")),
            };
            decoded.push(change);
        }
        let relation = (!self.emitted.contains(&oid)).then(|| table.relation.clone());
        if let Some(rel) = relation {
            self.emitted.insert(oid);
            self.push(event, 64, Change::Relation(rel));
        }
        if let Some(txn) = self.txn.as_mut() {
            txn.bytes += bytes;
            txn.changes.extend(decoded);
        }
        Ok(())
    }

    /// Sends the transaction so far as a part when it outgrew the memory bound.
    fn maybe_part(&mut self) -> Result<Option<MyChangeBatch>, ReplicationError> {
        let limit = self.source.options.transaction_memory_max_bytes;
        let Some(txn) = self.txn.as_mut() else {
            return Ok(None);
        };
        if txn.bytes < limit {
            return Ok(None);
        }
        let part = MyTxnPart {
            txn: txn.start.clone(),
            first: txn.parts_sent == 0,
            last: false,
        };
        txn.parts_sent += 1;
        txn.bytes = 0;
        Ok(Some(MyChangeBatch {
            position: self.last.clone(),
            changes: std::mem::take(&mut txn.changes),
            part: Some(part),
        }))
    }

    fn commit(&mut self, event: &Event) -> Result<MyChangeBatch, ReplicationError> {
        let txn = self.txn.take();
        if let Some(g) = txn.as_ref().and_then(|t| t.gtid) {
            self.gtid.apply(&g);
        }
        let position = self.position_after(event);
        if position <= self.last {
            return Err(ReplicationError::BinlogPositionRegressed {
                previous: self.last.to_string(),
                new: position.to_string(),
            });
        }
        self.last = position.clone();
        let (changes, part) = match txn {
            None => (Vec::new(), None),
            Some(t) => {
                let part = (t.parts_sent > 0).then(|| MyTxnPart {
                    txn: t.start.clone(),
                    first: false,
                    last: true,
                });
                (t.changes, part)
            }
        };
        Ok(MyChangeBatch {
            position,
            changes,
            part,
        })
    }
}
