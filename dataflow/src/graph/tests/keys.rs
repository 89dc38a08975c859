//! Reader keys: partial caches (only filled keys held, holes filled from storage by primary
//! key or a secondary index) and keys compared by a collation.

use larder_sql::plan::NodeOp;
use larder_sql::value::{SqlType, Value};

use super::*;

/// A cache keyed on its table's primary key through filters and projections is partial: it
/// starts empty and ready, holds only filled keys, drops changes to holes, and evicts keys
/// not read lately.
#[test]
fn partial_caches_hold_only_filled_keys() {
    let mut g = Graph::with_limits(GraphLimits {
        partial: true,
        ..GraphLimits::default()
    });
    let mut t = schema("t", &[SqlType::Int4, SqlType::Int4]);
    t.key = vec![0];
    g.add_table(T, t).unwrap();
    let base = node(
        NodeOp::Base { relation: 0 },
        vec![SqlType::Int4, SqlType::Int4],
    );
    let filter = node(
        NodeOp::Filter {
            input: 0,
            predicate: Expr::Binary {
                op: BinaryOp::Gt,
                left: Box::new(Expr::Column(1)),
                right: Box::new(Expr::Literal(Value::Int(0))),
                ty: SqlType::Bool,
            },
        },
        vec![SqlType::Int4, SqlType::Int4],
    );
    let project = node(
        NodeOp::Project {
            input: 1,
            exprs: vec![Expr::Column(1), Expr::Column(0)],
        },
        vec![SqlType::Int4, SqlType::Int4],
    );
    let mut p = plan(&["t"], vec![base, filter, project]);
    p.key = vec![1];
    p.key_params = vec![0];
    p.param_types = vec![SqlType::Int4];
    let (id, reader) = g.add_cache(&p).unwrap();
    assert_eq!(
        g.partial_key(id),
        Some(PartialKey {
            table: T,
            columns: vec![0],
            by_index: false,
        })
    );
    assert!(reader.is_ready() && reader.is_partial());
    let read = |k: i64| reader.read(&[vec![Value::Int(k)]]);
    // Changes to a hole are dropped.
    g.apply(T, &[Change::Insert(int_row(&[1, 10]))]).unwrap();
    g.publish();
    assert!(matches!(read(1), Err(ReadError::Holes(h)) if h == vec![vec![Value::Int(1)]]));
    // Filled from the stored row, or as known-empty.
    g.fill_keys(
        id,
        vec![
            (vec![Value::Int(1)], vec![(int_row(&[1, 10]), 1)]),
            (vec![Value::Int(2)], vec![]),
            (vec![Value::Int(3)], vec![(int_row(&[3, -1]), 1)]),
        ],
        &NoStoredRows,
    )
    .unwrap();
    assert_eq!(read(1).unwrap(), vec![int_row(&[10, 1])]);
    // A second fill of a held key (two reads raced for the hole) adds nothing.
    g.fill_keys(
        id,
        vec![
            (vec![Value::Int(1)], vec![(int_row(&[1, 10]), 1)]),
            (vec![Value::Int(1)], vec![(int_row(&[1, 10]), 1)]),
        ],
        &NoStoredRows,
    )
    .unwrap();
    assert_eq!(read(1).unwrap(), vec![int_row(&[10, 1])]);
    assert_eq!(read(2).unwrap(), Vec::<Row>::new());
    assert_eq!(
        read(3).unwrap(),
        Vec::<Row>::new(),
        "filtered out, held empty"
    );
    // Held keys follow changes; holes still drop them.
    g.apply(
        T,
        &[
            Change::Delete(int_row(&[1, 10])),
            Change::Insert(int_row(&[1, 11])),
            Change::Insert(int_row(&[2, 5])),
            Change::Insert(int_row(&[4, 5])),
        ],
    )
    .unwrap();
    g.publish();
    assert_eq!(read(1).unwrap(), vec![int_row(&[11, 1])]);
    assert_eq!(read(2).unwrap(), vec![int_row(&[5, 2])]);
    assert!(matches!(read(4), Err(ReadError::Holes(_))));
    // Keys read in this epoch or the last stay; the others go.
    reader.next_epoch();
    reader.next_epoch();
    read(1).unwrap();
    assert_eq!(g.evict_keys(2), 2);
    assert_eq!(read(1).unwrap(), vec![int_row(&[11, 1])]);
    assert!(matches!(read(2), Err(ReadError::Holes(_))));
    assert_eq!(reader.stats().unwrap().keys, 1, "{:?}", reader.stats());
    // The memory bound comes first: past the keys not read lately, read ones go too.
    assert_eq!(g.evict_keys(5), 1);
    assert_eq!(reader.stats().unwrap().keys, 0);
}

