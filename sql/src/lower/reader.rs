//! The top of a SELECT: ORDER BY, and either the reader (the plan of the query itself) or a
//! relation for an enclosing query (subquery, CTE, UNION branch).

use sqlparser::ast::{self as ast, Expr as AExpr, OrderByKind, OrderBySort, Value as AstValue};

use super::graph::{Graph, Rel};
use super::select::{Order, Out, Pending, Sel};
use super::types::type_name;
use super::util::{conjunction, map_columns, strip_nested};
use super::{unsupported, ParamMode, Typed};
use crate::error::Unsupported;
use crate::plan::{CachePlan, EmptyKeyRow, Expr, NodeOp, NodeRef, OrderKey, OutputColumn};
use crate::value::SqlType;

impl Sel<'_, '_> {
    // ----- ORDER BY ----------------------------------------------------------------------

    pub fn lower_order_by(
        &mut self,
        order_by: Option<&ast::OrderBy>,
    ) -> Result<Vec<Order>, Unsupported> {
        let Some(order_by) = order_by else {
            return Ok(Vec::new());
        };
        if order_by.interpolate.is_some() {
            return Err(unsupported("ORDER BY ... INTERPOLATE is not supported"));
        }
        let OrderByKind::Expressions(exprs) = &order_by.kind else {
            return Err(unsupported("ORDER BY ALL is not supported"));
        };
        self.l.mode = ParamMode::Refuse("parameters in ORDER BY are not supported");
        let mut keys = Vec::with_capacity(exprs.len());
        for obe in exprs {
            if obe.with_fill.is_some() {
                return Err(unsupported("ORDER BY ... WITH FILL is not supported"));
            }
            let descending = match &obe.options.sort {
                None | Some(OrderBySort::Asc) => false,
                Some(OrderBySort::Desc) => true,
                Some(OrderBySort::Using(_)) => {
                    return Err(unsupported("ORDER BY ... USING is not supported"))
                }
            };
            let t = self.order_item(&obe.expr)?;
            check_orderable(&t.ty)?;
            if self.distinct && !self.outputs.iter().any(|o| o.expr == t.expr) {
                return Err(unsupported(
                    "for SELECT DISTINCT, ORDER BY expressions must appear in select list",
                ));
            }
            keys.push(Order {
                t,
                descending,
                nulls_first: obe.options.nulls_first.unwrap_or(descending),
            });
        }
        Ok(keys)
    }

    /// What an ORDER BY item sorts on: a position in the SELECT list, an output column name
    /// (which wins over input columns, as in Postgres), or an expression.
    fn order_item(&mut self, e: &AExpr) -> Result<Typed, Unsupported> {
        let out = |o: &Out| Typed {
            expr: o.expr.clone(),
            ty: o.ty.clone(),
        };
        match strip_nested(e) {
            AExpr::Value(v) => match &v.value {
                AstValue::Number(n, _) => {
                    return n
                        .parse::<usize>()
                        .ok()
                        .and_then(|p| p.checked_sub(1))
                        .and_then(|i| self.outputs.get(i))
                        .map(out)
                        .ok_or_else(|| {
                            unsupported(format!("ORDER BY position {n} is not in the select list"))
                        });
                }
                AstValue::Placeholder(_) => {
                    return Err(unsupported("parameters in ORDER BY are not supported"))
                }
                _ => {}
            },
            AExpr::Identifier(id) => {
                let scope = &self.l.scope;
                let named: Vec<&Out> = self
                    .outputs
                    .iter()
                    .filter(|o| scope.eq(&o.name, &id.value))
                    .collect();
                match named.as_slice() {
                    [o] => return Ok(out(o)),
                    [first, rest @ ..] if rest.iter().all(|o| o.expr == first.expr) => {
                        return Ok(out(first))
                    }
                    [_, ..] => {
                        return Err(unsupported(format!(
                            "ORDER BY \"{}\" is ambiguous",
                            id.value
                        )))
                    }
                    [] => {}
                }
            }
            _ => {}
        }
        self.l.expr(e, None)
    }

    // ----- the result --------------------------------------------------------------------

    /// The SELECT's row after GROUP BY/HAVING.
    fn finish_row(&mut self) -> NodeRef {
        if !self.has_agg {
            return self.node;
        }
        let node = self.l.build_aggregate(self.node);
        let having = conjunction(std::mem::take(&mut self.having));
        self.l.g.filter(node, having)
    }

    fn row_types(&self) -> Vec<SqlType> {
        match &self.l.agg {
            Some(ctx) => ctx.output_types(),
            None => self.l.scope.types.clone(),
        }
    }

