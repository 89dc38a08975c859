//! The cacheability check and lowering of a normalized SELECT into a [`CachePlan`].
//!
//! Both are one pass: lowering either produces the plan the dataflow runs, or stops at the
//! first construct it cannot express with an [`Unsupported`] whose reason names that construct
//! (`joins are not supported yet`, `function now() is not deterministic`). Keeping one code
//! path means "supported" can never drift from "what the dataflow can run".
//!
//! Supported: one table (optionally schema-qualified and aliased); a SELECT list of columns,
//! `*`, literals and expressions (`+ - * / %` on integers and floats, `||` on text,
//! `COALESCE`, `ABS`, `LENGTH`, trivial casts); `WHERE` with `AND`/`OR`/`NOT`, comparisons,
//! `IN` lists, `IS [NOT] NULL`, `[NOT] LIKE`/`ILIKE`, `BETWEEN`; `ORDER BY` by name, alias,
//! position or expression with `ASC`/`DESC` and `NULLS FIRST/LAST`; literal `LIMIT`/`OFFSET`.
//!
//! How `WHERE` is split (see [`crate::plan`] for the stages):
//! * a top-level conjunct `column = $k` makes `column` a reader key supplied by slot `k`;
//! * conjuncts without parameters become the dataflow `filter` (over base columns);
//! * every other conjunct goes to the per-read `residual` (over materialized columns, so the
//!   columns it reads are materialized too). A residual conjunct `e = $k` is emitted as
//!   `e IN ($k)`, because slot `k` may carry several values (a collapsed `IN` list, see
//!   [`crate::normalize`]): the dataflow must treat a `Param` inside an `InList` as all of the
//!   slot's values, and every other `Param` as the slot's single value.
//!
//! Types follow Postgres: untyped literals and parameters take the type of what they are
//! compared with, integer arithmetic widens as Postgres does (`int2 op int2` is `int2`, any
//! `int8` gives `int8`, otherwise `int4`), any float gives `float8` (`float4 op float4` stays
//! `float4`), and output columns are named as Postgres names them.

use std::ops::ControlFlow;

use sqlparser::ast::{
    self as ast, BinaryOperator, CastKind, DataType, Distinct, ExactNumberInfo, Expr as AExpr,
    FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr, Ident, LimitClause,
    ObjectNamePart, OrderByKind, OrderBySort, Query, SelectItem, SelectItemQualifiedWildcardKind,
    SetExpr, TableFactor, TimezoneInfo, UnaryOperator, Value as AstValue, ValueWithSpan, Visit,
    Visitor,
};

pub use crate::error::Unsupported;
use crate::normalize::{literal_value, text_value, Literal};
use crate::plan::{
    BinaryOp, CachePlan, Expr, Func, NodeOp, OrderKey, OutputColumn, PlanNode, TableRef, UnaryOp,
};
use crate::value::{SqlType, TableSchema, Value};

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
pub fn lower(query: &Query, catalog: &dyn Catalog) -> Result<CachePlan, Unsupported> {
    check_query_clauses(query)?;
    let select = match &*query.body {
        SetExpr::Select(select) => select,
        SetExpr::SetOperation { op, .. } => {
            return Err(unsupported(format!(
                "{} is not supported yet",
                op.to_string().to_uppercase()
            )))
        }
        SetExpr::Query(_) => {
            return Err(unsupported(
                "parenthesized subqueries are not supported yet",
            ))
        }
        SetExpr::Values(_) => return Err(unsupported("VALUES lists are not supported yet")),
        SetExpr::Table(_) => return Err(unsupported("TABLE statements are not supported yet")),
        _ => return Err(unsupported("only SELECT statements can be cached")),
    };
    check_select_clauses(select)?;
    let scope = resolve_table(select, catalog)?;
    let slots = count_slots(query)?;
    let mut l = Lowerer::new(scope, slots);
    if let Some(selection) = &select.selection {
        l.lower_where(selection)?;
    }
    let outputs = l.lower_projection(&select.projection)?;
    let order_by = l.lower_order_by(query, &outputs)?;
    let (offset, limit) = lower_limit(query)?;
    l.finish(outputs, order_by, offset, limit)
}

fn unsupported(reason: impl Into<String>) -> Unsupported {
    Unsupported::new(reason)
}

