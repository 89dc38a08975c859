//! Partial caches with state: an aggregate or a TopK grouped by the reader key keeps groups
//! only for the held keys, and a join keeps only the held keys' rows of the key's table (its
//! other side read from storage). Checked against the same cache held whole, under random
//! writes, reads that fill holes and evictions, with the state's bytes back to nothing at
//! the end.

use larder_sql::plan::{AggFunc, Aggregate, JoinKind, NodeOp, OrderKey};
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

/// Reads key `k`, filling it first with `rows` (t's stored rows with k) when it is a hole.
fn read_filling(
    part: &mut Graph,
    cache: CacheId,
    reader: &ReaderHandle,
    k: i64,
    rows: impl FnOnce() -> Vec<(Row, i64)>,
    stored: &dyn StoredRows,
) -> Vec<Row> {
    let params = [vec![Value::Int(k)]];
    match reader.read(&params) {
        Err(ReadError::Holes(holes)) => {
            assert_eq!(holes, vec![vec![Value::Int(k)]]);
            part.fill_keys(cache, vec![(vec![Value::Int(k)], rows())], stored)
                .unwrap();
            reader.read(&params).unwrap()
        }
        r => r.unwrap(),
    }
}

/// Now and then evicts a few keys, none of them spared as read lately.
fn maybe_evict(rng: &mut rand::rngs::StdRng, part: &mut Graph, reader: &ReaderHandle) {
    if rng.gen_bool(0.15) {
        reader.next_epoch();
        reader.next_epoch();
        part.evict_keys(rng.gen_range(1..4));
    }
}

/// Evicts every key: the stateful node's bytes are back to nothing.
fn evict_all(part: &mut Graph, cache: CacheId, reader: &ReaderHandle, seed: u64) {
    while part.evict_keys(100) > 0 {}
    assert_eq!(reader.key_count(), 0);
    assert_eq!(part.cache_state_bytes(cache), 0, "seed {seed}");
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
            let rows = || {
                stored
                    .iter()
                    .filter(|(_, (sk, _))| *sk == k)
                    .map(|(id, (sk, v))| (int_row(&[*id, *sk, *v]), 1))
                    .collect()
            };
            let got = read_filling(&mut part, pid, &reader, k, rows, &NoStoredRows);
            let want = whole_reader.read(&params).unwrap();
            assert_eq!(sorted(got), sorted(want), "seed {seed} step {step} key {k}");
        }
        maybe_evict(&mut rng, &mut part, &reader);
    }
    evict_all(&mut part, pid, &reader, seed);
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

/// u(id primary key, w, x): the side a partial join reads from storage.
fn table_u() -> TableSchema {
    let mut u = schema("u", &[SqlType::Int4, SqlType::Int4, SqlType::Int4]);
    u.key = vec![0];
    u
}

/// `SELECT t.id, t.k, u.id, u.x FROM t [LEFT] JOIN u ON t.v = u.<on> WHERE t.k = $1`: u is
/// looked up in storage by its primary key (`on` 0) or through an index (`on` 1).
fn join_plan(kind: JoinKind, on: usize) -> CachePlan {
    let base_u = node(NodeOp::Base { relation: 1 }, vec![SqlType::Int4; 3]);
    let join = node(
        NodeOp::Join {
            left: 0,
            right: 1,
            kind,
            on: vec![(2, on)],
        },
        vec![SqlType::Int4; 6],
    );
    let project = node(
        NodeOp::Project {
            input: 2,
            exprs: vec![
                Expr::Column(0),
                Expr::Column(1),
                Expr::Column(3),
                Expr::Column(5),
            ],
        },
        vec![SqlType::Int4; 4],
    );
    let mut p = plan(&["t", "u"], vec![base(), base_u, join, project]);
    p.key = vec![1];
    p.key_params = vec![0];
    p.param_types = vec![SqlType::Int4];
    p
}

/// Both tables as storage holds them: id -> (two more columns).
#[derive(Clone, Default)]
struct Model {
    t: BTreeMap<i64, (i64, i64)>,
    u: BTreeMap<i64, (i64, i64)>,
}

impl Model {
    fn rows(&self, table: TableId) -> Vec<Row> {
        let rows = if table == T { &self.t } else { &self.u };
        rows.iter()
            .map(|(id, (a, b))| int_row(&[*id, *a, *b]))
            .collect()
    }
}

