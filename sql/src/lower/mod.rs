//! The cacheability check and lowering of a normalized SELECT into a [`CachePlan`].
//!
//! Both are one pass: lowering either produces the plan the dataflow runs, or stops at the
//! first construct it cannot express with an [`Unsupported`] whose reason names that construct
//! (`RIGHT JOIN is not supported yet`, `function now() is not deterministic`). Keeping one code
//! path means "supported" can never drift from "what the dataflow can run".
//!
//! # Supported
//!
//! * FROM: tables (optionally schema-qualified and aliased), `[INNER] JOIN ... ON`,
//!   `LEFT [OUTER] JOIN ... ON`, `JOIN ... USING (...)`, `NATURAL JOIN`, comma-separated
//!   relations joined by equalities in WHERE, parenthesized joins, self-joins with aliases,
//!   derived tables `(SELECT ...) AS d[(cols)]` and non-recursive CTEs (each lowered once,
//!   however often it is referenced; unreferenced ones are not lowered). Every join needs at
//!   least one column equality between its sides (`from`, `scope` for name resolution).
//! * WHERE: `AND`/`OR`/`NOT`, comparisons, `IN` lists, `IS [NOT] NULL`, `[NOT] LIKE`/`ILIKE`,
//!   `BETWEEN`; top-level `[NOT] IN (SELECT ...)` and `[NOT] EXISTS (SELECT ...)` as semi- and
//!   anti-joins, correlated through `inner.col = outer.col` equalities (`subquery`).
//! * GROUP BY (columns or expressions, by position or output name), HAVING, and `count`,
//!   `sum`, `avg`, `min`, `max` with `DISTINCT`, with or without GROUP BY (`aggregate`).
//! * `SELECT DISTINCT`, `UNION [ALL]` (`setop`), ORDER BY (name, alias, position or
//!   expression, `ASC`/`DESC`, `NULLS FIRST/LAST`) and literal `LIMIT`/`OFFSET` (`reader`).
//! * Expressions: columns, literals, `+ - * / %` on integers and floats, `||` on text,
//!   `COALESCE`, `ABS`/`@`, `LENGTH`, exact casts (`expr`, typed as Postgres types them,
//!   see `types`); `CASE`, `NULLIF`, `GREATEST`/`LEAST`, string functions, `date_trunc`/
//!   `extract`/`date_part` on timestamp and date, `date ± int`, `date - date`, `round`/
//!   `trunc`/`ceil`/`floor`/`mod` (`funcs`). Session-dependent ones (timestamptz, DateStyle,
//!   locale) are refused with the reason.
//!
//! # Where WHERE goes
//!
//! The normalizer turned every predicate literal into a slot `$k` and recorded where each
//! slot's value came from (`params`). For the query's own SELECT, each top-level conjunct of
//! WHERE becomes one of:
//! * a reader key, for `column = $k` on any column of the FROM row (through joins too). In a
//!   grouped query on another column than a GROUP BY one, the column is grouped by too (the
//!   query cannot name it); under `SELECT DISTINCT` on a column it does not output, the
//!   Distinct runs over it too. Such a key answers one value at a time
//!   ([`CachePlan::single_value_params`]), and an aggregate without GROUP BY keyed this way
//!   has the reader compute the row of a key without rows ([`CachePlan::empty_key_row`]),
//!   with HAVING in the residual. (Not with `SELECT DISTINCT` over such an aggregate, and
//!   not when this instance has an IN list of several values there: the literal list stays,
//!   as a filter below.)
//! * a join equality, for `a.x = b.y` between two comma-separated relations;
//! * a semi-join, for a subquery predicate;
//! * a dataflow Filter (pushed onto its relation when it reads only one comma-separated
//!   relation), when it has no parameters;
//! * the per-read `residual`, over the reader's columns (which are materialized for it),
//!   when it has parameters and the query has no aggregation or DISTINCT and is no UNION.
//!   SQL applies WHERE after the joins, so this is right for LEFT JOINs too. A residual
//!   conjunct `e = $k` is emitted as `e IN ($k)`, because slot `k` may carry several values
//!   (a collapsed `IN` list, see [`crate::normalize`]).
//!
//! HAVING conjuncts with parameters go to the residual as well (over the aggregate's
//! output); the others filter the aggregate's output.
//!
//! A parameter anywhere else the per-read residual would answer wrongly (below an aggregate
//! or DISTINCT, in a JOIN condition, in a subquery, CTE or UNION branch) is planned as the
//! literal the query was normalized from and listed in [`CachePlan::fixed_params`] (an IN
//! list of several literals, or `col = $k` whose slot is one, keeps all of them, and the
//! cache answers exactly that list); the client's own placeholders (`$1`) are refused there.
//!
//! When the reader orders and limits and there is no residual, a TopK below the reader keeps
//! only the first `offset + limit` rows per key.
//!
//! Types follow Postgres: untyped literals and parameters take the type of what they are
//! compared with, integer arithmetic widens as Postgres does (`int2 op int2` is `int2`, any
//! `int8` gives `int8`, otherwise `int4`), any float gives `float8` (`float4 op float4` stays
//! `float4`), join columns and UNION branches are cast to their common type, and output
//! columns are named as Postgres names them.

