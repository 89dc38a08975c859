//! The query-shape corpus (`tests/corpus/queries.txt`): every entry is normalized and
//! lowered against a Lobsters-like catalog, and must be cached or refused as marked. Cached
//! plans are checked for internal consistency (node inputs, column indices, types).
//!
//! Format of the data file (reusable by other suites, e.g. differential runs against
//! Postgres): one entry per line, `#` starts a comment line, and
//!
//! ```text
//! OK: <sql>                 the query lowers to a plan
//! NO[<reason part>]: <sql>  the query is refused; the reason contains <reason part>
//! ```

use larder_sql::lower::{lower, Catalog};
use larder_sql::normalize::normalize;
use larder_sql::plan::{CachePlan, Expr, NodeOp};
use larder_sql::statement::Dialect;
use larder_sql::{Column, SqlType, TableSchema};

struct Lobsters(Vec<TableSchema>);

impl Catalog for Lobsters {
    fn table(&self, schema: Option<&str>, name: &str) -> Option<TableSchema> {
        let schema = schema.unwrap_or("public");
        self.0
            .iter()
            .find(|t| t.schema == schema && t.name == name)
            .cloned()
    }
}

fn table(name: &str, cols: &[(&str, SqlType)]) -> TableSchema {
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

/// users, stories, comments, votes, tags, taggings, hidden_stories.
fn catalog() -> Lobsters {
    use SqlType as S;
    Lobsters(vec![
        table(
            "users",
            &[
                ("id", S::Int4),
                ("username", S::Text),
                ("email", S::Varchar),
                ("karma", S::Int4),
                ("is_admin", S::Bool),
                ("created_at", S::TimestampTz),
                ("deleted_at", S::Timestamp),
                ("invited_by_user_id", S::Int4),
                ("about", S::Text),
                ("settings", S::Jsonb),
                ("credit", S::Numeric),
            ],
        ),
        table(
            "stories",
            &[
                ("id", S::Int8),
                ("user_id", S::Int4),
                ("title", S::Text),
                ("url", S::Text),
                ("score", S::Int4),
                ("upvotes", S::Int4),
                ("downvotes", S::Int4),
                ("hotness", S::Float8),
                ("created_at", S::Timestamp),
                ("is_deleted", S::Bool),
                ("comments_count", S::Int4),
                ("merged_story_id", S::Int8),
                ("short_id", S::Varchar),
                ("description", S::Text),
            ],
        ),
        table(
            "comments",
            &[
                ("id", S::Int8),
                ("story_id", S::Int8),
                ("user_id", S::Int4),
                ("parent_comment_id", S::Int8),
                ("comment", S::Text),
                ("score", S::Int4),
                ("confidence", S::Float8),
                ("created_at", S::Timestamp),
                ("is_deleted", S::Bool),
            ],
        ),
        table(
            "votes",
            &[
                ("id", S::Int8),
                ("user_id", S::Int4),
                ("story_id", S::Int8),
                ("comment_id", S::Int8),
                ("vote", S::Int2),
                ("reason", S::Text),
                ("created_at", S::Timestamp),
            ],
        ),
        table(
            "tags",
            &[
                ("id", S::Int4),
                ("tag", S::Text),
                ("description", S::Text),
                ("privileged", S::Bool),
                ("hotness_mod", S::Numeric),
            ],
        ),
        table(
            "taggings",
            &[("id", S::Int4), ("story_id", S::Int8), ("tag_id", S::Int4)],
        ),
        table(
            "hidden_stories",
            &[("id", S::Int4), ("user_id", S::Int4), ("story_id", S::Int8)],
        ),
    ])
}

enum Expect {
    Cached,
    Refused(String),
}

fn entries() -> Vec<(usize, Expect, String)> {
    let text = include_str!("corpus/queries.txt");
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(sql) = line.strip_prefix("OK:") {
            out.push((i + 1, Expect::Cached, sql.trim().to_string()));
        } else if let Some(rest) = line.strip_prefix("NO[") {
            let (reason, sql) = rest
                .split_once("]:")
                .unwrap_or_else(|| panic!("line {}: malformed NO entry", i + 1));
            out.push((
                i + 1,
                Expect::Refused(reason.into()),
                sql.trim().to_string(),
            ));
        } else {
            panic!("line {}: unknown marker: {line}", i + 1);
        }
    }
    out
}

