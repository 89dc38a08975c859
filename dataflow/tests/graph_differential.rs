//! Randomized differential test of whole plan graphs: random tables, random plans built
//! from every node type (joins incl. self-joins and LEFT, semi/anti-joins incl. NOT IN,
//! aggregates with every function, DISTINCT, TopK, UNION, filters, projections), random
//! batches of inserts/deletes/updates, and caches bootstrapped both up front and in the
//! middle of the changes (through the buffering path). After every batch each ready cache's
//! full contents are compared with a naive evaluator that recomputes the plan from the
//! current table contents. Keyed shapes (a key on a column a DISTINCT or aggregate does not
//! output, incl. the empty-key row of an aggregate without GROUP BY) are compared, per key
//! value, with the SQL query's result for that value (`keyed`).
//!
//! `SEED=n` replays one seed; `DATAFLOW_DIFF_ITERS=n` runs `n` seeds (default a few seconds).

use larder_dataflow::{structural_cmp_row, CacheId, Change, Graph, ReaderHandle, TableId};
use larder_sql::plan::{
    AggFunc, Aggregate, BinaryOp, CachePlan, Expr, JoinKind, NodeOp, OrderKey, OutputColumn,
    PlanNode, TableRef,
};
use larder_sql::value::{sql_eq, Column, Row, SqlType, TableSchema, Value};
use std::sync::atomic::{AtomicUsize, Ordering};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use SqlType::{Int4, Numeric, Text};

#[path = "graph_differential/keyed.rs"]
mod keyed;
#[path = "graph_differential/reference.rs"]
mod reference;

use reference::evaluate;

const TABLES: usize = 2;

fn table_types(t: usize) -> Vec<SqlType> {
    match t {
        0 => vec![Int4, Text, Numeric],
        _ => vec![Int4, Int4, Numeric],
    }
}

fn schema(t: usize) -> TableSchema {
    TableSchema {
        schema: "public".into(),
        name: format!("t{t}"),
        columns: table_types(t)
            .into_iter()
            .enumerate()
            .map(|(i, ty)| Column {
                name: format!("c{i}"),
                ty,
                type_oid: 0,
                typmod: -1,
            })
            .collect(),
        key: vec![],
    }
}

// ---- random data ----

fn random_value(rng: &mut StdRng, ty: &SqlType) -> Value {
    if rng.gen_bool(0.15) {
        return Value::Null;
    }
    match ty {
        // Skewed: small values are much more frequent.
        Int4 => Value::Int([0, 0, 0, 1, 1, 2, 3, -1][rng.gen_range(0..8)]),
        Text => Value::Text(["a", "a", "b", "c"][rng.gen_range(0..4)].into()),
        // One scale per column, as a numeric(p, 2) column has.
        _ => Value::Numeric(["1.50", "-2.25", "0.00", "10.10", "1.50"][rng.gen_range(0..5)].into()),
    }
}

fn random_row(rng: &mut StdRng, t: usize) -> Row {
    table_types(t)
        .iter()
        .map(|ty| random_value(rng, ty))
        .collect()
}

/// A batch of changes to one table, applied to the model as well.
fn random_changes(rng: &mut StdRng, t: usize, model: &mut Vec<Row>) -> Vec<Change> {
    let mut changes = Vec::new();
    for _ in 0..rng.gen_range(1..6) {
        let roll = rng.gen_range(0..10);
        if model.is_empty() || roll < 5 {
            let row = random_row(rng, t);
            model.push(row.clone());
            changes.push(Change::Insert(row));
        } else if roll < 8 {
            let old = model.swap_remove(rng.gen_range(0..model.len()));
            changes.push(Change::Delete(old));
        } else {
            let i = rng.gen_range(0..model.len());
            let old = model[i].clone();
            let mut new = old.clone();
            let c = rng.gen_range(0..new.len());
            new[c] = random_value(rng, &table_types(t)[c]);
            model[i] = new.clone();
            changes.push(Change::Delete(old));
            changes.push(Change::Insert(new));
        }
    }
    changes
}

// ---- random plans ----

struct PlanGen<'a> {
    rng: &'a mut StdRng,
    nodes: Vec<PlanNode>,
}

fn column(i: usize) -> Expr {
    Expr::Column(i)
}

fn lit(v: Value) -> Expr {
    Expr::Literal(v)
}

