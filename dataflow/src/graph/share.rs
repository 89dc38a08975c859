//! Sharing operator nodes between caches.
//!
//! Two plan nodes compute the same thing when they apply the same operator (same expressions,
//! columns, functions, output types) to the same graph nodes on the same inputs. A new cache
//! therefore walks its plan in topological order and, for each node, looks for a *live* graph
//! node (one that already receives every change) with an equal [`Signature`]; if there is
//! one, the cache uses it instead of building its own, and the node's user count goes up.
//! Dropping a cache lowers the count of every node it used and removes only the nodes no
//! cache uses any more.
//!
//! A new node whose input is a shared node must start from that node's present output. A
//! stateful operator (join, semi-join, aggregate, DISTINCT, TopK) can list it
//! ([`Operator::current_output`](crate::ops::Operator::current_output)), plus the poison it
//! emitted, which the graph keeps per stateful node in an [`OutputLedger`]. A stateless one
//! (filter, project, union) cannot, so [`plan_reuse`] copies a shared stateless node that
//! would feed a new one, down to the nearest stateful node or base table. So does a shared
//! node whose output is larger than [`GraphLimits::seed_rows_max`](super::GraphLimits): its
//! copy is taken under the graph's lock, and filling a new node from storage instead never
//! holds the lock for long.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use larder_sql::plan::{NodeOp, NodeRef};
use larder_sql::value::{SqlType, Value};

use crate::ops::{Batch, Record};
use crate::order::structural_cmp;

/// What a node computes, with its inputs named by graph node id.
#[derive(Debug, PartialEq)]
pub(super) struct Signature {
    op: NodeOp,
    types: Vec<SqlType>,
}

impl Signature {
    /// The signature of a plan node whose inputs are the graph nodes `inputs` (in the order
    /// of [`NodeOp::inputs`]).
    pub(super) fn new(op: &NodeOp, types: &[SqlType], inputs: &[u64]) -> Signature {
        let mut next = inputs.iter();
        let mut map = |_: NodeRef| -> NodeRef {
            // `inputs` lists exactly the op's inputs in order; a graph id fits a NodeRef.
            *next.next().expect("one graph node per input") as NodeRef
        };
        Signature {
            op: with_inputs(op, &mut map),
            types: types.to_vec(),
        }
    }

    /// A hash for the index: equal signatures hash equally (the index confirms with `==`).
    pub(super) fn bucket(&self) -> u64 {
        let mut h = DefaultHasher::new();
        format!("{:?}", self).hash(&mut h);
        h.finish()
    }
}

/// `op` with each input replaced by `map(input)`, in the order of [`NodeOp::inputs`].
fn with_inputs(op: &NodeOp, map: &mut impl FnMut(NodeRef) -> NodeRef) -> NodeOp {
    let mut op = op.clone();
    match &mut op {
        NodeOp::Base { .. } => {}
        NodeOp::Filter { input, .. }
        | NodeOp::Project { input, .. }
        | NodeOp::Aggregate { input, .. }
        | NodeOp::Distinct { input }
        | NodeOp::TopK { input, .. } => *input = map(*input),
        NodeOp::Join { left, right, .. } | NodeOp::SemiJoin { left, right, .. } => {
            *left = map(*left);
            *right = map(*right);
        }
        NodeOp::Union { inputs } => inputs.iter_mut().for_each(|i| *i = map(*i)),
    }
    op
}

/// For each plan node, the live graph node to use instead of a new one (`None`: build it).
///
/// `find(i, parents)` answers whether a live node computes plan node `i` over the graph nodes
/// `parents`; `base(i)` gives the root of a base-table node; `seedable(n)` says whether graph
/// node `n` can hand its output to a new node. A node is reused only if all its inputs are.
/// Then every reused node that feeds a node to be built and is not seedable is itself built
/// instead, which may in turn expose its own inputs; walking the plan backwards settles this
/// in one pass.
pub(super) fn plan_reuse(
    inputs: &[Vec<NodeRef>],
    base: &impl Fn(NodeRef) -> Option<u64>,
    find: &mut impl FnMut(NodeRef, &[u64]) -> Option<u64>,
    seedable: &impl Fn(u64) -> bool,
) -> Vec<Option<u64>> {
    let mut reuse: Vec<Option<u64>> = Vec::with_capacity(inputs.len());
    for (i, ins) in inputs.iter().enumerate() {
        if let Some(root) = base(i) {
            reuse.push(Some(root));
            continue;
        }
        let parents: Option<Vec<u64>> = ins.iter().map(|&p| reuse[p]).collect();
        reuse.push(parents.and_then(|parents| find(i, &parents)));
    }
    for i in (0..inputs.len()).rev() {
        if reuse[i].is_some() {
            continue;
        }
        for &p in &inputs[i] {
            if base(p).is_none() && reuse[p].is_some_and(|n| !seedable(n)) {
                reuse[p] = None;
            }
        }
    }
    reuse
}

