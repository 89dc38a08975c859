//! RocksDB storage: base-table rows, table and cache metadata, and the replication position.
//!
//! Invariant: the position and the rows it covers are written in one `WriteBatch`, so after a
//! crash (even `kill -9`) the stored rows are exactly those of every transaction up to the
//! stored position: resuming from it neither loses nor repeats a change.
//!
//! Layout (column families):
//! - `rows`: `table_id (u32 BE) ++ encode_key(key columns)` -> `count (u32 LE) ++ encode_row(row)`.
//!   Keyless tables (REPLICA IDENTITY FULL) use the whole row as key; `count` holds duplicates.
//! - `meta`: `pos` -> position (u64 BE); `table/<id>` -> table record; `cache/<name>` -> cache record;
//!   `next_table_id` -> u32; `upstream` -> the upstream's identity (system identifier and
//!   database name) the stored data was copied from.
//! - `index`: secondary indexes for joins that read a side from storage (see `index.rs`).

use std::collections::HashMap;
use std::path::Path;

use larder_sql::rowcodec::{decode_row, encode_key, encode_row};
use larder_sql::{Row, TableSchema, Value};
use rocksdb::{ColumnFamilyDescriptor, IteratorMode, Options, WriteBatch, DB};
use thiserror::Error;

mod bulk;
mod index;
mod txn;

pub use bulk::BulkBuffer;
pub use index::StoredView;
use index::CF_INDEX;
pub use txn::Txn;

const CF_ROWS: &str = "rows";
const CF_META: &str = "meta";
const KEY_POSITION: &[u8] = b"pos";
/// What the source needs besides the position to resume (opaque; MySQL's binlog position).
const KEY_RESUME: &[u8] = b"resume";
const KEY_NEXT_TABLE_ID: &[u8] = b"next_table_id";
const KEY_UPSTREAM: &[u8] = b"upstream";
/// Progress of an upstream transaction applied in parts (opaque to storage; see
/// `replicator::PartialTxn`).
const KEY_PARTIAL_TXN: &[u8] = b"partial_txn";

#[derive(Debug, Error)]
pub enum StorageError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("corrupt stored record {what}: {detail}")]
    Corrupt { what: String, detail: String },
    #[error("replication position would move backwards: stored {stored}, new {new}")]
    PositionBackwards { stored: u64, new: u64 },
    #[error("bulk load buffer above {limit_bytes} bytes: flush it earlier")]
    BulkBufferFull { limit_bytes: usize },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

pub type TableId = u32;

/// Everything Larder must know about a table to resume without a resnapshot.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredTable {
    pub id: TableId,
    /// Upstream relation id (Postgres OID).
    pub upstream_oid: u32,
    pub schema: TableSchema,
}

/// A cache definition, persisted so caches survive restarts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredCache {
    pub name: String,
    pub query_id: String,
    /// The SELECT as the user wrote it (re-lowered at start).
    pub query: String,
    pub always: bool,
    /// For a shallow cache: its TTL and refresh age, in milliseconds.
    pub shallow: Option<(u64, u64)>,
}

/// Which upstream the stored data belongs to: a Postgres cluster (`system_identifier`, fixed
/// at initdb) and one database in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamIdentity {
    pub system_identifier: String,
    pub database: String,
}

impl std::fmt::Display for UpstreamIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "system identifier {}, database {:?}",
            self.system_identifier, self.database
        )
    }
}

/// What to do with the stored data given the identity of the upstream Larder connects to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentityDecision {
    /// Same upstream: use the stored data.
    Same,
    /// Nothing recorded (new storage, or storage written before identities were recorded):
    /// record the current upstream and use the stored data.
    Adopt,
    /// Another upstream, and the operator allowed a reset: discard everything stored.
    Reset { stored: UpstreamIdentity },
    /// Another upstream: refuse to start.
    Refuse { stored: UpstreamIdentity },
}

