//! Stateless operators: filter, project and union.

use std::any::Any;

use larder_sql::value::{Row, Value};

use super::{Batch, Operator, Record};
use crate::eval::CompiledExpr;

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

/// `UNION ALL`: every input's changes, unchanged.
#[derive(Debug, Default)]
pub struct UnionOp;

impl Operator for UnionOp {
    fn name(&self) -> &'static str {
        "union"
    }

    fn process(&mut self, _input: usize, batch: Batch) -> Batch {
        batch
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}
