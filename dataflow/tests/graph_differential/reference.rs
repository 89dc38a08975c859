//! The naive reference: recomputes a plan from the tables' current rows, node by node.

use std::collections::HashMap;

use larder_dataflow::{full_cmp, structural_cmp, structural_cmp_row, CompiledExpr, ExprContext};
use larder_sql::numeric::Decimal;
use larder_sql::plan::{AggFunc, Aggregate, CachePlan, Expr, JoinKind, NodeOp};
use larder_sql::value::{compare, sql_eq, Key, Row, SqlType, Value};

use SqlType::Int4;

/// Recomputes every node of `plan` from the tables' current rows.
pub fn evaluate(plan: &CachePlan, tables: &[Vec<Row>]) -> Vec<Row> {
    let mut results: Vec<Vec<Row>> = Vec::with_capacity(plan.nodes.len());
    for node in &plan.nodes {
        let ctx_types = |n: usize| plan.nodes[n].types.clone();
        let out = match &node.op {
            NodeOp::Base { relation } => tables[*relation].clone(),
            NodeOp::Filter { input, predicate } => {
                let types = ctx_types(*input);
                let pred = compile(predicate, &types);
                results[*input]
                    .iter()
                    .filter(|r| {
                        pred.eval_predicate(r, &[]).expect("no poison in plans") == Some(true)
                    })
                    .cloned()
                    .collect()
            }
            NodeOp::Project { input, exprs } => {
                let types = ctx_types(*input);
                let exprs: Vec<_> = exprs.iter().map(|e| compile(e, &types)).collect();
                results[*input]
                    .iter()
                    .map(|r| {
                        exprs
                            .iter()
                            .map(|e| e.eval(r, &[]).expect("no poison in plans").into_owned())
                            .collect()
                    })
                    .collect()
            }
            NodeOp::Join {
                left,
                right,
                kind,
                on,
            } => {
                let right_width = plan.nodes[*right].types.len();
                let mut out = Vec::new();
                for l in &results[*left] {
                    let mut matched = false;
                    for r in &results[*right] {
                        if matches_on(l, r, on) {
                            matched = true;
                            out.push([l.clone(), r.clone()].concat());
                        }
                    }
                    if !matched && *kind == JoinKind::Left {
                        out.push([l.clone(), vec![Value::Null; right_width]].concat());
                    }
                }
                out
            }
            NodeOp::SemiJoin {
                left,
                right,
                on,
                anti,
                null_aware,
            } => {
                let rights = &results[*right];
                results[*left]
                    .iter()
                    .filter(|l| {
                        let exists = rights.iter().any(|r| matches_on(l, r, on));
                        if *anti && *null_aware {
                            let (lc, rc) = on[0];
                            rights.is_empty()
                                || (!l[lc].is_null()
                                    && !rights.iter().any(|r| r[rc].is_null())
                                    && !exists)
                        } else {
                            exists != *anti
                        }
                    })
                    .cloned()
                    .collect()
            }
            NodeOp::Aggregate {
                input,
                group_by,
                aggregates,
            } => aggregate(&results[*input], &ctx_types(*input), group_by, aggregates),
            NodeOp::Distinct { input } => first_representations(results[*input].clone()),
            NodeOp::TopK {
                input,
                group_by,
                order,
                limit,
            } => {
                let mut groups: HashMap<Key, Vec<Row>> = HashMap::new();
                for r in &results[*input] {
                    groups
                        .entry(Key::from_values(group_by.iter().map(|&g| &r[g])))
                        .or_default()
                        .push(r.clone());
                }
                let mut out = Vec::new();
                for mut rows in groups.into_values() {
                    rows.sort_by(|a, b| full_cmp(order, a, b));
                    out.extend(rows.into_iter().take(*limit));
                }
                out
            }
            NodeOp::Union { inputs } => inputs.iter().flat_map(|&i| results[i].clone()).collect(),
        };
        results.push(out);
    }
    results.pop().expect("plans have nodes")
}

fn compile(e: &Expr, types: &[SqlType]) -> CompiledExpr {
    CompiledExpr::compile(
        e,
        &ExprContext {
            columns: types,
            params: None,
        },
    )
    .expect("generated expressions compile")
}

