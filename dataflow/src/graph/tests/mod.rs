//! Graph-level tests: wiring, bootstrap buffering, validation, fixed parameters, poison.

use larder_sql::plan::{
    AggFunc, Aggregate, BinaryOp, CachePlan, Expr, JoinKind, NodeOp, OutputColumn, PlanNode,
    TableRef,
};
use larder_sql::value::{Column, Row, SqlType, TableSchema, Value};

use super::*;
use crate::error::ReadError;

const T: TableId = TableId(1);
const U: TableId = TableId(2);

fn schema(name: &str, types: &[SqlType]) -> TableSchema {
    TableSchema {
        schema: "public".into(),
        name: name.into(),
        columns: types
            .iter()
            .enumerate()
            .map(|(i, ty)| Column {
                name: format!("c{i}"),
                ty: ty.clone(),
                type_oid: 0,
                typmod: -1,
            })
            .collect(),
        key: vec![],
    }
}

fn graph_with(limits: GraphLimits) -> Graph {
    let mut g = Graph::with_limits(limits);
    g.add_table(T, schema("t", &[SqlType::Int4, SqlType::Int4]))
        .unwrap();
    g.add_table(U, schema("u", &[SqlType::Int4, SqlType::Float8]))
        .unwrap();
    g
}

fn node(op: NodeOp, types: Vec<SqlType>) -> PlanNode {
    PlanNode { op, types }
}

fn plan(relations: &[&str], nodes: Vec<PlanNode>) -> CachePlan {
    let types = nodes.last().unwrap().types.clone();
    CachePlan {
        relations: relations
            .iter()
            .map(|n| TableRef {
                schema: "public".into(),
                name: (*n).into(),
            })
            .collect(),
        output: (0..types.len())
            .map(|i| OutputColumn {
                column: i,
                name: format!("o{i}"),
                ty: types[i].clone(),
            })
            .collect(),
        nodes,
        key: vec![],
        key_params: vec![],
        residual: None,
        order_by: vec![],
        offset: 0,
        limit: None,
        param_types: vec![],
        fixed_params: vec![],
        single_value_params: vec![],
        empty_key_row: None,
        range: None,
        key_collations: vec![],
    }
}

fn int_row(v: &[i64]) -> Row {
    v.iter().map(|&i| Value::Int(i)).collect()
}

fn base_t() -> PlanNode {
    node(NodeOp::Base { relation: 0 }, vec![SqlType::Int4; 2])
}

fn self_join() -> CachePlan {
    plan(
        &["t"],
        vec![
            base_t(),
            node(
                NodeOp::Join {
                    left: 0,
                    right: 0,
                    kind: JoinKind::Inner,
                    on: vec![(0, 0)],
                },
                vec![SqlType::Int4; 4],
            ),
        ],
    )
}

fn sorted(mut rows: Vec<Row>) -> Vec<Row> {
    rows.sort_by(|a, b| crate::structural_cmp_row(a, b));
    rows
}

#[test]
fn self_join_receives_each_batch_on_both_inputs() {
    let mut g = graph_with(GraphLimits::default());
    let (id, reader) = g.add_cache(&self_join()).unwrap();
    assert_eq!(g.cache_tables(id), vec![T]);
    g.bootstrap_rows(id, T, vec![int_row(&[1, 1])]).unwrap();
    g.finish_bootstrap(id).unwrap();
    g.apply(T, &[Change::Insert(int_row(&[1, 2]))]).unwrap();
    g.publish();
    assert_eq!(
        sorted(reader.read(&[]).unwrap()),
        vec![
            int_row(&[1, 1, 1, 1]),
            int_row(&[1, 1, 1, 2]),
            int_row(&[1, 2, 1, 1]),
            int_row(&[1, 2, 1, 2]),
        ]
    );
}

