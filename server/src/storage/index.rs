//! Secondary indexes on base tables, for joins that read a side from storage
//! (`larder_dataflow::StoredRows`), and the view of storage those joins read.
//!
//! Layout (column family `index`):
//! `table_id (u32 BE) ++ tag ++ encode_key(values) ++ suffix` -> `suffix`, where `tag` is the
//! index's column count (u8) and columns (u16 BE each) and `suffix` is the row's key in
//! `rows` without its table prefix. A lookup scans the prefix up to the values and keeps the
//! entries whose key is exactly prefix plus value (so a longer encoded value sharing the
//! prefix never counts).
//!
//! Which indexes exist is decided by the dataflow ([`Storage::set_indexes`], under the
//! dataflow lock); from then on every [`Txn`](super::Txn) keeps them in the same batch as the
//! rows. An index is filled from a snapshot taken after it was registered (the fill of the
//! cache whose join reads it), with plain writes racing the transactions: an entry may then
//! be stale (its row deleted or changed since the snapshot), never missing. Lookups
//! therefore check each row they find against the values and drop stale entries' rows.
//! Nothing is trusted across a restart: the family is emptied at open and indexes are built
//! again with the caches that read them.

use std::collections::{BTreeSet, HashMap};

use larder_dataflow::{Lookup, StoredError, StoredRows, TableId as DfTableId};
use larder_sql::rowcodec::encode_key;
use larder_sql::value::sql_eq;
use larder_sql::{Row, Value};
use rocksdb::{IteratorMode, WriteBatch};

use super::{decode_stored_row, Snapshot, Storage, StorageError, StoredTable, TableId, CF_ROWS};

pub(super) const CF_INDEX: &str = "index";

/// The indexes kept for each table: their columns.
pub(super) type Registry = HashMap<TableId, Vec<Vec<usize>>>;

/// `table ++ tag`: where the entries of one index start.
fn index_prefix(table: TableId, columns: &[usize]) -> Vec<u8> {
    let mut key = table.to_be_bytes().to_vec();
    key.push(u8::try_from(columns.len()).unwrap_or(u8::MAX));
    for &c in columns {
        key.extend_from_slice(&u16::try_from(c).unwrap_or(u16::MAX).to_be_bytes());
    }
    key
}

/// The index values of `row`, or `None` when one is NULL (a join never matches NULL, so such
/// rows are not indexed).
fn index_values(row: &[Value], columns: &[usize]) -> Option<Vec<Value>> {
    columns
        .iter()
        .map(|&c| row.get(c).filter(|v| !v.is_null()).cloned())
        .collect()
}

/// An index entry of the row whose `rows` key is `row_key`: its key and value.
fn entry(table: TableId, columns: &[usize], row: &[Value], row_key: &[u8]) -> Option<Vec<u8>> {
    let values = index_values(row, columns)?;
    let mut key = index_prefix(table, columns);
    encode_key(&values, &mut key);
    key.extend_from_slice(&row_key[4..]);
    Some(key)
}

/// Adds (or with `put == false`, removes) the entries of `row` in every index of `table`.
pub(super) fn write_entries(
    storage: &Storage,
    batch: &mut WriteBatch,
    table: TableId,
    row: &[Value],
    row_key: &[u8],
    put: bool,
) {
    let registry = storage.indexes.read().expect("index registry poisoned");
    let Some(indexes) = registry.get(&table) else {
        return;
    };
    let cf = storage.cf(CF_INDEX);
    for columns in indexes {
        if let Some(key) = entry(table, columns, row, row_key) {
            if put {
                batch.put_cf(cf, &key, &row_key[4..]);
            } else {
                batch.delete_cf(cf, &key);
            }
        }
    }
}

impl Storage {
    /// Registers `indexes` (a cache about to be added reads them) and keeps them until
    /// [`unpin_indexes`](Self::unpin_indexes), whatever [`set_indexes`](Self::set_indexes)
    /// is given meanwhile; returns those that are new and must be filled
    /// ([`Storage::fill_index`]). Call it under the dataflow lock.
    pub fn pin_indexes(
        &self,
        indexes: &[larder_dataflow::StoredIndex],
    ) -> Result<Vec<(TableId, Vec<usize>)>, StorageError> {
        self.index_pins
            .lock()
            .expect("index pins poisoned")
            .extend(indexes.iter().cloned());
        // Everything kept now stays; `set_indexes` adds the pinned ones.
        let kept: BTreeSet<larder_dataflow::StoredIndex> = self
            .indexes()
            .into_iter()
            .map(|(table, columns)| larder_dataflow::StoredIndex {
                table: DfTableId(u64::from(table)),
                columns,
            })
            .collect();
        self.set_indexes(&kept)
    }

