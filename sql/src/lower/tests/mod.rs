//! Lowering tests: helpers and a shared test catalog.

use super::*;
use crate::normalize::normalize;
use crate::plan::Expr as P;
use crate::plan::{CachePlan, Expr, NodeOp, TableRef};
use crate::statement::Dialect;
use crate::value::Column;
use crate::value::{SqlType, TableSchema};

/// The single-table view of a plan (Base -> optional Filter -> Project) these tests check.
pub(super) trait SingleTable {
    fn table(&self) -> TableRef;
    fn filter(&self) -> Option<Expr>;
    fn materialized(&self) -> Vec<Expr>;
}

impl SingleTable for CachePlan {
    fn table(&self) -> TableRef {
        self.relations[0].clone()
    }
    fn filter(&self) -> Option<Expr> {
        self.nodes.iter().find_map(|n| match &n.op {
            NodeOp::Filter { predicate, .. } => Some(predicate.clone()),
            _ => None,
        })
    }
    fn materialized(&self) -> Vec<Expr> {
        match self
            .nodes
            .iter()
            .rev()
            .map(|n| &n.op)
            .find(|op| matches!(op, NodeOp::Project { .. }))
        {
            Some(NodeOp::Project { exprs, .. }) => exprs.clone(),
            _ => panic!("no Project in {:?}", self.nodes),
        }
    }
}

pub(super) struct TestCatalog {
    tables: Vec<TableSchema>,
    case_insensitive: bool,
}

impl Catalog for TestCatalog {
    fn table(&self, schema: Option<&str>, name: &str) -> Option<TableSchema> {
        let schema = schema.unwrap_or("public");
        self.tables
            .iter()
            .find(|t| {
                t.schema == schema
                    && (t.name == name
                        || (self.case_insensitive && t.name.eq_ignore_ascii_case(name)))
            })
            .cloned()
    }
    fn column_names_case_insensitive(&self) -> bool {
        self.case_insensitive
    }
}

pub(super) fn table(schema: &str, name: &str, cols: &[(&str, SqlType)]) -> TableSchema {
    TableSchema {
        schema: schema.into(),
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

pub(super) fn catalog() -> TestCatalog {
    use SqlType as S;
    TestCatalog {
        tables: vec![
            table(
                "public",
                "users",
                &[
                    ("id", S::Int4),              // 0
                    ("name", S::Text),            // 1
                    ("email", S::Varchar),        // 2
                    ("age", S::Int2),             // 3
                    ("score", S::Float8),         // 4
                    ("balance", S::Numeric),      // 5
                    ("active", S::Bool),          // 6
                    ("created_at", S::Timestamp), // 7
                    ("code", S::Bpchar),          // 8
                    ("data", S::Jsonb),           // 9
                    ("org_id", S::Int8),          // 10
                ],
            ),
            table(
                "blog",
                "posts",
                &[("id", S::Int8), ("title", S::Text), ("author_id", S::Int4)],
            ),
            table(
                "public",
                "stories",
                &[
                    ("id", S::Int8),        // 0
                    ("user_id", S::Int4),   // 1
                    ("title", S::Text),     // 2
                    ("score", S::Int4),     // 3
                    ("hotness", S::Float8), // 4
                ],
            ),
            table(
                "public",
                "comments",
                &[
                    ("id", S::Int8),       // 0
                    ("story_id", S::Int8), // 1
                    ("user_id", S::Int4),  // 2
                    ("score", S::Int4),    // 3
                ],
            ),
            table(
                "public",
                "votes",
                &[
                    ("user_id", S::Int4),  // 0
                    ("story_id", S::Int8), // 1
                    ("vote", S::Int2),     // 2
                ],
            ),
        ],
        case_insensitive: false,
    }
}

/// The plan as lowering builds it, before [`prune_columns`](crate::lower::prune_columns)
/// (whose own tests are in `prune`).
pub(super) fn plan(sql: &str) -> CachePlan {
    let n = normalize(sql, Dialect::Postgres).unwrap();
    match crate::lower::lower_unpruned(&n.query, &catalog(), &n.params) {
        Ok(p) => p,
        Err(e) => panic!("{sql}: {e}"),
    }
}

pub(super) fn refuse(sql: &str) -> String {
    let n = normalize(sql, Dialect::Postgres).unwrap();
    match lower(&n.query, &catalog(), &n.params) {
        Ok(p) => panic!("{sql} was accepted: {p:?}"),
        Err(e) => e.reason,
    }
}

pub(super) fn col(i: usize) -> Box<P> {
    Box::new(P::Column(i))
}

pub(super) fn param(i: usize) -> Box<P> {
    Box::new(P::Param(i))
}

pub(super) fn names(p: &CachePlan) -> Vec<&str> {
    p.output.iter().map(|o| o.name.as_str()).collect()
}

/// The kind of each node, in order.
pub(super) fn kinds(p: &CachePlan) -> Vec<&'static str> {
    p.nodes
        .iter()
        .map(|n| match n.op {
            NodeOp::Base { .. } => "Base",
            NodeOp::Filter { .. } => "Filter",
            NodeOp::Project { .. } => "Project",
            NodeOp::Join { .. } => "Join",
            NodeOp::SemiJoin { .. } => "SemiJoin",
            NodeOp::Aggregate { .. } => "Aggregate",
            NodeOp::Distinct { .. } => "Distinct",
            NodeOp::TopK { .. } => "TopK",
            NodeOp::Union { .. } => "Union",
        })
        .collect()
}

/// The first node whose op matches `f`.
pub(super) fn find<T>(p: &CachePlan, f: impl Fn(&NodeOp) -> Option<T>) -> T {
    p.nodes
        .iter()
        .find_map(|n| f(&n.op))
        .unwrap_or_else(|| panic!("no such node in {:?}", p.nodes))
}

mod aggregate;
mod functions;
mod joins;
mod keys;
mod prune;
mod setop;
mod single;
mod subquery;
