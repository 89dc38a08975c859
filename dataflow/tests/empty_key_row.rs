//! The reader's row for a key without rows (`CachePlan::empty_key_row`): a keyed aggregate
//! without GROUP BY, `SELECT count(*), sum(v), max(v) FROM t WHERE k = $1`.

use larder_dataflow::{Change, Graph, GraphError, ReadError, ReaderHandle, TableId};
use larder_sql::plan::{
    AggFunc, Aggregate, BinaryOp, CachePlan, EmptyKeyRow, Expr, Func, NodeOp, OrderKey,
    OutputColumn, PlanNode, TableRef,
};
use larder_sql::value::{Column, Row, SqlType, TableSchema, Value};

use SqlType::{Int4, Int8};

const T: TableId = TableId(1);

fn graph() -> Graph {
    let col = |name: &str| Column {
        name: name.into(),
        ty: Int4,
        type_oid: 0,
        typmod: -1,
    };
    let mut g = Graph::new();
    g.add_table(
        T,
        TableSchema {
            schema: "public".into(),
            name: "t".into(),
            columns: vec![col("k"), col("v")],
            key: vec![],
        },
    )
    .unwrap();
    g
}

fn agg(func: AggFunc, arg: Option<usize>) -> Aggregate {
    Aggregate {
        func,
        arg,
        distinct: false,
    }
}

/// `SELECT <exprs over (k, count, sum, max)> FROM t WHERE k = $1`: the Aggregate grouped by
/// k, then a Project of the key and `exprs`; the reader keys on column 0 and outputs the rest.
fn plan(exprs: Vec<(Expr, SqlType)>) -> CachePlan {
    let mut project = vec![Expr::Column(0)];
    let mut types = vec![Int4];
    for (e, ty) in exprs {
        project.push(e);
        types.push(ty);
    }
    let output = (1..types.len())
        .map(|i| OutputColumn {
            column: i,
            name: format!("o{i}"),
            ty: types[i].clone(),
        })
        .collect();
    CachePlan {
        relations: vec![TableRef {
            schema: "public".into(),
            name: "t".into(),
        }],
        nodes: vec![
            PlanNode {
                op: NodeOp::Base { relation: 0 },
                types: vec![Int4, Int4],
            },
            PlanNode {
                op: NodeOp::Aggregate {
                    input: 0,
                    group_by: vec![0],
                    aggregates: vec![
                        agg(AggFunc::Count, None),
                        agg(AggFunc::Sum, Some(1)),
                        agg(AggFunc::Max, Some(1)),
                    ],
                },
                types: vec![Int4, Int8, Int8, Int4],
            },
            PlanNode {
                op: NodeOp::Project {
                    input: 1,
                    exprs: project,
                },
                types,
            },
        ],
        key: vec![0],
        key_params: vec![0],
        residual: None,
        order_by: vec![],
        offset: 0,
        limit: None,
        output,
        param_types: vec![Int4],
        fixed_params: vec![],
        single_value_params: vec![0],
        empty_key_row: Some(EmptyKeyRow { aggregate: 1 }),
        range: None,
        key_collations: vec![],
    }
}

fn aggregates() -> Vec<(Expr, SqlType)> {
    vec![
        (Expr::Column(1), Int8),
        (Expr::Column(2), Int8),
        (Expr::Column(3), Int4),
    ]
}

fn start(p: &CachePlan, rows: &[[i64; 2]]) -> (Graph, ReaderHandle) {
    let mut g = graph();
    let (id, reader) = g.add_cache(p).unwrap();
    g.bootstrap_rows(id, T, rows.iter().map(|r| ints(r)))
        .unwrap();
    g.finish_bootstrap(id).unwrap();
    (g, reader)
}

fn ints(v: &[i64]) -> Row {
    v.iter().map(|&i| Value::Int(i)).collect()
}

fn key(k: i64) -> Vec<Vec<Value>> {
    vec![vec![Value::Int(k)]]
}

const NULL: Value = Value::Null;

