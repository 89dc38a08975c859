//! GROUP BY and aggregate functions.
//!
//! Grouping columns are lowered over the FROM row first. Once the aggregate context is
//! installed, every expression of HAVING, the SELECT list and ORDER BY is lowered over the
//! Aggregate's output (the group columns, then one column per aggregate): a subexpression
//! equal to a GROUP BY expression becomes its group column, an aggregate call becomes its
//! aggregate column, and any other column reference is refused as Postgres does.

use sqlparser::ast::{
    self as ast, DuplicateTreatment, Expr as AExpr, FunctionArg, FunctionArgExpr,
    FunctionArguments, GroupByExpr, SelectItem, Value as AstValue,
};

use super::graph::check_hashable;
use super::types::type_name;
use super::util::{function_name, mentions_columns, strip_nested, AGGREGATES};
use super::{unsupported, Lowerer, ParamMode, Typed};
use crate::error::Unsupported;
use crate::plan::{AggFunc, Aggregate, Expr, NodeOp, NodeRef};
use crate::value::{SqlType, Value};

const BELOW_AGGREGATE: &str = "below an aggregate";

/// One aggregate call: its input expression is over the FROM row.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct AggItem {
    pub func: AggFunc,
    pub arg: Option<Expr>,
    pub distinct: bool,
    pub ty: SqlType,
    /// Type of `arg`.
    pub arg_ty: SqlType,
}

#[derive(Clone, Debug, Default)]
pub(super) struct AggCtx {
    /// GROUP BY expressions over the FROM row.
    pub groups: Vec<Expr>,
    pub group_types: Vec<SqlType>,
    /// The last `key_groups` of `groups` are FROM-row columns added for reader keys (a WHERE
    /// equality on a column the query does not group by): the query cannot name them.
    pub key_groups: usize,
    pub aggs: Vec<AggItem>,
    /// Set while lowering over the FROM row (an aggregate's argument, a GROUP BY candidate).
    pub inside: bool,
}

impl AggCtx {
    /// The GROUP BY expressions of the query itself (what the SELECT list may name).
    pub fn named_groups(&self) -> &[Expr] {
        &self.groups[..self.groups.len().saturating_sub(self.key_groups)]
    }

    /// Groups by FROM-row column `col` too, for a reader key; returns its group column.
    pub fn add_key_group(&mut self, col: usize, ty: SqlType) -> usize {
        self.groups.push(Expr::Column(col));
        self.group_types.push(ty);
        self.key_groups += 1;
        self.groups.len() - 1
    }

    /// Types of the Aggregate's output.
    pub fn output_types(&self) -> Vec<SqlType> {
        let mut t = self.group_types.clone();
        t.extend(self.aggs.iter().map(|a| a.ty.clone()));
        t
    }
}

impl Lowerer<'_, '_> {
    /// Lowers GROUP BY over the FROM row. Items may be select-list positions or output
    /// names (an input column of that name wins, as in Postgres).
    pub fn lower_group_by(&mut self, select: &ast::Select) -> Result<AggCtx, Unsupported> {
        let exprs = match &select.group_by {
            GroupByExpr::All(_) => return Err(unsupported("GROUP BY ALL is not supported")),
            GroupByExpr::Expressions(exprs, _) => exprs,
        };
        let mut ctx = AggCtx::default();
        let saved = (self.mode, self.no_agg);
        self.mode = ParamMode::Fixed(BELOW_AGGREGATE);
        self.no_agg = "aggregate functions are not allowed in GROUP BY";
        for e in exprs {
            let target = self.group_target(e, &select.projection)?;
            let t = self.expr(target, None)?;
            check_hashable(&t.ty, "GROUP BY")?;
            if !ctx.groups.contains(&t.expr) {
                ctx.groups.push(t.expr);
                ctx.group_types.push(t.ty);
            }
        }
        (self.mode, self.no_agg) = saved;
        Ok(ctx)
    }