    /// Ends one [`pin_indexes`](Self::pin_indexes) of `indexes`.
    pub fn unpin_indexes(&self, indexes: &[larder_dataflow::StoredIndex]) {
        let mut pins = self.index_pins.lock().expect("index pins poisoned");
        for index in indexes {
            if let Some(i) = pins.iter().position(|p| p == index) {
                pins.swap_remove(i);
            }
        }
    }

    /// Makes the kept indexes exactly `wanted` (the dataflow's
    /// [`stored_indexes`](larder_dataflow::Graph::stored_indexes)) and the pinned ones;
    /// returns those that are new and must be filled ([`Storage::fill_index`]). Indexes no longer wanted are
    /// deleted. Call it under the dataflow lock (no transaction is being written), before
    /// taking the snapshot the new indexes are filled from.
    pub fn set_indexes(
        &self,
        wanted: &BTreeSet<larder_dataflow::StoredIndex>,
    ) -> Result<Vec<(TableId, Vec<usize>)>, StorageError> {
        let pinned: Vec<larder_dataflow::StoredIndex> =
            self.index_pins.lock().expect("index pins poisoned").clone();
        let mut registry = self.indexes.write().expect("index registry poisoned");
        let mut next: Registry = HashMap::new();
        let mut added = Vec::new();
        let mut all: BTreeSet<&larder_dataflow::StoredIndex> = wanted.iter().collect();
        all.extend(pinned.iter());
        for index in all {
            let Ok(table) = TableId::try_from(index.table.0) else {
                continue;
            };
            let known = registry
                .get(&table)
                .is_some_and(|v| v.contains(&index.columns));
            if !known {
                added.push((table, index.columns.clone()));
            }
            let columns = next.entry(table).or_default();
            if !columns.contains(&index.columns) {
                columns.push(index.columns.clone());
            }
        }
        let mut batch = WriteBatch::default();
        for (table, indexes) in registry.iter() {
            for columns in indexes {
                if !next.get(table).is_some_and(|v| v.contains(columns)) {
                    let start = index_prefix(*table, columns);
                    let end = prefix_end(&start);
                    batch.delete_range_cf(self.cf(CF_INDEX), start, end);
                    tracing::debug!(table, ?columns, "secondary index dropped");
                }
            }
        }
        *registry = next;
        drop(registry);
        if !batch.is_empty() {
            self.db.write(batch)?;
        }
        Ok(added)
    }

    /// The indexes kept now: table and columns.
    pub fn indexes(&self) -> Vec<(TableId, Vec<usize>)> {
        let registry = self.indexes.read().expect("index registry poisoned");
        registry
            .iter()
            .flat_map(|(t, v)| v.iter().map(move |c| (*t, c.clone())))
            .collect()
    }

    /// Writes the index entries of `rows` (stored rows of `table`, as a snapshot scan gives
    /// them) for the index on `columns`.
    pub fn fill_index(
        &self,
        table: &StoredTable,
        columns: &[usize],
        rows: &[Row],
    ) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        let cf = self.cf(CF_INDEX);
        for row in rows {
            let row_key = super::txn::row_key(table, row);
            if let Some(key) = entry(table.id, columns, row, &row_key) {
                batch.put_cf(cf, &key, &row_key[4..]);
            }
        }
        let mut opts = rocksdb::WriteOptions::default();
        // Rebuilt at every start (the family is emptied at open), so never replayed.
        opts.disable_wal(true);
        self.db.write_opt(batch, &opts)?;
        Ok(())
    }

    /// Keeps no index any more, and empties the family.
    pub(super) fn forget_indexes(&self) -> Result<(), StorageError> {
        self.indexes
            .write()
            .expect("index registry poisoned")
            .clear();
        self.clear_indexes()
    }

    /// Empties the `index` family (at open: indexes are built again with their caches).
    pub(super) fn clear_indexes(&self) -> Result<(), StorageError> {
        self.db
            .delete_range_cf(self.cf(CF_INDEX), vec![0u8; 4], vec![0xffu8; 5])?;
        Ok(())
    }

    /// Storage as of `snapshot`, for joins reading a side from it.
    pub fn stored_view<'a>(&'a self, snapshot: &'a Snapshot<'a>) -> StoredView<'a> {
        StoredView {
            storage: self,
            snapshot,
        }
    }
}