impl IdentityDecision {
    pub fn decide(
        stored: Option<&UpstreamIdentity>,
        current: &UpstreamIdentity,
        reset_allowed: bool,
    ) -> IdentityDecision {
        match stored {
            None => IdentityDecision::Adopt,
            Some(s) if s == current => IdentityDecision::Same,
            Some(s) if reset_allowed => IdentityDecision::Reset { stored: s.clone() },
            Some(s) => IdentityDecision::Refuse { stored: s.clone() },
        }
    }
}

/// A point-in-time view of [`Storage`] (see [`Storage::snapshot`]).
pub struct Snapshot<'a>(rocksdb::SnapshotWithThreadMode<'a, DB>);

pub struct Storage {
    db: DB,
    dir: std::path::PathBuf,
    /// Names of bulk-load SST files (see [`Storage::bulk_load_begin`]).
    bulk_files: std::sync::atomic::AtomicU64,
    /// The secondary indexes every transaction keeps (see `index.rs`).
    indexes: std::sync::RwLock<index::Registry>,
    /// Indexes kept for caches being created, whatever the graph asks for (see
    /// [`Storage::pin_indexes`]).
    index_pins: std::sync::Mutex<Vec<larder_dataflow::StoredIndex>>,
    /// Held while new indexes are filled, so that no cache reads one before it is complete.
    pub index_builds: std::sync::Mutex<()>,
}

/// What RocksDB may hold in memory: one block cache shared by every column family (data,
/// index and filter blocks all in it, so open tables add no memory of their own beyond it),
/// and the write buffers of all column families together. With `--memory-limit` bounding the
/// caches, these bound the rest of what Larder's resident size grows with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StorageMemory {
    pub block_cache_bytes: usize,
    pub write_buffer_bytes: usize,
}

impl Default for StorageMemory {
    fn default() -> Self {
        StorageMemory {
            block_cache_bytes: 32 << 20,
            write_buffer_bytes: 32 << 20,
        }
    }
}

/// Smallest memtable RocksDB is given (smaller ones flush too often to be useful).
const MEMTABLE_MIN_BYTES: usize = 1 << 20;

impl Storage {
    pub fn open(dir: &Path) -> Result<Storage, StorageError> {
        Storage::open_with(dir, StorageMemory::default())
    }

    /// [`Storage::open`] with RocksDB's memory bounded by `memory`.
    pub fn open_with(dir: &Path, memory: StorageMemory) -> Result<Storage, StorageError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_open_files(256);
        // Every column family's memtables together; a flush starts past it.
        opts.set_db_write_buffer_size(memory.write_buffer_bytes);
        let cache = rocksdb::Cache::new_lru_cache(memory.block_cache_bytes)?;
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_cache_index_and_filter_blocks(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        let families = [CF_ROWS, CF_META, CF_INDEX];
        // Two memtables per family, within the total.
        let memtable = (memory.write_buffer_bytes / (2 * families.len())).max(MEMTABLE_MIN_BYTES);
        let cfs = families.into_iter().map(|name| {
            let mut cf = Options::default();
            cf.set_block_based_table_factory(&table);
            cf.set_write_buffer_size(memtable);
            cf.set_max_write_buffer_number(2);
            ColumnFamilyDescriptor::new(name, cf)
        });
        let db = DB::open_cf_descriptors(&opts, dir, cfs)?;
        let storage = Storage {
            db,
            dir: dir.to_path_buf(),
            bulk_files: Default::default(),
            indexes: Default::default(),
            index_pins: Default::default(),
            index_builds: Default::default(),
        };
        storage.clear_indexes()?;
        Ok(storage)
    }