/// A cache keyed on a column that is not the primary key is partial with stored joins on
/// (its keys' rows come through the secondary index the graph then asks for), holds many
/// rows per key, and is not partial without them.
#[test]
fn partial_caches_keyed_on_other_columns_read_an_index() {
    let p = || {
        let base = node(
            NodeOp::Base { relation: 0 },
            vec![SqlType::Int4, SqlType::Int4],
        );
        let mut p = plan(&["t"], vec![base]);
        p.key = vec![1];
        p.key_params = vec![0];
        p.param_types = vec![SqlType::Int4];
        p
    };
    let graph = |stored_joins: bool| {
        let mut g = Graph::with_limits(GraphLimits {
            partial: true,
            stored_joins,
            ..GraphLimits::default()
        });
        let mut t = schema("t", &[SqlType::Int4, SqlType::Int4]);
        t.key = vec![0];
        g.add_table(T, t).unwrap();
        g
    };
    let mut off = graph(false);
    let (id, _) = off.add_cache(&p()).unwrap();
    assert_eq!(off.partial_key(id), None);
    let mut g = graph(true);
    assert_eq!(
        g.plan_stored_indexes(&p()),
        vec![StoredIndex {
            table: T,
            columns: vec![1]
        }]
    );
    let (id, reader) = g.add_cache(&p()).unwrap();
    assert_eq!(
        g.partial_key(id),
        Some(PartialKey {
            table: T,
            columns: vec![1],
            by_index: true,
        })
    );
    assert!(g.stored_indexes().contains(&StoredIndex {
        table: T,
        columns: vec![1]
    }));
    let read = |k: i64| reader.read(&[vec![Value::Int(k)]]);
    assert!(matches!(read(7), Err(ReadError::Holes(_))));
    g.fill_keys(
        id,
        vec![(
            vec![Value::Int(7)],
            vec![(int_row(&[1, 7]), 1), (int_row(&[2, 7]), 2)],
        )],
        &NoStoredRows,
    )
    .unwrap();
    let rows = read(7).unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows.iter().filter(|r| **r == int_row(&[2, 7])).count(), 2);
    g.apply(
        T,
        &[
            Change::Insert(int_row(&[3, 7])),
            Change::Insert(int_row(&[4, 8])),
        ],
    )
    .unwrap();
    g.publish();
    assert_eq!(read(7).unwrap().len(), 4);
    assert!(matches!(read(8), Err(ReadError::Holes(_))));
    g.remove_cache(id).unwrap();
    assert!(g.stored_indexes().is_empty());
}

