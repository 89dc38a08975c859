//! Initial copy of every replicated table, consistent with one binlog [`Position`].
//!
//! * MariaDB: `START TRANSACTION WITH CONSISTENT SNAPSHOT`, then `SHOW STATUS LIKE
//!   'binlog_snapshot_%'` gives the binlog file and offset of exactly that snapshot (MariaDB
//!   keeps them per transaction), and `BINLOG_GTID_POS(file, offset)` the GTID position there.
//!   No lock at all.
//! * MySQL: the binlog position of a consistent snapshot is only known under a lock:
//!   `FLUSH TABLES WITH READ LOCK`, `START TRANSACTION WITH CONSISTENT SNAPSHOT`,
//!   `SHOW MASTER STATUS` (file, offset, executed GTID set), `UNLOCK TABLES` at once.
//!
//! Each table is then read inside that transaction in primary-key order with keyset
//! pagination (`WHERE key > last ORDER BY key LIMIT rows`, the comparison spelled out as
//! `k1 > a OR (k1 = a AND k2 > b)` so every optimizer uses the key's range). A key with a
//! column that has no exact SQL literal (FLOAT/DOUBLE, ENUM, SET, BIT, JSON) is read with one
//! streamed `ORDER BY key` query instead. Rows stream from the socket and go to the sink in
//! batches bounded by rows and by decoded bytes, so no table is ever held in memory.

use larder_sql::{Row, Value};
use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use tracing::info;

use super::position::Position;
use super::schema::{discover, MyTable};
use super::source::{flavor_of, master_status_row, my_err, server_code};
use super::types::{from_text, MyType};
use super::{quote_ident, Flavor, MySource};
use crate::error::ReplicationError;
use crate::pg::{SnapshotBatch, SnapshotSink};

/// A finished snapshot: where the stream must start, and what was copied.
#[derive(Clone, Debug)]
pub struct MySnapshot {
    /// The snapshot holds every transaction before this position and none after it: stream
    /// from here.
    pub position: Position,
    /// Every base table of the database as discovered inside the snapshot transaction
    /// (only `Replicated` ones were copied).
    pub tables: Vec<MyTable>,
    pub rows: u64,
}

/// Per-column overhead counted against the batch byte bound.
const VALUE_OVERHEAD_BYTES: usize = 16;

pub(crate) async fn run<S: SnapshotSink>(
    source: &MySource,
    sink: &mut S,
) -> Result<MySnapshot, ReplicationError> {
    run_tables(source, sink, None).await
}

/// [`run`], copying only the table with relation id `only` when given (the others are
/// still described in the result).
pub(crate) async fn run_tables<S: SnapshotSink>(
    source: &MySource,
    sink: &mut S,
    only: Option<u32>,
) -> Result<MySnapshot, ReplicationError> {
    let mut conn = source.connect().await?;
    let flavor = flavor_of(&mut conn).await?;
    conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .await
        .map_err(my_err("setting the isolation level"))?;
    let position = match flavor {
        Flavor::MariaDb => start_mariadb(&mut conn).await?,
        Flavor::MySql => start_mysql(&mut conn).await?,
    };
    info!(%position, database = %source.database, "snapshot transaction started");
    let tables = discover(&mut conn, &source.database, None).await?;
    let mut rows = 0;
    for table in tables
        .iter()
        .filter(|t| t.relation.status.is_replicated())
        .filter(|t| only.is_none_or(|oid| t.relation.oid == oid))
    {
        rows += copy_table(&mut conn, source, table, sink).await?;
    }
    conn.query_drop("COMMIT")
        .await
        .map_err(my_err("ending the snapshot transaction"))?;
    Ok(MySnapshot {
        position,
        tables,
        rows,
    })
}