    pub(super) fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        // Every family is created at open; their absence is a programming error.
        self.db
            .cf_handle(name)
            .expect("column family created at open")
    }

    pub fn position(&self) -> Result<Option<u64>, StorageError> {
        match self.db.get_cf(self.cf(CF_META), KEY_POSITION)? {
            None => Ok(None),
            Some(bytes) => Ok(Some(u64::from_be_bytes(
                bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| StorageError::Corrupt {
                        what: "position".into(),
                        detail: format!("{} bytes", bytes.len()),
                    })?,
            ))),
        }
    }

    /// The record of a transaction whose parts are partly applied, if any.
    /// What the source stored with the position to resume from it (see [`Txn::set_resume`]).
    pub fn resume(&self) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.db.get_cf(self.cf(CF_META), KEY_RESUME)?)
    }

    pub fn partial_txn(&self) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.db.get_cf(self.cf(CF_META), KEY_PARTIAL_TXN)?)
    }

    pub fn tables(&self) -> Result<Vec<StoredTable>, StorageError> {
        let mut out = Vec::new();
        for item in self.db.prefix_iterator_cf(self.cf(CF_META), b"table/") {
            let (k, v) = item?;
            if !k.starts_with(b"table/") {
                break;
            }
            out.push(decode_table(&v)?);
        }
        Ok(out)
    }

    pub fn caches(&self) -> Result<Vec<StoredCache>, StorageError> {
        let mut out = Vec::new();
        for item in self.db.prefix_iterator_cf(self.cf(CF_META), b"cache/") {
            let (k, v) = item?;
            if !k.starts_with(b"cache/") {
                break;
            }
            out.push(decode_cache(&v)?);
        }
        Ok(out)
    }

    /// Tables known upstream but not replicated: `(oid, schema, name, reason)`.
    pub fn skipped_tables(&self) -> Result<Vec<(u32, String, String, String)>, StorageError> {
        let mut out = Vec::new();
        for item in self.db.prefix_iterator_cf(self.cf(CF_META), b"skip/") {
            let (k, v) = item?;
            if !k.starts_with(b"skip/") {
                break;
            }
            let corrupt = |d: &str| StorageError::Corrupt {
                what: "skipped table".into(),
                detail: d.into(),
            };
            let r = decode_row(&v).map_err(|e| corrupt(&e.to_string()))?;
            let [oid, schema, name, reason] = r.as_slice() else {
                return Err(corrupt("shape"));
            };
            out.push((
                int(oid).ok_or_else(|| corrupt("oid"))? as u32,
                text(schema).ok_or_else(|| corrupt("schema"))?,
                text(name).ok_or_else(|| corrupt("name"))?,
                text(reason).ok_or_else(|| corrupt("reason"))?,
            ));
        }
        Ok(out)
    }

    pub fn put_cache(&self, cache: &StoredCache) -> Result<(), StorageError> {
        let key = format!("cache/{}", cache.name);
        self.db
            .put_cf(self.cf(CF_META), key.as_bytes(), encode_cache(cache))?;
        Ok(())
    }

    pub fn delete_cache(&self, name: &str) -> Result<(), StorageError> {
        self.db
            .delete_cf(self.cf(CF_META), format!("cache/{name}").as_bytes())?;
        Ok(())
    }

    pub fn allocate_table_id(&self) -> Result<TableId, StorageError> {
        let cf = self.cf(CF_META);
        let next = match self.db.get_cf(cf, KEY_NEXT_TABLE_ID)? {
            Some(b) if b.len() == 4 => u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            Some(b) => {
                return Err(StorageError::Corrupt {
                    what: "next_table_id".into(),
                    detail: format!("{} bytes", b.len()),
                })
            }
            None => 1,
        };
        self.db
            .put_cf(cf, KEY_NEXT_TABLE_ID, (next + 1).to_be_bytes())?;
        Ok(next)
    }

    /// Every row of a table, each repeated by its multiplicity.
    /// The stored row with the same identity as `probe` (its key columns).
    pub fn get(&self, table: &StoredTable, probe: &[Value]) -> Result<Option<Row>, StorageError> {
        self.begin().get(table, probe)
    }

    pub fn scan_table(&self, id: TableId) -> Result<Vec<Row>, StorageError> {
        let prefix = id.to_be_bytes();
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(
            self.cf(CF_ROWS),
            IteratorMode::From(&prefix, rocksdb::Direction::Forward),
        );
        for item in iter {
            let (k, v) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            let (count, row) = decode_stored_row(&v)?;
            for _ in 0..count {
                out.push(row.clone());
            }
        }
        Ok(out)
    }

    /// A consistent view of storage as of now; later writes are not seen through it.
    pub fn snapshot(&self) -> Snapshot<'_> {
        Snapshot(self.db.snapshot())
    }

    /// Rows of table `id` as of `snapshot`, handed to `f` in chunks of at most `chunk_rows`
    /// rows, so that no more than one chunk is in memory at a time.
    pub fn scan_table_chunks<E: From<StorageError>>(
        &self,
        snapshot: &Snapshot<'_>,
        id: TableId,
        chunk_rows: usize,
        mut f: impl FnMut(Vec<Row>) -> Result<(), E>,
    ) -> Result<(), E> {
        assert!(chunk_rows > 0, "a chunk holds at least one row");
        let prefix = id.to_be_bytes();
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_snapshot(&snapshot.0);
        let iter = self.db.iterator_cf_opt(
            self.cf(CF_ROWS),
            opts,
            IteratorMode::From(&prefix, rocksdb::Direction::Forward),
        );
        let mut chunk = Vec::with_capacity(chunk_rows.min(4096));
        for item in iter {
            let (k, v) = item.map_err(StorageError::from)?;
            if !k.starts_with(&prefix) {
                break;
            }
            let (count, row) = decode_stored_row(&v)?;
            for _ in 0..count {
                chunk.push(row.clone());
                if chunk.len() == chunk_rows {
                    f(std::mem::replace(
                        &mut chunk,
                        Vec::with_capacity(chunk_rows.min(4096)),
                    ))?;
                }
            }
        }
        if !chunk.is_empty() {
            f(chunk)?;
        }
        Ok(())
    }

    /// Up to `max_rows` stored rows of table `id` as they are now, in key order, after the
    /// storage key `after` (from the start when `None`); and the key of the last one, when
    /// more may follow.
    pub fn scan_after(
        &self,
        id: TableId,
        after: Option<&[u8]>,
        max_rows: usize,
    ) -> Result<(Vec<Row>, Option<Vec<u8>>), StorageError> {
        let prefix = id.to_be_bytes();
        let from: &[u8] = after.unwrap_or(&prefix);
        let iter = self.db.iterator_cf(
            self.cf(CF_ROWS),
            IteratorMode::From(from, rocksdb::Direction::Forward),
        );
        let mut rows = Vec::new();
        for item in iter {
            let (k, v) = item?;
            if !k.starts_with(&prefix) {
                return Ok((rows, None));
            }
            if after.is_some_and(|a| *k == *a) {
                continue;
            }
            let (count, row) = decode_stored_row(&v)?;
            for _ in 0..count {
                rows.push(row.clone());
            }
            if rows.len() >= max_rows {
                return Ok((rows, Some(k.to_vec())));
            }
        }
        Ok((rows, None))
    }

    pub fn count_rows(&self, id: TableId) -> Result<u64, StorageError> {
        let prefix = id.to_be_bytes();
        let mut n = 0u64;
        let iter = self.db.iterator_cf(
            self.cf(CF_ROWS),
            IteratorMode::From(&prefix, rocksdb::Direction::Forward),
        );
        for item in iter {
            let (k, _) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            n += 1;
        }
        Ok(n)
    }

    pub fn begin(&self) -> Txn<'_> {
        Txn::new(self)
    }

    /// Remove every row, table record and the position (before a fresh snapshot). Cache
    /// definitions stay: they are rebuilt on the new data.
    pub fn wipe(&self) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        self.wipe_into(&mut batch, &[&b"table/"[..], &b"skip/"[..]])?;
        self.db.write(batch)?;
        Ok(())
    }

    /// The identity of the upstream the stored data was copied from, if recorded.
    pub fn upstream_identity(&self) -> Result<Option<UpstreamIdentity>, StorageError> {
        let Some(bytes) = self.db.get_cf(self.cf(CF_META), KEY_UPSTREAM)? else {
            return Ok(None);
        };
        let corrupt = |d: &str| StorageError::Corrupt {
            what: "upstream identity".into(),
            detail: d.into(),
        };
        let r = decode_row(&bytes).map_err(|e| corrupt(&e.to_string()))?;
        let [sysid, database] = r.as_slice() else {
            return Err(corrupt("shape"));
        };
        Ok(Some(UpstreamIdentity {
            system_identifier: text(sysid).ok_or_else(|| corrupt("system identifier"))?,
            database: text(database).ok_or_else(|| corrupt("database"))?,
        }))
    }

    /// Record the upstream identity (durably: it guards everything else stored).
    pub fn put_upstream_identity(&self, identity: &UpstreamIdentity) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        self.identity_into(&mut batch, identity);
        self.write_synced(batch)
    }

    /// Discard everything stored (rows, tables, position and cache definitions, which name
    /// another server's tables) and record `identity`, in one synced batch.
    pub fn reset_for_upstream(&self, identity: &UpstreamIdentity) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        self.wipe_into(&mut batch, &[&b"table/"[..], &b"skip/"[..], &b"cache/"[..]])?;
        batch.delete_cf(self.cf(CF_META), KEY_NEXT_TABLE_ID);
        self.identity_into(&mut batch, identity);
        self.write_synced(batch)
    }

    fn identity_into(&self, batch: &mut WriteBatch, identity: &UpstreamIdentity) {
        let record = vec![
            Value::Text(identity.system_identifier.clone()),
            Value::Text(identity.database.clone()),
        ];
        let mut bytes = Vec::new();
        encode_row(&record, &mut bytes);
        batch.put_cf(self.cf(CF_META), KEY_UPSTREAM, bytes);
    }

    fn write_synced(&self, batch: WriteBatch) -> Result<(), StorageError> {
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(batch, &opts)?;
        Ok(())
    }

    fn wipe_into(&self, batch: &mut WriteBatch, prefixes: &[&[u8]]) -> Result<(), StorageError> {
        batch.delete_range_cf(self.cf(CF_ROWS), vec![0u8; 4], vec![0xffu8; 5]);
        batch.delete_range_cf(self.cf(CF_INDEX), vec![0u8; 4], vec![0xffu8; 5]);
        batch.delete_cf(self.cf(CF_META), KEY_POSITION);
        batch.delete_cf(self.cf(CF_META), KEY_RESUME);
        batch.delete_cf(self.cf(CF_META), KEY_PARTIAL_TXN);
        for &prefix in prefixes {
            for item in self.db.prefix_iterator_cf(self.cf(CF_META), prefix) {
                let (k, _) = item?;
                if !k.starts_with(prefix) {
                    break;
                }
                batch.delete_cf(self.cf(CF_META), k);
            }
        }
        Ok(())
    }

    /// Make everything written so far durable (before acknowledging a position upstream).
    pub fn flush_wal(&self) -> Result<(), StorageError> {
        self.db.flush_wal(true)?;
        Ok(())
    }
}

