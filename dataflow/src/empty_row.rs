//! The row a reader answers for a key without rows ([`EmptyKeyRow`]): a keyed aggregate
//! without GROUP BY, where SQL returns one row (`COUNT` 0, the other aggregates NULL) even
//! when nothing matches, but the Aggregate has no group for the key.
//!
//! [`EmptyRow::compile`] checks the plan's shape: the Aggregate's group columns are exactly
//! the reader key (passed up unchanged), and only Projects sit above it. A Filter there is
//! refused: a key whose row it dropped would look like a key without rows.

use larder_sql::plan::{CachePlan, EmptyKeyRow, Expr, NodeOp};
use larder_sql::value::{Row, Value};

use crate::error::{EvalError, GraphError};
use crate::eval::{CompiledExpr, ExprContext};
use crate::ops::accum::{AccKind, Accumulator};

/// The compiled recipe of the empty-key row.
#[derive(Debug)]
pub(crate) struct EmptyRow {
    /// For each reader key part, the Aggregate output (group) column it fills.
    key_columns: Vec<usize>,
    /// The Aggregate's row over no input, with NULL in the group columns.
    base: Vec<Value>,
    /// The Projects above the Aggregate, bottom up.
    projects: Vec<Vec<CompiledExpr>>,
}

fn invalid(msg: impl Into<String>) -> GraphError {
    GraphError::InvalidPlan(format!("empty_key_row: {}", msg.into()))
}

impl EmptyRow {
    /// Validates `spec` against `plan` (whose nodes and key are already validated).
    pub(crate) fn compile(plan: &CachePlan, spec: &EmptyKeyRow) -> Result<EmptyRow, GraphError> {
        let agg = spec.aggregate;
        let Some(node) = plan.nodes.get(agg) else {
            return Err(invalid(format!("node {agg} out of range")));
        };
        let NodeOp::Aggregate {
            input,
            group_by,
            aggregates,
        } = &node.op
        else {
            return Err(invalid(format!("node {agg} is not an Aggregate")));
        };
        if plan.key.is_empty() {
            return Err(invalid("the reader has no key"));
        }
        let input_types = plan
            .nodes
            .get(*input)
            .map_or(&[][..], |n| n.types.as_slice());
        let mut base = vec![Value::Null; group_by.len()];
        for a in aggregates {
            let arg_ty = a.arg.and_then(|c| input_types.get(c));
            let value = AccKind::for_input(a.func, arg_ty)
                .and_then(|(kind, _)| Accumulator::new(kind, a.distinct).value(0).ok())
                .ok_or_else(|| invalid(format!("{:?} over {arg_ty:?}", a.func)))?;
            base.push(value);
        }
        let mut projects = Vec::new();
        for (i, n) in plan.nodes.iter().enumerate().skip(agg + 1) {
            match &n.op {
                NodeOp::Project { input, exprs } if *input + 1 == i => {
                    let ctx = ExprContext {
                        columns: &plan.nodes[*input].types,
                        params: None,
                    };
                    let compiled = exprs
                        .iter()
                        .map(|e| CompiledExpr::compile(e, &ctx))
                        .collect::<Result<Vec<_>, _>>()?;
                    projects.push(compiled);
                }
                _ => {
                    return Err(invalid(format!(
                        "node {i} above the Aggregate is not a Project of the node before it"
                    )))
                }
            }
        }
        let key_columns = key_columns(plan, agg, group_by.len())?;
        Ok(EmptyRow {
            key_columns,
            base,
            projects,
        })
    }

    /// The reader row of a key without rows; `key` holds the key's values in key order.
    pub(crate) fn row(&self, key: &[&Value]) -> Result<Row, EvalError> {
        let mut row = self.base.clone();
        for (&col, value) in self.key_columns.iter().zip(key) {
            if let Some(slot) = row.get_mut(col) {
                *slot = (*value).clone();
            }
        }
        for exprs in &self.projects {
            row = exprs
                .iter()
                .map(|e| e.eval(&row, &[]).map(|v| v.into_owned()))
                .collect::<Result<Row, _>>()?;
        }
        Ok(row)
    }
}

/// Traces each reader key column down the Projects to the Aggregate: it must arrive at a
/// group column, and every group column must be reached by exactly one key column.
fn key_columns(plan: &CachePlan, agg: usize, groups: usize) -> Result<Vec<usize>, GraphError> {
    let mut out = Vec::with_capacity(plan.key.len());
    for &k in &plan.key {
        let mut col = k;
        for i in (agg + 1..plan.nodes.len()).rev() {
            col = match &plan.nodes[i].op {
                NodeOp::Project { exprs, .. } => match exprs.get(col) {
                    Some(Expr::Column(c)) => *c,
                    _ => {
                        return Err(invalid(format!(
                            "key column {k} is not passed up unchanged from the Aggregate"
                        )))
                    }
                },
                _ => return Err(invalid(format!("node {i} is not a Project"))),
            };
        }
        if col >= groups {
            return Err(invalid(format!(
                "key column {k} is not a group column of the Aggregate"
            )));
        }
        if out.contains(&col) {
            return Err(invalid(format!("group column {col} is keyed twice")));
        }
        out.push(col);
    }
    if out.len() != groups {
        return Err(invalid("some group column of the Aggregate is not keyed"));
    }
    Ok(out)
}
