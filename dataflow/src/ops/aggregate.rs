//! GROUP BY with COUNT/SUM/AVG/MIN/MAX (each optionally DISTINCT).
//!
//! Each group keeps its row count and one [`Accumulator`] per aggregate. A batch updates the
//! touched groups, then emits only their net change: retract the row last emitted, insert
//! the new one (nothing if equal). A group disappears with its last row, except the global
//! group of an aggregate without GROUP BY, which always has one row and emits it at creation.
//! A value that cannot be computed exactly turns the group's row into poison.

use rustc_hash::{FxHashMap, FxHashSet};
use std::any::Any;

use larder_sql::value::{Key, Row, Value};

use super::accum::{AccKind, Accumulator};
use super::gate::Gate;
use super::{bump, group_key, known, mem, poison_with, Batch, Operator, Record, RowCounts};
use crate::order::{structural_cmp, OrdRow};

/// One aggregate of the node: how it folds, and which input column it reads.
#[derive(Clone, Copy, Debug)]
pub struct AggSpec {
    pub(crate) kind: AccKind,
    pub(crate) arg: Option<usize>,
    pub(crate) distinct: bool,
}

/// What a group last emitted.
#[derive(Clone, Debug, PartialEq)]
enum Out {
    Row(Row),
    Poison(Vec<Option<Value>>),
}

impl Out {
    fn record(self, diff: i64) -> Record {
        match self {
            Out::Row(row) => Record::Row { row, diff },
            Out::Poison(row) => Record::Poison { row, diff },
        }
    }
}

#[derive(Debug)]
struct Group {
    /// The GROUP BY values as they appear in the group's rows (SQL-equal values may be
    /// written differently, e.g. `1.5` and `1.50`): the output shows the first present one.
    reps: RowCounts,
    rows: i64,
    accs: Vec<Accumulator>,
    emitted: Option<Out>,
}

#[derive(Debug)]
pub struct AggregateOp {
    group_by: Vec<usize>,
    specs: Vec<AggSpec>,
    groups: FxHashMap<Key, Group>,
    /// In a partial cache: groups are kept only for the keys its reader holds.
    gate: Option<Gate>,
}

impl AggregateOp {
    pub fn new(group_by: Vec<usize>, specs: Vec<AggSpec>) -> AggregateOp {
        AggregateOp {
            group_by,
            specs,
            groups: FxHashMap::default(),
            gate: None,
        }
    }

    /// Whether changes to the group `key` are kept: always, except in a partial cache for a
    /// group it does not have whose key the reader does not hold (a hole).
    fn keeps(&self, key: &Key) -> bool {
        Gate::keeps(self.gate.as_ref(), key, || self.groups.contains_key(key))
    }

    /// Every byte charged for a group (it goes without its rows being retracted).
    fn charged(&self, key: &Key, group: &Group) -> i64 {
        let reps = mem::counts_bytes::<OrdRow>(group.reps.keys().map(|r| r.0.as_slice()));
        let accs: i64 = group.accs.iter().map(Accumulator::charged_bytes).sum();
        mem::key_bytes(key) + self.group_bytes() + emitted_bytes(&group.emitted) + reps + accs
    }

    /// A group's own bytes besides its key, representatives, accumulated values and output:
    /// its map slots and its accumulators' allocation.
    fn group_bytes(&self) -> i64 {
        mem::slot_bytes::<Key, Group>()
            + mem::alloc_bytes(self.specs.len() * std::mem::size_of::<Accumulator>()) as i64
    }

    fn width(&self) -> usize {
        self.group_by.len() + self.specs.len()
    }

    fn new_group(&self) -> Group {
        Group {
            reps: RowCounts::new(),
            rows: 0,
            accs: self
                .specs
                .iter()
                .map(|s| Accumulator::new(s.kind, s.distinct))
                .collect(),
            emitted: None,
        }
    }

    fn output(&self, group: &Group) -> Option<Out> {
        if group.rows == 0 && !self.group_by.is_empty() {
            return None;
        }
        let values: Result<Vec<Value>, _> =
            group.accs.iter().map(|a| a.value(group.rows)).collect();
        let keys: Vec<usize> = (0..self.group_by.len()).collect();
        let rep = group.reps.iter().find(|(_, &c)| c > 0).map(|(r, _)| &r.0);
        let empty = Vec::new();
        Some(match (values, rep) {
            (Ok(aggs), Some(rep)) if group.rows > 0 => {
                Out::Row(rep.iter().cloned().chain(aggs).collect())
            }
            (Ok(aggs), None) if group.rows == 0 => Out::Row(aggs),
            (_, rep) => Out::Poison(poison_with(self.width(), &keys, rep.unwrap_or(&empty))),
        })
    }
}

