//! GROUP BY, aggregates and HAVING.

use super::*;
use crate::plan::{AggFunc, Aggregate, BinaryOp, Expr as P};
use crate::value::{SqlType, Value};

fn aggregate(p: &CachePlan) -> (Vec<usize>, Vec<Aggregate>, Vec<SqlType>) {
    p.nodes
        .iter()
        .find_map(|n| match &n.op {
            NodeOp::Aggregate {
                group_by,
                aggregates,
                ..
            } => Some((group_by.clone(), aggregates.clone(), n.types.clone())),
            _ => None,
        })
        .expect("an Aggregate node")
}

fn agg(func: AggFunc, arg: Option<usize>, distinct: bool) -> Aggregate {
    Aggregate {
        func,
        arg,
        distinct,
    }
}

#[test]
fn aggregate_functions_and_their_types() {
    use SqlType as S;
    let p = plan(
        "SELECT user_id, count(*), count(title), count(DISTINCT score), sum(score), avg(score), \
         min(title), max(hotness), sum(id) FROM stories GROUP BY user_id",
    );
    assert_eq!(kinds(&p), ["Base", "Aggregate", "Project"]);
    let (group_by, aggs, types) = aggregate(&p);
    assert_eq!(group_by, vec![1]);
    assert_eq!(
        aggs,
        vec![
            agg(AggFunc::Count, None, false),
            agg(AggFunc::Count, Some(2), false),
            agg(AggFunc::Count, Some(3), true),
            agg(AggFunc::Sum, Some(3), false),
            agg(AggFunc::Avg, Some(3), false),
            agg(AggFunc::Min, Some(2), false),
            agg(AggFunc::Max, Some(4), false),
            agg(AggFunc::Sum, Some(0), false),
        ]
    );
    assert_eq!(
        types,
        [
            S::Int4,
            S::Int8,
            S::Int8,
            S::Int8,
            S::Int8,
            S::Numeric,
            S::Text,
            S::Float8,
            S::Numeric
        ]
    );
    assert_eq!(names(&p)[..3], ["user_id", "count", "count"]);
}

#[test]
fn aggregate_without_group_by_and_count_of_a_constant() {
    let p = plan("SELECT count(1), max(score) FROM stories");
    let (group_by, aggs, _) = aggregate(&p);
    assert!(group_by.is_empty());
    assert_eq!(aggs[0], agg(AggFunc::Count, None, false));
}

#[test]
fn expression_arguments_get_a_project_below() {
    let p = plan("SELECT user_id, sum(score + 1) FROM stories GROUP BY user_id");
    assert_eq!(kinds(&p), ["Base", "Project", "Aggregate", "Project"]);
    match &p.nodes[1].op {
        NodeOp::Project { exprs, .. } => assert_eq!(
            exprs[1],
            P::Binary {
                op: BinaryOp::Add,
                left: col(3),
                right: Box::new(P::Literal(Value::Int(1))),
                ty: SqlType::Int4
            }
        ),
        other => panic!("{other:?}"),
    }
    let (group_by, aggs, _) = aggregate(&p);
    assert_eq!(
        (group_by, aggs),
        (vec![0], vec![agg(AggFunc::Sum, Some(1), false)])
    );
}

#[test]
fn select_expressions_over_groups_and_aggregates_project_above() {
    let p = plan("SELECT user_id + 1, count(*) * 2 FROM stories GROUP BY user_id");
    let exprs = p.materialized();
    assert_eq!(
        exprs[0],
        P::Binary {
            op: BinaryOp::Add,
            left: col(0),
            right: Box::new(P::Literal(Value::Int(1))),
            ty: SqlType::Int4
        }
    );
    assert_eq!(
        exprs[1],
        P::Binary {
            op: BinaryOp::Mul,
            left: col(1),
            right: Box::new(P::Literal(Value::Int(2))),
            ty: SqlType::Int8
        }
    );
}

#[test]
fn group_by_position_alias_and_name_agree() {
    let a = plan("SELECT user_id AS u, count(*) FROM stories GROUP BY u");
    assert_eq!(
        a,
        plan("SELECT user_id AS u, count(*) FROM stories GROUP BY 1")
    );
    assert_eq!(
        a,
        plan("SELECT user_id AS u, count(*) FROM stories GROUP BY user_id")
    );
}

