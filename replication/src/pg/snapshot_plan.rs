//! How the initial copy is divided: which tables are split into ranges, in what order the
//! parts are taken, and how much memory each copy worker may hold.
//!
//! A large keyed table is split into ranges of heap pages (`ctid` ranges, read by a TID Range
//! Scan, Postgres 14 and later): every row version visible in the exported snapshot lies on
//! exactly one page, so the ranges together hold each row exactly once, without an index and
//! without sorting. Keyless tables are never split (their duplicate counts are kept by one
//! writer), nor are tables on servers without TID range scans.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::{DiscoveredTable, PgSourceOptions};

/// First server version with TID Range Scans (`ctid >= ... AND ctid < ...` without a full
/// scan per range).
pub(crate) const TID_RANGE_SCAN_VERSION_NUM: i32 = 140_000;

/// Memory the copy may hold, per worker and in all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotMemory {
    /// Tables (or table ranges) copied at once, each on its own connection.
    pub workers: usize,
    /// Decoded rows a worker gathers before handing them to the sink (approximate: COPY text
    /// plus the in-memory size of the values).
    pub batch_max_bytes: usize,
    /// Encoded rows a sink may buffer per worker before writing them out.
    pub sink_buffer_max_bytes: usize,
}

impl SnapshotMemory {
    /// Everything the copy holds at most: per worker one batch being decoded and the sink's
    /// buffer.
    pub fn total_max_bytes(&self) -> usize {
        self.workers * (self.batch_max_bytes + self.sink_buffer_max_bytes)
    }
}

impl PgSourceOptions {
    /// The copy's memory bound, divided between workers, batches and sink buffers.
    pub fn snapshot_memory(&self) -> SnapshotMemory {
        let workers = self.snapshot_parallelism.max(1);
        let per_worker = (self.snapshot_memory_max_bytes / workers).max(2 << 20);
        let batch_max_bytes = self
            .snapshot_batch_bytes_max
            .min(per_worker / 4)
            .max(64 << 10);
        SnapshotMemory {
            workers,
            batch_max_bytes,
            // Sinks index their buffers with 32-bit offsets; a gigabyte is plenty.
            sink_buffer_max_bytes: per_worker.saturating_sub(batch_max_bytes).min(1 << 30),
        }
    }
}

/// One unit of copy work: a whole table, or a range of its heap pages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Part {
    /// Index into the plan's tables.
    pub table: usize,
    /// `[first, end)` heap pages; `end` `None` for the last range (pages added since the size
    /// was read belong to it). `None`: the whole table.
    pub pages: Option<(u64, Option<u64>)>,
    /// Bytes of heap this part reads (for ordering the largest first).
    pub bytes: u64,
}

/// Per-table counters shared by the workers copying its parts.
#[derive(Debug, Default)]
pub(crate) struct TableCopy {
    pub rows: AtomicU64,
    pub parts_left: AtomicUsize,
}

/// The parts of every table, largest first, and their counters.
#[derive(Debug)]
pub(crate) struct Plan<'a> {
    pub tables: Vec<&'a DiscoveredTable>,
    pub parts: Vec<Part>,
    pub copies: Vec<TableCopy>,
    next: AtomicUsize,
}