fn bin(op: BinaryOp, l: Expr, r: Expr, ty: SqlType) -> Expr {
    Expr::Binary {
        op,
        left: Box::new(l),
        right: Box::new(r),
        ty,
    }
}

fn same_family(a: &SqlType, b: &SqlType) -> bool {
    let int = |t: &SqlType| matches!(t, SqlType::Int2 | SqlType::Int4 | SqlType::Int8);
    a == b || (int(a) && int(b))
}

impl PlanGen<'_> {
    fn push(&mut self, op: NodeOp, types: Vec<SqlType>) -> usize {
        self.nodes.push(PlanNode { op, types });
        self.nodes.len() - 1
    }

    fn types(&self, n: usize) -> Vec<SqlType> {
        self.nodes[n].types.clone()
    }

    fn pick_col(&mut self, n: usize) -> usize {
        let w = self.nodes[n].types.len();
        self.rng.gen_range(0..w)
    }

    fn base(&mut self) -> usize {
        let relation = self.rng.gen_range(0..TABLES);
        self.push(NodeOp::Base { relation }, table_types(relation))
    }

    fn sub(&mut self, depth: usize) -> usize {
        if depth == 0 {
            return self.base();
        }
        match self.rng.gen_range(0..12) {
            0 => self.base(),
            1 | 2 => {
                let input = self.sub(depth - 1);
                self.filter(input)
            }
            3 => {
                let input = self.sub(depth - 1);
                self.project(input)
            }
            4 | 5 => self.join(depth),
            6 => self.semijoin(depth),
            7 | 8 => {
                let input = self.sub(depth - 1);
                self.aggregate(input)
            }
            9 => {
                let input = self.sub(depth - 1);
                self.push(NodeOp::Distinct { input }, self.types(input))
            }
            10 => {
                let input = self.sub(depth - 1);
                self.topk(input)
            }
            _ => {
                let input = self.sub(depth - 1);
                let other = if self.rng.gen_bool(0.5) {
                    input
                } else {
                    self.filter(input)
                };
                self.push(
                    NodeOp::Union {
                        inputs: vec![input, other],
                    },
                    self.types(input),
                )
            }
        }
    }

    fn filter(&mut self, input: usize) -> usize {
        let c = self.pick_col(input);
        let ty = self.nodes[input].types[c].clone();
        let predicate = match (&ty, self.rng.gen_range(0..3)) {
            (_, 0) => Expr::IsNull {
                expr: Box::new(column(c)),
                negated: true,
            },
            (Text, _) => bin(
                BinaryOp::NotEq,
                column(c),
                lit(Value::Text("b".into())),
                SqlType::Bool,
            ),
            (Numeric, _) => bin(
                BinaryOp::Gt,
                column(c),
                lit(Value::Numeric("0.00".into())),
                SqlType::Bool,
            ),
            (SqlType::Int2 | Int4 | SqlType::Int8, _) => {
                bin(BinaryOp::LtEq, column(c), lit(Value::Int(1)), SqlType::Bool)
            }
            _ => Expr::IsNull {
                expr: Box::new(column(c)),
                negated: false,
            },
        };
        self.push(NodeOp::Filter { input, predicate }, self.types(input))
    }

    fn project(&mut self, input: usize) -> usize {
        let types = self.types(input);
        let mut exprs = Vec::new();
        let mut out = Vec::new();
        for _ in 0..self.rng.gen_range(1..=types.len().min(4)) {
            let c = self.rng.gen_range(0..types.len());
            let (e, t) = match (&types[c], self.rng.gen_range(0..3)) {
                (Int4, 0) => (
                    bin(BinaryOp::Add, column(c), lit(Value::Int(1)), Int4),
                    Int4,
                ),
                (Numeric, 0) => (
                    bin(
                        BinaryOp::Mul,
                        column(c),
                        lit(Value::Numeric("2.5".into())),
                        Numeric,
                    ),
                    Numeric,
                ),
                (Numeric, 1) => (
                    bin(BinaryOp::Add, column(c), lit(Value::Int(3)), Numeric),
                    Numeric,
                ),
                (t, _) => (column(c), t.clone()),
            };
            exprs.push(e);
            out.push(t);
        }
        self.push(NodeOp::Project { input, exprs }, out)
    }

    /// Up to two `on` pairs of comparable columns; `None` if there is none.
    fn on_pairs(&mut self, left: usize, right: usize, max: usize) -> Option<Vec<(usize, usize)>> {
        let (lt, rt) = (self.types(left), self.types(right));
        let mut candidates = Vec::new();
        for (i, a) in lt.iter().enumerate() {
            for (j, b) in rt.iter().enumerate() {
                if same_family(a, b) {
                    candidates.push((i, j));
                }
            }
        }
        if candidates.is_empty() {
            return None;
        }
        let n = self.rng.gen_range(1..=max.min(candidates.len()));
        let mut on = Vec::new();
        for _ in 0..n {
            on.push(candidates[self.rng.gen_range(0..candidates.len())]);
        }
        Some(on)
    }

    fn two_inputs(&mut self, depth: usize) -> (usize, usize) {
        let left = self.sub(depth - 1);
        let right = match self.rng.gen_range(0..4) {
            0 => left, // self-join on one node
            1 => {
                // the same relation through a second Base node
                let relation = match self.nodes[left].op {
                    NodeOp::Base { relation } => relation,
                    _ => self.rng.gen_range(0..TABLES),
                };
                self.push(NodeOp::Base { relation }, table_types(relation))
            }
            _ => self.sub(depth - 1),
        };
        (left, right)
    }

    fn join(&mut self, depth: usize) -> usize {
        let (left, right) = self.two_inputs(depth);
        let Some(on) = self.on_pairs(left, right, 2) else {
            return left;
        };
        let kind = if self.rng.gen_bool(0.5) {
            JoinKind::Inner
        } else {
            JoinKind::Left
        };
        let types = [self.types(left), self.types(right)].concat();
        self.push(
            NodeOp::Join {
                left,
                right,
                kind,
                on,
            },
            types,
        )
    }

    fn semijoin(&mut self, depth: usize) -> usize {
        let (left, right) = self.two_inputs(depth);
        let anti = self.rng.gen_bool(0.6);
        let null_aware = anti && self.rng.gen_bool(0.5);
        let Some(on) = self.on_pairs(left, right, if null_aware { 1 } else { 2 }) else {
            return left;
        };
        self.push(
            NodeOp::SemiJoin {
                left,
                right,
                on,
                anti,
                null_aware,
            },
            self.types(left),
        )
    }

    fn aggregate(&mut self, input: usize) -> usize {
        let types = self.types(input);
        let group_by: Vec<usize> = (0..self.rng.gen_range(0..=2))
            .map(|_| self.rng.gen_range(0..types.len()))
            .collect();
        let mut out: Vec<SqlType> = group_by.iter().map(|&g| types[g].clone()).collect();
        let (aggregates, agg_types) = random_aggregates(self.rng, &types);
        out.extend(agg_types);
        self.push(
            NodeOp::Aggregate {
                input,
                group_by,
                aggregates,
            },
            out,
        )
    }

    fn topk(&mut self, input: usize) -> usize {
        let group_by = if self.rng.gen_bool(0.5) {
            vec![self.pick_col(input)]
        } else {
            vec![]
        };
        let order = (0..self.rng.gen_range(1..=2))
            .map(|_| OrderKey {
                column: self.pick_col(input),
                descending: self.rng.gen_bool(0.5),
                nulls_first: self.rng.gen_bool(0.5),
            })
            .collect();
        let limit = self.rng.gen_range(1..=3);
        self.push(
            NodeOp::TopK {
                input,
                group_by,
                order,
                limit,
            },
            self.types(input),
        )
    }
}

