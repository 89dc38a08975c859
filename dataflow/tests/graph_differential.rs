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

use larder_dataflow::{
    structural_cmp_row, CacheId, Change, Graph, GraphLimits, Lookup, ReaderHandle, StoredError,
    StoredRows, TableId,
};
use larder_sql::plan::CachePlan;
use larder_sql::value::{sql_eq, Column, Row, SqlType, TableSchema, Value};
use std::sync::atomic::{AtomicUsize, Ordering};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use SqlType::{Int4, Numeric, Text};

#[path = "graph_differential/keyed.rs"]
mod keyed;
#[path = "graph_differential/plans.rs"]
mod plans;
#[path = "graph_differential/reference.rs"]
mod reference;

use plans::{derived_plan, random_aggregates, random_plan, relations};
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
    let storage = Storage(snapshot.to_vec());
    for table in graph.cache_tables(id) {
        let rows = snapshot[table.0 as usize].clone();
        graph
            .bootstrap_rows_with(id, table, rows, &storage)
            .expect("bootstrap rows");
    }
    graph
        .finish_bootstrap_with(id, &storage)
        .expect("finish bootstrap");
}

/// One random transaction: changes to one table, or runs of changes to two (possibly the
/// same table twice), applied as one transaction against storage as of before it.
fn apply_random(rng: &mut StdRng, graph: &mut Graph, tables: &mut [Vec<Row>]) {
    let before = Storage(tables.to_vec());
    let runs = if rng.gen_bool(0.4) { 2 } else { 1 };
    let mut changes = Vec::new();
    for _ in 0..runs {
        let t = rng.gen_range(0..TABLES);
        changes.push((TableId(t as u64), random_changes(rng, t, &mut tables[t])));
    }
    let errors = graph.apply_txn(changes.iter().map(|(t, c)| (*t, c.as_slice())), &before);
    assert!(errors.is_empty(), "apply: {errors:?}");
}

/// The tables as storage holds them, for joins that read a side from there.
struct Storage(Vec<Vec<Row>>);

/// Lookups storage answered, over all seeds: stored joins must be exercised.
static STORED_LOOKUPS: AtomicUsize = AtomicUsize::new(0);

impl StoredRows for Storage {
    fn rows(
        &self,
        table: TableId,
        lookup: Lookup<'_>,
        limit: usize,
    ) -> Result<Vec<(Row, i64)>, StoredError> {
        let Lookup::Index { columns, values } = lookup else {
            panic!("the test's tables have no primary key: {lookup:?}");
        };
        STORED_LOOKUPS.fetch_add(1, Ordering::Relaxed);
        Ok(self.0[table.0 as usize]
            .iter()
            .filter(|row| {
                columns
                    .iter()
                    .zip(values)
                    .all(|(&c, v)| sql_eq(&row[c], v) == Some(true))
            })
            .map(|row| (row.clone(), 1))
            .take(limit)
            .collect())
    }
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

fn run_seed(seed: u64, stored_joins: bool) {
    let _guard = SeedGuard(seed);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut graph = Graph::with_limits(GraphLimits {
        stored_joins,
        ..GraphLimits::default()
    });
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
        let storage = Storage(tables.clone());
        let (id, handle) = graph
            .add_cache_with(
                &maybe_pruned(&mut rng, &plan, &keyed),
                stored_joins.then_some(&storage as &dyn StoredRows),
            )
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
            let storage = Storage(tables.clone());
            let (id, handle) = graph
                .add_cache_with(
                    &maybe_pruned(&mut rng, &plan, &keyed),
                    stored_joins.then_some(&storage as &dyn StoredRows),
                )
                .unwrap_or_else(|e| panic!("seed {seed}: {e}\n{plan:#?}"));
            let snapshot = tables.clone();
            apply_random(&mut rng, &mut graph, &mut tables);
            for table in graph.bootstrap_tables(id) {
                let rows = &snapshot[table.0 as usize];
                let half = rows.len() / 2;
                graph
                    .bootstrap_rows_with(id, table, rows[..half].to_vec(), &storage)
                    .expect("rows");
                apply_random(&mut rng, &mut graph, &mut tables);
                graph
                    .bootstrap_shared_with(id, 2, &storage)
                    .expect("shared");
                graph
                    .bootstrap_rows_with(id, table, rows[half..].to_vec(), &storage)
                    .expect("rows");
            }
            if rng.gen_bool(0.3) && !caches.is_empty() {
                let old: Cache = caches.swap_remove(rng.gen_range(0..caches.len()));
                graph.remove_cache(old.id).expect("remove");
            }
            apply_random(&mut rng, &mut graph, &mut tables);
            graph.finish_bootstrap_with(id, &storage).expect("finish");
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
        run_seed(seed.parse().expect("SEED is a number"), false);
        return;
    }
    let iters: u64 = std::env::var("DATAFLOW_DIFF_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    for seed in 0..iters {
        run_seed(seed, false);
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

/// The same with joins reading a side from storage (`GraphLimits::stored_joins`): the
/// transaction's own view (storage before it plus the join's overlay) gives the same rows.
#[test]
fn random_plans_match_naive_evaluation_with_stored_joins() {
    if let Ok(seed) = std::env::var("SEED") {
        run_seed(seed.parse().expect("SEED is a number"), true);
        return;
    }
    let iters: u64 = std::env::var("DATAFLOW_DIFF_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    for seed in 0..iters {
        run_seed(seed, true);
    }
    let lookups = STORED_LOOKUPS.load(Ordering::Relaxed);
    eprintln!("graph_differential: {iters} seeds, {lookups} stored lookups");
    assert!(iters < 20 || lookups > 0, "no join read storage");
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