#[test]
fn key_on_a_group_column() {
    let p = plan("SELECT count(*) FROM stories WHERE user_id = 5 GROUP BY user_id");
    assert_eq!(p.materialized(), vec![P::Column(0), P::Column(1)]);
    assert_eq!((p.key.clone(), p.key_params.clone()), (vec![0], vec![0]));
    assert!(p.fixed_params.is_empty());
    assert_eq!(p.output[0].column, 1);
}

#[test]
fn parameters_below_an_aggregate_are_fixed_literals() {
    let p = plan("SELECT count(*) FROM stories WHERE user_id > 5");
    assert!(p.key.is_empty());
    assert_eq!(p.fixed_params, vec![(0, vec![Value::Int(5)])]);
    assert_eq!(
        p.filter(),
        Some(P::Binary {
            op: BinaryOp::Gt,
            left: col(1),
            right: Box::new(P::Literal(Value::Int(5))),
            ty: SqlType::Bool
        })
    );
    assert_eq!(p.param_types, vec![SqlType::Int4]);
    assert!(p.empty_key_row.is_none());
    assert_eq!(
        refuse("SELECT count(*) FROM stories WHERE user_id > $1"),
        "parameter $1 below an aggregate cannot be cached"
    );
    // A literal IN list below it stays in the plan, every value of it: the cache answers
    // that list only.
    let p = plan("SELECT count(*) FROM stories WHERE user_id IN (1, 2)");
    assert_eq!(
        p.fixed_params,
        vec![(0, vec![Value::Int(1), Value::Int(2)])]
    );
    assert!(p.key_params.is_empty() && p.single_value_params.is_empty());
}

#[test]
fn having_with_parameters_is_residual_and_without_a_filter() {
    let p = plan("SELECT user_id FROM stories GROUP BY user_id HAVING count(*) > 3");
    assert_eq!(kinds(&p), ["Base", "Aggregate", "Project"]);
    // Reader: the count (materialized for the residual), then user_id.
    assert_eq!(p.materialized(), vec![P::Column(1), P::Column(0)]);
    assert_eq!(
        p.residual,
        Some(P::Binary {
            op: BinaryOp::Gt,
            left: col(0),
            right: param(0),
            ty: SqlType::Bool
        })
    );
    assert_eq!(p.param_types, vec![SqlType::Int8]);
    let p = plan("SELECT user_id FROM stories GROUP BY user_id HAVING max(score) > min(score)");
    assert_eq!(kinds(&p), ["Base", "Aggregate", "Filter", "Project"]);
    assert_eq!(p.residual, None);
}

#[test]
fn aggregate_refusals() {
    let cases = [
        (
            "SELECT user_id, title FROM stories GROUP BY user_id",
            "column \"stories.title\" must appear in the GROUP BY clause or be used in an aggregate function",
        ),
        (
            "SELECT sum(hotness) FROM stories",
            "SUM over floating point cannot be maintained exactly",
        ),
        (
            "SELECT avg(hotness) FROM stories",
            "AVG over floating point cannot be maintained exactly",
        ),
        (
            "SELECT min(active) FROM users",
            "min() over boolean values is not supported",
        ),
        (
            "SELECT count(*) FILTER (WHERE score > 1) FROM stories",
            "FILTER in aggregate count() is not supported",
        ),
        (
            "SELECT count(id ORDER BY id) FROM stories",
            "ORDER BY inside aggregate count() is not supported",
        ),
        (
            "SELECT rank() OVER (ORDER BY score) FROM stories",
            "window functions are not supported yet (rank() OVER ...)",
        ),
        (
            "SELECT user_id FROM stories GROUP BY ROLLUP (user_id)",
            "GROUPING SETS, ROLLUP and CUBE are not supported",
        ),
        (
            "SELECT user_id FROM stories WHERE count(*) > 1 GROUP BY user_id",
            "aggregate functions are not allowed in WHERE",
        ),
        (
            "SELECT max(count(*)) FROM stories",
            "aggregate function calls cannot be nested",
        ),
    ];
    for (sql, reason) in cases {
        assert_eq!(refuse(sql), reason, "{sql}");
    }
}
