//! DISTINCT, TopK under the reader, and UNION.

use super::*;
use crate::plan::{Expr as P, OrderKey};
use crate::value::{SqlType, Value};

fn top_k(p: &CachePlan) -> Option<(Vec<usize>, Vec<OrderKey>, usize)> {
    p.nodes.iter().find_map(|n| match &n.op {
        NodeOp::TopK {
            group_by,
            order,
            limit,
            ..
        } => Some((group_by.clone(), order.clone(), *limit)),
        _ => None,
    })
}

#[test]
fn distinct() {
    let p = plan("SELECT DISTINCT user_id FROM stories");
    assert_eq!(kinds(&p), ["Base", "Project", "Distinct"]);
    // A key on an output column stays a key.
    let p = plan("SELECT DISTINCT user_id, title FROM stories WHERE user_id = 3");
    assert_eq!(kinds(&p), ["Base", "Project", "Distinct"]);
    assert_eq!(p.key_params, vec![0]);
    // On another column the Distinct runs over it too (see `keys`); other predicates are
    // fixed filters below.
    let p = plan("SELECT DISTINCT title FROM stories WHERE user_id = 3");
    assert_eq!(kinds(&p), ["Base", "Project", "Distinct"]);
    assert_eq!(p.single_value_params, vec![0]);
    let p = plan("SELECT DISTINCT title FROM stories WHERE user_id > 3");
    assert_eq!(kinds(&p), ["Base", "Filter", "Project", "Distinct"]);
    assert!(p.key.is_empty());
    assert_eq!(p.fixed_params, vec![(0, vec![Value::Int(3)])]);
    assert_eq!(
        refuse("SELECT DISTINCT ON (user_id) title FROM stories"),
        "DISTINCT ON is not supported"
    );
    assert_eq!(
        refuse("SELECT DISTINCT user_id FROM stories ORDER BY score"),
        "for SELECT DISTINCT, ORDER BY expressions must appear in select list"
    );
}

#[test]
fn top_k_below_the_reader_per_key() {
    let p = plan("SELECT * FROM stories WHERE user_id = 1 ORDER BY hotness DESC LIMIT 10 OFFSET 5");
    assert_eq!(kinds(&p), ["Base", "Project", "TopK"]);
    let (group_by, order, limit) = top_k(&p).unwrap();
    assert_eq!(group_by, p.key);
    assert_eq!(order, p.order_by);
    assert_eq!(limit, 15);
    assert_eq!((p.offset, p.limit), (5, Some(10)));
    assert_eq!(
        order,
        vec![OrderKey {
            // Reader: the key (user_id) first, then id, title, score, hotness.
            column: 4,
            descending: true,
            nulls_first: true
        }]
    );
}

#[test]
fn no_top_k_with_a_residual_or_without_order() {
    let p = plan("SELECT * FROM stories WHERE user_id = 1 AND score > 3 ORDER BY hotness LIMIT 10");
    assert!(p.residual.is_some());
    assert_eq!(top_k(&p), None);
    assert_eq!(top_k(&plan("SELECT * FROM stories LIMIT 10")), None);
    let p = plan("SELECT user_id, count(*) FROM stories GROUP BY user_id ORDER BY 2 DESC LIMIT 3");
    assert_eq!(kinds(&p), ["Base", "Aggregate", "Project", "TopK"]);
    assert_eq!(top_k(&p).unwrap().0, Vec::<usize>::new());
}

#[test]
fn union_all_casts_branches_to_common_types() {
    let p = plan("SELECT id FROM stories UNION ALL SELECT user_id FROM comments");
    assert_eq!(
        kinds(&p),
        ["Base", "Project", "Base", "Project", "Project", "Union"]
    );
    assert_eq!(p.nodes[5].types, vec![SqlType::Int8]);
    match &p.nodes[4].op {
        NodeOp::Project { exprs, .. } => assert_eq!(
            exprs[0],
            P::Cast {
                expr: col(0),
                ty: SqlType::Int8
            }
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(names(&p), ["id"]);
}

#[test]
fn union_distinct_order_and_limit() {
    let p = plan(
        "SELECT id AS x, title FROM stories UNION SELECT id, 'c' FROM comments ORDER BY x DESC LIMIT 10",
    );
    assert_eq!(
        kinds(&p)[kinds(&p).len() - 3..],
        ["Union", "Distinct", "TopK"]
    );
    assert_eq!(names(&p), ["x", "title"]);
    assert_eq!(
        p.order_by,
        vec![OrderKey {
            column: 0,
            descending: true,
            nulls_first: true
        }]
    );
    let (group_by, _, limit) = top_k(&p).unwrap();
    assert!(group_by.is_empty());
    assert_eq!(limit, 10);
    let three = plan("SELECT user_id FROM stories UNION SELECT user_id FROM comments UNION SELECT user_id FROM votes");
    let inputs = find(&three, |op| match op {
        NodeOp::Union { inputs } => Some(inputs.len()),
        _ => None,
    });
    assert_eq!(inputs, 3);
}

#[test]
fn union_parameters_are_fixed() {
    let p = plan("SELECT id FROM stories WHERE user_id = 1 UNION SELECT id FROM comments");
    assert_eq!(p.fixed_params, vec![(0, vec![Value::Int(1)])]);
    assert!(p.key.is_empty() && p.residual.is_none());
    assert_eq!(
        refuse("SELECT id FROM stories UNION SELECT id, title FROM stories"),
        "each UNION query must have the same number of columns"
    );
    assert_eq!(
        refuse("SELECT title FROM stories UNION SELECT id FROM stories"),
        "UNION types text and bigint cannot be matched"
    );
}
