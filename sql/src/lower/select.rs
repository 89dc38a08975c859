//! One SELECT: FROM, WHERE (split into join equalities, keys, filters, residual and
//! semi-joins), GROUP BY/HAVING, the SELECT list and ORDER BY; then either the reader on top
//! (the query itself) or a relation for an enclosing query (a subquery, CTE or UNION branch).

use sqlparser::ast::{
    self as ast, BinaryOperator, Expr as AExpr, Ident, OrderByKind, Query, SelectItem,
    SelectItemQualifiedWildcardKind, SetExpr,
};

use super::aggregate::AggCtx;
use super::from::{lower_from, push_ctes, Item};
use super::graph::{check_hashable, Graph, Rel};
use super::scope::Scope;
use super::subquery::{correlated_refusal, correlation, is_correlated, sub_pred, SubPred};
use super::types::{figure_colname, keyable, sql_type_of, type_name};
use super::util::{
    calls_aggregate, conjunction, contains_param, key_param_of, map_columns, split_conjuncts,
    strip_nested,
};
use super::{
    body_kind, check_query_clauses, check_select_clauses, lower_limit, setop, unsupported, Lowerer,
    ParamMode, Typed,
};
use crate::error::Unsupported;
use crate::normalize::ParamSource;
use crate::plan::{BinaryOp, CachePlan, Expr, JoinKind, NodeRef};
use crate::value::SqlType;

/// Where a SELECT sits.
#[derive(Clone, Copy)]
pub(super) struct Opts<'o> {
    /// The query itself: WHERE may give reader keys and a residual.
    pub top: bool,
    /// Where parameters of a nested SELECT are (for refusals), e.g. "in a subquery".
    pub place: &'static str,
    /// The enclosing query's row, for correlated `EXISTS`/`IN` subqueries.
    pub outer: Option<&'o Scope>,
}

/// A reader key or residual conjunct, over the SELECT's row (the aggregate's output when
/// grouping), materialized into the reader in WHERE order.
pub(super) enum Pending {
    Key(Expr, usize),
    Residual(Expr),
}

pub(super) struct Out {
    pub name: String,
    pub expr: Expr,
    pub ty: SqlType,
}

/// An ORDER BY item over the SELECT's row.
pub(super) struct Order {
    pub t: Typed,
    pub descending: bool,
    pub nulls_first: bool,
}

pub(super) struct Sel<'g, 'a> {
    pub l: Lowerer<'g, 'a>,
    /// The FROM row after WHERE.
    pub node: NodeRef,
    pub pending: Vec<Pending>,
    pub having: Vec<Expr>,
    pub outputs: Vec<Out>,
    /// Correlation equalities of a subquery: (column of this FROM row, outer column).
    pub corr: Vec<(usize, usize)>,
    pub key_cols: Vec<usize>,
    /// Key slots that must hold one value per read (see `CachePlan::single_value_params`).
    pub single_value: Vec<usize>,
    /// An aggregate without GROUP BY grouped by its reader keys: the reader computes the
    /// row of a key without rows (`CachePlan::empty_key_row`).
    pub empty_key: bool,
    pub distinct: bool,
    pub has_agg: bool,
    pub top: bool,
}

/// Lowers the whole query into a plan.
pub(super) fn lower_top(g: &mut Graph<'_>, query: &Query) -> Result<CachePlan, Unsupported> {
    check_query_clauses(query)?;
    body_kind(&query.body)?;
    push_ctes(g, query)?;
    match &*query.body {
        SetExpr::Select(select) => {
            let opts = Opts {
                top: true,
                place: "in a subquery",
                outer: None,
            };
            let mut sel = Sel::build(g, select, query.order_by.as_ref(), opts)?;
            let order = sel.lower_order_by(query.order_by.as_ref())?;
            let (offset, limit) = lower_limit(query)?;
            sel.finish_top(order, offset, limit)
        }
        SetExpr::SetOperation { .. } => setop::lower_top_setop(g, query),
        _ => Err(unsupported(
            "parenthesized subqueries are not supported yet",
        )),
    }
}

