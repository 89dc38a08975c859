//! Table discovery from `information_schema`: every base table of the replicated database,
//! columns in ordinal order, the primary key, and whether Larder can replicate it.
//!
//! Relation id: MySQL has no oid. InnoDB's `TABLE_ID` is not stable enough (TRUNCATE and a
//! copying ALTER TABLE give the table a new id, so a `Truncate` would name an id the table no
//! longer has), so the id is the 32-bit FNV-1a hash of `database.table`: stable across
//! ALTER and TRUNCATE, but a RENAME gives the table a new id (the old name's id is then
//! announced with `SchemaChanged`). Two names of one database that hash alike (rare) leave
//! the second one not replicated, with the reason saying so.

use std::collections::{HashMap, HashSet};

use larder_sql::{Column, Row, SqlType, TableSchema, Value};
use mysql_async::binlog::row::BinlogRow;
use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use super::source::my_err;
use super::types::{from_binlog, map_column, ColumnDesc, MyType};
use crate::change::{RelationInfo, ReplicaIdentity, TableStatus};
use crate::error::ReplicationError;

/// Per-value overhead counted against a transaction's memory bound.
const VALUE_OVERHEAD_BYTES: usize = 16;

/// A discovered table: its description plus how each column's values are decoded
/// (`None` for a column Larder cannot represent).
#[derive(Clone, Debug, PartialEq)]
pub struct MyTable {
    pub relation: RelationInfo,
    pub(crate) types: Vec<Option<MyType>>,
}

impl MyTable {
    pub fn name(&self) -> &str {
        &self.relation.schema.name
    }

    /// A full binlog row image in the table's column order; `bytes` grows by its size.
    pub(crate) fn decode_binlog_row(
        &self,
        mut row: BinlogRow,
        bytes: &mut usize,
    ) -> Result<Row, String> {
        let schema = &self.relation.schema;
        if row.len() != schema.columns.len() {
            return Err(format!(
                "{}.{} has {} columns but the row image has {} (the table changed after it \
                 was described, by DDL not yet streamed: copy the table again)",
                schema.schema,
                schema.name,
                schema.columns.len(),
                row.len()
            ));
        }
        let mut out = Vec::with_capacity(row.len());
        for (i, col) in schema.columns.iter().enumerate() {
            let ty = self.types[i]
                .as_ref()
                .ok_or_else(|| format!("column {} is not replicable", col.name))?;
            let Some(v) = row.take(i) else {
                return Err(format!(
                    "column {} is missing from the row image (binlog_row_image must be FULL)",
                    col.name
                ));
            };
            let v =
                mysql_async::Value::try_from(v).map_err(|e| format!("column {}: {e}", col.name))?;
            *bytes += VALUE_OVERHEAD_BYTES
                + match &v {
                    mysql_async::Value::Bytes(b) => b.len(),
                    _ => 8,
                };
            let value: Value =
                from_binlog(ty, v).map_err(|m| format!("column {}: {m}", col.name))?;
            out.push(value);
        }
        Ok(out)
    }
}

