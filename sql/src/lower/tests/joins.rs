//! FROM with several relations: JOIN ON/USING, LEFT JOIN, comma joins, self-joins.

use super::*;
use crate::plan::{BinaryOp, Expr as P, JoinKind, NodeRef};
use crate::value::{SqlType, Value};

fn join(p: &CachePlan) -> (NodeRef, NodeRef, JoinKind, Vec<(usize, usize)>) {
    find(p, |op| match op {
        NodeOp::Join {
            left,
            right,
            kind,
            on,
        } => Some((*left, *right, *kind, on.clone())),
        _ => None,
    })
}

#[test]
fn inner_join_with_key_on_a_joined_column() {
    let p = plan(
        "SELECT s.title, u.name FROM stories s JOIN users u ON u.id = s.user_id WHERE s.id = 1",
    );
    assert_eq!(names_of(&p.relations), ["stories", "users"]);
    assert_eq!(kinds(&p), ["Base", "Base", "Join", "Project"]);
    assert_eq!(join(&p), (0, 1, JoinKind::Inner, vec![(1, 0)]));
    // Row: stories 0..5, users 5..16.
    assert_eq!(
        p.materialized(),
        vec![P::Column(0), P::Column(2), P::Column(6)]
    );
    assert_eq!((p.key.clone(), p.key_params.clone()), (vec![0], vec![0]));
    assert_eq!(names(&p), ["title", "name"]);
    assert!(p.fixed_params.is_empty());
}

fn names_of(r: &[TableRef]) -> Vec<&str> {
    r.iter().map(|t| t.name.as_str()).collect()
}

