//! Which join sides read their rows from storage (see [`crate::stored`]).
//!
//! A side qualifies when it is a base table reached through filters and projections only,
//! each of its `on` columns is a plain column of that table, and the column's type is one
//! whose stored encoding is equal exactly when the values are (integers, text, booleans,
//! uuids, dates, timestamps) and the same as the other side's column, so that the other
//! side's values find the stored rows through the primary key or a secondary index. The
//! right side is preferred (a LEFT join's left side never qualifies: rows without matches
//! are output too); at most one side of a join reads storage, the other keeps its rows in
//! memory. The side reads storage from the start: while its cache fills it sees the fill's
//! snapshot, so its rows are never held in memory at all.

use larder_sql::plan::{CachePlan, Expr, JoinKind, NodeOp};
use larder_sql::value::{SqlType, TableSchema};

use super::TableId;
use crate::build::{compile, BuiltNode};
use crate::error::GraphError;
use crate::graph::GraphLimits;
use crate::ops::join_stored::StoredSide;
use crate::stored::StoredIndex;

/// Types whose values are found in storage by their encoding: one class per family of
/// types that share a value representation.
fn lookup_class(ty: &SqlType) -> Option<u8> {
    Some(match ty {
        SqlType::Int2 | SqlType::Int4 | SqlType::Int8 => 0,
        SqlType::Text => 1,
        SqlType::Bool => 2,
        SqlType::Uuid => 3,
        SqlType::Date => 4,
        SqlType::Timestamp => 5,
        SqlType::TimestampTz => 6,
        _ => return None,
    })
}

/// A side that qualifies, before its filters and projections are compiled.
struct SidePlan {
    side: usize,
    relation: usize,
    columns: Vec<usize>,
    /// Plan nodes from the base table up to the join input.
    chain: Vec<usize>,
}

/// For the join at plan node `join`, the side that can be read from storage.
fn side_plan(plan: &CachePlan, join: usize, schemas: &[&TableSchema]) -> Option<SidePlan> {
    let NodeOp::Join {
        left,
        right,
        on,
        kind,
    } = &plan.nodes.get(join)?.op
    else {
        return None;
    };
    // A LEFT join's left rows are its output even without matches: they are kept.
    let sides: &[usize] = match kind {
        JoinKind::Left => &[1],
        _ => &[1, 0],
    };
    for &side in sides {
        let (input, other) = if side == 1 {
            (*right, *left)
        } else {
            (*left, *right)
        };
        let mut chain = Vec::new();
        let mut n = input;
        let relation = loop {
            match &plan.nodes.get(n)?.op {
                NodeOp::Base { relation } => break *relation,
                NodeOp::Filter { input, .. } | NodeOp::Project { input, .. } => {
                    chain.push(n);
                    n = *input;
                }
                _ => break usize::MAX,
            }
        };
        if relation == usize::MAX {
            continue;
        }
        chain.reverse();
        let schema = schemas.get(relation)?;
        // The base column each column of the join input is, where it is one.
        let mut lineage: Vec<Option<usize>> = (0..schema.columns.len()).map(Some).collect();
        for &c in &chain {
            if let NodeOp::Project { exprs, .. } = &plan.nodes[c].op {
                lineage = exprs
                    .iter()
                    .map(|e| match e {
                        Expr::Column(i) => lineage.get(*i).copied().flatten(),
                        _ => None,
                    })
                    .collect();
            }
        }
        let other_types = &plan.nodes.get(other)?.types;
        let columns: Option<Vec<usize>> = on
            .iter()
            .map(|&(l, r)| {
                let (own, theirs) = if side == 1 { (r, l) } else { (l, r) };
                let base = lineage.get(own).copied().flatten()?;
                let class = lookup_class(&schema.columns.get(base)?.ty)?;
                (lookup_class(other_types.get(theirs)?) == Some(class)).then_some(base)
            })
            .collect();
        if let Some(columns) = columns {
            return Some(SidePlan {
                side,
                relation,
                columns,
                chain,
            });
        }
    }
    None
}

/// Which input (0 left, 1 right) of the join at plan node `join` is read from storage.
pub(super) fn stored_side_of(
    plan: &CachePlan,
    join: usize,
    schemas: &[&TableSchema],
) -> Option<usize> {
    side_plan(plan, join, schemas).map(|p| p.side)
}

impl super::Graph {
    /// Whether a join of `cache` reads a side from storage.
    pub fn cache_reads_storage(&self, cache: super::CacheId) -> bool {
        self.caches.get(&cache).is_some_and(|c| {
            c.nodes
                .iter()
                .any(|n| self.nodes.get(n).is_some_and(|n| n.op.reads_storage()))
        })
    }

