//! Initial copy of every replicated table, as of the slot's exported snapshot.
//!
//! One REPEATABLE READ transaction imports the snapshot (`SET TRANSACTION SNAPSHOT`) and runs
//! `COPY schema.table (columns) TO STDOUT` per table, so all tables are read at the same
//! instant: the slot's consistent point. Rows are decoded from COPY text and handed to the sink
//! in bounded batches; memory stays at about one batch plus one row.

use std::future::Future;

use bytes::BytesMut;
use futures_util::StreamExt;
use larder_sql::{Row, Value};
use tokio::sync::mpsc;
use tokio_postgres::Client;
use tracing::info;

use super::copy_text::decode_row;
use super::{quote_ident, DiscoveredTable, PgSourceOptions};
use crate::change::RelationInfo;
use crate::error::ReplicationError;
use crate::pgtypes;

/// Rows of one table. Every replicated table yields at least one batch, the last with
/// `table_done` (possibly with no rows), so the caller knows an empty table was copied.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotBatch {
    /// Relation oid (as in [`RelationInfo::oid`]).
    pub rel: u32,
    pub rows: Vec<Row>,
    /// Rows of this table delivered so far, including this batch.
    pub rows_done: u64,
    /// The planner's row estimate for this table (for progress display).
    pub rows_estimated: Option<u64>,
    pub table_done: bool,
}

/// Where snapshot rows go. Implemented for `mpsc::Sender<SnapshotBatch>`.
pub trait SnapshotSink: Send {
    /// Takes one batch; an `Err` aborts the snapshot with [`ReplicationError::Sink`].
    fn deliver(&mut self, batch: SnapshotBatch) -> impl Future<Output = Result<(), String>> + Send;
}

impl SnapshotSink for mpsc::Sender<SnapshotBatch> {
    async fn deliver(&mut self, batch: SnapshotBatch) -> Result<(), String> {
        self.send(batch)
            .await
            .map_err(|_| "snapshot receiver dropped".to_string())
    }
}

/// Totals of a finished snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotSummary {
    pub tables: usize,
    pub rows: u64,
}

pub(crate) async fn run<S: SnapshotSink>(
    client: &Client,
    snapshot: &str,
    tables: &[DiscoveredTable],
    sink: &mut S,
    options: &PgSourceOptions,
) -> Result<SnapshotSummary, ReplicationError> {
    // The name comes from the server ("00000003-00000002-1"); refuse anything else rather than
    // splice it into SQL.
    if snapshot.is_empty() || !snapshot.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return Err(ReplicationError::Protocol(format!(
            "unexpected snapshot name {snapshot:?}"
        )));
    }
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET TRANSACTION SNAPSHOT '{snapshot}'"
        ))
        .await
        .map_err(ReplicationError::pg("importing the exported snapshot"))?;
    let mut summary = SnapshotSummary::default();
    for t in tables.iter().filter(|t| t.relation.status.is_replicated()) {
        let rows = copy_table(client, t, sink, options).await?;
        summary.tables += 1;
        summary.rows += rows;
        info!(
            table = %format!("{}.{}", t.relation.schema.schema, t.relation.schema.name),
            rows, "snapshot copied table"
        );
    }
    client
        .batch_execute("COMMIT")
        .await
        .map_err(ReplicationError::pg("ending the snapshot transaction"))?;
    Ok(summary)
}

/// Copies one table as of now (not as of the slot's snapshot), for a table whose shape
/// changed while streaming. Returns the WAL position taken inside the copy's snapshot: every
/// transaction the copy contains committed before it, so once the stream has been applied
/// past it, upserting the stream's changes on top of the copy gives the upstream's state.
pub(crate) async fn run_now<S: SnapshotSink>(
    client: &Client,
    table: &DiscoveredTable,
    sink: &mut S,
    options: &PgSourceOptions,
) -> Result<crate::pg::Lsn, ReplicationError> {
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await
        .map_err(ReplicationError::pg("starting the table copy"))?;
    let row = client
        .query_one("SELECT pg_catalog.pg_current_wal_lsn()::text", &[])
        .await
        .map_err(ReplicationError::pg("reading the WAL position"))?;
    let text: String = row.get(0);
    let lsn = text
        .parse()
        .map_err(|_| ReplicationError::Protocol(format!("unexpected LSN {text:?}")))?;
    copy_table(client, table, sink, options).await?;
    client
        .batch_execute("COMMIT")
        .await
        .map_err(ReplicationError::pg("ending the table copy"))?;
    Ok(lsn)
}

