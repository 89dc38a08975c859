//! Partial caches with state: an aggregate or a TopK grouped by the reader key keeps groups
//! only for the held keys. Checked against the same cache held whole, under random writes,
//! reads that fill holes and evictions, with the state's bytes back to nothing at the end.

use larder_sql::plan::{AggFunc, Aggregate, NodeOp, OrderKey};
use larder_sql::value::{SqlType, Value};
use rand::{Rng, SeedableRng};

use super::*;

/// t(id primary key, k, v): the cache groups by k, its reader key.
fn table() -> TableSchema {
    let mut t = schema("t", &[SqlType::Int4, SqlType::Int4, SqlType::Int4]);
    t.key = vec![0];
    t
}

fn base() -> PlanNode {
    node(NodeOp::Base { relation: 0 }, vec![SqlType::Int4; 3])
}

/// `SELECT k, count(*), sum(v), max(v), count(DISTINCT v) FROM t WHERE v <> 0 GROUP BY k`.
fn aggregate_plan() -> CachePlan {
    let agg = |func, arg, distinct| Aggregate {
        func,
        arg,
        distinct,
    };
    let filter = node(
        NodeOp::Filter {
            input: 0,
            predicate: Expr::Binary {
                op: BinaryOp::NotEq,
                left: Box::new(Expr::Column(2)),
                right: Box::new(Expr::Literal(Value::Int(0))),
                ty: SqlType::Bool,
            },
        },
        vec![SqlType::Int4; 3],
    );
    let aggregate = node(
        NodeOp::Aggregate {
            input: 1,
            group_by: vec![1],
            aggregates: vec![
                agg(AggFunc::Count, None, false),
                agg(AggFunc::Sum, Some(2), false),
                agg(AggFunc::Max, Some(2), false),
                agg(AggFunc::Count, Some(2), true),
            ],
        },
        vec![
            SqlType::Int4,
            SqlType::Int8,
            SqlType::Int8,
            SqlType::Int4,
            SqlType::Int8,
        ],
    );
    let mut p = plan(&["t"], vec![base(), filter, aggregate]);
    p.key = vec![0];
    p.key_params = vec![0];
    p.param_types = vec![SqlType::Int4];
    p
}

/// The two rows of each k with the largest v (ties by the whole row).
fn topk_plan() -> CachePlan {
    let topk = node(
        NodeOp::TopK {
            input: 0,
            group_by: vec![1],
            order: vec![OrderKey {
                column: 2,
                descending: true,
                nulls_first: true,
            }],
            limit: 2,
        },
        vec![SqlType::Int4; 3],
    );
    let mut p = plan(&["t"], vec![base(), topk]);
    p.key = vec![1];
    p.key_params = vec![0];
    p.param_types = vec![SqlType::Int4];
    p
}

fn graph(partial: bool) -> Graph {
    let mut g = Graph::with_limits(GraphLimits {
        partial,
        stored_joins: true,
        ..GraphLimits::default()
    });
    g.add_table(T, table()).unwrap();
    g
}

fn sorted(mut rows: Vec<Row>) -> Vec<Row> {
    rows.sort_by(|a, b| crate::order::structural_cmp_row(a, b));
    rows
}

fn differential(p: &CachePlan, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut whole = graph(false);
    let (wid, whole_reader) = whole.add_cache(p).unwrap();
    whole.finish_bootstrap(wid).unwrap();
    let mut part = graph(true);
    let (pid, reader) = part.add_cache(p).unwrap();
    assert_eq!(
        part.partial_key(pid).map(|k| (k.columns, k.by_index)),
        Some((vec![1], true)),
        "seed {seed}: partial on k"
    );
    // The table as storage holds it: id -> (k, v).
    let mut stored: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    for step in 0..400 {
        let mut changes = Vec::new();
        for _ in 0..rng.gen_range(1..4) {
            let id = rng.gen_range(0..30);
            let row = |(k, v): (i64, i64)| int_row(&[id, k, v]);
            let new = (rng.gen_range(0..6), rng.gen_range(-2..4));
            match stored.get(&id).copied() {
                Some(old) if rng.gen_bool(0.4) => {
                    changes.push(Change::Delete(row(old)));
                    stored.remove(&id);
                }
                Some(old) => {
                    changes.push(Change::Delete(row(old)));
                    changes.push(Change::Insert(row(new)));
                    stored.insert(id, new);
                }
                None => {
                    changes.push(Change::Insert(row(new)));
                    stored.insert(id, new);
                }
            }
        }
        whole.apply(T, &changes).unwrap();
        whole.publish();
        part.apply(T, &changes).unwrap();
        part.publish();
        for _ in 0..3 {
            let k = rng.gen_range(0..7);
            let params = [vec![Value::Int(k)]];
            let got = match reader.read(&params) {
                Err(ReadError::Holes(holes)) => {
                    assert_eq!(holes, vec![vec![Value::Int(k)]]);
                    let rows = stored
                        .iter()
                        .filter(|(_, (sk, _))| *sk == k)
                        .map(|(id, (sk, v))| (int_row(&[*id, *sk, *v]), 1))
                        .collect();
                    part.fill_keys(pid, vec![(vec![Value::Int(k)], rows)])
                        .unwrap();
                    reader.read(&params).unwrap()
                }
                r => r.unwrap(),
            };
            let want = whole_reader.read(&params).unwrap();
            assert_eq!(sorted(got), sorted(want), "seed {seed} step {step} key {k}");
        }
        if rng.gen_bool(0.15) {
            reader.next_epoch();
            reader.next_epoch();
            part.evict_keys(rng.gen_range(1..4));
        }
    }
    // Everything evicted: the stateful node's bytes are back to nothing.
    while part.evict_keys(100) > 0 {}
    assert_eq!(reader.key_count(), 0);
    assert_eq!(part.cache_state_bytes(pid), 0, "seed {seed}");
}

#[test]
fn a_partial_aggregate_answers_as_the_whole_one() {
    for seed in 0..12 {
        differential(&aggregate_plan(), seed);
    }
}

#[test]
fn a_partial_topk_answers_as_the_whole_one() {
    for seed in 0..12 {
        differential(&topk_plan(), seed);
    }
}

/// A TopK grouped by other columns than the key keeps groups a key's rows do not make up:
/// not partial.
#[test]
fn groups_that_are_not_the_key_are_not_partial() {
    let mut p = topk_plan();
    if let NodeOp::TopK { group_by, .. } = &mut p.nodes[1].op {
        *group_by = vec![2];
    }
    let mut g = graph(true);
    let (id, reader) = g.add_cache(&p).unwrap();
    assert_eq!(g.partial_key(id), None);
    assert!(!reader.is_partial());
}
