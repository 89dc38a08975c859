//! Column pruning: base tables feed only the columns something above reads.
//!
//! Lowering reads every column of every relation, so a join's state and output would hold
//! whole rows of every table it joins (a vote joined to a story and its author: 32 values,
//! of which a count needs 2). This pass finds, top-down, which output columns of each node
//! something reads (the reader's key, order, output, residual and range; every operator's
//! own columns), puts a Project of just those above each base table, and renumbers the
//! columns of everything above. Only base tables are narrowed; a node whose output is
//! defined by all of its input's columns (DISTINCT, TopK's whole-row ties, UNION) keeps
//! them all. The base-table columns read are unchanged, so privileges are checked exactly
//! as before ([`CachePlan::relation_columns_read`]).

use super::util::map_columns;
use crate::plan::{CachePlan, Expr, NodeOp, NodeRef, OrderKey, PlanNode};

/// `plan` with each base table narrowed to the columns read above it.
pub fn prune_columns(plan: CachePlan) -> CachePlan {
    let needed = needed_columns(&plan);
    if plan
        .nodes
        .iter()
        .zip(&needed)
        .all(|(n, need)| !matches!(n.op, NodeOp::Base { .. }) || need.iter().all(|&b| b))
    {
        return plan;
    }
    #[cfg(debug_assertions)]
    let read_before = plan.relation_columns_read();
    let pruned = rebuild(plan, &needed);
    #[cfg(debug_assertions)]
    debug_assert_eq!(
        pruned.relation_columns_read(),
        read_before,
        "pruning changed the columns read"
    );
    pruned
}

/// For each node, which of its output columns something reads: the reader's columns above
/// the last node, and whole rows below DISTINCT, TopK and UNION.
fn needed_columns(plan: &CachePlan) -> Vec<Vec<bool>> {
    let width = plan.reader_types().len();
    // The reader computes an empty key's row over the last node's columns itself.
    let mut top = vec![plan.empty_key_row.is_some(); width];
    let mut mark = |c: usize| {
        if let Some(slot) = top.get_mut(c) {
            *slot = true;
        }
    };
    plan.key.iter().for_each(|&c| mark(c));
    plan.order_by.iter().for_each(|o| mark(o.column));
    plan.output.iter().for_each(|o| mark(o.column));
    if let Some(r) = &plan.residual {
        r.for_each_column(&mut mark);
    }
    if let Some(r) = &plan.range {
        mark(r.column);
    }
    plan.columns_needed(top, true)
}

