//! FROM: tables, `JOIN ... ON/USING`, derived tables and common table expressions.

use std::ops::ControlFlow;

use sqlparser::ast::{
    Expr as AExpr, Ident, JoinConstraint, JoinOperator, ObjectName, ObjectNamePart, Query,
    TableAlias, TableFactor, TableWithJoins, Visit, Visitor,
};

use super::graph::{Cte, Graph, Rel};
use super::scope::{Merged, Qualifier, Scope};
use super::select::lower_query_rel;
use super::subquery::sub_pred;
use super::types::{join_type, type_name};
use super::util::{conjunction, map_columns, split_conjuncts};
use super::{unsupported, Lowerer, ParamMode};
use crate::error::Unsupported;
use crate::plan::{BinaryOp, Expr, JoinKind, NodeRef};
use crate::value::SqlType;

/// A lowered FROM item: its node and the scope of its row.
pub(super) struct Item {
    pub node: NodeRef,
    pub scope: Scope,
}

pub(super) fn lower_from(
    g: &mut Graph<'_>,
    from: &[TableWithJoins],
) -> Result<Vec<Item>, Unsupported> {
    if from.is_empty() {
        return Err(unsupported("a SELECT without FROM has nothing to cache"));
    }
    from.iter().map(|twj| from_item(g, twj)).collect()
}

fn from_item(g: &mut Graph<'_>, twj: &TableWithJoins) -> Result<Item, Unsupported> {
    let mut acc = table_factor(g, &twj.relation)?;
    for join in &twj.joins {
        let right = table_factor(g, &join.relation)?;
        acc = lower_join(g, acc, right, &join.join_operator)?;
    }
    Ok(acc)
}

/// Lowers the CTEs of `query` that the query refers to, making them visible by name.
pub(super) fn push_ctes(g: &mut Graph<'_>, query: &Query) -> Result<(), Unsupported> {
    let Some(with) = &query.with else {
        return Ok(());
    };
    for cte in &with.cte_tables {
        if cte.from.is_some() {
            return Err(unsupported("WITH ... FROM is not supported"));
        }
        let name = cte.alias.name.value.clone();
        if !refers_to(g.query, &name) {
            continue;
        }
        let (rel, _) = lower_query_rel(g, &cte.query, "in a WITH query", None)?;
        let rel = rename(rel, Some(&cte.alias))?;
        g.ctes.push(Cte { name, rel });
    }
    Ok(())
}

/// Whether some FROM item of `query` names `name` (unqualified).
fn refers_to(query: &Query, name: &str) -> bool {
    struct Finder<'n>(&'n str);
    impl Visitor for Finder<'_> {
        type Break = ();
        fn pre_visit_relation(&mut self, r: &ObjectName) -> ControlFlow<()> {
            match r.0.as_slice() {
                [ObjectNamePart::Identifier(i)] if i.value == self.0 => ControlFlow::Break(()),
                _ => ControlFlow::Continue(()),
            }
        }
    }
    query.visit(&mut Finder(name)).is_break()
}

/// Applies `AS alias(c1, c2, ...)` column names to a relation.
fn rename(mut rel: Rel, alias: Option<&TableAlias>) -> Result<Rel, Unsupported> {
    let Some(alias) = alias else {
        return Ok(rel);
    };
    if alias.columns.len() > rel.names.len() {
        return Err(unsupported(format!(
            "{} has {} columns available but {} columns specified",
            alias.name.value,
            rel.names.len(),
            alias.columns.len()
        )));
    }
    for (name, c) in rel.names.iter_mut().zip(&alias.columns) {
        if c.data_type.is_some() {
            return Err(unsupported("typed column aliases are not supported"));
        }
        *name = c.name.value.clone();
    }
    Ok(rel)
}

fn rel_item(g: &Graph<'_>, rel: Rel, qualifier: Qualifier) -> Item {
    Item {
        node: rel.node,
        scope: Scope::single(qualifier, rel.names, rel.types, g.case_insensitive),
    }
}

fn table_factor(g: &mut Graph<'_>, tf: &TableFactor) -> Result<Item, Unsupported> {
    match tf {
        TableFactor::Table { .. } => table(g, tf),
        TableFactor::Derived {
            lateral,
            subquery,
            alias,
            sample,
        } => {
            if *lateral {
                return Err(unsupported("LATERAL subqueries are not supported"));
            }
            if sample.is_some() {
                return Err(unsupported("TABLESAMPLE is not supported"));
            }
            let (rel, _) = lower_query_rel(g, subquery, "in a subquery in FROM", None)?;
            let rel = rename(rel, alias.as_ref())?;
            let qualifier = match alias {
                Some(a) => Qualifier::Alias(a.name.value.clone()),
                None => Qualifier::Anonymous,
            };
            Ok(rel_item(g, rel, qualifier))
        }
        TableFactor::NestedJoin {
            table_with_joins,
            alias,
        } => {
            if alias.is_some() {
                return Err(unsupported(
                    "aliases on parenthesized joins are not supported",
                ));
            }
            from_item(g, table_with_joins)
        }
        TableFactor::Function { .. }
        | TableFactor::UNNEST { .. }
        | TableFactor::TableFunction { .. }
        | TableFactor::JsonTable { .. } => Err(unsupported("table functions are not supported")),
        _ => Err(unsupported(
            "only tables, subqueries and joins are supported in FROM",
        )),
    }
}

