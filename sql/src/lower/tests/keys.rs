//! WHERE equalities on columns a DISTINCT or an aggregate does not output: reader keys, with
//! the key column carried into the Distinct / added to the groups.

use super::*;
use crate::plan::{AggFunc, Aggregate, BinaryOp, EmptyKeyRow, Expr as P};
use crate::value::{SqlType, Value};

fn group_by(p: &CachePlan) -> Vec<usize> {
    find(p, |op| match op {
        NodeOp::Aggregate { group_by, .. } => Some(group_by.clone()),
        _ => None,
    })
}

fn output_columns(p: &CachePlan) -> Vec<usize> {
    p.output.iter().map(|o| o.column).collect()
}

#[test]
fn distinct_keys_on_a_column_it_does_not_output() {
    for sql in [
        "SELECT DISTINCT v.user_id FROM votes v WHERE v.story_id = 1",
        "SELECT DISTINCT v.user_id FROM votes v WHERE v.story_id = $1",
        "SELECT DISTINCT v.user_id FROM votes v WHERE v.story_id IN (1)",
    ] {
        let p = plan(sql);
        assert_eq!(kinds(&p), ["Base", "Project", "Distinct"], "{sql}");
        // The Distinct runs over (story_id, user_id).
        assert_eq!(p.materialized(), vec![P::Column(1), P::Column(0)], "{sql}");
        assert_eq!((p.key.clone(), p.key_params.clone()), (vec![0], vec![0]));
        assert_eq!(output_columns(&p), vec![1]);
        assert_eq!(names(&p), ["user_id"]);
        assert_eq!(p.param_types, vec![SqlType::Int8]);
        assert!(p.fixed_params.is_empty());
        assert_eq!(p.single_value_params, vec![0]);
        assert_eq!(p.empty_key_row, None);
    }
    // Several values would repeat output rows as a key: the IN list is a filter below.
    let p = plan("SELECT DISTINCT user_id FROM votes WHERE story_id IN (1, 2)");
    assert_eq!(
        p.fixed_params,
        vec![(0, vec![Value::Int(1), Value::Int(2)])]
    );
    assert!(p.key_params.is_empty() && p.single_value_params.is_empty());
    // A key on an output column still takes IN lists.
    let p = plan("SELECT DISTINCT user_id, vote FROM votes WHERE user_id IN (1, 2)");
    assert_eq!(p.key_params, vec![0]);
    assert!(p.single_value_params.is_empty());
    // Both kinds at once.
    let p = plan("SELECT DISTINCT user_id FROM votes WHERE user_id = 3 AND story_id = 4");
    assert_eq!(p.key_params, vec![0, 1]);
    assert_eq!(p.single_value_params, vec![1]);
    assert_eq!(output_columns(&p), vec![0]);
}

#[test]
fn group_by_keys_on_a_column_it_does_not_group_by() {
    let p = plan("SELECT user_id, count(*) FROM votes WHERE story_id = $1 GROUP BY user_id");
    assert_eq!(kinds(&p), ["Base", "Aggregate", "Project"]);
    // Grouped by (user_id, story_id); the reader keys on story_id and does not output it.
    assert_eq!(group_by(&p), vec![0, 1]);
    assert_eq!(
        p.nodes[1].types,
        vec![SqlType::Int4, SqlType::Int8, SqlType::Int8]
    );
    assert_eq!(
        p.materialized(),
        vec![P::Column(1), P::Column(0), P::Column(2)]
    );
    assert_eq!((p.key.clone(), p.key_params.clone()), (vec![0], vec![0]));
    assert_eq!(output_columns(&p), vec![1, 2]);
    assert_eq!(names(&p), ["user_id", "count"]);
    assert!(p.fixed_params.is_empty());
    assert_eq!(p.single_value_params, vec![0]);
    assert_eq!(p.empty_key_row, None);

    // HAVING stays a Filter (a grouped query has no row for an empty group anyway).
    let p = plan(
        "SELECT user_id, count(*) FROM votes WHERE story_id = 1 GROUP BY user_id \
         HAVING max(vote) > min(vote)",
    );
    assert_eq!(kinds(&p), ["Base", "Aggregate", "Filter", "Project"]);
    assert_eq!(p.key_params, vec![0]);
    // A key on a group column keeps taking IN lists; the other one does not.
    let p = plan(
        "SELECT user_id, count(*) FROM votes WHERE user_id IN (1, 2) AND story_id = 3 \
         GROUP BY user_id",
    );
    assert_eq!(p.key_params, vec![0, 1]);
    assert_eq!(p.single_value_params, vec![1]);
    assert_eq!(group_by(&p), vec![0, 1]);
    // A literal IN list below it stays in the plan, every value of it: the cache answers
    // that list only.
    let p = plan("SELECT user_id, count(*) FROM votes WHERE story_id IN (1, 2) GROUP BY user_id");
    assert_eq!(
        p.fixed_params,
        vec![(0, vec![Value::Int(1), Value::Int(2)])]
    );
    assert!(p.key_params.is_empty() && p.single_value_params.is_empty());
    // The added group column cannot be named, as in Postgres.
    for sql in [
        "SELECT user_id, story_id, count(*) FROM votes WHERE story_id = 1 GROUP BY user_id",
        "SELECT user_id FROM votes WHERE story_id = 1 GROUP BY user_id ORDER BY story_id",
        "SELECT user_id FROM votes WHERE story_id = 1 GROUP BY user_id HAVING story_id > 0",
    ] {
        assert_eq!(
            refuse(sql),
            "column \"votes.story_id\" must appear in the GROUP BY clause or be used in an aggregate function",
            "{sql}"
        );
    }
}

