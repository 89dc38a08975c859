//! Subqueries in WHERE: `[NOT] IN (SELECT ...)` and `[NOT] EXISTS (SELECT ...)` as top-level
//! conjuncts become semi-joins (anti-joins when negated). A correlated subquery may refer to
//! the outer row only through equalities `inner.col = outer.col` in its WHERE, which become
//! the semi-join's `on` pairs.

use std::ops::ControlFlow;

use sqlparser::ast::{
    BinaryOperator, Expr as AExpr, Ident, ObjectNamePart, Query, TableFactor, UnaryOperator, Visit,
    Visitor,
};

use super::scope::Scope;
use super::select::{lower_query_rel, Sel};
use super::util::strip_nested;
use super::{unsupported, ParamMode};
use crate::error::Unsupported;
use crate::plan::{Expr, NodeRef};

pub(super) enum SubPred<'q> {
    In {
        expr: &'q AExpr,
        query: &'q Query,
        negated: bool,
    },
    Exists {
        query: &'q Query,
        negated: bool,
    },
}

/// A WHERE conjunct that is a subquery predicate, possibly under `NOT`.
pub(super) fn sub_pred(c: &AExpr) -> Option<SubPred<'_>> {
    match strip_nested(c) {
        AExpr::InSubquery {
            expr,
            subquery,
            negated,
        } => Some(SubPred::In {
            expr,
            query: subquery,
            negated: *negated,
        }),
        AExpr::Exists { subquery, negated } => Some(SubPred::Exists {
            query: subquery,
            negated: *negated,
        }),
        AExpr::UnaryOp {
            op: UnaryOperator::Not,
            expr,
        } => sub_pred(expr).map(|p| match p {
            SubPred::In {
                expr,
                query,
                negated,
            } => SubPred::In {
                expr,
                query,
                negated: !negated,
            },
            SubPred::Exists { query, negated } => SubPred::Exists {
                query,
                negated: !negated,
            },
        }),
        _ => None,
    }
}

fn column_parts(e: &AExpr) -> Option<&[Ident]> {
    match strip_nested(e) {
        AExpr::Identifier(i) => Some(std::slice::from_ref(i)),
        AExpr::CompoundIdentifier(parts) => Some(parts),
        _ => None,
    }
}

/// `inner.col = outer.col` (either way round): (inner column, outer column). A name that
/// resolves in the subquery's own FROM is an inner column, as in Postgres.
pub(super) fn correlation(
    inner: &Scope,
    outer: &Scope,
    c: &AExpr,
) -> Result<Option<(usize, usize)>, Unsupported> {
    let AExpr::BinaryOp {
        left,
        op: BinaryOperator::Eq,
        right,
    } = strip_nested(c)
    else {
        return Ok(None);
    };
    let (Some(l), Some(r)) = (column_parts(left), column_parts(right)) else {
        return Ok(None);
    };
    let side = |parts: &[Ident]| -> Result<(Option<usize>, Option<usize>), Unsupported> {
        match inner.try_column(parts)? {
            Some(c) => Ok((Some(c), None)),
            None => Ok((None, outer.try_column(parts)?)),
        }
    };
    match (side(l)?, side(r)?) {
        ((Some(i), _), (None, Some(o))) | ((None, Some(o)), (Some(i), _)) => Ok(Some((i, o))),
        _ => Ok(None),
    }
}

/// The refusal for a subquery WHERE conjunct that failed to lower: a specific one when it
/// refers to the outer query other than by an equality.
pub(super) fn correlated_refusal(
    c: &AExpr,
    inner: &Scope,
    outer: &Scope,
    err: Unsupported,
) -> Unsupported {
    struct Outer<'s> {
        inner: &'s Scope,
        outer: &'s Scope,
    }
    impl Visitor for Outer<'_> {
        type Break = ();
        fn pre_visit_expr(&mut self, e: &AExpr) -> ControlFlow<()> {
            if let Some(parts) = column_parts(e) {
                let in_inner = self.inner.try_column(parts).ok().flatten().is_some();
                if !in_inner && self.outer.try_column(parts).ok().flatten().is_some() {
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        }
    }
    if c.visit(&mut Outer { inner, outer }).is_break() {
        unsupported(
            "correlated subquery condition other than an equality between an inner and an outer column is not supported",
        )
    } else {
        err
    }
}

