//! One upstream transaction's writes to storage: rows, tables and the replication position,
//! committed as one RocksDB batch (see the module docs of [`super`]).

use super::*;

/// The key of `row` in `rows`: the table id and its key columns (or, without a key, the
/// whole row).
pub(super) fn row_key(table: &StoredTable, row: &[Value]) -> Vec<u8> {
    let mut key = table.id.to_be_bytes().to_vec();
    if table.schema.key.is_empty() {
        encode_key(row, &mut key);
    } else {
        let parts: Vec<Value> = table
            .schema
            .key
            .iter()
            .map(|&i| row.get(i).cloned().unwrap_or(Value::Null))
            .collect();
        encode_key(&parts, &mut key);
    }
    key
}

/// One upstream transaction's writes, applied atomically together with its position.
/// Reads see the transaction's own earlier writes (the overlay) before the database.
pub struct Txn<'a> {
    storage: &'a Storage,
    batch: WriteBatch,
    overlay: HashMap<Vec<u8>, Option<(u32, Row)>>,
    /// Tables cleared earlier in this transaction: their stored rows no longer count.
    cleared: Vec<TableId>,
    position: Option<u64>,
}

impl<'a> Txn<'a> {
    pub(super) fn new(storage: &'a Storage) -> Txn<'a> {
        Txn {
            storage,
            batch: WriteBatch::default(),
            overlay: HashMap::new(),
            cleared: Vec::new(),
            position: None,
        }
    }

    fn load(&mut self, key: &[u8]) -> Result<Option<(u32, Row)>, StorageError> {
        if let Some(v) = self.overlay.get(key) {
            return Ok(v.clone());
        }
        if self
            .cleared
            .iter()
            .any(|t| key.starts_with(&t.to_be_bytes()))
        {
            return Ok(None);
        }
        match self.storage.db.get_cf(self.storage.cf(CF_ROWS), key)? {
            None => Ok(None),
            Some(bytes) => Ok(Some(decode_stored_row(&bytes)?)),
        }
    }

    fn store(&mut self, key: Vec<u8>, value: Option<(u32, Row)>) {
        let cf = self.storage.cf(CF_ROWS);
        match &value {
            Some((count, row)) => {
                debug_assert!(*count > 0);
                let mut bytes = count.to_le_bytes().to_vec();
                encode_row(row, &mut bytes);
                self.batch.put_cf(cf, &key, bytes);
            }
            None => self.batch.delete_cf(cf, &key),
        }
        self.overlay.insert(key, value);
    }

    /// Adds (`put`) or removes the secondary index entries of `row`, stored under `key`.
    fn index(&mut self, table: &StoredTable, row: &[Value], key: &[u8], put: bool) {
        super::index::write_entries(self.storage, &mut self.batch, table.id, row, key, put);
    }

    /// The stored row with the same identity as `probe` (key columns, or the whole row).
    pub fn get(
        &mut self,
        table: &StoredTable,
        probe: &[Value],
    ) -> Result<Option<Row>, StorageError> {
        let key = row_key(table, probe);
        Ok(self.load(&key)?.map(|(_, row)| row))
    }

    /// Insert a row. For keyed tables an existing row with the same key is replaced and
    /// returned (so the dataflow can retract it).
    pub fn insert(&mut self, table: &StoredTable, row: Row) -> Result<Option<Row>, StorageError> {
        assert_eq!(
            row.len(),
            table.schema.columns.len(),
            "row shape checked before it is written"
        );
        let key = row_key(table, &row);
        let existing = self.load(&key)?;
        if table.schema.key.is_empty() {
            let count = existing.map(|(c, _)| c).unwrap_or(0);
            if count == 0 {
                self.index(table, &row, &key, true);
            }
            self.store(key, Some((count + 1, row)));
            Ok(None)
        } else {
            if let Some((_, old)) = &existing {
                self.index(table, old, &key, false);
            }
            self.index(table, &row, &key, true);
            self.store(key, Some((1, row)));
            Ok(existing.map(|(_, r)| r))
        }
    }

    /// Delete the row identified by `probe`; returns the full stored row if there was one.
    pub fn delete(
        &mut self,
        table: &StoredTable,
        probe: &[Value],
    ) -> Result<Option<Row>, StorageError> {
        let key = row_key(table, probe);
        match self.load(&key)? {
            None => Ok(None),
            Some((count, row)) => {
                if count > 1 {
                    self.store(key, Some((count - 1, row.clone())));
                } else {
                    self.index(table, &row, &key, false);
                    self.store(key, None);
                }
                Ok(Some(row))
            }
        }
    }

    /// Remove every row of a table (TRUNCATE, or before a resnapshot).
    pub fn clear_table(&mut self, table: TableId) {
        let cf = self.storage.cf(CF_ROWS);
        let start = table.to_be_bytes();
        let end = (table + 1).to_be_bytes();
        self.batch.delete_range_cf(cf, start, end);
        self.batch
            .delete_range_cf(self.storage.cf(super::CF_INDEX), start, end);
        self.overlay.retain(|k, _| !k.starts_with(&start));
        self.cleared.push(table);
    }

    /// Remember a table that is not replicated (so a restart knows it existed).
    pub fn put_skipped(&mut self, oid: u32, schema: &str, name: &str, reason: &str) {
        let record = vec![
            Value::Int(oid as i64),
            Value::Text(schema.to_string()),
            Value::Text(name.to_string()),
            Value::Text(reason.to_string()),
        ];
        let mut bytes = Vec::new();
        encode_row(&record, &mut bytes);
        self.batch.put_cf(
            self.storage.cf(CF_META),
            format!("skip/{oid:010}").as_bytes(),
            bytes,
        );
    }

    pub fn delete_skipped(&mut self, oid: u32) {
        self.batch.delete_cf(
            self.storage.cf(CF_META),
            format!("skip/{oid:010}").as_bytes(),
        );
    }

    pub fn put_table(&mut self, table: &StoredTable) {
        let key = format!("table/{:010}", table.id);
        self.batch.put_cf(
            self.storage.cf(CF_META),
            key.as_bytes(),
            encode_table(table),
        );
    }

    pub fn delete_table(&mut self, id: TableId) {
        let key = format!("table/{id:010}");
        self.batch
            .delete_cf(self.storage.cf(CF_META), key.as_bytes());
        self.clear_table(id);
    }

    /// Record (or with `None`, forget) a partly applied transaction, atomically with this
    /// batch.
    pub fn set_partial_txn(&mut self, record: Option<&[u8]>) {
        let cf = self.storage.cf(CF_META);
        match record {
            Some(bytes) => self.batch.put_cf(cf, KEY_PARTIAL_TXN, bytes),
            None => self.batch.delete_cf(cf, KEY_PARTIAL_TXN),
        }
    }

    /// Move the replication position with this transaction.
    pub fn set_position(&mut self, position: u64) {
        self.position = Some(position);
    }

    /// Store, with this transaction, what the source needs besides the position to resume
    /// after it (opaque; see [`Storage::resume`](super::Storage::resume)).
    pub fn set_resume(&mut self, resume: &[u8]) {
        self.batch
            .put_cf(self.storage.cf(super::CF_META), super::KEY_RESUME, resume);
    }

    /// Write everything without the WAL (bulk loading only: see [`Storage::bulk_load_end`]).
    pub(super) fn commit_unlogged(mut self) -> Result<(), StorageError> {
        debug_assert!(
            self.position.is_none(),
            "a position is never written unlogged"
        );
        let mut opts = rocksdb::WriteOptions::default();
        opts.disable_wal(true);
        self.storage
            .db
            .write_opt(std::mem::take(&mut self.batch), &opts)?;
        Ok(())
    }

    /// Write everything, together with the new position if one was set, atomically.
    pub fn commit(mut self) -> Result<(), StorageError> {
        if let Some(new) = self.position {
            if let Some(stored) = self.storage.position()? {
                if new < stored {
                    return Err(StorageError::PositionBackwards { stored, new });
                }
            }
            self.batch
                .put_cf(self.storage.cf(CF_META), KEY_POSITION, new.to_be_bytes());
        }
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(false);
        self.storage
            .db
            .write_opt(std::mem::take(&mut self.batch), &opts)?;
        Ok(())
    }
}