    /// The expression a GROUP BY item stands for.
    fn group_target<'e>(
        &self,
        e: &'e AExpr,
        items: &'e [SelectItem],
    ) -> Result<&'e AExpr, Unsupported> {
        let item_expr = |item: &'e SelectItem| match item {
            SelectItem::UnnamedExpr(x) | SelectItem::ExprWithAlias { expr: x, .. } => Ok(x),
            _ => Err(unsupported(
                "GROUP BY position of a * item is not supported",
            )),
        };
        match strip_nested(e) {
            AExpr::GroupingSets(_) | AExpr::Rollup(_) | AExpr::Cube(_) => Err(unsupported(
                "GROUPING SETS, ROLLUP and CUBE are not supported",
            )),
            AExpr::Value(v) => match &v.value {
                AstValue::Number(n, _) => n
                    .parse::<usize>()
                    .ok()
                    .and_then(|p| p.checked_sub(1))
                    .and_then(|i| items.get(i))
                    .ok_or_else(|| {
                        unsupported(format!("GROUP BY position {n} is not in select list"))
                    })
                    .and_then(item_expr),
                _ => Ok(e),
            },
            AExpr::Identifier(id)
                if self
                    .scope
                    .try_column(std::slice::from_ref(id))
                    .ok()
                    .flatten()
                    .is_none() =>
            {
                let aliased = items.iter().find_map(|item| match item {
                    SelectItem::ExprWithAlias { expr, alias }
                        if self.scope.eq(&alias.value, &id.value) =>
                    {
                        Some(expr)
                    }
                    _ => None,
                });
                Ok(aliased.unwrap_or(e))
            }
            _ => Ok(e),
        }
    }

    /// In an aggregate context, lowers `e` if it is an aggregate call or a GROUP BY
    /// expression; refuses an ungrouped column. `None`: lower `e` structurally.
    pub fn grouped(
        &mut self,
        e: &AExpr,
        hint: Option<&SqlType>,
    ) -> Result<Option<Typed>, Unsupported> {
        let Some(ctx) = &self.agg else {
            return Ok(None);
        };
        if ctx.inside || matches!(e, AExpr::Nested(_)) {
            return Ok(None);
        }
        if let AExpr::Function(f) = e {
            let name = function_name(f)?;
            if f.over.is_none() && AGGREGATES.contains(&name.as_str()) {
                return self.aggregate_call(f, &name).map(Some);
            }
        }
        if !mentions_columns(e) {
            return Ok(None);
        }
        // Try `e` as an expression over the FROM row that is grouped on.
        let saved_types = self.g.param_types.clone();
        let saved_fixed = self.g.fixed.len();
        let attempt = self.over_input(|l| l.expr(e, hint));
        if let Ok(t) = attempt {
            let ctx = self.agg.as_ref().expect("aggregate context");
            if let Some(g) = ctx.named_groups().iter().position(|x| *x == t.expr) {
                return Ok(Some(Typed {
                    expr: Expr::Column(g),
                    ty: t.ty,
                }));
            }
            if let Expr::Column(c) = t.expr {
                return Err(unsupported(format!(
                    "column \"{}\" must appear in the GROUP BY clause or be used in an aggregate function",
                    self.scope.qualified_name(c)
                )));
            }
        }
        self.g.param_types = saved_types;
        self.g.fixed.truncate(saved_fixed);
        if let AExpr::Identifier(_) | AExpr::CompoundIdentifier(_) = e {
            // The column does not resolve: report why.
            return self.over_input(|l| l.expr(e, hint)).map(Some);
        }
        Ok(None)
    }

    /// Runs `f` with expressions lowered over the FROM row.
    fn over_input<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> T {
        let was = self.agg.as_ref().is_some_and(|c| c.inside);
        if let Some(c) = &mut self.agg {
            c.inside = true;
        }
        let out = f(self);
        if let Some(c) = &mut self.agg {
            c.inside = was;
        }
        out
    }

    fn aggregate_call(&mut self, f: &ast::Function, name: &str) -> Result<Typed, Unsupported> {
        let func = match name {
            "count" => AggFunc::Count,
            "sum" => AggFunc::Sum,
            "avg" => AggFunc::Avg,
            "min" => AggFunc::Min,
            "max" => AggFunc::Max,
            other => {
                return Err(unsupported(format!(
                    "aggregate function {other}() is not supported"
                )))
            }
        };
        if f.filter.is_some() {
            return Err(unsupported(format!(
                "FILTER in aggregate {name}() is not supported"
            )));
        }
        if !f.within_group.is_empty() {
            return Err(unsupported("WITHIN GROUP is not supported"));
        }
        if !matches!(f.parameters, FunctionArguments::None) || f.null_treatment.is_some() {
            return Err(unsupported(format!(
                "aggregate {name}() with modifiers is not supported"
            )));
        }
        let FunctionArguments::List(list) = &f.args else {
            return Err(unsupported(format!("{name}() takes one argument")));
        };
        if !list.clauses.is_empty() {
            return Err(unsupported(format!(
                "ORDER BY inside aggregate {name}() is not supported"
            )));
        }
        let distinct = matches!(list.duplicate_treatment, Some(DuplicateTreatment::Distinct));
        let arg = match list.args.as_slice() {
            [FunctionArg::Unnamed(FunctionArgExpr::Wildcard)]
                if func == AggFunc::Count && !distinct =>
            {
                None
            }
            [FunctionArg::Unnamed(FunctionArgExpr::Expr(a))] => Some(self.aggregate_arg(a)?),
            _ => return Err(unsupported(format!("{name}() takes one argument"))),
        };
        // `count(1)`: a non-NULL constant counts every row.
        let arg = match arg {
            Some(Typed {
                expr: Expr::Literal(v),
                ..
            }) if func == AggFunc::Count && !distinct && v != Value::Null => None,
            Some(Typed {
                expr: Expr::Literal(_),
                ..
            }) => {
                return Err(unsupported(format!(
                    "{name}() of a constant is not supported"
                )))
            }
            other => other,
        };
        let ty = aggregate_type(func, name, arg.as_ref().map(|t| &t.ty))?;
        if let (true, Some(t)) = (distinct, &arg) {
            check_hashable(&t.ty, &format!("{name}(DISTINCT ...)"))?;
        }
        let arg_ty = arg.as_ref().map_or(SqlType::Int8, |t| t.ty.clone());
        let item = AggItem {
            func,
            arg_ty,
            arg: arg.map(|t| t.expr),
            // The extremes of the distinct values are the extremes of all values.
            distinct: distinct && !matches!(func, AggFunc::Min | AggFunc::Max),
            ty: ty.clone(),
        };
        let ctx = self.agg.as_mut().expect("aggregate context");
        let j = match ctx.aggs.iter().position(|a| *a == item) {
            Some(j) => j,
            None => {
                ctx.aggs.push(item);
                ctx.aggs.len() - 1
            }
        };
        Ok(Typed {
            expr: Expr::Column(ctx.groups.len() + j),
            ty,
        })
    }

    fn aggregate_arg(&mut self, a: &AExpr) -> Result<Typed, Unsupported> {
        let saved = (self.mode, self.no_agg);
        self.mode = ParamMode::Fixed(BELOW_AGGREGATE);
        self.no_agg = "aggregate function calls cannot be nested";
        let t = self.over_input(|l| l.expr(a, None));
        (self.mode, self.no_agg) = saved;
        t
    }

    /// Builds the Aggregate over `input` (the FROM row), with a Project below it when a
    /// group or an argument is an expression.
    pub fn build_aggregate(&mut self, input: NodeRef) -> NodeRef {
        let ctx = self.agg.clone().unwrap_or_default();
        let mut inputs: Vec<Expr> = ctx.groups.clone();
        inputs.extend(ctx.aggs.iter().filter_map(|a| a.arg.clone()));
        let all_columns = inputs.iter().all(|e| matches!(e, Expr::Column(_)));
        // `columns[i]` is the expression the Aggregate's input column `i` holds.
        let (node, columns): (NodeRef, Vec<Expr>) = if all_columns {
            let width = self.scope.types.len();
            (input, (0..width).map(Expr::Column).collect())
        } else {
            let mut exprs: Vec<Expr> = Vec::new();
            let mut types = Vec::new();
            let in_types = self.scope.types.clone();
            for e in &inputs {
                if !exprs.contains(e) {
                    types.push(expr_type(e, &ctx, &in_types));
                    exprs.push(e.clone());
                }
            }
            let node = self.g.project(input, exprs.clone(), types);
            (node, exprs)
        };
        let index = |e: &Expr| columns.iter().position(|x| x == e).unwrap_or(0);
        let op = NodeOp::Aggregate {
            input: node,
            group_by: ctx.groups.iter().map(&index).collect(),
            aggregates: ctx
                .aggs
                .iter()
                .map(|a| Aggregate {
                    func: a.func,
                    arg: a.arg.as_ref().map(&index),
                    distinct: a.distinct,
                })
                .collect(),
        };
        self.g.push(op, ctx.output_types())
    }
}

