//! Semi-joins for IN/EXISTS, derived tables and CTEs.

use super::*;
use crate::value::Value;

fn semi(p: &CachePlan) -> (Vec<(usize, usize)>, bool, bool) {
    find(p, |op| match op {
        NodeOp::SemiJoin {
            on,
            anti,
            null_aware,
            ..
        } => Some((on.clone(), *anti, *null_aware)),
        _ => None,
    })
}

#[test]
fn in_and_not_in_subqueries() {
    let p = plan("SELECT title FROM stories WHERE id IN (SELECT story_id FROM comments WHERE user_id IS NULL)");
    assert_eq!(semi(&p), (vec![(0, 0)], false, false));
    let p = plan("SELECT title FROM stories WHERE id NOT IN (SELECT story_id FROM comments)");
    assert_eq!(semi(&p), (vec![(0, 0)], true, true));
    let p = plan("SELECT title FROM stories WHERE NOT (id IN (SELECT story_id FROM comments))");
    assert_eq!(semi(&p), (vec![(0, 0)], true, true));
    // A literal inside the subquery is fixed.
    let p = plan(
        "SELECT title FROM stories WHERE id IN (SELECT story_id FROM comments WHERE score > 4)",
    );
    assert_eq!(p.fixed_params, vec![(0, vec![Value::Int(4)])]);
}

#[test]
fn correlated_exists() {
    let p = plan(
        "SELECT title FROM stories s WHERE EXISTS (SELECT 1 FROM comments c WHERE c.story_id = s.id AND c.score > 10)",
    );
    // The subquery outputs `1` then its correlation column c.story_id.
    assert_eq!(semi(&p), (vec![(0, 1)], false, false));
    assert_eq!(p.fixed_params, vec![(0, vec![Value::Int(10)])]);
    let p = plan("SELECT title FROM stories s WHERE NOT EXISTS (SELECT 1 FROM votes v WHERE v.story_id = s.id AND v.user_id = s.user_id)");
    assert_eq!(semi(&p), (vec![(0, 1), (1, 2)], true, false));
    assert_eq!(
        refuse("SELECT title FROM stories s WHERE EXISTS (SELECT 1 FROM comments c WHERE c.score > s.score)"),
        "correlated subquery condition other than an equality between an inner and an outer column is not supported"
    );
    assert_eq!(
        refuse("SELECT title FROM stories WHERE EXISTS (SELECT 1 FROM comments)"),
        "uncorrelated EXISTS subqueries are not supported"
    );
}

#[test]
fn subquery_refusals() {
    assert_eq!(
        refuse(
            "SELECT s.id, (SELECT count(*) FROM comments c WHERE c.story_id = s.id) FROM stories s"
        ),
        "correlated subquery in the SELECT list is not supported"
    );
    assert_eq!(
        refuse("SELECT id FROM stories WHERE score > (SELECT max(score) FROM comments)"),
        "scalar subqueries are not supported"
    );
    assert_eq!(
        refuse(
            "SELECT id FROM stories WHERE id IN (SELECT story_id FROM comments WHERE user_id = $1)"
        ),
        "parameter $1 in a subquery cannot be cached"
    );
    assert_eq!(
        refuse("SELECT id FROM stories s WHERE s.id NOT IN (SELECT c.story_id FROM comments c WHERE c.user_id = s.user_id)"),
        "correlated NOT IN subqueries are not supported"
    );
}

#[test]
fn derived_table_with_key_through_group_by() {
    let p = plan(
        "SELECT x.user_id, x.n FROM (SELECT user_id, count(*) AS n FROM stories GROUP BY user_id) x WHERE x.user_id = 1",
    );
    assert_eq!(kinds(&p), ["Base", "Aggregate", "Project"]);
    assert_eq!(p.key_params, vec![0]);
    assert_eq!(names(&p), ["user_id", "n"]);
}

#[test]
fn cte_used_twice_is_lowered_once() {
    let p = plan(
        "WITH n AS (SELECT user_id, count(*) AS c FROM stories GROUP BY user_id) \
         SELECT a.user_id FROM n a JOIN n b ON a.c = b.c",
    );
    assert_eq!(kinds(&p).iter().filter(|k| **k == "Aggregate").count(), 1);
    let (l, r) = find(&p, |op| match op {
        NodeOp::Join { left, right, .. } => Some((*left, *right)),
        _ => None,
    });
    assert_eq!(l, r);
    // An unused CTE is not lowered at all.
    assert!(lower_ok(
        "WITH x AS (SELECT nope FROM nothing) SELECT id FROM stories"
    ));
}

fn lower_ok(sql: &str) -> bool {
    let n = normalize(sql, Dialect::Postgres).unwrap();
    lower(&n.query, &catalog(), &n.params).is_ok()
}

#[test]
fn limited_subquery_becomes_a_top_k() {
    let p = plan("SELECT s.title FROM stories s JOIN (SELECT id FROM stories ORDER BY hotness DESC LIMIT 3) t ON t.id = s.id");
    let (group_by, limit) = find(&p, |op| match op {
        NodeOp::TopK {
            group_by, limit, ..
        } => Some((group_by.clone(), *limit)),
        _ => None,
    });
    assert!(group_by.is_empty());
    assert_eq!(limit, 3);
    assert_eq!(p.relations.len(), 1);
}