/// Accumulates decoded rows into bounded batches.
struct Batcher<'a> {
    table: &'a DiscoveredTable,
    rows: Vec<Row>,
    bytes: usize,
    done: u64,
}

impl Batcher<'_> {
    async fn flush<S: SnapshotSink>(
        &mut self,
        sink: &mut S,
        table_done: bool,
    ) -> Result<(), ReplicationError> {
        self.done += self.rows.len() as u64;
        let batch = SnapshotBatch {
            rel: self.table.relation.oid,
            rows: std::mem::take(&mut self.rows),
            rows_done: self.done,
            rows_estimated: self.table.estimated_rows,
            table_done,
        };
        self.bytes = 0;
        sink.deliver(batch).await.map_err(ReplicationError::Sink)
    }
}

async fn copy_table<S: SnapshotSink>(
    client: &Client,
    table: &DiscoveredTable,
    sink: &mut S,
    options: &PgSourceOptions,
) -> Result<u64, ReplicationError> {
    let rel = &table.relation;
    let columns: Vec<String> = rel
        .schema
        .columns
        .iter()
        .map(|c| quote_ident(&c.name))
        .collect();
    let sql = format!(
        "COPY {}.{} ({}) TO STDOUT",
        quote_ident(&rel.schema.schema),
        quote_ident(&rel.schema.name),
        columns.join(", ")
    );
    let stream = client
        .copy_out(&sql)
        .await
        .map_err(ReplicationError::pg("starting COPY"))?;
    let mut stream = std::pin::pin!(stream);
    let mut buf = BytesMut::new();
    let mut batcher = Batcher {
        table,
        rows: Vec::with_capacity(options.snapshot_batch_rows_max.min(4096)),
        bytes: 0,
        done: 0,
    };
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(ReplicationError::pg("reading COPY data"))?;
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line = buf.split_to(pos + 1);
            batcher.bytes += line.len();
            batcher.rows.push(parse_copy_row(rel, &line[..pos])?);
            if batcher.rows.len() >= options.snapshot_batch_rows_max
                || batcher.bytes >= options.snapshot_batch_bytes_max
            {
                batcher.flush(sink, false).await?;
            }
        }
        if buf.len() > options.copy_row_bytes_max {
            return Err(ReplicationError::RowTooLarge {
                table: format!("{}.{}", rel.schema.schema, rel.schema.name),
                limit_bytes: options.copy_row_bytes_max,
            });
        }
        if buf.is_empty() && buf.capacity() > 1 << 20 {
            // Give back the memory of an unusually long row.
            buf = BytesMut::new();
        }
    }
    if !buf.is_empty() {
        return Err(ReplicationError::Protocol(
            "COPY data ended in the middle of a row".into(),
        ));
    }
    batcher.flush(sink, true).await?;
    Ok(batcher.done)
}

/// One COPY text row -> typed values, in the relation's column order.
pub(crate) fn parse_copy_row(rel: &RelationInfo, line: &[u8]) -> Result<Row, ReplicationError> {
    let table = || format!("{}.{}", rel.schema.schema, rel.schema.name);
    let fields = decode_row(line).map_err(|message| ReplicationError::Decode {
        table: table(),
        column: "?".into(),
        message,
    })?;
    if fields.len() != rel.schema.columns.len() {
        return Err(ReplicationError::Protocol(format!(
            "COPY of {} returned {} fields, expected {}",
            table(),
            fields.len(),
            rel.schema.columns.len()
        )));
    }
    fields
        .into_iter()
        .zip(&rel.schema.columns)
        .map(|(f, col)| match f {
            None => Ok(Value::Null),
            // A value Larder cannot represent never stops replication: it is kept as text
            // and any cache read that needs it goes upstream.
            Some(text) => Ok(pgtypes::parse_text(&col.ty, &text)
                .unwrap_or_else(|_| Value::Unrepresentable(text.to_string()))),
        })
        .collect()
}