#[test]
fn a_key_without_rows_gets_count_zero_and_nulls() {
    let (_g, reader) = start(&plan(aggregates()), &[[1, 5], [1, 2]]);
    assert_eq!(
        reader.read(&key(1)),
        Ok(vec![vec![Value::Int(2), Value::Int(7), Value::Int(5)]])
    );
    let empty = vec![vec![Value::Int(0), NULL, NULL]];
    assert_eq!(reader.read(&key(2)), Ok(empty.clone()));
    // `k = NULL` matches nothing: still one row.
    assert_eq!(reader.read(&[vec![NULL]]), Ok(empty));
    // The reader holds nothing for it.
    assert_eq!(reader.key_count(), 1);
}

#[test]
fn rows_with_a_null_key_are_not_found_by_a_null_parameter() {
    let mut p = plan(aggregates());
    p.nodes.truncate(2);
    p.key = vec![0];
    p.output = (1..4)
        .map(|i| OutputColumn {
            column: i,
            name: format!("o{i}"),
            ty: p.nodes[1].types[i].clone(),
        })
        .collect();
    let mut g = graph();
    let (id, reader) = g.add_cache(&p).unwrap();
    g.bootstrap_rows(id, T, vec![vec![NULL, Value::Int(3)]])
        .unwrap();
    g.finish_bootstrap(id).unwrap();
    assert_eq!(reader.key_count(), 1, "the NULL group is held");
    assert_eq!(
        reader.read(&[vec![NULL]]),
        Ok(vec![vec![Value::Int(0), NULL, NULL]])
    );
}

#[test]
fn having_in_the_residual_may_drop_it() {
    // HAVING count(*) > 0
    let mut p = plan(aggregates());
    p.residual = Some(Expr::Binary {
        op: BinaryOp::Gt,
        left: Box::new(Expr::Column(1)),
        right: Box::new(Expr::Literal(Value::Int(0))),
        ty: SqlType::Bool,
    });
    let (_g, reader) = start(&p, &[[1, 5]]);
    assert_eq!(reader.read(&key(2)), Ok(vec![]));
    assert_eq!(reader.read(&key(1)).unwrap().len(), 1);
    // HAVING count(*) < $2: per read.
    p.residual = Some(Expr::Binary {
        op: BinaryOp::Lt,
        left: Box::new(Expr::Column(1)),
        right: Box::new(Expr::Param(1)),
        ty: SqlType::Bool,
    });
    p.param_types = vec![Int4, Int8];
    let (_g, reader) = start(&p, &[[1, 5]]);
    let read = |k: i64, n: i64| reader.read(&[vec![Value::Int(k)], vec![Value::Int(n)]]);
    assert_eq!(read(2, 1), Ok(vec![vec![Value::Int(0), NULL, NULL]]));
    assert_eq!(read(2, 0), Ok(vec![]));
    assert_eq!(read(1, 1), Ok(vec![]));
    assert_eq!(read(1, 2).unwrap().len(), 1);
}

#[test]
fn expressions_over_the_aggregates_are_computed() {
    // count(*) + 10, coalesce(max(v), -1)
    let p = plan(vec![
        (
            Expr::Binary {
                op: BinaryOp::Add,
                left: Box::new(Expr::Column(1)),
                right: Box::new(Expr::Literal(Value::Int(10))),
                ty: Int8,
            },
            Int8,
        ),
        (
            Expr::Func {
                func: Func::Coalesce,
                args: vec![Expr::Column(3), Expr::Literal(Value::Int(-1))],
            },
            Int4,
        ),
    ]);
    let (_g, reader) = start(&p, &[[1, 5]]);
    assert_eq!(reader.read(&key(1)), Ok(vec![ints(&[11, 5])]));
    assert_eq!(reader.read(&key(2)), Ok(vec![ints(&[10, -1])]));
}