#[test]
fn changes_during_bootstrap_are_buffered_and_replayed_in_order() {
    let mut g = graph_with(GraphLimits::default());
    let (id, reader) = g.add_cache(&self_join()).unwrap();
    let snapshot = [int_row(&[1, 1]), int_row(&[2, 2])];
    g.bootstrap_rows(id, T, snapshot[..1].to_vec()).unwrap();
    // An update of a snapshot row, arriving between two chunks.
    g.apply(
        T,
        &[
            Change::Delete(int_row(&[2, 2])),
            Change::Insert(int_row(&[2, 3])),
        ],
    )
    .unwrap();
    g.publish();
    assert_eq!(reader.read(&[]), Err(ReadError::NotReady));
    g.bootstrap_rows(id, T, snapshot[1..].to_vec()).unwrap();
    g.finish_bootstrap(id).unwrap();
    assert!(g.is_ready(id));
    assert_eq!(
        sorted(reader.read(&[]).unwrap()),
        vec![int_row(&[1, 1, 1, 1]), int_row(&[2, 3, 2, 3])]
    );
    assert_eq!(g.finish_bootstrap(id), Err(GraphError::AlreadyReady(id.0)));
    assert_eq!(
        g.bootstrap_rows(id, U, Vec::new()),
        Err(GraphError::AlreadyReady(id.0))
    );
}

#[test]
fn bootstrap_buffer_overflow_fails_the_cache_only() {
    let mut g = graph_with(GraphLimits {
        bootstrap_buffer_max_bytes: 1000,
        ..GraphLimits::default()
    });
    let (ready, ready_reader) = g.add_cache(&self_join()).unwrap();
    g.finish_bootstrap(ready).unwrap();
    let (id, _) = g.add_cache(&self_join()).unwrap();
    assert_eq!(
        g.bootstrap_rows(id, U, Vec::new()),
        Err(GraphError::NotCacheTable {
            cache: id.0,
            table: U.0
        })
    );
    let changes: Vec<Change> = (0..20).map(|i| Change::Insert(int_row(&[i, i]))).collect();
    g.apply(T, &changes).unwrap();
    g.publish();
    assert_eq!(
        g.bootstrap_rows(id, T, Vec::new()),
        Err(GraphError::BootstrapOverflow(id.0))
    );
    assert_eq!(
        g.finish_bootstrap(id),
        Err(GraphError::BootstrapOverflow(id.0))
    );
    assert!(!g.is_ready(id));
    g.remove_cache(id).unwrap();
    assert_eq!(
        ready_reader.row_count(),
        20,
        "the ready cache saw every change"
    );
}

#[test]
fn global_aggregate_row_exists_over_empty_input() {
    let mut g = graph_with(GraphLimits::default());
    let p = plan(
        &["t"],
        vec![
            base_t(),
            node(
                NodeOp::Aggregate {
                    input: 0,
                    group_by: vec![],
                    aggregates: vec![
                        Aggregate {
                            func: AggFunc::Count,
                            arg: None,
                            distinct: false,
                        },
                        Aggregate {
                            func: AggFunc::Avg,
                            arg: Some(1),
                            distinct: false,
                        },
                    ],
                },
                vec![SqlType::Int8, SqlType::Numeric],
            ),
        ],
    );
    let (id, reader) = g.add_cache(&p).unwrap();
    g.finish_bootstrap(id).unwrap();
    assert_eq!(reader.read(&[]), Ok(vec![vec![Value::Int(0), Value::Null]]));
    g.apply(
        T,
        &[
            Change::Insert(int_row(&[0, 1])),
            Change::Insert(int_row(&[0, 2])),
        ],
    )
    .unwrap();
    g.publish();
    assert_eq!(
        reader.read(&[]),
        Ok(vec![vec![
            Value::Int(2),
            Value::Numeric("1.5000000000000000".into())
        ]])
    );
}

