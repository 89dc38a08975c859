//! The registry of upstream tables Larder knows of: replicated ones (with their storage and
//! dataflow id) and the others with the reason they are not replicated.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use larder_sql::TableSchema;

use crate::storage::StoredTable;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TableState {
    /// Being copied from the snapshot.
    Snapshotting {
        rows_done: u64,
        rows_estimated: Option<u64>,
        /// Set when the table's first rows arrived.
        clock: Option<SnapshotClock>,
    },
    /// Snapshot done (or created after the slot): follows the change stream.
    Online,
    /// Copied again after a shape change; the stream is being applied up to the copy's
    /// position, until then caches on it wait.
    CatchingUp { until_lsn: u64 },
    /// Known upstream but not replicated; queries on it go upstream.
    NotReplicated { reason: String },
}

/// How often at most a table's snapshot progress is logged.
pub const SNAPSHOT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// When a table's snapshot started delivering rows, and when its progress was last logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotClock {
    pub started: Instant,
    pub logged: Instant,
}

impl SnapshotClock {
    pub fn new(now: Instant) -> SnapshotClock {
        SnapshotClock {
            started: now,
            logged: now,
        }
    }

    /// Whether a progress line is due (at most one per [`SNAPSHOT_LOG_INTERVAL`]); marks it
    /// logged.
    pub fn log_due(&mut self, now: Instant) -> bool {
        if now.saturating_duration_since(self.logged) >= SNAPSHOT_LOG_INTERVAL {
            self.logged = now;
            return true;
        }
        false
    }
}

/// A table snapshot's progress for a person watching.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SnapshotProgress {
    pub rows_done: u64,
    /// From `pg_class.reltuples` when the snapshot started.
    pub rows_estimated: Option<u64>,
    /// Of the estimate, at most 100.
    pub percent: Option<f64>,
    /// At the rate so far, until the estimate is copied.
    pub eta: Option<Duration>,
    /// Rows copied per second so far.
    pub rows_per_second: Option<f64>,
}

impl TableState {
    /// The snapshot's progress, while the table is being copied.
    pub fn progress(&self, now: Instant) -> Option<SnapshotProgress> {
        let TableState::Snapshotting {
            rows_done,
            rows_estimated,
            clock,
        } = self
        else {
            return None;
        };
        let total = rows_estimated.filter(|t| *t > 0);
        let percent = total.map(|t| (*rows_done as f64 / t as f64 * 100.0).min(100.0));
        let elapsed = clock.map(|c| now.saturating_duration_since(c.started).as_secs_f64());
        let eta = match (total, elapsed) {
            (Some(t), Some(elapsed)) if *rows_done > 0 => {
                let left = t.saturating_sub(*rows_done) as f64;
                Some(Duration::from_secs_f64(elapsed / *rows_done as f64 * left))
            }
            _ => None,
        };
        // Over less than a second the rate says little.
        let rows_per_second = elapsed
            .filter(|e| *e >= 1.0 && *rows_done > 0)
            .map(|e| *rows_done as f64 / e);
        Some(SnapshotProgress {
            rows_done: *rows_done,
            rows_estimated: *rows_estimated,
            percent,
            eta,
            rows_per_second,
        })
    }

    pub fn describe(&self) -> (String, String) {
        match self {
            TableState::Snapshotting { .. } => {
                let p = self.progress(Instant::now()).unwrap_or_default();
                let mut text = match (p.rows_estimated, p.percent) {
                    (Some(total), Some(pct)) => {
                        format!("{} of ~{total} rows ({pct:.0}%)", p.rows_done)
                    }
                    _ => format!("{} rows", p.rows_done),
                };
                if let Some(rate) = p.rows_per_second {
                    text.push_str(&format!(", {rate:.0} rows/s"));
                }
                if let Some(eta) = p.eta {
                    text.push_str(&format!(", about {} s left", eta.as_secs()));
                }
                ("Snapshotting".into(), text)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_progress_has_percent_and_eta_from_the_rate_so_far() {
        let t0 = Instant::now();
        let state = TableState::Snapshotting {
            rows_done: 250,
            rows_estimated: Some(1000),
            clock: Some(SnapshotClock::new(t0)),
        };
        let p = state.progress(t0 + Duration::from_secs(10)).unwrap();
        assert_eq!(p.rows_done, 250);
        assert_eq!(p.percent, Some(25.0));
        // 250 rows in 10 s: 750 more take 30 s.
        assert_eq!(p.eta.map(|d| d.as_secs()), Some(30));
        assert_eq!(p.rows_per_second, Some(25.0));
        // No estimate (never analyzed): rows only.
        let unknown = TableState::Snapshotting {
            rows_done: 5,
            rows_estimated: None,
            clock: Some(SnapshotClock::new(t0)),
        };
        let p = unknown.progress(t0).unwrap();
        assert_eq!((p.percent, p.eta, p.rows_per_second), (None, None, None));
        assert_eq!(unknown.describe().1, "5 rows");
        assert!(TableState::Online.progress(t0).is_none());
    }

    #[test]
    fn progress_lines_are_due_at_most_once_per_interval() {
        let t0 = Instant::now();
        let mut c = SnapshotClock::new(t0);
        assert!(!c.log_due(t0 + Duration::from_secs(1)));
        assert!(c.log_due(t0 + SNAPSHOT_LOG_INTERVAL));
        assert!(!c.log_due(t0 + SNAPSHOT_LOG_INTERVAL + Duration::from_secs(1)));
        assert!(c.log_due(t0 + 2 * SNAPSHOT_LOG_INTERVAL));
    }
}