pub(super) fn decode_stored_row(bytes: &[u8]) -> Result<(u32, Row), StorageError> {
    let corrupt = |detail: String| StorageError::Corrupt {
        what: "row".into(),
        detail,
    };
    if bytes.len() < 4 {
        return Err(corrupt(format!("{} bytes", bytes.len())));
    }
    let count = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let row = decode_row(&bytes[4..]).map_err(|e| corrupt(e.to_string()))?;
    if count == 0 {
        return Err(corrupt("zero multiplicity".into()));
    }
    Ok((count, row))
}

// Metadata records are encoded as rows of values with the same codec as table rows.

fn text(v: &Value) -> Option<String> {
    match v {
        Value::Text(s) => Some(s.clone()),
        _ => None,
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        _ => None,
    }
}

fn encode_table(t: &StoredTable) -> Vec<u8> {
    let columns = t
        .schema
        .columns
        .iter()
        .map(|c| {
            Value::Array(vec![
                Value::Text(c.name.clone()),
                Value::Int(c.type_oid as i64),
                Value::Int(c.typmod as i64),
                // Larder's own type, named by its Postgres OID whatever the upstream: a
                // MySQL column's `type_oid` is MySQL's type code, which does not say it.
                Value::Int(larder_sql::pgtypes::oid_of(&c.ty) as i64),
            ])
        })
        .collect();
    let key = t.schema.key.iter().map(|&k| Value::Int(k as i64)).collect();
    let record = vec![
        Value::Int(t.id as i64),
        Value::Int(t.upstream_oid as i64),
        Value::Text(t.schema.schema.clone()),
        Value::Text(t.schema.name.clone()),
        Value::Array(columns),
        Value::Array(key),
    ];
    let mut out = Vec::new();
    encode_row(&record, &mut out);
    out
}