    /// The plan: the SELECT's row, a Project of what the reader keeps, DISTINCT, and a TopK
    /// when the reader needs only the first rows per key.
    pub fn finish_top(
        mut self,
        order: Vec<Order>,
        offset: usize,
        limit: Option<usize>,
    ) -> Result<CachePlan, Unsupported> {
        debug_assert!(self.top);
        let row = self.finish_row();
        // Keyed aggregate without GROUP BY: HAVING went to the residual, so `row` is the
        // Aggregate itself.
        let empty_key_row = self.empty_key.then_some(EmptyKeyRow { aggregate: row });
        let mut m = Materialized::new(self.row_types());
        let (mut key, mut key_params, mut residual) = (Vec::new(), Vec::new(), Vec::new());
        for p in std::mem::take(&mut self.pending) {
            match p {
                Pending::Key(e, slot) => {
                    key.push(m.add(e));
                    key_params.push(slot);
                }
                Pending::Residual(e) => residual.push(m.over(e)),
            }
        }
        let output: Vec<OutputColumn> = std::mem::take(&mut self.outputs)
            .into_iter()
            .map(|o| OutputColumn {
                column: m.add_typed(o.expr, o.ty.clone()),
                name: o.name,
                ty: o.ty,
            })
            .collect();
        let order_by: Vec<OrderKey> = order
            .into_iter()
            .map(|o| OrderKey {
                column: m.add_typed(o.t.expr, o.t.ty),
                descending: o.descending,
                nulls_first: o.nulls_first,
            })
            .collect();
        let g = &mut *self.l.g;
        let types = m.types.clone();
        let mut node = g.project(row, m.exprs, m.types);
        if self.distinct {
            node = g.push(NodeOp::Distinct { input: node }, types.clone());
        }
        let residual = conjunction(residual);
        if let (Some(limit), None) = (limit, &empty_key_row) {
            let top = offset.saturating_add(limit);
            if residual.is_none() && !order_by.is_empty() && top > 0 {
                let op = NodeOp::TopK {
                    input: node,
                    group_by: key.clone(),
                    order: order_by.clone(),
                    limit: top,
                };
                g.push(op, types);
            }
        }
        let reader = ReaderParts {
            key,
            key_params,
            residual,
            order_by,
            offset,
            limit,
            output,
            single_value_params: std::mem::take(&mut self.single_value),
            empty_key_row,
        };
        reader.into_plan(g)
    }

    /// A relation for an enclosing query: the SELECT list (then the correlation columns),
    /// DISTINCT, and ORDER BY ... LIMIT as a TopK.
    pub fn finish_rel(
        mut self,
        order_by: Option<&ast::OrderBy>,
        offset: usize,
        limit: Option<usize>,
    ) -> Result<(Rel, Vec<(usize, usize)>), Unsupported> {
        if offset > 0 {
            return Err(unsupported("OFFSET in a subquery is not supported"));
        }
        if !self.corr.is_empty() && (self.has_agg || limit.is_some()) {
            return Err(unsupported(
                "correlated subqueries with aggregates or LIMIT are not supported",
            ));
        }
        let order = match limit {
            Some(_) => self.lower_order_by(order_by)?,
            None => Vec::new(),
        };
        let row = self.finish_row();
        let row_types = self.row_types();
        let mut exprs: Vec<Expr> = self.outputs.iter().map(|o| o.expr.clone()).collect();
        let mut types: Vec<SqlType> = self.outputs.iter().map(|o| o.ty.clone()).collect();
        let mut names: Vec<String> = self.outputs.iter().map(|o| o.name.clone()).collect();
        let mut corr = Vec::with_capacity(self.corr.len());
        for &(inner, outer) in &self.corr {
            corr.push((exprs.len(), outer));
            exprs.push(Expr::Column(inner));
            types.push(row_types[inner].clone());
            names.push(self.l.scope.names[inner].clone());
        }
        // Sort columns not in the SELECT list ride along until the TopK (never with
        // DISTINCT, where ORDER BY must name output columns).
        let visible = exprs.len();
        let mut keys = Vec::with_capacity(order.len());
        for o in order {
            let column = match exprs.iter().position(|x| *x == o.t.expr) {
                Some(c) => c,
                None => {
                    exprs.push(o.t.expr);
                    types.push(o.t.ty);
                    exprs.len() - 1
                }
            };
            keys.push(OrderKey {
                column,
                descending: o.descending,
                nulls_first: o.nulls_first,
            });
        }
        let g = &mut *self.l.g;
        let plain: Option<Vec<usize>> = exprs
            .iter()
            .map(|e| match e {
                Expr::Column(c) => Some(*c),
                _ => None,
            })
            .collect();
        let mut node = match plain {
            Some(cols) => g.select_columns(row, &cols),
            None => g.project(row, exprs, types.clone()),
        };
        if self.distinct {
            node = g.push(NodeOp::Distinct { input: node }, types.clone());
        }
        if let Some(limit) = limit {
            if keys.is_empty() {
                return Err(unsupported(
                    "LIMIT without ORDER BY in a subquery is not supported",
                ));
            }
            let op = NodeOp::TopK {
                input: node,
                group_by: Vec::new(),
                order: keys,
                limit,
            };
            node = g.push(op, types.clone());
            let keep: Vec<usize> = (0..visible).collect();
            node = g.select_columns(node, &keep);
            types.truncate(visible);
        }
        Ok((Rel { node, names, types }, corr))
    }
}

