//! `UNION [ALL]`: branches lowered as relations, cast to the common column types, combined
//! by a Union node (plus Distinct for `UNION`). Names come from the first branch; ORDER BY
//! over the result names output columns by position or name.

use sqlparser::ast::{
    Expr as AExpr, OrderByKind, OrderBySort, Query, SetExpr, SetOperator, SetQuantifier,
    Value as AstValue,
};

use super::graph::{check_hashable, Graph, Rel};
use super::reader::ReaderParts;
use super::select::{lower_query_rel, Opts, Sel};
use super::types::union_type;
use super::util::strip_nested;
use super::{body_kind, lower_limit, unsupported};
use crate::error::Unsupported;
use crate::plan::{CachePlan, NodeOp, OrderKey, OutputColumn};

const IN_UNION: &str = "in a UNION";

/// The query is a UNION: the reader sits on the union (no keys, no residual).
pub(super) fn lower_top_setop(g: &mut Graph<'_>, query: &Query) -> Result<CachePlan, Unsupported> {
    let rel = setop_rel(g, &query.body)?;
    let order_by = union_order(query, &rel)?;
    let (offset, limit) = lower_limit(query)?;
    if let Some(limit) = limit {
        let top = offset.saturating_add(limit);
        if !order_by.is_empty() && top > 0 {
            let op = NodeOp::TopK {
                input: rel.node,
                group_by: Vec::new(),
                order: order_by.clone(),
                limit: top,
            };
            g.push(op, rel.types.clone());
        }
    }
    let output = rel
        .names
        .iter()
        .zip(&rel.types)
        .enumerate()
        .map(|(column, (name, ty))| OutputColumn {
            column,
            name: name.clone(),
            ty: ty.clone(),
        })
        .collect();
    ReaderParts {
        key: Vec::new(),
        key_params: Vec::new(),
        residual: None,
        order_by,
        offset,
        limit,
        output,
        single_value_params: Vec::new(),
        empty_key_row: None,
    }
    .into_plan(g)
}

/// A UNION used inside another query (a derived table, a CTE, an IN subquery).
pub(super) fn lower_setop_query(g: &mut Graph<'_>, query: &Query) -> Result<Rel, Unsupported> {
    let rel = setop_rel(g, &query.body)?;
    let order = union_order(query, &rel)?;
    let (offset, limit) = lower_limit(query)?;
    if offset > 0 {
        return Err(unsupported("OFFSET in a subquery is not supported"));
    }
    let Some(limit) = limit else {
        return Ok(rel);
    };
    if order.is_empty() {
        return Err(unsupported(
            "LIMIT without ORDER BY in a subquery is not supported",
        ));
    }
    let op = NodeOp::TopK {
        input: rel.node,
        group_by: Vec::new(),
        order,
        limit,
    };
    let node = g.push(op, rel.types.clone());
    Ok(Rel { node, ..rel })
}

fn setop_rel(g: &mut Graph<'_>, body: &SetExpr) -> Result<Rel, Unsupported> {
    let SetExpr::SetOperation {
        op, set_quantifier, ..
    } = body
    else {
        return branch(g, body);
    };
    if *op != SetOperator::Union {
        return Err(unsupported(format!(
            "{} is not supported yet",
            op.to_string().to_uppercase()
        )));
    }
    let all = quantifier_all(set_quantifier)?;
    let mut leaves = Vec::new();
    flatten(body, all, &mut leaves)?;
    let mut rels = Vec::with_capacity(leaves.len());
    for leaf in leaves {
        rels.push(branch(g, leaf)?);
    }
    let width = rels[0].types.len();
    if rels.iter().any(|r| r.types.len() != width) {
        return Err(unsupported(
            "each UNION query must have the same number of columns",
        ));
    }
    let mut types = rels[0].types.clone();
    for r in &rels[1..] {
        for (t, u) in types.iter_mut().zip(&r.types) {
            *t = union_type(t, u)?;
        }
    }
    if !all {
        for t in &types {
            check_hashable(t, "UNION")?;
        }
    }
    let inputs = rels.iter().map(|r| g.cast_to(r.node, &types)).collect();
    let mut node = g.push(NodeOp::Union { inputs }, types.clone());
    if !all {
        node = g.push(NodeOp::Distinct { input: node }, types.clone());
    }
    Ok(Rel {
        node,
        names: rels.swap_remove(0).names,
        types,
    })
}

fn quantifier_all(q: &SetQuantifier) -> Result<bool, Unsupported> {
    match q {
        SetQuantifier::All => Ok(true),
        SetQuantifier::Distinct | SetQuantifier::None => Ok(false),
        _ => Err(unsupported("UNION BY NAME is not supported")),
    }
}

/// The branches of nested UNIONs of the same kind (`a UNION b UNION c`).
fn flatten<'q>(
    body: &'q SetExpr,
    all: bool,
    out: &mut Vec<&'q SetExpr>,
) -> Result<(), Unsupported> {
    match body {
        SetExpr::SetOperation {
            op: SetOperator::Union,
            set_quantifier,
            left,
            right,
        } if quantifier_all(set_quantifier)? == all => {
            flatten(left, all, out)?;
            flatten(right, all, out)
        }
        other => {
            out.push(other);
            Ok(())
        }
    }
}

fn branch(g: &mut Graph<'_>, body: &SetExpr) -> Result<Rel, Unsupported> {
    body_kind(body)?;
    match body {
        SetExpr::Select(select) => {
            let opts = Opts {
                top: false,
                place: IN_UNION,
                outer: None,
            };
            let (rel, _) = Sel::build(g, select, None, opts)?.finish_rel(None, 0, None)?;
            Ok(rel)
        }
        SetExpr::Query(q) => Ok(lower_query_rel(g, q, IN_UNION, None)?.0),
        SetExpr::SetOperation { .. } => setop_rel(g, body),
        _ => Err(unsupported("only SELECT statements can be cached")),
    }
}

/// ORDER BY over a UNION: output positions or names only.
fn union_order(query: &Query, rel: &Rel) -> Result<Vec<OrderKey>, Unsupported> {
    let Some(order_by) = &query.order_by else {
        return Ok(Vec::new());
    };
    let OrderByKind::Expressions(exprs) = &order_by.kind else {
        return Err(unsupported("ORDER BY ALL is not supported"));
    };
    let refuse = || unsupported("ORDER BY on a UNION result must be on one of the result columns");
    let mut keys = Vec::with_capacity(exprs.len());
    for obe in exprs {
        let descending = match &obe.options.sort {
            None | Some(OrderBySort::Asc) => false,
            Some(OrderBySort::Desc) => true,
            Some(OrderBySort::Using(_)) => {
                return Err(unsupported("ORDER BY ... USING is not supported"))
            }
        };
        let column = match strip_nested(&obe.expr) {
            AExpr::Value(v) => match &v.value {
                AstValue::Number(n, _) => n
                    .parse::<usize>()
                    .ok()
                    .and_then(|p| p.checked_sub(1))
                    .filter(|i| *i < rel.types.len())
                    .ok_or_else(|| {
                        unsupported(format!("ORDER BY position {n} is not in the select list"))
                    })?,
                _ => return Err(refuse()),
            },
            AExpr::Identifier(id) => rel
                .names
                .iter()
                .position(|n| *n == id.value)
                .ok_or_else(refuse)?,
            _ => return Err(refuse()),
        };
        keys.push(OrderKey {
            column,
            descending,
            nulls_first: obe.options.nulls_first.unwrap_or(descending),
        });
    }
    Ok(keys)
}