fn decode_table(bytes: &[u8]) -> Result<StoredTable, StorageError> {
    let corrupt = |detail: &str| StorageError::Corrupt {
        what: "table record".into(),
        detail: detail.into(),
    };
    let r = decode_row(bytes).map_err(|e| corrupt(&e.to_string()))?;
    let [id, oid, schema, name, Value::Array(cols), Value::Array(key)] = r.as_slice() else {
        return Err(corrupt("shape"));
    };
    let mut columns = Vec::with_capacity(cols.len());
    for c in cols {
        let Value::Array(parts) = c else {
            return Err(corrupt("column"));
        };
        // Records written before the type was stored have three parts (Postgres only).
        let (n, o, m, t) = match parts.as_slice() {
            [n, o, m] => (n, o, m, o),
            [n, o, m, t] => (n, o, m, t),
            _ => return Err(corrupt("column shape")),
        };
        let type_oid = int(o).ok_or_else(|| corrupt("type oid"))? as u32;
        let ty = int(t)
            .and_then(|t| larder_sql::pgtypes::type_from_oid(t as u32))
            .ok_or_else(|| corrupt("unknown type"))?;
        columns.push(larder_sql::Column {
            name: text(n).ok_or_else(|| corrupt("column name"))?,
            ty,
            type_oid,
            typmod: int(m).ok_or_else(|| corrupt("typmod"))? as i32,
        });
    }
    let key = key
        .iter()
        .map(|k| int(k).map(|i| i as usize))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| corrupt("key"))?;
    Ok(StoredTable {
        id: int(id).ok_or_else(|| corrupt("id"))? as TableId,
        upstream_oid: int(oid).ok_or_else(|| corrupt("oid"))? as u32,
        schema: TableSchema {
            schema: text(schema).ok_or_else(|| corrupt("schema"))?,
            name: text(name).ok_or_else(|| corrupt("name"))?,
            columns,
            key,
        },
    })
}

