//! Initial copy of every replicated table, as of the slot's exported snapshot.
//!
//! Up to `snapshot_parallelism` workers, each on its own connection, import the slot's
//! exported snapshot (`SET TRANSACTION SNAPSHOT` in a REPEATABLE READ transaction), so every
//! table and every range of a table is read at the same instant: the slot's consistent point.
//! Workers take parts (whole tables, or page ranges of large ones: see [`super::snapshot_plan`])
//! largest first and run `COPY ... TO STDOUT` per part. Rows are decoded from COPY text and
//! handed to the worker's sink in bounded batches; memory stays at about one batch per worker
//! plus what the sinks buffer (see [`SnapshotMemory`]).

use std::future::Future;
use std::sync::atomic::Ordering;

use bytes::BytesMut;
use futures_util::StreamExt;
use larder_sql::{Row, Value};
use tokio::sync::mpsc;
use tokio_postgres::Client;
use tracing::info;

use super::copy_text::for_each_field;
pub use super::snapshot_plan::SnapshotMemory;
use super::snapshot_plan::{Part, Plan, TableCopy, TID_RANGE_SCAN_VERSION_NUM};
use super::{quote_ident, DiscoveredTable, PgSource, PgSourceOptions};
use crate::change::RelationInfo;
use crate::error::ReplicationError;
use crate::pgtypes;

/// Rows of one table. Every replicated table yields at least one batch with `table_done`
/// (possibly with no rows), after every batch of its rows, so the caller knows an empty table
/// was copied.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotBatch {
    /// Relation oid (as in [`RelationInfo::oid`]).
    pub rel: u32,
    pub rows: Vec<Row>,
    /// Rows of this table delivered so far by all workers, including this batch.
    pub rows_done: u64,
    /// The planner's row estimate for this table (for progress display).
    pub rows_estimated: Option<u64>,
    /// The last batch of one part (a table or a range of it) from this sink's worker: the sink
    /// makes the part's rows readable before it returns.
    pub part_done: bool,
    pub table_done: bool,
}

/// Where snapshot rows go. Implemented for `mpsc::Sender<SnapshotBatch>`. With several
/// workers each gets its own clone; a batch's rows must be stored when `deliver` returns for a
/// batch with `part_done` (the `table_done` batch follows every part's last batch).
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
    /// Parts copied (tables, or ranges of large tables).
    pub parts: usize,
    pub workers: usize,
}

/// Begins a read-only REPEATABLE READ transaction in the exported snapshot.
async fn import_snapshot(client: &Client, snapshot: &str) -> Result<(), ReplicationError> {
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET TRANSACTION SNAPSHOT '{snapshot}'"
        ))
        .await
        .map_err(ReplicationError::pg("importing the exported snapshot"))
}

pub(crate) async fn run<S: SnapshotSink + Clone>(
    source: &PgSource,
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
    let first = source.client().await?;
    import_snapshot(&first, snapshot).await?;
    let replicated: Vec<&DiscoveredTable> = tables
        .iter()
        .filter(|t| t.relation.status.is_replicated())
        .collect();
    let memory = options.snapshot_memory();
    let (sizes, block_bytes, version) = table_sizes(&first, &replicated).await?;
    let plan = Plan::new(
        replicated,
        &sizes,
        block_bytes,
        options.snapshot_split_min_bytes as u64,
        memory.workers,
        version >= TID_RANGE_SCAN_VERSION_NUM,
    );
    let workers = memory.workers.min(plan.parts.len()).max(1);
    info!(
        tables = plan.tables.len(),
        parts = plan.parts.len(),
        workers,
        heap_bytes = sizes.iter().sum::<u64>(),
        batch_max_bytes = memory.batch_max_bytes,
        sink_buffer_max_bytes = memory.sink_buffer_max_bytes,
        memory_max_bytes = workers * (memory.batch_max_bytes + memory.sink_buffer_max_bytes),
        "snapshot copy starts"
    );
    let mut clients = vec![first];
    let others = futures_util::future::try_join_all((1..workers).map(|_| async {
        let c = source.client().await?;
        import_snapshot(&c, snapshot).await?;
        Ok::<_, ReplicationError>(c)
    }))
    .await?;
    clients.extend(others);
    let limits = Limits {
        batch_rows_max: options.snapshot_batch_rows_max,
        batch_bytes_max: memory.batch_max_bytes,
        row_bytes_max: options.copy_row_bytes_max,
    };
    let mut sinks: Vec<S> = (1..workers).map(|_| sink.clone()).collect();
    let rows = {
        let plan = &plan;
        let limits = &limits;
        let mut jobs = Vec::with_capacity(workers);
        jobs.push(worker(&clients[0], plan, sink, limits));
        for (client, sink) in clients[1..].iter().zip(sinks.iter_mut()) {
            jobs.push(worker(client, plan, sink, limits));
        }
        futures_util::future::try_join_all(jobs).await?
    };
    for client in &clients {
        client
            .batch_execute("COMMIT")
            .await
            .map_err(ReplicationError::pg("ending the snapshot transaction"))?;
    }
    Ok(SnapshotSummary {
        tables: plan.tables.len(),
        rows: rows.iter().sum(),
        parts: plan.parts.len(),
        workers,
    })
}

