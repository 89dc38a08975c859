//! Which tables the publication covers, their shapes, and whether Larder can replicate them.
//!
//! The same classification ([`build_relation`]) runs for tables found in the catalog before the
//! snapshot and for Relation messages in the stream, so a table's status never depends on how
//! the server first heard of it. A table is not replicated when it is filtered out, has a column
//! of a type `pgtypes` does not support, or has no way to identify old rows (no primary key and
//! not REPLICA IDENTITY FULL, or REPLICA IDENTITY NOTHING).

use std::collections::HashMap;

use larder_sql::{Column, SqlType, TableSchema};
use tokio_postgres::Client;

use super::filter::TableFilter;
use crate::change::{RelationInfo, ReplicaIdentity, TableStatus};
use crate::error::ReplicationError;
use crate::pgtypes;

/// A table of the publication as the catalog describes it now.
#[derive(Clone, Debug, PartialEq)]
pub struct DiscoveredTable {
    pub relation: RelationInfo,
    /// `pg_class.reltuples`: the planner's estimate, `None` when never analyzed.
    pub estimated_rows: Option<u64>,
}

/// A column as the upstream reports it, before type mapping.
#[derive(Clone, Debug)]
pub(crate) struct RawColumn {
    pub name: String,
    pub type_oid: u32,
    pub typmod: i32,
    /// `format_type()` text when known, for operator-facing reasons.
    pub type_name: Option<String>,
}

/// Maps types, applies the filter and the key rules, and produces the status.
pub(crate) fn build_relation(
    oid: u32,
    schema: &str,
    name: &str,
    identity: ReplicaIdentity,
    raw: Vec<RawColumn>,
    key: Vec<usize>,
    filter: &TableFilter,
) -> RelationInfo {
    let mut unsupported: Option<String> = None;
    let columns: Vec<Column> = raw
        .into_iter()
        .map(|c| {
            let ty = match pgtypes::type_from_oid(c.type_oid) {
                Some(ty) => ty,
                None => {
                    if unsupported.is_none() {
                        let tname = c
                            .type_name
                            .clone()
                            .unwrap_or_else(|| format!("with type oid {}", c.type_oid));
                        unsupported = Some(format!(
                            "column \"{}\" has unsupported type {tname}",
                            c.name
                        ));
                    }
                    SqlType::Text
                }
            };
            Column {
                name: c.name,
                ty,
                type_oid: c.type_oid,
                typmod: c.typmod,
            }
        })
        .collect();
    debug_assert!(key.iter().all(|k| *k < columns.len()));
    let status = if !filter.matches(schema, name) {
        TableStatus::NotReplicated {
            reason: "filtered out by the table filter".into(),
        }
    } else if let Some(reason) = unsupported {
        TableStatus::NotReplicated { reason }
    } else if identity == ReplicaIdentity::Nothing {
        TableStatus::NotReplicated {
            reason: "REPLICA IDENTITY NOTHING: updates and deletes cannot be replicated; \
                     use a primary key or ALTER TABLE ... REPLICA IDENTITY FULL"
                .into(),
        }
    } else if identity != ReplicaIdentity::Full && key.is_empty() {
        TableStatus::NotReplicated {
            reason: "no primary key and not REPLICA IDENTITY FULL: add a primary key or run \
                     ALTER TABLE ... REPLICA IDENTITY FULL"
                .into(),
        }
    } else {
        TableStatus::Replicated
    };
    RelationInfo {
        oid,
        schema: TableSchema {
            schema: schema.to_string(),
            name: name.to_string(),
            columns,
            key,
        },
        replica_identity: identity,
        status,
    }
}

/// Published tables, and partitioned tables: with `publish_via_partition_root` off (Larder's
/// publication), changes arrive for each partition under its own oid, so a partitioned table
/// itself is listed as not replicated.
const TABLES_SQL: &str = "\
SELECT c.oid, n.nspname::text, c.relname::text, c.relreplident::text, c.reltuples::float8,
       c.relkind::text
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE (n.nspname, c.relname) IN (
    SELECT schemaname, tablename FROM pg_catalog.pg_publication_tables WHERE pubname = $1)
   OR (c.relkind = 'p' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
       AND n.nspname NOT LIKE 'pg\\_%'
       AND EXISTS (SELECT 1 FROM pg_catalog.pg_publication p
                   WHERE p.pubname = $1 AND p.puballtables))
ORDER BY 2, 3";

const COLUMNS_SQL: &str = "\
SELECT a.attrelid, a.attname::text, a.atttypid, a.atttypmod,
       pg_catalog.format_type(a.atttypid, a.atttypmod)
FROM pg_catalog.pg_attribute a
WHERE a.attrelid = ANY($1) AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
ORDER BY a.attrelid, a.attnum";

const KEYS_SQL: &str = "\
SELECT i.indrelid, i.indisprimary, a.attname::text
FROM pg_catalog.pg_index i
CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = ANY($1) AND (i.indisprimary OR i.indisreplident)
ORDER BY i.indrelid, i.indisprimary, k.ord";

/// Key columns (by name) per relation: the primary key and the replica identity index.
#[derive(Default)]
struct Keys {
    primary: Vec<String>,
    replident_index: Vec<String>,
}

const TABLE_SQL: &str = "\
SELECT c.oid, n.nspname::text, c.relname::text, c.relreplident::text, c.reltuples::float8,
       c.relkind::text
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = $2 AND ((n.nspname, c.relname) IN (
    SELECT schemaname, tablename FROM pg_catalog.pg_publication_tables WHERE pubname = $1)
   OR (c.relkind = 'p' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
       AND n.nspname NOT LIKE 'pg\\_%'
       AND EXISTS (SELECT 1 FROM pg_catalog.pg_publication p
                   WHERE p.pubname = $1 AND p.puballtables)))";