fn encode_cache(c: &StoredCache) -> Vec<u8> {
    let record = vec![
        Value::Text(c.name.clone()),
        Value::Text(c.query_id.clone()),
        Value::Text(c.query.clone()),
        Value::Bool(c.always),
    ];
    let mut record = record;
    if let Some((ttl_ms, refresh_ms)) = c.shallow {
        record.push(Value::Int(ttl_ms as i64));
        record.push(Value::Int(refresh_ms as i64));
    }
    let mut out = Vec::new();
    encode_row(&record, &mut out);
    out
}

fn decode_cache(bytes: &[u8]) -> Result<StoredCache, StorageError> {
    let corrupt = |detail: &str| StorageError::Corrupt {
        what: "cache record".into(),
        detail: detail.into(),
    };
    let r = decode_row(bytes).map_err(|e| corrupt(&e.to_string()))?;
    let (name, id, query, always, shallow) = match r.as_slice() {
        [name, id, query, Value::Bool(always)] => (name, id, query, *always, None),
        [name, id, query, Value::Bool(always), Value::Int(ttl), Value::Int(refresh)]
            if *ttl > 0 && *refresh > 0 =>
        {
            (
                name,
                id,
                query,
                *always,
                Some((*ttl as u64, *refresh as u64)),
            )
        }
        _ => return Err(corrupt("shape")),
    };
    Ok(StoredCache {
        name: text(name).ok_or_else(|| corrupt("name"))?,
        query_id: text(id).ok_or_else(|| corrupt("query id"))?,
        query: text(query).ok_or_else(|| corrupt("query"))?,
        always,
        shallow,
    })
}

