//! The registry of upstream tables Larder knows of: replicated ones (with their storage and
//! dataflow id) and the others with the reason they are not replicated.

use std::collections::HashMap;

use larder_sql::TableSchema;

use crate::storage::StoredTable;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TableState {
    /// Being copied from the snapshot.
    Snapshotting {
        rows_done: u64,
        rows_estimated: Option<u64>,
    },
    /// Snapshot done (or created after the slot): follows the change stream.
    Online,
    /// Copied again after a shape change; the stream is being applied up to the copy's
    /// position, until then caches on it wait.
    CatchingUp { until_lsn: u64 },
    /// Known upstream but not replicated; queries on it go upstream.
    NotReplicated { reason: String },
}

impl TableState {
    pub fn describe(&self) -> (String, String) {
        match self {
            TableState::Snapshotting {
                rows_done,
                rows_estimated,
            } => {
                let progress = match rows_estimated {
                    Some(total) if *total > 0 => {
                        format!(
                            "{rows_done} of ~{total} rows ({:.0}%)",
                            (*rows_done as f64 / *total as f64 * 100.0).min(100.0)
                        )
                    }
                    _ => format!("{rows_done} rows"),
                };
                ("Snapshotting".into(), progress)
            }
            TableState::Online => ("Online".into(), String::new()),
            // Held while a large upstream transaction is applied in parts (replicator.rs).
            TableState::CatchingUp {
                until_lsn: u64::MAX,
            } => (
                "Applying".into(),
                "a large upstream transaction is being applied; its caches go upstream".into(),
            ),
            TableState::CatchingUp { until_lsn } => (
                "Snapshotting".into(),
                format!(
                    "copied again after a shape change; catching up to {:X}/{:X}",
                    until_lsn >> 32,
                    until_lsn & 0xffff_ffff
                ),
            ),
            TableState::NotReplicated { reason } => ("Not Replicated".into(), reason.clone()),
        }
    }
}

#[derive(Clone, Debug)]
pub struct TableEntry {
    pub oid: u32,
    /// Upstream shape (for not-replicated tables, as discovered).
    pub schema: TableSchema,
    /// Storage record, present exactly when the table is replicated.
    pub stored: Option<StoredTable>,
    pub state: TableState,
}

#[derive(Default)]
pub struct TableRegistry {
    by_oid: HashMap<u32, TableEntry>,
}

impl TableRegistry {
    pub fn get(&self, oid: u32) -> Option<&TableEntry> {
        self.by_oid.get(&oid)
    }

    pub fn get_mut(&mut self, oid: u32) -> Option<&mut TableEntry> {
        self.by_oid.get_mut(&oid)
    }

    pub fn insert(&mut self, entry: TableEntry) {
        self.by_oid.insert(entry.oid, entry);
    }

    pub fn remove(&mut self, oid: u32) -> Option<TableEntry> {
        self.by_oid.remove(&oid)
    }

    pub fn by_name(&self, schema: &str, name: &str) -> Option<&TableEntry> {
        self.by_oid
            .values()
            .find(|t| t.schema.schema == schema && t.schema.name == name)
    }

    pub fn all(&self) -> impl Iterator<Item = &TableEntry> {
        self.by_oid.values()
    }

    pub fn by_table_id(&self, id: u32) -> Option<&TableEntry> {
        self.by_oid
            .values()
            .find(|t| t.stored.as_ref().map(|s| s.id) == Some(id))
    }
}