/// One to three aggregates over columns of `types`, with their result types.
fn random_aggregates(rng: &mut StdRng, types: &[SqlType]) -> (Vec<Aggregate>, Vec<SqlType>) {
    let mut aggregates = Vec::new();
    let mut out = Vec::new();
    for _ in 0..rng.gen_range(1..=3) {
        let c = rng.gen_range(0..types.len());
        let distinct = rng.gen_bool(0.3);
        let numeric_arg = matches!(types[c], SqlType::Int2 | Int4 | SqlType::Int8 | Numeric);
        let (func, arg, ty) = match rng.gen_range(0..6) {
            0 => (AggFunc::Count, None, SqlType::Int8),
            1 => (AggFunc::Count, Some(c), SqlType::Int8),
            2 if numeric_arg => {
                let ty = match types[c] {
                    SqlType::Int2 | Int4 => SqlType::Int8,
                    _ => Numeric,
                };
                (AggFunc::Sum, Some(c), ty)
            }
            3 if numeric_arg => (AggFunc::Avg, Some(c), Numeric),
            4 => (AggFunc::Min, Some(c), types[c].clone()),
            _ => (AggFunc::Max, Some(c), types[c].clone()),
        };
        aggregates.push(Aggregate {
            func,
            arg,
            distinct: distinct && arg.is_some(),
        });
        out.push(ty);
    }
    (aggregates, out)
}