#[test]
fn fixed_params_answer_only_their_value() {
    let mut g = graph_with(GraphLimits::default());
    let mut p = self_join();
    p.param_types = vec![SqlType::Int4];
    p.fixed_params = vec![(0, vec![Value::Int(5)])];
    let (id, reader) = g.add_cache(&p).unwrap();
    g.finish_bootstrap(id).unwrap();
    assert_eq!(reader.read(&[vec![Value::Int(5)]]), Ok(vec![]));
    let other = reader.read(&[vec![Value::Int(6)]]);
    assert_eq!(other, Err(ReadError::OtherParameter { slot: 0 }));
    assert_eq!(
        other.unwrap_err().to_string(),
        "the cache holds results for another value of parameter $1"
    );
    assert_eq!(
        reader.read(&[vec![Value::Int(5), Value::Int(6)]]),
        Err(ReadError::OtherParameter { slot: 0 })
    );
    // A slot fixed to an IN list answers exactly that list.
    p.fixed_params = vec![(0, vec![Value::Int(5), Value::Int(6)])];
    let (id, reader) = g.add_cache(&p).unwrap();
    g.finish_bootstrap(id).unwrap();
    assert_eq!(
        reader.read(&[vec![Value::Int(5), Value::Int(6)]]),
        Ok(vec![])
    );
    assert_eq!(
        reader.read(&[vec![Value::Int(6), Value::Int(5)]]),
        Ok(vec![])
    );
    for other in [vec![Value::Int(5)], vec![Value::Int(6), Value::Int(7)]] {
        assert_eq!(
            reader.read(&[other]),
            Err(ReadError::OtherParameter { slot: 0 })
        );
    }
}

#[test]
fn tables_in_use_cannot_be_removed() {
    let mut g = graph_with(GraphLimits::default());
    let p = plan(
        &["t", "u"],
        vec![
            base_t(),
            node(
                NodeOp::Base { relation: 1 },
                vec![SqlType::Int4, SqlType::Float8],
            ),
            node(
                NodeOp::SemiJoin {
                    left: 0,
                    right: 1,
                    on: vec![(0, 0)],
                    anti: true,
                    null_aware: true,
                },
                vec![SqlType::Int4; 2],
            ),
        ],
    );
    let (id, _) = g.add_cache(&p).unwrap();
    assert_eq!(g.cache_tables(id), vec![T, U]);
    assert_eq!(g.remove_table(U), Err(GraphError::TableInUse(U.0)));
    g.remove_cache(id).unwrap();
    g.remove_table(U).unwrap();
    assert_eq!(g.cache_tables(id), Vec::<TableId>::new());
}

#[test]
fn invalid_plans_are_refused() {
    let mut g = graph_with(GraphLimits::default());
    let join = |on: Vec<(usize, usize)>| {
        plan(
            &["t"],
            vec![
                base_t(),
                node(
                    NodeOp::Join {
                        left: 0,
                        right: 0,
                        kind: JoinKind::Left,
                        on,
                    },
                    vec![SqlType::Int4; 4],
                ),
            ],
        )
    };
    let sum_float = plan(
        &["u"],
        vec![
            node(
                NodeOp::Base { relation: 0 },
                vec![SqlType::Int4, SqlType::Float8],
            ),
            node(
                NodeOp::Aggregate {
                    input: 0,
                    group_by: vec![],
                    aggregates: vec![Aggregate {
                        func: AggFunc::Sum,
                        arg: Some(1),
                        distinct: false,
                    }],
                },
                vec![SqlType::Float8],
            ),
        ],
    );
    let forward = plan(
        &["t"],
        vec![
            base_t(),
            node(NodeOp::Distinct { input: 1 }, vec![SqlType::Int4; 2]),
        ],
    );
    let wrong_types = plan(
        &["t"],
        vec![
            base_t(),
            node(NodeOp::Distinct { input: 0 }, vec![SqlType::Text; 2]),
        ],
    );
    let mut bad_fixed = self_join();
    bad_fixed.fixed_params = vec![(3, vec![Value::Int(1)])];
    for p in [
        join(vec![]),
        join(vec![(0, 9)]),
        sum_float,
        forward,
        wrong_types,
        bad_fixed,
    ] {
        assert!(
            matches!(g.add_cache(&p), Err(GraphError::InvalidPlan(_))),
            "accepted {p:?}"
        );
    }
    assert!(g.cache_ids().is_empty());
}

