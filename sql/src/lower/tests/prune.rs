//! Column pruning: base tables narrowed to what is read above them, everything renumbered.

use super::*;
use crate::lower::prune_columns;

fn pruned(sql: &str) -> CachePlan {
    prune_columns(plan(sql))
}

/// The Project right above each base table, as its kept columns.
fn kept(p: &CachePlan) -> Vec<Vec<usize>> {
    p.nodes
        .iter()
        .enumerate()
        .filter_map(|(i, n)| match &n.op {
            NodeOp::Project { input, exprs }
                if matches!(p.nodes[*input].op, NodeOp::Base { .. }) && *input + 1 == i =>
            {
                Some(
                    exprs
                        .iter()
                        .map(|e| match e {
                            Expr::Column(c) => *c,
                            other => panic!("not a column: {other:?}"),
                        })
                        .collect(),
                )
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_join_and_count_keeps_only_the_columns_it_reads() {
    let sql = "SELECT s.id, s.title, u.name, count(v.user_id) FROM stories s \
               JOIN users u ON u.id = s.user_id LEFT JOIN votes v ON v.story_id = s.id \
               WHERE s.id = $1 GROUP BY s.id, s.title, u.name";
    let before = plan(sql);
    let after = pruned(sql);
    // stories: id, user_id, title; users: id, name; votes: user_id, story_id.
    assert_eq!(kept(&after), vec![vec![0, 1, 2], vec![0, 1], vec![0, 1]]);
    let join_widths = |p: &CachePlan| -> Vec<usize> {
        p.nodes
            .iter()
            .filter(|n| matches!(n.op, NodeOp::Join { .. }))
            .map(|n| n.types.len())
            .collect()
    };
    assert_eq!(join_widths(&before), vec![16, 19]);
    assert_eq!(join_widths(&after), vec![5, 7]);
    assert_eq!(after.reader_types(), before.reader_types());
    assert_eq!(after.output, before.output);
    assert_eq!(
        after.relation_columns_read(),
        before.relation_columns_read()
    );
}

#[test]
fn the_reader_spec_is_renumbered_when_the_last_node_narrows() {
    // No Project on top: the reader reads the join's columns directly.
    let sql = "SELECT s.title, u.name FROM stories s JOIN users u ON u.id = s.user_id \
               WHERE u.age > $1 ORDER BY s.title LIMIT 5";
    let before = plan(sql);
    let after = pruned(sql);
    let name = |p: &CachePlan, c: usize| p.reader_types()[c].clone();
    for (b, a) in before.output.iter().zip(&after.output) {
        assert_eq!(name(&before, b.column), name(&after, a.column));
        assert_eq!(b.name, a.name);
    }
    assert!(after.reader_types().len() <= before.reader_types().len());
    assert_eq!(
        after.relation_columns_read(),
        before.relation_columns_read()
    );
}

#[test]
fn distinct_top_k_and_union_keep_whole_rows() {
    for sql in [
        "SELECT DISTINCT user_id FROM votes",
        "SELECT id, title FROM stories ORDER BY score DESC LIMIT 3",
        "SELECT user_id FROM votes UNION SELECT user_id FROM comments",
    ] {
        let before = plan(sql);
        let after = pruned(sql);
        assert_eq!(
            after.relation_columns_read(),
            before.relation_columns_read(),
            "{sql}"
        );
        assert_eq!(after.reader_types(), before.reader_types(), "{sql}");
    }
    // A plan that reads every column is returned as it was.
    let sql = "SELECT * FROM users WHERE id = $1";
    assert_eq!(pruned(sql), plan(sql));
}
