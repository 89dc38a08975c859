//! Plan validation and compilation: a [`CachePlan`] becomes one operator per plan node plus
//! the reader's read specification. Everything a malformed plan could get wrong (indices,
//! types, shapes) is refused here with [`GraphError::InvalidPlan`], so operators can index
//! rows without checks.

use std::sync::Arc;

use larder_sql::plan::{CachePlan, NodeOp, NodeRef, OrderKey};
use larder_sql::value::SqlType;

use crate::empty_row::EmptyRow;
use crate::error::GraphError;
use crate::eval::{CompiledExpr, ExprContext};
use crate::graph::GraphLimits;
use crate::ops::accum::AccKind;
use crate::ops::aggregate::{AggSpec, AggregateOp};
use crate::ops::distinct::DistinctOp;
use crate::ops::join::JoinOp;
use crate::ops::map::{FilterOp, ProjectOp, UnionOp};
use crate::ops::semijoin::SemiJoinOp;
use crate::ops::topk::TopKOp;
use crate::ops::Operator;
use crate::reader::ReadSpec;

/// One compiled plan node.
pub(crate) enum BuiltNode {
    /// The base table of `plan.relations[relation]` (shared by every cache).
    Base { relation: usize },
    Op {
        op: Box<dyn Operator>,
        inputs: Vec<NodeRef>,
    },
}

pub(crate) struct BuiltPlan {
    pub(crate) nodes: Vec<BuiltNode>,
    pub(crate) key: Vec<usize>,
    pub(crate) order: Arc<[OrderKey]>,
    pub(crate) spec: ReadSpec,
}

fn invalid(msg: impl Into<String>) -> GraphError {
    GraphError::InvalidPlan(msg.into())
}

fn check_cols(
    what: &str,
    cols: impl IntoIterator<Item = usize>,
    width: usize,
) -> Result<(), GraphError> {
    for c in cols {
        if c >= width {
            return Err(invalid(format!(
                "{what} column {c} out of range (width {width})"
            )));
        }
    }
    Ok(())
}

fn check_types(node: usize, got: &[SqlType], want: &[SqlType]) -> Result<(), GraphError> {
    if got != want {
        return Err(invalid(format!(
            "node {node}: output types {got:?} do not match {want:?}"
        )));
    }
    Ok(())
}