#[test]
fn join_columns_of_different_types_are_cast_to_a_common_type() {
    let p = plan("SELECT c.id FROM comments c JOIN stories s ON s.id = c.user_id");
    assert_eq!(
        kinds(&p),
        ["Base", "Base", "Project", "Join", "Project", "Project"]
    );
    let (left, right, _, on) = join(&p);
    assert_eq!((left, right), (2, 1));
    assert_eq!(on, vec![(4, 0)]);
    match &p.nodes[2].op {
        NodeOp::Project { exprs, .. } => assert_eq!(
            exprs[4],
            P::Cast {
                expr: col(2),
                ty: SqlType::Int8
            }
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(p.nodes[2].types[4], SqlType::Int8);
    // The cast column is dropped again: comments then stories.
    assert_eq!(p.nodes[4].types.len(), 4 + 5);
}

#[test]
fn other_inner_join_conditions_filter_above_the_join() {
    let p = plan(
        "SELECT s.id FROM comments c JOIN stories s ON c.story_id = s.id AND c.score > s.score",
    );
    assert_eq!(kinds(&p), ["Base", "Base", "Join", "Filter", "Project"]);
    assert_eq!(
        p.filter(),
        Some(P::Binary {
            op: BinaryOp::Gt,
            left: col(3),
            right: col(7),
            ty: SqlType::Bool
        })
    );
}

#[test]
fn left_join_right_side_conditions_filter_the_right_input() {
    let p = plan("SELECT s.id, v.vote FROM stories s LEFT JOIN votes v ON v.story_id = s.id AND v.user_id = 7");
    assert_eq!(kinds(&p), ["Base", "Base", "Filter", "Join", "Project"]);
    assert_eq!(join(&p), (0, 2, JoinKind::Left, vec![(0, 1)]));
    assert_eq!(
        p.filter(),
        Some(P::Binary {
            op: BinaryOp::Eq,
            left: col(0),
            right: Box::new(P::Literal(Value::Int(7))),
            ty: SqlType::Bool
        })
    );
    assert_eq!(p.fixed_params, vec![(0, vec![Value::Int(7)])]);
    assert_eq!(p.param_types, vec![SqlType::Int4]);
}

#[test]
fn left_join_where_conditions_stay_post_join() {
    // A WHERE conjunct on the right side is applied after the join: the residual is fine.
    let p =
        plan("SELECT s.id FROM stories s LEFT JOIN votes v ON v.story_id = s.id WHERE v.vote > 0");
    assert!(p.residual.is_some());
    assert!(p.fixed_params.is_empty());
    let p = plan(
        "SELECT s.id FROM stories s LEFT JOIN votes v ON v.story_id = s.id WHERE v.user_id = 3",
    );
    assert_eq!(p.key_params, vec![0]);
    assert!(refuse(
        "SELECT s.id FROM stories s LEFT JOIN votes v ON v.story_id = s.id AND s.score > 1"
    )
    .starts_with("LEFT JOIN condition that is not an equality"));
}

#[test]
fn using_merges_columns_in_postgres_order() {
    let p = plan("SELECT * FROM comments JOIN votes USING (story_id, user_id)");
    assert_eq!(join(&p).3, vec![(1, 1), (2, 0)]);
    assert_eq!(names(&p), ["story_id", "user_id", "id", "score", "vote"]);
    // The merged column resolves unqualified; the sides stay reachable qualified.
    let p =
        plan("SELECT user_id, votes.user_id, comments.id FROM comments JOIN votes USING (user_id)");
    assert_eq!(names(&p), ["user_id", "user_id", "id"]);
    assert_eq!(
        plan("SELECT * FROM comments NATURAL JOIN votes"),
        plan("SELECT * FROM comments JOIN votes USING (story_id, user_id)")
    );
}

#[test]
fn column_resolution_over_several_relations() {
    assert_eq!(
        refuse("SELECT id FROM stories s JOIN comments c ON c.story_id = s.id"),
        "column reference \"id\" is ambiguous"
    );
    assert_eq!(
        refuse("SELECT z.id FROM stories s JOIN comments c ON c.story_id = s.id"),
        "missing FROM-clause entry for table \"z\""
    );
    // Unambiguous unqualified names resolve; `t.*` expands one relation.
    let p = plan("SELECT title, c.* FROM stories s JOIN comments c ON c.story_id = s.id");
    assert_eq!(names(&p), ["title", "id", "story_id", "user_id", "score"]);
    let p = plan("SELECT * FROM stories s JOIN comments c ON c.story_id = s.id");
    assert_eq!(p.output.len(), 9);
    assert_eq!(p.output[5].name, "id");
}

#[test]
fn comma_joins_use_where_equalities_and_push_filters_down() {
    let p = plan("SELECT s.title FROM stories s, comments c WHERE c.story_id = s.id AND c.user_id IS NULL AND s.id = 3");
    assert_eq!(kinds(&p), ["Base", "Base", "Filter", "Join", "Project"]);
    assert_eq!(join(&p), (0, 2, JoinKind::Inner, vec![(0, 1)]));
    assert_eq!(
        p.filter(),
        Some(P::IsNull {
            expr: col(2),
            negated: false
        })
    );
    assert_eq!(p.key_params, vec![0]);
    assert!(
        refuse("SELECT * FROM stories s, comments c WHERE c.score > s.score")
            .contains("(a cross join) is not supported")
    );
}

#[test]
fn comma_joins_in_any_order_keep_from_order() {
    let p = plan("SELECT * FROM stories s, votes v, comments c WHERE c.story_id = s.id AND v.story_id = c.story_id");
    let n = names(&p);
    assert_eq!(n[..5], ["id", "user_id", "title", "score", "hotness"]);
    assert_eq!(n[5..8], ["user_id", "story_id", "vote"]);
    assert_eq!(n[8..], ["id", "story_id", "user_id", "score"]);
    assert_eq!(kinds(&p).iter().filter(|k| **k == "Join").count(), 2);
}

#[test]
fn self_join_reads_one_relation_twice() {
    let p = plan("SELECT p.id, c.id FROM comments c JOIN comments p ON p.id = c.story_id WHERE c.user_id = 1");
    assert_eq!(p.relations.len(), 1);
    assert_eq!(join(&p), (0, 0, JoinKind::Inner, vec![(1, 0)]));
    assert_eq!(
        refuse("SELECT * FROM comments JOIN comments ON comments.id = comments.story_id"),
        "table name \"comments\" specified more than once"
    );
}

#[test]
fn multi_way_join_on_several_columns() {
    let p = plan(
        "SELECT c.id FROM comments c JOIN votes v ON v.story_id = c.story_id AND v.user_id = c.user_id \
         JOIN stories s ON s.id = c.story_id",
    );
    let joins: Vec<Vec<(usize, usize)>> = p
        .nodes
        .iter()
        .filter_map(|n| match &n.op {
            NodeOp::Join { on, .. } => Some(on.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(joins, vec![vec![(1, 1), (2, 0)], vec![(1, 0)]]);
}

#[test]
fn join_key_with_top_k() {
    let p = plan(
        "SELECT s.title FROM stories s JOIN users u ON u.id = s.user_id WHERE u.name = 'x' \
         ORDER BY s.hotness DESC LIMIT 5",
    );
    assert_eq!(kinds(&p).last(), Some(&"TopK"));
    let (group_by, limit) = find(&p, |op| match op {
        NodeOp::TopK {
            group_by, limit, ..
        } => Some((group_by.clone(), *limit)),
        _ => None,
    });
    assert_eq!(group_by, p.key);
    assert_eq!(limit, 5);
}

#[test]
fn join_refusals() {
    assert_eq!(
        refuse("SELECT * FROM stories s JOIN users u ON u.id = s.user_id AND u.age > $1"),
        "parameter $1 in a JOIN condition cannot be cached"
    );
    assert_eq!(
        refuse("SELECT * FROM stories s RIGHT JOIN users u ON u.id = s.user_id"),
        "RIGHT JOIN is not supported yet"
    );
    assert!(
        refuse("SELECT * FROM stories s JOIN users u ON s.score > u.age")
            .contains("(a cross join)")
    );
    assert_eq!(
        refuse(
            "SELECT * FROM stories s, LATERAL (SELECT * FROM comments c WHERE c.story_id = s.id) x"
        ),
        "LATERAL subqueries are not supported"
    );
}
