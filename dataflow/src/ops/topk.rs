//! TopK: per group, the first `limit` rows by `ORDER BY` then whole-row tie-break.
//!
//! Every input row of a group is kept (ordered), so deleting a row of the top k pulls in the
//! next one. Per batch, the top k of each touched group is taken before and after, and only
//! the difference is emitted.

use std::any::Any;
use std::collections::BTreeMap;

use rustc_hash::FxHashMap;
use std::sync::Arc;

use larder_sql::plan::OrderKey;
use larder_sql::value::Key;

use super::gate::Gate;
use super::{group_key, known, mem, poison_with, Batch, Operator, Record};
use crate::order::SortedRow;

type Group = BTreeMap<SortedRow, i64>;

#[derive(Debug)]
pub struct TopKOp {
    group_by: Vec<usize>,
    order: Arc<[OrderKey]>,
    limit: usize,
    width: usize,
    groups: FxHashMap<Key, Group>,
    /// In a partial cache: groups are kept only for the keys its reader holds.
    gate: Option<Gate>,
}

/// The first `limit` copies of a group, as (row, copies).
fn top(group: Option<&Group>, limit: usize) -> Vec<(SortedRow, i64)> {
    let mut out = Vec::new();
    let mut left = limit as i64;
    for (row, &count) in group.into_iter().flatten() {
        if left <= 0 {
            break;
        }
        if count > 0 {
            let take = count.min(left);
            out.push((row.clone(), take));
            left -= take;
        }
    }
    out
}

impl TopKOp {
    pub fn new(group_by: Vec<usize>, order: Vec<OrderKey>, limit: usize, width: usize) -> TopKOp {
        TopKOp {
            group_by,
            order: order.into(),
            limit,
            width,
            groups: FxHashMap::default(),
            gate: None,
        }
    }

    /// Whether changes to the group `key` are kept (see [`Gate`]).
    fn keeps(&self, key: &Key) -> bool {
        Gate::keeps(self.gate.as_ref(), key, || self.groups.contains_key(key))
    }
}

impl Operator for TopKOp {
    fn name(&self) -> &'static str {
        "topk"
    }

    fn process(&mut self, _input: usize, batch: Batch) -> Batch {
        let mut out = Vec::new();
        // Top k of every touched group before this batch.
        let mut before: BTreeMap<Key, Vec<(SortedRow, i64)>> = BTreeMap::new();
        for record in batch {
            match record {
                Record::Row { row, diff } => {
                    let key = group_key(&row, &self.group_by);
                    if !self.keeps(&key) {
                        continue;
                    }
                    if !before.contains_key(&key) {
                        before.insert(key.clone(), top(self.groups.get(&key), self.limit));
                    }
                    let group = mem::entry(&mut self.groups, key.clone());
                    super::bump_sorted(
                        group,
                        SortedRow {
                            order: Arc::clone(&self.order),
                            row: row.into(),
                        },
                        diff,
                    );
                    if group.is_empty() {
                        mem::remove(&mut self.groups, &key);
                    }
                }
                Record::Poison { row, diff } => {
                    // It may displace any row of its group.
                    let row = match known(&row, &self.group_by) {
                        Some(values) if !self.keeps(&Key::from_values(&values)) => continue,
                        Some(values) => poison_with(self.width, &self.group_by, &values),
                        None => vec![None; self.width],
                    };
                    out.push(Record::Poison { row, diff });
                }
            }
        }
        for (key, old) in before {
            let mut net: BTreeMap<SortedRow, i64> = BTreeMap::new();
            for (row, c) in old {
                *net.entry(row).or_default() -= c;
            }
            for (row, c) in top(self.groups.get(&key), self.limit) {
                *net.entry(row).or_default() += c;
            }
            out.extend(
                net.into_iter()
                    .filter(|(_, d)| *d != 0)
                    .map(|(row, diff)| Record::Row {
                        row: row.row.to_vec(),
                        diff,
                    }),
            );
        }
        out
    }

    fn gate_slot(&mut self) -> Option<&mut Option<Gate>> {
        Some(&mut self.gate)
    }

    fn forget_key(&mut self, key: &Key) {
        let Some(group_key) = Gate::forgotten(self.gate.as_ref(), key) else {
            return;
        };
        if let Some(group) = mem::remove(&mut self.groups, &group_key) {
            mem::charge(-mem::counts_bytes::<SortedRow>(
                group.keys().map(|r| &*r.row),
            ));
        }
    }

    fn current_output(&self) -> Option<Batch> {
        Some(
            self.groups
                .values()
                .flat_map(|g| top(Some(g), self.limit))
                .map(|(row, diff)| Record::Row {
                    row: row.row.to_vec(),
                    diff,
                })
                .collect(),
        )
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::{consolidate, del, ins, rows};

    fn desc(column: usize) -> OrderKey {
        OrderKey {
            column,
            descending: true,
            nulls_first: false,
        }
    }

    #[test]
    fn keeps_top_k_per_group_and_refills_from_below() {
        // Per group (col 0), the 2 largest col 1.
        let mut t = TopKOp::new(vec![0], vec![desc(1)], 2, 2);
        let out = t.process(
            0,
            vec![ins(&[1, 5]), ins(&[1, 7]), ins(&[1, 6]), ins(&[2, 1])],
        );
        assert_eq!(
            consolidate(out),
            rows(&[(&[1, 6], 1), (&[1, 7], 1), (&[2, 1], 1)])
        );
        // Deleting inside the top k refills from below.
        let out = t.process(0, vec![del(&[1, 7])]);
        assert_eq!(consolidate(out), rows(&[(&[1, 5], 1), (&[1, 7], -1)]));
        // Below the top k: nothing visible.
        assert!(consolidate(t.process(0, vec![ins(&[1, 0])])).is_empty());
        // Duplicates count as separate rows.
        let out = t.process(0, vec![ins(&[1, 9]), ins(&[1, 9])]);
        assert_eq!(
            consolidate(out),
            rows(&[(&[1, 5], -1), (&[1, 6], -1), (&[1, 9], 2)])
        );
        t.process(
            0,
            vec![del(&[1, 9]), del(&[1, 9]), del(&[1, 6]), del(&[1, 5])],
        );
        t.process(0, vec![del(&[1, 0]), del(&[2, 1])]);
        assert!(t.groups.is_empty(), "state freed");
    }

    #[test]
    fn limit_zero_emits_nothing() {
        let mut t = TopKOp::new(vec![], vec![desc(0)], 0, 1);
        assert!(t.process(0, vec![ins(&[1])]).is_empty());
    }
}