/// Validates `plan` against the column types of its relations and compiles it.
pub(crate) fn compile(
    plan: &CachePlan,
    relation_types: &[Vec<SqlType>],
    limits: &GraphLimits,
) -> Result<BuiltPlan, GraphError> {
    if plan.nodes.is_empty() {
        return Err(invalid("plan has no nodes"));
    }
    let mut nodes = Vec::with_capacity(plan.nodes.len());
    for (i, node) in plan.nodes.iter().enumerate() {
        let inputs = node.op.inputs();
        if let Some(bad) = inputs.iter().find(|&&n| n >= i) {
            return Err(invalid(format!(
                "node {i}: input {bad} is not an earlier node"
            )));
        }
        let ty = |n: NodeRef| plan.nodes[n].types.as_slice();
        let out = node.types.as_slice();
        let ctx = |n: NodeRef| ExprContext {
            columns: ty(n),
            params: None,
        };
        let op: Box<dyn Operator> = match &node.op {
            NodeOp::Base { relation } => {
                let table = relation_types.get(*relation).ok_or_else(|| {
                    invalid(format!("node {i}: relation {relation} out of range"))
                })?;
                check_types(i, out, table)?;
                nodes.push(BuiltNode::Base {
                    relation: *relation,
                });
                continue;
            }
            NodeOp::Filter { input, predicate } => {
                check_types(i, out, ty(*input))?;
                Box::new(FilterOp::new(CompiledExpr::compile(
                    predicate,
                    &ctx(*input),
                )?))
            }
            NodeOp::Project { input, exprs } => {
                if exprs.len() != out.len() {
                    return Err(invalid(format!(
                        "node {i}: {} expressions for {} types",
                        exprs.len(),
                        out.len()
                    )));
                }
                let exprs = exprs
                    .iter()
                    .map(|e| CompiledExpr::compile(e, &ctx(*input)))
                    .collect::<Result<Vec<_>, _>>()?;
                Box::new(ProjectOp::new(exprs))
            }
            NodeOp::Join {
                left,
                right,
                kind,
                on,
            } => {
                check_on(i, on, ty(*left).len(), ty(*right).len())?;
                let joined: Vec<SqlType> = ty(*left).iter().chain(ty(*right)).cloned().collect();
                check_types(i, out, &joined)?;
                Box::new(JoinOp::new(*kind, on, ty(*left).len(), ty(*right).len()))
            }
            NodeOp::SemiJoin {
                left,
                right,
                on,
                anti,
                null_aware,
            } => {
                check_on(i, on, ty(*left).len(), ty(*right).len())?;
                if *null_aware && on.len() != 1 {
                    return Err(invalid(format!(
                        "node {i}: null-aware anti-join needs exactly one `on` pair"
                    )));
                }
                check_types(i, out, ty(*left))?;
                Box::new(SemiJoinOp::new(on, *anti, *null_aware, ty(*left).len()))
            }
            NodeOp::Aggregate {
                input,
                group_by,
                aggregates,
            } => {
                let input_types = ty(*input);
                check_cols("group by", group_by.iter().copied(), input_types.len())?;
                check_cols(
                    "aggregate",
                    aggregates.iter().filter_map(|a| a.arg),
                    input_types.len(),
                )?;
                let mut want: Vec<SqlType> =
                    group_by.iter().map(|&g| input_types[g].clone()).collect();
                let mut specs = Vec::with_capacity(aggregates.len());
                for a in aggregates {
                    if a.arg.is_none() && a.distinct {
                        return Err(invalid(format!("node {i}: COUNT(DISTINCT *) is not SQL")));
                    }
                    let arg_ty = a.arg.map(|c| &input_types[c]);
                    let (kind, result) = AccKind::for_input(a.func, arg_ty).ok_or_else(|| {
                        invalid(format!(
                            "node {i}: {:?} over {arg_ty:?} cannot be maintained exactly",
                            a.func
                        ))
                    })?;
                    want.push(result);
                    specs.push(AggSpec {
                        kind,
                        arg: a.arg,
                        distinct: a.distinct,
                    });
                }
                check_types(i, out, &want)?;
                Box::new(AggregateOp::new(group_by.clone(), specs))
            }
            NodeOp::Distinct { input } => {
                check_types(i, out, ty(*input))?;
                Box::new(DistinctOp::new())
            }
            NodeOp::TopK {
                input,
                group_by,
                order,
                limit,
            } => {
                let width = ty(*input).len();
                check_cols("top-k group", group_by.iter().copied(), width)?;
                check_cols("top-k order", order.iter().map(|o| o.column), width)?;
                check_types(i, out, ty(*input))?;
                Box::new(TopKOp::new(group_by.clone(), order.clone(), *limit, width))
            }
            NodeOp::Union { inputs } => {
                if inputs.is_empty() {
                    return Err(invalid(format!("node {i}: union of nothing")));
                }
                for &input in inputs {
                    check_types(i, ty(input), out)?;
                }
                Box::new(UnionOp)
            }
        };
        nodes.push(BuiltNode::Op { op, inputs });
    }
    let reader_types = plan.reader_types();
    let width = reader_types.len();
    if plan.key.len() != plan.key_params.len() {
        return Err(invalid("key and key_params differ in length"));
    }
    check_cols("key", plan.key.iter().copied(), width)?;
    check_cols("order", plan.order_by.iter().map(|o| o.column), width)?;
    check_cols("output", plan.output.iter().map(|o| o.column), width)?;
    let slots = plan.param_types.len();
    if let Some(p) = plan
        .key_params
        .iter()
        .chain(plan.fixed_params.iter().map(|f| &f.0))
        .chain(&plan.single_value_params)
        .find(|&&p| p >= slots)
    {
        return Err(invalid(format!("param slot {p} out of range")));
    }
    if let Some(p) = plan
        .single_value_params
        .iter()
        .find(|p| !plan.key_params.contains(p))
    {
        return Err(invalid(format!(
            "single-value param slot {p} is not a key slot"
        )));
    }
    if !plan.key_collations.is_empty() && plan.key_collations.len() != plan.key.len() {
        return Err(invalid(format!(
            "{} key collations for {} key columns",
            plan.key_collations.len(),
            plan.key.len()
        )));
    }
    let empty_row = plan
        .empty_key_row
        .as_ref()
        .map(|e| EmptyRow::compile(plan, e))
        .transpose()?;
    if plan.range.is_some() && plan.empty_key_row.is_some() {
        return Err(invalid("a range read with an empty-key row"));
    }
    let range = plan
        .range
        .as_ref()
        .map(|r| crate::range::RangeRead::compile(r, reader_types, slots))
        .transpose()?;
    let read_ctx = ExprContext {
        columns: reader_types,
        params: Some(&plan.param_types),
    };
    let residual = plan
        .residual
        .as_ref()
        .map(|r| CompiledExpr::compile(r, &read_ctx))
        .transpose()?;
    let order: Arc<[OrderKey]> = plan.order_by.clone().into();
    let spec = ReadSpec {
        key_params: plan.key_params.clone(),
        fixed_params: plan.fixed_params.clone(),
        single_value_params: plan.single_value_params.clone(),
        empty_row,
        range,
        residual,
        order: Arc::clone(&order),
        offset: plan.offset,
        limit: plan.limit,
        output: plan.output.clone(),
        key_combinations_max: limits.read_key_combinations_max,
        partial: false,
        collations: crate::reader::KeyCollations::of(plan),
    };
    Ok(BuiltPlan {
        nodes,
        key: plan.key.clone(),
        order,
        spec,
    })
}

fn check_on(
    node: usize,
    on: &[(usize, usize)],
    left: usize,
    right: usize,
) -> Result<(), GraphError> {
    if on.is_empty() {
        return Err(invalid(format!("node {node}: join without `on` columns")));
    }
    check_cols("left join", on.iter().map(|p| p.0), left)?;
    check_cols("right join", on.iter().map(|p| p.1), right)
}