/// Lowers a nested query into nodes; with `outer`, its correlation equalities come back as
/// (relation column, outer column) pairs (the relation's last columns).
pub(super) fn lower_query_rel(
    g: &mut Graph<'_>,
    query: &Query,
    place: &'static str,
    outer: Option<&Scope>,
) -> Result<(Rel, Vec<(usize, usize)>), Unsupported> {
    check_query_clauses(query)?;
    body_kind(&query.body)?;
    let saved = g.ctes.len();
    push_ctes(g, query)?;
    let out = match &*query.body {
        SetExpr::Select(select) => {
            let opts = Opts {
                top: false,
                place,
                outer,
            };
            let (offset, limit) = lower_limit(query)?;
            Sel::build(g, select, query.order_by.as_ref(), opts)?.finish_rel(
                query.order_by.as_ref(),
                offset,
                limit,
            )
        }
        SetExpr::SetOperation { .. } => setop::lower_setop_query(g, query).map(|r| (r, Vec::new())),
        SetExpr::Query(inner) => {
            if query.order_by.is_some() || query.limit_clause.is_some() {
                return Err(unsupported(
                    "ORDER BY/LIMIT around a parenthesized query is not supported",
                ));
            }
            lower_query_rel(g, inner, place, outer)
        }
        _ => Err(unsupported("only SELECT statements can be cached")),
    };
    g.ctes.truncate(saved);
    out
}

impl<'g, 'a> Sel<'g, 'a> {
    pub fn build(
        g: &'g mut Graph<'a>,
        select: &ast::Select,
        order_by: Option<&ast::OrderBy>,
        opts: Opts<'_>,
    ) -> Result<Self, Unsupported> {
        let distinct = check_select_clauses(select)?;
        let items = lower_from(g, &select.from)?;
        let mut scope = Scope {
            case_insensitive: g.case_insensitive,
            ..Scope::default()
        };
        let mut spans = Vec::with_capacity(items.len());
        for it in &items {
            spans.push((scope.width(), it.scope.width()));
            scope = scope.concat(it.scope.clone())?;
        }
        let has_agg = is_aggregate_query(select, order_by);
        let mode = match (opts.top, has_agg, distinct) {
            (true, false, false) => ParamMode::Residual,
            (false, _, _) => ParamMode::Fixed(opts.place),
            (true, true, _) => ParamMode::Fixed("below an aggregate"),
            (true, false, true) => ParamMode::Fixed("below DISTINCT"),
        };
        let mut sel = Sel {
            l: Lowerer::new(g, scope, mode),
            node: 0,
            pending: Vec::new(),
            having: Vec::new(),
            outputs: Vec::new(),
            corr: Vec::new(),
            key_cols: Vec::new(),
            single_value: Vec::new(),
            empty_key: false,
            distinct,
            has_agg,
            top: opts.top,
        };
        let agg = if has_agg {
            Some(sel.l.lower_group_by(select)?)
        } else {
            None
        };
        let mut key_filter = KeyFilter {
            global: agg.as_ref().is_some_and(|a| a.groups.is_empty()),
            agg,
            distinct_cols: (distinct && opts.top)
                .then(|| sel.plain_output_columns(&select.projection)),
        };
        let mut candidates = Vec::new();
        let mut filters = Vec::new();
        let mut semis = Vec::new();
        if let Some(selection) = &select.selection {
            sel.lower_where(
                selection,
                opts,
                &mut key_filter,
                &spans,
                &mut candidates,
                &mut filters,
                &mut semis,
            )?;
        }
        // A conjunct over one FROM item filters that item before the items are joined.
        let mut items = items;
        if items.len() > 1 {
            let mut kept = Vec::new();
            for f in filters {
                let mut cols = Vec::new();
                f.for_each_column(&mut |c| cols.push(c));
                let span = cols
                    .first()
                    .and_then(|&c| spans.iter().position(|(o, w)| c >= *o && c < o + w));
                match span {
                    Some(i)
                        if cols
                            .iter()
                            .all(|&c| c >= spans[i].0 && c < spans[i].0 + spans[i].1) =>
                    {
                        let off = spans[i].0;
                        let local = map_columns(f, &mut |c| c - off);
                        items[i].node = sel.l.g.filter(items[i].node, Some(local));
                    }
                    _ => kept.push(f),
                }
            }
            filters = kept;
        }
        let agg = key_filter.agg;
        sel.empty_key = key_filter.global && agg.as_ref().is_some_and(|a| a.key_groups > 0);
        let (node, leftover) = sel.combine(&items, &spans, candidates)?;
        filters.extend(leftover);
        let mut node = sel.l.g.filter(node, conjunction(filters));
        for sp in semis {
            node = sel.semi(node, sp)?;
        }
        sel.node = node;
        if has_agg {
            sel.l.agg = agg;
            sel.l.no_agg = "aggregate function calls cannot be nested";
            if let Some(having) = &select.having {
                sel.lower_having(having, opts)?;
            }
        }
        sel.l.mode = if opts.top {
            ParamMode::Refuse("parameters in the SELECT list are not supported")
        } else {
            ParamMode::Fixed(opts.place)
        };
        sel.lower_projection(&select.projection)?;
        Ok(sel)
    }

