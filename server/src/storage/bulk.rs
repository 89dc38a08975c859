//! Bulk loading of a fresh snapshot's rows, at the speed RocksDB can take them.
//!
//! Between [`Storage::bulk_load_begin`] and [`Storage::bulk_load_end`]:
//! - rows of keyed tables are written blind (a snapshot holds each key once, after a wipe:
//!   nothing to read first), encoded into a [`BulkBuffer`] without per-row allocation;
//! - a full buffer is sorted and written as one SST file that is ingested (moved) into the rows
//!   family: no memtable, no WAL, no second write by a flush; a small remainder (the end of a
//!   part) goes through a write batch without WAL instead, so small tables do not each make a
//!   file;
//! - rows of keyless tables keep the read-modify-write of [`Txn`] (their duplicate count),
//!   committed without WAL; one worker copies each such table;
//! - automatic compactions are off (the ingested files overlap: keys are not in heap order).
//!
//! Crash safety: nothing written without WAL is trusted until `bulk_load_end` has flushed the
//! memtables (which syncs their files); the caller records the replication position only
//! after that. A crash before leaves no position, and the next start wipes storage and copies
//! again (see `replicator::initial_snapshot`).

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use rocksdb::{IngestExternalFileOptions, SstFileWriter, WriteOptions};

use super::*;

/// Directory (inside the storage directory) of SST files waiting to be ingested.
const BULK_DIR: &str = "bulk";
/// A flushed buffer smaller than this goes through a write batch, not its own SST file.
const SST_MIN_BYTES: usize = 4 << 20;
/// Rows read ahead of the one being written to an SST file.
const PREFETCH_DISTANCE: usize = 16;
/// A buffer never grows past this (offsets are `u32`; callers flush far earlier).
const BUFFER_MAX_BYTES: usize = 1 << 31;

/// One encoded row: key then value, at `offset` in the buffer's arena.
#[derive(Clone, Copy)]
struct Entry {
    /// Eight key bytes after the table id, big-endian: most comparisons end here.
    prefix: u64,
    offset: u32,
    key_len: u32,
    value_len: u32,
}

/// Encoded rows of keyed tables waiting to be written (see the module docs).
#[derive(Default)]
pub struct BulkBuffer {
    arena: Vec<u8>,
    entries: Vec<Entry>,
    key_values: Vec<Value>,
}

impl BulkBuffer {
    /// Bytes held (encoded rows and their index).
    pub fn bytes(&self) -> usize {
        self.arena.len() + self.entries.len() * std::mem::size_of::<Entry>()
    }

    fn key(&self, e: &Entry) -> &[u8] {
        &self.arena[e.offset as usize..e.offset as usize + e.key_len as usize]
    }

    fn value(&self, e: &Entry) -> &[u8] {
        let start = e.offset as usize + e.key_len as usize;
        &self.arena[start..start + e.value_len as usize]
    }

    /// Appends a row of a keyed table: the key as [`Txn`] builds it, the value with count 1.
    fn push(&mut self, table: &StoredTable, row: &[Value]) -> Result<(), StorageError> {
        let offset = self.arena.len();
        self.arena.extend_from_slice(&table.id.to_be_bytes());
        let key = &table.schema.key;
        if key.iter().enumerate().all(|(i, &k)| i == k) && key.len() <= row.len() {
            // The key columns lead the row: encode them in place.
            encode_key(&row[..key.len()], &mut self.arena);
        } else {
            self.key_values.clear();
            self.key_values.extend(
                key.iter()
                    .map(|&i| row.get(i).cloned().unwrap_or(Value::Null)),
            );
            encode_key(&self.key_values, &mut self.arena);
        }
        let key_len = self.arena.len() - offset;
        self.arena.extend_from_slice(&1u32.to_le_bytes());
        encode_row(row, &mut self.arena);
        let value_len = self.arena.len() - offset - key_len;
        if self.arena.len() > BUFFER_MAX_BYTES {
            return Err(StorageError::BulkBufferFull {
                limit_bytes: BUFFER_MAX_BYTES,
            });
        }
        let mut prefix = [0u8; 8];
        let after_id = &self.arena[offset + 4..offset + key_len];
        let n = after_id.len().min(8);
        prefix[..n].copy_from_slice(&after_id[..n]);
        self.entries.push(Entry {
            prefix: u64::from_be_bytes(prefix),
            offset: offset as u32,
            key_len: key_len as u32,
            value_len: value_len as u32,
        });
        Ok(())
    }

    fn clear(&mut self) {
        self.arena.clear();
        self.entries.clear();
    }
}

impl Storage {
    fn bulk_dir(&self) -> PathBuf {
        self.dir.join(BULK_DIR)
    }

