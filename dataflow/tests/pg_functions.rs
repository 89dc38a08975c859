//! Table-driven check of expression lowering and evaluation against Postgres 15.
//!
//! `pg_functions/exprs.txt` lists expressions over literals; `pg_functions/gen.sh` ran each as
//! `SELECT pg_typeof(e), e` on a real Postgres 15 (UTF-8, C locale, TimeZone UTC, DateStyle
//! ISO) and recorded the type and text output in `pg_functions/expected.tsv`. Here each
//! expression is normalized and lowered as `SELECT e FROM t WHERE id = 1`, the projected
//! expression is compiled and evaluated, and the result printed with Larder's text output.
//!
//! * Postgres answered: Larder must give exactly its type and text, unless the line is marked
//!   `poison` (Larder must fail to evaluate) or `refuse` (Larder must refuse to lower).
//! * Postgres failed: Larder must refuse or fail to evaluate, never produce a value.

use larder_dataflow::{CompiledExpr, ExprContext};
use larder_sql::lower::{lower, Catalog};
use larder_sql::normalize::normalize;
use larder_sql::pgtypes::{format_text, type_name, TimeZoneSetting};
use larder_sql::plan::NodeOp;
use larder_sql::statement::Dialect;
use larder_sql::{Column, SqlType, TableSchema, Value};

struct OneTable;

impl Catalog for OneTable {
    fn table(&self, _schema: Option<&str>, name: &str) -> Option<TableSchema> {
        (name == "t").then(|| TableSchema {
            schema: "public".into(),
            name: "t".into(),
            columns: vec![Column {
                name: "id".into(),
                ty: SqlType::Int4,
                type_oid: 23,
                typmod: -1,
            }],
            key: vec![0],
        })
    }
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Refused(String),
    EvalFailed(String),
    Value { ty: String, text: String },
}

fn run(expr: &str) -> Outcome {
    let sql = format!("SELECT {expr} FROM t WHERE id = 1");
    let n = match normalize(&sql, Dialect::Postgres) {
        Ok(n) => n,
        Err(e) => return Outcome::Refused(format!("normalize: {e}")),
    };
    let plan = match lower(&n.query, &OneTable, &n.params) {
        Ok(p) => p,
        Err(e) => return Outcome::Refused(e.to_string()),
    };
    let out = &plan.output[0];
    let (node_idx, exprs, input) = plan
        .nodes
        .iter()
        .enumerate()
        .rev()
        .find_map(|(i, node)| match &node.op {
            NodeOp::Project { input, exprs } => Some((i, exprs.clone(), *input)),
            _ => None,
        })
        .expect("a Project");
    assert_eq!(
        node_idx + 1,
        plan.nodes.len(),
        "{expr}: Project is the last node"
    );
    let input_types = plan.nodes[input].types.clone();
    let ctx = ExprContext {
        columns: &input_types,
        params: None,
    };
    let compiled = match CompiledExpr::compile(&exprs[out.column], &ctx) {
        Ok(c) => c,
        Err(e) => return Outcome::Refused(format!("compile: {e}")),
    };
    let row = vec![Value::Int(1); input_types.len()];
    match compiled.eval(&row, &[]) {
        Err(e) => Outcome::EvalFailed(e.to_string()),
        Ok(v) => {
            let tz = TimeZoneSetting::from_name("UTC").expect("UTC");
            let text = if v.is_null() {
                "<NULL>".to_string()
            } else {
                format_text(&out.ty, &v, tz).unwrap_or_else(|e| format!("<format error {e}>"))
            };
            Outcome::Value {
                ty: type_name(&out.ty).to_string(),
                text,
            }
        }
    }
}

#[test]
fn expressions_match_postgres() {
    let data = include_str!("pg_functions/expected.tsv");
    let mut failures = Vec::new();
    let mut counts = [0usize; 3];
    for line in data.lines().filter(|l| !l.is_empty()) {
        let mut f = line.split('\t');
        let (expr, ty, text, flag) = (
            f.next().unwrap_or(""),
            f.next().unwrap_or(""),
            f.next().unwrap_or(""),
            f.next().unwrap_or(""),
        );
        let got = run(expr);
        let ok = match (ty, flag, &got) {
            ("<ERROR>", _, Outcome::Refused(_) | Outcome::EvalFailed(_)) => true,
            ("<ERROR>", _, Outcome::Value { .. }) => false,
            (_, "poison", Outcome::EvalFailed(_)) => true,
            (_, "refuse", Outcome::Refused(_)) => true,
            (_, "ok", Outcome::Value { ty: t, text: x }) => t == ty && x == text,
            _ => false,
        };
        counts[match got {
            Outcome::Value { .. } => 0,
            Outcome::EvalFailed(_) => 1,
            Outcome::Refused(_) => 2,
        }] += 1;
        if !ok {
            failures.push(format!(
                "{expr}\n    postgres: {ty} {text:?} ({flag})\n    larder:   {got:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // values, evaluation failures, refusals
    assert!(counts[0] > 200, "{counts:?}");
}
