//! One writer thread applies transfer transactions (each a batch published at once) while
//! reader threads read continuously through cloned handles. Every read must see a consistent
//! snapshot: all accounts present exactly once and the total balance unchanged.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use larder_dataflow::{Change, Graph, ReaderHandle, TableId};
use larder_sql::plan::{CachePlan, Expr, NodeOp, OrderKey, OutputColumn, PlanNode, TableRef};
use larder_sql::value::{Column, Row, SqlType, TableSchema, Value};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const ACCOUNTS: i64 = 40;
const GROUPS: i64 = 5;
const BALANCE: i64 = 1_000;
const TRANSACTIONS: usize = 1_500;

fn schema() -> TableSchema {
    let col = |name: &str, ty| Column {
        name: name.into(),
        ty,
        type_oid: 0,
        typmod: -1,
    };
    TableSchema {
        schema: "public".into(),
        name: "accounts".into(),
        columns: vec![
            col("id", SqlType::Int8),
            col("grp", SqlType::Int4),
            col("balance", SqlType::Int8),
        ],
        key: vec![0],
    }
}

fn plan() -> CachePlan {
    let types = vec![SqlType::Int8, SqlType::Int4, SqlType::Int8];
    CachePlan {
        relations: vec![TableRef {
            schema: "public".into(),
            name: "accounts".into(),
        }],
        nodes: vec![
            PlanNode {
                op: NodeOp::Base { relation: 0 },
                types: types.clone(),
            },
            PlanNode {
                op: NodeOp::Project {
                    input: 0,
                    exprs: vec![Expr::Column(0), Expr::Column(1), Expr::Column(2)],
                },
                types: types.clone(),
            },
        ],
        key: vec![1],
        key_params: vec![0],
        residual: None,
        order_by: vec![OrderKey {
            column: 0,
            descending: false,
            nulls_first: false,
        }],
        offset: 0,
        limit: None,
        output: (0..3)
            .map(|i| OutputColumn {
                column: i,
                name: format!("c{i}"),
                ty: types[i].clone(),
            })
            .collect(),
        param_types: vec![SqlType::Int4],
        fixed_params: vec![],
        single_value_params: vec![],
        empty_key_row: None,
        range: None,
        key_collations: vec![],
    }
}

fn row(id: i64, grp: i64, balance: i64) -> Row {
    vec![Value::Int(id), Value::Int(grp), Value::Int(balance)]
}

fn int(v: &Value) -> i64 {
    match v {
        Value::Int(i) => *i,
        other => panic!("expected an integer, got {other:?}"),
    }
}

fn reader_loop(handle: ReaderHandle, done: Arc<AtomicBool>, reads: Arc<AtomicUsize>) {
    let all_groups = vec![(0..GROUPS).map(Value::Int).collect::<Vec<_>>()];
    while !done.load(Ordering::Acquire) {
        let rows = handle.read(&all_groups).expect("read succeeds");
        assert_eq!(rows.len() as i64, ACCOUNTS, "every account exactly once");
        let total: i64 = rows.iter().map(|r| int(&r[2])).sum();
        assert_eq!(total, ACCOUNTS * BALANCE, "transfers are atomic");
        // Sorted by id across keys.
        assert!(rows.windows(2).all(|w| int(&w[0][0]) < int(&w[1][0])));
        reads.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn readers_see_consistent_snapshots_while_writer_runs() {
    let table = TableId(7);
    let mut graph = Graph::new();
    graph.add_table(table, schema()).expect("table");
    let mut state: Vec<(i64, i64)> = (0..ACCOUNTS).map(|i| (i % GROUPS, BALANCE)).collect();
    let (cache, handle) = graph.add_cache(&plan()).expect("plan");
    graph
        .bootstrap_rows(
            cache,
            table,
            state
                .iter()
                .enumerate()
                .map(|(i, (g, b))| row(i as i64, *g, *b)),
        )
        .expect("bootstrap");
    graph.finish_bootstrap(cache).expect("finish bootstrap");

    let done = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (h, d, r) = (handle.clone(), Arc::clone(&done), Arc::clone(&reads));
            thread::spawn(move || reader_loop(h, d, r))
        })
        .collect();

    let writer = thread::spawn(move || {
        let mut rng = StdRng::seed_from_u64(42);
        for _ in 0..TRANSACTIONS {
            let from = rng.gen_range(0..ACCOUNTS) as usize;
            let to = (from + rng.gen_range(1..ACCOUNTS as usize)) % ACCOUNTS as usize;
            let amount = rng.gen_range(0..50);
            let mut changes = Vec::new();
            for (idx, delta) in [(from, -amount), (to, amount)] {
                let (g, b) = state[idx];
                // Sometimes move the account to another group (another reader key).
                let new_g = if rng.gen_bool(0.2) {
                    rng.gen_range(0..GROUPS)
                } else {
                    g
                };
                changes.push(Change::Delete(row(idx as i64, g, b)));
                changes.push(Change::Insert(row(idx as i64, new_g, b + delta)));
                state[idx] = (new_g, b + delta);
            }
            graph.apply(table, &changes).expect("apply");
            graph.publish();
        }
        graph
    });

    let graph = writer.join().expect("writer finished");
    done.store(true, Ordering::Release);
    for r in readers {
        r.join()
            .expect("reader finished without assertion failures");
    }
    assert!(reads.load(Ordering::Relaxed) > 0, "readers made progress");
    let stats = handle.stats().expect("cache alive");
    assert_eq!(stats.rows, ACCOUNTS as u64);
    assert!(stats.keys <= GROUPS as u64);
    drop(graph);
    assert_eq!(
        handle.read(&[vec![Value::Int(0)]]),
        Err(larder_dataflow::ReadError::Gone)
    );
}

#[test]
fn handle_and_graph_are_thread_safe() {
    fn reader_bounds<T: Clone + Send + Sync>() {}
    fn writer_bounds<T: Send>() {}
    reader_bounds::<ReaderHandle>();
    writer_bounds::<Graph>();
}