/// 32-bit FNV-1a of `database.table`: the relation id (see the module docs).
pub fn relation_id(database: &str, table: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in database.bytes().chain([b'.']).chain(table.bytes()) {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

type ColumnRow = (
    String,
    String,
    String,
    String,
    Option<String>,
    Option<u64>,
    Option<u64>,
);

/// Every base table of `database` (or only `only`), sorted by name.
pub(crate) async fn discover(
    conn: &mut Conn,
    database: &str,
    only: Option<&str>,
) -> Result<Vec<MyTable>, ReplicationError> {
    let filter = if only.is_some() {
        " AND TABLE_NAME = ?"
    } else {
        " AND ? IS NULL"
    };
    let tables: Vec<String> = conn
        .exec(
            format!(
                "SELECT TABLE_NAME FROM information_schema.TABLES \
                 WHERE TABLE_SCHEMA = ? AND TABLE_TYPE = 'BASE TABLE'{filter} ORDER BY TABLE_NAME"
            ),
            (database, only),
        )
        .await
        .map_err(my_err("listing tables"))?;
    let columns: Vec<ColumnRow> = conn
        .exec(
            format!(
                "SELECT TABLE_NAME, COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, CHARACTER_SET_NAME, \
                        CHARACTER_OCTET_LENGTH, DATETIME_PRECISION \
                 FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ?{filter} \
                 ORDER BY TABLE_NAME, ORDINAL_POSITION"
            ),
            (database, only),
        )
        .await
        .map_err(my_err("reading columns"))?;
    let keys: Vec<(String, String)> = conn
        .exec(
            format!(
                "SELECT TABLE_NAME, COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE \
                 WHERE TABLE_SCHEMA = ? AND CONSTRAINT_NAME = 'PRIMARY'{filter} \
                 ORDER BY TABLE_NAME, ORDINAL_POSITION"
            ),
            (database, only),
        )
        .await
        .map_err(my_err("reading primary keys"))?;
    // MariaDB's JSON is LONGTEXT with a `json_valid(col)` check; MySQL 5.7 has no such view.
    let checks: Vec<(String, String)> = conn
        .exec(
            format!(
                "SELECT TABLE_NAME, CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS \
                 WHERE CONSTRAINT_SCHEMA = ?{filter}"
            ),
            (database, only),
        )
        .await
        .unwrap_or_default();

    let mut by_table: HashMap<&str, Vec<&ColumnRow>> = HashMap::new();
    for c in &columns {
        by_table.entry(c.0.as_str()).or_default().push(c);
    }
    let mut seen_ids: HashSet<u32> = HashSet::new();
    let mut out = Vec::with_capacity(tables.len());
    for table in &tables {
        let cols = by_table.remove(table.as_str()).unwrap_or_default();
        let key_names: Vec<&str> = keys
            .iter()
            .filter(|(t, _)| t == table)
            .map(|(_, c)| c.as_str())
            .collect();
        let table_checks: Vec<&str> = checks
            .iter()
            .filter(|(t, _)| t == table)
            .map(|(_, c)| c.as_str())
            .collect();
        let mut t = build_table(database, table, &cols, &key_names, &table_checks);
        if !seen_ids.insert(t.relation.oid) && t.relation.status.is_replicated() {
            t.relation.status = TableStatus::NotReplicated {
                reason: format!(
                    "the relation id of {database}.{table} (a hash of its name) collides with \
                     another table's; rename one of them"
                ),
            };
        }
        out.push(t);
    }
    Ok(out)
}

fn build_table(
    database: &str,
    table: &str,
    cols: &[&ColumnRow],
    key_names: &[&str],
    checks: &[&str],
) -> MyTable {
    let mut columns = Vec::with_capacity(cols.len());
    let mut types = Vec::with_capacity(cols.len());
    let mut reasons = Vec::new();
    for (_, name, data_type, column_type, charset, octets, precision) in cols.iter().copied() {
        let desc = ColumnDesc {
            name: name.clone(),
            data_type: data_type.clone(),
            column_type: column_type.clone(),
            charset: charset.clone(),
            octet_length: *octets,
            datetime_precision: precision.map(|p| p as u32),
            json_check: checks
                .iter()
                .any(|c| c.contains(&format!("json_valid(`{name}`)"))),
        };
        match map_column(&desc) {
            Ok((ty, code, my)) => {
                columns.push(Column {
                    name: name.clone(),
                    ty,
                    type_oid: code,
                    typmod: -1,
                });
                types.push(Some(my));
            }
            Err(reason) => {
                columns.push(Column {
                    name: name.clone(),
                    ty: SqlType::Text,
                    type_oid: 0,
                    typmod: -1,
                });
                types.push(None);
                reasons.push(reason);
            }
        }
    }
    let key: Vec<usize> = key_names
        .iter()
        .filter_map(|k| columns.iter().position(|c| c.name == *k))
        .collect();
    let status = if key.is_empty() {
        TableStatus::NotReplicated {
            reason: format!("table {database}.{table} has no primary key"),
        }
    } else if !reasons.is_empty() {
        TableStatus::NotReplicated {
            reason: reasons.join("; "),
        }
    } else {
        TableStatus::Replicated
    };
    MyTable {
        relation: RelationInfo {
            oid: relation_id(database, table),
            schema: TableSchema {
                schema: database.to_string(),
                name: table.to_string(),
                columns,
                key,
            },
            replica_identity: ReplicaIdentity::Full,
            status,
        },
        types,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relation_ids_are_fnv1a_of_the_qualified_name() {
        // FNV-1a 32 of "a.b".
        let mut h: u32 = 0x811c9dc5;
        for b in b"a.b" {
            h ^= *b as u32;
            h = h.wrapping_mul(16_777_619);
        }
        assert_eq!(relation_id("a", "b"), h);
        assert_ne!(relation_id("db", "t1"), relation_id("db", "t2"));
        assert_ne!(relation_id("db1", "t"), relation_id("db", "1t"));
    }

    #[test]
    fn tables_without_key_or_with_unknown_types_are_not_replicated() {
        let row = |name: &str, dt: &str| -> ColumnRow {
            (
                "t".into(),
                name.into(),
                dt.into(),
                dt.into(),
                None,
                None,
                None,
            )
        };
        let id = row("id", "int");
        let g = row("g", "geometry");
        let t = build_table("db", "t", &[&id], &["id"], &[]);
        assert!(t.relation.status.is_replicated());
        assert_eq!(t.relation.schema.key, vec![0]);
        let t = build_table("db", "t", &[&id], &[], &[]);
        assert!(!t.relation.status.is_replicated());
        let t = build_table("db", "t", &[&id, &g], &["id"], &[]);
        match t.relation.status {
            TableStatus::NotReplicated { reason } => assert!(reason.contains("geometry")),
            s => panic!("{s:?}"),
        }
    }
}