/// Rebuilds the nodes bottom-up with each base table narrowed, renumbering columns.
fn rebuild(mut plan: CachePlan, needed: &[Vec<bool>]) -> CachePlan {
    let old_nodes = std::mem::take(&mut plan.nodes);
    let mut nodes: Vec<PlanNode> = Vec::with_capacity(old_nodes.len() + plan.relations.len());
    // Per old node: its new index, and each old output column's new position.
    let mut at: Vec<NodeRef> = Vec::with_capacity(old_nodes.len());
    let mut cols: Vec<Vec<Option<usize>>> = Vec::with_capacity(old_nodes.len());
    let col = |cols: &Vec<Vec<Option<usize>>>, node: NodeRef, c: usize| -> usize {
        cols[node][c].expect("a column read above is kept")
    };
    for (n, node) in old_nodes.into_iter().enumerate() {
        let identity = |width: usize| (0..width).map(Some).collect::<Vec<_>>();
        let (op, types, map) = match node.op {
            NodeOp::Base { relation } => {
                nodes.push(PlanNode {
                    op: NodeOp::Base { relation },
                    types: node.types.clone(),
                });
                let keep: Vec<usize> = (0..node.types.len()).filter(|&c| needed[n][c]).collect();
                if keep.len() == node.types.len() {
                    at.push(nodes.len() - 1);
                    cols.push(identity(keep.len()));
                    continue;
                }
                let mut map = vec![None; node.types.len()];
                for (new, &old) in keep.iter().enumerate() {
                    map[old] = Some(new);
                }
                (
                    NodeOp::Project {
                        input: nodes.len() - 1,
                        exprs: keep.iter().map(|&c| Expr::Column(c)).collect(),
                    },
                    keep.iter().map(|&c| node.types[c].clone()).collect(),
                    map,
                )
            }
            NodeOp::Filter { input, predicate } => (
                NodeOp::Filter {
                    input: at[input],
                    predicate: map_columns(predicate, &mut |c| col(&cols, input, c)),
                },
                nodes[at[input]].types.clone(),
                cols[input].clone(),
            ),
            NodeOp::Project { input, exprs } => (
                NodeOp::Project {
                    input: at[input],
                    exprs: exprs
                        .into_iter()
                        .map(|e| map_columns(e, &mut |c| col(&cols, input, c)))
                        .collect(),
                },
                node.types.clone(),
                identity(node.types.len()),
            ),
            NodeOp::Join {
                left,
                right,
                kind,
                on,
            } => {
                let new_lw = nodes[at[left]].types.len();
                let mut types = nodes[at[left]].types.clone();
                types.extend(nodes[at[right]].types.iter().cloned());
                let mut map = cols[left].clone();
                map.extend(cols[right].iter().map(|c| c.map(|c| c + new_lw)));
                (
                    NodeOp::Join {
                        left: at[left],
                        right: at[right],
                        kind,
                        on: on
                            .iter()
                            .map(|&(l, r)| (col(&cols, left, l), col(&cols, right, r)))
                            .collect(),
                    },
                    types,
                    map,
                )
            }
            NodeOp::SemiJoin {
                left,
                right,
                on,
                anti,
                null_aware,
            } => (
                NodeOp::SemiJoin {
                    left: at[left],
                    right: at[right],
                    on: on
                        .iter()
                        .map(|&(l, r)| (col(&cols, left, l), col(&cols, right, r)))
                        .collect(),
                    anti,
                    null_aware,
                },
                nodes[at[left]].types.clone(),
                cols[left].clone(),
            ),
            NodeOp::Aggregate {
                input,
                group_by,
                aggregates,
            } => (
                NodeOp::Aggregate {
                    input: at[input],
                    group_by: group_by.iter().map(|&g| col(&cols, input, g)).collect(),
                    aggregates: aggregates
                        .into_iter()
                        .map(|mut a| {
                            a.arg = a.arg.map(|c| col(&cols, input, c));
                            a
                        })
                        .collect(),
                },
                node.types.clone(),
                identity(node.types.len()),
            ),
            NodeOp::Distinct { input } => (
                NodeOp::Distinct { input: at[input] },
                nodes[at[input]].types.clone(),
                cols[input].clone(),
            ),
            NodeOp::TopK {
                input,
                group_by,
                order,
                limit,
            } => (
                NodeOp::TopK {
                    input: at[input],
                    group_by: group_by.iter().map(|&g| col(&cols, input, g)).collect(),
                    order: order
                        .iter()
                        .map(|o| OrderKey {
                            column: col(&cols, input, o.column),
                            ..*o
                        })
                        .collect(),
                    limit,
                },
                nodes[at[input]].types.clone(),
                cols[input].clone(),
            ),
            NodeOp::Union { inputs } => (
                NodeOp::Union {
                    inputs: inputs.iter().map(|&i| at[i]).collect(),
                },
                node.types.clone(),
                identity(node.types.len()),
            ),
        };
        nodes.push(PlanNode { op, types });
        at.push(nodes.len() - 1);
        cols.push(map);
    }
    let last = cols.len() - 1;
    let top = |c: usize| col(&cols, last, c);
    plan.key = plan.key.iter().map(|&c| top(c)).collect();
    plan.order_by = plan
        .order_by
        .iter()
        .map(|o| OrderKey {
            column: top(o.column),
            ..*o
        })
        .collect();
    for o in &mut plan.output {
        o.column = top(o.column);
    }
    plan.residual = plan
        .residual
        .take()
        .map(|r| map_columns(r, &mut |c| top(c)));
    if let Some(r) = &mut plan.range {
        r.column = top(r.column);
    }
    if let Some(e) = &mut plan.empty_key_row {
        e.aggregate = at[e.aggregate];
    }
    plan.nodes = nodes;
    plan
}