/// SQL-distinct rows, each as its structurally first representation (`1.5` before `1.50`).
fn first_representations(rows: Vec<Row>) -> Vec<Row> {
    let mut seen: HashMap<Key, Row> = HashMap::new();
    for r in rows {
        let slot = seen
            .entry(Key::from_values(&r))
            .or_insert_with(|| r.clone());
        if structural_cmp_row(&r, slot) == std::cmp::Ordering::Less {
            *slot = r;
        }
    }
    seen.into_values().collect()
}

fn matches_on(l: &[Value], r: &[Value], on: &[(usize, usize)]) -> bool {
    on.iter().all(|&(a, b)| sql_eq(&l[a], &r[b]) == Some(true))
}

fn aggregate(rows: &[Row], types: &[SqlType], group_by: &[usize], aggs: &[Aggregate]) -> Vec<Row> {
    let mut groups: Vec<(Key, Vec<&Row>)> = Vec::new();
    for r in rows {
        let key = Key::from_values(group_by.iter().map(|&g| &r[g]));
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, members)) => members.push(r),
            None => groups.push((key, vec![r])),
        }
    }
    if group_by.is_empty() && groups.is_empty() {
        groups.push((Key(vec![]), vec![]));
    }
    groups
        .into_iter()
        .map(|(_, members)| {
            let reps: Vec<Row> = members
                .iter()
                .map(|r| group_by.iter().map(|&g| r[g].clone()).collect())
                .collect();
            let mut out: Row = reps
                .into_iter()
                .min_by(|a, b| structural_cmp_row(a, b))
                .unwrap_or_default();
            for a in aggs {
                out.push(aggregate_one(&members, types, a));
            }
            out
        })
        .collect()
}

fn aggregate_one(members: &[&Row], types: &[SqlType], a: &Aggregate) -> Value {
    let Some(arg) = a.arg else {
        return Value::Int(members.len() as i64);
    };
    let mut values: Vec<Value> = members
        .iter()
        .map(|r| r[arg].clone())
        .filter(|v| !v.is_null())
        .collect();
    if a.distinct {
        values = first_representations(values.into_iter().map(|v| vec![v]).collect())
            .into_iter()
            .map(|mut r| r.remove(0))
            .collect();
    }
    if a.func == AggFunc::Count {
        return Value::Int(values.len() as i64);
    }
    if values.is_empty() {
        return Value::Null;
    }
    let decimal = |v: &Value| match v {
        Value::Int(i) => Decimal::from_i128(i128::from(*i)),
        Value::Numeric(s) => Decimal::parse(s).expect("generated numerics parse"),
        other => panic!("not a number: {other:?}"),
    };
    let sum = || {
        values.iter().fold(Decimal::ZERO, |acc, v| {
            acc.checked_add(decimal(v)).expect("small sums")
        })
    };
    let extreme = |want: std::cmp::Ordering| {
        values
            .iter()
            .cloned()
            .reduce(|best, v| {
                // SQL-equal values written differently: MIN shows the structurally first,
                // MAX the structurally last (the dataflow's documented tie-break).
                let tie = structural_cmp(&v, &best) == want;
                match compare(&v, &best) {
                    Some(o) if o == want => v,
                    Some(std::cmp::Ordering::Equal) if tie => v,
                    _ => best,
                }
            })
            .expect("non-empty")
    };
    match (a.func, &types[arg]) {
        (AggFunc::Sum, SqlType::Int2 | Int4) => {
            Value::Int(i64::try_from(sum().mantissa()).expect("fits"))
        }
        (AggFunc::Sum, _) => Value::Numeric(sum().to_string()),
        (AggFunc::Avg, _) => Value::Numeric(
            sum()
                .checked_div(Decimal::from_i128(values.len() as i128))
                .expect("divides")
                .to_string(),
        ),
        (AggFunc::Min, _) => extreme(std::cmp::Ordering::Less),
        (AggFunc::Max, _) => extreme(std::cmp::Ordering::Greater),
        (AggFunc::Count, _) => unreachable!("handled above"),
    }
}