/// A random plan; sometimes one of the keyed shapes of `keyed` over a random input, with
/// what to check it against.
fn random_plan(rng: &mut StdRng) -> (CachePlan, Option<keyed::Reference>) {
    let depth = rng.gen_range(1..=3);
    let keyed_shape = rng.gen_bool(0.3);
    let mut gen = PlanGen {
        rng,
        nodes: Vec::new(),
    };
    gen.sub(depth);
    let nodes = gen.nodes;
    if keyed_shape {
        let (plan, reference) = keyed::shape(rng, nodes);
        return (plan, Some(reference));
    }
    (full_reader(rng, nodes), None)
}

/// A plan that shares a prefix of `base`'s nodes with it: cut after a random node, with
/// sometimes one more node on top, read in full or by a random key. The graph shares the
/// common nodes, so the new cache starts from their present output.
fn derived_plan(rng: &mut StdRng, base: &CachePlan) -> CachePlan {
    let cut = rng.gen_range(0..base.nodes.len());
    let mut gen = PlanGen {
        rng,
        nodes: base.nodes[..=cut].to_vec(),
    };
    match gen.rng.gen_range(0..6) {
        0 => {
            gen.filter(cut);
        }
        1 => {
            gen.project(cut);
        }
        2 => {
            gen.aggregate(cut);
        }
        3 => {
            gen.topk(cut);
        }
        4 => {
            gen.push(NodeOp::Distinct { input: cut }, gen.types(cut));
        }
        _ => {}
    }
    let nodes = gen.nodes;
    full_reader(rng, nodes)
}

/// `nodes` read in full or by one random key column, outputting every column.
fn full_reader(rng: &mut StdRng, nodes: Vec<PlanNode>) -> CachePlan {
    let types = nodes.last().expect("one node").types.clone();
    let (key, key_params, param_types) = if rng.gen_bool(0.5) {
        let k = rng.gen_range(0..types.len());
        (vec![k], vec![0], vec![types[k].clone()])
    } else {
        (vec![], vec![], vec![])
    };
    CachePlan {
        relations: relations(),
        output: types
            .iter()
            .enumerate()
            .map(|(i, ty)| OutputColumn {
                column: i,
                name: format!("o{i}"),
                ty: ty.clone(),
            })
            .collect(),
        nodes,
        key,
        key_params,
        residual: None,
        order_by: vec![],
        offset: 0,
        limit: None,
        param_types,
        fixed_params: vec![],
        single_value_params: vec![],
        empty_key_row: None,
        range: None,
    }
}

fn relations() -> Vec<TableRef> {
    (0..TABLES)
        .map(|t| TableRef {
            schema: "public".into(),
            name: format!("t{t}"),
        })
        .collect()
}

// ---- driver ----

struct Cache {
    id: CacheId,
    plan: CachePlan,
    handle: ReaderHandle,
    keyed: Option<keyed::Reference>,
}

fn sorted(mut rows: Vec<Row>) -> Vec<Row> {
    rows.sort_by(|a, b| structural_cmp_row(a, b));
    rows
}

/// Compares the reader's full contents with the reference.
fn check(cache: &Cache, tables: &[Vec<Row>], context: &str) {
    if let Some(reference) = &cache.keyed {
        reference.check(&cache.plan, &cache.handle, tables, context);
        return;
    }
    let expected = sorted(evaluate(&cache.plan, tables));
    let stats = cache.handle.stats().expect("cache is live");
    assert!(
        !stats.poisoned_all && stats.poisoned_keys == 0,
        "{context}: unexpected poison {stats:?}"
    );
    let actual = if cache.plan.key.is_empty() {
        cache.handle.read(&[]).expect("read")
    } else {
        let k = cache.plan.key[0];
        let mut keys: Vec<Value> = Vec::new();
        for row in &expected {
            if !row[k].is_null() && !keys.iter().any(|v| sql_eq(v, &row[k]) == Some(true)) {
                keys.push(row[k].clone());
            }
        }
        let with_key: Vec<Row> = expected
            .iter()
            .filter(|r| !r[k].is_null())
            .cloned()
            .collect();
        let actual = cache.handle.read(&[keys]).expect("read");
        assert_eq!(
            sorted(actual.clone()),
            with_key,
            "{context}: rows of the present keys differ\nplan {:#?}",
            cache.plan
        );
        // Rows under keys the reference does not have (or NULL keys) show up in the count.
        actual
    };
    if cache.plan.key.is_empty() {
        assert_eq!(
            sorted(actual),
            expected,
            "{context}: contents differ\nplan {:#?}",
            cache.plan
        );
    }
    assert_eq!(
        stats.rows as usize,
        expected.len(),
        "{context}: row count differs\nplan {:#?}",
        cache.plan
    );
}