/// Checks that a plan is well formed: inputs precede users, column indices are in range,
/// node types agree with their inputs, join columns have equal types.
fn validate(plan: &CachePlan) -> Result<(), String> {
    let nodes = &plan.nodes;
    if nodes.is_empty() {
        return Err("no nodes".into());
    }
    let in_range = |e: &Expr, width: usize| {
        let mut ok = true;
        e.for_each_column(&mut |c| ok &= c < width);
        ok
    };
    let no_params = |e: &Expr| !format!("{e:?}").contains("Param(");
    for (i, n) in nodes.iter().enumerate() {
        let inputs = n.op.inputs();
        if inputs.iter().any(|&x| x >= i) {
            return Err(format!("node {i} reads a later node"));
        }
        let ty = |x: usize| &nodes[x].types;
        let ok = match &n.op {
            NodeOp::Base { relation } => *relation < plan.relations.len(),
            NodeOp::Filter { input, predicate } => {
                n.types == *ty(*input)
                    && in_range(predicate, ty(*input).len())
                    && no_params(predicate)
            }
            NodeOp::Project { input, exprs } => {
                exprs.len() == n.types.len()
                    && exprs
                        .iter()
                        .all(|e| in_range(e, ty(*input).len()) && no_params(e))
            }
            NodeOp::Join {
                left, right, on, ..
            } => {
                let mut t = ty(*left).clone();
                t.extend(ty(*right).iter().cloned());
                t == n.types
                    && !on.is_empty()
                    && on.iter().all(|&(l, r)| {
                        l < ty(*left).len() && r < ty(*right).len() && ty(*left)[l] == ty(*right)[r]
                    })
            }
            NodeOp::SemiJoin {
                left,
                right,
                on,
                null_aware,
                ..
            } => {
                n.types == *ty(*left)
                    && !on.is_empty()
                    && (!null_aware || on.len() == 1)
                    && on.iter().all(|&(l, r)| {
                        l < ty(*left).len() && r < ty(*right).len() && ty(*left)[l] == ty(*right)[r]
                    })
            }
            NodeOp::Aggregate {
                input,
                group_by,
                aggregates,
            } => {
                let w = ty(*input).len();
                n.types.len() == group_by.len() + aggregates.len()
                    && group_by.iter().all(|&g| g < w)
                    && aggregates.iter().all(|a| a.arg.is_none_or(|x| x < w))
                    && group_by
                        .iter()
                        .enumerate()
                        .all(|(k, &g)| n.types[k] == ty(*input)[g])
            }
            NodeOp::Distinct { input } => n.types == *ty(*input),
            NodeOp::TopK {
                input,
                group_by,
                order,
                limit,
            } => {
                let w = ty(*input).len();
                n.types == *ty(*input)
                    && *limit > 0
                    && group_by.iter().all(|&g| g < w)
                    && order.iter().all(|o| o.column < w)
            }
            NodeOp::Union { inputs } => {
                inputs.len() >= 2 && inputs.iter().all(|&x| *ty(x) == n.types)
            }
        };
        if !ok {
            return Err(format!("node {i} is malformed: {:?}", n.op));
        }
    }
    let width = plan.reader_types().len();
    let reader_ok = plan.key.iter().all(|&k| k < width)
        && plan.key.len() == plan.key_params.len()
        && plan.output.iter().all(|o| o.column < width)
        && plan.order_by.iter().all(|o| o.column < width)
        && plan.residual.as_ref().is_none_or(|r| in_range(r, width))
        && plan
            .output
            .iter()
            .all(|o| plan.reader_types()[o.column] == o.ty)
        && plan.key_params.iter().all(|&s| s < plan.param_types.len())
        && plan
            .fixed_params
            .iter()
            .all(|(s, _)| *s < plan.param_types.len())
        && plan
            .single_value_params
            .iter()
            .all(|s| plan.key_params.contains(s))
        && plan.empty_key_row.as_ref().is_none_or(|e| {
            matches!(
                plan.nodes.get(e.aggregate).map(|n| &n.op),
                Some(NodeOp::Aggregate { .. })
            ) && plan.nodes[e.aggregate + 1..]
                .iter()
                .all(|n| matches!(n.op, NodeOp::Project { .. }))
        });
    if !reader_ok {
        return Err("reader refers to missing columns or slots".into());
    }
    for (i, r) in plan.relations.iter().enumerate() {
        if plan.relations[..i].contains(r) {
            return Err(format!("relation {r:?} listed twice"));
        }
    }
    Ok(())
}