/// SELECT c0, max(c1 * 1000000) FROM t GROUP BY c0, keyed on c0: int4 overflow poisons.
fn overflowing_max() -> CachePlan {
    let mut p = plan(
        &["t"],
        vec![
            base_t(),
            node(
                NodeOp::Project {
                    input: 0,
                    exprs: vec![
                        Expr::Column(0),
                        Expr::Binary {
                            op: BinaryOp::Mul,
                            left: Box::new(Expr::Column(1)),
                            right: Box::new(Expr::Literal(Value::Int(1_000_000))),
                            ty: SqlType::Int4,
                        },
                    ],
                },
                vec![SqlType::Int4; 2],
            ),
            node(
                NodeOp::Aggregate {
                    input: 1,
                    group_by: vec![0],
                    aggregates: vec![Aggregate {
                        func: AggFunc::Max,
                        arg: Some(1),
                        distinct: false,
                    }],
                },
                vec![SqlType::Int4; 2],
            ),
        ],
    );
    p.key = vec![0];
    p.key_params = vec![0];
    p.param_types = vec![SqlType::Int4];
    p
}

#[test]
fn poison_reaches_the_reader_and_clears() {
    let mut g = graph_with(GraphLimits::default());
    let (id, reader) = g.add_cache(&overflowing_max()).unwrap();
    g.finish_bootstrap(id).unwrap();
    g.apply(
        T,
        &[
            Change::Insert(int_row(&[1, 1])),
            Change::Insert(int_row(&[2, 5000])),
        ],
    )
    .unwrap();
    g.publish();
    assert_eq!(
        reader.read(&[vec![Value::Int(1)]]),
        Ok(vec![int_row(&[1, 1_000_000])])
    );
    assert_eq!(
        reader.read(&[vec![Value::Int(2)]]),
        Err(ReadError::Poisoned)
    );
    g.apply(T, &[Change::Delete(int_row(&[2, 5000]))]).unwrap();
    g.publish();
    assert_eq!(reader.read(&[vec![Value::Int(2)]]), Ok(vec![]));
    assert_eq!(reader.stats().map(|s| s.poisoned_keys), Some(0));
}

#[test]
fn identical_nodes_are_shared_and_freed_with_their_last_cache() {
    let mut g = graph_with(GraphLimits::default());
    let (a, reader_a) = g.add_cache(&overflowing_max()).unwrap();
    g.finish_bootstrap(a).unwrap();
    g.apply(
        T,
        &[
            Change::Insert(int_row(&[1, 1])),
            Change::Insert(int_row(&[2, 5000])),
        ],
    )
    .unwrap();
    // The same aggregate read in full: project and aggregate are shared, the reader is new.
    let mut full = overflowing_max();
    full.key.clear();
    full.key_params.clear();
    full.param_types.clear();
    let (b, reader_b) = g.add_cache(&full).unwrap();
    assert_eq!(
        g.cache_nodes(b),
        CacheNodes {
            total: 3,
            shared: 2
        }
    );
    assert_eq!(g.node_count(), 4, "two shared nodes and two readers");
    assert!(g.bootstrap_tables(b).is_empty(), "no table rows needed");
    // A change while B fills reaches A at once and B on its replay.
    g.apply(T, &[Change::Insert(int_row(&[3, 7]))]).unwrap();
    g.finish_bootstrap(b).unwrap();
    g.publish();
    // The poisoned group's poison reached B's reader from the shared aggregate.
    assert_eq!(reader_b.read(&[]), Err(ReadError::Poisoned));
    g.apply(T, &[Change::Delete(int_row(&[2, 5000]))]).unwrap();
    g.publish();
    assert_eq!(
        sorted(reader_b.read(&[]).unwrap()),
        vec![int_row(&[1, 1_000_000]), int_row(&[3, 7_000_000])]
    );
    assert_eq!(
        reader_a.read(&[vec![Value::Int(3)]]),
        Ok(vec![int_row(&[3, 7_000_000])])
    );
    // Dropping A keeps what B uses; dropping B frees everything.
    g.remove_cache(a).unwrap();
    assert_eq!(g.node_count(), 3);
    assert_eq!(
        g.cache_nodes(b),
        CacheNodes {
            total: 3,
            shared: 0
        }
    );
    g.apply(T, &[Change::Insert(int_row(&[4, 1]))]).unwrap();
    g.publish();
    assert_eq!(reader_b.read(&[]).map(|r| r.len()), Ok(3));
    g.remove_cache(b).unwrap();
    assert_eq!(g.node_count(), 0);
    assert!(
        g.signatures.is_empty(),
        "the signature index is emptied too"
    );
}