    #[allow(clippy::too_many_arguments)]
    fn lower_where<'q>(
        &mut self,
        selection: &'q AExpr,
        opts: Opts<'_>,
        keys: &mut KeyFilter,
        spans: &[(usize, usize)],
        candidates: &mut Vec<(usize, usize, Expr)>,
        filters: &mut Vec<Expr>,
        semis: &mut Vec<SubPred<'q>>,
    ) -> Result<(), Unsupported> {
        self.l.no_agg = "aggregate functions are not allowed in WHERE";
        let mut conjuncts = Vec::new();
        split_conjuncts(selection, &mut conjuncts);
        for c in conjuncts {
            if let Some(sp) = sub_pred(c) {
                semis.push(sp);
                continue;
            }
            if let Some(outer) = opts.outer {
                if let Some(pair) = correlation(&self.l.scope, outer, c)? {
                    self.corr.push(pair);
                    continue;
                }
            }
            if opts.top && self.try_key(c, keys)? {
                continue;
            }
            let t = match self.l.expr(c, Some(&SqlType::Bool)) {
                Ok(t) => t,
                Err(e) => {
                    return Err(match opts.outer {
                        Some(outer) => correlated_refusal(c, &self.l.scope, outer, e),
                        None => e,
                    })
                }
            };
            if t.ty != SqlType::Bool {
                return Err(unsupported(format!(
                    "WHERE condition of type {} is not boolean",
                    type_name(&t.ty)
                )));
            }
            let span = |c: usize| spans.iter().position(|(o, w)| c >= *o && c < o + w);
            if let Some((a, b)) = column_equality(&t.expr) {
                if span(a) != span(b) {
                    candidates.push((a, b, t.expr));
                    continue;
                }
            }
            if contains_param(&t.expr) {
                self.pending.push(Pending::Residual(multi_valued(t.expr)));
            } else {
                filters.push(t.expr);
            }
        }
        Ok(())
    }

    /// Makes `column = $k` (either way round) a reader key. Returns whether it did.
    fn try_key(&mut self, c: &AExpr, keys: &mut KeyFilter) -> Result<bool, Unsupported> {
        let AExpr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } = c
        else {
            return Ok(false);
        };
        let (left, right) = (strip_nested(left), strip_nested(right));
        let ((col_expr, cast), slot) = match (key_param_of(left), key_param_of(right)) {
            (None, Some(k)) => ((left, k.1), k.0),
            (Some(k), None) => ((right, k.1), k.0),
            _ => return Ok(false),
        };
        let parts = match col_expr {
            AExpr::Identifier(i) => std::slice::from_ref(i),
            AExpr::CompoundIdentifier(parts) => parts.as_slice(),
            _ => return Ok(false),
        };
        let col = self.l.scope.column(parts)?;
        let ty = self.l.scope.types[col].clone();
        if let Some(cast) = cast {
            // `col = $1::type` is a key only when the cast does not change the comparison.
            if sql_type_of(cast).ok().as_ref() != Some(&ty) {
                return Ok(false);
            }
        }
        let slot_idx = slot - 1;
        let slot_free = self
            .l
            .g
            .param_types
            .get(slot_idx)
            .is_some_and(Option::is_none);
        if !keyable(&ty) || self.key_cols.contains(&col) || !slot_free {
            return Ok(false);
        }
        let one_value = self.one_value(slot_idx);
        let key = match (&mut keys.agg, &keys.distinct_cols) {
            (Some(ctx), _) => match ctx
                .named_groups()
                .iter()
                .position(|g| *g == Expr::Column(col))
            {
                Some(g) => Expr::Column(g),
                // Another column: group by it too (all rows of one key share its value), and
                // answer one value at a time (several would merge their groups). DISTINCT
                // over a keyed aggregate without GROUP BY is left as it was.
                None => {
                    if !one_value || (keys.global && self.distinct) {
                        return Ok(false);
                    }
                    self.single_value.push(slot_idx);
                    Expr::Column(ctx.add_key_group(col, ty.clone()))
                }
            },
            // DISTINCT on a column it does not output: the Distinct runs over the key column
            // too, one value at a time (rows of several values could repeat an output row).
            (None, Some(cols)) if !cols.contains(&col) => {
                if !one_value {
                    return Ok(false);
                }
                self.single_value.push(slot_idx);
                Expr::Column(col)
            }
            _ => Expr::Column(col),
        };
        self.l.g.param_types[slot_idx] = Some(ty);
        self.pending.push(Pending::Key(key, slot_idx));
        self.key_cols.push(col);
        Ok(true)
    }

    /// Whether this instance of the query has at most one value in `slot` (an IN list of
    /// several values there is planned as before: refused below DISTINCT or an aggregate).
    fn one_value(&self, slot: usize) -> bool {
        !matches!(self.l.g.sources.get(slot), Some(ParamSource::List(items)) if items.len() != 1)
    }

    /// Joins the FROM items (comma-separated relations) on the column equalities of WHERE
    /// that connect them; the row keeps FROM order. Returns the unused equalities.
    fn combine(
        &mut self,
        items: &[Item],
        spans: &[(usize, usize)],
        candidates: Vec<(usize, usize, Expr)>,
    ) -> Result<(NodeRef, Vec<Expr>), Unsupported> {
        let span = |c: usize| spans.iter().position(|(o, w)| c >= *o && c < o + w);
        let mut rest = candidates;
        let mut joined = vec![false; items.len()];
        joined[0] = true;
        let mut layout: Vec<usize> = (0..spans[0].1).collect();
        let mut acc = items[0].node;
        for _ in 1..items.len() {
            let connects = |a: usize, b: usize, i: usize, joined: &[bool]| {
                let (sa, sb) = (span(a), span(b));
                (sa == Some(i) && sb.is_some_and(|s| joined[s]))
                    || (sb == Some(i) && sa.is_some_and(|s| joined[s]))
            };
            let next = (0..items.len())
                .filter(|&i| !joined[i])
                .find(|&i| rest.iter().any(|(a, b, _)| connects(*a, *b, i, &joined)));
            let Some(i) = next else {
                let i = joined.iter().position(|j| !j).unwrap_or(0);
                let name = self
                    .l
                    .scope
                    .rel_of(spans[i].0)
                    .map(Scope::rel_name)
                    .unwrap_or_default();
                return Err(unsupported(format!(
                    "a join without an equality between {name} and the other relations of FROM (a cross join) is not supported"
                )));
            };
            let mut pairs = Vec::new();
            rest.retain(|(a, b, _)| {
                if !connects(*a, *b, i, &joined) {
                    return true;
                }
                let (mine, theirs) = if span(*a) == Some(i) {
                    (*a, *b)
                } else {
                    (*b, *a)
                };
                let pos = layout.iter().position(|x| *x == theirs).unwrap_or(0);
                pairs.push((pos, mine - spans[i].0));
                false
            });
            acc = self
                .l
                .g
                .equi_join(acc, items[i].node, JoinKind::Inner, &pairs)?;
            layout.extend(spans[i].0..spans[i].0 + spans[i].1);
            joined[i] = true;
        }
        let order: Vec<usize> = (0..layout.len())
            .map(|c| layout.iter().position(|x| *x == c).unwrap_or(0))
            .collect();
        let acc = self.l.g.select_columns(acc, &order);
        Ok((acc, rest.into_iter().map(|(_, _, e)| e).collect()))
    }

    fn lower_having(&mut self, having: &AExpr, opts: Opts<'_>) -> Result<(), Unsupported> {
        self.l.mode = match (opts.top, self.distinct) {
            (true, false) => ParamMode::Residual,
            (true, true) => ParamMode::Fixed("below DISTINCT"),
            (false, _) => ParamMode::Fixed(opts.place),
        };
        let mut conjuncts = Vec::new();
        split_conjuncts(having, &mut conjuncts);
        for c in conjuncts {
            if sub_pred(c).is_some() {
                return Err(unsupported("subqueries in HAVING are not supported"));
            }
            let t = self.l.expr(c, Some(&SqlType::Bool))?;
            if t.ty != SqlType::Bool {
                return Err(unsupported(format!(
                    "HAVING condition of type {} is not boolean",
                    type_name(&t.ty)
                )));
            }
            // A keyed aggregate without GROUP BY checks HAVING per read, so that a key whose
            // row it drops is not taken for a key without rows.
            if contains_param(&t.expr) || self.empty_key {
                self.pending.push(Pending::Residual(multi_valued(t.expr)));
            } else {
                self.having.push(t.expr);
            }
        }
        Ok(())
    }

    // ----- SELECT list ---------------------------------------------------------------------

    fn lower_projection(&mut self, items: &[SelectItem]) -> Result<(), Unsupported> {
        for item in items {
            match item {
                SelectItem::UnnamedExpr(e) => {
                    let name = figure_colname(e).map_or_else(|| "?column?".to_string(), |(n, _)| n);
                    self.output_expr(e, name)?;
                }
                SelectItem::ExprWithAlias { expr, alias } => {
                    self.output_expr(expr, alias.value.clone())?;
                }
                SelectItem::ExprWithAliases { .. } => {
                    return Err(unsupported(
                        "multiple aliases for one expression are not supported",
                    ))
                }
                SelectItem::Wildcard(opts) => {
                    check_wildcard_options(opts)?;
                    let cols = self.l.scope.star.clone();
                    self.output_columns(&cols)?;
                }
                SelectItem::QualifiedWildcard(kind, opts) => {
                    check_wildcard_options(opts)?;
                    let SelectItemQualifiedWildcardKind::ObjectName(name) = kind else {
                        return Err(unsupported("expression wildcards are not supported"));
                    };
                    let idents: Option<Vec<Ident>> =
                        name.0.iter().map(|p| p.as_ident().cloned()).collect();
                    let q =
                        idents.ok_or_else(|| unsupported(format!("{name}.* is not supported")))?;
                    let cols = self.l.scope.rel(&q)?.columns.clone();
                    self.output_columns(&cols)?;
                }
            }
        }
        Ok(())
    }

    fn output_columns(&mut self, cols: &[usize]) -> Result<(), Unsupported> {
        for &c in cols {
            let expr = match &self.l.agg {
                None => Expr::Column(c),
                Some(ctx) => match ctx.named_groups().iter().position(|g| *g == Expr::Column(c)) {
                    Some(g) => Expr::Column(g),
                    None => {
                        return Err(unsupported(format!(
                            "column \"{}\" must appear in the GROUP BY clause or be used in an aggregate function",
                            self.l.scope.qualified_name(c)
                        )))
                    }
                },
            };
            self.outputs.push(Out {
                name: self.l.scope.names[c].clone(),
                expr,
                ty: self.l.scope.types[c].clone(),
            });
        }
        Ok(())
    }

    fn output_expr(&mut self, e: &AExpr, name: String) -> Result<(), Unsupported> {
        if let AExpr::Subquery(q) = strip_nested(e) {
            return Err(unsupported(if is_correlated(q, &self.l.scope) {
                "correlated subquery in the SELECT list is not supported"
            } else {
                "scalar subqueries are not supported"
            }));
        }
        let t = self.l.expr(e, None)?;
        if self.distinct {
            check_hashable(&t.ty, "DISTINCT")?;
        }
        self.outputs.push(Out {
            name,
            expr: t.expr,
            ty: t.ty,
        });
        Ok(())
    }

    /// FROM-row columns the SELECT list outputs as they are (`col`, `t.*`, `*`).
    fn plain_output_columns(&self, items: &[SelectItem]) -> Vec<usize> {
        let scope = &self.l.scope;
        let mut cols = Vec::new();
        for item in items {
            match item {
                SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
                    let parts = match strip_nested(e) {
                        AExpr::Identifier(i) => std::slice::from_ref(i),
                        AExpr::CompoundIdentifier(p) => p.as_slice(),
                        _ => continue,
                    };
                    cols.extend(scope.column(parts).ok());
                }
                SelectItem::Wildcard(_) => cols.extend(scope.star.iter().copied()),
                SelectItem::QualifiedWildcard(
                    SelectItemQualifiedWildcardKind::ObjectName(n),
                    _,
                ) => {
                    let q: Option<Vec<Ident>> = n.0.iter().map(|p| p.as_ident().cloned()).collect();
                    if let Some(rel) = q.and_then(|q| scope.rel(&q).ok()) {
                        cols.extend(rel.columns.iter().copied());
                    }
                }
                _ => {}
            }
        }
        cols
    }
}

