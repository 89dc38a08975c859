//! How fast a cache is filled: the Lobsters story query (a story, its author and its vote
//! count) over synthetic tables, fed through `bootstrap_rows` as `CREATE CACHE` feeds it.
//! A printing tool, not a check:
//!
//! `STORIES=100000 VOTES=1000000 cargo test --release -p larder-dataflow --test fill_rate -- --ignored --nocapture`

use std::time::Instant;

use larder_dataflow::{Graph, TableId};
use larder_sql::plan::{
    AggFunc, Aggregate, CachePlan, JoinKind, NodeOp, OutputColumn, PlanNode, TableRef,
};
use larder_sql::value::{Column, Row, SqlType, TableSchema, Value};

fn schema(name: &str, cols: &[(&str, SqlType)]) -> TableSchema {
    TableSchema {
        schema: "public".into(),
        name: name.into(),
        columns: cols
            .iter()
            .map(|(n, ty)| Column {
                name: (*n).into(),
                ty: ty.clone(),
                type_oid: 0,
                typmod: -1,
            })
            .collect(),
        key: vec![0],
    }
}

fn env(name: &str, default: i64) -> i64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// stories(id, user_id, title) ⋈ users(id, name) ⟕ votes(id, story_id), grouped by story:
/// the plan `CREATE CACHE` makes of the story query once pruned.
fn story_plan() -> CachePlan {
    use SqlType::{Int4, Int8, Text};
    let node = |op, types| PlanNode { op, types };
    let nodes = vec![
        node(NodeOp::Base { relation: 0 }, vec![Int8, Int4, Text]),
        node(NodeOp::Base { relation: 1 }, vec![Int4, Text]),
        node(
            NodeOp::Join {
                left: 0,
                right: 1,
                kind: JoinKind::Inner,
                on: vec![(1, 0)],
            },
            vec![Int8, Int4, Text, Int4, Text],
        ),
        node(NodeOp::Base { relation: 2 }, vec![Int8, Int8]),
        node(
            NodeOp::Join {
                left: 2,
                right: 3,
                kind: JoinKind::Left,
                on: vec![(0, 1)],
            },
            vec![Int8, Int4, Text, Int4, Text, Int8, Int8],
        ),
        node(
            NodeOp::Aggregate {
                input: 4,
                group_by: vec![0, 2, 4],
                aggregates: vec![Aggregate {
                    func: AggFunc::Count,
                    arg: Some(5),
                    distinct: false,
                }],
            },
            vec![Int8, Text, Text, Int8],
        ),
    ];
    let types = nodes.last().expect("nodes").types.clone();
    CachePlan {
        relations: ["stories", "users", "votes"]
            .iter()
            .map(|n| TableRef {
                schema: "public".into(),
                name: (*n).into(),
            })
            .collect(),
        output: types
            .iter()
            .enumerate()
            .map(|(i, ty)| OutputColumn {
                column: i,
                name: format!("c{i}"),
                ty: ty.clone(),
            })
            .collect(),
        nodes,
        key: vec![0],
        key_params: vec![0],
        residual: None,
        order_by: vec![],
        offset: 0,
        limit: None,
        param_types: vec![Int8],
        fixed_params: vec![],
        single_value_params: vec![],
        empty_key_row: None,
        range: None,
        key_collations: vec![],
    }
}

#[test]
#[ignore = "a printing tool: run with --ignored --nocapture"]
fn print_fill_rate() {
    use SqlType::{Int4, Int8, Text};
    let (stories, users, votes) = (
        env("STORIES", 100_000),
        env("USERS", 10_000),
        env("VOTES", 1_000_000),
    );
    let mut g = Graph::new();
    g.add_table(
        TableId(0),
        schema(
            "stories",
            &[("id", Int8), ("user_id", Int4), ("title", Text)],
        ),
    )
    .unwrap();
    g.add_table(TableId(1), schema("users", &[("id", Int4), ("name", Text)]))
        .unwrap();
    g.add_table(
        TableId(2),
        schema("votes", &[("id", Int8), ("story_id", Int8)]),
    )
    .unwrap();
    let (id, reader) = g.add_cache(&story_plan()).unwrap();
    let started = Instant::now();
    let chunk = 8192;
    let feed = |g: &mut Graph, table: u64, rows: &mut dyn Iterator<Item = Row>| loop {
        let part: Vec<Row> = (&mut *rows).take(chunk).collect();
        if part.is_empty() {
            break;
        }
        g.bootstrap_rows(id, TableId(table), part).unwrap();
    };
    feed(
        &mut g,
        0,
        &mut (1..=stories).map(|s| {
            vec![
                Value::Int(s),
                Value::Int(1 + s % users),
                Value::Text(format!("story {s}")),
            ]
        }),
    );
    feed(
        &mut g,
        1,
        &mut (1..=users).map(|u| vec![Value::Int(u), Value::Text(format!("user{u}"))]),
    );
    // Zipf-like: low story ids get most votes.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    feed(
        &mut g,
        2,
        &mut (1..=votes).map(|v| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let u = (x % 1_000_000) as f64 / 1_000_000.0;
            let story = 1 + (u * u * stories as f64) as i64;
            vec![Value::Int(v), Value::Int(story)]
        }),
    );
    g.finish_bootstrap(id).unwrap();
    let took = started.elapsed();
    let rows = stories + users + votes;
    let stats = reader.stats().expect("stats");
    eprintln!(
        "filled {rows} rows in {:.2} s: {:.0} rows/s; reader {} rows, {} bytes; operators {} bytes",
        took.as_secs_f64(),
        rows as f64 / took.as_secs_f64(),
        stats.rows,
        stats.bytes,
        g.cache_state_bytes(id)
    );
}