#[test]
fn in_lists_get_one_row_per_key_combination_in_order() {
    let mut p = plan(aggregates());
    p.single_value_params = vec![];
    // ORDER BY count DESC NULLS FIRST (the reader's column 1)
    p.order_by = vec![OrderKey {
        column: 1,
        descending: true,
        nulls_first: true,
    }];
    let (_g, reader) = start(&p, &[[1, 5], [1, 2], [3, 4]]);
    let params = vec![vec![
        Value::Int(2),
        Value::Int(1),
        Value::Int(4),
        Value::Int(3),
        Value::Int(2),
    ]];
    let empty = vec![Value::Int(0), NULL, NULL];
    assert_eq!(
        reader.read(&params),
        Ok(vec![
            ints(&[2, 7, 5]),
            ints(&[1, 4, 4]),
            empty.clone(),
            empty.clone()
        ])
    );
    // With a NULL in the list, and LIMIT/OFFSET over all of it.
    p.offset = 1;
    p.limit = Some(2);
    let (_g, reader) = start(&p, &[[1, 5], [1, 2], [3, 4]]);
    let params = vec![vec![NULL, Value::Int(1), Value::Int(3)]];
    assert_eq!(
        reader.read(&params),
        Ok(vec![ints(&[1, 4, 4]), empty.clone()])
    );
    // Without ORDER BY every combination still gets its row.
    p.order_by = vec![];
    p.offset = 0;
    p.limit = None;
    let (_g, reader) = start(&p, &[[1, 5]]);
    let mut rows = reader
        .read(&[vec![Value::Int(1), Value::Int(7), Value::Int(8)]])
        .unwrap();
    rows.sort_by_key(|r| match r[0] {
        Value::Int(i) => i,
        _ => i64::MIN,
    });
    assert_eq!(rows, vec![empty.clone(), empty, ints(&[1, 5, 5])]);
}

#[test]
fn a_key_that_empties_and_fills_again() {
    let (mut g, reader) = start(&plan(aggregates()), &[[1, 5], [1, 2]]);
    g.apply(
        T,
        &[Change::Delete(ints(&[1, 5])), Change::Delete(ints(&[1, 2]))],
    )
    .unwrap();
    g.publish();
    assert_eq!(
        reader.read(&key(1)),
        Ok(vec![vec![Value::Int(0), NULL, NULL]])
    );
    assert_eq!(reader.key_count(), 0);
    g.apply(T, &[Change::Insert(ints(&[1, 9]))]).unwrap();
    g.publish();
    assert_eq!(reader.read(&key(1)), Ok(vec![ints(&[1, 9, 9])]));
}

#[test]
fn a_poisoned_key_is_not_taken_for_an_empty_one() {
    // max(v * 1000000) in int4 overflows for v = 5000.
    let mut p = plan(aggregates());
    p.nodes.insert(
        1,
        PlanNode {
            op: NodeOp::Project {
                input: 0,
                exprs: vec![
                    Expr::Column(0),
                    Expr::Binary {
                        op: BinaryOp::Mul,
                        left: Box::new(Expr::Column(1)),
                        right: Box::new(Expr::Literal(Value::Int(1_000_000))),
                        ty: Int4,
                    },
                ],
            },
            types: vec![Int4, Int4],
        },
    );
    p.nodes[2].op = match p.nodes[2].op.clone() {
        NodeOp::Aggregate {
            group_by,
            aggregates,
            ..
        } => NodeOp::Aggregate {
            input: 1,
            group_by,
            aggregates,
        },
        other => other,
    };
    p.nodes[3].op = match p.nodes[3].op.clone() {
        NodeOp::Project { exprs, .. } => NodeOp::Project { input: 2, exprs },
        other => other,
    };
    p.empty_key_row = Some(EmptyKeyRow { aggregate: 2 });
    let (mut g, reader) = start(&p, &[[1, 5000]]);
    assert_eq!(reader.read(&key(1)), Err(ReadError::Poisoned));
    // The Project above passes on a partly known poison row as wholly unknown: the whole
    // reader is poisoned, so no key is answered with a computed row either.
    assert_eq!(reader.read(&key(2)), Err(ReadError::Poisoned));
    g.apply(T, &[Change::Delete(ints(&[1, 5000]))]).unwrap();
    g.publish();
    for k in [1, 2] {
        assert_eq!(
            reader.read(&key(k)),
            Ok(vec![vec![Value::Int(0), NULL, NULL]])
        );
    }
}

#[test]
fn single_value_slots_refuse_lists() {
    let (_g, reader) = start(&plan(aggregates()), &[[1, 5]]);
    for values in [vec![Value::Int(1), Value::Int(2)], vec![]] {
        let err = reader.read(&[values]).unwrap_err();
        assert_eq!(err, ReadError::NotOneValue { slot: 0 });
        assert_eq!(
            err.to_string(),
            "the cache answers one value at a time for parameter $1"
        );
    }
}

