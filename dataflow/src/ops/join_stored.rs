//! A join side read from storage instead of kept in memory (see [`crate::stored`]).
//!
//! The side is a base table reached through filters and projections only, joined on
//! columns that are plain base columns of a type whose stored encoding is equal exactly when
//! the values are (integers, text, booleans, uuids, dates, timestamps). Its rows for a key
//! are the stored rows with those column values, run through the side's own copy of the
//! filters and projections, plus the changes the join received on that side during the
//! transaction being applied (the overlay).

use std::fmt;

use larder_sql::value::{Key, Row, Value};

use super::{bump, match_key, Batch, Operator, Record, RowCounts};
use crate::graph::TableId;
use crate::stored::{Lookup, StoredError, StoredRows};

/// How one join input maps to a base table.
pub(crate) struct StoredSide {
    /// 0: the left input, 1: the right input.
    pub(crate) side: usize,
    pub(crate) table: TableId,
    /// The base column of each of this side's `on` columns, in `on` order.
    pub(crate) columns: Vec<usize>,
    /// When `columns` are exactly the table's primary key: for each key column, in the
    /// table's key order, its position in `columns`. Such a side is a point lookup and
    /// needs no secondary index.
    pub(crate) primary_key: Option<Vec<usize>>,
    /// The side's filters and projections, from the base table up to the join's input
    /// (stateless, the side's own copies).
    pub(crate) chain: Vec<Box<dyn Operator>>,
}

impl fmt::Debug for StoredSide {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredSide")
            .field("side", &self.side)
            .field("table", &self.table)
            .field("columns", &self.columns)
            .field("primary_key", &self.primary_key)
            .field("chain", &self.chain.len())
            .finish()
    }
}

impl StoredSide {
    /// The secondary index this side reads, if it is not a primary-key lookup.
    pub(crate) fn index(&self) -> Option<crate::stored::StoredIndex> {
        self.primary_key
            .is_none()
            .then(|| crate::stored::StoredIndex {
                table: self.table,
                columns: self.columns.clone(),
            })
    }

    /// This side's rows whose `on` columns (`on`, columns of the join input) equal `values`,
    /// with multiplicities, as of before the transaction: the stored rows through the chain.
    /// Poison the chain emits is left out, as an in-memory side never stores poison.
    ///
    /// With `enough`, the rows may stop once their multiplicities reach it (what a LEFT
    /// join needs to know whether a key has matches): fewer stored rows are read.
    pub(crate) fn rows(
        &mut self,
        stored: &dyn StoredRows,
        on: &[usize],
        values: &[Value],
        enough: Option<i64>,
    ) -> Result<RowCounts, StoredError> {
        if let Some(enough) = enough {
            let limit = usize::try_from(enough.max(1)).unwrap_or(usize::MAX);
            let (rows, exhausted) = self.read(stored, on, values, limit)?;
            let total = rows.values().fold(0i64, |t, &c| t.saturating_add(c));
            if exhausted || total >= enough {
                return Ok(rows);
            }
            // The chain dropped some of the rows read: read them all.
        }
        Ok(self.read(stored, on, values, usize::MAX)?.0)
    }

    /// Up to `limit` stored rows through the chain; and whether storage had no more.
    fn read(
        &mut self,
        stored: &dyn StoredRows,
        on: &[usize],
        values: &[Value],
        limit: usize,
    ) -> Result<(RowCounts, bool), StoredError> {
        let found = match &self.primary_key {
            Some(order) => {
                let parts: Vec<Value> = order.iter().map(|&i| values[i].clone()).collect();
                stored.rows(self.table, Lookup::PrimaryKey(&parts), limit)?
            }
            None => stored.rows(
                self.table,
                Lookup::Index {
                    columns: &self.columns,
                    values,
                },
                limit,
            )?,
        };
        let exhausted = found.len() < limit;
        let mut batch: Batch = found
            .into_iter()
            .map(|(row, diff)| Record::Row { row, diff })
            .collect();
        for op in &mut self.chain {
            if batch.is_empty() {
                break;
            }
            batch = op.process(0, batch);
        }
        let want = Key::from_values(values);
        let mut out = RowCounts::new();
        for record in batch {
            if let Record::Row { row, diff } = record {
                if match_key(&row, on).as_ref() == Some(&want) {
                    bump_quiet(&mut out, row, diff);
                }
            }
        }
        Ok((out, exhausted))
    }
}

/// [`bump`] for a temporary multiset: its bytes are not charged to the operator's state.
pub(crate) fn bump_quiet(rows: &mut RowCounts, row: Row, diff: i64) {
    let before = super::mem::take();
    bump(rows, row, diff);
    super::mem::take();
    super::mem::charge(before);
}