    /// Prepares for a snapshot copy into freshly wiped storage (see the module docs).
    pub fn bulk_load_begin(&self) -> Result<(), StorageError> {
        let dir = self.bulk_dir();
        // Files left by a copy that crashed before ingesting them.
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
        }
        std::fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
        self.db
            .set_options_cf(self.cf(CF_ROWS), &[("disable_auto_compactions", "true")])?;
        // Bulk-loaded rows bypass the secondary indexes: none is kept from here on, and the
        // caches built afterwards fill theirs again (no cache reads storage during a copy).
        self.forget_indexes()?;
        Ok(())
    }

    /// Adds rows of one table: keyed ones to `buffer` (written by [`Storage::bulk_flush`]),
    /// keyless ones straight away.
    pub fn bulk_insert(
        &self,
        buffer: &mut BulkBuffer,
        table: &StoredTable,
        rows: Vec<Row>,
    ) -> Result<(), StorageError> {
        if table.schema.key.is_empty() {
            let mut txn = self.begin();
            for row in rows {
                txn.insert(table, row)?;
            }
            return txn.commit_unlogged();
        }
        for row in &rows {
            buffer.push(table, row)?;
        }
        Ok(())
    }

    /// Writes what `buffer` holds (readable when this returns) and empties it.
    pub fn bulk_flush(&self, buffer: &mut BulkBuffer) -> Result<(), StorageError> {
        if buffer.entries.is_empty() {
            buffer.clear();
            return Ok(());
        }
        let mut entries = std::mem::take(&mut buffer.entries);
        if buffer.arena.len() < SST_MIN_BYTES {
            let cf = self.cf(CF_ROWS);
            let mut batch = WriteBatch::default();
            for e in &entries {
                batch.put_cf(cf, buffer.key(e), buffer.value(e));
            }
            let mut opts = WriteOptions::default();
            opts.disable_wal(true);
            self.db.write_opt(batch, &opts)?;
        } else {
            // Sorted by key; among equal keys the later row wins, as with `Txn::insert`.
            entries.sort_unstable_by(|a, b| {
                a.prefix
                    .cmp(&b.prefix)
                    .then_with(|| buffer.key(a).cmp(buffer.key(b)))
                    .then(a.offset.cmp(&b.offset))
            });
            let n = self.bulk_files.fetch_add(1, Ordering::Relaxed);
            let path = self.bulk_dir().join(format!("{n:08}.sst"));
            let opts = Options::default();
            let mut writer = SstFileWriter::create(&opts);
            writer.open(&path)?;
            for (i, e) in entries.iter().enumerate() {
                if let Some(ahead) = entries.get(i + PREFETCH_DISTANCE) {
                    // Rows sit in arrival order, so sorted reads jump around a large arena:
                    // touch a later row now so its cache lines are on the way when needed.
                    std::hint::black_box(buffer.arena[ahead.offset as usize]);
                    let last = ahead.offset as usize + (ahead.key_len + ahead.value_len) as usize;
                    std::hint::black_box(buffer.arena[last - 1]);
                }
                // The prefix first: it spares most reads of the (scattered) keys.
                let superseded = entries.get(i + 1).is_some_and(|next| {
                    next.prefix == e.prefix && buffer.key(next) == buffer.key(e)
                });
                if !superseded {
                    writer.put(buffer.key(e), buffer.value(e))?;
                }
            }
            writer.finish()?;
            let mut ingest = IngestExternalFileOptions::default();
            ingest.set_move_files(true);
            self.db
                .ingest_external_file_cf_opts(self.cf(CF_ROWS), &ingest, vec![&path])?;
            // Moved files are hard links: the name in the bulk directory can go.
            let _ = std::fs::remove_file(&path);
        }
        entries.clear();
        buffer.entries = entries;
        buffer.clear();
        Ok(())
    }

    /// Makes everything bulk-loaded durable (flushes the memtables, which syncs their files,
    /// and syncs the WAL) and turns automatic compactions back on. Call before recording the
    /// position the copy is consistent at.
    pub fn bulk_load_end(&self) -> Result<(), StorageError> {
        self.db.flush_cf(self.cf(CF_ROWS))?;
        self.db.flush_wal(true)?;
        self.db
            .set_options_cf(self.cf(CF_ROWS), &[("disable_auto_compactions", "false")])?;
        let dir = self.bulk_dir();
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
        }
        Ok(())
    }

    /// After a failed copy: automatic compactions back on (the next copy wipes the rows).
    pub fn bulk_load_abort(&self) -> Result<(), StorageError> {
        self.db
            .set_options_cf(self.cf(CF_ROWS), &[("disable_auto_compactions", "false")])?;
        Ok(())
    }

    /// Live SST bytes of the rows family (what the stored rows take on disk).
    pub fn rows_disk_bytes(&self) -> Result<u64, StorageError> {
        Ok(self
            .db
            .property_int_value_cf(self.cf(CF_ROWS), "rocksdb.live-sst-files-size")?
            .unwrap_or(0))
    }
}