impl StoredRows for Model {
    fn rows(
        &self,
        table: TableId,
        lookup: crate::stored::Lookup<'_>,
        limit: usize,
    ) -> Result<Vec<(Row, i64)>, crate::stored::StoredError> {
        let (columns, values): (Vec<usize>, Vec<Value>) = match lookup {
            crate::stored::Lookup::PrimaryKey(values) => (vec![0], values.to_vec()),
            crate::stored::Lookup::Index { columns, values } => (columns.to_vec(), values.to_vec()),
        };
        Ok(Model::rows(self, table)
            .into_iter()
            .filter(|r| columns.iter().zip(&values).all(|(&c, v)| r[c] == *v))
            .map(|r| (r, 1))
            .take(limit)
            .collect())
    }
}

/// Random changes to one of a model's tables (ids 0..30, values small), applied to it.
fn random_changes(
    rng: &mut rand::rngs::StdRng,
    rows: &mut BTreeMap<i64, (i64, i64)>,
) -> Vec<Change> {
    let mut changes = Vec::new();
    for _ in 0..rng.gen_range(1..4) {
        let id = rng.gen_range(0..30);
        let row = |(a, b): (i64, i64)| int_row(&[id, a, b]);
        let new = (rng.gen_range(0..6), rng.gen_range(0..8));
        match rows.get(&id).copied() {
            Some(old) if rng.gen_bool(0.4) => {
                changes.push(Change::Delete(row(old)));
                rows.remove(&id);
            }
            Some(old) => {
                changes.push(Change::Delete(row(old)));
                changes.push(Change::Insert(row(new)));
                rows.insert(id, new);
            }
            None => {
                changes.push(Change::Insert(row(new)));
                rows.insert(id, new);
            }
        }
    }
    changes
}

fn join_differential(p: &CachePlan, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut whole = graph(false);
    whole.add_table(U, table_u()).unwrap();
    let (wid, whole_reader) = whole.add_cache(p).unwrap();
    whole.finish_bootstrap(wid).unwrap();
    let mut part = graph(true);
    part.add_table(U, table_u()).unwrap();
    let mut model = Model::default();
    let (pid, reader) = part.add_cache_with(p, Some(&model)).unwrap();
    assert_eq!(
        part.partial_key(pid).map(|k| (k.table, k.columns)),
        Some((T, vec![1])),
        "seed {seed}: partial on t.k"
    );
    for step in 0..400 {
        let before = model.clone();
        let mut runs = Vec::new();
        for _ in 0..rng.gen_range(1..3) {
            if rng.gen_bool(0.5) {
                runs.push((T, random_changes(&mut rng, &mut model.t)));
            } else {
                runs.push((U, random_changes(&mut rng, &mut model.u)));
            }
        }
        let txn = || runs.iter().map(|(t, c)| (*t, c.as_slice()));
        assert!(whole.apply_txn(txn(), &NoStoredRows).is_empty());
        whole.publish();
        assert!(part.apply_txn(txn(), &before).is_empty());
        part.publish();
        for _ in 0..3 {
            let k = rng.gen_range(0..7);
            let params = [vec![Value::Int(k)]];
            let rows = || {
                Model::rows(&model, T)
                    .into_iter()
                    .filter(|r| r[1] == Value::Int(k))
                    .map(|r| (r, 1))
                    .collect()
            };
            let got = read_filling(&mut part, pid, &reader, k, rows, &model);
            let want = whole_reader.read(&params).unwrap();
            assert_eq!(sorted(got), sorted(want), "seed {seed} step {step} key {k}");
        }
        maybe_evict(&mut rng, &mut part, &reader);
    }
    evict_all(&mut part, pid, &reader, seed);
}

#[test]
fn a_partial_join_answers_as_the_whole_one() {
    for seed in 0..12 {
        join_differential(&join_plan(JoinKind::Inner, 0), seed);
        join_differential(&join_plan(JoinKind::Inner, 1), seed);
        join_differential(&join_plan(JoinKind::Left, 1), seed);
    }
}

/// A join whose kept side is not the key's table (u is the right side, read from storage,
/// only when the key is t's) is not partial.
#[test]
fn a_join_keyed_on_its_stored_side_is_not_partial() {
    let mut p = join_plan(JoinKind::Inner, 0);
    p.key = vec![2];
    let mut g = graph(true);
    g.add_table(U, table_u()).unwrap();
    let (id, _) = g.add_cache_with(&p, Some(&Model::default())).unwrap();
    assert_eq!(g.partial_key(id), None);
}