fn table(g: &mut Graph<'_>, tf: &TableFactor) -> Result<Item, Unsupported> {
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
    } = tf
    else {
        return Err(unsupported("only a plain table can be cached"));
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
    if let [only] = written.as_slice() {
        if let Some(cte) = g.ctes.iter().rev().find(|c| c.name == *only) {
            let rel = rename(cte.rel.clone(), alias.as_ref())?;
            let q = alias
                .as_ref()
                .map_or(only.clone(), |a| a.name.value.clone());
            return Ok(rel_item(g, rel, Qualifier::Alias(q)));
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
    let schema_def = g.catalog.table(schema, table).ok_or_else(|| {
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
    let node = g.base(&schema_def);
    let scope = Scope::table(&schema_def, written, alias, g.case_insensitive);
    Ok(Item { node, scope })
}

fn lower_join(
    g: &mut Graph<'_>,
    left: Item,
    right: Item,
    op: &JoinOperator,
) -> Result<Item, Unsupported> {
    let (kind, constraint) = match op {
        JoinOperator::Join(c) | JoinOperator::Inner(c) => (JoinKind::Inner, c),
        JoinOperator::Left(c) | JoinOperator::LeftOuter(c) => (JoinKind::Left, c),
        JoinOperator::Right(_) | JoinOperator::RightOuter(_) => {
            return Err(unsupported("RIGHT JOIN is not supported yet"))
        }
        JoinOperator::FullOuter(_) => return Err(unsupported("FULL JOIN is not supported yet")),
        JoinOperator::CrossJoin(_) => {
            return Err(unsupported(
                "CROSS JOIN is not supported (a join needs an equality condition)",
            ))
        }
        JoinOperator::CrossApply | JoinOperator::OuterApply => {
            return Err(unsupported("LATERAL joins (APPLY) are not supported"))
        }
        _ => return Err(unsupported("this kind of join is not supported")),
    };
    match constraint {
        JoinConstraint::On(on) => join_on(g, left, right, kind, on),
        JoinConstraint::Using(names) => {
            let mut idents = Vec::with_capacity(names.len());
            for n in names {
                match n.0.as_slice() {
                    [ObjectNamePart::Identifier(i)] => idents.push(i.clone()),
                    _ => return Err(unsupported(format!("USING column {n} is not supported"))),
                }
            }
            join_using(g, left, right, kind, &idents)
        }
        JoinConstraint::Natural => {
            let right_names: Vec<&String> = right
                .scope
                .star
                .iter()
                .map(|&c| &right.scope.names[c])
                .collect();
            let common: Vec<Ident> = left
                .scope
                .star
                .iter()
                .map(|&c| &left.scope.names[c])
                .filter(|n| right_names.contains(n))
                .map(|n| Ident::new(n.clone()))
                .collect();
            if common.is_empty() {
                return Err(unsupported(
                    "NATURAL JOIN without common columns (a cross join) is not supported",
                ));
            }
            join_using(g, left, right, kind, &common)
        }
        JoinConstraint::None => Err(unsupported("JOIN without a condition is not supported")),
    }
}

const LEFT_JOIN_CONDITION: &str = "LEFT JOIN condition that is not an equality between the two sides or a condition on the right side only is not supported";

fn join_on(
    g: &mut Graph<'_>,
    left: Item,
    right: Item,
    kind: JoinKind,
    on: &AExpr,
) -> Result<Item, Unsupported> {
    let lw = left.scope.width();
    let scope = left.scope.concat(right.scope)?;
    let mut pairs = Vec::new();
    let mut above = Vec::new();
    let mut right_filters = Vec::new();
    {
        let mut l = Lowerer::new(g, scope.clone(), ParamMode::Fixed("in a JOIN condition"));
        l.no_agg = "aggregate functions are not allowed in JOIN conditions";
        let mut conjuncts = Vec::new();
        split_conjuncts(on, &mut conjuncts);
        for c in conjuncts {
            if sub_pred(c).is_some() {
                return Err(unsupported(
                    "subqueries in JOIN conditions are not supported",
                ));
            }
            let t = l.expr(c, Some(&SqlType::Bool))?;
            if t.ty != SqlType::Bool {
                return Err(unsupported(format!(
                    "JOIN condition of type {} is not boolean",
                    type_name(&t.ty)
                )));
            }
            if let Expr::Binary {
                op: BinaryOp::Eq,
                left: a,
                right: b,
                ..
            } = &t.expr
            {
                if let (Expr::Column(a), Expr::Column(b)) = (&**a, &**b) {
                    if *a < lw && *b >= lw {
                        pairs.push((*a, *b - lw));
                        continue;
                    }
                    if *b < lw && *a >= lw {
                        pairs.push((*b, *a - lw));
                        continue;
                    }
                }
            }
            let mut right_only = true;
            t.expr.for_each_column(&mut |c| right_only &= c >= lw);
            match kind {
                JoinKind::Inner => above.push(t.expr),
                JoinKind::Left if right_only => {
                    right_filters.push(map_columns(t.expr, &mut |c| c - lw))
                }
                JoinKind::Left => return Err(unsupported(LEFT_JOIN_CONDITION)),
            }
        }
    }
    if pairs.is_empty() {
        return Err(unsupported(
            "a join without an equality between the two sides (a cross join) is not supported",
        ));
    }
    let right_node = g.filter(right.node, conjunction(right_filters));
    let node = g.equi_join(left.node, right_node, kind, &pairs)?;
    let node = g.filter(node, conjunction(above));
    Ok(Item { node, scope })
}

fn join_using(
    g: &mut Graph<'_>,
    left: Item,
    right: Item,
    kind: JoinKind,
    names: &[Ident],
) -> Result<Item, Unsupported> {
    let lw = left.scope.width();
    let mut pairs = Vec::with_capacity(names.len());
    let mut merged_types = Vec::with_capacity(names.len());
    for name in names {
        let side = |scope: &Scope, which: &str| {
            scope
                .try_column(std::slice::from_ref(name))?
                .ok_or_else(|| {
                    unsupported(format!(
                        "column \"{}\" specified in USING clause does not exist in {which} table",
                        name.value
                    ))
                })
        };
        let pair = (side(&left.scope, "left")?, side(&right.scope, "right")?);
        let (lt, rt) = (&left.scope.types[pair.0], &right.scope.types[pair.1]);
        // Postgres merges the two into one column of their common type.
        let common = join_type(lt, rt).map_err(|_| {
            unsupported(format!(
                "JOIN ... USING on columns of types {} and {} is not supported",
                type_name(lt),
                type_name(rt)
            ))
        })?;
        merged_types.push(common);
        if pairs.contains(&pair) {
            return Err(unsupported(format!(
                "column name \"{}\" appears more than once in USING clause",
                name.value
            )));
        }
        pairs.push(pair);
    }
    let mut node = g.equi_join(left.node, right.node, kind, &pairs)?;
    let mut scope = left.scope.concat(right.scope)?;
    let lcols: Vec<usize> = pairs.iter().map(|p| p.0).collect();
    let rcols: Vec<usize> = pairs.iter().map(|p| p.1 + lw).collect();
    // A merged column whose type differs from the left one's is a column of its own: the
    // left value cast to the common type (in an inner or left join, the left value is the
    // merged one: a row without a match has no right value).
    let mut merged_cols = lcols.clone();
    let retyped: Vec<usize> = (0..pairs.len())
        .filter(|&i| scope.types[lcols[i]] != merged_types[i])
        .collect();
    if !retyped.is_empty() {
        let width = scope.width();
        let mut exprs: Vec<Expr> = (0..width).map(Expr::Column).collect();
        let mut types = scope.types.clone();
        for (k, &i) in retyped.iter().enumerate() {
            exprs.push(Expr::Cast {
                expr: Box::new(Expr::Column(lcols[i])),
                ty: merged_types[i].clone(),
            });
            types.push(merged_types[i].clone());
            scope.names.push(names[i].value.clone());
            scope.types.push(merged_types[i].clone());
            merged_cols[i] = width + k;
        }
        node = g.project(node, exprs, types);
    }
    let mut star = merged_cols.clone();
    star.extend(
        scope
            .star
            .iter()
            .copied()
            .filter(|c| !lcols.contains(c) && !rcols.contains(c)),
    );
    scope.star = star;
    let merged = names
        .iter()
        .zip(&pairs)
        .zip(&merged_cols)
        .map(|((n, &(l, r)), &column)| Merged {
            name: n.value.clone(),
            column,
            hides: vec![l, r + lw],
        });
    let mut all: Vec<Merged> = merged.collect();
    all.extend(std::mem::take(&mut scope.merged));
    scope.merged = all;
    Ok(Item { node, scope })
}