fn io_error(path: &std::path::Path, e: std::io::Error) -> StorageError {
    StorageError::Io {
        path: path.display().to_string(),
        source: e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use larder_sql::{Column, SqlType};

    fn temp_storage(name: &str) -> (PathBuf, Storage) {
        let dir = std::env::temp_dir().join(format!(
            "larder-bulk-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let storage = Storage::open(&dir).unwrap();
        (dir, storage)
    }

    fn table(storage: &Storage, key: Vec<usize>) -> StoredTable {
        let col = |name: &str, ty, type_oid| Column {
            name: name.into(),
            ty,
            type_oid,
            typmod: -1,
        };
        StoredTable {
            id: storage.allocate_table_id().unwrap(),
            upstream_oid: 16384,
            schema: TableSchema {
                schema: "public".into(),
                name: "t".into(),
                columns: vec![col("a", SqlType::Int8, 20), col("b", SqlType::Text, 25)],
                key,
            },
        }
    }

    fn row(a: i64, b: &str) -> Row {
        vec![Value::Int(a), Value::Text(b.into())]
    }

    #[test]
    fn bulk_rows_read_back_as_transactions_wrote_them() {
        let (dir, storage) = temp_storage("readback");
        let keyed = table(&storage, vec![0]);
        let by_second = table(&storage, vec![1]);
        let keyless = table(&storage, vec![]);
        storage.wipe().unwrap();
        storage.bulk_load_begin().unwrap();
        let mut buffer = BulkBuffer::default();
        // Enough rows for an SST file, and a small remainder through a write batch.
        let big: Vec<Row> = (0..60_000).map(|i| row(i, &"x".repeat(80))).collect();
        storage.bulk_insert(&mut buffer, &keyed, big).unwrap();
        assert!(buffer.bytes() >= SST_MIN_BYTES);
        storage.bulk_flush(&mut buffer).unwrap();
        storage
            .bulk_insert(&mut buffer, &keyed, vec![row(-1, "neg"), row(5, "again")])
            .unwrap();
        storage.bulk_flush(&mut buffer).unwrap();
        storage
            .bulk_insert(&mut buffer, &by_second, vec![row(1, "k1"), row(2, "k2")])
            .unwrap();
        storage.bulk_flush(&mut buffer).unwrap();
        for _ in 0..2 {
            storage
                .bulk_insert(&mut buffer, &keyless, vec![row(7, "dup"), row(8, "one")])
                .unwrap();
        }
        storage
            .bulk_insert(&mut buffer, &keyless, vec![row(7, "dup")])
            .unwrap();
        storage.bulk_load_end().unwrap();

        assert_eq!(storage.count_rows(keyed.id).unwrap(), 60_001);
        let mut txn = storage.begin();
        assert_eq!(
            txn.get(&keyed, &[Value::Int(5)]).unwrap(),
            Some(row(5, "again"))
        );
        assert_eq!(
            txn.get(&keyed, &[Value::Int(-1)]).unwrap(),
            Some(row(-1, "neg"))
        );
        assert_eq!(
            txn.get(&keyed, &[Value::Int(59_999)]).unwrap(),
            Some(row(59_999, &"x".repeat(80)))
        );
        let probe = [Value::Null, Value::Text("k2".into())];
        assert_eq!(txn.get(&by_second, &probe).unwrap(), Some(row(2, "k2")));
        let mut rows = storage.scan_table(keyless.id).unwrap();
        rows.sort_by_key(|r| format!("{r:?}"));
        assert_eq!(
            rows,
            vec![
                row(7, "dup"),
                row(7, "dup"),
                row(7, "dup"),
                row(8, "one"),
                row(8, "one")
            ]
        );
        // Rows written by the stream afterwards behave as before.
        assert_eq!(
            txn.insert(&keyed, row(5, "updated")).unwrap(),
            Some(row(5, "again"))
        );
        txn.commit().unwrap();
        assert!(!storage.bulk_dir().exists());
        drop(storage);
        // Everything is durable without the WAL of the copy.
        let storage = Storage::open(&dir).unwrap();
        assert_eq!(storage.count_rows(keyed.id).unwrap(), 60_001);
        assert_eq!(storage.scan_table(keyless.id).unwrap().len(), 5);
        drop(storage);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