/// Why a partitioned table is listed but not replicated.
pub(crate) const PARTITIONED_REASON: &str = "a partitioned table: each partition is replicated \
as a table of its own (cache queries on the partitions); queries on the partitioned table go \
upstream";

/// Lists every table of `publication` with its shape and status.
pub(crate) async fn discover(
    client: &Client,
    publication: &str,
    filter: &TableFilter,
) -> Result<Vec<DiscoveredTable>, ReplicationError> {
    let rows = client
        .query(TABLES_SQL, &[&publication])
        .await
        .map_err(ReplicationError::pg("listing published tables"))?;
    describe(client, rows, filter).await
}

/// One table of `publication` by oid, as the catalog describes it now (`None`: it does not
/// exist, or the publication does not cover it).
pub(crate) async fn discover_one(
    client: &Client,
    publication: &str,
    oid: u32,
    filter: &TableFilter,
) -> Result<Option<DiscoveredTable>, ReplicationError> {
    let rows = client
        .query(TABLE_SQL, &[&publication, &oid])
        .await
        .map_err(ReplicationError::pg("looking up a published table"))?;
    Ok(describe(client, rows, filter).await?.into_iter().next())
}

async fn describe(
    client: &Client,
    rows: Vec<tokio_postgres::Row>,
    filter: &TableFilter,
) -> Result<Vec<DiscoveredTable>, ReplicationError> {
    let oids: Vec<u32> = rows.iter().map(|r| r.get(0)).collect();
    let mut columns = fetch_columns(client, &oids).await?;
    let mut keys = fetch_keys(client, &oids).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let oid: u32 = r.get(0);
        let ident_text: String = r.get(3);
        let identity = ReplicaIdentity::from_pg_byte(ident_text.bytes().next().unwrap_or(b'd'))
            .unwrap_or(ReplicaIdentity::Default);
        let raw = columns.remove(&oid).unwrap_or_default();
        let k = keys.remove(&oid).unwrap_or_default();
        let key = key_indices(identity, &raw, &k);
        let reltuples: f64 = r.get(4);
        let mut relation = build_relation(oid, r.get(1), r.get(2), identity, raw, key, filter);
        let relkind: String = r.get(5);
        if relkind == "p" {
            relation.status = TableStatus::NotReplicated {
                reason: PARTITIONED_REASON.into(),
            };
        }
        out.push(DiscoveredTable {
            relation,
            estimated_rows: (reltuples >= 0.0).then_some(reltuples as u64),
        });
    }
    Ok(out)
}

/// Which columns identify a row for this identity kind.
fn key_indices(identity: ReplicaIdentity, raw: &[RawColumn], keys: &Keys) -> Vec<usize> {
    let names = match identity {
        ReplicaIdentity::Index => &keys.replident_index,
        _ => &keys.primary,
    };
    let idx: Option<Vec<usize>> = names
        .iter()
        .map(|n| raw.iter().position(|c| &c.name == n))
        .collect();
    idx.unwrap_or_default()
}

async fn fetch_columns(
    client: &Client,
    oids: &[u32],
) -> Result<HashMap<u32, Vec<RawColumn>>, ReplicationError> {
    let rows = client
        .query(COLUMNS_SQL, &[&oids])
        .await
        .map_err(ReplicationError::pg("reading table columns"))?;
    let mut out: HashMap<u32, Vec<RawColumn>> = HashMap::new();
    for r in rows {
        out.entry(r.get(0)).or_default().push(RawColumn {
            name: r.get(1),
            type_oid: r.get(2),
            typmod: r.get(3),
            type_name: r.get(4),
        });
    }
    Ok(out)
}

async fn fetch_keys(client: &Client, oids: &[u32]) -> Result<HashMap<u32, Keys>, ReplicationError> {
    let rows = client
        .query(KEYS_SQL, &[&oids])
        .await
        .map_err(ReplicationError::pg("reading table keys"))?;
    let mut out: HashMap<u32, Keys> = HashMap::new();
    for r in rows {
        let k = out.entry(r.get(0)).or_default();
        let primary: bool = r.get(1);
        let name: String = r.get(2);
        if primary {
            k.primary.push(name);
        } else {
            k.replident_index.push(name);
        }
    }
    Ok(out)
}

/// For a Relation message: primary key column indices (needed for REPLICA IDENTITY FULL,
/// where pgoutput flags every column) and `format_type` names of the given type oids.
pub(crate) async fn relation_extras(
    client: &Client,
    oid: u32,
    columns: &[RawColumn],
) -> Result<(Vec<usize>, HashMap<u32, String>), ReplicationError> {
    let keys = fetch_keys(client, &[oid]).await?;
    let primary = keys
        .get(&oid)
        .map(|k| k.primary.clone())
        .unwrap_or_default();
    let idx: Option<Vec<usize>> = primary
        .iter()
        .map(|n| columns.iter().position(|c| &c.name == n))
        .collect();
    let unknown: Vec<u32> = columns
        .iter()
        .filter(|c| pgtypes::type_from_oid(c.type_oid).is_none())
        .map(|c| c.type_oid)
        .collect();
    let mut names = HashMap::new();
    if !unknown.is_empty() {
        let rows = client
            .query(
                "SELECT t.oid, pg_catalog.format_type(t.oid, NULL) FROM pg_catalog.pg_type t \
                 WHERE t.oid = ANY($1)",
                &[&unknown],
            )
            .await
            .map_err(ReplicationError::pg("reading type names"))?;
        for r in rows {
            names.insert(r.get(0), r.get(1));
        }
    }
    Ok((idx.unwrap_or_default(), names))
}