    /// The secondary indexes a cache of `plan` would read from storage: build them before
    /// adding it with [`add_cache_with`](super::Graph::add_cache_with) and storage, so its
    /// fill can read them as of its snapshot.
    pub fn plan_stored_indexes(&self, plan: &CachePlan) -> Vec<StoredIndex> {
        if !self.limits.stored_joins {
            return Vec::new();
        }
        let mut tables = Vec::with_capacity(plan.relations.len());
        for r in &plan.relations {
            match self.table_by_name(&r.schema, &r.name) {
                Some(t) => tables.push(t),
                None => return Vec::new(),
            }
        }
        let schemas: Vec<&TableSchema> = tables.iter().map(|t| &self.tables[t].schema).collect();
        // A partial cache keyed on other columns than the primary key reads their index.
        let partial = self
            .partial_shape(plan, &tables)
            .filter(|(_, shape)| shape.by_index)
            .map(|(table, shape)| StoredIndex {
                table,
                columns: shape.columns,
            });
        let mut out: Vec<StoredIndex> = (0..plan.nodes.len())
            .filter_map(|i| side_plan(plan, i, &schemas))
            .filter(|p| primary_key_order(&p.columns, &schemas[p.relation].key).is_none())
            .map(|p| StoredIndex {
                table: tables[p.relation],
                columns: p.columns,
            })
            .chain(partial)
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// For each plan node, the stored side of a join that has one. Compiles the sides' filters
/// and projections a second time: each side keeps its own stateless copies.
pub(super) fn stored_sides(
    plan: &CachePlan,
    relation_tables: &[TableId],
    schemas: &[&TableSchema],
    limits: &GraphLimits,
) -> Result<Vec<Option<StoredSide>>, GraphError> {
    let plans: Vec<Option<SidePlan>> = (0..plan.nodes.len())
        .map(|i| side_plan(plan, i, schemas))
        .collect();
    if plans.iter().all(Option::is_none) {
        return Ok(plans.into_iter().map(|_| None).collect());
    }
    let relation_types: Vec<Vec<SqlType>> = schemas
        .iter()
        .map(|s| s.columns.iter().map(|c| c.ty.clone()).collect())
        .collect();
    let mut ops: Vec<Option<BuiltNode>> = compile(plan, &relation_types, limits)?
        .nodes
        .into_iter()
        .map(Some)
        .collect();
    let mut out = Vec::with_capacity(plans.len());
    for p in plans {
        let Some(p) = p else {
            out.push(None);
            continue;
        };
        let mut chain = Vec::with_capacity(p.chain.len());
        for c in &p.chain {
            match ops.get_mut(*c).and_then(Option::take) {
                Some(BuiltNode::Op { op, .. }) => chain.push(op),
                _ => {
                    // A node two sides share (a self-join's one chain): compile it again.
                    match compile(plan, &relation_types, limits)?
                        .nodes
                        .swap_remove(*c)
                    {
                        BuiltNode::Op { op, .. } => chain.push(op),
                        BuiltNode::Base { .. } => unreachable!("chains hold no base node"),
                    }
                }
            }
        }
        let schema = schemas[p.relation];
        let primary_key = primary_key_order(&p.columns, &schema.key);
        out.push(Some(StoredSide {
            side: p.side,
            table: relation_tables[p.relation],
            columns: p.columns,
            primary_key,
            chain,
        }));
    }
    Ok(out)
}

/// When `columns` are exactly the key columns `key` (each once): for each key column, its
/// position in `columns`.
fn primary_key_order(columns: &[usize], key: &[usize]) -> Option<Vec<usize>> {
    if key.is_empty() || columns.len() != key.len() {
        return None;
    }
    key.iter()
        .map(|k| columns.iter().position(|c| c == k))
        .collect::<Option<Vec<usize>>>()
        .filter(|order| {
            let mut seen = order.clone();
            seen.sort_unstable();
            seen.dedup();
            seen.len() == order.len()
        })
}

#[cfg(test)]
mod tests {
    use super::primary_key_order;

    #[test]
    fn primary_key_lookups_need_every_key_column_once() {
        assert_eq!(primary_key_order(&[3], &[3]), Some(vec![0]));
        assert_eq!(primary_key_order(&[2, 0], &[0, 2]), Some(vec![1, 0]));
        assert_eq!(primary_key_order(&[0, 0], &[0, 2]), None);
        assert_eq!(primary_key_order(&[0], &[0, 2]), None);
        assert_eq!(primary_key_order(&[0], &[]), None);
    }
}