/// A poison row as a map key, ordered structurally (unknown columns first).
#[derive(Debug, Clone)]
struct PoisonRow(Vec<Option<Value>>);

impl PartialEq for PoisonRow {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}

impl Eq for PoisonRow {}

impl PartialOrd for PoisonRow {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for PoisonRow {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let by_value = self.0.iter().zip(&other.0).map(|pair| match pair {
            (None, None) => std::cmp::Ordering::Equal,
            (None, Some(_)) => std::cmp::Ordering::Less,
            (Some(_), None) => std::cmp::Ordering::Greater,
            (Some(a), Some(b)) => structural_cmp(a, b),
        });
        by_value
            .fold(std::cmp::Ordering::Equal, |acc, o| acc.then(o))
            .then(self.0.len().cmp(&other.0.len()))
    }
}

/// What a stateful node has emitted and not retracted: how many rows, and the poison.
/// Operators keep no poison in their state (see [`crate::ops`]), so the graph counts it on
/// the way out; with the operator's current rows it is the node's whole present output.
#[derive(Debug, Default)]
pub(super) struct OutputLedger {
    /// Net rows emitted (the present output's size).
    pub(super) rows: i64,
    poison: BTreeMap<PoisonRow, i64>,
}

impl OutputLedger {
    pub(super) fn record(&mut self, batch: &Batch) {
        for record in batch {
            match record {
                Record::Row { diff, .. } => self.rows = self.rows.saturating_add(*diff),
                Record::Poison { row, diff } => {
                    let entry = self.poison.entry(PoisonRow(row.clone())).or_insert(0);
                    *entry = entry.saturating_add(*diff);
                    if *entry == 0 {
                        self.poison.remove(&PoisonRow(row.clone()));
                    }
                }
            }
        }
    }

    pub(super) fn poison(&self) -> impl Iterator<Item = Record> + '_ {
        self.poison.iter().map(|(row, &diff)| Record::Poison {
            row: row.0.clone(),
            diff,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plan: 0 base, 1 filter(0), 2 aggregate(1), 3 project(2), 4 new node over 3.
    #[test]
    fn a_shared_stateless_node_feeding_a_new_one_is_copied_down_to_state() {
        let inputs = vec![vec![], vec![0], vec![1], vec![2], vec![3]];
        let base = |i: NodeRef| (i == 0).then_some(100);
        // Graph: 100 root, 101 filter, 102 aggregate (stateful), 103 project; nothing for 4.
        let mut find = |i: NodeRef, _: &[u64]| (i < 4).then_some(100 + i as u64);
        let stateful = |n: u64| n == 102;
        let reuse = plan_reuse(&inputs, &base, &mut find, &stateful);
        assert_eq!(reuse, vec![Some(100), Some(101), Some(102), None, None]);
    }

    #[test]
    fn a_node_over_a_new_node_is_new() {
        let inputs = vec![vec![], vec![0], vec![1]];
        let base = |i: NodeRef| (i == 0).then_some(7);
        let mut find = |i: NodeRef, parents: &[u64]| match (i, parents) {
            (1, _) => None,
            (2, _) => Some(9),
            _ => None,
        };
        let reuse = plan_reuse(&inputs, &base, &mut find, &|_| true);
        assert_eq!(reuse, vec![Some(7), None, None]);
    }

    #[test]
    fn ledger_keeps_net_rows_and_poison() {
        let mut l = OutputLedger::default();
        let p = |diff| Record::Poison {
            row: vec![None, Some(Value::Int(1))],
            diff,
        };
        let row = |diff| Record::Row {
            row: vec![Value::Int(2)],
            diff,
        };
        l.record(&vec![p(1), p(1), row(3)]);
        l.record(&vec![p(-1), row(-1)]);
        assert_eq!(l.poison().collect::<Vec<_>>(), vec![p(1)]);
        assert_eq!(l.rows, 2);
        l.record(&vec![p(-1)]);
        assert_eq!(l.poison().count(), 0);
    }
}