use std::ops::ControlFlow;

use sqlparser::ast::{
    self as ast, Distinct, Expr as AExpr, GroupByExpr, LimitClause, Query, SetExpr,
    Value as AstValue, ValueWithSpan, Visit, Visitor,
};

pub use crate::error::Unsupported;
use crate::normalize::ParamSource;
use crate::plan::{CachePlan, Expr};
use crate::value::{SqlType, TableSchema};

mod aggregate;
mod expr;
mod from;
mod funcs;
mod graph;
mod prune;
mod range;
mod reader;
mod scope;
mod select;
mod setop;
mod subquery;
mod types;
mod util;

#[cfg(test)]
mod tests;

pub use prune::prune_columns;
pub use types::sql_type_of;

use aggregate::AggCtx;
use graph::Graph;
use scope::Scope;
use util::strip_nested;

/// The replicated tables lowering may read from.
pub trait Catalog {
    /// The table `name` in `schema`, or as found on the search path when `schema` is `None`.
    /// `None` when the table is unknown or not replicated.
    fn table(&self, schema: Option<&str>, name: &str) -> Option<TableSchema>;

    /// Whether column names match case-insensitively (MySQL); Postgres matches exactly
    /// (unquoted identifiers were already folded to lower case by the parser).
    fn column_names_case_insensitive(&self) -> bool {
        false
    }
}

/// Most parameter slots a cacheable query may have.
pub const PARAMS_MAX: usize = 1024;

/// Lowers a normalized query (e.g. [`crate::normalize::Normalized::query`]) into a plan,
/// or says which construct prevents caching it.
///
/// `params` says where each slot's value came from ([`crate::normalize::Normalized::params`]):
/// a slot that must be evaluated below the reader (under an aggregate, in a join condition,
/// in a subquery, ...) is planned as the literal the query was normalized from and listed in
/// [`CachePlan::fixed_params`]; a client's own placeholder there is refused. Passing `&[]`
/// treats every slot as a client placeholder.
pub fn lower(
    query: &Query,
    catalog: &dyn Catalog,
    params: &[ParamSource],
) -> Result<CachePlan, Unsupported> {
    lower_unpruned(query, catalog, params).map(prune::prune_columns)
}

/// [`lower`] without narrowing base tables to the columns read ([`prune_columns`]): the plan
/// as the query's structure gives it.
pub fn lower_unpruned(
    query: &Query,
    catalog: &dyn Catalog,
    params: &[ParamSource],
) -> Result<CachePlan, Unsupported> {
    let slots = count_slots(query)?;
    let mut g = Graph::new(query, catalog, params, slots);
    select::lower_top(&mut g, query)
}