#[test]
fn aggregate_without_group_by_keys_with_an_empty_key_row() {
    let p = plan("SELECT count(*), max(score) FROM stories WHERE user_id = $1");
    assert_eq!(kinds(&p), ["Base", "Aggregate", "Project"]);
    assert_eq!(group_by(&p), vec![1]);
    let aggs = find(&p, |op| match op {
        NodeOp::Aggregate { aggregates, .. } => Some(aggregates.clone()),
        _ => None,
    });
    assert_eq!(
        aggs,
        vec![
            Aggregate {
                func: AggFunc::Count,
                arg: None,
                distinct: false
            },
            Aggregate {
                func: AggFunc::Max,
                arg: Some(3),
                distinct: false
            }
        ]
    );
    assert_eq!(
        p.materialized(),
        vec![P::Column(0), P::Column(1), P::Column(2)]
    );
    assert_eq!((p.key.clone(), p.key_params.clone()), (vec![0], vec![0]));
    assert_eq!(output_columns(&p), vec![1, 2]);
    assert_eq!(p.single_value_params, vec![0]);
    assert_eq!(p.empty_key_row, Some(EmptyKeyRow { aggregate: 1 }));
    assert_eq!(p.param_types, vec![SqlType::Int4]);

    // Two equalities: two keys, both group columns. Other predicates filter below.
    let p = plan("SELECT count(*) FROM votes WHERE story_id = 1 AND vote = 1 AND user_id > 2");
    assert_eq!(kinds(&p), ["Base", "Filter", "Aggregate", "Project"]);
    assert_eq!(group_by(&p), vec![1, 2]);
    assert_eq!(p.key_params, vec![0, 1]);
    assert_eq!(p.single_value_params, vec![0, 1]);
    assert_eq!(p.fixed_params, vec![(2, vec![Value::Int(2)])]);
    assert_eq!(p.empty_key_row, Some(EmptyKeyRow { aggregate: 2 }));

    // Through a join.
    let p = plan(
        "SELECT count(*) FROM comments c JOIN stories s ON s.id = c.story_id \
         WHERE s.user_id = 2",
    );
    assert_eq!(p.key_params, vec![0]);
    assert!(p.empty_key_row.is_some());
    assert!(p.fixed_params.is_empty());
}

#[test]
fn empty_key_row_plans_check_having_per_read_and_have_no_top_k() {
    // HAVING without parameters goes to the residual, over the reader's columns.
    let p = plan("SELECT count(*) FROM stories WHERE user_id = 1 HAVING max(score) > min(score)");
    assert_eq!(kinds(&p), ["Base", "Aggregate", "Project"]);
    assert_eq!(
        p.residual,
        Some(P::Binary {
            op: BinaryOp::Gt,
            left: col(1),
            right: col(2),
            ty: SqlType::Bool
        })
    );
    // Reader: the key, max and min (for the residual), then the count.
    assert_eq!(output_columns(&p), vec![3]);
    assert!(p.empty_key_row.is_some());
    let p = plan("SELECT count(*) AS n FROM stories WHERE user_id = 1 ORDER BY n LIMIT 1");
    assert_eq!(kinds(&p), ["Base", "Aggregate", "Project"]);
    assert_eq!(p.limit, Some(1));
    // An expression over the count is computed above the Aggregate.
    let p = plan("SELECT count(*) + 1 AS n FROM stories WHERE user_id = 1");
    assert_eq!(
        p.materialized()[1],
        P::Binary {
            op: BinaryOp::Add,
            left: col(1),
            right: Box::new(P::Literal(Value::Int(1))),
            ty: SqlType::Int8
        }
    );
}

#[test]
fn other_shapes_keep_the_fixed_literal() {
    for sql in [
        // DISTINCT over a keyed aggregate without GROUP BY.
        "SELECT DISTINCT count(*) FROM stories WHERE user_id = 1",
        // Not the query's own SELECT.
        "SELECT n FROM (SELECT count(*) AS n FROM stories WHERE user_id = 1) d",
        "SELECT id FROM stories WHERE id IN (SELECT story_id FROM votes WHERE user_id = 1)",
    ] {
        let p = plan(sql);
        assert_eq!(p.fixed_params, vec![(0, vec![Value::Int(1)])], "{sql}");
        assert!(p.single_value_params.is_empty(), "{sql}");
        assert_eq!(p.empty_key_row, None, "{sql}");
    }
    let p = plan("SELECT count(*) FROM stories WHERE user_id IN (1, 2)");
    assert_eq!(
        p.fixed_params,
        vec![(0, vec![Value::Int(1), Value::Int(2)])]
    );
    assert!(p.key_params.is_empty() && p.single_value_params.is_empty());
    assert_eq!(
        refuse("SELECT user_id, count(*) FROM stories WHERE user_id = 1"),
        "column \"stories.user_id\" must appear in the GROUP BY clause or be used in an aggregate function"
    );
}