/// Heap bytes of each table as of the snapshot, the block size, and `server_version_num`.
async fn table_sizes(
    client: &Client,
    tables: &[&DiscoveredTable],
) -> Result<(Vec<u64>, u64, i32), ReplicationError> {
    let oids: Vec<i64> = tables.iter().map(|t| t.relation.oid as i64).collect();
    let settings = client
        .query_one(
            "SELECT current_setting('server_version_num')::int4, \
                    current_setting('block_size')::int8",
            &[],
        )
        .await
        .map_err(ReplicationError::pg("reading the server version"))?;
    let rows = client
        .query(
            "SELECT c.oid::int8, pg_catalog.pg_relation_size(c.oid) FROM pg_catalog.pg_class c \
             WHERE c.oid::int8 = ANY($1::int8[])",
            &[&oids],
        )
        .await
        .map_err(ReplicationError::pg("reading table sizes"))?;
    let sizes = oids
        .iter()
        .map(|oid| {
            rows.iter()
                .find(|r| r.get::<_, i64>(0) == *oid)
                .map_or(0, |r| r.get::<_, i64>(1).max(0) as u64)
        })
        .collect();
    let block: i64 = settings.get(1);
    Ok((sizes, block.max(0) as u64, settings.get(0)))
}

/// Copies parts until none is left; returns the rows it copied.
async fn worker<S: SnapshotSink>(
    client: &Client,
    plan: &Plan<'_>,
    sink: &mut S,
    limits: &Limits,
) -> Result<u64, ReplicationError> {
    let mut rows = 0;
    while let Some(part) = plan.take() {
        let table = plan.tables[part.table];
        let copy = &plan.copies[part.table];
        let single = plan.single_part(part.table);
        rows += copy_part(client, table, part, copy, sink, limits, single).await?;
        let last = single || copy.parts_left.fetch_sub(1, Ordering::AcqRel) == 1;
        if last && !single {
            // Every other part's last batch was delivered before its worker counted down.
            sink.deliver(SnapshotBatch {
                rel: table.relation.oid,
                rows: Vec::new(),
                rows_done: copy.rows.load(Ordering::Acquire),
                rows_estimated: table.estimated_rows,
                part_done: true,
                table_done: true,
            })
            .await
            .map_err(ReplicationError::Sink)?;
        }
        if last {
            info!(
                table = %format!("{}.{}", table.relation.schema.schema, table.relation.schema.name),
                rows = copy.rows.load(Ordering::Acquire),
                "snapshot copied table"
            );
        }
    }
    Ok(rows)
}