fn unsupported(reason: impl Into<String>) -> Unsupported {
    Unsupported::new(reason)
}

/// An expression lowered over the current row, with its type.
#[derive(Clone, Debug)]
struct Typed {
    pub expr: Expr,
    pub ty: SqlType,
}

/// What a parameter becomes where it is lowered.
#[derive(Clone, Copy, Debug)]
enum ParamMode {
    /// A `Param`, evaluated per read (the reader's residual).
    Residual,
    /// The literal the slot was normalized from; the text says where (for refusals).
    Fixed(&'static str),
    /// Refused with this reason.
    Refuse(&'static str),
}

/// Lowers expressions over one scope (the row of a FROM clause, or an aggregate's output
/// when `agg` is set).
struct Lowerer<'g, 'a> {
    pub g: &'g mut Graph<'a>,
    pub scope: Scope,
    pub mode: ParamMode,
    pub agg: Option<AggCtx>,
    /// Why an aggregate call is refused where aggregates are not computed.
    pub no_agg: &'static str,
}

impl<'g, 'a> Lowerer<'g, 'a> {
    pub fn new(g: &'g mut Graph<'a>, scope: Scope, mode: ParamMode) -> Self {
        Lowerer {
            g,
            scope,
            mode,
            agg: None,
            no_agg: "aggregate functions are not allowed here",
        }
    }
}

/// Refuses query-level clauses other than WITH, ORDER BY and LIMIT/OFFSET.
fn check_query_clauses(q: &Query) -> Result<(), Unsupported> {
    if q.with.as_ref().is_some_and(|w| w.recursive) {
        return Err(unsupported(
            "recursive common table expressions (WITH RECURSIVE) are not supported",
        ));
    }
    if !q.locks.is_empty() {
        return Err(unsupported(
            "row locking clauses (FOR UPDATE/FOR SHARE) cannot be served from a cache",
        ));
    }
    if q.fetch.is_some() {
        return Err(unsupported("FETCH FIRST is not supported yet; use LIMIT"));
    }
    if q.for_clause.is_some() || q.settings.is_some() || q.format_clause.is_some() {
        return Err(unsupported(
            "dialect-specific query clauses are not supported",
        ));
    }
    if !q.pipe_operators.is_empty() {
        return Err(unsupported("pipe operators are not supported"));
    }
    Ok(())
}

/// Refuses SELECT clauses lowering does not handle; says whether it is `SELECT DISTINCT`.
fn check_select_clauses(s: &ast::Select) -> Result<bool, Unsupported> {
    let distinct = match &s.distinct {
        None | Some(Distinct::All) => false,
        Some(Distinct::Distinct) => true,
        Some(Distinct::On(_)) => return Err(unsupported("DISTINCT ON is not supported")),
    };
    if let GroupByExpr::Expressions(_, modifiers) = &s.group_by {
        if !modifiers.is_empty() {
            return Err(unsupported(
                "GROUPING SETS, ROLLUP and CUBE are not supported",
            ));
        }
    }
    let refusals: [(bool, &str); 10] = [
        (s.top.is_some(), "TOP is not supported"),
        (s.into.is_some(), "SELECT INTO cannot be cached"),
        (
            s.from.is_empty(),
            "a SELECT without FROM has nothing to cache",
        ),
        (
            !s.named_window.is_empty(),
            "window functions are not supported yet (WINDOW clause)",
        ),
        (s.qualify.is_some(), "QUALIFY is not supported"),
        (
            s.select_modifiers.is_some(),
            "SELECT modifiers are not supported",
        ),
        (s.exclude.is_some(), "SELECT * EXCLUDE is not supported"),
        (!s.lateral_views.is_empty(), "LATERAL VIEW is not supported"),
        (
            s.prewhere.is_some() || !s.connect_by.is_empty(),
            "dialect-specific SELECT clauses are not supported",
        ),
        (
            !s.cluster_by.is_empty() || !s.distribute_by.is_empty() || !s.sort_by.is_empty(),
            "dialect-specific SELECT clauses are not supported",
        ),
    ];
    match refusals.iter().find(|(refused, _)| *refused) {
        Some((_, reason)) => Err(unsupported(*reason)),
        None => Ok(distinct),
    }
}

/// The body of a query that is a SELECT, or why it is not one lowering handles there.
fn body_kind(body: &SetExpr) -> Result<(), Unsupported> {
    match body {
        SetExpr::Select(_) | SetExpr::SetOperation { .. } | SetExpr::Query(_) => Ok(()),
        SetExpr::Values(_) => Err(unsupported("VALUES lists are not supported yet")),
        SetExpr::Table(_) => Err(unsupported("TABLE statements are not supported yet")),
        _ => Err(unsupported("only SELECT statements can be cached")),
    }
}

/// Number of parameter slots: the highest `$n`. Other placeholder styles are refused.
fn count_slots(query: &Query) -> Result<usize, Unsupported> {
    struct Slots(Result<usize, Unsupported>);
    impl Visitor for Slots {
        type Break = ();
        fn pre_visit_value(&mut self, v: &ValueWithSpan) -> ControlFlow<()> {
            if let AstValue::Placeholder(p) = &v.value {
                match placeholder_slot(p) {
                    Some(n) => {
                        if let Ok(max) = &mut self.0 {
                            *max = (*max).max(n);
                        }
                    }
                    None => {
                        self.0 = Err(unsupported(format!("placeholder {p} is not supported")));
                        return ControlFlow::Break(());
                    }
                }
            }
            ControlFlow::Continue(())
        }
    }
    let mut slots = Slots(Ok(0));
    let _ = query.visit(&mut slots);
    let n = slots.0?;
    if n > PARAMS_MAX {
        return Err(unsupported(format!("more than {PARAMS_MAX} parameters")));
    }
    Ok(n)
}

/// `$n` (n >= 1) to its 1-based number.
fn placeholder_slot(p: &str) -> Option<usize> {
    p.strip_prefix('$')?.parse().ok().filter(|n| *n >= 1)
}

fn lower_limit(query: &Query) -> Result<(usize, Option<usize>), Unsupported> {
    let (limit, offset) = match &query.limit_clause {
        None => (None, None),
        Some(LimitClause::LimitOffset {
            limit,
            offset,
            limit_by,
        }) => {
            if !limit_by.is_empty() {
                return Err(unsupported("LIMIT BY is not supported"));
            }
            (limit.as_ref(), offset.as_ref().map(|o| &o.value))
        }
        Some(LimitClause::OffsetCommaLimit { offset, limit }) => (Some(limit), Some(offset)),
    };
    let limit = match limit {
        None => None,
        Some(e) => count_literal(e, "LIMIT")?,
    };
    let offset = match offset {
        None => 0,
        Some(e) => count_literal(e, "OFFSET")?.unwrap_or(0),
    };
    Ok((offset, limit))
}

/// A literal non-negative row count; `NULL` means "none" (`LIMIT NULL` is no limit).
fn count_literal(e: &AExpr, clause: &str) -> Result<Option<usize>, Unsupported> {
    match strip_nested(e) {
        AExpr::Value(v) => match &v.value {
            AstValue::Number(n, _) => n
                .parse::<usize>()
                .map(Some)
                .map_err(|_| unsupported(format!("{clause} {n} is not a valid row count"))),
            AstValue::Null => Ok(None),
            AstValue::Placeholder(_) => Err(unsupported(format!(
                "{clause} with a parameter is not supported yet"
            ))),
            other => Err(unsupported(format!("{clause} {other} is not supported"))),
        },
        other => Err(unsupported(format!(
            "{clause} must be a literal number, not {other}"
        ))),
    }
}