impl<'a> Plan<'a> {
    /// `sizes[i]`: heap bytes of `tables[i]`; `split` whether ranges may be used at all.
    pub fn new(
        tables: Vec<&'a DiscoveredTable>,
        sizes: &[u64],
        block_bytes: u64,
        split_min_bytes: u64,
        workers: usize,
        split: bool,
    ) -> Plan<'a> {
        let mut parts = Vec::new();
        let mut copies = Vec::with_capacity(tables.len());
        for (i, t) in tables.iter().enumerate() {
            let bytes = sizes.get(i).copied().unwrap_or(0);
            let keyed = !t.relation.schema.key.is_empty();
            let ranges = if split && keyed && workers > 1 && split_min_bytes > 0 {
                // Ranges of at least `split_min_bytes`, at most two per worker.
                (bytes / split_min_bytes).min(2 * workers as u64)
            } else {
                1
            };
            let copy = TableCopy::default();
            if ranges < 2 || block_bytes == 0 {
                parts.push(Part {
                    table: i,
                    pages: None,
                    bytes,
                });
                copy.parts_left.store(1, Ordering::Relaxed);
            } else {
                let pages = bytes.div_ceil(block_bytes);
                let step = pages.div_ceil(ranges);
                let mut first = 0;
                let mut n = 0;
                while first < pages {
                    let end = first + step;
                    parts.push(Part {
                        table: i,
                        pages: Some((first, (end < pages).then_some(end))),
                        bytes: step.min(pages - first) * block_bytes,
                    });
                    first = end;
                    n += 1;
                }
                copy.parts_left.store(n, Ordering::Relaxed);
            }
            copies.push(copy);
        }
        // Largest first: the long parts start early and the short ones fill the gaps.
        parts.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.table.cmp(&b.table)));
        Plan {
            tables,
            parts,
            copies,
            next: AtomicUsize::new(0),
        }
    }

    /// The next part nobody took yet.
    pub fn take(&self) -> Option<&Part> {
        self.parts.get(self.next.fetch_add(1, Ordering::Relaxed))
    }

    /// Whether the table has one part only (its last batch then also ends the table).
    pub fn single_part(&self, table: usize) -> bool {
        self.parts.iter().filter(|p| p.table == table).count() == 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::{RelationInfo, ReplicaIdentity, TableStatus};
    use larder_sql::{Column, SqlType, TableSchema};

    fn table(oid: u32, keyed: bool) -> DiscoveredTable {
        DiscoveredTable {
            relation: RelationInfo {
                oid,
                schema: TableSchema {
                    schema: "public".into(),
                    name: format!("t{oid}"),
                    columns: vec![Column {
                        name: "id".into(),
                        ty: SqlType::Int8,
                        type_oid: 20,
                        typmod: -1,
                    }],
                    key: if keyed { vec![0] } else { vec![] },
                },
                replica_identity: if keyed {
                    ReplicaIdentity::Default
                } else {
                    ReplicaIdentity::Full
                },
                status: TableStatus::Replicated,
            },
            estimated_rows: None,
        }
    }

    #[test]
    fn large_keyed_tables_split_into_page_ranges_covering_every_page() {
        let (big, small, keyless) = (table(1, true), table(2, true), table(3, false));
        let block = 8192;
        let sizes = [1000 * block, 3 * block, 1000 * block];
        let plan = Plan::new(
            vec![&big, &small, &keyless],
            &sizes,
            block,
            100 * block,
            2,
            true,
        );
        let big_parts: Vec<_> = plan.parts.iter().filter(|p| p.table == 0).collect();
        assert_eq!(big_parts.len(), 4);
        let mut ranges: Vec<_> = big_parts.iter().map(|p| p.pages.unwrap()).collect();
        ranges.sort();
        assert_eq!(ranges.first().unwrap().0, 0);
        assert_eq!(ranges.last().unwrap().1, None, "the last range is open");
        for w in ranges.windows(2) {
            assert_eq!(Some(w[1].0), w[0].1, "ranges are contiguous");
        }
        assert_eq!(plan.copies[0].parts_left.load(Ordering::Relaxed), 4);
        assert!(plan.single_part(1) && plan.single_part(2));
        assert!(plan.parts.windows(2).all(|w| w[0].bytes >= w[1].bytes));
        // Not split: one worker, or no TID range scans.
        for (workers, split) in [(1, true), (4, false)] {
            let plan = Plan::new(vec![&big], &sizes[..1], block, 100 * block, workers, split);
            assert_eq!(plan.parts.len(), 1);
            assert_eq!(plan.parts[0].pages, None);
        }
        let mut taken = 0;
        while plan.take().is_some() {
            taken += 1;
        }
        assert_eq!(taken, plan.parts.len());
    }

    #[test]
    fn memory_is_divided_between_workers() {
        let options = PgSourceOptions {
            snapshot_parallelism: 4,
            snapshot_memory_max_bytes: 256 << 20,
            ..Default::default()
        };
        let m = options.snapshot_memory();
        assert_eq!(m.workers, 4);
        assert!(m.batch_max_bytes <= options.snapshot_batch_bytes_max);
        assert!(m.total_max_bytes() <= 256 << 20);
        assert!(m.sink_buffer_max_bytes >= m.batch_max_bytes);
    }
}