/// Copies one part (a table or a range of it) into the sink.
async fn copy_part<S: SnapshotSink>(
    client: &Client,
    table: &DiscoveredTable,
    part: &Part,
    copy: &TableCopy,
    sink: &mut S,
    limits: &Limits,
    ends_table: bool,
) -> Result<u64, ReplicationError> {
    let rel = &table.relation;
    let columns: Vec<String> = rel
        .schema
        .columns
        .iter()
        .map(|c| quote_ident(&c.name))
        .collect();
    let name = format!(
        "{}.{}",
        quote_ident(&rel.schema.schema),
        quote_ident(&rel.schema.name)
    );
    let sql = match part.pages {
        None => format!("COPY {name} ({}) TO STDOUT", columns.join(", ")),
        Some((first, end)) => {
            let end = end.map_or(String::new(), |e| format!(" AND ctid < '({e},0)'::tid"));
            format!(
                "COPY (SELECT {} FROM {name} WHERE ctid >= '({first},0)'::tid{end}) TO STDOUT",
                columns.join(", ")
            )
        }
    };
    copy_rows(client, &sql, table, copy, sink, limits, ends_table).await
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
    let part = Part {
        table: 0,
        pages: None,
        bytes: 0,
    };
    let limits = Limits {
        batch_rows_max: options.snapshot_batch_rows_max,
        batch_bytes_max: options.snapshot_batch_bytes_max,
        row_bytes_max: options.copy_row_bytes_max,
    };
    let copy = TableCopy::default();
    copy_part(client, table, &part, &copy, sink, &limits, true).await?;
    client
        .batch_execute("COMMIT")
        .await
        .map_err(ReplicationError::pg("ending the table copy"))?;
    Ok(lsn)
}

/// Bounds of one worker's batches.
struct Limits {
    batch_rows_max: usize,
    /// Approximate in-memory bytes of a batch's decoded rows.
    batch_bytes_max: usize,
    row_bytes_max: usize,
}

/// Accumulates decoded rows into bounded batches.
struct Batcher<'a> {
    table: &'a DiscoveredTable,
    copy: &'a TableCopy,
    rows: Vec<Row>,
    bytes: usize,
    done: u64,
}

impl Batcher<'_> {
    async fn flush<S: SnapshotSink>(
        &mut self,
        sink: &mut S,
        part_done: bool,
        table_done: bool,
    ) -> Result<(), ReplicationError> {
        let n = self.rows.len() as u64;
        self.done += n;
        let batch = SnapshotBatch {
            rel: self.table.relation.oid,
            rows: std::mem::take(&mut self.rows),
            rows_done: self.copy.rows.fetch_add(n, Ordering::AcqRel) + n,
            rows_estimated: self.table.estimated_rows,
            part_done,
            table_done,
        };
        self.bytes = 0;
        sink.deliver(batch).await.map_err(ReplicationError::Sink)
    }

    /// Decodes one COPY line (without its newline) into the batch; hands the batch to the
    /// sink when it is full.
    async fn push<S: SnapshotSink>(
        &mut self,
        sink: &mut S,
        line: &[u8],
        limits: &Limits,
    ) -> Result<(), ReplicationError> {
        let rel = &self.table.relation;
        self.bytes += line.len() + 24 + rel.schema.columns.len() * std::mem::size_of::<Value>();
        self.rows.push(parse_copy_row(rel, line)?);
        if self.rows.len() >= limits.batch_rows_max || self.bytes >= limits.batch_bytes_max {
            self.flush(sink, false, false).await?;
        }
        Ok(())
    }
}