/// Whether a subquery refers to a relation of `outer` by a qualifier its own FROM does not
/// define (a conservative check used for messages).
pub(super) fn is_correlated(q: &Query, outer: &Scope) -> bool {
    struct Names {
        own: Vec<String>,
        quals: Vec<Vec<Ident>>,
    }
    impl Visitor for Names {
        type Break = ();
        fn pre_visit_table_factor(&mut self, tf: &TableFactor) -> ControlFlow<()> {
            match tf {
                TableFactor::Table { name, alias, .. } => {
                    if let Some(ObjectNamePart::Identifier(i)) = name.0.last() {
                        self.own.push(i.value.clone());
                    }
                    self.own.extend(alias.iter().map(|a| a.name.value.clone()));
                }
                TableFactor::Derived { alias, .. } => {
                    self.own.extend(alias.iter().map(|a| a.name.value.clone()))
                }
                _ => {}
            }
            ControlFlow::Continue(())
        }
        fn pre_visit_expr(&mut self, e: &AExpr) -> ControlFlow<()> {
            if let AExpr::CompoundIdentifier(parts) = e {
                if let Some((_, q)) = parts.split_last() {
                    self.quals.push(q.to_vec());
                }
            }
            ControlFlow::Continue(())
        }
    }
    let mut n = Names {
        own: Vec::new(),
        quals: Vec::new(),
    };
    let _ = q.visit(&mut n);
    n.quals.iter().any(|q| {
        let own = q.len() == 1 && n.own.iter().any(|o| *o == q[0].value);
        !own && outer.rel(q).is_ok()
    })
}

impl Sel<'_, '_> {
    /// Applies a subquery predicate to `node` (the FROM row) as a semi- or anti-join.
    pub fn semi(&mut self, node: NodeRef, sp: SubPred<'_>) -> Result<NodeRef, Unsupported> {
        let outer = self.l.scope.clone();
        match sp {
            SubPred::In {
                expr,
                query,
                negated,
            } => {
                let saved = self.l.mode;
                self.l.mode = ParamMode::Fixed("in a subquery condition");
                let t = self.l.expr(expr, None);
                self.l.mode = saved;
                let Expr::Column(left) = t?.expr else {
                    return Err(unsupported(
                        "IN (SELECT ...) on an expression is not supported yet; compare a column",
                    ));
                };
                let (rel, corr) = lower_query_rel(self.l.g, query, "in a subquery", Some(&outer))?;
                if rel.types.len() - corr.len() != 1 {
                    return Err(unsupported("subquery has too many columns"));
                }
                if negated && !corr.is_empty() {
                    return Err(unsupported(
                        "correlated NOT IN subqueries are not supported",
                    ));
                }
                let mut pairs = vec![(left, 0)];
                pairs.extend(corr.iter().map(|&(r, o)| (o, r)));
                self.l.g.semi_join(node, rel.node, &pairs, negated, negated)
            }
            SubPred::Exists { query, negated } => {
                let (rel, corr) = lower_query_rel(self.l.g, query, "in a subquery", Some(&outer))?;
                if corr.is_empty() {
                    return Err(unsupported(
                        "uncorrelated EXISTS subqueries are not supported",
                    ));
                }
                let pairs: Vec<(usize, usize)> = corr.iter().map(|&(r, o)| (o, r)).collect();
                self.l.g.semi_join(node, rel.node, &pairs, negated, false)
            }
        }
    }
}