#[test]
fn malformed_specs_are_refused() {
    let mut g = graph();
    let mut cases: Vec<(&str, CachePlan)> = Vec::new();
    let mut p = plan(aggregates());
    p.empty_key_row = Some(EmptyKeyRow { aggregate: 2 });
    cases.push(("not an Aggregate", p));
    let mut p = plan(aggregates());
    p.empty_key_row = Some(EmptyKeyRow { aggregate: 7 });
    cases.push(("out of range", p));
    // A Filter above the Aggregate (HAVING) could drop a key's row.
    let mut p = plan(aggregates());
    let types = p.nodes[2].types.clone();
    p.nodes.push(PlanNode {
        op: NodeOp::Filter {
            input: 2,
            predicate: Expr::Literal(Value::Bool(true)),
        },
        types,
    });
    cases.push(("not a Project", p));
    // The key is an aggregate column.
    let mut p = plan(aggregates());
    p.key = vec![1];
    cases.push(("not a group column", p));
    // The key is computed.
    let mut p = plan(aggregates());
    if let NodeOp::Project { exprs, .. } = &mut p.nodes[2].op {
        exprs[0] = Expr::Cast {
            expr: Box::new(Expr::Column(0)),
            ty: Int4,
        };
    }
    cases.push(("not passed up unchanged", p));
    // A group column without a key.
    let mut p = plan(aggregates());
    if let NodeOp::Aggregate { group_by, .. } = &mut p.nodes[1].op {
        *group_by = vec![0, 1];
    }
    p.nodes[1].types = vec![Int4, Int4, Int8, Int8, Int4];
    if let NodeOp::Project { exprs, .. } = &mut p.nodes[2].op {
        *exprs = vec![
            Expr::Column(0),
            Expr::Column(2),
            Expr::Column(3),
            Expr::Column(4),
        ];
    }
    cases.push(("not keyed", p));
    let mut p = plan(aggregates());
    p.key = vec![];
    p.key_params = vec![];
    p.single_value_params = vec![];
    cases.push(("no key", p));
    let mut p = plan(aggregates());
    p.single_value_params = vec![1];
    p.param_types = vec![Int4, Int4];
    cases.push(("not a key slot", p));
    for (what, p) in cases {
        match g.add_cache(&p) {
            Err(GraphError::InvalidPlan(msg)) => assert!(msg.contains(what), "{what}: {msg}"),
            other => panic!("{what}: {other:?}"),
        }
    }
}

#[test]
fn a_poisoned_key_stays_poisoned_while_others_get_their_row() {
    // max(v * 1000000) with the Aggregate feeding the reader directly: its poison keeps
    // the key.
    let mut p = plan(aggregates());
    p.nodes.truncate(2);
    p.nodes.insert(
        1,
        PlanNode {
            op: NodeOp::Project {
                input: 0,
                exprs: vec![
                    Expr::Column(0),
                    Expr::Binary {
                        op: BinaryOp::Mul,
                        left: Box::new(Expr::Column(1)),
                        right: Box::new(Expr::Literal(Value::Int(1_000_000))),
                        ty: Int4,
                    },
                ],
            },
            types: vec![Int4, Int4],
        },
    );
    if let NodeOp::Aggregate { input, .. } = &mut p.nodes[2].op {
        *input = 1;
    }
    p.empty_key_row = Some(EmptyKeyRow { aggregate: 2 });
    p.output = (1..4)
        .map(|i| OutputColumn {
            column: i,
            name: format!("o{i}"),
            ty: p.nodes[2].types[i].clone(),
        })
        .collect();
    let (mut g, reader) = start(&p, &[[1, 5], [2, 5000]]);
    assert_eq!(reader.read(&key(2)), Err(ReadError::Poisoned));
    assert_eq!(
        reader.read(&key(3)),
        Ok(vec![vec![Value::Int(0), NULL, NULL]])
    );
    assert_eq!(
        reader.read(&key(1)),
        Ok(vec![vec![
            Value::Int(1),
            Value::Int(5_000_000),
            Value::Int(5_000_000)
        ]])
    );
    g.apply(T, &[Change::Delete(ints(&[2, 5000]))]).unwrap();
    g.publish();
    assert_eq!(
        reader.read(&key(2)),
        Ok(vec![vec![Value::Int(0), NULL, NULL]])
    );
}