/// Which WHERE equalities may become reader keys.
struct KeyFilter {
    /// The aggregate context of a grouped query (a key may add a group column to it).
    agg: Option<AggCtx>,
    /// An aggregate without GROUP BY.
    global: bool,
    /// FROM-row columns a top-level `SELECT DISTINCT` outputs as they are.
    distinct_cols: Option<Vec<usize>>,
}

/// Whether the SELECT groups: GROUP BY, HAVING, or an aggregate in the SELECT list or ORDER BY.
fn is_aggregate_query(select: &ast::Select, order_by: Option<&ast::OrderBy>) -> bool {
    let grouped = match &select.group_by {
        ast::GroupByExpr::Expressions(exprs, _) => !exprs.is_empty(),
        ast::GroupByExpr::All(_) => true,
    };
    let in_items = select.projection.iter().any(|item| match item {
        SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
            calls_aggregate(e)
        }
        _ => false,
    });
    let in_order = match order_by.map(|o| &o.kind) {
        Some(OrderByKind::Expressions(exprs)) => exprs.iter().any(|o| calls_aggregate(&o.expr)),
        _ => false,
    };
    grouped || select.having.is_some() || in_items || in_order
}

/// `a = b` between two row columns.
fn column_equality(e: &Expr) -> Option<(usize, usize)> {
    match e {
        Expr::Binary {
            op: BinaryOp::Eq,
            left,
            right,
            ..
        } => match (&**left, &**right) {
            (Expr::Column(a), Expr::Column(b)) if a != b => Some((*a, *b)),
            _ => None,
        },
        _ => None,
    }
}

/// A residual conjunct `e = $k` is emitted as `e IN ($k)`: slot `k` may carry several
/// values (a collapsed `IN` list), and a `Param` inside an `InList` means all of them.
fn multi_valued(e: Expr) -> Expr {
    match e {
        Expr::Binary {
            op: BinaryOp::Eq,
            left,
            right,
            ..
        } if matches!(*right, Expr::Param(_)) => Expr::InList {
            expr: left,
            list: vec![*right],
            negated: false,
        },
        other => other,
    }
}

fn check_wildcard_options(opts: &ast::WildcardAdditionalOptions) -> Result<(), Unsupported> {
    if opts.opt_ilike.is_some()
        || opts.opt_exclude.is_some()
        || opts.opt_except.is_some()
        || opts.opt_replace.is_some()
        || opts.opt_rename.is_some()
        || opts.opt_alias.is_some()
    {
        return Err(unsupported(
            "wildcard modifiers (EXCLUDE, REPLACE, ...) are not supported",
        ));
    }
    Ok(())
}
