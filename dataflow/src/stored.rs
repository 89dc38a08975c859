//! Base-table rows read from storage: how a join side that holds no state of its own finds
//! the rows that match a key.
//!
//! A join whose input is a base table reached through filters and projections only does not
//! need to keep that side in memory: the rows are in storage already. The server implements
//! [`StoredRows`] over RocksDB (the primary key, or a secondary index on the join columns
//! written in the same batch as the rows) and hands it to [`Graph::apply_txn`]. The dataflow
//! stays free of I/O: it only calls the trait.
//!
//! **The transaction's own view.** A transaction's changes are applied table after table; a
//! join must see the other side as of the changes it has already received, so that `ΔA⋈ΔB`
//! is counted once (`ΔA⋈B + A'⋈ΔB`). Storage answers as of *before* the transaction (the
//! implementation reads a snapshot taken before the transaction's batch was committed), and
//! the join adds the changes it has received on that side during the transaction (its
//! overlay, dropped when the transaction ends). Before = committed state of the previous
//! transaction, which is exactly the state an in-memory side would hold.
//!
//! [`Graph::apply_txn`]: crate::Graph::apply_txn

use larder_sql::value::{Row, Value};
use thiserror::Error;

use crate::graph::TableId;

/// Which stored rows a join side asks for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Lookup<'a> {
    /// The row whose primary key is `values`, in the order of the table's key columns.
    PrimaryKey(&'a [Value]),
    /// Rows whose `columns` equal `values` (never NULL), through the secondary index on
    /// exactly those columns (see [`StoredIndex`]).
    Index {
        columns: &'a [usize],
        values: &'a [Value],
    },
}

/// A secondary index a join side reads: a table and the columns of its `on` pairs, in
/// order. The server keeps every index the graph asks for ([`Graph::stored_indexes`]) up to
/// date in the same write batch as the rows.
///
/// [`Graph::stored_indexes`]: crate::Graph::stored_indexes
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StoredIndex {
    pub table: TableId,
    pub columns: Vec<usize>,
}

/// Storage could not answer a lookup (an I/O or decoding error). The join poisons the rows
/// it cannot compute, so the affected keys are answered upstream until rebuilt.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("stored rows of table {table}: {detail}")]
pub struct StoredError {
    pub table: u64,
    pub detail: String,
}

/// Base-table rows as of before the transaction being applied.
pub trait StoredRows {
    /// The rows of `table` that `lookup` names, each with its number of copies (a table
    /// without a key may hold a row more than once), at most `limit` distinct rows (more
    /// may exist when that many are returned). Rows whose looked-up columns no longer
    /// equal the values (a stale index entry) must not be returned.
    fn rows(
        &self,
        table: TableId,
        lookup: Lookup<'_>,
        limit: usize,
    ) -> Result<Vec<(Row, i64)>, StoredError>;
}

/// No storage: every lookup fails. For graphs whose joins keep both sides in memory
/// (`GraphLimits::stored_joins` off), and for propagation that never reaches a join reading
/// storage (a cache's own fill).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoStoredRows;

impl StoredRows for NoStoredRows {
    fn rows(
        &self,
        table: TableId,
        _lookup: Lookup<'_>,
        _limit: usize,
    ) -> Result<Vec<(Row, i64)>, StoredError> {
        Err(StoredError {
            table: table.0,
            detail: "no storage was given to this propagation".into(),
        })
    }
}