/// The smallest key after every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

/// Storage as of a snapshot (taken before a transaction was committed: see
/// `larder_dataflow::stored`).
pub struct StoredView<'a> {
    storage: &'a Storage,
    snapshot: &'a Snapshot<'a>,
}

impl StoredView<'_> {
    fn read_opts(&self) -> rocksdb::ReadOptions {
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_snapshot(&self.snapshot.0);
        opts
    }

    fn row(&self, key: &[u8]) -> Result<Option<(u32, Row)>, StorageError> {
        match self
            .storage
            .db
            .get_cf_opt(self.storage.cf(CF_ROWS), key, &self.read_opts())?
        {
            None => Ok(None),
            Some(bytes) => Ok(Some(decode_stored_row(&bytes)?)),
        }
    }

    /// At most `limit` distinct rows (see [`StoredRows::rows`]).
    fn lookup(
        &self,
        table: TableId,
        lookup: Lookup<'_>,
        limit: usize,
    ) -> Result<Vec<(Row, i64)>, StorageError> {
        let (columns, values) = match lookup {
            Lookup::PrimaryKey(parts) => {
                let mut key = table.to_be_bytes().to_vec();
                encode_key(parts, &mut key);
                return Ok(self
                    .row(&key)?
                    .map(|(count, row)| (row, i64::from(count)))
                    .into_iter()
                    .collect());
            }
            Lookup::Index { columns, values } => (columns, values),
        };
        let mut prefix = index_prefix(table, columns);
        encode_key(values, &mut prefix);
        let iter = self.storage.db.iterator_cf_opt(
            self.storage.cf(CF_INDEX),
            self.read_opts(),
            IteratorMode::From(&prefix, rocksdb::Direction::Forward),
        );
        let mut row_keys: Vec<Vec<u8>> = Vec::new();
        for item in iter {
            let (k, suffix) = item?;
            if !k.starts_with(&prefix) || row_keys.len() >= limit {
                break;
            }
            if k.len() != prefix.len() + suffix.len() || !k.ends_with(&suffix) {
                continue; // a longer value that shares the prefix
            }
            let mut row_key = table.to_be_bytes().to_vec();
            row_key.extend_from_slice(&suffix);
            row_keys.push(row_key);
        }
        // In index order the row keys are sorted (one prefix, then the suffixes).
        let rows = self.storage.db.batched_multi_get_cf_opt(
            self.storage.cf(CF_ROWS),
            &row_keys,
            true,
            &self.read_opts(),
        );
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let Some(bytes) = row? else {
                continue; // stale: the row is gone
            };
            let (count, row) = decode_stored_row(&bytes)?;
            let current = columns
                .iter()
                .zip(values)
                .all(|(&c, v)| row.get(c).is_some_and(|r| sql_eq(r, v) == Some(true)));
            if current {
                out.push((row, i64::from(count)));
            }
        }
        Ok(out)
    }
}