/// The reader's columns: distinct expressions over the SELECT's row.
struct Materialized {
    row_types: Vec<SqlType>,
    exprs: Vec<Expr>,
    types: Vec<SqlType>,
}

impl Materialized {
    fn new(row_types: Vec<SqlType>) -> Self {
        Materialized {
            row_types,
            exprs: Vec::new(),
            types: Vec::new(),
        }
    }

    fn add_typed(&mut self, expr: Expr, ty: SqlType) -> usize {
        if let Some(i) = self.exprs.iter().position(|e| *e == expr) {
            return i;
        }
        self.exprs.push(expr);
        self.types.push(ty);
        self.exprs.len() - 1
    }

    /// A row column (keys are plain columns).
    fn add(&mut self, expr: Expr) -> usize {
        let ty = match &expr {
            Expr::Column(c) => self.row_types[*c].clone(),
            _ => SqlType::Text,
        };
        self.add_typed(expr, ty)
    }

    /// Rewrites an expression over the row into one over the reader's columns.
    fn over(&mut self, expr: Expr) -> Expr {
        map_columns(expr, &mut |c| self.add(Expr::Column(c)))
    }
}

/// The reader part of a plan.
pub(super) struct ReaderParts {
    pub key: Vec<usize>,
    pub key_params: Vec<usize>,
    pub residual: Option<Expr>,
    pub order_by: Vec<OrderKey>,
    pub offset: usize,
    pub limit: Option<usize>,
    pub output: Vec<OutputColumn>,
    pub single_value_params: Vec<usize>,
    pub empty_key_row: Option<EmptyKeyRow>,
}

impl ReaderParts {
    pub fn into_plan(self, g: &mut Graph<'_>) -> Result<CachePlan, Unsupported> {
        let mut param_types = Vec::with_capacity(g.param_types.len());
        for (i, ty) in g.param_types.iter().enumerate() {
            match ty {
                Some(ty) => param_types.push(ty.clone()),
                // A literal in a part of the query that nothing reads (an unreferenced CTE):
                // whatever its value, the result is the same; it is read by its own kind.
                None if matches!(
                    g.sources.get(i),
                    Some(crate::normalize::ParamSource::Literal(_))
                ) =>
                {
                    use crate::normalize::{Literal, ParamSource};
                    param_types.push(match g.sources.get(i) {
                        Some(ParamSource::Literal(Literal::Number(_))) => SqlType::Numeric,
                        Some(ParamSource::Literal(Literal::Bool(_))) => SqlType::Bool,
                        _ => SqlType::Text,
                    })
                }
                None => {
                    return Err(unsupported(format!(
                        "parameter ${} is not used in a supported position",
                        i + 1
                    )))
                }
            }
        }
        let mut fixed_params = std::mem::take(&mut g.fixed);
        fixed_params.sort_by_key(|(slot, _)| *slot);
        let mut single_value_params = self.single_value_params;
        single_value_params.sort_unstable();
        single_value_params.dedup();
        let reader_types = g.nodes.last().map(|n| n.types.clone()).unwrap_or_default();
        let range = match self.empty_key_row {
            None => super::range::range_of(self.residual.as_ref(), &reader_types, &param_types),
            Some(_) => None,
        };
        let plan = CachePlan {
            relations: std::mem::take(&mut g.relations),
            nodes: std::mem::take(&mut g.nodes),
            key: self.key,
            key_params: self.key_params,
            residual: self.residual,
            order_by: self.order_by,
            offset: self.offset,
            limit: self.limit,
            output: self.output,
            param_types,
            fixed_params,
            single_value_params,
            empty_key_row: self.empty_key_row,
            range,
            key_collations: Vec::new(),
        };
        let width = plan.reader_types().len();
        debug_assert_eq!(plan.key.len(), plan.key_params.len());
        debug_assert!(plan.key.iter().all(|k| *k < width));
        debug_assert!(plan.output.iter().all(|o| o.column < width));
        debug_assert!(plan.order_by.iter().all(|o| o.column < width));
        debug_assert!(plan.empty_key_row.as_ref().is_none_or(|e| matches!(
            plan.nodes.get(e.aggregate).map(|n| &n.op),
            Some(NodeOp::Aggregate { .. })
        )));
        Ok(plan)
    }
}

fn check_orderable(ty: &SqlType) -> Result<(), Unsupported> {
    if matches!(ty, SqlType::Json | SqlType::Jsonb | SqlType::Array(_)) {
        return Err(unsupported(format!(
            "ORDER BY on a {} value is not supported",
            type_name(ty)
        )));
    }
    Ok(())
}