#[test]
fn a_node_of_a_cache_still_filling_is_not_shared() {
    let mut g = graph_with(GraphLimits::default());
    let (a, _) = g.add_cache(&overflowing_max()).unwrap();
    let (b, _) = g.add_cache(&overflowing_max()).unwrap();
    assert_eq!(g.cache_nodes(b).shared, 0, "A's nodes are not live yet");
    g.finish_bootstrap(a).unwrap();
    g.finish_bootstrap(b).unwrap();
    let (c, _) = g.add_cache(&overflowing_max()).unwrap();
    assert_eq!(g.cache_nodes(c).shared, 2);
}

#[test]
fn a_shared_node_too_large_to_copy_is_built_again() {
    let mut g = graph_with(GraphLimits {
        seed_rows_max: 2,
        ..GraphLimits::default()
    });
    let (a, _) = g.add_cache(&overflowing_max()).unwrap();
    g.finish_bootstrap(a).unwrap();
    let rows: Vec<Change> = (1..=3).map(|k| Change::Insert(int_row(&[k, 1]))).collect();
    g.apply(T, &rows).unwrap();
    let mut full = overflowing_max();
    full.key.clear();
    full.key_params.clear();
    full.param_types.clear();
    // Three groups: more than the new reader may be seeded with; the aggregate and the
    // project under it are built again and filled from the table.
    let (b, reader) = g.add_cache(&full).unwrap();
    assert_eq!(
        g.cache_nodes(b),
        CacheNodes {
            total: 3,
            shared: 0
        }
    );
    assert_eq!(g.bootstrap_tables(b), vec![T]);
    g.bootstrap_rows(b, T, (1..=3).map(|k| int_row(&[k, 1])))
        .unwrap();
    g.finish_bootstrap(b).unwrap();
    assert_eq!(reader.read(&[]).map(|r| r.len()), Ok(3));
}

#[test]
fn a_fill_hands_the_reader_its_final_output_and_poison_once() {
    let mut g = graph_with(GraphLimits::default());
    let (id, reader) = g.add_cache(&overflowing_max()).unwrap();
    // The aggregate's group 1 changes with every batch of the fill; the reader takes only
    // its final row (and group 2's poison), then the change held meanwhile.
    for v in 1..=3 {
        g.bootstrap_rows(id, T, vec![int_row(&[1, v])]).unwrap();
    }
    g.bootstrap_rows(id, T, vec![int_row(&[2, 5000])]).unwrap();
    g.apply(T, &[Change::Insert(int_row(&[1, 9]))]).unwrap();
    g.finish_bootstrap(id).unwrap();
    assert_eq!(
        reader.read(&[vec![Value::Int(1)]]),
        Ok(vec![int_row(&[1, 9_000_000])])
    );
    assert_eq!(
        reader.read(&[vec![Value::Int(2)]]),
        Err(ReadError::Poisoned)
    );
    assert_eq!(reader.stats().map(|s| s.rows), Some(1));
}

mod keys;
mod partial_state;