/// Prints how to replay a failing seed.
struct SeedGuard(u64);

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("graph_differential failed: replay with SEED={}", self.0);
        }
    }
}

fn bootstrap_from(graph: &mut Graph, id: CacheId, snapshot: &[Vec<Row>]) {
    for table in graph.cache_tables(id) {
        let rows = snapshot[table.0 as usize].clone();
        graph
            .bootstrap_rows(id, table, rows)
            .expect("bootstrap rows");
    }
    graph.finish_bootstrap(id).expect("finish bootstrap");
}

fn apply_random(rng: &mut StdRng, graph: &mut Graph, tables: &mut [Vec<Row>]) {
    let t = rng.gen_range(0..TABLES);
    let changes = random_changes(rng, t, &mut tables[t]);
    graph.apply(TableId(t as u64), &changes).expect("apply");
}

/// Half the time the plan with its base tables narrowed to the columns read above them
/// (`larder_sql::lower::prune_columns`, as `CREATE CACHE` lowers): the reader must hold the
/// same rows as the naive evaluation of the plan as written.
fn maybe_pruned(rng: &mut StdRng, plan: &CachePlan, keyed: &Option<keyed::Reference>) -> CachePlan {
    if keyed.is_none() && rng.gen_bool(0.5) {
        let pruned = larder_sql::lower::prune_columns(plan.clone());
        if pruned != *plan {
            PRUNED_PLANS.fetch_add(1, Ordering::Relaxed);
        }
        pruned
    } else {
        plan.clone()
    }
}

/// Plans that pruning narrowed, over all seeds: pruning must be exercised.
static PRUNED_PLANS: AtomicUsize = AtomicUsize::new(0);

/// Shared nodes seen in caches added mid-way, over all seeds: sharing must be exercised.
static SHARED_NODES: AtomicUsize = AtomicUsize::new(0);

/// A random plan, or half the time one that shares nodes with an existing cache.
fn next_plan(rng: &mut StdRng, caches: &[Cache]) -> (CachePlan, Option<keyed::Reference>) {
    if !caches.is_empty() && rng.gen_bool(0.5) {
        let base = &caches[rng.gen_range(0..caches.len())].plan;
        return (derived_plan(rng, base), None);
    }
    random_plan(rng)
}