/// A reader keyed by a collation: rows of one weight share a key, a row whose text has no
/// known weight poisons the reader until it is deleted, and a read of such a text (or of a
/// number) is refused, not answered empty.
#[test]
fn collated_keys_group_by_weight_and_refuse_what_they_cannot_key() {
    use larder_sql::collation::Collation;
    let mut g = Graph::new();
    let v = TableId(3);
    g.add_table(v, schema("v", &[SqlType::Int4, SqlType::Text]))
        .unwrap();
    let mut p = plan(
        &["v"],
        vec![node(
            NodeOp::Base { relation: 0 },
            vec![SqlType::Int4, SqlType::Text],
        )],
    );
    p.key = vec![1];
    p.key_params = vec![0];
    p.param_types = vec![SqlType::Text];
    p.order_by = vec![larder_sql::plan::OrderKey {
        column: 0,
        descending: false,
        nulls_first: false,
    }];
    let ci = Collation::from_weights(
        "utf8mb4_general_ci",
        (0u32..128).map(|c| (c, vec![0, (c as u8).to_ascii_uppercase()])),
    )
    .unwrap();
    p.key_collations = vec![Some(std::sync::Arc::new(ci))];
    let (id, reader) = g.add_cache(&p).unwrap();
    let row = |i: i64, s: &str| vec![Value::Int(i), Value::Text(s.into())];
    g.bootstrap_rows(id, v, vec![row(1, "ab"), row(2, "AB "), row(3, "b")])
        .unwrap();
    g.finish_bootstrap(id).unwrap();
    g.publish();
    let read = |s: Value| reader.read(&[vec![s]]);
    assert_eq!(
        read(Value::Text("aB".into())).unwrap(),
        vec![row(1, "ab"), row(2, "AB ")]
    );
    assert_eq!(read(Value::Text("é".into())), Err(ReadError::Uncollatable));
    assert_eq!(read(Value::Int(0)), Err(ReadError::Uncollatable));
    g.apply(v, &[Change::Insert(row(4, "é"))]).unwrap();
    g.publish();
    assert_eq!(read(Value::Text("ab".into())), Err(ReadError::Poisoned));
    g.apply(v, &[Change::Delete(row(4, "é"))]).unwrap();
    g.publish();
    assert_eq!(read(Value::Text("B".into())).unwrap(), vec![row(3, "b")]);
}

/// Readers never see a filled key without its rows: a fill publishes its keys together with
/// their rows, however long the rows take to run through the cache's nodes.
#[test]
fn readers_never_see_a_filled_key_without_its_rows() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let mut g = Graph::with_limits(GraphLimits {
        partial: true,
        ..GraphLimits::default()
    });
    let cols = vec![SqlType::Int4, SqlType::Int4, SqlType::Text];
    let mut t = schema("t", &cols);
    t.key = vec![0];
    g.add_table(T, t).unwrap();
    let mut p = plan(
        &["t"],
        vec![node(NodeOp::Base { relation: 0 }, cols.clone())],
    );
    p.key = vec![0];
    p.key_params = vec![0];
    p.param_types = vec![SqlType::Int4];
    let (id, reader) = g.add_cache(&p).unwrap();
    let row = |k: i64| {
        vec![
            Value::Int(k),
            Value::Int(k % 100),
            Value::Text(format!("row {k}")),
        ]
    };
    const KEYS: i64 = 20_000;
    let done = Arc::new(AtomicBool::new(false));
    let (empty, hits) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let readers: Vec<_> = (0..2i64)
        .map(|i| {
            let (reader, done, empty, hits) =
                (reader.clone(), done.clone(), empty.clone(), hits.clone());
            std::thread::spawn(move || {
                let mut k = i;
                while !done.load(Ordering::SeqCst) {
                    k = (k + 7919) % KEYS;
                    match reader.read(&[vec![Value::Int(k + 1)]]) {
                        Ok(rows) if rows.is_empty() => empty.fetch_add(1, Ordering::SeqCst),
                        Ok(_) => hits.fetch_add(1, Ordering::SeqCst),
                        Err(_) => 0,
                    };
                }
            })
        })
        .collect();
    for chunk in 0..KEYS / 2000 {
        let fills = (chunk * 2000 + 1..=(chunk + 1) * 2000)
            .map(|k| (vec![Value::Int(k)], vec![(row(k), 1)]))
            .collect();
        g.fill_keys(id, fills, &NoStoredRows).unwrap();
        g.evict_keys(300);
    }
    done.store(true, Ordering::SeqCst);
    for r in readers {
        r.join().unwrap();
    }
    eprintln!("reads of filled keys: {} hits", hits.load(Ordering::SeqCst));
    assert_eq!(
        empty.load(Ordering::SeqCst),
        0,
        "reads found a filled key without its rows"
    );
}
