//! Operators: the nodes of the dataflow graph.
//!
//! Every operator consumes batches of signed records (a Z-set: `+1` insert, `-1` delete of
//! one copy) and emits the batch of changes to its own output. Besides data, records can be
//! *poison*: "a row here failed to evaluate; whatever it maps to downstream is unknown". A
//! poison record carries as much of the row as could be computed (`None` for unknown
//! columns) so the reader can poison just the affected key, or everything when the key
//! itself is unknown. Because evaluation is deterministic, deleting the offending row emits
//! the same poison record with the opposite sign, which clears it.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use larder_sql::plan::OrderKey;
use larder_sql::value::{Key, Row, Value};
use left_right::WriteHandle;

use crate::eval::CompiledExpr;
use crate::order::SortedRow;
use crate::reader::{ReaderOp, ReaderState};

/// One signed change flowing between operators.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    /// `diff` copies of `row` were inserted (positive) or deleted (negative).
    Row { row: Row, diff: i64 },
    /// A row whose evaluation failed; `None` marks columns that could not be computed.
    Poison { row: Vec<Option<Value>>, diff: i64 },
}

pub type Batch = Vec<Record>;

/// A node of the dataflow graph.
///
/// `process` is called with batches from parent number `input` (the position of the parent
/// in the node's parent list) in topological order; it returns the changes to its output,
/// which the graph forwards to every child. Operators must be deterministic.
pub trait Operator: Send + fmt::Debug + Any {
    fn name(&self) -> &'static str;
    fn process(&mut self, input: usize, batch: Batch) -> Batch;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// The root of a base table: forwards its changes unchanged.
#[derive(Debug, Default)]
pub struct BaseOp;

impl Operator for BaseOp {
    fn name(&self) -> &'static str {
        "base"
    }

    fn process(&mut self, _input: usize, batch: Batch) -> Batch {
        batch
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// Keeps rows whose predicate is true; a row whose predicate fails to evaluate becomes poison.
#[derive(Debug)]
pub struct FilterOp {
    predicate: CompiledExpr,
}

impl FilterOp {
    pub fn new(predicate: CompiledExpr) -> FilterOp {
        FilterOp { predicate }
    }
}

impl Operator for FilterOp {
    fn name(&self) -> &'static str {
        "filter"
    }

    fn process(&mut self, _input: usize, batch: Batch) -> Batch {
        let mut out = Vec::with_capacity(batch.len());
        for record in batch {
            match record {
                Record::Row { row, diff } => match self.predicate.eval_predicate(&row, &[]) {
                    Ok(Some(true)) => out.push(Record::Row { row, diff }),
                    Ok(_) => {}
                    Err(error) => {
                        tracing::debug!(%error, "filter evaluation failed; poisoning");
                        out.push(Record::Poison {
                            row: row.into_iter().map(Some).collect(),
                            diff,
                        });
                    }
                },
                // Conservative: a row we could not compute may or may not pass.
                poison @ Record::Poison { .. } => out.push(poison),
            }
        }
        out
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// Computes the materialized columns from input columns.
#[derive(Debug)]
pub struct ProjectOp {
    exprs: Vec<CompiledExpr>,
}

impl ProjectOp {
    pub fn new(exprs: Vec<CompiledExpr>) -> ProjectOp {
        ProjectOp { exprs }
    }

    fn project_partial(&self, row: &[Value]) -> Vec<Option<Value>> {
        self.exprs
            .iter()
            .map(|e| e.eval(row, &[]).ok().map(|v| v.into_owned()))
            .collect()
    }
}

impl Operator for ProjectOp {
    fn name(&self) -> &'static str {
        "project"
    }

    fn process(&mut self, _input: usize, batch: Batch) -> Batch {
        let mut out = Vec::with_capacity(batch.len());
        for record in batch {
            match record {
                Record::Row { row, diff } => {
                    let projected: Result<Row, _> = self
                        .exprs
                        .iter()
                        .map(|e| e.eval(&row, &[]).map(|v| v.into_owned()))
                        .collect();
                    match projected {
                        Ok(row) => out.push(Record::Row { row, diff }),
                        Err(error) => {
                            tracing::debug!(%error, "projection failed; poisoning");
                            out.push(Record::Poison {
                                row: self.project_partial(&row),
                                diff,
                            });
                        }
                    }
                }
                Record::Poison { row, diff } => {
                    let full: Option<Row> = row.into_iter().collect();
                    let row = match full {
                        Some(full) => self.project_partial(&full),
                        None => vec![None; self.exprs.len()],
                    };
                    out.push(Record::Poison { row, diff });
                }
            }
        }
        out
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

const NULL: Value = Value::Null;

/// The sink of a cache: groups rows by key into the left-right reader state.
pub struct ReaderOpNode {
    key: Vec<usize>,
    order: Arc<[OrderKey]>,
    pub(crate) writer: WriteHandle<ReaderState, ReaderOp>,
}

impl fmt::Debug for ReaderOpNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReaderOpNode")
            .field("key", &self.key)
            .field("order", &self.order)
            .finish_non_exhaustive()
    }
}

impl ReaderOpNode {
    pub(crate) fn new(
        key: Vec<usize>,
        order: Arc<[OrderKey]>,
        writer: WriteHandle<ReaderState, ReaderOp>,
    ) -> ReaderOpNode {
        ReaderOpNode { key, order, writer }
    }
}

impl Operator for ReaderOpNode {
    fn name(&self) -> &'static str {
        "reader"
    }

    fn process(&mut self, _input: usize, batch: Batch) -> Batch {
        for record in batch {
            let op = match record {
                Record::Row { row, diff } => ReaderOp::Row {
                    key: Key::from_values(self.key.iter().map(|&i| row.get(i).unwrap_or(&NULL))),
                    row: SortedRow {
                        order: Arc::clone(&self.order),
                        row: row.into(),
                    },
                    diff,
                },
                Record::Poison { row, diff } => {
                    let parts: Option<Vec<&Value>> =
                        self.key.iter().map(|&i| row.get(i)?.as_ref()).collect();
                    if parts.is_none() {
                        tracing::debug!("reader key not computable; poisoning whole reader");
                    }
                    ReaderOp::Poison {
                        key: parts.map(Key::from_values),
                        diff,
                    }
                }
            };
            self.writer.append(op);
        }
        Vec::new()
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}