/// The bytes of a group's current output row (kept to retract it later).
fn emitted_bytes(out: &Option<Out>) -> i64 {
    match out {
        Some(Out::Row(row)) => mem::row_bytes(row),
        _ => 0,
    }
}

impl Operator for AggregateOp {
    fn name(&self) -> &'static str {
        "aggregate"
    }

    fn initial(&mut self) -> Batch {
        if !self.group_by.is_empty() {
            return Vec::new();
        }
        let mut group = self.new_group();
        let out = self.output(&group);
        group.emitted = out.clone();
        let key = Key(Vec::new());
        mem::charge(mem::key_bytes(&key) + self.group_bytes() + emitted_bytes(&out));
        self.groups.insert(key, group);
        out.into_iter().map(|o| o.record(1)).collect()
    }

    fn process(&mut self, _input: usize, batch: Batch) -> Batch {
        let mut out = Vec::new();
        let mut touched: FxHashSet<Key> = FxHashSet::default();
        for record in batch {
            match record {
                Record::Row { row, diff } => {
                    let key = group_key(&row, &self.group_by);
                    if !self.keeps(&key) {
                        continue;
                    }
                    if !self.groups.contains_key(&key) {
                        let group = self.new_group();
                        mem::charge(mem::key_bytes(&key) + self.group_bytes());
                        self.groups.insert(key.clone(), group);
                    }
                    let group = self.groups.get_mut(&key).expect("inserted above");
                    group.rows = group.rows.saturating_add(diff);
                    // Nearly always the group's rows all show its values one way: count the
                    // row against that representation without copying the values.
                    let one_rep = group.reps.len() == 1;
                    let same_rep = match group.reps.iter_mut().next() {
                        Some((rep, count)) if one_rep => {
                            let same = self
                                .group_by
                                .iter()
                                .zip(rep.0.iter())
                                .all(|(&c, v)| structural_cmp(&row[c], v).is_eq());
                            let kept = count.saturating_add(diff);
                            if same && kept != 0 {
                                *count = kept;
                            }
                            same && kept != 0
                        }
                        _ => false,
                    };
                    if !same_rep {
                        let values = self.group_by.iter().map(|&c| row[c].clone()).collect();
                        bump(&mut group.reps, values, diff);
                    }
                    for (acc, spec) in group.accs.iter_mut().zip(&self.specs) {
                        let value = spec.arg.map_or(&Value::Null, |a| &row[a]);
                        acc.update(value, diff);
                    }
                    touched.insert(key);
                }
                Record::Poison { row, diff } => {
                    let keys: Vec<usize> = (0..self.group_by.len()).collect();
                    let row = match known(&row, &self.group_by) {
                        Some(values) if !self.keeps(&Key::from_values(&values)) => continue,
                        Some(values) => poison_with(self.width(), &keys, &values),
                        None => vec![None; self.width()],
                    };
                    out.push(Record::Poison { row, diff });
                }
            }
        }
        for key in touched {
            let group = &self.groups[&key];
            let new = self.output(group);
            if new != group.emitted {
                if let Some(old) = group.emitted.clone() {
                    out.push(old.record(-1));
                }
                if let Some(new) = new.clone() {
                    out.push(new.record(1));
                }
            }
            if new.is_none() {
                if let Some(group) = self.groups.remove(&key) {
                    mem::charge(
                        -(mem::key_bytes(&key)
                            + self.group_bytes()
                            + emitted_bytes(&group.emitted)),
                    );
                }
            } else if let Some(group) = self.groups.get_mut(&key) {
                mem::charge(emitted_bytes(&new) - emitted_bytes(&group.emitted));
                group.emitted = new;
            }
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
        if let Some(group) = self.groups.remove(&group_key) {
            mem::charge(-self.charged(&group_key, &group));
        }
    }

    fn current_output(&self) -> Option<Batch> {
        Some(
            self.groups
                .values()
                .filter_map(|g| match &g.emitted {
                    Some(Out::Row(row)) => Some(Record::Row {
                        row: row.clone(),
                        diff: 1,
                    }),
                    _ => None,
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
    use crate::ops::testutil::{consolidate, del, ins, int, poisons};

    fn spec(kind: AccKind, arg: Option<usize>, distinct: bool) -> AggSpec {
        AggSpec {
            kind,
            arg,
            distinct,
        }
    }

    #[test]
    fn global_aggregate_has_one_row_over_empty_input() {
        let mut a = AggregateOp::new(
            vec![],
            vec![
                spec(AccKind::CountStar, None, false),
                spec(AccKind::SumInt { numeric: false }, Some(0), false),
                spec(AccKind::Max, Some(0), false),
            ],
        );
        let init = consolidate(a.initial());
        assert_eq!(init, vec![(vec![int(0), Value::Null, Value::Null], 1)]);
        let out = consolidate(a.process(0, vec![ins(&[4]), ins(&[6])]));
        assert_eq!(
            out,
            vec![
                (vec![int(0), Value::Null, Value::Null], -1),
                (vec![int(2), int(10), int(6)], 1),
            ]
        );
        let out = consolidate(a.process(0, vec![del(&[4]), del(&[6])]));
        assert_eq!(
            out,
            vec![
                (vec![int(0), Value::Null, Value::Null], 1),
                (vec![int(2), int(10), int(6)], -1),
            ]
        );
        assert_eq!(a.groups.len(), 1, "the global group stays");
    }

    #[test]
    fn groups_emit_net_change_and_vanish() {
        let mut a = AggregateOp::new(
            vec![0],
            vec![
                spec(AccKind::Count, Some(1), false),
                spec(AccKind::Min, Some(1), false),
            ],
        );
        assert!(a.initial().is_empty());
        let out = consolidate(a.process(0, vec![ins(&[1, 5]), ins(&[1, 3]), ins(&[2, 9])]));
        assert_eq!(
            out,
            vec![
                (vec![int(1), int(2), int(3)], 1),
                (vec![int(2), int(1), int(9)], 1)
            ]
        );
        // Insert and delete of the same row in one batch: no output at all.
        assert!(a.process(0, vec![ins(&[1, 7]), del(&[1, 7])]).is_empty());
        // Deleting the minimum.
        let out = consolidate(a.process(0, vec![del(&[1, 3])]));
        assert_eq!(
            out,
            vec![
                (vec![int(1), int(1), int(5)], 1),
                (vec![int(1), int(2), int(3)], -1)
            ]
        );
        let out = consolidate(a.process(0, vec![del(&[2, 9])]));
        assert_eq!(out, vec![(vec![int(2), int(1), int(9)], -1)]);
        assert_eq!(a.groups.len(), 1, "group 2 is gone");
    }

    #[test]
    fn overflow_poisons_the_group_and_clears() {
        let mut a = AggregateOp::new(
            vec![0],
            vec![spec(AccKind::SumInt { numeric: false }, Some(1), false)],
        );
        a.process(0, vec![ins(&[1, i64::MAX])]);
        let out = a.process(0, vec![ins(&[1, 1])]);
        assert_eq!(poisons(&out), vec![(vec![Some(int(1)), None], 1)]);
        let out = a.process(0, vec![del(&[1, 1])]);
        assert_eq!(poisons(&out), vec![(vec![Some(int(1)), None], -1)]);
        assert_eq!(
            consolidate(
                out.into_iter()
                    .filter(|r| matches!(r, Record::Row { .. }))
                    .collect()
            ),
            vec![(vec![int(1), int(i64::MAX)], 1)]
        );
    }

    #[test]
    fn input_poison_maps_to_its_group() {
        let mut a = AggregateOp::new(vec![1], vec![spec(AccKind::CountStar, None, false)]);
        let p = vec![None, Some(int(7))];
        let out = a.process(
            0,
            vec![Record::Poison {
                row: p.clone(),
                diff: 1,
            }],
        );
        assert_eq!(poisons(&out), vec![(vec![Some(int(7)), None], 1)]);
        let out = a.process(
            0,
            vec![Record::Poison {
                row: vec![None, None],
                diff: 1,
            }],
        );
        assert_eq!(poisons(&out), vec![(vec![None, None], 1)]);
        assert!(a.groups.is_empty(), "poison is not stored");
    }
}