async fn start_mariadb(conn: &mut Conn) -> Result<Position, ReplicationError> {
    conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT")
        .await
        .map_err(my_err("starting the snapshot transaction"))?;
    let status: Vec<(String, String)> = conn
        .query("SHOW STATUS LIKE 'binlog_snapshot_%'")
        .await
        .map_err(my_err("reading the snapshot's binlog position"))?;
    let get = |name: &str| {
        status
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let file = get("Binlog_snapshot_file").filter(|f| !f.is_empty());
    let offset = get("Binlog_snapshot_position").and_then(|p| p.parse::<u64>().ok());
    let (Some(file), Some(offset)) = (file, offset) else {
        return Err(ReplicationError::MySqlSetting {
            setting: "log_bin",
            current: "OFF".into(),
            needed: "ON",
        });
    };
    let gtid: Option<Option<String>> = conn
        .exec_first("SELECT BINLOG_GTID_POS(?, ?)", (&file, offset))
        .await
        .map_err(my_err("reading the snapshot's GTID position"))?;
    Ok(Position::new(file, offset, gtid.flatten()))
}

async fn start_mysql(conn: &mut Conn) -> Result<Position, ReplicationError> {
    // LOCK INSTANCE FOR BACKUP is not enough: it does not stop commits, so the binlog
    // position read under it could not be tied to the transaction's view.
    conn.query_drop("FLUSH TABLES WITH READ LOCK")
        .await
        .map_err(|e| match server_code(&e) {
            Some(1227 | 1045) => ReplicationError::MySqlPrivilege {
                action: "take the snapshot's brief global read lock (FLUSH TABLES WITH READ LOCK)",
                privilege: "RELOAD",
                detail: e.to_string(),
            },
            _ => my_err("taking the global read lock")(e),
        })?;
    let result = async {
        conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            .await
            .map_err(my_err("starting the snapshot transaction"))?;
        let row = master_status_row(conn)
            .await
            .map_err(my_err("reading the binlog position"))?;
        let row = row.ok_or(ReplicationError::MySqlSetting {
            setting: "log_bin",
            current: "OFF".into(),
            needed: "ON",
        })?;
        let file: Option<String> = row.get(0);
        let offset: Option<u64> = row.get(1);
        let gtid: Option<String> = row.get::<Option<String>, _>(4).flatten();
        match (file, offset) {
            (Some(f), Some(o)) => Ok(Position::new(f, o, gtid)),
            _ => Err(ReplicationError::Protocol(
                "SHOW MASTER STATUS returned no file/position".into(),
            )),
        }
    }
    .await;
    conn.query_drop("UNLOCK TABLES")
        .await
        .map_err(my_err("releasing the global read lock"))?;
    result
}

/// Whether a key column's text can be written back as an exact SQL literal.
fn literal_ok(ty: &MyType) -> bool {
    matches!(
        ty,
        MyType::Int { .. }
            | MyType::BigUnsigned
            | MyType::Decimal
            | MyType::Year
            | MyType::Text { .. }
            | MyType::Binary { .. }
            | MyType::Date
            | MyType::DateTime { .. }
            | MyType::Timestamp { .. }
            | MyType::Time { .. }
    )
}

/// The SQL literal of a key value as the text protocol returned it.
fn literal(ty: &MyType, raw: &[u8]) -> Result<String, ReplicationError> {
    let hex: String = raw.iter().map(|b| format!("{b:02X}")).collect();
    let plain = |allowed: &dyn Fn(u8) -> bool| {
        if raw.iter().all(|b| allowed(*b)) {
            Ok(String::from_utf8_lossy(raw).into_owned())
        } else {
            Err(ReplicationError::Protocol(format!(
                "unexpected key text {:?}",
                String::from_utf8_lossy(raw)
            )))
        }
    };
    match ty {
        MyType::Text { .. } => Ok(format!("_utf8mb4 X'{hex}'")),
        MyType::Binary { .. } => Ok(format!("X'{hex}'")),
        MyType::Date | MyType::DateTime { .. } | MyType::Timestamp { .. } | MyType::Time { .. } => {
            plain(&|b| b.is_ascii_digit() || b"-: .".contains(&b)).map(|s| format!("'{s}'"))
        }
        _ => plain(&|b| b.is_ascii_digit() || b"-.".contains(&b)),
    }
}

/// `(k1 > a) OR (k1 = a AND k2 > b) ...` for the key columns and the last key's literals.
fn after_key(names: &[String], literals: &[String]) -> String {
    let mut ors = Vec::with_capacity(names.len());
    for i in 0..names.len() {
        let mut ands: Vec<String> = (0..i)
            .map(|j| format!("{} = {}", names[j], literals[j]))
            .collect();
        ands.push(format!("{} > {}", names[i], literals[i]));
        ors.push(format!("({})", ands.join(" AND ")));
    }
    ors.join(" OR ")
}

/// Copies one table; returns its row count.
pub(crate) async fn copy_table<S: SnapshotSink>(
    conn: &mut Conn,
    source: &MySource,
    table: &MyTable,
    sink: &mut S,
) -> Result<u64, ReplicationError> {
    let rel = &table.relation;
    let schema = &rel.schema;
    let types: Vec<&MyType> = table
        .types
        .iter()
        .map(|t| {
            t.as_ref().ok_or_else(|| {
                ReplicationError::Protocol(format!("{} has an unsupported column", schema.name))
            })
        })
        .collect::<Result<_, _>>()?;
    let select_list: Vec<String> = schema
        .columns
        .iter()
        .map(|c| quote_ident(&c.name))
        .collect();
    let key_names: Vec<String> = schema
        .key
        .iter()
        .map(|&k| quote_ident(&schema.columns[k].name))
        .collect();
    let from = format!(
        "{}.{}",
        quote_ident(&schema.schema),
        quote_ident(&schema.name)
    );
    let base = format!("SELECT {} FROM {from}", select_list.join(", "));
    let order = key_names.join(", ");
    let keyset = schema.key.iter().all(|&k| literal_ok(types[k]));
    let page_rows = source.options.snapshot_batch_rows_max;
    let bytes_max = source.options.snapshot_batch_bytes_max;

    let mut batch: Vec<Row> = Vec::new();
    let mut batch_bytes = 0usize;
    let mut done: u64 = 0;
    let mut last_key: Option<Vec<String>> = None;
    loop {
        let sql = match (&last_key, keyset) {
            (_, false) => format!("{base} ORDER BY {order}"),
            (None, true) => format!("{base} ORDER BY {order} LIMIT {page_rows}"),
            (Some(lits), true) => format!(
                "{base} WHERE {} ORDER BY {order} LIMIT {page_rows}",
                after_key(&key_names, lits)
            ),
        };
        let mut result = conn
            .query_iter(sql)
            .await
            .map_err(my_err("reading a snapshot page"))?;
        let mut page = 0usize;
        let mut page_last: Option<Vec<Option<Vec<u8>>>> = None;
        while let Some(row) = result
            .next()
            .await
            .map_err(my_err("reading a snapshot row"))?
        {
            page += 1;
            let raw = row.unwrap();
            let mut out = Vec::with_capacity(raw.len());
            let mut keep: Vec<Option<Vec<u8>>> = Vec::new();
            for (i, v) in raw.into_iter().enumerate() {
                let value = match v {
                    mysql_async::Value::NULL => Value::Null,
                    mysql_async::Value::Bytes(b) => {
                        batch_bytes += b.len();
                        let decoded = from_text(types[i], &b).map_err(|message| {
                            ReplicationError::Decode {
                                table: format!("{}.{}", schema.schema, schema.name),
                                column: schema.columns[i].name.clone(),
                                message,
                            }
                        })?;
                        if keyset && schema.key.contains(&i) {
                            keep.push(Some(b));
                        }
                        decoded
                    }
                    other => {
                        return Err(ReplicationError::Protocol(format!(
                            "text protocol returned {other:?}"
                        )))
                    }
                };
                batch_bytes += VALUE_OVERHEAD_BYTES;
                out.push(value);
            }
            if keyset {
                page_last = Some(keep);
            }
            batch.push(out);
            if batch.len() >= page_rows || batch_bytes >= bytes_max {
                done += batch.len() as u64;
                deliver(sink, rel.oid, std::mem::take(&mut batch), done, false).await?;
                batch_bytes = 0;
            }
        }
        drop(result);
        if !keyset || page < page_rows {
            break;
        }
        // The key columns were read in key order; rebuild the literals in that order.
        let keys = page_last.unwrap_or_default();
        let order_of_keys: Vec<usize> = {
            let mut sorted = schema.key.clone();
            sorted.sort_unstable();
            schema
                .key
                .iter()
                .map(|k| sorted.iter().position(|s| s == k).unwrap_or(0))
                .collect()
        };
        let mut lits = Vec::with_capacity(schema.key.len());
        for (n, &k) in schema.key.iter().enumerate() {
            let raw = keys
                .get(order_of_keys[n])
                .cloned()
                .flatten()
                .ok_or_else(|| ReplicationError::Protocol("NULL in a primary key".into()))?;
            lits.push(literal(types[k], &raw)?);
        }
        last_key = Some(lits);
    }
    done += batch.len() as u64;
    deliver(sink, rel.oid, batch, done, true).await?;
    Ok(done)
}

async fn deliver<S: SnapshotSink>(
    sink: &mut S,
    rel: u32,
    rows: Vec<Row>,
    rows_done: u64,
    last: bool,
) -> Result<(), ReplicationError> {
    sink.deliver(SnapshotBatch {
        rel,
        rows,
        rows_done,
        rows_estimated: None,
        part_done: last,
        table_done: last,
    })
    .await
    .map_err(ReplicationError::Sink)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyset_condition_spells_out_the_row_comparison() {
        let names = vec!["`a`".to_string(), "`b`".to_string()];
        let lits = vec!["1".to_string(), "_utf8mb4 X'78'".to_string()];
        assert_eq!(
            after_key(&names, &lits),
            "(`a` > 1) OR (`a` = 1 AND `b` > _utf8mb4 X'78')"
        );
    }

    #[test]
    fn literals_refuse_unexpected_text() {
        let int = MyType::Int {
            unsigned: false,
            bits: 32,
        };
        assert_eq!(literal(&int, b"-12").unwrap(), "-12");
        assert!(literal(&int, b"1; DROP TABLE x").is_err());
        assert_eq!(
            literal(&MyType::Date, b"2020-01-02").unwrap(),
            "'2020-01-02'"
        );
        assert!(literal(&MyType::Date, b"2020'").is_err());
        assert_eq!(
            literal(&MyType::Binary { pad_to: None }, &[0, 255]).unwrap(),
            "X'00FF'"
        );
    }
}