/// The type of a group or argument expression (known from when it was lowered).
fn expr_type(e: &Expr, ctx: &AggCtx, input: &[SqlType]) -> SqlType {
    if let Some(g) = ctx.groups.iter().position(|x| x == e) {
        return ctx.group_types[g].clone();
    }
    if let Expr::Column(c) = e {
        return input[*c].clone();
    }
    ctx.aggs
        .iter()
        .find(|a| a.arg.as_ref() == Some(e))
        .map(|a| a.arg_ty.clone())
        .unwrap_or(SqlType::Text)
}

/// Result type of an aggregate (see [`AggFunc`]), or why it is refused.
fn aggregate_type(
    func: AggFunc,
    name: &str,
    arg: Option<&SqlType>,
) -> Result<SqlType, Unsupported> {
    use SqlType as S;
    let Some(arg) = arg else {
        return Ok(S::Int8);
    };
    let refuse = || {
        unsupported(format!(
            "{name}() over {} values is not supported",
            type_name(arg)
        ))
    };
    match func {
        AggFunc::Count => Ok(S::Int8),
        AggFunc::Sum | AggFunc::Avg => match arg {
            S::Float4 | S::Float8 => Err(unsupported(format!(
                "{} over floating point cannot be maintained exactly",
                name.to_uppercase()
            ))),
            S::Int2 | S::Int4 if func == AggFunc::Sum => Ok(S::Int8),
            S::Int2 | S::Int4 | S::Int8 | S::Numeric => Ok(S::Numeric),
            _ => Err(refuse()),
        },
        AggFunc::Min | AggFunc::Max => match arg {
            S::Int2
            | S::Int4
            | S::Int8
            | S::Float4
            | S::Float8
            | S::Numeric
            | S::Text
            | S::Varchar
            | S::Name
            | S::Date
            | S::Time
            | S::Timestamp
            | S::TimestampTz => Ok(arg.clone()),
            _ => Err(refuse()),
        },
    }
}