/// Refuses query-level clauses other than ORDER BY and LIMIT/OFFSET.
fn check_query_clauses(q: &Query) -> Result<(), Unsupported> {
    if q.with.is_some() {
        return Err(unsupported(
            "common table expressions (WITH) are not supported yet",
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

fn check_select_clauses(s: &ast::Select) -> Result<(), Unsupported> {
    match &s.distinct {
        None | Some(Distinct::All) => {}
        Some(_) => return Err(unsupported("DISTINCT is not supported yet")),
    }
    let group_by_empty = match &s.group_by {
        GroupByExpr::Expressions(exprs, modifiers) => exprs.is_empty() && modifiers.is_empty(),
        GroupByExpr::All(_) => false,
    };
    let refusals: [(bool, &str); 13] = [
        (!group_by_empty, "GROUP BY is not supported yet"),
        (s.having.is_some(), "HAVING is not supported yet"),
        (s.top.is_some(), "TOP is not supported"),
        (s.into.is_some(), "SELECT INTO cannot be cached"),
        (
            s.from.is_empty(),
            "a SELECT without FROM has nothing to cache",
        ),
        (s.from.len() > 1, "joins are not supported yet"),
        (
            !s.named_window.is_empty(),
            "window functions are not supported yet",
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
        None => Ok(()),
    }
}

/// The single table a query reads, and the names it may be referred to by.
struct Scope {
    table: TableSchema,
    /// The table name as written in FROM (schema-qualified or not).
    written: Vec<String>,
    alias: Option<String>,
    case_insensitive: bool,
}

impl Scope {
    fn eq(&self, a: &str, b: &str) -> bool {
        if self.case_insensitive {
            a.eq_ignore_ascii_case(b)
        } else {
            a == b
        }
    }

    /// Whether `qualifier` (the part before the column name) designates our table.
    fn matches(&self, qualifier: &[Ident]) -> bool {
        let q: Vec<&str> = qualifier.iter().map(|i| i.value.as_str()).collect();
        let same = |names: &[&str]| {
            names.len() == q.len() && names.iter().zip(&q).all(|(a, b)| self.eq(a, b))
        };
        if let Some(alias) = &self.alias {
            return same(&[alias.as_str()]);
        }
        let written: Vec<&str> = self.written.iter().map(String::as_str).collect();
        let tail = written.last().map(|t| vec![*t]).unwrap_or_default();
        same(&written)
            || same(&tail)
            || same(&[self.table.schema.as_str(), self.table.name.as_str()])
            || same(&[self.table.name.as_str()])
    }

    fn column(&self, parts: &[Ident]) -> Result<usize, Unsupported> {
        let Some((name, qualifier)) = parts.split_last() else {
            return Err(unsupported("empty column reference"));
        };
        if !qualifier.is_empty() && !self.matches(qualifier) {
            let q: Vec<&str> = qualifier.iter().map(|i| i.value.as_str()).collect();
            return Err(unsupported(format!(
                "reference to {} does not match the table in FROM (joins are not supported yet)",
                q.join(".")
            )));
        }
        let cols = &self.table.columns;
        cols.iter()
            .position(|c| c.name == name.value)
            .or_else(|| {
                if !self.case_insensitive {
                    return None;
                }
                let mut matching = cols
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.name.eq_ignore_ascii_case(&name.value));
                match (matching.next(), matching.next()) {
                    (Some((i, _)), None) => Some(i),
                    _ => None,
                }
            })
            .ok_or_else(|| {
                unsupported(format!(
                    "unknown column {} in table {}",
                    name.value, self.table.name
                ))
            })
    }
}

fn resolve_table(s: &ast::Select, catalog: &dyn Catalog) -> Result<Scope, Unsupported> {
    let Some(twj) = s.from.first() else {
        return Err(unsupported("a SELECT without FROM has nothing to cache"));
    };
    if !twj.joins.is_empty() {
        return Err(unsupported("joins are not supported yet"));
    }
    let TableFactor::Table {
        name,
        alias,
        args,
        with_hints,
        version,
        with_ordinality,
        partitions,
        json_path,
        sample,
        index_hints,
    } = &twj.relation
    else {
        return Err(match &twj.relation {
            TableFactor::Derived { .. } => unsupported("subqueries in FROM are not supported yet"),
            TableFactor::Function { .. } | TableFactor::UNNEST { .. } => {
                unsupported("table functions are not supported")
            }
            _ => unsupported("only a plain table can be cached"),
        });
    };
    if args.is_some() {
        return Err(unsupported("table functions are not supported"));
    }
    if !with_hints.is_empty()
        || version.is_some()
        || *with_ordinality
        || !partitions.is_empty()
        || json_path.is_some()
        || sample.is_some()
        || !index_hints.is_empty()
    {
        return Err(unsupported(
            "table modifiers (hints, samples, partitions) are not supported",
        ));
    }
    let mut written = Vec::with_capacity(name.0.len());
    for part in &name.0 {
        match part {
            ObjectNamePart::Identifier(i) => written.push(i.value.clone()),
            ObjectNamePart::Function(_) => {
                return Err(unsupported("computed table names are not supported"))
            }
        }
    }
    let (schema, table) = match written.as_slice() {
        [t] => (None, t.as_str()),
        [s, t] => (Some(s.as_str()), t.as_str()),
        _ => {
            return Err(unsupported(
                "database-qualified table names are not supported",
            ))
        }
    };
    let schema_def = catalog.table(schema, table).ok_or_else(|| {
        unsupported(format!(
            "table {} is not known to Larder (missing or not replicated)",
            written.join(".")
        ))
    })?;
    let alias = match alias {
        Some(a) if !a.columns.is_empty() => {
            return Err(unsupported("column aliases on a table are not supported"))
        }
        Some(a) => Some(a.name.value.clone()),
        None => None,
    };
    Ok(Scope {
        table: schema_def,
        written,
        alias,
        case_insensitive: catalog.column_names_case_insensitive(),
    })
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

/// An expression lowered over base columns, with its type.
struct Typed {
    expr: Expr,
    ty: SqlType,
}

struct Lowerer {
    scope: Scope,
    param_types: Vec<Option<SqlType>>,
    filter: Vec<Expr>,
    residual: Vec<Expr>,
    materialized: Vec<Expr>,
    materialized_types: Vec<SqlType>,
    key: Vec<usize>,
    key_params: Vec<usize>,
    /// Base columns used as keys (a column keys at most once).
    key_columns: Vec<usize>,
}

impl Lowerer {
    fn new(scope: Scope, slots: usize) -> Self {
        Lowerer {
            scope,
            param_types: vec![None; slots],
            filter: Vec::new(),
            residual: Vec::new(),
            materialized: Vec::new(),
            materialized_types: Vec::new(),
            key: Vec::new(),
            key_params: Vec::new(),
            key_columns: Vec::new(),
        }
    }

    fn base_type(&self, col: usize) -> SqlType {
        self.scope.table.columns[col].ty.clone()
    }

    /// Index of `expr` in the materialized columns, adding it if needed.
    fn materialize(&mut self, expr: Expr, ty: SqlType) -> usize {
        if let Some(i) = self.materialized.iter().position(|e| *e == expr) {
            return i;
        }
        self.materialized.push(expr);
        self.materialized_types.push(ty);
        self.materialized.len() - 1
    }

    /// Rewrites an expression over base columns into one over materialized columns.
    fn over_materialized(&mut self, expr: Expr) -> Expr {
        map_columns(expr, &mut |c| {
            let ty = self.base_type(c);
            self.materialize(Expr::Column(c), ty)
        })
    }

    // ----- WHERE -------------------------------------------------------------------------

    fn lower_where(&mut self, selection: &AExpr) -> Result<(), Unsupported> {
        let mut conjuncts = Vec::new();
        split_conjuncts(selection, &mut conjuncts);
        for c in conjuncts {
            if self.try_key(c)? {
                continue;
            }
            let t = self.expr(c, Some(&SqlType::Bool))?;
            if t.ty != SqlType::Bool {
                return Err(unsupported(format!(
                    "WHERE condition of type {} is not boolean",
                    type_name(&t.ty)
                )));
            }
            if contains_param(&t.expr) {
                let e = match t.expr {
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
                };
                let e = self.over_materialized(e);
                self.residual.push(e);
            } else {
                self.filter.push(t.expr);
            }
        }
        Ok(())
    }

    /// Makes `column = $k` (either way round) a reader key. Returns whether it did.
    fn try_key(&mut self, c: &AExpr) -> Result<bool, Unsupported> {
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
        let col = self.scope.column(parts)?;
        let ty = self.base_type(col);
        if let Some(cast) = cast {
            // `col = $1::type` is a key only when the cast does not change the comparison.
            if sql_type_of(cast).ok().as_ref() != Some(&ty) {
                return Ok(false);
            }
        }
        let slot_idx = slot - 1;
        let slot_free = self.param_types.get(slot_idx).is_some_and(Option::is_none);
        if !keyable(&ty) || self.key_columns.contains(&col) || !slot_free {
            return Ok(false);
        }
        self.param_types[slot_idx] = Some(ty.clone());
        let m = self.materialize(Expr::Column(col), ty);
        self.key.push(m);
        self.key_params.push(slot_idx);
        self.key_columns.push(col);
        Ok(true)
    }

    // ----- SELECT list ---------------------------------------------------------------------

    fn lower_projection(&mut self, items: &[SelectItem]) -> Result<Vec<OutputColumn>, Unsupported> {
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            match item {
                SelectItem::UnnamedExpr(e) => {
                    let name = figure_colname(e).map_or_else(|| "?column?".to_string(), |(n, _)| n);
                    out.push(self.output_expr(e, name)?);
                }
                SelectItem::ExprWithAlias { expr, alias } => {
                    out.push(self.output_expr(expr, alias.value.clone())?);
                }
                SelectItem::ExprWithAliases { .. } => {
                    return Err(unsupported(
                        "multiple aliases for one expression are not supported",
                    ))
                }
                SelectItem::Wildcard(opts) => {
                    check_wildcard_options(opts)?;
                    self.all_columns(&mut out);
                }
                SelectItem::QualifiedWildcard(kind, opts) => {
                    check_wildcard_options(opts)?;
                    let SelectItemQualifiedWildcardKind::ObjectName(name) = kind else {
                        return Err(unsupported("expression wildcards are not supported"));
                    };
                    let idents: Option<Vec<Ident>> =
                        name.0.iter().map(|p| p.as_ident().cloned()).collect();
                    match idents {
                        Some(q) if self.scope.matches(&q) => self.all_columns(&mut out),
                        _ => {
                            return Err(unsupported(format!(
                                "{name}.* does not match the table in FROM (joins are not supported yet)"
                            )))
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    fn all_columns(&mut self, out: &mut Vec<OutputColumn>) {
        for (i, col) in self.scope.table.columns.clone().into_iter().enumerate() {
            let m = self.materialize(Expr::Column(i), col.ty.clone());
            out.push(OutputColumn {
                column: m,
                name: col.name,
                ty: col.ty,
            });
        }
    }

    fn output_expr(&mut self, e: &AExpr, name: String) -> Result<OutputColumn, Unsupported> {
        let t = self.expr(e, None)?;
        if contains_param(&t.expr) {
            return Err(unsupported(
                "parameters in the SELECT list are not supported",
            ));
        }
        let column = self.materialize(t.expr, t.ty.clone());
        Ok(OutputColumn {
            column,
            name,
            ty: t.ty,
        })
    }

    // ----- ORDER BY ----------------------------------------------------------------------

    fn lower_order_by(
        &mut self,
        query: &Query,
        outputs: &[OutputColumn],
    ) -> Result<Vec<OrderKey>, Unsupported> {
        let Some(order_by) = &query.order_by else {
            return Ok(Vec::new());
        };
        if order_by.interpolate.is_some() {
            return Err(unsupported("ORDER BY ... INTERPOLATE is not supported"));
        }
        let OrderByKind::Expressions(exprs) = &order_by.kind else {
            return Err(unsupported("ORDER BY ALL is not supported"));
        };
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
            let column = self.order_column(&obe.expr, outputs)?;
            if matches!(
                self.materialized_types[column],
                SqlType::Json | SqlType::Jsonb | SqlType::Array(_)
            ) {
                return Err(unsupported(format!(
                    "ORDER BY on a {} value is not supported",
                    type_name(&self.materialized_types[column])
                )));
            }
            keys.push(OrderKey {
                column,
                descending,
                nulls_first: obe.options.nulls_first.unwrap_or(descending),
            });
        }
        Ok(keys)
    }

    /// The materialized column an ORDER BY item sorts on: a position in the SELECT list, an
    /// output column name (which wins over input columns, as in Postgres), or an expression.
    fn order_column(&mut self, e: &AExpr, outputs: &[OutputColumn]) -> Result<usize, Unsupported> {
        match strip_nested(e) {
            AExpr::Value(v) => match &v.value {
                AstValue::Number(n, _) => {
                    let pos: usize = n.parse().map_err(|_| {
                        unsupported(format!("ORDER BY position {n} is not in the select list"))
                    })?;
                    return pos
                        .checked_sub(1)
                        .and_then(|i| outputs.get(i))
                        .map(|o| o.column)
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
                if let Some(o) = outputs.iter().find(|o| self.scope.eq(&o.name, &id.value)) {
                    return Ok(o.column);
                }
            }
            _ => {}
        }
        let t = self.expr(e, None)?;
        if contains_param(&t.expr) {
            return Err(unsupported("parameters in ORDER BY are not supported"));
        }
        Ok(self.materialize(t.expr, t.ty))
    }

    // ----- expressions -------------------------------------------------------------------

    /// Lowers an expression over base columns. `hint` types untyped literals and parameters.
    fn expr(&mut self, e: &AExpr, hint: Option<&SqlType>) -> Result<Typed, Unsupported> {
        match e {
            AExpr::Nested(inner) => self.expr(inner, hint),
            AExpr::Identifier(i) => self.column_ref(std::slice::from_ref(i)),
            AExpr::CompoundIdentifier(parts) => self.column_ref(parts),
            AExpr::Value(v) => self.value(&v.value, hint),
            AExpr::TypedString(ts) => {
                let ty = sql_type_of(&ts.data_type)?;
                match &ts.value.value {
                    AstValue::SingleQuotedString(s) => {
                        self.constant(&ty, &Literal::String(s.clone()))
                    }
                    other => Err(unsupported(format!(
                        "typed literal {other} is not supported"
                    ))),
                }
            }
            AExpr::BinaryOp { left, op, right } => self.binary(left, op, right, hint),
            AExpr::UnaryOp { op, expr } => self.unary(op, expr, hint),
            AExpr::IsNull(inner) | AExpr::IsNotNull(inner) => {
                let t = self.expr(inner, None)?;
                Ok(Typed {
                    expr: Expr::IsNull {
                        expr: Box::new(t.expr),
                        negated: matches!(e, AExpr::IsNotNull(_)),
                    },
                    ty: SqlType::Bool,
                })
            }
            AExpr::InList {
                expr,
                list,
                negated,
            } => {
                let t = self.expr(expr, None)?;
                let mut items = Vec::with_capacity(list.len());
                for item in list {
                    let it = self.expr(item, Some(&t.ty))?;
                    comparable(&t.ty, &it.ty)?;
                    items.push(it.expr);
                }
                Ok(bool_typed(Expr::InList {
                    expr: Box::new(t.expr),
                    list: items,
                    negated: *negated,
                }))
            }
            AExpr::Between {
                expr,
                negated,
                low,
                high,
            } => {
                let t = self.expr(expr, None)?;
                let lo = self.expr(low, Some(&t.ty))?;
                let hi = self.expr(high, Some(&t.ty))?;
                comparable(&t.ty, &lo.ty)?;
                comparable(&t.ty, &hi.ty)?;
                Ok(bool_typed(Expr::Between {
                    expr: Box::new(t.expr),
                    low: Box::new(lo.expr),
                    high: Box::new(hi.expr),
                    negated: *negated,
                }))
            }
            AExpr::Like {
                negated,
                any,
                expr,
                pattern,
                escape_char,
            }
            | AExpr::ILike {
                negated,
                any,
                expr,
                pattern,
                escape_char,
            } => {
                if *any {
                    return Err(unsupported("LIKE ANY is not supported"));
                }
                if escape_char.is_some() {
                    return Err(unsupported("LIKE ... ESCAPE is not supported yet"));
                }
                let t = self.expr(expr, Some(&SqlType::Text))?;
                let p = self.expr(pattern, Some(&SqlType::Text))?;
                text_operand(&t.ty, "LIKE")?;
                text_operand(&p.ty, "LIKE")?;
                Ok(bool_typed(Expr::Like {
                    expr: Box::new(t.expr),
                    pattern: Box::new(p.expr),
                    negated: *negated,
                    case_insensitive: matches!(e, AExpr::ILike { .. }),
                }))
            }
            AExpr::Function(f) => self.function(f),
            AExpr::Cast {
                kind,
                expr,
                data_type,
                format,
            } => {
                if !matches!(kind, CastKind::Cast | CastKind::DoubleColon) || format.is_some() {
                    return Err(unsupported(format!("{kind:?} casts are not supported")));
                }
                self.cast(expr, data_type)
            }
            other => Err(unsupported_expr(other)),
        }
    }

    fn column_ref(&mut self, parts: &[Ident]) -> Result<Typed, Unsupported> {
        let col = self.scope.column(parts)?;
        Ok(Typed {
            expr: Expr::Column(col),
            ty: self.base_type(col),
        })
    }

    fn value(&mut self, v: &AstValue, hint: Option<&SqlType>) -> Result<Typed, Unsupported> {
        match v {
            AstValue::Placeholder(p) => self.param(p, hint),
            AstValue::Null => Ok(Typed {
                expr: Expr::Literal(Value::Null),
                ty: hint.cloned().unwrap_or(SqlType::Text),
            }),
            AstValue::Number(n, _) => number_literal(n),
            AstValue::Boolean(b) => Ok(Typed {
                expr: Expr::Literal(Value::Bool(*b)),
                ty: SqlType::Bool,
            }),
            AstValue::SingleQuotedString(s)
            | AstValue::EscapedStringLiteral(s)
            | AstValue::DoubleQuotedString(s) => {
                self.constant(hint.unwrap_or(&SqlType::Text), &Literal::String(s.clone()))
            }
            AstValue::DollarQuotedString(d) => self.constant(
                hint.unwrap_or(&SqlType::Text),
                &Literal::String(d.value.clone()),
            ),
            other => Err(unsupported(format!("literal {other} is not supported"))),
        }
    }

    /// A literal converted to `ty`.
    fn constant(&mut self, ty: &SqlType, lit: &Literal) -> Result<Typed, Unsupported> {
        let v = literal_value(lit, ty)
            .map_err(|e| unsupported(format!("literal cannot be used here: {e}")))?;
        Ok(Typed {
            expr: Expr::Literal(v),
            ty: ty.clone(),
        })
    }

    fn param(&mut self, p: &str, hint: Option<&SqlType>) -> Result<Typed, Unsupported> {
        let n = placeholder_slot(p)
            .ok_or_else(|| unsupported(format!("placeholder {p} is not supported")))?;
        let Some(ty) = hint else {
            return Err(unsupported(format!(
                "could not determine the type of parameter ${n}"
            )));
        };
        let Some(slot) = self.param_types.get_mut(n - 1) else {
            return Err(unsupported(format!("parameter ${n} is out of range")));
        };
        match slot {
            Some(existing) if existing != ty => {
                return Err(unsupported(format!(
                    "parameter ${n} is used as both {} and {}",
                    type_name(existing),
                    type_name(ty)
                )))
            }
            _ => *slot = Some(ty.clone()),
        }
        Ok(Typed {
            expr: Expr::Param(n - 1),
            ty: ty.clone(),
        })
    }

    /// Lowers two operands that must agree on a type: an untyped side (string literal,
    /// NULL, parameter) takes the type of the other side.
    fn operands(
        &mut self,
        left: &AExpr,
        right: &AExpr,
        default: Option<&SqlType>,
    ) -> Result<(Typed, Typed), Unsupported> {
        if is_untyped(left) && !is_untyped(right) {
            let r = self.expr(right, None)?;
            let l = self.expr(left, Some(&r.ty))?;
            Ok((l, r))
        } else if is_untyped(left) {
            let l = self.expr(left, default)?;
            let r = self.expr(right, Some(&l.ty))?;
            Ok((l, r))
        } else {
            let l = self.expr(left, None)?;
            let r = self.expr(right, Some(&l.ty))?;
            Ok((l, r))
        }
    }

    fn binary(
        &mut self,
        left: &AExpr,
        op: &BinaryOperator,
        right: &AExpr,
        hint: Option<&SqlType>,
    ) -> Result<Typed, Unsupported> {
        use BinaryOperator as B;
        let plan_op = match op {
            B::And => BinaryOp::And,
            B::Or => BinaryOp::Or,
            B::Eq => BinaryOp::Eq,
            B::NotEq => BinaryOp::NotEq,
            B::Lt => BinaryOp::Lt,
            B::LtEq => BinaryOp::LtEq,
            B::Gt => BinaryOp::Gt,
            B::GtEq => BinaryOp::GtEq,
            B::Plus => BinaryOp::Add,
            B::Minus => BinaryOp::Sub,
            B::Multiply => BinaryOp::Mul,
            B::Divide => BinaryOp::Div,
            B::Modulo => BinaryOp::Mod,
            B::StringConcat => BinaryOp::Concat,
            other => {
                return Err(unsupported(format!(
                    "operator {other} is not supported yet"
                )))
            }
        };
        let is_arithmetic = match plan_op {
            BinaryOp::And | BinaryOp::Or => {
                let l = self.expr(left, Some(&SqlType::Bool))?;
                let r = self.expr(right, Some(&SqlType::Bool))?;
                if l.ty != SqlType::Bool || r.ty != SqlType::Bool {
                    return Err(unsupported(format!("operands of {op} must be boolean")));
                }
                return Ok(binary_typed(plan_op, l, r, SqlType::Bool));
            }
            BinaryOp::Concat => {
                let l = self.expr(left, Some(&SqlType::Text))?;
                let r = self.expr(right, Some(&SqlType::Text))?;
                text_operand(&l.ty, "||")?;
                text_operand(&r.ty, "||")?;
                return Ok(binary_typed(plan_op, l, r, SqlType::Text));
            }
            BinaryOp::Eq
            | BinaryOp::NotEq
            | BinaryOp::Lt
            | BinaryOp::LtEq
            | BinaryOp::Gt
            | BinaryOp::GtEq => false,
            _ => true,
        };
        // Comparisons yield bool: the caller's hint says nothing about their operands.
        let default = if is_arithmetic { hint } else { None };
        let (l, r) = self.operands(left, right, default)?;
        if is_arithmetic {
            let result = arithmetic_type(plan_op, &l.ty, &r.ty)?;
            Ok(binary_typed(plan_op, l, r, result))
        } else {
            comparable(&l.ty, &r.ty)?;
            Ok(binary_typed(plan_op, l, r, SqlType::Bool))
        }
    }

    fn unary(
        &mut self,
        op: &UnaryOperator,
        inner: &AExpr,
        hint: Option<&SqlType>,
    ) -> Result<Typed, Unsupported> {
        match op {
            UnaryOperator::Not => {
                let t = self.expr(inner, Some(&SqlType::Bool))?;
                if t.ty != SqlType::Bool {
                    return Err(unsupported("argument of NOT must be boolean"));
                }
                Ok(bool_typed(Expr::Unary {
                    op: UnaryOp::Not,
                    expr: Box::new(t.expr),
                }))
            }
            UnaryOperator::Plus => self.expr(inner, hint),
            UnaryOperator::Minus => {
                let t = self.expr(inner, hint)?;
                match (&t.ty, t.expr) {
                    (_, Expr::Literal(Value::Int(i))) if i != i64::MIN => Ok(Typed {
                        expr: Expr::Literal(Value::Int(-i)),
                        ty: t.ty,
                    }),
                    (SqlType::Numeric, Expr::Literal(Value::Numeric(n))) => Ok(Typed {
                        expr: Expr::Literal(Value::Numeric(negate_decimal(&n))),
                        ty: t.ty,
                    }),
                    (
                        SqlType::Int2
                        | SqlType::Int4
                        | SqlType::Int8
                        | SqlType::Float4
                        | SqlType::Float8,
                        expr,
                    ) => Ok(Typed {
                        expr: Expr::Unary {
                            op: UnaryOp::Neg,
                            expr: Box::new(expr),
                        },
                        ty: t.ty,
                    }),
                    (ty, _) => Err(unsupported(format!(
                        "negation of {} values is not supported yet",
                        type_name(ty)
                    ))),
                }
            }
            other => Err(unsupported(format!(
                "operator {other} is not supported yet"
            ))),
        }
    }

    fn function(&mut self, f: &ast::Function) -> Result<Typed, Unsupported> {
        let name = function_name(f)?;
        if f.over.is_some() {
            return Err(unsupported(format!(
                "window functions are not supported yet ({name}() OVER ...)"
            )));
        }
        if AGGREGATES.contains(&name.as_str()) || f.filter.is_some() || !f.within_group.is_empty() {
            return Err(unsupported(format!(
                "aggregate function {name}() is not supported yet"
            )));
        }
        if NON_DETERMINISTIC.contains(&name.as_str()) {
            return Err(unsupported(format!(
                "function {name}() is not deterministic"
            )));
        }
        let args = function_args(f, &name)?;
        match name.as_str() {
            "coalesce" => self.coalesce(&args),
            "abs" => {
                let [arg] = args.as_slice() else {
                    return Err(unsupported("abs() takes one argument"));
                };
                let t = self.expr(arg, None)?;
                match t.ty {
                    SqlType::Int2
                    | SqlType::Int4
                    | SqlType::Int8
                    | SqlType::Float4
                    | SqlType::Float8 => Ok(Typed {
                        expr: Expr::Func {
                            func: Func::Abs,
                            args: vec![t.expr],
                        },
                        ty: t.ty,
                    }),
                    ref ty => Err(unsupported(format!(
                        "abs() on {} values is not supported yet",
                        type_name(ty)
                    ))),
                }
            }
            "length" | "char_length" | "character_length" => {
                let [arg] = args.as_slice() else {
                    return Err(unsupported(format!("{name}() takes one argument")));
                };
                let t = self.expr(arg, Some(&SqlType::Text))?;
                text_operand(&t.ty, &format!("{name}()"))?;
                Ok(Typed {
                    expr: Expr::Func {
                        func: Func::Length,
                        args: vec![t.expr],
                    },
                    ty: SqlType::Int4,
                })
            }
            _ => Err(unsupported(format!(
                "function {name}() is not supported yet"
            ))),
        }
    }

    fn coalesce(&mut self, args: &[&AExpr]) -> Result<Typed, Unsupported> {
        if args.is_empty() {
            return Err(unsupported("coalesce() needs arguments"));
        }
        let mut typed: Vec<Option<Typed>> = Vec::with_capacity(args.len());
        let mut common: Option<SqlType> = None;
        for arg in args {
            if is_untyped(arg) {
                typed.push(None);
                continue;
            }
            let t = self.expr(arg, None)?;
            common = Some(match common {
                None => t.ty.clone(),
                Some(c) => common_type(&c, &t.ty)?,
            });
            typed.push(Some(t));
        }
        let common = common.unwrap_or(SqlType::Text);
        let mut out = Vec::with_capacity(args.len());
        for (arg, t) in args.iter().zip(typed) {
            let t = match t {
                Some(t) => t,
                None => self.expr(arg, Some(&common))?,
            };
            out.push(t.expr);
        }
        Ok(Typed {
            expr: Expr::Func {
                func: Func::Coalesce,
                args: out,
            },
            ty: common,
        })
    }

    fn cast(&mut self, inner: &AExpr, data_type: &DataType) -> Result<Typed, Unsupported> {
        let target = sql_type_of(data_type)?;
        // Constants are converted now, parameters simply take the target type.
        let folded = match strip_nested(inner) {
            AExpr::Value(v) => match &v.value {
                AstValue::Placeholder(p) => Some(self.param(p, Some(&target))?),
                AstValue::Null => Some(Typed {
                    expr: Expr::Literal(Value::Null),
                    ty: target.clone(),
                }),
                AstValue::SingleQuotedString(s) | AstValue::EscapedStringLiteral(s) => {
                    let v = text_value(&target, s)
                        .map_err(|e| unsupported(format!("invalid cast: {e}")))?;
                    Some(Typed {
                        expr: Expr::Literal(v),
                        ty: target.clone(),
                    })
                }
                _ => None,
            },
            _ => None,
        };
        if let Some(t) = folded {
            return Ok(t);
        }
        let t = self.expr(inner, None)?;
        trivial_cast(t, target)
    }
}

/// A cast Larder can evaluate without changing meaning: same type, text to text,
/// integer widening or narrowing (checked for overflow by the dataflow), integer or float
/// to float.
fn trivial_cast(t: Typed, target: SqlType) -> Result<Typed, Unsupported> {
    use SqlType as S;
    let is_int = |ty: &SqlType| matches!(ty, S::Int2 | S::Int4 | S::Int8);
    let rank = |ty: &SqlType| match ty {
        S::Int2 => 0,
        S::Int4 => 1,
        _ => 2,
    };
    let elide = t.ty == target
        || (matches!(t.ty, S::Text | S::Varchar | S::Name)
            && matches!(target, S::Text | S::Varchar))
        || (is_int(&t.ty) && is_int(&target) && rank(&t.ty) <= rank(&target));
    if elide {
        return Ok(Typed {
            expr: t.expr,
            ty: target,
        });
    }
    let node = (is_int(&t.ty) && is_int(&target))
        || ((is_int(&t.ty) || matches!(t.ty, S::Float4 | S::Float8))
            && matches!(target, S::Float4 | S::Float8));
    if node {
        return Ok(Typed {
            expr: Expr::Cast {
                expr: Box::new(t.expr),
                ty: target.clone(),
            },
            ty: target,
        });
    }
    Err(unsupported(format!(
        "cast from {} to {} is not supported yet",
        type_name(&t.ty),
        type_name(&target)
    )))
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

impl Lowerer {
    fn finish(
        mut self,
        output: Vec<OutputColumn>,
        order_by: Vec<OrderKey>,
        offset: usize,
        limit: Option<usize>,
    ) -> Result<CachePlan, Unsupported> {
        let mut param_types = Vec::with_capacity(self.param_types.len());
        for (i, ty) in std::mem::take(&mut self.param_types)
            .into_iter()
            .enumerate()
        {
            match ty {
                Some(ty) => param_types.push(ty),
                None => {
                    return Err(unsupported(format!(
                        "parameter ${} is not used in a supported position",
                        i + 1
                    )))
                }
            }
        }
        let base_types: Vec<SqlType> = self
            .scope
            .table
            .columns
            .iter()
            .map(|c| c.ty.clone())
            .collect();
        let mut nodes = vec![PlanNode {
            op: NodeOp::Base { relation: 0 },
            types: base_types.clone(),
        }];
        if let Some(predicate) = conjunction(self.filter) {
            nodes.push(PlanNode {
                op: NodeOp::Filter {
                    input: 0,
                    predicate,
                },
                types: base_types,
            });
        }
        nodes.push(PlanNode {
            op: NodeOp::Project {
                input: nodes.len() - 1,
                exprs: self.materialized,
            },
            types: self.materialized_types,
        });
        let plan = CachePlan {
            relations: vec![TableRef {
                schema: self.scope.table.schema.clone(),
                name: self.scope.table.name.clone(),
            }],
            nodes,
            key: self.key,
            key_params: self.key_params,
            residual: conjunction(self.residual),
            order_by,
            offset,
            limit,
            output,
            param_types,
            fixed_params: Vec::new(),
        };
        let width = plan.reader_types().len();
        debug_assert_eq!(plan.key.len(), plan.key_params.len());
        debug_assert!(plan.key.iter().all(|k| *k < width));
        debug_assert!(plan.output.iter().all(|o| o.column < width));
        debug_assert!(plan.order_by.iter().all(|o| o.column < width));
        Ok(plan)
    }
}

fn conjunction(parts: Vec<Expr>) -> Option<Expr> {
    parts.into_iter().reduce(|acc, e| Expr::Binary {
        op: BinaryOp::And,
        left: Box::new(acc),
        right: Box::new(e),
        ty: SqlType::Bool,
    })
}

fn split_conjuncts<'a>(e: &'a AExpr, out: &mut Vec<&'a AExpr>) {
    match e {
        AExpr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            split_conjuncts(left, out);
            split_conjuncts(right, out);
        }
        AExpr::Nested(inner) => split_conjuncts(inner, out),
        other => out.push(other),
    }
}

fn strip_nested(mut e: &AExpr) -> &AExpr {
    while let AExpr::Nested(inner) = e {
        e = inner;
    }
    e
}

/// `$k` or `$k::type` (the parameter number and the cast's type).
fn key_param_of(e: &AExpr) -> Option<(usize, Option<&DataType>)> {
    match e {
        AExpr::Value(v) => match &v.value {
            AstValue::Placeholder(p) => placeholder_slot(p).map(|k| (k, None)),
            _ => None,
        },
        AExpr::Cast {
            kind: CastKind::Cast | CastKind::DoubleColon,
            expr,
            data_type,
            format: None,
        } => match key_param_of(strip_nested(expr))? {
            (k, None) => Some((k, Some(data_type))),
            _ => None,
        },
        _ => None,
    }
}

/// Literals and parameters whose type comes from context.
fn is_untyped(e: &AExpr) -> bool {
    match strip_nested(e) {
        AExpr::Value(v) => matches!(
            v.value,
            AstValue::Placeholder(_)
                | AstValue::Null
                | AstValue::SingleQuotedString(_)
                | AstValue::EscapedStringLiteral(_)
                | AstValue::DoubleQuotedString(_)
                | AstValue::DollarQuotedString(_)
        ),
        _ => false,
    }
}

/// Postgres types a number literal: integer if it fits `int4`, else `int8`, else `numeric`.
fn number_literal(n: &str) -> Result<Typed, Unsupported> {
    if let Ok(i) = n.parse::<i64>() {
        let ty = if i32::try_from(i).is_ok() {
            SqlType::Int4
        } else {
            SqlType::Int8
        };
        return Ok(Typed {
            expr: Expr::Literal(Value::Int(i)),
            ty,
        });
    }
    let v = text_value(&SqlType::Numeric, n)
        .map_err(|_| unsupported(format!("number literal {n} is not supported")))?;
    Ok(Typed {
        expr: Expr::Literal(v),
        ty: SqlType::Numeric,
    })
}

fn negate_decimal(n: &str) -> String {
    match n.strip_prefix('-') {
        Some(pos) => pos.to_string(),
        None => format!("-{n}"),
    }
}

fn bool_typed(expr: Expr) -> Typed {
    Typed {
        expr,
        ty: SqlType::Bool,
    }
}

fn binary_typed(op: BinaryOp, l: Typed, r: Typed, ty: SqlType) -> Typed {
    Typed {
        expr: Expr::Binary {
            op,
            left: Box::new(l.expr),
            right: Box::new(r.expr),
            ty: ty.clone(),
        },
        ty,
    }
}

fn type_name(ty: &SqlType) -> &'static str {
    crate::pgtypes::type_name(ty)
}

/// Type families whose members compare with each other.
fn family(ty: &SqlType) -> Result<u8, Unsupported> {
    use SqlType as S;
    Ok(match ty {
        S::Int2 | S::Int4 | S::Int8 | S::Float4 | S::Float8 | S::Numeric => 0,
        S::Text | S::Varchar | S::Name => 1,
        S::Bool => 2,
        S::Bytea => 3,
        S::Date => 4,
        S::Time => 5,
        S::Timestamp => 6,
        S::TimestampTz => 7,
        S::Uuid => 8,
        S::Bpchar => {
            return Err(unsupported(
                "comparisons on char(n) values are not supported yet (padding semantics)",
            ))
        }
        S::Json | S::Jsonb => {
            return Err(unsupported("comparisons on json values are not supported"))
        }
        S::Array(_) => {
            return Err(unsupported(
                "comparisons on array values are not supported yet",
            ))
        }
    })
}

fn comparable(a: &SqlType, b: &SqlType) -> Result<(), Unsupported> {
    if family(a)? == family(b)? {
        Ok(())
    } else {
        Err(unsupported(format!(
            "comparison between {} and {} is not supported",
            type_name(a),
            type_name(b)
        )))
    }
}

/// Whether a column can be a reader key: equality on it must be plain value equality.
fn keyable(ty: &SqlType) -> bool {
    family(ty).is_ok()
}

fn text_operand(ty: &SqlType, what: &str) -> Result<(), Unsupported> {
    match ty {
        SqlType::Text | SqlType::Varchar | SqlType::Name => Ok(()),
        other => Err(unsupported(format!(
            "{what} on {} values is not supported",
            type_name(other)
        ))),
    }
}

fn arithmetic_type(op: BinaryOp, a: &SqlType, b: &SqlType) -> Result<SqlType, Unsupported> {
    use SqlType as S;
    let is_int = |t: &SqlType| matches!(t, S::Int2 | S::Int4 | S::Int8);
    let is_float = |t: &SqlType| matches!(t, S::Float4 | S::Float8);
    if matches!(a, S::Numeric) || matches!(b, S::Numeric) {
        return Err(unsupported(
            "arithmetic on numeric values is not supported yet",
        ));
    }
    for t in [a, b] {
        if !is_int(t) && !is_float(t) {
            return Err(unsupported(format!(
                "arithmetic on {} values is not supported yet",
                type_name(t)
            )));
        }
    }
    if is_float(a) || is_float(b) {
        if op == BinaryOp::Mod {
            return Err(unsupported("% on floating-point values is not supported"));
        }
        return Ok(if *a == S::Float4 && *b == S::Float4 {
            S::Float4
        } else {
            S::Float8
        });
    }
    Ok(match (a, b) {
        (S::Int2, S::Int2) => S::Int2,
        (S::Int8, _) | (_, S::Int8) => S::Int8,
        _ => S::Int4,
    })
}

/// The result type of `COALESCE` over two argument types.
fn common_type(a: &SqlType, b: &SqlType) -> Result<SqlType, Unsupported> {
    use SqlType as S;
    if a == b {
        return Ok(a.clone());
    }
    let rank = |t: &SqlType| match t {
        S::Int2 => Some(0),
        S::Int4 => Some(1),
        S::Int8 => Some(2),
        S::Numeric => Some(3),
        S::Float4 => Some(4),
        S::Float8 => Some(5),
        _ => None,
    };
    match (rank(a), rank(b)) {
        (Some(x), Some(y)) => Ok(if x >= y { a.clone() } else { b.clone() }),
        _ if family(a).ok() == Some(1) && family(b).ok() == Some(1) => Ok(S::Text),
        _ => Err(unsupported(format!(
            "coalesce() of {} and {} is not supported",
            type_name(a),
            type_name(b)
        ))),
    }
}

fn function_name(f: &ast::Function) -> Result<String, Unsupported> {
    let parts: Vec<String> = f
        .name
        .0
        .iter()
        .map(|p| p.as_ident().map(|i| i.value.to_lowercase()))
        .collect::<Option<_>>()
        .ok_or_else(|| unsupported("computed function names are not supported"))?;
    match parts.as_slice() {
        [name] => Ok(name.clone()),
        [schema, name] if schema == "pg_catalog" => Ok(name.clone()),
        _ => Err(unsupported(format!(
            "function {}() is not supported yet",
            parts.join(".")
        ))),
    }
}

fn function_args<'a>(f: &'a ast::Function, name: &str) -> Result<Vec<&'a AExpr>, Unsupported> {
    if !matches!(f.parameters, FunctionArguments::None) || f.null_treatment.is_some() {
        return Err(unsupported(format!(
            "function {name}() with modifiers is not supported"
        )));
    }
    let list = match &f.args {
        FunctionArguments::List(list) => list,
        FunctionArguments::None => return Ok(Vec::new()),
        FunctionArguments::Subquery(_) => {
            return Err(unsupported("subqueries are not supported yet"))
        }
    };
    if list.duplicate_treatment.is_some() || !list.clauses.is_empty() {
        return Err(unsupported(format!(
            "function {name}() with DISTINCT/ORDER BY arguments is not supported"
        )));
    }
    list.args
        .iter()
        .map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Ok(e),
            _ => Err(unsupported(format!(
                "function {name}() with named or wildcard arguments is not supported"
            ))),
        })
        .collect()
}

/// Aggregate functions (refused: no GROUP BY support yet, implicit grouping included).
const AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "array_agg",
    "string_agg",
    "bool_and",
    "bool_or",
    "every",
    "json_agg",
    "jsonb_agg",
    "json_object_agg",
    "jsonb_object_agg",
    "group_concat",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "variance",
    "var_pop",
    "var_samp",
    "bit_and",
    "bit_or",
    "bit_xor",
    "percentile_cont",
    "percentile_disc",
    "mode",
    "xmlagg",
    "corr",
    "covar_pop",
    "covar_samp",
    "regr_count",
    "any_value",
];

/// Functions whose result changes between calls or depends on the session.
const NON_DETERMINISTIC: &[&str] = &[
    "now",
    "current_timestamp",
    "current_date",
    "current_time",
    "localtime",
    "localtimestamp",
    "clock_timestamp",
    "statement_timestamp",
    "transaction_timestamp",
    "timeofday",
    "random",
    "random_normal",
    "setseed",
    "gen_random_uuid",
    "uuid_generate_v1",
    "uuid_generate_v4",
    "nextval",
    "currval",
    "lastval",
    "current_user",
    "session_user",
    "user",
    "current_role",
    "current_schema",
    "current_schemas",
    "current_database",
    "current_catalog",
    "pg_backend_pid",
    "txid_current",
    "inet_client_addr",
    "version",
    "rand",
    "uuid",
    "uuid_short",
    "sysdate",
    "curdate",
    "curtime",
    "utc_timestamp",
    "utc_date",
    "utc_time",
    "unix_timestamp",
    "connection_id",
    "last_insert_id",
    "database",
    "schema",
    "found_rows",
    "row_count",
    "sleep",
    "pg_sleep",
];

/// Names the construct of an expression lowering does not handle.
fn unsupported_expr(e: &AExpr) -> Unsupported {
    let what = match e {
        AExpr::Subquery(_) | AExpr::Exists { .. } | AExpr::InSubquery { .. } => {
            return unsupported("subqueries are not supported yet")
        }
        AExpr::Case { .. } => "CASE expressions",
        AExpr::IsTrue(_)
        | AExpr::IsNotTrue(_)
        | AExpr::IsFalse(_)
        | AExpr::IsNotFalse(_)
        | AExpr::IsUnknown(_)
        | AExpr::IsNotUnknown(_) => "IS [NOT] TRUE/FALSE/UNKNOWN",
        AExpr::IsDistinctFrom(..) | AExpr::IsNotDistinctFrom(..) => "IS [NOT] DISTINCT FROM",
        AExpr::AnyOp { .. } | AExpr::AllOp { .. } => "ANY/ALL comparisons",
        AExpr::SimilarTo { .. } | AExpr::RLike { .. } => "regular expression matching",
        AExpr::Interval(_) => "INTERVAL values",
        AExpr::Extract { .. } => "EXTRACT",
        AExpr::AtTimeZone { .. } => "AT TIME ZONE",
        AExpr::Collate { .. } => "COLLATE",
        AExpr::JsonAccess { .. } | AExpr::CompoundFieldAccess { .. } => "field and JSON access",
        AExpr::Substring { .. } => "function substring()",
        AExpr::Trim { .. } => "function trim()",
        AExpr::Position { .. } => "function position()",
        AExpr::Overlay { .. } => "function overlay()",
        AExpr::Ceil { .. } => "function ceil()",
        AExpr::Floor { .. } => "function floor()",
        AExpr::Convert { .. } => "CONVERT",
        AExpr::Prefixed { .. } => "character set introducers",
        AExpr::Tuple(_) => "row values",
        AExpr::Array(_) => "array constructors",
        AExpr::MatchAgainst { .. } => "MATCH ... AGAINST",
        AExpr::Wildcard(_) | AExpr::QualifiedWildcard(..) => "wildcards in expressions",
        _ => {
            let text: String = e.to_string().chars().take(60).collect();
            return unsupported(format!("expression {text} is not supported yet"));
        }
    };
    unsupported(format!("{what} are not supported yet"))
}

/// Maps a SQL type name to a [`SqlType`]; refuses types with modifiers that would change
/// values (`varchar(10)`, `numeric(10,2)`).
pub fn sql_type_of(dt: &DataType) -> Result<SqlType, Unsupported> {
    use SqlType as S;
    Ok(match dt {
        DataType::SmallInt(None) | DataType::Int2(None) => S::Int2,
        DataType::Int(None) | DataType::Integer(None) | DataType::Int4(None) => S::Int4,
        DataType::BigInt(None) | DataType::Int8(None) => S::Int8,
        DataType::Real | DataType::Float4 => S::Float4,
        DataType::DoublePrecision | DataType::Float8 | DataType::Double(ExactNumberInfo::None) => {
            S::Float8
        }
        DataType::Numeric(ExactNumberInfo::None) | DataType::Decimal(ExactNumberInfo::None) => {
            S::Numeric
        }
        DataType::Text => S::Text,
        DataType::Varchar(None)
        | DataType::CharacterVarying(None)
        | DataType::CharVarying(None) => S::Varchar,
        DataType::Bool | DataType::Boolean => S::Bool,
        DataType::Date => S::Date,
        DataType::Time(None, TimezoneInfo::None | TimezoneInfo::WithoutTimeZone) => S::Time,
        DataType::Timestamp(None, TimezoneInfo::None | TimezoneInfo::WithoutTimeZone) => {
            S::Timestamp
        }
        DataType::Timestamp(None, TimezoneInfo::WithTimeZone | TimezoneInfo::Tz) => S::TimestampTz,
        DataType::Uuid => S::Uuid,
        DataType::Bytea => S::Bytea,
        DataType::JSON => S::Json,
        DataType::JSONB => S::Jsonb,
        DataType::Custom(name, mods) if mods.is_empty() => {
            match name.to_string().to_lowercase().as_str() {
                "name" => S::Name,
                "timestamptz" => S::TimestampTz,
                "int2" => S::Int2,
                "int4" => S::Int4,
                "int8" => S::Int8,
                "float4" => S::Float4,
                "float8" => S::Float8,
                "bool" => S::Bool,
                "varchar" => S::Varchar,
                other => return Err(unsupported(format!("type {other} is not supported"))),
            }
        }
        other => return Err(unsupported(format!("type {other} is not supported"))),
    })
}

/// Postgres' internal type name, which it uses to name a cast's output column.
fn short_type_name(ty: &SqlType) -> &'static str {
    use SqlType as S;
    match ty {
        S::Bool => "bool",
        S::Int2 => "int2",
        S::Int4 => "int4",
        S::Int8 => "int8",
        S::Float4 => "float4",
        S::Float8 => "float8",
        S::Numeric => "numeric",
        S::Text => "text",
        S::Varchar => "varchar",
        S::Bpchar => "bpchar",
        S::Name => "name",
        S::Bytea => "bytea",
        S::Date => "date",
        S::Time => "time",
        S::Timestamp => "timestamp",
        S::TimestampTz => "timestamptz",
        S::Uuid => "uuid",
        S::Json => "json",
        S::Jsonb => "jsonb",
        S::Array(_) => "array",
    }
}

/// Postgres' `FigureColname`: the output name of an unaliased SELECT item with its
/// strength (2: column or function name, 1: type name of a cast). `None` means `?column?`.
fn figure_colname(e: &AExpr) -> Option<(String, u8)> {
    match e {
        AExpr::Nested(inner) => figure_colname(inner),
        AExpr::Identifier(i) => Some((i.value.clone(), 2)),
        AExpr::CompoundIdentifier(parts) => parts.last().map(|i| (i.value.clone(), 2)),
        AExpr::Function(f) => f
            .name
            .0
            .last()
            .and_then(|p| p.as_ident())
            .map(|i| (i.value.to_lowercase(), 2)),
        AExpr::Cast {
            expr, data_type, ..
        } => match figure_colname(expr) {
            Some((name, 2)) => Some((name, 2)),
            _ => sql_type_of(data_type)
                .ok()
                .map(|t| (short_type_name(&t).to_string(), 1)),
        },
        AExpr::TypedString(ts) => sql_type_of(&ts.data_type)
            .ok()
            .map(|t| (short_type_name(&t).to_string(), 1)),
        AExpr::Value(v) if matches!(v.value, AstValue::Boolean(_)) => Some(("bool".into(), 1)),
        AExpr::Case { .. } => Some(("case".into(), 1)),
        _ => None,
    }
}

fn contains_param(e: &Expr) -> bool {
    let mut found = false;
    visit_plan_expr(e, &mut |x| found |= matches!(x, Expr::Param(_)));
    found
}

fn visit_plan_expr(e: &Expr, f: &mut impl FnMut(&Expr)) {
    f(e);
    match e {
        Expr::Column(_) | Expr::Literal(_) | Expr::Param(_) => {}
        Expr::Unary { expr, .. } | Expr::IsNull { expr, .. } | Expr::Cast { expr, .. } => {
            visit_plan_expr(expr, f)
        }
        Expr::Binary { left, right, .. } => {
            visit_plan_expr(left, f);
            visit_plan_expr(right, f);
        }
        Expr::InList { expr, list, .. } => {
            visit_plan_expr(expr, f);
            list.iter().for_each(|x| visit_plan_expr(x, f));
        }
        Expr::Between {
            expr, low, high, ..
        } => {
            visit_plan_expr(expr, f);
            visit_plan_expr(low, f);
            visit_plan_expr(high, f);
        }
        Expr::Like { expr, pattern, .. } => {
            visit_plan_expr(expr, f);
            visit_plan_expr(pattern, f);
        }
        Expr::Func { args, .. } => args.iter().for_each(|x| visit_plan_expr(x, f)),
    }
}

/// Rewrites every `Column(i)` to `Column(f(i))`.
fn map_columns(e: Expr, f: &mut dyn FnMut(usize) -> usize) -> Expr {
    let bx = |b: Box<Expr>, f: &mut dyn FnMut(usize) -> usize| Box::new(map_columns(*b, f));
    match e {
        Expr::Column(c) => Expr::Column(f(c)),
        Expr::Literal(_) | Expr::Param(_) => e,
        Expr::Unary { op, expr } => Expr::Unary {
            op,
            expr: bx(expr, f),
        },
        Expr::IsNull { expr, negated } => Expr::IsNull {
            expr: bx(expr, f),
            negated,
        },
        Expr::Cast { expr, ty } => Expr::Cast {
            expr: bx(expr, f),
            ty,
        },
        Expr::Binary {
            op,
            left,
            right,
            ty,
        } => Expr::Binary {
            op,
            left: bx(left, f),
            right: bx(right, f),
            ty,
        },
        Expr::InList {
            expr,
            list,
            negated,
        } => Expr::InList {
            expr: bx(expr, f),
            list: list.into_iter().map(|x| map_columns(x, f)).collect(),
            negated,
        },
        Expr::Between {
            expr,
            low,
            high,
            negated,
        } => Expr::Between {
            expr: bx(expr, f),
            low: bx(low, f),
            high: bx(high, f),
            negated,
        },
        Expr::Like {
            expr,
            pattern,
            negated,
            case_insensitive,
        } => Expr::Like {
            expr: bx(expr, f),
            pattern: bx(pattern, f),
            negated,
            case_insensitive,
        },
        Expr::Func { func, args } => Expr::Func {
            func,
            args: args.into_iter().map(|x| map_columns(x, f)).collect(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::normalize;
    use crate::plan::Expr as P;
    use crate::statement::Dialect;
    use crate::value::Column;

    /// The single-table view of a plan (Base -> optional Filter -> Project) these tests check.
    trait SingleTable {
        fn table(&self) -> TableRef;
        fn filter(&self) -> Option<Expr>;
        fn materialized(&self) -> Vec<Expr>;
    }

    impl SingleTable for CachePlan {
        fn table(&self) -> TableRef {
            self.relations[0].clone()
        }
        fn filter(&self) -> Option<Expr> {
            self.nodes.iter().find_map(|n| match &n.op {
                NodeOp::Filter { predicate, .. } => Some(predicate.clone()),
                _ => None,
            })
        }
        fn materialized(&self) -> Vec<Expr> {
            match &self.nodes.last().expect("nodes").op {
                NodeOp::Project { exprs, .. } => exprs.clone(),
                other => panic!("last node is {other:?}"),
            }
        }
    }

    struct TestCatalog {
        tables: Vec<TableSchema>,
        case_insensitive: bool,
    }

    impl Catalog for TestCatalog {
        fn table(&self, schema: Option<&str>, name: &str) -> Option<TableSchema> {
            let schema = schema.unwrap_or("public");
            self.tables
                .iter()
                .find(|t| {
                    t.schema == schema
                        && (t.name == name
                            || (self.case_insensitive && t.name.eq_ignore_ascii_case(name)))
                })
                .cloned()
        }
        fn column_names_case_insensitive(&self) -> bool {
            self.case_insensitive
        }
    }

    fn table(schema: &str, name: &str, cols: &[(&str, SqlType)]) -> TableSchema {
        TableSchema {
            schema: schema.into(),
            name: name.into(),
            columns: cols
                .iter()
                .map(|(n, ty)| Column {
                    name: (*n).into(),
                    ty: ty.clone(),
                    type_oid: 0,
                    typmod: -1,
                })
                .collect(),
            key: vec![0],
        }
    }

    fn catalog() -> TestCatalog {
        use SqlType as S;
        TestCatalog {
            tables: vec![
                table(
                    "public",
                    "users",
                    &[
                        ("id", S::Int4),              // 0
                        ("name", S::Text),            // 1
                        ("email", S::Varchar),        // 2
                        ("age", S::Int2),             // 3
                        ("score", S::Float8),         // 4
                        ("balance", S::Numeric),      // 5
                        ("active", S::Bool),          // 6
                        ("created_at", S::Timestamp), // 7
                        ("code", S::Bpchar),          // 8
                        ("data", S::Jsonb),           // 9
                        ("org_id", S::Int8),          // 10
                    ],
                ),
                table(
                    "blog",
                    "posts",
                    &[("id", S::Int8), ("title", S::Text), ("author_id", S::Int4)],
                ),
            ],
            case_insensitive: false,
        }
    }

    fn plan(sql: &str) -> CachePlan {
        let n = normalize(sql, Dialect::Postgres).unwrap();
        match lower(&n.query, &catalog()) {
            Ok(p) => p,
            Err(e) => panic!("{sql}: {e}"),
        }
    }

    fn refuse(sql: &str) -> String {
        let n = normalize(sql, Dialect::Postgres).unwrap();
        match lower(&n.query, &catalog()) {
            Ok(p) => panic!("{sql} was accepted: {p:?}"),
            Err(e) => e.reason,
        }
    }

    fn col(i: usize) -> Box<P> {
        Box::new(P::Column(i))
    }

    fn param(i: usize) -> Box<P> {
        Box::new(P::Param(i))
    }

    fn names(p: &CachePlan) -> Vec<&str> {
        p.output.iter().map(|o| o.name.as_str()).collect()
    }

    #[test]
    fn point_lookup_with_star() {
        let p = plan("SELECT * FROM users WHERE id = $1");
        assert_eq!(
            p.table(),
            TableRef {
                schema: "public".into(),
                name: "users".into()
            }
        );
        assert_eq!(p.materialized().len(), 11);
        assert_eq!(p.materialized()[0], P::Column(0));
        assert_eq!(p.materialized()[1], P::Column(1));
        assert_eq!(p.key, vec![0]);
        assert_eq!(p.key_params, vec![0]);
        assert_eq!(p.param_types, vec![SqlType::Int4]);
        assert_eq!(p.filter(), None);
        assert_eq!(p.residual, None);
        assert_eq!(names(&p)[..3], ["id", "name", "email"]);
        assert_eq!(p.output[3].ty, SqlType::Int2);
        assert_eq!((p.offset, p.limit), (0, None));
        assert!(p.order_by.is_empty());
    }

    #[test]
    fn equality_in_list_and_placeholder_lower_identically() {
        let a = plan("SELECT name FROM users WHERE id = 7");
        assert_eq!(a, plan("SELECT name FROM users WHERE id IN (1, 2, 3)"));
        assert_eq!(a, plan("select NAME from USERS where 5 = id"));
        assert_eq!(a.key, vec![0]);
        assert_eq!(a.materialized(), vec![P::Column(0), P::Column(1)]);
        assert_eq!(
            a.output,
            vec![OutputColumn {
                column: 1,
                name: "name".into(),
                ty: SqlType::Text
            }]
        );
    }

    #[test]
    fn filter_key_and_residual_split() {
        let p = plan(
            "SELECT name FROM users WHERE active AND email IS NOT NULL AND id = 3 AND age > 18",
        );
        assert_eq!(
            p.filter(),
            Some(P::Binary {
                op: BinaryOp::And,
                left: col(6),
                right: Box::new(P::IsNull {
                    expr: col(2),
                    negated: true
                }),
                ty: SqlType::Bool,
            })
        );
        assert_eq!(
            p.materialized(),
            vec![P::Column(0), P::Column(3), P::Column(1)]
        );
        assert_eq!(p.key, vec![0]);
        assert_eq!(p.key_params, vec![0]);
        assert_eq!(
            p.residual,
            Some(P::Binary {
                op: BinaryOp::Gt,
                left: col(1),
                right: param(1),
                ty: SqlType::Bool
            })
        );
        assert_eq!(p.param_types, vec![SqlType::Int4, SqlType::Int2]);
        assert_eq!(p.output[0].column, 2);
    }

    #[test]
    fn compound_keys() {
        let p = plan("SELECT id FROM users WHERE org_id = 1 AND name = 'bob'");
        assert_eq!(p.key, vec![0, 1]);
        assert_eq!(p.key_params, vec![0, 1]);
        assert_eq!(
            p.materialized(),
            vec![P::Column(10), P::Column(1), P::Column(0)]
        );
        assert_eq!(p.param_types, vec![SqlType::Int8, SqlType::Text]);
    }

    #[test]
    fn residual_equality_may_be_multi_valued() {
        let p = plan("SELECT id FROM users WHERE id = 1 AND id IN (2, 3)");
        assert_eq!(p.key, vec![0]);
        assert_eq!(
            p.residual,
            Some(P::InList {
                expr: col(0),
                list: vec![P::Param(1)],
                negated: false
            })
        );
        let p = plan("SELECT id FROM users WHERE age + 1 IN (3, 4)");
        assert!(p.key.is_empty());
        assert_eq!(
            p.residual,
            Some(P::InList {
                expr: Box::new(P::Binary {
                    op: BinaryOp::Add,
                    left: col(0),
                    right: Box::new(P::Literal(Value::Int(1))),
                    ty: SqlType::Int4
                }),
                list: vec![P::Param(0)],
                negated: false
            })
        );
        assert_eq!(p.materialized()[0], P::Column(3));
        assert_eq!(p.param_types, vec![SqlType::Int4]);
    }

    #[test]
    fn predicates_of_every_kind() {
        let p = plan(
            "SELECT id FROM users WHERE name LIKE 'a%' AND email ILIKE 'B%' AND age BETWEEN 1 AND 5 \
             AND org_id NOT IN (1, 2) AND (active OR score > 1.5) AND NOT (created_at < '2024-01-01')",
        );
        assert_eq!(
            p.param_types,
            vec![
                SqlType::Text,
                SqlType::Text,
                SqlType::Int2,
                SqlType::Int2,
                SqlType::Int8,
                SqlType::Int8,
                SqlType::Float8,
                SqlType::Timestamp
            ]
        );
        assert!(p.key.is_empty());
        assert_eq!(p.filter(), None);
        let residual = p.residual.clone().unwrap();
        let mut likes = Vec::new();
        visit_plan_expr(&residual, &mut |e| {
            if let P::Like {
                case_insensitive, ..
            } = e
            {
                likes.push(*case_insensitive);
            }
        });
        assert_eq!(likes, vec![false, true]);
        // Every base column the residual reads is materialized, and only those.
        assert_eq!(
            p.materialized(),
            vec![
                P::Column(1),
                P::Column(2),
                P::Column(3),
                P::Column(10),
                P::Column(6),
                P::Column(4),
                P::Column(7),
                P::Column(0)
            ]
        );
    }

    #[test]
    fn expressions_in_select_list() {
        let p = plan(
            "SELECT id + 1, age * 2 AS dbl, score / 2, name || '!', coalesce(email, name), abs(age), \
             length(name), 1.50, 'x', true, id::int8, age + age, -age, NULL FROM users WHERE id = 1",
        );
        assert_eq!(
            names(&p),
            [
                "?column?", "dbl", "?column?", "?column?", "coalesce", "abs", "length", "?column?",
                "?column?", "bool", "id", "?column?", "?column?", "?column?"
            ]
        );
        let types: Vec<SqlType> = p.output.iter().map(|o| o.ty.clone()).collect();
        use SqlType as S;
        assert_eq!(
            types,
            [
                S::Int4,
                S::Int4,
                S::Float8,
                S::Text,
                S::Text,
                S::Int2,
                S::Int4,
                S::Numeric,
                S::Text,
                S::Bool,
                S::Int8,
                S::Int2,
                S::Int2,
                S::Text
            ]
        );
        let lit = |i: usize| p.materialized()[p.output[i].column].clone();
        assert_eq!(lit(7), P::Literal(Value::Numeric("1.50".into())));
        assert_eq!(lit(8), P::Literal(Value::Text("x".into())));
        assert_eq!(lit(10), P::Column(0));
        assert_eq!(
            lit(4),
            P::Func {
                func: Func::Coalesce,
                args: vec![P::Column(2), P::Column(1)]
            }
        );
        assert_eq!(
            lit(12),
            P::Unary {
                op: UnaryOp::Neg,
                expr: col(3)
            }
        );
    }

    #[test]
    fn casts() {
        let p = plan("SELECT age::int8 AS a, id::float8 AS b, '2024-01-02'::date AS c, email::text AS d FROM users");
        assert_eq!(p.materialized()[p.output[0].column], P::Column(3));
        assert_eq!(p.output[0].ty, SqlType::Int8);
        assert_eq!(
            p.materialized()[p.output[1].column],
            P::Cast {
                expr: col(0),
                ty: SqlType::Float8
            }
        );
        assert_eq!(
            p.materialized()[p.output[2].column],
            P::Literal(Value::Date(8767))
        );
        assert_eq!(p.output[3].ty, SqlType::Text);
        assert_eq!(names(&plan("SELECT '1'::int4 FROM users")), ["int4"]);
        assert!(refuse("SELECT name::int4 FROM users").contains("cast from text to integer"));
        let p = plan("SELECT id FROM users WHERE id = $1::int8");
        assert_eq!(p.param_types, vec![SqlType::Int8]);
        assert!(p.key.is_empty());
        assert_eq!(
            p.residual,
            Some(P::InList {
                expr: col(0),
                list: vec![P::Param(0)],
                negated: false
            })
        );
        let p = plan("SELECT id FROM users WHERE created_at = '2024-01-01'::timestamp AND id = CAST($1 AS integer)");
        assert_eq!(p.key, vec![0, 1]);
        assert_eq!(p.param_types, vec![SqlType::Timestamp, SqlType::Int4]);
    }

    #[test]
    fn order_by_limit_offset() {
        let p = plan(
            "SELECT id, name AS n FROM users WHERE org_id = $1 ORDER BY n DESC, 1, age NULLS FIRST, score + 1 DESC NULLS LAST LIMIT 10 OFFSET 5",
        );
        // materialized: org_id (key), id, name, age, score + 1
        assert_eq!(
            p.materialized()[..4],
            [P::Column(10), P::Column(0), P::Column(1), P::Column(3)]
        );
        assert_eq!(
            p.order_by,
            vec![
                OrderKey {
                    column: 2,
                    descending: true,
                    nulls_first: true
                },
                OrderKey {
                    column: 1,
                    descending: false,
                    nulls_first: false
                },
                OrderKey {
                    column: 3,
                    descending: false,
                    nulls_first: true
                },
                OrderKey {
                    column: 4,
                    descending: true,
                    nulls_first: false
                },
            ]
        );
        assert_eq!((p.offset, p.limit), (5, Some(10)));
        let p = plan("SELECT id FROM users ORDER BY name LIMIT ALL");
        assert_eq!(p.limit, None);
        let m = normalize("SELECT id FROM users LIMIT 5, 10", Dialect::MySql).unwrap();
        let p = lower(&m.query, &catalog()).unwrap();
        assert_eq!((p.offset, p.limit), (5, Some(10)));
    }

    #[test]
    fn schema_qualified_and_aliased_tables() {
        let p = plan("SELECT p.title FROM blog.posts AS p WHERE p.author_id = 9");
        assert_eq!(
            p.table(),
            TableRef {
                schema: "blog".into(),
                name: "posts".into()
            }
        );
        assert_eq!(p.param_types, vec![SqlType::Int4]);
        assert_eq!(names(&p), ["title"]);
        let p =
            plan("SELECT blog.posts.id, posts.title, posts.* FROM blog.posts WHERE posts.id = 1");
        assert_eq!(names(&p), ["id", "title", "id", "title", "author_id"]);
        assert_eq!(
            p.materialized(),
            vec![P::Column(0), P::Column(1), P::Column(2)]
        );
        assert!(refuse("SELECT posts.title FROM blog.posts p").contains("does not match"));
    }

    #[test]
    fn mysql_case_insensitive_columns() {
        let mut cat = catalog();
        cat.case_insensitive = true;
        let n = normalize("SELECT `Name` FROM Users WHERE ID = ?", Dialect::MySql).unwrap();
        let p = lower(&n.query, &cat).unwrap();
        assert_eq!(p.key, vec![0]);
        assert_eq!(p.output[0].name, "Name");
        assert_eq!(p.materialized(), vec![P::Column(0), P::Column(1)]);
    }

    #[test]
    fn refusals_name_the_construct() {
        let cases = [
            (
                "SELECT * FROM users u JOIN blog.posts p ON p.author_id = u.id",
                "joins are not supported yet",
            ),
            (
                "SELECT * FROM users, blog.posts",
                "joins are not supported yet",
            ),
            (
                "SELECT * FROM users WHERE id IN (SELECT author_id FROM blog.posts)",
                "subqueries are not supported yet",
            ),
            (
                "SELECT * FROM (SELECT * FROM users) AS x",
                "subqueries in FROM are not supported yet",
            ),
            (
                "WITH x AS (SELECT 1) SELECT * FROM users",
                "common table expressions (WITH) are not supported yet",
            ),
            (
                "SELECT age FROM users GROUP BY age",
                "GROUP BY is not supported yet",
            ),
            (
                "SELECT count(*) FROM users",
                "aggregate function count() is not supported yet",
            ),
            (
                "SELECT id FROM users HAVING id > 1",
                "HAVING is not supported yet",
            ),
            (
                "SELECT DISTINCT name FROM users",
                "DISTINCT is not supported yet",
            ),
            (
                "SELECT row_number() OVER () FROM users",
                "window functions are not supported yet (row_number() OVER ...)",
            ),
            (
                "SELECT id FROM users UNION SELECT id FROM users",
                "UNION is not supported yet",
            ),
            (
                "SELECT * FROM users WHERE id = 1 FOR UPDATE",
                "row locking clauses (FOR UPDATE/FOR SHARE) cannot be served from a cache",
            ),
            (
                "SELECT * FROM users WHERE created_at > now()",
                "function now() is not deterministic",
            ),
            (
                "SELECT * FROM users WHERE created_at > CURRENT_TIMESTAMP",
                "function current_timestamp() is not deterministic",
            ),
            (
                "SELECT random() FROM users",
                "function random() is not deterministic",
            ),
            (
                "SELECT upper(name) FROM users",
                "function upper() is not supported yet",
            ),
            (
                "SELECT nope FROM users",
                "unknown column nope in table users",
            ),
            (
                "SELECT * FROM nope",
                "table nope is not known to Larder (missing or not replicated)",
            ),
            (
                "SELECT id + $1 FROM users",
                "parameters in the SELECT list are not supported",
            ),
            (
                "SELECT id FROM users LIMIT $1",
                "LIMIT with a parameter is not supported yet",
            ),
            (
                "SELECT id FROM users OFFSET $1",
                "OFFSET with a parameter is not supported yet",
            ),
            (
                "SELECT balance + 1 FROM users",
                "arithmetic on numeric values is not supported yet",
            ),
            (
                "SELECT id FROM users WHERE code = 'x'",
                "comparisons on char(n) values are not supported yet (padding semantics)",
            ),
            (
                "SELECT id FROM users WHERE data = '{}'",
                "comparisons on json values are not supported",
            ),
            (
                "SELECT CASE WHEN active THEN 1 END FROM users",
                "CASE expressions are not supported yet",
            ),
            ("SELECT 1", "a SELECT without FROM has nothing to cache"),
            (
                "SELECT id FROM users WHERE $1 IS NULL",
                "could not determine the type of parameter $1",
            ),
            (
                "SELECT id FROM users WHERE name = id",
                "comparison between text and integer is not supported",
            ),
            (
                "SELECT id FROM users ORDER BY 3",
                "ORDER BY position 3 is not in the select list",
            ),
            (
                "SELECT id FROM users ORDER BY data",
                "ORDER BY on a jsonb value is not supported",
            ),
            (
                "SELECT id FROM users WHERE id = ANY($1)",
                "ANY/ALL comparisons are not supported yet",
            ),
            (
                "SELECT score % 2 FROM users",
                "% on floating-point values is not supported",
            ),
            (
                "SELECT id FROM users WHERE age",
                "WHERE condition of type smallint is not boolean",
            ),
        ];
        for (sql, reason) in cases {
            assert_eq!(refuse(sql), reason, "{sql}");
        }
    }

    #[test]
    fn normalize_lower_resolve_end_to_end() {
        use crate::normalize::resolve_params;
        let n = normalize(
            "SELECT name FROM users WHERE id IN (1, 2, 2) AND created_at > '2024-01-01 10:00' AND name LIKE $1",
            Dialect::Postgres,
        )
        .unwrap();
        let p = lower(&n.query, &catalog()).unwrap();
        assert_eq!(p.key_params, vec![0]);
        let bound = |i: usize| (i == 1).then(|| Value::Text("a%".into()));
        let values = resolve_params(&n.params, &bound, &p.param_types).unwrap();
        assert_eq!(
            values,
            vec![
                vec![Value::Int(1), Value::Int(2)],
                vec![Value::Timestamp(757_418_400_000_000)],
                vec![Value::Text("a%".into())],
            ]
        );
    }

    #[test]
    fn untyped_parameter_positions_are_refused() {
        assert_eq!(
            refuse("SELECT id FROM users WHERE id = 1 ORDER BY $2"),
            "parameters in ORDER BY are not supported"
        );
    }
}