fn run_seed(seed: u64) {
    let _guard = SeedGuard(seed);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut graph = Graph::new();
    let mut tables: Vec<Vec<Row>> = Vec::new();
    for t in 0..TABLES {
        graph
            .add_table(TableId(t as u64), schema(t))
            .expect("table");
        tables.push(
            (0..rng.gen_range(0..8))
                .map(|_| random_row(&mut rng, t))
                .collect(),
        );
    }
    let mut caches: Vec<Cache> = Vec::new();
    for _ in 0..3 {
        let (plan, keyed) = next_plan(&mut rng, &caches);
        let (id, handle) = graph
            .add_cache(&maybe_pruned(&mut rng, &plan, &keyed))
            .unwrap_or_else(|e| panic!("seed {seed}: {e}\n{plan:#?}"));
        bootstrap_from(&mut graph, id, &tables);
        caches.push(Cache {
            id,
            plan,
            handle,
            keyed,
        });
    }
    for step in 0..30 {
        if step % 10 == 5 {
            // A cache added mid-way: snapshot, live changes (buffered), the snapshot's rows
            // in two chunks with more live changes in between, then the replay.
            // Its shared nodes' output is fed a few records at a time, and a cache whose
            // nodes it may share is sometimes dropped while it fills.
            let (plan, keyed) = next_plan(&mut rng, &caches);
            let (id, handle) = graph
                .add_cache(&maybe_pruned(&mut rng, &plan, &keyed))
                .unwrap_or_else(|e| panic!("seed {seed}: {e}\n{plan:#?}"));
            let snapshot = tables.clone();
            apply_random(&mut rng, &mut graph, &mut tables);
            for table in graph.bootstrap_tables(id) {
                let rows = &snapshot[table.0 as usize];
                let half = rows.len() / 2;
                graph
                    .bootstrap_rows(id, table, rows[..half].to_vec())
                    .expect("rows");
                apply_random(&mut rng, &mut graph, &mut tables);
                graph.bootstrap_shared(id, 2).expect("shared");
                graph
                    .bootstrap_rows(id, table, rows[half..].to_vec())
                    .expect("rows");
            }
            if rng.gen_bool(0.3) && !caches.is_empty() {
                let old: Cache = caches.swap_remove(rng.gen_range(0..caches.len()));
                graph.remove_cache(old.id).expect("remove");
            }
            apply_random(&mut rng, &mut graph, &mut tables);
            graph.finish_bootstrap(id).expect("finish");
            SHARED_NODES.fetch_add(graph.cache_nodes(id).shared, Ordering::Relaxed);
            if rng.gen_bool(0.5) && !caches.is_empty() {
                let old: Cache = caches.swap_remove(0);
                graph.remove_cache(old.id).expect("remove");
            }
            caches.push(Cache {
                id,
                plan,
                handle,
                keyed,
            });
        }
        apply_random(&mut rng, &mut graph, &mut tables);
        graph.publish();
        for (i, cache) in caches.iter().enumerate() {
            check(
                cache,
                &tables,
                &format!("seed {seed} step {step} cache {i}"),
            );
        }
    }
}

#[test]
fn random_plans_match_naive_evaluation() {
    if let Ok(seed) = std::env::var("SEED") {
        run_seed(seed.parse().expect("SEED is a number"));
        return;
    }
    let iters: u64 = std::env::var("DATAFLOW_DIFF_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    for seed in 0..iters {
        run_seed(seed);
    }
    let shared = SHARED_NODES.load(Ordering::Relaxed);
    let pruned = PRUNED_PLANS.load(Ordering::Relaxed);
    eprintln!(
        "graph_differential: {iters} seeds, {shared} shared nodes in caches added mid-way, \
         {pruned} plans narrowed by pruning"
    );
    assert!(iters < 20 || shared > 0, "no cache shared a node");
    assert!(iters < 20 || pruned > 0, "no plan was narrowed by pruning");
}

/// Operators account for the bytes of their state as they store and drop it: once every row
/// is deleted again, the graph holds exactly what it held over empty tables, and in between
/// it held more.
#[test]
fn state_bytes_return_to_their_start_when_the_tables_empty() {
    let iters: u64 = std::env::var("DATAFLOW_DIFF_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    let mut grew = 0;
    for seed in 0..iters {
        let _guard = SeedGuard(seed);
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_b17e);
        let mut graph = Graph::new();
        for t in 0..TABLES {
            graph
                .add_table(TableId(t as u64), schema(t))
                .expect("table");
        }
        let mut caches: Vec<Cache> = Vec::new();
        for _ in 0..3 {
            let (plan, keyed) = next_plan(&mut rng, &caches);
            let (id, handle) = graph
                .add_cache(&maybe_pruned(&mut rng, &plan, &keyed))
                .expect("plan");
            graph.finish_bootstrap(id).expect("finish");
            caches.push(Cache {
                id,
                plan,
                handle,
                keyed,
            });
        }
        let empty = graph.state_bytes();
        let mut tables: Vec<Vec<Row>> = vec![Vec::new(); TABLES];
        let mut peak = empty;
        for _ in 0..25 {
            apply_random(&mut rng, &mut graph, &mut tables);
            peak = peak.max(graph.state_bytes());
        }
        for (t, rows) in tables.iter_mut().enumerate() {
            let changes: Vec<Change> = rows.drain(..).map(Change::Delete).collect();
            graph
                .apply(TableId(t as u64), &changes)
                .expect("delete all");
        }
        assert_eq!(
            graph.state_bytes(),
            empty,
            "seed {seed}: state left over after every row was deleted"
        );
        for c in &caches {
            assert!(graph.cache_state_bytes(c.id) <= peak);
        }
        if peak > empty {
            grew += 1;
        }
    }
    assert!(
        grew > iters / 2,
        "state grew in only {grew} of {iters} seeds"
    );
}