impl StoredRows for StoredView<'_> {
    fn rows(
        &self,
        table: DfTableId,
        lookup: Lookup<'_>,
        limit: usize,
    ) -> Result<Vec<(Row, i64)>, StoredError> {
        let id = TableId::try_from(table.0).map_err(|_| StoredError {
            table: table.0,
            detail: "table id out of range".into(),
        })?;
        self.lookup(id, lookup, limit).map_err(|e| StoredError {
            table: table.0,
            detail: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use larder_dataflow::StoredIndex;
    use larder_sql::{Column, SqlType, TableSchema};

    fn table(storage: &Storage, key: Vec<usize>) -> StoredTable {
        let column = |name: &str, ty: SqlType| Column {
            name: name.into(),
            ty,
            type_oid: 0,
            typmod: -1,
        };
        StoredTable {
            id: storage.allocate_table_id().unwrap(),
            upstream_oid: 16384,
            schema: TableSchema {
                schema: "public".into(),
                name: "t".into(),
                columns: vec![column("id", SqlType::Int8), column("tag", SqlType::Text)],
                key,
            },
        }
    }

    fn row(id: i64, tag: &str) -> Row {
        vec![Value::Int(id), Value::Text(tag.into())]
    }

    fn open(name: &str) -> Storage {
        let dir = std::env::temp_dir().join(format!(
            "larder-storage-index-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        Storage::open(&dir).unwrap()
    }

    fn by_tag(storage: &Storage, table: TableId, tag: &str) -> Vec<(Row, i64)> {
        let snapshot = storage.snapshot();
        let view = storage.stored_view(&snapshot);
        let mut rows = view
            .lookup(
                table,
                Lookup::Index {
                    columns: &[1],
                    values: &[Value::Text(tag.into())],
                },
                usize::MAX,
            )
            .unwrap();
        rows.sort_by_key(|(r, _)| format!("{r:?}"));
        rows
    }

    fn wanted(table: TableId) -> BTreeSet<StoredIndex> {
        BTreeSet::from([StoredIndex {
            table: DfTableId(u64::from(table)),
            columns: vec![1],
        }])
    }

    #[test]
    fn transactions_keep_an_index_and_a_fill_never_leaves_a_wrong_row() {
        let storage = open("keyed");
        let t = table(&storage, vec![0]);
        let mut txn = storage.begin();
        txn.insert(&t, row(1, "ab")).unwrap();
        txn.insert(&t, row(2, "abc")).unwrap();
        txn.commit().unwrap();
        // Registered, then filled from a snapshot while a transaction moves row 1 away
        // from "ab" and deletes row 2: the fill's entries for them are stale.
        assert_eq!(
            storage.set_indexes(&wanted(t.id)).unwrap(),
            vec![(t.id, vec![1])]
        );
        let snapshot = storage.snapshot();
        let mut txn = storage.begin();
        txn.insert(&t, row(1, "x")).unwrap();
        txn.delete(&t, &row(2, "")).unwrap();
        txn.insert(&t, row(3, "ab")).unwrap();
        txn.commit().unwrap();
        storage
            .scan_table_chunks(&snapshot, t.id, 10, |rows| {
                storage.fill_index(&t, &[1], &rows)
            })
            .unwrap();
        drop(snapshot);
        assert_eq!(by_tag(&storage, t.id, "ab"), vec![(row(3, "ab"), 1)]);
        assert_eq!(by_tag(&storage, t.id, "abc"), vec![]);
        assert_eq!(by_tag(&storage, t.id, "x"), vec![(row(1, "x"), 1)]);
        let snapshot = storage.snapshot();
        let by_key = storage
            .stored_view(&snapshot)
            .lookup(t.id, Lookup::PrimaryKey(&[Value::Int(3)]), usize::MAX)
            .unwrap();
        assert_eq!(by_key, vec![(row(3, "ab"), 1)]);
        drop(snapshot);
        // Dropped when no join reads it any more.
        assert!(storage.set_indexes(&BTreeSet::new()).unwrap().is_empty());
        assert_eq!(by_tag(&storage, t.id, "x"), vec![]);
    }

    #[test]
    fn a_table_without_a_key_counts_duplicates_and_a_snapshot_is_a_view_before() {
        let storage = open("keyless");
        let t = table(&storage, vec![]);
        storage.set_indexes(&wanted(t.id)).unwrap();
        let mut txn = storage.begin();
        txn.insert(&t, row(1, "a")).unwrap();
        txn.insert(&t, row(1, "a")).unwrap();
        txn.insert(&t, row(2, "a")).unwrap();
        txn.commit().unwrap();
        assert_eq!(
            by_tag(&storage, t.id, "a"),
            vec![(row(1, "a"), 2), (row(2, "a"), 1)]
        );
        let before = storage.snapshot();
        let mut txn = storage.begin();
        txn.delete(&t, &row(1, "a")).unwrap();
        txn.delete(&t, &row(2, "a")).unwrap();
        txn.commit().unwrap();
        assert_eq!(by_tag(&storage, t.id, "a"), vec![(row(1, "a"), 1)]);
        let view = storage.stored_view(&before);
        let old = view
            .lookup(
                t.id,
                Lookup::Index {
                    columns: &[1],
                    values: &[Value::Text("a".into())],
                },
                usize::MAX,
            )
            .unwrap();
        assert_eq!(old.len(), 2, "the view before the transaction: {old:?}");
        let by_key = view
            .lookup(t.id, Lookup::PrimaryKey(&[Value::Int(1)]), usize::MAX)
            .unwrap();
        let first = view
            .lookup(
                t.id,
                Lookup::Index {
                    columns: &[1],
                    values: &[Value::Text("a".into())],
                },
                1,
            )
            .unwrap();
        assert_eq!(first.len(), 1, "a limit stops the scan");
        assert!(
            by_key.is_empty(),
            "no key: rows are stored under the whole row"
        );
        // TRUNCATE clears the index with the rows.
        let mut txn = storage.begin();
        txn.clear_table(t.id);
        txn.commit().unwrap();
        assert_eq!(by_tag(&storage, t.id, "a"), vec![]);
    }
}