#[test]
fn corpus_outcomes() {
    let catalog = catalog();
    let entries = entries();
    let mut failures = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let (mut cached, mut refused) = (0usize, 0usize);
    for (line, expect, sql) in &entries {
        if !seen.insert(sql.clone()) {
            failures.push(format!("line {line}: duplicate entry {sql}"));
        }
        let n = match normalize(sql, Dialect::Postgres) {
            Ok(n) => n,
            Err(e) => {
                failures.push(format!("line {line}: does not normalize: {e}: {sql}"));
                continue;
            }
        };
        let result = lower(&n.query, &catalog, &n.params);
        match (&result, expect) {
            (Ok(plan), Expect::Cached) => {
                cached += 1;
                if let Err(e) = validate(plan) {
                    failures.push(format!("line {line}: invalid plan: {e}: {sql}"));
                }
            }
            (Err(e), Expect::Refused(part)) if e.reason.contains(part.as_str()) => refused += 1,
            (Ok(_), Expect::Refused(part)) => failures.push(format!(
                "line {line}: cached, expected refusal [{part}]: {sql}"
            )),
            (Err(e), _) => failures.push(format!("line {line}: refused [{}]: {sql}", e.reason)),
        }
    }
    let total = entries.len();
    println!(
        "corpus: {total} shapes, {cached} cached ({:.1}%), {refused} refused",
        100.0 * cached as f64 / total.max(1) as f64
    );
    assert!(total >= 300, "corpus has only {total} entries");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `LARDER_SQL='SELECT ...' cargo test -p larder-sql --test corpus print_plan -- --ignored
/// --nocapture` prints the plan of a query over the corpus catalog.
#[test]
#[ignore]
fn print_plan() {
    let Ok(sql) = std::env::var("LARDER_SQL") else {
        return;
    };
    let n = normalize(&sql, Dialect::Postgres).expect("normalizes");
    println!("{}", n.text);
    match lower(&n.query, &catalog(), &n.params) {
        Ok(plan) => {
            println!("relations: {:?}", plan.relations);
            for (i, node) in plan.nodes.iter().enumerate() {
                println!("{i:>3}: {:?}  {:?}", node.op, node.types);
            }
            println!("key {:?} <- slots {:?}", plan.key, plan.key_params);
            println!("residual {:?}", plan.residual);
            println!(
                "order {:?} offset {} limit {:?}",
                plan.order_by, plan.offset, plan.limit
            );
            println!("output {:?}", plan.output);
            println!(
                "params {:?} fixed {:?}",
                plan.param_types, plan.fixed_params
            );
            println!(
                "single-value {:?} empty-key row {:?}",
                plan.single_value_params, plan.empty_key_row
            );
        }
        Err(e) => println!("refused: {e}"),
    }
}