/// Runs one `COPY ... TO STDOUT` and delivers its rows; the last batch has `part_done` (and
/// `table_done` when `ends_table`). Returns the rows copied.
async fn copy_rows<S: SnapshotSink>(
    client: &Client,
    sql: &str,
    table: &DiscoveredTable,
    copy: &TableCopy,
    sink: &mut S,
    limits: &Limits,
    ends_table: bool,
) -> Result<u64, ReplicationError> {
    let rel = &table.relation;
    let stream = client
        .copy_out(sql)
        .await
        .map_err(ReplicationError::pg("starting COPY"))?;
    let mut stream = std::pin::pin!(stream);
    // Holds a row split over several COPY messages (Postgres sends one row per message, so
    // usually nothing).
    let mut buf = BytesMut::new();
    let mut batcher = Batcher {
        table,
        copy,
        rows: Vec::with_capacity(limits.batch_rows_max.min(4096)),
        bytes: 0,
        done: 0,
    };
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(ReplicationError::pg("reading COPY data"))?;
        let mut data: &[u8] = &chunk;
        if !buf.is_empty() {
            buf.extend_from_slice(data);
            data = &[];
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line = buf.split_to(pos + 1);
                batcher.push(sink, &line[..pos], limits).await?;
            }
        }
        while let Some(pos) = data.iter().position(|b| *b == b'\n') {
            batcher.push(sink, &data[..pos], limits).await?;
            data = &data[pos + 1..];
        }
        buf.extend_from_slice(data);
        if buf.len() > limits.row_bytes_max {
            return Err(ReplicationError::RowTooLarge {
                table: format!("{}.{}", rel.schema.schema, rel.schema.name),
                limit_bytes: limits.row_bytes_max,
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
    batcher.flush(sink, true, ends_table).await?;
    Ok(batcher.done)
}

/// One COPY text row -> typed values, in the relation's column order.
pub(crate) fn parse_copy_row(rel: &RelationInfo, line: &[u8]) -> Result<Row, ReplicationError> {
    let table = || format!("{}.{}", rel.schema.schema, rel.schema.name);
    let columns = &rel.schema.columns;
    let mut row = Vec::with_capacity(columns.len());
    let mut extra = 0usize;
    for_each_field::<String>(line, |field| {
        let Some(col) = columns.get(row.len()) else {
            extra += 1;
            return Ok(());
        };
        row.push(match field {
            None => Value::Null,
            // A value Larder cannot represent never stops replication: it is kept as text
            // and any cache read that needs it goes upstream.
            Some(text) => pgtypes::parse_text(&col.ty, &text)
                .unwrap_or_else(|_| Value::Unrepresentable(text.into_owned())),
        });
        Ok(())
    })
    .map_err(|message| ReplicationError::Decode {
        table: table(),
        column: "?".into(),
        message,
    })?;
    if row.len() != columns.len() || extra > 0 {
        return Err(ReplicationError::Protocol(format!(
            "COPY of {} returned {} fields, expected {}",
            table(),
            row.len() + extra,
            columns.len()
        )));
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::{ReplicaIdentity, TableStatus};
    use larder_sql::{Column, SqlType, TableSchema};

    fn rel() -> RelationInfo {
        let col = |name: &str, ty, type_oid| Column {
            name: name.into(),
            ty,
            type_oid,
            typmod: -1,
        };
        RelationInfo {
            oid: 1,
            schema: TableSchema {
                schema: "public".into(),
                name: "t".into(),
                columns: vec![col("id", SqlType::Int4, 23), col("note", SqlType::Text, 25)],
                key: vec![0],
            },
            replica_identity: ReplicaIdentity::Default,
            status: TableStatus::Replicated,
        }
    }

    #[test]
    fn copy_rows_decode_to_typed_values_and_shape_errors_are_reported() {
        let r = rel();
        assert_eq!(
            parse_copy_row(&r, b"7\ta\\tb").unwrap(),
            vec![Value::Int(7), Value::Text("a\tb".into())]
        );
        assert_eq!(
            parse_copy_row(&r, b"\\N\t\\N").unwrap(),
            vec![Value::Null, Value::Null]
        );
        // Not an int4: kept as text, never an error.
        assert_eq!(
            parse_copy_row(&r, b"99999999999\tx").unwrap()[0],
            Value::Unrepresentable("99999999999".into())
        );
        for bad in [&b"1"[..], b"1\tx\ty"] {
            let e = parse_copy_row(&r, bad).unwrap_err().to_string();
            assert!(e.contains("expected 2"), "{e}");
        }
        assert!(parse_copy_row(&r, b"1\t\\377").is_err());
    }
}