#[cfg(test)]
mod identity_tests {
    use super::*;

    fn id(sysid: &str, db: &str) -> UpstreamIdentity {
        UpstreamIdentity {
            system_identifier: sysid.into(),
            database: db.into(),
        }
    }

    #[test]
    fn decisions() {
        let a = id("7301", "app");
        assert_eq!(
            IdentityDecision::decide(None, &a, false),
            IdentityDecision::Adopt
        );
        assert_eq!(
            IdentityDecision::decide(Some(&a), &a, false),
            IdentityDecision::Same
        );
        let other_cluster = id("7302", "app");
        let other_db = id("7301", "shop");
        for other in [&other_cluster, &other_db] {
            assert_eq!(
                IdentityDecision::decide(Some(&a), other, false),
                IdentityDecision::Refuse { stored: a.clone() }
            );
            assert_eq!(
                IdentityDecision::decide(Some(&a), other, true),
                IdentityDecision::Reset { stored: a.clone() }
            );
        }
    }

    #[test]
    fn identity_is_recorded_and_reset_discards_everything() {
        let dir = std::env::temp_dir().join(format!(
            "larder-storage-identity-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let storage = Storage::open(&dir).unwrap();
        // Storage written before identities were recorded has none.
        assert_eq!(storage.upstream_identity().unwrap(), None);
        let table = StoredTable {
            id: storage.allocate_table_id().unwrap(),
            upstream_oid: 16384,
            schema: TableSchema {
                schema: "public".into(),
                name: "t".into(),
                columns: vec![larder_sql::Column {
                    name: "id".into(),
                    ty: larder_sql::SqlType::Int8,
                    type_oid: 20,
                    typmod: -1,
                }],
                key: vec![0],
            },
        };
        let mut txn = storage.begin();
        txn.put_table(&table);
        txn.insert(&table, vec![Value::Int(1)]).unwrap();
        txn.set_position(42);
        txn.commit().unwrap();
        storage
            .put_cache(&StoredCache {
                name: "c".into(),
                query_id: "q_1".into(),
                query: "SELECT * FROM t".into(),
                always: false,
                shallow: None,
            })
            .unwrap();
        let shallow = StoredCache {
            name: "s".into(),
            query_id: "q_2".into(),
            query: "SELECT now()".into(),
            always: true,
            shallow: Some((60_000, 30_000)),
        };
        storage.put_cache(&shallow).unwrap();
        let stored = storage.caches().unwrap();
        assert_eq!(stored.len(), 2);
        assert!(stored.contains(&shallow), "{stored:?}");
        let a = id("7301", "app");
        storage.put_upstream_identity(&a).unwrap();
        assert_eq!(storage.upstream_identity().unwrap(), Some(a));

        let b = id("7302", "app");
        storage.reset_for_upstream(&b).unwrap();
        assert_eq!(storage.upstream_identity().unwrap(), Some(b));
        assert!(storage.tables().unwrap().is_empty());
        assert!(storage.caches().unwrap().is_empty());
        assert_eq!(storage.position().unwrap(), None);
        assert!(storage.scan_table(table.id).unwrap().is_empty());
        drop(storage);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
