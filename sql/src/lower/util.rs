//! Helpers over the parsed tree and plan expressions shared by every part of lowering.

use std::ops::ControlFlow;

use sqlparser::ast::{
    self as ast, BinaryOperator, CastKind, DataType, Expr as AExpr, FunctionArg, FunctionArgExpr,
    FunctionArguments, Value as AstValue, Visit, Visitor,
};

use super::{placeholder_slot, unsupported};
use crate::error::Unsupported;
use crate::plan::{BinaryOp, Expr};
use crate::value::SqlType;

pub(super) fn conjunction(parts: Vec<Expr>) -> Option<Expr> {
    parts.into_iter().reduce(|acc, e| Expr::Binary {
        op: BinaryOp::And,
        left: Box::new(acc),
        right: Box::new(e),
        ty: SqlType::Bool,
    })
}

pub(super) fn split_conjuncts<'a>(e: &'a AExpr, out: &mut Vec<&'a AExpr>) {
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

pub(super) fn strip_nested(mut e: &AExpr) -> &AExpr {
    while let AExpr::Nested(inner) = e {
        e = inner;
    }
    e
}

/// `$k` or `$k::type` (the parameter number and the cast's type).
pub(super) fn key_param_of(e: &AExpr) -> Option<(usize, Option<&DataType>)> {
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
pub(super) fn is_untyped(e: &AExpr) -> bool {
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

pub(super) fn function_name(f: &ast::Function) -> Result<String, Unsupported> {
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

pub(super) fn function_args<'a>(
    f: &'a ast::Function,
    name: &str,
) -> Result<Vec<&'a AExpr>, Unsupported> {
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
pub(super) const AGGREGATES: &[&str] = &[
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

/// Names the construct of an expression lowering does not handle.
pub(super) fn unsupported_expr(e: &AExpr) -> Unsupported {
    let what = match e {
        AExpr::Subquery(_) => return unsupported("scalar subqueries are not supported"),
        AExpr::Exists { .. } | AExpr::InSubquery { .. } => return unsupported(
            "subqueries are only supported as top-level WHERE conditions ([NOT] IN, [NOT] EXISTS)",
        ),
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

pub(super) fn contains_param(e: &Expr) -> bool {
    let mut found = false;
    visit_plan_expr(e, &mut |x| found |= matches!(x, Expr::Param(_)));
    found
}

pub(super) fn visit_plan_expr(e: &Expr, f: &mut impl FnMut(&Expr)) {
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
pub(super) fn map_columns(e: Expr, f: &mut dyn FnMut(usize) -> usize) -> Expr {
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

/// Whether an expression refers to any column (outside subqueries too: a conservative
/// answer is fine for its uses).
pub(super) fn mentions_columns(e: &AExpr) -> bool {
    struct Finder;
    impl Visitor for Finder {
        type Break = ();
        fn pre_visit_expr(&mut self, e: &AExpr) -> ControlFlow<()> {
            match e {
                AExpr::Identifier(_) | AExpr::CompoundIdentifier(_) => ControlFlow::Break(()),
                _ => ControlFlow::Continue(()),
            }
        }
    }
    e.visit(&mut Finder).is_break()
}

/// Whether an expression calls an aggregate function outside any subquery.
pub(super) fn calls_aggregate(e: &AExpr) -> bool {
    struct Finder {
        depth: usize,
    }
    impl Visitor for Finder {
        type Break = ();
        fn pre_visit_query(&mut self, _: &ast::Query) -> ControlFlow<()> {
            self.depth += 1;
            ControlFlow::Continue(())
        }
        fn post_visit_query(&mut self, _: &ast::Query) -> ControlFlow<()> {
            self.depth -= 1;
            ControlFlow::Continue(())
        }
        fn pre_visit_expr(&mut self, e: &AExpr) -> ControlFlow<()> {
            if self.depth == 0 {
                if let AExpr::Function(f) = e {
                    let is_agg = f.over.is_none()
                        && function_name(f).is_ok_and(|n| AGGREGATES.contains(&n.as_str()));
                    if is_agg {
                        return ControlFlow::Break(());
                    }
                }
            }
            ControlFlow::Continue(())
        }
    }
    e.visit(&mut Finder { depth: 0 }).is_break()
}
